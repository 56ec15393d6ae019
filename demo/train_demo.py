#!/usr/bin/env python3
"""Train moeq's bundled demo models: small Qwen3-MoE causal LMs.

--shape demo (the default) is demo/qwen3-moe-demo: hidden 256, 4 sparse layers, 16 experts of 128,
top-2.  --shape wide is demo/qwen3-moe-wide, a second shape for the expert-calibration study: hidden
128, a dense first layer and 2 sparse layers of 64 experts of 128, top-8.  Both keep every linear
input dimension a multiple of 128, so GPTQ group size 128 (and 64, 32) applies to every linear.

The model is trained from scratch with Hugging Face transformers on the project corpus
(JSONL, xz-compressed: fields text, lang, domain, source) using the byte-level BPE tokenizer
that ships next to the model.  Each document is tokenized without special tokens and followed
by <|endoftext|>; training samples are random 512-token windows of the concatenated stream.

Validation follows the protocol of `moeq eval`: the valid token stream (same construction)
is cut into non-overlapping 512-token windows, each scored from its first token, and
perplexity = exp(mean NLL over all predicted positions).  Per-language numbers attribute each
predicted token to the "lang" of the document it belongs to.

Usage (from the repository root):
    python3 demo/train_demo.py --steps 6000 --batch 64 --device cuda
    python3 demo/train_demo.py --shape wide --steps 6000 --batch 64 --device cuda
    python3 demo/train_demo.py --eval-only --out demo/qwen3-moe-demo --device cpu --max-valid-windows 64
"""

