#!/usr/bin/env python3
"""A peer for moeq's speed benchmark: llm-compressor's GPTQ on a checkpoint
written by bench/synthetic/make_synthetic.py (qwen3_moe layout), on the
calibration windows `moeq quantize --calib CKPT/tokens.bin` picks, timed per
decoder layer.

    llmcompressor_gptq.py CKPT --out FILE.json [--nsamples N] [--seqlen L]
        [--seed S] [--require-gpu] [--offload-device DEV] [--batch-size B]

Settings, against moeq's defaults (src/quant/gptq.c moeq_gptq_default_config,
src/cli/cmd_quantize.c):
  matched   4 bits, group 128, symmetric (compressed-tensors' signed grid
            [-8, 7] with scale absmax / 7.5 is the GPTQ reference's unsigned
            grid with zero 8 and scale 2 absmax / 15); act-order off
            (llm-compressor's default is static act-order: set to None here);
            damping 0.01 of the mean Hessian diagonal; block 128; the
            clipping search with norm 2.4 over shrink factors 1, 0.99, ...,
            0.21 (llm-compressor's memoryless_mse observer with maxshrink 0.8,
            grid 100, and a patience longer than the search, so that it never
            stops early; its defaults are maxshrink 0.2, patience 5); every
            expert calibrated on every token (oneshot's
            moe_calibrate_all_experts=True, its default: the linearized
            experts run each expert on all tokens and keep the routed ones'
            outputs, llmcompressor/modeling/moe/linear_experts.py
            LinearExperts2D.forward; moeq's --expert-calib all); router and
            lm_head not quantized; the same windows in the same order
            (calib_windows() below repeats moeq's seeded shuffle).
  differ    llm-compressor fits each group's grid once on the original
            weights (the observer runs before GPTQ, llmcompressor/modifiers/
            gptq/base.py on_sequential_epoch_end); moeq fits it on the
            error-updated weights when the sweep reaches the group, as the
            GPTQ reference does. A Hessian that Cholesky rejects falls back to
            round-to-nearest there; moeq raises the damping by 0.0025 until it
            factorises. llm-compressor collects all Hessians of a decoder
            layer in one pass over the unquantized layer; moeq's default
            true-sequential mode recomputes o_proj's and the MLP's inputs
            after quantizing the earlier stages. llm-compressor keeps one
            Hessian per linear (gate_proj and up_proj of an expert each get
            their own, equal, matrix); moeq shares one.
  peer's own choices kept: batched GPTQ of same-shape modules
            (batched_quantization="auto"), its Triton kernels where it picks
            them, batch size 1 (one window per forward; --batch-size changes
            it).
llm-compressor runs on the device it picks itself (utils/dev.py
get_main_device: the GPU when torch sees one); --require-gpu refuses to run
without one. Activations between layers stay on --offload-device (default:
that device, as moeq keeps them on the GPU; llm-compressor's default is the
CPU).

Timing. The sequential pipeline (llmcompressor/pipelines/sequential/
pipeline.py) runs, for each subgraph (the rotary embedding, then one per
decoder layer), a calibration pass over all windows (Hessians
accumulated by hooks), the SEQUENTIAL_EPOCH_END event (observers and the GPTQ
solve), and a propagation pass (the quantized layer's outputs become the next
layer's inputs). Wrappers around Subgraph.forward and the lifecycle callbacks
note the time, after a device synchronisation, when each phase starts; a
layer's seconds run from its first calibration forward to the next subgraph's
(llm-compressor 0.14 folds the final norm and the head into the last layer's
subgraph). Before the first layer ("setup"): session set-up, tracing and the
subgraph of the rotary embedding; after the last ("tail"): finalisation.
Loading the checkpoint is timed apart. The output is not saved (moeq's
write runs beside its loop).

The JSON is rewritten after every layer ("complete": false until the end), so
a run cut short still leaves the finished layers' times.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch


def calib_windows(stream, nsamples, seqlen, seed):
    """The windows moeq_calib_set_sample (src/calib/calib_set.c) picks:
    the stream cut into whole windows of seqlen tokens, shuffled by
    Fisher-Yates driven by splitmix64 seeded with seed, the first nsamples
    taken in that order."""
    windows = len(stream) // seqlen
    if windows < nsamples:
        raise SystemExit(f"llmcompressor_gptq.py: the calibration tokens hold {len(stream)} "
                         f"tokens, {windows} whole windows of {seqlen}, fewer than "
                         f"--nsamples {nsamples}")
    mask = (1 << 64) - 1
    state = seed & mask
    order = list(range(windows))
    for i in range(windows - 1, 0, -1):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        j = z % (i + 1)
        order[i], order[j] = order[j], order[i]
    return np.stack([stream[o * seqlen:(o + 1) * seqlen] for o in order[:nsamples]])


def word_level_tokenizer(vocab_size):
    """oneshot() insists on a processor when given calibration data, though
    data that is already token ids never reaches it. The synthetic checkpoint
    has no tokenizer; this one maps its ids to placeholder words."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast
    vocab = {f"t{i}": i for i in range(vocab_size)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="t0")),
                                   unk_token="t0")


