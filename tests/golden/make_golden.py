#!/usr/bin/env python3
"""Builds the golden fixtures: tiny random models of every shipped architecture,
saved with transformers' save_pretrained exactly as the hub ships checkpoints
(bf16 safetensors, config.json), and their per-layer outputs and logits from
transformers' own forward in fp32 (eager attention).

    python3 tests/golden/make_golden.py [OUT_DIR [NAME...]]   (default tests/fixtures/golden)

Each model of MODELS takes its random weights from its own seed (a CRC of its
name), so rebuilding some by NAME gives the fixtures a full run gives.

Each model directory gets golden.safetensors with:
  tokens            I32 [S, T]   input ids (S sequences of T tokens, positions 0..T-1)
  embed             F32 [S, T, H]
  layer.{L}.attn    F32 [S, T, H] self-attention (or linear-attention) block output
                                  (before the residual add)
  layer.{L}.mlp     F32 [S, T, H] MLP / MoE block output (before the residual add)
  layer.{L}.out     F32 [S, T, H] decoder layer output
  logits            F32 [S, T, V]
Multimodal Qwen3.5 fixtures add their multi-token-prediction block, and the
DeepSeek-V3 and GLM-4.5 ones their next-n prediction layer (NEXTN_MODELS):
  mtp.hidden_in     F32 [S, T, H]   the final normed hidden state it reads
  mtp.out           F32 [S, T-1, H] its output after mtp.norm / shared_head.norm
                                    (position t drafts token t + 2)
  mtp.logits        F32 [S, T-1, V]
transformers runs neither: their reference is written here after vLLM's
drafter (mtp_reference, nextn_reference), with transformers' own decoder
layer class for the layer inside.
The reference runs in fp32 on the bf16 weights read back from disk, so the
only difference left for moeq's fp32 CPU forward is summation order.
Shapes are chosen to catch mistakes: kv heads != heads, head_dim set apart
from hidden/heads, several experts with top-k > 1, shared experts, dense
layers among sparse ones, each RoPE variant, biases, tied embeddings, and a
sharded checkpoint with model.safetensors.index.json.
"""
import json
import os
import re
import shutil
import sys
import zlib

