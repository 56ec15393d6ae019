"""Fixtures for sources their publishers ship quantized, which moeq dequantizes on load.

Used by make_golden.py. Two formats:

* Block-scaled FP8 (DeepSeek-V3, MiniMax-M2, Qwen3-FP8): a linear's weight W [out, in] is
  F8_E4M3 with W_scale_inv [ceil(out/128), ceil(in/128)] in F32; W = fp8 * scale_inv per block.
  The quantizer below is transformers' Fp8Quantize._quantize_one (per-block amax, scale =
  448 / amax, stored inverse, clamp, cast) extended to partial last blocks, which that
  function leaves unquantized; on whole blocks it is checked to give the same bytes as
  transformers'. The reference dequantization is transformers' own _dequantize_fp8_weight
  (integrations/finegrained_fp8.py), which handles partial blocks, in fp32.
* MXFP4 (gpt-oss experts): see mxfp4_quantize and mxfp4_source below.
"""
import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file
from transformers.integrations import finegrained_fp8 as tf_fp8

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448


def fp8_block_quantize(w, block=(128, 128), scale_dtype=torch.float32):
    """w [rows, cols] -> (F8_E4M3 [rows, cols], scale_inv [ceil(rows/bm), ceil(cols/bn)])."""
    bm, bn = block
    rows, cols = w.shape
    sr, sc = -(-rows // bm), -(-cols // bn)
    w = w.to(torch.float32)
    q = torch.empty(rows, cols, dtype=FP8)
    inv = torch.empty(sr, sc, dtype=torch.float32)
    for i in range(sr):
        for j in range(sc):
            blk = w[i * bm:(i + 1) * bm, j * bn:(j + 1) * bn]
            amax = blk.abs().amax()
            scale = FP8_MAX / amax if amax > 0 else torch.tensor(1.0)
            inv[i, j] = (1.0 / scale).to(torch.float32)
            q[i * bm:(i + 1) * bm, j * bn:(j + 1) * bn] = torch.clamp(
                blk * scale, min=-FP8_MAX, max=FP8_MAX).to(FP8)
    return q, inv.to(scale_dtype)


def fp8_reference_dequant(q, inv, block=(128, 128)):
    """transformers' own block dequantization, in fp32."""
    return tf_fp8._dequantize_fp8_weight(q.clone(), inv, list(block), torch.float32)


def check_against_transformers_quantizer():
    """On whole blocks the quantizer above must give transformers' Fp8Quantize bytes."""
    from transformers import FineGrainedFP8Config
    hq = type("HQ", (), {"quantization_config": FineGrainedFP8Config(weight_block_size=[128, 128])})()
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(256, 384, generator=gen)
    ref = tf_fp8.Fp8Quantize(hq)._quantize_one("x.weight", w)
    q, inv = fp8_block_quantize(w)
    assert torch.equal(ref["x.weight"].view(torch.uint8), q.view(torch.uint8))
    assert torch.equal(ref["x.weight_scale_inv"], inv)


def make_fp8_cases(out_dir):
    """Single tensors for tests/test_source_quant.c: whole and partial blocks, F32 and BF16
    scales, non-square blocks; expected = transformers' dequantization in fp32."""
    check_against_transformers_quantizer()
    gen = torch.Generator().manual_seed(11)
    cases = [  # (name, rows, cols, block, scale dtype)
        ("whole", 256, 128, (128, 128), torch.float32),
        ("ragged", 200, 300, (128, 128), torch.float32),
        ("ragged_bf16_scale", 130, 129, (128, 128), torch.bfloat16),
        ("small_blocks", 37, 50, (16, 32), torch.float32),
    ]
    rec = {}
    for name, rows, cols, block, sdt in cases:
        # Rows of very different magnitude so that every block has its own scale.
        w = torch.randn(rows, cols, generator=gen) * torch.logspace(-3, 1, rows)[:, None]
        q, inv = fp8_block_quantize(w, block, sdt)
        rec[f"{name}.weight"] = q
        rec[f"{name}.weight_scale_inv"] = inv
        rec[f"{name}.expected"] = fp8_reference_dequant(q, inv, block).contiguous()
        rec[f"{name}.block"] = torch.tensor(block, dtype=torch.int32)
    os.makedirs(out_dir, exist_ok=True)
    save_file(rec, os.path.join(out_dir, "fp8_cases.safetensors"))


def fp8_source(bf16_dir, out_dir, model_cls, quantize_name, capture, tokens):
    """Rewrites the bf16 checkpoint in bf16_dir as a block-FP8 source in out_dir (every
    tensor for which quantize_name(name) is true), and returns transformers' forward
    record on exactly the weights moeq must decode: the FP8 ones dequantized by
    transformers' reference, the rest as stored."""
    os.makedirs(out_dir, exist_ok=True)
    deq_dir = out_dir + ".dequantized"
    os.makedirs(deq_dir, exist_ok=True)
    for f in os.listdir(bf16_dir):
        src = os.path.join(bf16_dir, f)
        if f.endswith(".safetensors") and f != "golden.safetensors":
            sd = load_file(src)
            q_sd, deq_sd = {}, {}
            for k, v in sd.items():
                if quantize_name(k):
                    q, inv = fp8_block_quantize(v)
                    q_sd[k], q_sd[k + "_scale_inv"] = q, inv
                    deq_sd[k] = fp8_reference_dequant(q, inv)
                else:
                    q_sd[k], deq_sd[k] = v, v.float()
            save_file(q_sd, os.path.join(out_dir, f), metadata={"format": "pt"})
            save_file(deq_sd, os.path.join(deq_dir, f), metadata={"format": "pt"})
        elif f.endswith(".json") and f != "model.safetensors.index.json":
            shutil.copy(src, os.path.join(out_dir, f))
            shutil.copy(src, os.path.join(deq_dir, f))
    index = os.path.join(bf16_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as fh:
            idx = json.load(fh)
        for d in (out_dir, deq_dir):
            wm = {}
            for k, f in idx["weight_map"].items():
                wm[k] = f
                if d == out_dir and quantize_name(k):
                    wm[k + "_scale_inv"] = f
            with open(os.path.join(d, "model.safetensors.index.json"), "w") as fh:
                json.dump({"metadata": {}, "weight_map": wm}, fh, indent=2)
    cfg_path = os.path.join(out_dir, "config.json")
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3",
                                  "activation_scheme": "dynamic",
                                  "weight_block_size": [128, 128]}
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh, indent=2)
    ref = model_cls.from_pretrained(deq_dir, dtype=torch.float32,
                                    attn_implementation="eager").eval()
    rec = capture(ref, tokens)
    shutil.rmtree(deq_dir)
    return rec