import argparse
import json
import lzma
import math
import os
import platform
import random
import shutil
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
EOS = "<|endoftext|>"
SEQ = 512


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=os.path.join(REPO, "..", "shared", "corpus"),
                   help="folder with train.jsonl.xz and valid.jsonl.xz")
    p.add_argument("--shape", default="demo", choices=sorted(SHAPES),
                   help="model shape (see SHAPES): demo = qwen3-moe-demo, wide = qwen3-moe-wide")
    p.add_argument("--out", default=None, help="model output folder (default: demo/qwen3-moe-SHAPE)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json to use (default: OUT/tokenizer.json when it exists, else the demo "
                        "model's, which every shape shares); a copy is kept in OUT")
    p.add_argument("--steps", type=int, default=6000, help="optimizer steps (upper bound, see --max-minutes)")
    p.add_argument("--batch", type=int, default=64, help="sequences of 512 tokens per step")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="training time budget; after --calib-steps the step count is lowered so the run "
                        "fits (then the cosine schedule follows the new count); a hard stop at the budget "
                        "still saves the model. 0 = no budget")
    p.add_argument("--calib-steps", type=int, default=30, help="steps timed to fit --max-minutes")
    p.add_argument("--max-train-docs", type=int, default=0, help="use only the first N train docs (testing)")
    p.add_argument("--max-valid-windows", type=int, default=0, help="score only the first N valid windows")
    p.add_argument("--experts-impl", default="auto", choices=["auto", "eager", "grouped_mm", "batched_mm"],
                   help="transformers experts implementation for training (auto: grouped_mm on CUDA)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=0, help="score the first 128 valid windows every N steps")
    p.add_argument("--shard-size", default="10MB", help="max_shard_size for save_pretrained")
    p.add_argument("--eval-only", action="store_true", help="only score the saved model in --out")
    a = p.parse_args()
    if a.out is None:
        a.out = os.path.join(HERE, "qwen3-moe-" + a.shape)
    if a.tokenizer is None:
        own = os.path.join(a.out, "tokenizer.json")
        a.tokenizer = own if os.path.exists(own) else os.path.join(HERE, "qwen3-moe-demo", "tokenizer.json")
    return a


# ---------------------------------------------------------------- data

def read_jsonl_xz(path, limit=0):
    docs = []
    with lzma.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            docs.append(json.loads(line))
            if limit and len(docs) >= limit:
                break
    return docs


def tokenize_stream(tok, docs, eos_id):
    """Concatenate docs (no special tokens) each followed by EOS; also return a per-token lang index."""
    enc = tok.encode_batch([d["text"] for d in docs], add_special_tokens=False)
    langs = sorted({d.get("lang", "?") for d in docs})
    lang_ix = {l: i for i, l in enumerate(langs)}
    ids, lab = [], []
    for d, e in zip(docs, enc):
        n = len(e.ids) + 1
        ids.extend(e.ids)
        ids.append(eos_id)
        lab.extend([lang_ix[d.get("lang", "?")]] * n)
    return np.asarray(ids, dtype=np.int64), np.asarray(lab, dtype=np.int16), langs


def lang_group(lang):
    if lang.startswith("code"):
        return "code"
    if lang == "en":
        return "en"
    return "other-natural"


# ---------------------------------------------------------------- model

# The fields that differ between the shapes; make_config adds the shared ones.  Sizes in bf16 with
# the 4096-token vocabulary and an untied lm_head: demo 9,194,240 parameters (18.4 MB), wide
# 7,701,760 (15.4 MB: embedding and lm_head 1.05M, attention 0.15M, the dense MLP 0.20M, experts
# and routers 6.31M).
SHAPES = {
    # every layer sparse; the 512 of intermediate_size is unused
    "demo": dict(hidden_size=256, intermediate_size=512, moe_intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_experts=16,
                 num_experts_per_tok=2, mlp_only_layers=[]),
    # more, narrower-in-hidden experts and top-8 (as Qwen3-30B-A3B and OLMoE route), a dense
    # first layer (as DeepSeek-V3 and GLM-4.5 have) of intermediate_size 512; q/o 128, k/v 64
    "wide": dict(hidden_size=128, intermediate_size=512, moe_intermediate_size=128, num_hidden_layers=3,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=64, num_experts=64,
                 num_experts_per_tok=8, mlp_only_layers=[0]),
}


def make_config(vocab, eos_id, shape):
    from transformers import Qwen3MoeConfig
    return Qwen3MoeConfig(
        vocab_size=vocab,
        **SHAPES[shape],
        norm_topk_prob=True,
        decoder_sparse_step=1,
        hidden_act="silu",
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        attention_bias=False,
        initializer_range=0.02,
        output_router_logits=True,
        router_aux_loss_coef=0.01,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        use_cache=False,
    )


def sparse_layers(config):
    """Indices of the MoE layers, by transformers' rule (modeling_qwen3_moe.py, Qwen3MoeDecoderLayer:
    sparse unless in mlp_only_layers, and only every decoder_sparse_step-th layer)."""
    return [l for l in range(config.num_hidden_layers)
            if l not in config.mlp_only_layers and (l + 1) % config.decoder_sparse_step == 0]


def set_experts_impl(model, impl):
    try:
        model.set_experts_implementation(impl)
        return impl
    except Exception as e:  # older/newer transformers without that switch
        print(f"[warn] could not set experts implementation {impl!r}: {e}", flush=True)
        return "default"


def per_layer_aux(router_logits, k):
    """Switch-style load-balancing loss computed per layer and averaged (1.0 when balanced).

    transformers' own aux loss pools the router statistics of all layers, which can leave one
    layer's expert idle as long as the pooled counts look even; moeq needs every expert of every
    layer alive, so the balance is asked of each layer."""
    tot = 0.0
    for rl in router_logits:
        probs = torch.softmax(rl.float(), dim=-1)                     # (T, E)
        E = probs.size(-1)
        top = torch.topk(probs, k, dim=-1).indices                    # (T, k)
        frac = torch.zeros(E, device=rl.device).scatter_add_(
            0, top.reshape(-1), torch.ones(top.numel(), device=rl.device)) / top.numel()
        tot = tot + E * (frac * probs.mean(dim=0)).sum()
    return tot / len(router_logits)


def forward_loss(model, x, on_cuda, k):
    with torch.autocast(device_type="cuda" if on_cuda else "cpu", dtype=torch.bfloat16, enabled=on_cuda):
        out = model(input_ids=x, output_router_logits=True, use_cache=False)
    logits = out.logits.float()
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
    aux = per_layer_aux(out.router_logits, k)
    return ce, aux


def pick_experts_impl(model, x, on_cuda, k, opt):
    """Time forward+backward (no optimizer step) with each experts implementation; keep the fastest."""
    best = None
    for impl in ("grouped_mm", "eager"):
        if set_experts_impl(model, impl) != impl:
            continue
        try:
            for i in range(7):
                if i == 2:
                    torch.cuda.synchronize()
                    t = time.time()
                ce, aux = forward_loss(model, x, on_cuda, k)
                (ce + 0.01 * aux).backward()
                opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            dt = (time.time() - t) / 5
        except Exception as e:
            print(f"experts impl {impl}: failed ({type(e).__name__}: {e})", flush=True)
            opt.zero_grad(set_to_none=True)
            continue
        print(f"experts impl {impl}: {dt * 1000:.1f} ms fwd+bwd", flush=True)
        if best is None or dt < best[1]:
            best = (impl, dt)
    return set_experts_impl(model, best[0]) if best else "default"


def param_groups(model, wd):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() < 2 or "embed_tokens" in n or "norm" in n:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step, total, peak, warmup, min_ratio):
    if step < warmup:
        return peak * (step + 1) / warmup
    prog = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * prog)))