import torch
import transformers
from safetensors.torch import load_file, save_file

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
                         "original_max_position_embeddings": 128}), None),
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
    # gpt-oss: fused experts with biases (gate/up interleaved), a limit small enough that
    # the clamped SwiGLU clamps, attention sinks, sliding window (8 < 24 tokens) on layers
    # 0 and 2 only, q/k/v/o and router biases, YaRN without truncation, head_dim 24.
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM", base(
        head_dim=24, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2,
        sliding_window=8, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        swiglu_limit=0.25, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 4.0,
                         "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                         "original_max_position_embeddings": 128}), None),
    # Llama-4 text: top-1 sigmoid router scaling the expert input, shared expert, fused
    # experts (gate | up), layer 2 dense (moe_layers) and without RoPE (temperature-tuned q,
    # floor_scale 4 so that 24 positions see several scales), q/k L2 norm on the RoPE layers,
    # chunked attention (8 < 24 tokens) on layers 0, 1, 3.
    "llama4_text": ("Llama4TextConfig", "Llama4ForCausalLM", base(
        num_hidden_layers=4, head_dim=24, intermediate_size=32, intermediate_size_mlp=96,
        num_local_experts=4, num_experts_per_tok=1, moe_layers=[0, 1, 3],
        no_rope_layers=[1, 1, 0, 1],
        layer_types=["chunked_attention", "chunked_attention", "full_attention",
                     "chunked_attention"],
        attention_chunk_size=8, use_qk_norm=True, attn_temperature_tuning=True, floor_scale=4,
        attn_scale=0.5, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0}), None),
    # GLM-4.5: partial rotary (half of head_dim 24), q/k/v biases, per-head
    # q/k-norm, sigmoid router with correction bias choosing inside 2 of 4
    # groups, top-3, routed_scaling_factor, two shared experts' width, first
    # layer dense.
    "glm4_moe": ("Glm4MoeConfig", "Glm4MoeForCausalLM", base(
        head_dim=24, intermediate_size=96, moe_intermediate_size=32, n_routed_experts=8,
        num_experts_per_tok=3, n_group=4, topk_group=2, routed_scaling_factor=2.5,
        n_shared_experts=2, first_k_dense_replace=1, norm_topk_prob=True, attention_bias=True,
        use_qk_norm=True, num_mtp_layers=0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.5}), None),
    # MiniMax-M2: q/k RMSNorm over the whole projection, partial rotary given
    # as the checkpoints do (rotary_dim), sigmoid router with correction bias,
    # every layer MoE, experts w1/w2/w3.
    "minimax_m2": ("MiniMaxM2Config", "MiniMaxM2ForCausalLM", base(
        head_dim=32, intermediate_size=48, num_local_experts=6, num_experts_per_tok=2,
        rotary_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 5000000.0}), None),
    # DeepSeek-V3 with q_lora_rank: MLA (q_a/q_b, kv_a/kv_b, nope 16 + rope 8,
    # v 24), attention biases, interleaved YaRN with mscale and mscale_all_dim
    # (cos/sin factor and softmax scale), groups, scaling, dense first layer.
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM", base(
        num_key_value_heads=4, intermediate_size=96, moe_intermediate_size=32,
        n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
        routed_scaling_factor=2.5, n_shared_experts=1, first_k_dense_replace=1,
        norm_topk_prob=True, q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16,
        qk_rope_head_dim=8, v_head_dim=24, attention_bias=True, rope_interleave=True,
        max_position_embeddings=32, num_mtp_layers=0,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                         "original_max_position_embeddings": 8, "mscale": 0.8,
                         "mscale_all_dim": 0.9, "beta_fast": 32, "beta_slow": 1}), None),
    # DeepSeek-V3 layout without q_lora_rank (q_proj, as DeepSeek-V2-Lite),
    # rotate_half RoPE, no groups, no renormalisation, two dense layers.
    "deepseek_v3_q_proj": ("DeepseekV3Config", "DeepseekV3ForCausalLM", base(
        num_key_value_heads=4, intermediate_size=80, moe_intermediate_size=32,
        n_routed_experts=6, num_experts_per_tok=2, n_group=1, topk_group=1,
        routed_scaling_factor=1.5, n_shared_experts=1, first_k_dense_replace=2,
        num_hidden_layers=4, norm_topk_prob=False, q_lora_rank=None, kv_lora_rank=32,
        qk_nope_head_dim=8, qk_rope_head_dim=16, v_head_dim=16, rope_interleave=False,
        num_mtp_layers=0, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), None),
    # DeepSeek-V2: MLA with q_lora_rank and complex (interleaved) YaRN whose
    # mscale = mscale_all_dim leaves cos/sin unscaled but not the softmax
    # scale; softmax router limited to the one of 2 groups with the best
    # expert (top-3 of its 4), not renormalised, scaled; two shared experts'
    # width.
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM", base(
        num_key_value_heads=4, intermediate_size=96, moe_intermediate_size=32,
        n_routed_experts=8, num_experts_per_tok=3, topk_method="group_limited_greedy",
        n_group=2, topk_group=1, routed_scaling_factor=2.0, n_shared_experts=2,
        first_k_dense_replace=1, norm_topk_prob=False, q_lora_rank=48, kv_lora_rank=32,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, max_position_embeddings=32,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                         "original_max_position_embeddings": 8, "mscale": 0.707,
                         "mscale_all_dim": 0.707}), None),
}

# Sequence length per model where it differs from TOKENS.
MODEL_TOKENS = {"qwen3_next": 80}

# Models that ship a multi-token-prediction block (mtp.*, added after saving;
# the multimodal Qwen3.5 ones below get it too).
MTP_MODELS = {"qwen3_next"}