# ---- MXFP4 (gpt-oss experts)
# gpt-oss ships each expert projection W [out, in] (rows in the order of the bf16 model's
# columns: gate_up interleaved) as <name>_blocks U8 [E, out, in/32, 16] and <name>_scales U8
# [E, out, in/32]. transformers has no CPU MXFP4 quantizer (quantize_to_mxfp4 needs the triton
# kernels), so this is a reference quantizer after the OCP Microscaling spec v1.0, section 6.3:
# per block of 32, shared exponent floor(log2(amax)) - 2 (2 = emax of E2M1), stored + 127;
# each element the nearest E2M1 value of x / 2^shared (ties to the smaller magnitude),
# saturated at 6; element 2k in the low nibble, 2k + 1 in the high one. The reference
# dequantization is transformers' own convert_moe_packed_tensors (integrations/mxfp4.py).
E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def mxfp4_quantize(w):
    """w [..., rows, cols] (cols a multiple of 32) -> (blocks [..., rows, cols/32, 16] U8,
    scales [..., rows, cols/32] U8)."""
    *lead, rows, cols = w.shape
    x = w.to(torch.float32).reshape(*lead, rows, cols // 32, 32)
    amax = x.abs().amax(dim=-1)
    shared = torch.where(amax > 0, torch.floor(torch.log2(amax)) - 2, torch.zeros_like(amax))
    shared = shared.clamp(-127, 127)
    scaled = (x / torch.exp2(shared)[..., None]).clamp(-6.0, 6.0)
    mag = (scaled.abs()[..., None] - E2M1).abs().argmin(dim=-1)
    codes = (mag | ((scaled < 0) & (mag > 0)).to(torch.int64) << 3).to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks.contiguous(), (shared + 127).to(torch.uint8).contiguous()


def mxfp4_source(bf16_dir, out_dir, model_cls, capture, tokens, reference_path):
    """Rewrites the bf16 gpt-oss checkpoint in bf16_dir with MXFP4 experts in out_dir; writes
    transformers' dequantization of layer 0's experts to reference_path and returns
    transformers' forward record on the dequantized weights."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors
    os.makedirs(out_dir, exist_ok=True)
    deq_dir = out_dir + ".dequantized"
    os.makedirs(deq_dir, exist_ok=True)
    sd = load_file(os.path.join(bf16_dir, "model.safetensors"))
    q_sd, deq_sd, ref = {}, {}, {}
    for k, v in sd.items():
        if k.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            blocks, scales = mxfp4_quantize(v.transpose(1, 2))  # [E, in, out] -> [E, out, in]
            q_sd[k + "_blocks"], q_sd[k + "_scales"] = blocks, scales
            deq = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
            assert deq.shape == v.shape
            deq_sd[k] = deq.contiguous()
            if k.startswith("model.layers.0."):
                ref[k.split(".")[-1]] = deq_sd[k]
        else:
            q_sd[k], deq_sd[k] = v, v.float()
    save_file(q_sd, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    save_file(deq_sd, os.path.join(deq_dir, "model.safetensors"), metadata={"format": "pt"})
    save_file(ref, reference_path)
    for f in os.listdir(bf16_dir):
        if f.endswith(".json"):
            shutil.copy(os.path.join(bf16_dir, f), os.path.join(out_dir, f))
            shutil.copy(os.path.join(bf16_dir, f), os.path.join(deq_dir, f))
    cfg_path = os.path.join(out_dir, "config.json")
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    # As openai/gpt-oss ships it: only the experts are MXFP4.
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh, indent=2)
    model = model_cls.from_pretrained(deq_dir, dtype=torch.float32,
                                      attn_implementation="eager").eval()
    rec = capture(model, tokens)
    shutil.rmtree(deq_dir)
    return rec