def versions():
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for name in ("llmcompressor", "compressed-tensors", "torch", "transformers", "accelerate",
                 "triton", "datasets", "pydantic", "loguru"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


class Timeline:
    """Phase start times per subgraph, read after a device synchronisation."""

    def __init__(self, on_gpu, num_batches, layers, on_layer):
        self.sync = torch.cuda.synchronize if on_gpu else (lambda: None)
        self.num_batches = num_batches
        self.layers = layers          # the decoder layer modules, in order
        self.on_layer = on_layer      # called with the finished subgraph records
        self.calls = {}               # id(subgraph) -> forward calls so far
        self.subgraphs = []           # records: start, solve, propagate, end, layers
        self.calibrating = False

    def now(self):
        self.sync()
        return time.perf_counter()

    def forward_called(self, subgraph):
        key = id(subgraph)
        if key not in self.calls:
            t = self.now()
            if self.subgraphs:
                self.subgraphs[-1]["end"] = t
                self.on_layer(self.subgraphs)
            self.subgraphs.append({"start": t})
            self.calls[key] = 0
        self.calibrating = self.calls[key] < self.num_batches
        self.calls[key] += 1

    def epoch_end(self, modules, run):
        rec = self.subgraphs[-1]
        present = set(map(id, modules))
        rec["layers"] = [i for i, m in enumerate(self.layers) if id(m) in present]
        rec["solve"] = self.now()
        self.calibrating = False
        result = run()
        rec["propagate"] = self.now()
        return result

    def calibration_end(self):
        if self.subgraphs and "end" not in self.subgraphs[-1]:
            self.subgraphs[-1]["end"] = self.now()
            self.on_layer(self.subgraphs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokens", help="int32 LE token ids (default CKPT/tokens.bin)")
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--require-gpu", action="store_true")
    ap.add_argument("--offload-device", help="where activations wait between layers "
                    "(default: the device llm-compressor computes on)")
    ap.add_argument("--batch-size", type=int, default=1)
    a = ap.parse_args()
    if a.require_gpu and not torch.cuda.is_available():
        raise SystemExit("llmcompressor_gptq.py: --require-gpu, but torch sees no GPU")

    # Imported here so that a missing package fails with its own message
    # before any work, and after argparse has answered --help.
    import llmcompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor import oneshot
    from llmcompressor.core import LifecycleCallbacks
    from llmcompressor.modeling.moe.linear_experts import ExpertMLP
    from llmcompressor.modeling.moe.linearize import load_quantizable_moe
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.pipelines.sequential.helpers import Subgraph
    from llmcompressor.utils.dev import get_main_device
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM

    device = str(get_main_device())
    offload = a.offload_device or device
    on_gpu = device.startswith("cuda")

    cfg = json.load(open(os.path.join(a.ckpt, "config.json")))
    if cfg.get("model_type") != "qwen3_moe":
        raise SystemExit(f"llmcompressor_gptq.py: {a.ckpt}/config.json: model_type "
                         f"{cfg.get('model_type')!r}; this script runs qwen3_moe checkpoints")
    tokens_path = a.tokens or os.path.join(a.ckpt, "tokens.bin")
    stream = np.fromfile(tokens_path, dtype="<i4")
    if stream.size and (stream.min() < 0 or stream.max() >= cfg["vocab_size"]):
        raise SystemExit(f"llmcompressor_gptq.py: {tokens_path}: token ids outside "
                         f"[0, {cfg['vocab_size']})")
    windows = calib_windows(stream, a.nsamples, a.seqlen, a.seed)
    samples = [{"input_ids": torch.from_numpy(w.astype(np.int64))} for w in windows]
    loader = DataLoader(samples, batch_size=a.batch_size, shuffle=False)

    t = time.perf_counter()
    with load_quantizable_moe():
        model = AutoModelForCausalLM.from_pretrained(a.ckpt, dtype=torch.bfloat16)
    model.eval()
    load_seconds = time.perf_counter() - t
    layers = list(model.model.layers)
    experts = [m for m in model.modules() if isinstance(m, ExpertMLP)]
    if len(experts) != cfg["num_experts"] * cfg["num_hidden_layers"]:
        raise SystemExit(f"llmcompressor_gptq.py: llm-compressor linearized {len(experts)} "
                         f"experts, expected {cfg['num_experts']} x {cfg['num_hidden_layers']}")

    # Tokens each expert's gate_proj sees in the calibration passes: every
    # expert sees every token when all experts are calibrated.
    expert_tokens = {id(m): 0 for m in experts}
    owner = {}
    for m in experts:
        owner[id(m.gate_proj)] = id(m)

    def count_tokens(module, args):
        if timeline.calibrating:
            expert_tokens[owner[id(module)]] += args[0].numel() // args[0].shape[-1]

    for m in experts:
        m.gate_proj.register_forward_pre_hook(count_tokens)
    layer_of_expert = {}
    for i, layer in enumerate(layers):
        for m in layer.modules():
            if isinstance(m, ExpertMLP):
                layer_of_expert[id(m)] = i

    gpu = torch.cuda.get_device_name(0) if on_gpu else "none (CPU)"
    record = {
        "tool": "llm-compressor GPTQModifier, sequential pipeline",
        "checkpoint": os.path.abspath(a.ckpt), "calib": os.path.abspath(tokens_path),
        "shape": {k: cfg[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads",
                                      "head_dim", "num_experts", "num_experts_per_tok",
                                      "moe_intermediate_size", "num_hidden_layers")},
        "nsamples": a.nsamples, "seqlen": a.seqlen, "seed": a.seed,
        "calib_stream_tokens": int(stream.size), "tokens": a.nsamples * a.seqlen,
        "batch_size": a.batch_size, "device": device, "offload_device": offload, "gpu": gpu,
        "versions": versions(),
        "settings": {"bits": 4, "group_size": 128, "symmetric": True, "actorder": None,
                     "dampening_frac": 0.01, "block_size": 128,
                     "observer": "memoryless_mse maxshrink 0.8 grid 100 norm 2.4",
                     "moe_calibrate_all_experts": True, "pipeline": "sequential",
                     "batched_quantization": "auto", "ignore": ["lm_head", "mlp.gate"]},
        "load_seconds": load_seconds, "complete": False, "layers": [],
    }
    t_start = None

    def write(subgraphs, progress=True):
        rows = []
        for s in subgraphs:
            if "end" not in s or not s.get("layers"):
                continue
            L = s["layers"]
            toks = [expert_tokens[k] for k, li in layer_of_expert.items() if li in L]
            rows.append({"layer": L[0] if len(L) == 1 else L,
                         "seconds": s["end"] - s["start"],
                         "calibrate": s["solve"] - s["start"],
                         "solve": s["propagate"] - s["solve"],
                         "propagate": s["end"] - s["propagate"],
                         "expert_tokens_min": min(toks) if toks else None,
                         "expert_tokens_max": max(toks) if toks else None})
        record["layers"] = rows
        first = next((s for s in subgraphs if s.get("layers")), None)
        if first:
            record["setup_seconds"] = first["start"] - t_start
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, a.out)
        if progress and rows:
            r = rows[-1]
            print(f"peer layer {r['layer']}: {r['seconds']:.2f} s (calibrate "
                  f"{r['calibrate']:.2f}, solve {r['solve']:.2f}, propagate "
                  f"{r['propagate']:.2f}); expert tokens {r['expert_tokens_min']}.."
                  f"{r['expert_tokens_max']}", flush=True)

    timeline = Timeline(on_gpu, len(loader), layers, write)

    # Wrap the pipeline's per-subgraph steps (see the docstring).
    forward = Subgraph.forward

    def timed_forward(self, *args, **kwargs):
        timeline.forward_called(self)
        return forward(self, *args, **kwargs)

    epoch_end = LifecycleCallbacks.sequential_epoch_end.__func__
    calib_end = LifecycleCallbacks.calibration_end.__func__

    def timed_epoch_end(cls, modules, **kwargs):
        return timeline.epoch_end(modules, lambda: epoch_end(cls, modules, **kwargs))

    def timed_calib_end(cls, **kwargs):
        timeline.calibration_end()
        return calib_end(cls, **kwargs)

    Subgraph.forward = timed_forward
    LifecycleCallbacks.sequential_epoch_end = classmethod(timed_epoch_end)
    LifecycleCallbacks.calibration_end = classmethod(timed_calib_end)

    weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group",
                               group_size=128, actorder=None, observer="memoryless_mse",
                               observer_kwargs={"maxshrink": 0.8, "grid": 100.0, "norm": 2.4,
                                                "patience": 1000})
    recipe = GPTQModifier(
        config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
        ignore=["lm_head", "re:.*mlp.gate$"], actorder=None, dampening_frac=0.01,
        block_size=128)

    t_start = time.perf_counter()
    oneshot(model=model, processor=word_level_tokenizer(cfg["vocab_size"]), recipe=recipe,
            dataset=loader, pipeline="sequential", moe_calibrate_all_experts=True,
            sequential_offload_device=offload, output_dir=None)
    t_end = timeline.now()
    subs = timeline.subgraphs
    write(subs, progress=False)
    done = [r["layer"] for r in record["layers"]]
    if done != list(range(cfg["num_hidden_layers"])):
        raise SystemExit(f"llmcompressor_gptq.py: timed layers {done}, expected "
                         f"0..{cfg['num_hidden_layers'] - 1}: the pipeline's subgraphs did not "
                         "map one to one onto decoder layers")
    record["oneshot_seconds"] = t_end - t_start
    record["tail_seconds"] = t_end - max(s["end"] for s in subs if s.get("layers"))
    record["total_seconds"] = load_seconds + record["oneshot_seconds"]
    if on_gpu:
        record["peak_device_bytes"] = torch.cuda.max_memory_allocated()
    # Every expert of every layer must have seen every calibration token.
    if any(r["expert_tokens_min"] != a.nsamples * a.seqlen for r in record["layers"]):
        raise SystemExit("llmcompressor_gptq.py: some experts saw fewer than all "
                         f"{a.nsamples * a.seqlen} calibration tokens: {record['layers']}")
    record["complete"] = True
    with open(a.out, "w") as f:
        json.dump(record, f, indent=1)
    print(f"peer total {record['total_seconds']:.2f} s (load {load_seconds:.2f}, setup "
          f"{record.get('setup_seconds', 0):.2f}, tail {record['tail_seconds']:.2f}); "
          f"llmcompressor {llmcompressor.__version__} on {gpu}; wrote {a.out}")


if __name__ == "__main__":
    sys.exit(main())
