#!/usr/bin/env python3
"""Synthetic checkpoints with the layer shapes of real MoE models and random
weights, for moeq's speed and memory benchmarks (bench/synthetic/run.sh).

    make_synthetic.py SHAPE OUT_DIR [--layers N] [--tokens N] [--seed S]

SHAPE is one of:
  qwen3-30b-a3b   Qwen3-30B-A3B: hidden 2048, 128 experts of 768, top-8,
                  32 query / 4 kv heads of 128, q/k-norm (arch qwen3_moe)
  glm45-air       GLM-4.5-Air's MoE layer shape: hidden 4096, 128 experts of
                  1408, top-8, one shared expert of 1408, 96 / 8 heads of 128,
                  half rotary, attention biases. GLM's own routing (sigmoid
                  with a correction bias) and file layout wait for the glm4_moe
                  architecture; the shapes, and so the work, are the same, so
                  the file uses the qwen2_moe architecture (softmax router,
                  sigmoid-gated shared expert).
  tiny-qwen3      a few-MiB qwen3_moe model (hidden 256, 8 experts of 128,
                  top-2, 4 / 2 heads of 64) for checking the benchmark
                  scripts on a CPU before they go to a GPU
  deepseek-v3     A DeepSeek-V3-sized MoE block: hidden 7168, 256 experts of
                  2048, top-8, one shared expert of 2048; attention simplified
                  to GQA with 56 / 8 heads of 128 (qwen2_moe), the shape the
                  earlier results were measured on.
  deepseek-v3-mla DeepSeek-V3's layer as released (arch deepseek_v3): multi-
                  head latent attention with 128 heads, q_lora_rank 1536,
                  kv_lora_rank 512, qk_nope/qk_rope/v head dims 128/64/128,
                  interleaved YaRN RoPE (factor 40, as the checkpoint's
                  config.json); hidden 7168, 256 experts of 2048, top-8 within
                  4 of 8 groups by sigmoid scores with a correction bias,
                  routed_scaling_factor 2.5, one shared expert of 2048. Every
                  layer is a MoE layer (first_k_dense_replace 0).

Weights are N(0, 0.02^2) in bf16 (norms 1), one shard per layer plus one for
the embeddings, with an index; the vocabulary is 4096 tokens (the output
head does not enter the per-layer benchmark). --tokens also writes
OUT_DIR/tokens.bin: that many random token ids, int32 little-endian, for
moeq quantize --calib. Uses torch (on the GPU when there is one) and
safetensors.
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file

SHAPES = {
    "qwen3-30b-a3b": dict(
        model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"], hidden_size=2048,
        num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
        num_experts_per_tok=8, moe_intermediate_size=768, intermediate_size=6144,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], rope_theta=1e6),
    "tiny-qwen3": dict(
        model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"], hidden_size=256,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_experts=8,
        num_experts_per_tok=2, moe_intermediate_size=128, intermediate_size=512,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], rope_theta=1e6),
    "glm45-air": dict(
        model_type="qwen2_moe", architectures=["Qwen2MoeForCausalLM"], hidden_size=4096,
        num_attention_heads=96, num_key_value_heads=8, head_dim=128, num_experts=128,
        num_experts_per_tok=8, moe_intermediate_size=1408, intermediate_size=10944,
        shared_expert_intermediate_size=1408, norm_topk_prob=True, decoder_sparse_step=1,
        mlp_only_layers=[], partial_rotary_factor=0.5, rope_theta=1e6, qkv_bias=True),
    "deepseek-v3": dict(
        model_type="qwen2_moe", architectures=["Qwen2MoeForCausalLM"], hidden_size=7168,
        num_attention_heads=56, num_key_value_heads=8, head_dim=128, num_experts=256,
        num_experts_per_tok=8, moe_intermediate_size=2048, intermediate_size=18432,
        shared_expert_intermediate_size=2048, norm_topk_prob=True, decoder_sparse_step=1,
        mlp_only_layers=[], rope_theta=1e4, qkv_bias=False),
    # DeepSeek-V3's config.json (deepseek-ai/DeepSeek-V3), every layer MoE.
    "deepseek-v3-mla": dict(
        model_type="deepseek_v3", architectures=["DeepseekV3ForCausalLM"], hidden_size=7168,
        num_attention_heads=128, num_key_value_heads=128, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=256,
        num_experts_per_tok=8, moe_intermediate_size=2048, intermediate_size=18432,
        n_shared_experts=1, n_group=8, topk_group=4, routed_scaling_factor=2.5,
        norm_topk_prob=True, scoring_func="sigmoid", topk_method="noaux_tc",
        first_k_dense_replace=0, attention_bias=False, rope_theta=1e4, rope_interleave=True,
        max_position_embeddings=163840,
        rope_scaling=dict(type="yarn", factor=40, beta_fast=32, beta_slow=1, mscale=1.0,
                          mscale_all_dim=1.0, original_max_position_embeddings=4096)),
}
VOCAB = 4096


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    s = dict(SHAPES[a.shape])
    qkv_bias = s.get("qkv_bias", False)
    os.makedirs(a.out, exist_ok=False)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=dev).manual_seed(a.seed)

    def rnd(*shape):
        t = torch.empty(*shape, device=dev, dtype=torch.bfloat16)
        return t.normal_(0.0, 0.02, generator=gen).cpu()

    def ones(n):
        return torch.ones(n, dtype=torch.bfloat16)

    H, hq, hkv = s["hidden_size"], s["num_attention_heads"], s["num_key_value_heads"]
    E, I = s.get("num_experts") or s["n_routed_experts"], s["moe_intermediate_size"]
    deepseek = s["model_type"] == "deepseek_v3"
    config = dict(dict(max_position_embeddings=32768, use_sliding_window=False), **s,
                  num_hidden_layers=a.layers, vocab_size=VOCAB, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, hidden_act="silu", torch_dtype="bfloat16")
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    n_files = a.layers + 1
    weight_map = {}

    def save(tensors, index):
        name = f"model-{index + 1:05d}-of-{n_files:05d}.safetensors"
        save_file(tensors, os.path.join(a.out, name), metadata={"format": "pt"})
        for k in tensors:
            weight_map[k] = name

    save({"model.embed_tokens.weight": rnd(VOCAB, H), "model.norm.weight": ones(H),
          "lm_head.weight": rnd(VOCAB, H)}, a.layers)
    for L in range(a.layers):
        p = f"model.layers.{L}."
        t = {p + "input_layernorm.weight": ones(H), p + "post_attention_layernorm.weight": ones(H)}
        if "kv_lora_rank" in s:  # multi-head latent attention (DeepseekV3Attention's tensors)
            rq, rkv, rot = s["q_lora_rank"], s["kv_lora_rank"], s["qk_rope_head_dim"]
            nope, vd = s["qk_nope_head_dim"], s["v_head_dim"]
            a_ = p + "self_attn."
            t[a_ + "q_a_proj.weight"] = rnd(rq, H)
            t[a_ + "q_a_layernorm.weight"] = ones(rq)
            t[a_ + "q_b_proj.weight"] = rnd(hq * (nope + rot), rq)
            t[a_ + "kv_a_proj_with_mqa.weight"] = rnd(rkv + rot, H)
            t[a_ + "kv_a_layernorm.weight"] = ones(rkv)
            t[a_ + "kv_b_proj.weight"] = rnd(hq * (nope + vd), rkv)
            t[a_ + "o_proj.weight"] = rnd(H, hq * vd)
        else:
            D = s["head_dim"]
            t[p + "self_attn.q_proj.weight"] = rnd(hq * D, H)
            t[p + "self_attn.k_proj.weight"] = rnd(hkv * D, H)
            t[p + "self_attn.v_proj.weight"] = rnd(hkv * D, H)
            t[p + "self_attn.o_proj.weight"] = rnd(H, hq * D)
        t[p + "mlp.gate.weight"] = rnd(E, H)
        if s["model_type"] == "qwen3_moe":
            t[p + "self_attn.q_norm.weight"] = ones(D)
            t[p + "self_attn.k_norm.weight"] = ones(D)
        if qkv_bias:
            for n, w in (("q", hq * D), ("k", hkv * D), ("v", hkv * D)):
                t[p + f"self_attn.{n}_proj.bias"] = rnd(w)
        if deepseek:  # the router's e_score_correction_bias, fp32 in the checkpoint
            t[p + "mlp.gate.e_score_correction_bias"] = torch.zeros(E, dtype=torch.float32)
        for e in range(E):
            x = p + f"mlp.experts.{e}."
            t[x + "gate_proj.weight"] = rnd(I, H)
            t[x + "up_proj.weight"] = rnd(I, H)
            t[x + "down_proj.weight"] = rnd(H, I)
        if "shared_expert_intermediate_size" in s:
            Is = s["shared_expert_intermediate_size"]
            x = p + "mlp.shared_expert."
            t[x + "gate_proj.weight"] = rnd(Is, H)
            t[x + "up_proj.weight"] = rnd(Is, H)
            t[x + "down_proj.weight"] = rnd(H, Is)
            t[p + "mlp.shared_expert_gate.weight"] = rnd(1, H)
        if deepseek:  # n_shared_experts of moe_intermediate_size, one plain MLP
            Is = s["n_shared_experts"] * I
            x = p + "mlp.shared_experts."
            t[x + "gate_proj.weight"] = rnd(Is, H)
            t[x + "up_proj.weight"] = rnd(Is, H)
            t[x + "down_proj.weight"] = rnd(H, Is)
        save(t, L)
        del t
    total = sum(os.path.getsize(os.path.join(a.out, f)) for f in set(weight_map.values()))
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    if a.tokens:
        ids = torch.randint(0, VOCAB, (a.tokens,), generator=torch.Generator().manual_seed(a.seed))
        ids.to(torch.int32).numpy().astype("<i4").tofile(os.path.join(a.out, "tokens.bin"))
    print(f"wrote {a.out}: {a.shape}, {a.layers} layers, {total / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
