#!/usr/bin/env python3
"""Builds the golden fixtures: tiny random models of every shipped architecture,
saved with transformers' save_pretrained exactly as the hub ships checkpoints
(bf16 safetensors, config.json), and their per-layer outputs and logits from
transformers' own forward in fp32 (eager attention).

    python3 tests/golden/make_golden.py [OUT_DIR]     (default tests/fixtures/golden)

Each model directory gets golden.safetensors with:
  tokens            I32 [S, T]   input ids (S sequences of T tokens, positions 0..T-1)
  embed             F32 [S, T, H]
  layer.{L}.attn    F32 [S, T, H] self-attention (or linear-attention) block output
                                  (before the residual add)
  layer.{L}.mlp     F32 [S, T, H] MLP / MoE block output (before the residual add)
  layer.{L}.out     F32 [S, T, H] decoder layer output
  logits            F32 [S, T, V]
The reference runs in fp32 on the bf16 weights read back from disk, so the
only difference left for moeq's fp32 CPU forward is summation order.
Shapes are chosen to catch mistakes: kv heads != heads, head_dim set apart
from hidden/heads, several experts with top-k > 1, shared experts, dense
layers among sparse ones, each RoPE variant, biases, tied embeddings, and a
sharded checkpoint with model.safetensors.index.json.
"""
import os
import re
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file

import quantized_sources

SEQS, TOKENS = 2, 24
VOCAB = 160


def base(**kw):
    d = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
             initializer_range=0.08)
    d.update(kw)
    return d


MODELS = {
    # Qwen3-MoE: explicit head_dim 32 (hidden/heads would be 16), q/k-norm,
    # top-2 of 8 with norm_topk_prob, a dense layer (mlp_only_layers), sharded.
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", base(
        head_dim=32, intermediate_size=96, moe_intermediate_size=32, num_experts=8,
        num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1], decoder_sparse_step=1,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), "120KB"),
    # Qwen2-MoE: shared expert behind its sigmoid gate, q/k/v biases,
    # norm_topk_prob false, sparse every second layer.
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", base(
        intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=48,
        num_experts=6, num_experts_per_tok=2, norm_topk_prob=False, decoder_sparse_step=2,
        mlp_only_layers=[], rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), None),
    # Mixtral: block_sparse_moe.experts.E.w1/w2/w3, top-2 of 4, kv heads 1.
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", base(
        num_key_value_heads=1, intermediate_size=48, num_local_experts=4, num_experts_per_tok=2,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), None),
    # Llama with Llama-3.1 RoPE scaling and tied embeddings.
    "llama": ("LlamaConfig", "LlamaForCausalLM", base(
        intermediate_size=112, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16}), None),
    # Qwen2 dense: q/k/v biases, YaRN scaling.
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", base(
        intermediate_size=112, num_key_value_heads=1, max_position_embeddings=32,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                         "original_max_position_embeddings": 8}), None),
    # Qwen3 dense: q/k-norm, explicit head_dim, linear RoPE scaling.
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", base(
        head_dim=24, intermediate_size=112,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}), None),
    # Qwen3-Next hybrid: Gated DeltaNet layers (fused in_proj_qkvz / in_proj_ba,
    # 8 value heads over 4 key heads, Dk != Dv) beside gated full attention
    # with partial rotary (a quarter of head_dim 32) and q/k-norm; zero-centered
    # norms; 8 experts top-2 with a sigmoid-gated shared expert and a dense
    # layer; 80 tokens so that the delta rule runs over two chunks of 64.
    "qwen3_next": ("Qwen3NextConfig", "Qwen3NextForCausalLM", base(
        num_hidden_layers=4, head_dim=32, intermediate_size=96, moe_intermediate_size=32,
        shared_expert_intermediate_size=48, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[2],
        layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
        linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=16,
        linear_value_head_dim=8, linear_conv_kernel_dim=4,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.25}), None),
}

# Sequence length per model where it differs from TOKENS.
MODEL_TOKENS = {"qwen3_next": 80}

# Sources shipped quantized by their publishers (tests/golden/quantized_sources.py): the
# model is built as above, then its linears are rewritten in that format; the reference
# forward runs on the weights transformers' own dequantization gives.
# Qwen3-MoE as Qwen3-FP8 ships it: every attention and MLP/expert linear in block FP8
# (128 x 128), hidden 160 and intermediates 80 / 144 so that last blocks are partial;
# lm_head too, an FP8 tensor that moeq copies (dequantized) rather than quantizes.
FP8_MODELS = {
    "qwen3_moe_fp8": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", base(
        hidden_size=160, head_dim=32, intermediate_size=144, moe_intermediate_size=80,
        num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1],
        decoder_sparse_step=1, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        "400KB"),
}


def fp8_linear(name):
    return name == "lm_head.weight" or re.search(
        r"\.(self_attn\.[qkvo]_proj|mlp\.(experts\.\d+\.)?(gate|up|down)_proj)\.weight$",
        name) is not None