# Models that ship a next-n prediction layer past the numbered ones
# (model.layers.{num_hidden_layers}.*, num_nextn_predict_layers = 1), added
# after saving as DeepSeek-V3 and GLM-4.5 checkpoints carry it.
NEXTN_MODELS = {"glm4_moe", "deepseek_v3"}

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

# Multimodal checkpoints (a vision tower beside the language model, the text
# config nested under text_config), run on text: name -> (config class, model
# class, text_config, extra top-level config). Qwen3.5 hybrids: separate
# in_proj_qkv / in_proj_z / in_proj_b / in_proj_a, 4 value heads over 2 key
# heads, interleaved M-RoPE over a quarter of head_dim (text positions are the
# same on all three axes, so it is plain RoPE), and multi-token-prediction
# tensors (mtp.*) added after saving, as the released checkpoints carry them.
QWEN35_TEXT = dict(
    vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, head_dim=32, max_position_embeddings=512, rms_norm_eps=1e-6,
    initializer_range=0.08,
    layer_types=["linear_attention", "linear_attention", "full_attention", "linear_attention"],
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
    linear_value_head_dim=16, linear_conv_kernel_dim=4,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25,
                     "mrope_section": [2, 1, 1], "mrope_interleaved": True})
QWEN35_VISION = dict(depth=1, hidden_size=32, num_heads=2, intermediate_size=64,
                     out_hidden_size=64, patch_size=4, spatial_merge_size=2,
                     temporal_patch_size=2, in_channels=3, num_position_embeddings=16)
QWEN35_IDS = dict(image_token_id=150, video_token_id=151, vision_start_token_id=152,
                  vision_end_token_id=153)
MULTIMODAL_MODELS = {
    # Qwen3.5-MoE (35B-A3B layout): every layer MoE, 8 experts top-2, shared expert.
    "qwen3_5_moe": ("Qwen3_5MoeConfig", "Qwen3_5MoeForConditionalGeneration", dict(
        QWEN35_TEXT, moe_intermediate_size=32, shared_expert_intermediate_size=48,
        num_experts=8, num_experts_per_tok=2)),
    # Qwen3.5 dense (27B layout): the same mixers with a SwiGLU MLP.
    "qwen3_5": ("Qwen3_5Config", "Qwen3_5ForConditionalGeneration", dict(
        QWEN35_TEXT, intermediate_size=96)),
}
MODEL_TOKENS.update({"qwen3_5_moe": 80, "qwen3_5": 80})

def drop_partial_rotary_factor(config):
    # MiniMax-M2's own checkpoints state only rotary_dim.
    del config["rope_parameters"]["partial_rotary_factor"]


# config.json edits after saving, so the fixture reads as the hub's does; the
# reference is loaded from the edited file.
CONFIG_EDITS = {"minimax_m2": drop_partial_rotary_factor}


# Models whose RMSNorms scale by (1 + weight) (zero-centered; the gated norm
# of their linear attention and the vision tower's LayerNorms excepted).
ZERO_CENTERED_NORMS = {"qwen3_next", "qwen3_5_moe", "qwen3_5"}


def randomize_norms(model, gen, zero_centered=False):
    # Norm weights default to ones (zeros when zero-centered), which would
    # hide a missing multiply; either way the scale becomes 1 + 0.2 N(0, 1).
    for name, p in model.named_parameters():
        if "norm" in name and p.dim() == 1:
            offset = 0.0 if zero_centered and "linear_attn.norm" not in name and \
                "visual" not in name else 1.0
            with torch.no_grad():
                p.copy_(offset + 0.2 * torch.randn(p.shape, generator=gen))
        if name.endswith("bias"):
            with torch.no_grad():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        if name.endswith("sinks"):  # gpt-oss: large enough to take real attention mass
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen))
    # Sigmoid routers' correction bias is a buffer that starts at zero; it
    # must move the choice away from the plain top-k to be tested.
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            with torch.no_grad():
                b.copy_(0.05 * torch.randn(b.shape, generator=gen))


