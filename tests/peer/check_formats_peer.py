#!/usr/bin/env python3
"""check_formats_peer.py: moeq's AWQ and compressed-tensors checkpoints read
by the libraries that own those formats, compared bit for bit with moeq's
own dequantization.

(a) Weights. The demo MoE (or --model DIR) is quantized by `moeq quantize`
    with --format awq and --format compressed-tensors, symmetric and
    asymmetric. Every quantized linear (attention, every expert) is then
    dequantized
      - compressed-tensors: by compressed-tensors' own
        PackedQuantizationCompressor.decompress, with the scheme parsed from
        the checkpoint's quantization_config by its QuantizationConfig;
      - awq: by GPTQModel's AWQ GEMM dequantizer
        (gptqmodel.quantization.awq.utils.packing_utils.dequantize_gemm);
    and compared with moeq's dequantization of the same checkpoint
    (tests/peer/dequant_cli.c: moeq's reader, fp32): once in the library's
    own dtype (its result against moeq's rounded to that dtype) and once with
    the scales widened to fp32 first (against moeq's fp32 values). Both must
    be identical.
(b) A whole model. A random dense Qwen3 (hidden 256, 2 layers, bf16: shapes
    GPTQModel's CPU kernels accept), quantized in each format, is loaded by transformers' AutoModelForCausalLM (compressed-tensors
    through its CompressedTensorsHfQuantizer; awq and gptq through
    GPTQModel's kernels) and its logits on 64 tokens are compared with
    `moeq eval --logits-out` (transformers computes with its own kernels, so
    this agrees to a tolerance, not bitwise).

Setup (CPU is enough; build/ is git-ignored):
    python3 -m venv --system-site-packages build/peer-venv
    build/peer-venv/bin/pip install gptqmodel     # compressed-tensors: pip install compressed-tensors
    build/peer-venv/bin/python tests/peer/check_formats_peer.py
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(ROOT, "build", "peer")
DEQUANT = os.path.join(BUILD, "dequant_cli")
MOEQ = os.path.join(BUILD, "moeq")


def build():
    subprocess.run(["cmake", "-S", ROOT, "-B", BUILD, "-DCMAKE_BUILD_TYPE=Release",
                    "-DMOEQ_CUDA=OFF", "-DCMAKE_C_FLAGS=-Wno-error=maybe-uninitialized"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", BUILD, "-j2", "--target", "moeq_core", "moeq"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["gcc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror",
                    "-D_POSIX_C_SOURCE=200809L", "-D_DEFAULT_SOURCE",
                    "-I" + os.path.join(ROOT, "include"), "-I" + os.path.join(ROOT, "src"),
                    os.path.join(ROOT, "tests", "peer", "dequant_cli.c"),
                    os.path.join(BUILD, "libmoeq_core.a"), "-lcjson", "-llapacke", "-lopenblas",
                    "-lpcre2-8", "-lutf8proc", "-lm", "-lpthread", "-o", DEQUANT], check=True)


def quantize(model, out, fmt, sym, calib, nsamples, seqlen, group_size=128):
    cmd = [MOEQ, "quantize", "--model", model, "--out", out, "--format", fmt,
           "--sym", "true" if sym else "false", "--nsamples", str(nsamples),
           "--seqlen", str(seqlen), "--group-size", str(group_size), "--device", "cpu", "--quiet"]
    if calib:
        cmd += ["--calib", calib]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def checkpoint_tensors(path):
    index = os.path.join(path, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) \
        else ["model.safetensors"]
    out = {}
    for f in files:
        with safe_open(os.path.join(path, f), "pt") as h:
            for k in h.keys():
                out[k] = h.get_tensor(k)
    return out


def moeq_weights(path, tmp):
    dump = os.path.join(tmp, "moeq_dequant.safetensors")
    subprocess.run([DEQUANT, path, dump], check=True)
    return {k: torch.from_numpy(v) for k, v in load_file(dump).items()}


def compare(name, lib, lib_f32, ref, stats):
    """lib: the library's result in its dtype; lib_f32: with fp32 scales."""
    ref_cast = ref.to(lib.dtype)
    same = torch.equal(lib, ref_cast)
    same32 = torch.equal(lib_f32, ref)
    stats["modules"] += 1
    stats["elements"] += ref.numel()
    if not same:
        stats["dtype_mismatch"] += int((lib != ref_cast).sum())
    if not same32:
        stats["f32_mismatch"] += int((lib_f32 != ref).sum())
        stats["max_abs"] = max(stats["max_abs"], float((lib_f32 - ref).abs().max()))
        if stats["first_bad"] is None:
            stats["first_bad"] = name