# ---------------------------------------------------------------- eval

@torch.no_grad()
def evaluate(model, ids, langs_tok, lang_names, device, max_windows=0, batch=32, autocast=False):
    """moeq-eval protocol: non-overlapping 512-token windows, each scored from its first token."""
    model.eval()
    nwin = len(ids) // SEQ
    if max_windows:
        nwin = min(nwin, max_windows)
    E = model.config.num_experts
    sparse = sparse_layers(model.config)   # router_logits holds one entry per sparse layer, in order
    K = model.config.num_experts_per_tok
    nll_sum = np.zeros(len(lang_names), dtype=np.float64)
    cnt = np.zeros(len(lang_names), dtype=np.int64)
    load = torch.zeros(len(sparse), E, dtype=torch.float64)
    for b0 in range(0, nwin, batch):
        b1 = min(nwin, b0 + batch)
        x = torch.from_numpy(ids[b0 * SEQ:b1 * SEQ].reshape(b1 - b0, SEQ)).to(device)
        lg = torch.from_numpy(langs_tok[b0 * SEQ:b1 * SEQ].reshape(b1 - b0, SEQ).astype(np.int64))
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
            out = model(input_ids=x, output_router_logits=True, use_cache=False)
        logits = out.logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="none").double().cpu()
        tgt_lang = lg[:, 1:].reshape(-1)
        nll_sum += np.bincount(tgt_lang.numpy(), weights=nll.numpy(), minlength=len(lang_names))
        cnt += np.bincount(tgt_lang.numpy(), minlength=len(lang_names))
        for li, rl in enumerate(out.router_logits):
            top = torch.topk(rl.float(), K, dim=-1).indices.reshape(-1).cpu()
            load[li] += torch.bincount(top, minlength=E).double()
    res = {"windows": nwin, "tokens_scored": int(cnt.sum()),
           "ppl": float(math.exp(nll_sum.sum() / cnt.sum())), "per_lang": {}, "per_group": {}}
    groups = {}
    for i, l in enumerate(lang_names):
        if cnt[i]:
            res["per_lang"][l] = {"ppl": float(math.exp(nll_sum[i] / cnt[i])), "tokens": int(cnt[i])}
            g = groups.setdefault(lang_group(l), [0.0, 0])
            g[0] += nll_sum[i]
            g[1] += int(cnt[i])
    for g, (s, c) in sorted(groups.items()):
        res["per_group"][g] = {"ppl": float(math.exp(s / c)), "tokens": c}
    frac = load / load.sum(dim=1, keepdim=True)  # share of routed (token, slot) pairs per expert
    res["expert_load_layers"] = sparse
    res["expert_load"] = [[round(float(v), 4) for v in row] for row in frac]
    res["expert_load_min_max_x_uniform"] = [
        [round(float(row.min() * E), 3), round(float(row.max() * E), 3)] for row in frac]
    model.train()
    return res