def capture(model, tokens):
    rec = {}
    hooks = []
    lm = getattr(model.model, "language_model", model.model)  # multimodal: the text model
    layers = lm.layers
    for i, layer in enumerate(layers):
        def out_hook(mod, args, out, i=i):
            rec[f"layer.{i}.out"] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        hooks.append(layer.register_forward_hook(out_hook))
        mlp = (getattr(layer, "mlp", None) or getattr(layer, "feed_forward", None) or
               getattr(layer, "block_sparse_moe"))
        def mlp_hook(mod, args, out, i=i):
            rec[f"layer.{i}.mlp"] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        hooks.append(mlp.register_forward_hook(mlp_hook))
        def attn_hook(mod, args, out, i=i):
            rec[f"layer.{i}.attn"] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        mixer = getattr(layer, "self_attn", None) or getattr(layer, "linear_attn")
        hooks.append(mixer.register_forward_hook(attn_hook))
    def emb_hook(mod, args, out):
        rec["embed"] = out.detach().clone()
    hooks.append(lm.embed_tokens.register_forward_hook(emb_hook))
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
    for name, (cfg_cls, model_cls, kw, shard) in MODELS.items():
        if only and name not in only:
            continue
        torch.manual_seed(zlib.crc32(name.encode()))
        gen = torch.Generator().manual_seed(1234)
        config = getattr(transformers, cfg_cls)(**kw)
        config._attn_implementation = "eager"
        model = getattr(transformers, model_cls)(config).eval()
        randomize_norms(model, gen, name in ZERO_CENTERED_NORMS)
        out_dir = os.path.join(out_root, name)
        os.makedirs(out_dir, exist_ok=True)
        model.to(torch.bfloat16).save_pretrained(
            out_dir, **({"max_shard_size": shard} if shard else {}))
        if name in CONFIG_EDITS:
            path = os.path.join(out_dir, "config.json")
            with open(path) as f:
                saved = json.load(f)
            CONFIG_EDITS[name](saved)
            with open(path, "w") as f:
                json.dump(saved, f, indent=2, sort_keys=True)
                f.write("\n")
        # The reference reads back what is on disk, in fp32.
        ref = getattr(transformers, model_cls).from_pretrained(
            out_dir, dtype=torch.float32, attn_implementation="eager").eval()
        tokens = torch.randint(0, VOCAB, (SEQS, MODEL_TOKENS.get(name, TOKENS)), generator=gen)
        rec = capture(ref, tokens)
        if name in MTP_MODELS:
            add_mtp_tensors(out_dir, kw, torch.Generator().manual_seed(77))
            rec.update(mtp_reference(ref, out_dir, tokens))
        if name in NEXTN_MODELS:
            add_nextn_layer(out_dir, kw["num_hidden_layers"], torch.Generator().manual_seed(78))
            rec.update(nextn_reference(ref, out_dir, tokens))
        rec = {k: v.float().contiguous() for k, v in rec.items()}
        rec["tokens"] = tokens.to(torch.int32).contiguous()
        save_file(rec, os.path.join(out_dir, "golden.safetensors"),
                  metadata={"transformers": transformers.__version__, "torch": torch.__version__})
        print(f"{name}: {sum(p.numel() for p in ref.parameters())} params -> {out_dir}")
    fixtures = os.path.join(out_root, "..")
    if not only or "fp8_cases" in only:
        quantized_sources.make_fp8_cases(os.path.join(fixtures, "quantized"))
    if not only or "gpt_oss_mxfp4" in only:
        # gpt-oss with MXFP4 experts (openai/gpt-oss's layout), from the gpt_oss config.
        cfg_cls, model_cls, kw, _ = MODELS["gpt_oss"]
        gen = torch.Generator().manual_seed(4321)
        model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**kw)).eval()
        randomize_norms(model, gen)
        bf16_dir = os.path.join(out_root, "gpt_oss_mxfp4.bf16")
        model.to(torch.bfloat16).save_pretrained(bf16_dir)
        tokens = torch.randint(0, VOCAB, (SEQS, TOKENS), generator=gen)
        out_dir = os.path.join(out_root, "gpt_oss_mxfp4")
        rec = quantized_sources.mxfp4_source(
            bf16_dir, out_dir, getattr(transformers, model_cls), capture, tokens,
            os.path.join(fixtures, "quantized", "mxfp4_reference.safetensors"))
        shutil.rmtree(bf16_dir)
        rec = {k: v.float().contiguous() for k, v in rec.items()}
        rec["tokens"] = tokens.to(torch.int32).contiguous()
        save_file(rec, os.path.join(out_dir, "golden.safetensors"),
                  metadata={"transformers": transformers.__version__, "torch": torch.__version__})
        print(f"gpt_oss_mxfp4: MXFP4 experts -> {out_dir}")
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
    for name, (cfg_cls, model_cls, text_kw) in MULTIMODAL_MODELS.items():
        if only and name not in only:
            continue
        make_multimodal(out_root, name, cfg_cls, model_cls, text_kw)
    if not only or "llama4" in only:
        make_llama4_multimodal(out_root)