def check_ct(path, tensors, ref, stats):
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig
    qc = QuantizationConfig.model_validate(
        json.load(open(os.path.join(path, "config.json")))["quantization_config"])
    assert qc.format == "pack-quantized", qc.format
    scheme = qc.config_groups["group_0"]
    for name in sorted(ref):
        base = name[:-len("weight")]
        state = {k: tensors[base + k] for k in
                 ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point")
                 if base + k in tensors}
        lib = PackedQuantizationCompressor.decompress(dict(state), scheme)["weight"]
        state["weight_scale"] = state["weight_scale"].float()
        lib32 = PackedQuantizationCompressor.decompress(state, scheme)["weight"]
        compare(name, lib, lib32, ref[name], stats)
    # Every Linear it leaves out is in "ignore"; nothing ignored was packed.
    for module in qc.ignore:
        assert module + ".weight_packed" not in tensors, module


def check_awq(path, tensors, ref, stats):
    from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm
    q = json.load(open(os.path.join(path, "config.json")))["quantization_config"]
    assert q["quant_method"] == "awq" and q["version"] == "gemm", q
    for name in sorted(ref):
        base = name[:-len("weight")]
        qw, qz, sc = (tensors[base + k] for k in ("qweight", "qzeros", "scales"))
        gs = q["group_size"] if q["group_size"] > 0 else qw.shape[0]
        lib = dequantize_gemm(qw, qz, sc, q["bits"], gs).t()
        lib32 = dequantize_gemm(qw, qz, sc.float(), q["bits"], gs).t()
        compare(name, lib, lib32, ref[name], stats)


def make_dense(path):
    """A random bf16 Qwen3 with dimensions every loader's kernels take."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(3)
    cfg = Qwen3Config(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=64, num_hidden_layers=2, vocab_size=160,
                      max_position_embeddings=256, tie_word_embeddings=False)
    Qwen3ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(path)


def logits_check(fixture, fmt, tmp, calib):
    """Loads fixture quantized in fmt with transformers and compares logits
    with moeq eval's; returns (max abs difference / max abs logit, top-1
    agreement) or the loader's error."""
    from transformers import AutoModelForCausalLM
    out = os.path.join(tmp, f"dense-{fmt}")
    quantize(fixture, out, fmt, True, calib, 16, 64)
    vocab = json.load(open(os.path.join(fixture, "config.json")))["vocab_size"]
    ids = np.random.default_rng(5).integers(0, vocab, 64).astype("<i4")
    tok = os.path.join(tmp, "ids.bin")
    ids.tofile(tok)
    lpath = os.path.join(tmp, f"logits-{fmt}.bin")
    subprocess.run([MOEQ, "eval", out, "--tokens", tok, "--seqlen", "64", "--logits-out", lpath,
                    "--quiet"], check=True, stdout=subprocess.DEVNULL)
    ours = torch.from_numpy(np.fromfile(lpath, dtype="<f4").reshape(64, vocab))
    try:
        m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, device_map="cpu")
        with torch.no_grad():
            theirs = m(torch.from_numpy(ids.astype("int64"))[None]).logits[0].float()
    except Exception as e:  # a loader that cannot run here is reported, not hidden
        return f"not loaded: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    rel = float((theirs - ours).abs().max() / ours.abs().max())
    top1 = float((theirs.argmax(-1) == ours.argmax(-1)).float().mean())
    return rel, top1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "demo", "qwen3-moe-demo"))
    ap.add_argument("--calib", default=None, help="default: moeq's bundled calib_data")
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--skip-logits", action="store_true")
    args = ap.parse_args()
    build()
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, check in (("compressed-tensors", check_ct), ("awq", check_awq)):
            for sym in (True, False):
                out = os.path.join(tmp, f"{fmt}-{int(sym)}")
                quantize(args.model, out, fmt, sym, args.calib, args.nsamples, args.seqlen)
                ref = moeq_weights(out, tmp)
                stats = dict(modules=0, elements=0, dtype_mismatch=0, f32_mismatch=0,
                             max_abs=0.0, first_bad=None)
                check(out, checkpoint_tensors(out), ref, stats)
                ok = stats["dtype_mismatch"] == 0 and stats["f32_mismatch"] == 0
                failed |= not ok
                print(f"{fmt:18s} {'sym ' if sym else 'asym'}: {stats['modules']} linears, "
                      f"{stats['elements']} weights: "
                      + ("bit-exact in the library's dtype and in fp32" if ok else
                         f"MISMATCH {stats['dtype_mismatch']} (dtype) / {stats['f32_mismatch']} "
                         f"(fp32) elements, max {stats['max_abs']:.3g}, first "
                         f"{stats['first_bad']}"))
        if not args.skip_logits:
            fixture = os.path.join(tmp, "dense-qwen3")
            make_dense(fixture)
            calib = os.path.join(tmp, "calib.bin")
            vocab = json.load(open(os.path.join(fixture, "config.json")))["vocab_size"]
            np.random.default_rng(1).integers(0, vocab, 4096).astype("<i4").tofile(calib)
            for fmt in ("compressed-tensors", "awq", "gptq"):
                r = logits_check(fixture, fmt, tmp, calib)
                if isinstance(r, str):
                    print(f"transformers, random dense qwen3, {fmt}: {r}")
                    failed = True
                else:
                    print(f"transformers, random dense qwen3, {fmt}: logits max |diff| / max |logit| "
                          f"{r[0]:.2e}, top-1 agreement {r[1]:.4f}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