# Models whose RMSNorms scale by (1 + weight) (zero-centered; the gated norm
# of their linear attention excepted).
ZERO_CENTERED_NORMS = {"qwen3_next"}


def randomize_norms(model, gen, zero_centered=False):
    # Norm weights default to ones (zeros when zero-centered), which would
    # hide a missing multiply; either way the scale becomes 1 + 0.2 N(0, 1).
    for name, p in model.named_parameters():
        if "norm" in name and p.dim() == 1:
            offset = 0.0 if zero_centered and "linear_attn.norm" not in name else 1.0
            with torch.no_grad():
                p.copy_(offset + 0.2 * torch.randn(p.shape, generator=gen))
        if name.endswith("bias"):
            with torch.no_grad():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def capture(model, tokens):
    rec = {}
    hooks = []
    layers = model.model.layers
    for i, layer in enumerate(layers):
        def out_hook(mod, args, out, i=i):
            rec[f"layer.{i}.out"] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        hooks.append(layer.register_forward_hook(out_hook))
        mlp = getattr(layer, "mlp", None) or getattr(layer, "block_sparse_moe")
        def mlp_hook(mod, args, out, i=i):
            rec[f"layer.{i}.mlp"] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        hooks.append(mlp.register_forward_hook(mlp_hook))
        def attn_hook(mod, args, out, i=i):
            rec[f"layer.{i}.attn"] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        mixer = getattr(layer, "self_attn", None) or getattr(layer, "linear_attn")
        hooks.append(mixer.register_forward_hook(attn_hook))
    def emb_hook(mod, args, out):
        rec["embed"] = out.detach().clone()
    hooks.append(model.model.embed_tokens.register_forward_hook(emb_hook))
    with torch.no_grad():
        logits = model(input_ids=tokens).logits
    for h in hooks:
        h.remove()
    rec["logits"] = logits.detach().clone()
    return rec


def main():
    out_root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "golden")
    only = set(sys.argv[2:])  # model names to rebuild; none: all
    torch.manual_seed(0)
    for name, (cfg_cls, model_cls, kw, shard) in MODELS.items():
        if only and name not in only:
            continue
        gen = torch.Generator().manual_seed(1234)
        config = getattr(transformers, cfg_cls)(**kw)
        config._attn_implementation = "eager"
        model = getattr(transformers, model_cls)(config).eval()
        randomize_norms(model, gen, name in ZERO_CENTERED_NORMS)
        out_dir = os.path.join(out_root, name)
        os.makedirs(out_dir, exist_ok=True)
        model.to(torch.bfloat16).save_pretrained(
            out_dir, **({"max_shard_size": shard} if shard else {}))
        # The reference reads back what is on disk, in fp32.
        ref = getattr(transformers, model_cls).from_pretrained(
            out_dir, dtype=torch.float32, attn_implementation="eager").eval()
        tokens = torch.randint(0, VOCAB, (SEQS, MODEL_TOKENS.get(name, TOKENS)), generator=gen)
        rec = capture(ref, tokens)
        rec = {k: v.float().contiguous() for k, v in rec.items()}
        rec["tokens"] = tokens.to(torch.int32).contiguous()
        save_file(rec, os.path.join(out_dir, "golden.safetensors"),
                  metadata={"transformers": transformers.__version__, "torch": torch.__version__})
        print(f"{name}: {sum(p.numel() for p in ref.parameters())} params -> {out_dir}")
    fixtures = os.path.join(out_root, "..")
    if not only or "fp8_cases" in only:
        quantized_sources.make_fp8_cases(os.path.join(fixtures, "quantized"))
    for name, (cfg_cls, model_cls, kw, shard) in FP8_MODELS.items():
        if only and name not in only:
            continue
        gen = torch.Generator().manual_seed(1234)
        config = getattr(transformers, cfg_cls)(**kw)
        model = getattr(transformers, model_cls)(config).eval()
        randomize_norms(model, gen)
        bf16_dir = os.path.join(out_root, name + ".bf16")
        model.to(torch.bfloat16).save_pretrained(bf16_dir, max_shard_size=shard)
        tokens = torch.randint(0, VOCAB, (SEQS, TOKENS), generator=gen)
        out_dir = os.path.join(out_root, name)
        rec = quantized_sources.fp8_source(bf16_dir, out_dir, getattr(transformers, model_cls),
                                           fp8_linear, capture, tokens)
        shutil.rmtree(bf16_dir)
        rec = {k: v.float().contiguous() for k, v in rec.items()}
        rec["tokens"] = tokens.to(torch.int32).contiguous()
        save_file(rec, os.path.join(out_dir, "golden.safetensors"),
                  metadata={"transformers": transformers.__version__, "torch": torch.__version__})
        print(f"{name}: block-FP8 source -> {out_dir}")


if __name__ == "__main__":
    main()