# Llama-4 as released: Llama4ForConditionalGeneration with the llama4_text model above as
# its language model (saved under language_model.*) beside a one-layer vision model.
LLAMA4_VISION = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, image_size=28, patch_size=14, vision_output_dim=64,
                     projector_input_dim=64, projector_output_dim=64)


def make_llama4_multimodal(out_root):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    text_kw = MODELS["llama4_text"][2]
    config = transformers.Llama4Config(text_config=text_kw, vision_config=LLAMA4_VISION)
    model = transformers.Llama4ForConditionalGeneration(config).eval()
    randomize_norms(model, gen)
    out_dir = os.path.join(out_root, "llama4")
    os.makedirs(out_dir, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out_dir)
    ref = transformers.Llama4ForConditionalGeneration.from_pretrained(
        out_dir, dtype=torch.float32, attn_implementation="eager").eval()
    tokens = torch.randint(0, VOCAB, (SEQS, TOKENS), generator=gen)
    rec = capture(ref.language_model, tokens)  # text only: the language model's forward
    rec = {k: v.float().contiguous() for k, v in rec.items()}
    rec["tokens"] = tokens.to(torch.int32).contiguous()
    save_file(rec, os.path.join(out_dir, "golden.safetensors"),
              metadata={"transformers": transformers.__version__, "torch": torch.__version__})
    print(f"llama4: {sum(p.numel() for p in ref.parameters())} params (with the vision model) "
          f"-> {out_dir}")