def print_eval(res, tag):
    print(f"[{tag}] valid windows={res['windows']} tokens={res['tokens_scored']} ppl={res['ppl']:.3f}", flush=True)
    print(f"[{tag}] per group: " + ", ".join(f"{g}={v['ppl']:.2f} ({v['tokens']} tok)"
                                             for g, v in res["per_group"].items()), flush=True)
    print(f"[{tag}] per lang: " + ", ".join(f"{l}={v['ppl']:.2f} ({v['tokens']})"
                                            for l, v in sorted(res["per_lang"].items())), flush=True)
    for i, (li, row) in enumerate(zip(res["expert_load_layers"], res["expert_load"])):
        mn, mx = res["expert_load_min_max_x_uniform"][i]
        print(f"[{tag}] layer {li} expert load (share of top-k slots): "
              + " ".join(f"{v:.3f}" for v in row) + f"   min/max vs uniform: {mn:.2f}x / {mx:.2f}x", flush=True)
    print(f"[{tag}] RESULT_JSON {json.dumps(res)}", flush=True)


# ---------------------------------------------------------------- main

def write_tokenizer_config(out):
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


def main():
    a = parse_args()
    from tokenizers import Tokenizer
    import transformers
    from transformers import Qwen3MoeForCausalLM

    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    dev = a.device
    on_cuda = dev.startswith("cuda")
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    print(f"python {platform.python_version()} torch {torch.__version__} transformers {transformers.__version__} "
          f"device {dev}" + (f" ({torch.cuda.get_device_name(0)})" if on_cuda else ""), flush=True)
    print("argv: " + " ".join(sys.argv), flush=True)

    os.makedirs(a.out, exist_ok=True)
    tok_path = a.tokenizer
    if not os.path.exists(tok_path):
        sys.exit(f"missing tokenizer {tok_path}")
    if os.path.abspath(tok_path) != os.path.abspath(os.path.join(a.out, "tokenizer.json")):
        shutil.copyfile(tok_path, os.path.join(a.out, "tokenizer.json"))
    tok = Tokenizer.from_file(tok_path)
    eos_id = tok.token_to_id(EOS)
    vocab = tok.get_vocab_size()
    assert eos_id is not None and vocab == 4096, (eos_id, vocab)

    t0 = time.time()
    vdocs = read_jsonl_xz(os.path.join(a.corpus, "valid.jsonl.xz"))
    vids, vlang, vnames = tokenize_stream(tok, vdocs, eos_id)
    print(f"valid: {len(vdocs)} docs, {len(vids)} tokens, {len(vids) // SEQ} windows "
          f"({time.time() - t0:.1f}s)", flush=True)

    if a.eval_only:
        model = Qwen3MoeForCausalLM.from_pretrained(a.out, dtype=torch.float32).to(dev)
        res = evaluate(model, vids, vlang, vnames, dev, a.max_valid_windows)
        print_eval(res, "eval")
        return

    t0 = time.time()
    tdocs = read_jsonl_xz(os.path.join(a.corpus, "train.jsonl.xz"), a.max_train_docs)
    tids, _, _ = tokenize_stream(tok, tdocs, eos_id)
    n_train_chars = sum(len(d["text"]) for d in tdocs)
    del tdocs
    print(f"train: {len(tids)} tokens ({n_train_chars} chars, {n_train_chars / len(tids):.2f} chars/token) "
          f"({time.time() - t0:.1f}s)", flush=True)
    train = torch.from_numpy(tids)

    config = make_config(vocab, eos_id, a.shape)
    model = Qwen3MoeForCausalLM(config)
    nparam = sum(p.numel() for p in model.parameters())
    print(f"shape {a.shape}: params: {nparam} ({nparam * 2 / 1e6:.2f} MB in bf16)", flush=True)
    model.to(dev).train()
    K = config.num_experts_per_tok
    coef = config.router_aux_loss_coef
    opt = torch.optim.AdamW(param_groups(model, a.weight_decay), lr=a.lr, betas=(0.9, 0.95), eps=1e-8,
                            fused=on_cuda)
    impl = a.experts_impl
    if impl == "auto" and on_cuda:
        xb = train[:a.batch * SEQ].reshape(a.batch, SEQ).to(dev)
        impl = pick_experts_impl(model, xb, on_cuda, K, opt)
        del xb
    else:
        impl = set_experts_impl(model, "eager" if impl == "auto" else impl)
    print(f"experts implementation: {impl}", flush=True)

    gen = torch.Generator().manual_seed(a.seed)
    total = a.steps
    tokens_seen = 0
    t_start = time.time()
    t_calib = None
    step = 0
    stopped_early = False
    recent = []
    while step < total:
        lr = lr_at(step, total, a.lr, a.warmup, a.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(train) - SEQ, (a.batch,), generator=gen)
        x = torch.stack([train[s:s + SEQ] for s in starts.tolist()]).to(dev, non_blocking=True)
        ce, aux = forward_loss(model, x, on_cuda, K)
        loss = ce + coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens_seen += x.numel()
        if step == a.calib_steps:
            if on_cuda:
                torch.cuda.synchronize()
            t_calib = time.time()
        # fit the step count to the time budget (measured after the first calib_steps warm-up steps)
        if a.max_minutes and step == 2 * a.calib_steps and t_calib is not None:
            if on_cuda:
                torch.cuda.synchronize()
            per_step = (time.time() - t_calib) / a.calib_steps
            left = a.max_minutes * 60 - (time.time() - t_start)
            fit = step + int(0.95 * left / per_step)
            print(f"timing: {per_step * 1000:.1f} ms/step, {a.batch * SEQ / per_step / 1e3:.0f}k tok/s; "
                  f"budget fits {fit} steps", flush=True)
            if fit < total:
                print(f"lowering steps {total} -> {fit} to fit --max-minutes {a.max_minutes}", flush=True)
                total = fit
        if step % a.log_every == 0 or step == total or step <= 3:
            cev = ce.item()
            recent.append(cev)
            el = time.time() - t_start
            print(f"step {step}/{total} lr {lr:.2e} ce {cev:.4f} aux {aux.item():.4f} "
                  f"gnorm {float(gnorm):.2f} tok {tokens_seen} t {el:.0f}s", flush=True)
        if a.eval_every and step % a.eval_every == 0 and step < total:
            r = evaluate(model, vids, vlang, vnames, dev, 128, autocast=on_cuda)
            print(f"  valid@{step} (128 windows, bf16 autocast) ppl {r['ppl']:.3f}  load min/max x uniform "
                  f"{r['expert_load_min_max_x_uniform']}", flush=True)
        if a.max_minutes and time.time() - t_start > a.max_minutes * 60 and step < total:
            print(f"time budget reached at step {step}; stopping early", flush=True)
            stopped_early = True
            break
    train_time = time.time() - t_start
    final_ce = ce.item()
    last5 = sum(recent[-5:]) / max(1, len(recent[-5:]))
    print(f"TRAIN_DONE steps {step} tokens_seen {tokens_seen} train_time {train_time:.1f}s "
          f"final_train_ce {final_ce:.4f} mean_of_last5_logged_ce {last5:.4f} "
          f"stopped_early {stopped_early} epochs {tokens_seen / len(train):.2f}", flush=True)

    # save in bf16, with per-expert tensor names (transformers 5 converts the fused experts on save)
    model.config.use_cache = True
    model.to(torch.bfloat16).save_pretrained(a.out, max_shard_size=a.shard_size)
    write_tokenizer_config(a.out)
    gc = os.path.join(a.out, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)  # not needed; keeps the folder (and the device return) small
    names = []
    from safetensors import safe_open
    for fn in sorted(os.listdir(a.out)):
        if fn.endswith(".safetensors"):
            with safe_open(os.path.join(a.out, fn), "pt") as f:
                names += list(f.keys())
    print(f"saved {len(names)} tensors: " + ", ".join(sorted(n for n in names if ".layers.0." in n)[:12]) + " ...",
          flush=True)
    want = [f"model.layers.{l}.mlp.experts.{e}.{p}.weight" for l in sparse_layers(config)
            for e in range(config.num_experts) for p in ("gate_proj", "up_proj", "down_proj")]
    missing = [w for w in want if w not in names]
    print(f"per-expert names present: {not missing} (missing {len(missing)})", flush=True)
    for fn in sorted(os.listdir(a.out)):
        print(f"  {fn} {os.path.getsize(os.path.join(a.out, fn))} bytes", flush=True)

    # score the saved bf16 checkpoint, reloaded, in fp32 compute (what the CPU check reproduces)
    model = Qwen3MoeForCausalLM.from_pretrained(a.out, dtype=torch.float32).to(dev)
    t0 = time.time()
    res = evaluate(model, vids, vlang, vnames, dev, a.max_valid_windows)
    print(f"eval took {time.time() - t0:.1f}s", flush=True)
    print_eval(res, "final")


if __name__ == "__main__":
    main()