def add_mtp_tensors(out_dir, text_kw, gen):
    # The one extra decoder layer Qwen3.5 checkpoints ship for multi-token
    # prediction (names and shapes as vLLM's qwen3_5_mtp.py loads them: fc over
    # [embedding; hidden], three norms and a full-attention layer with the
    # model's MLP); transformers ignores mtp.* (_keys_to_ignore_on_load_unexpected).
    h, d = text_kw["hidden_size"], text_kw["head_dim"]
    hq, hkv = text_kw["num_attention_heads"], text_kw["num_key_value_heads"]
    shapes = {"mtp.fc.weight": [h, 2 * h], "mtp.norm.weight": [h],
              "mtp.pre_fc_norm_hidden.weight": [h], "mtp.pre_fc_norm_embedding.weight": [h]}
    p = "mtp.layers.0."
    shapes.update({p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h],
                   p + "self_attn.q_proj.weight": [2 * hq * d, h],
                   p + "self_attn.k_proj.weight": [hkv * d, h],
                   p + "self_attn.v_proj.weight": [hkv * d, h],
                   p + "self_attn.o_proj.weight": [h, hq * d],
                   p + "self_attn.q_norm.weight": [d], p + "self_attn.k_norm.weight": [d]})
    if "num_experts" in text_kw:
        i, si = text_kw["moe_intermediate_size"], text_kw["shared_expert_intermediate_size"]
        shapes[p + "mlp.gate.weight"] = [text_kw["num_experts"], h]
        for e in range(text_kw["num_experts"]):
            shapes.update({f"{p}mlp.experts.{e}.gate_proj.weight": [i, h],
                           f"{p}mlp.experts.{e}.up_proj.weight": [i, h],
                           f"{p}mlp.experts.{e}.down_proj.weight": [h, i]})
        shapes.update({p + "mlp.shared_expert.gate_proj.weight": [si, h],
                       p + "mlp.shared_expert.up_proj.weight": [si, h],
                       p + "mlp.shared_expert.down_proj.weight": [h, si],
                       p + "mlp.shared_expert_gate.weight": [1, h]})
    else:
        i = text_kw["intermediate_size"]
        shapes.update({p + "mlp.gate_proj.weight": [i, h], p + "mlp.up_proj.weight": [i, h],
                       p + "mlp.down_proj.weight": [h, i]})
    path = os.path.join(out_dir, "model.safetensors")
    tensors = load_file(path)
    for k, shape in shapes.items():
        tensors[k] = (0.08 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
    save_file(tensors, path, metadata={"format": "pt"})


def fuse_experts(out_dir, text_kw):
    # Qwen3.5-MoE as released stores each layer's experts in two tensors
    # (transformers 5's own layout: gate_up [E, 2I, H], gate rows first; down
    # [E, H, I]); save_pretrained writes them per expert. The MTP layer keeps
    # per-expert tensors, as in the released checkpoints.
    path = os.path.join(out_dir, "model.safetensors")
    tensors = load_file(path)
    for l in range(text_kw["num_hidden_layers"]):
        p = f"model.language_model.layers.{l}.mlp.experts."
        n = text_kw["num_experts"]
        gate_up = [torch.cat([tensors.pop(f"{p}{e}.gate_proj.weight"),
                              tensors.pop(f"{p}{e}.up_proj.weight")]) for e in range(n)]
        down = [tensors.pop(f"{p}{e}.down_proj.weight") for e in range(n)]
        tensors[p + "gate_up_proj"] = torch.stack(gate_up).contiguous()
        tensors[p + "down_proj"] = torch.stack(down).contiguous()
    save_file(tensors, path, metadata={"format": "pt"})


def stacked_experts(w, p, n):
    # transformers 5's fused expert parameters from per-expert weights
    # w[f"{p}mlp.experts.{e}.{gate,up,down}_proj.weight"], as its decoder
    # layers load them.
    return {
        "mlp.experts.gate_up_proj": torch.stack([torch.cat(
            [w[f"{p}mlp.experts.{e}.gate_proj.weight"], w[f"{p}mlp.experts.{e}.up_proj.weight"]])
            for e in range(n)]),
        "mlp.experts.down_proj": torch.stack(
            [w[f"{p}mlp.experts.{e}.down_proj.weight"] for e in range(n)]),
    }


def rms_norm(lm, cfg, weight):
    # The model's own RMSNorm class with the given weight.
    m = type(lm.norm)(cfg.hidden_size, eps=cfg.rms_norm_eps)
    m.weight.data = weight
    return m


def final_normed_hidden(ref, lm, tokens):
    # The main model's final normed hidden states on tokens (model.norm's output).
    hidden = {}
    hook = lm.norm.register_forward_hook(lambda mod, a, out: hidden.setdefault("h", out.detach()))
    with torch.no_grad():
        ref(input_ids=tokens)
    hook.remove()
    return hidden["h"]


def mtp_reference(ref, out_dir, tokens):
    # The MTP block as vLLM runs it for speculative decoding (qwen3_5_mtp.py,
    # Qwen3_5MultiTokenPredictor.forward): the main model's final normed
    # hidden state at t and the embedding of token t + 1, each RMS-normed,
    # concatenated [embedding; hidden], through fc, one full-attention decoder
    # layer (transformers' own layer class, loaded with mtp.layers.0.*), and
    # mtp.norm; logits from the shared lm_head.
    lm = getattr(ref.model, "language_model", ref.model)
    cfg = getattr(ref.config, "text_config", ref.config)
    full = cfg.layer_types.index("full_attention")
    layer = type(lm.layers[full])(cfg, full).eval()
    w = {k: v.float() for k, v in load_file(os.path.join(out_dir, "model.safetensors")).items()
         if k.startswith("mtp.")}
    p = "mtp.layers.0."
    sd = {k[len(p):]: v for k, v in w.items() if k.startswith(p) and ".experts." not in k}
    n = getattr(cfg, "num_experts", 0)
    if n:
        sd.update(stacked_experts(w, p, n))
    layer.load_state_dict(sd, strict=True)

    def norm(key):
        return rms_norm(lm, cfg, w[key])

    hidden = {"h": final_normed_hidden(ref, lm, tokens)}
    S, T = tokens.shape
    with torch.no_grad():
        e = norm("mtp.pre_fc_norm_embedding.weight")(lm.embed_tokens(tokens[:, 1:]))
        h = norm("mtp.pre_fc_norm_hidden.weight")(hidden["h"][:, :-1])
        x = torch.nn.functional.linear(torch.cat([e, h], dim=-1), w["mtp.fc.weight"])
        pos = torch.arange(T - 1)[None].expand(S, -1)
        mask = torch.full((T - 1, T - 1), float("-inf")).triu(1)[None, None].expand(S, 1, -1, -1)
        y = layer(x, position_embeddings=lm.rotary_emb(x, pos), attention_mask=mask,
                  position_ids=pos)
        y = norm("mtp.norm.weight")(y)
        logits = ref.lm_head(y)
    return {"mtp.hidden_in": hidden["h"], "mtp.out": y, "mtp.logits": logits}


def add_nextn_layer(out_dir, n_layers, gen):
    # DeepSeek-V3's and GLM-4.5's next-n prediction layer, under the names
    # vLLM's deepseek_mtp.py / glm4_moe_mtp.py load (model.layers.{N}.*, N =
    # num_hidden_layers): enorm, hnorm, eh_proj [H, 2H] over [embedding;
    # hidden], a decoder layer shaped like the last (sparse) one, and
    # shared_head.norm; shared_head.head and embed_tokens are copies of
    # lm_head and the embedding, as DeepSeek-V3's checkpoint ships them.
    path = os.path.join(out_dir, "model.safetensors")
    tensors = load_file(path)
    last, nxt = f"model.layers.{n_layers - 1}.", f"model.layers.{n_layers}."
    h = tensors["model.embed_tokens.weight"].shape[1]

    def rand(name, shape):
        if name.endswith("e_score_correction_bias"):
            v = 0.05 * torch.randn(shape, generator=gen)
        elif name.endswith("bias"):
            v = 0.1 * torch.randn(shape, generator=gen)
        elif "norm" in name:
            v = 1.0 + 0.2 * torch.randn(shape, generator=gen)
        else:
            v = 0.08 * torch.randn(shape, generator=gen)
        return v.to(torch.bfloat16)

    for k in sorted(k for k in tensors if k.startswith(last)):
        tensors[nxt + k[len(last):]] = rand(k, tensors[k].shape)
    for k, shape in (("eh_proj.weight", [h, 2 * h]), ("enorm.weight", [h]),
                     ("hnorm.weight", [h]), ("shared_head.norm.weight", [h])):
        tensors[nxt + k] = rand(k, shape)
    tensors[nxt + "shared_head.head.weight"] = tensors["lm_head.weight"].clone()
    tensors[nxt + "embed_tokens.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, path, metadata={"format": "pt"})
    cpath = os.path.join(out_dir, "config.json")
    with open(cpath) as f:
        saved = json.load(f)
    saved["num_nextn_predict_layers"] = 1
    with open(cpath, "w") as f:
        json.dump(saved, f, indent=2, sort_keys=True)
        f.write("\n")


def nextn_reference(ref, out_dir, tokens):
    # The next-n layer as vLLM runs it for speculative decoding
    # (deepseek_mtp.py DeepSeekMultiTokenPredictorLayer.forward, the same in
    # glm4_moe_mtp.py): at position t the main model's final normed hidden
    # state h_t (the model's output, after model.norm) and the embedding of
    # token t + 1, zeroed at position 0; enorm and hnorm; eh_proj over
    # [embedding; hidden]; the decoder layer (transformers' own class, layer
    # index num_hidden_layers, so sparse); compute_logits then applies
    # shared_head.norm and shared_head.head.
    lm = ref.model
    cfg = ref.config
    n = cfg.num_hidden_layers
    layer = type(lm.layers[-1])(cfg, n).eval()
    p = f"model.layers.{n}."
    w = {k[len(p):]: v.float() for k, v in
         load_file(os.path.join(out_dir, "model.safetensors")).items() if k.startswith(p)}
    own = ("eh_proj.", "enorm.", "hnorm.", "shared_head.", "embed_tokens.")
    sd = {k: v for k, v in w.items() if ".experts." not in k and not k.startswith(own)}
    sd.update(stacked_experts(w, "", cfg.n_routed_experts))
    layer.load_state_dict(sd, strict=True)

    def norm(key):
        return rms_norm(lm, cfg, w[key])

    hidden = {"h": final_normed_hidden(ref, lm, tokens)}
    S, T = tokens.shape
    with torch.no_grad():
        emb = lm.embed_tokens(tokens[:, 1:]).clone()
        emb[:, 0] = 0  # positions == 0
        e = norm("enorm.weight")(emb)
        h = norm("hnorm.weight")(hidden["h"][:, :-1])
        x = torch.nn.functional.linear(torch.cat([e, h], dim=-1), w["eh_proj.weight"])
        pos = torch.arange(T - 1)[None].expand(S, -1)
        mask = torch.full((T - 1, T - 1), float("-inf")).triu(1)[None, None].expand(S, 1, -1, -1)
        y = layer(x, position_embeddings=lm.rotary_emb(x, pos), attention_mask=mask,
                  position_ids=pos)
        y = y[0] if isinstance(y, tuple) else y
        y = norm("shared_head.norm.weight")(y)
        logits = torch.nn.functional.linear(y, w["shared_head.head.weight"])
    return {"mtp.hidden_in": hidden["h"], "mtp.out": y, "mtp.logits": logits}


def make_multimodal(out_root, name, cfg_cls, model_cls, text_kw):
    torch.manual_seed(0)  # the same weights whether built alone or after the others
    gen = torch.Generator().manual_seed(1234)
    config = getattr(transformers, cfg_cls)(text_config=text_kw, vision_config=QWEN35_VISION,
                                            **QWEN35_IDS)
    config._attn_implementation = "eager"
    model = getattr(transformers, model_cls)(config).eval()
    randomize_norms(model, gen, name in ZERO_CENTERED_NORMS)
    out_dir = os.path.join(out_root, name)
    os.makedirs(out_dir, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out_dir)
    ref = getattr(transformers, model_cls).from_pretrained(
        out_dir, dtype=torch.float32, attn_implementation="eager").eval()
    if "num_experts" in text_kw:
        fuse_experts(out_dir, text_kw)
    add_mtp_tensors(out_dir, text_kw, gen)
    tokens = torch.randint(0, VOCAB - 16, (SEQS, MODEL_TOKENS.get(name, TOKENS)), generator=gen)
    rec = capture(ref, tokens)
    rec.update(mtp_reference(ref, out_dir, tokens))
    rec = {k: v.float().contiguous() for k, v in rec.items()}
    rec["tokens"] = tokens.to(torch.int32).contiguous()
    save_file(rec, os.path.join(out_dir, "golden.safetensors"),
              metadata={"transformers": transformers.__version__, "torch": torch.__version__})
    print(f"{name}: {sum(p.numel() for p in ref.parameters())} params (with the vision tower) "
          f"-> {out_dir}")


if __name__ == "__main__":
    main()
