#!/usr/bin/env python3
"""check_formats_peer.py: moeq's GPTQ, AWQ and compressed-tensors
checkpoints read by the libraries that own those formats, compared bit for
bit with moeq's own dequantization.

(a) Weights. Checkpoints written by `moeq quantize` (the CHECKPOINT
    arguments; without them, the demo MoE (or --model DIR) quantized here in
    every case of CASES: each --format, symmetric and asymmetric, with the
    methods that format is written with) have every quantized linear
    (attention, every expert) dequantized
      - gptq: by GPTQModel's inference path (its torch kernel module after
        its v1 -> v2 zero-point conversion, then dequantize_weight: what
        GPTQModel.load runs);
      - compressed-tensors: by compressed-tensors' own
        PackedQuantizationCompressor, with the scheme parsed from the
        checkpoint's quantization_config by its QuantizationConfig;
      - awq: by GPTQModel's AWQ GEMM dequantizer
        (gptqmodel.quantization.awq.utils.packing_utils.dequantize_gemm);
    and compared with moeq's dequantization of the same checkpoint
    (tests/peer/dequant_cli.c: moeq's reader, fp32): once in the library's
    own dtype (its result against moeq's rounded to that dtype) and once in
    fp32 (scales widened first; against moeq's fp32 values). Both must be
    identical.
(b) A whole model (skipped with --skip-logits). A random dense Qwen3 (hidden
    256, 2 layers, bf16: shapes GPTQModel's CPU kernels accept), quantized in
    each format, is loaded by transformers 5's AutoModelForCausalLM
    (compressed-tensors through its CompressedTensorsHfQuantizer; awq and
    gptq through GPTQModel's kernels) and its logits on 64 tokens are compared
    with `moeq eval --logits-out` (transformers computes with its own kernels,
    so this agrees to a tolerance, not bitwise). The demo MoE itself is
    loaded whole by check_moe_loaders_peer.py.

Binaries: dequant_cli is compiled against a CPU build of moeq_core in
--build (default build/peer, configured and built here); the moeq that
quantizes and evaluates is --moeq (default: the one of that build), on
--device (cpu; `tests/gpu/run.sh formats` passes its CUDA build and cuda).

By hand, on a CPU (build/ is git-ignored):
    python3 -m venv --system-site-packages build/peer-venv
    build/peer-venv/bin/pip install gptqmodel     # compressed-tensors: pip install compressed-tensors
    build/peer-venv/bin/python tests/peer/check_formats_peer.py
On the GPU machine, `tests/gpu/run.sh formats` runs (a) on checkpoints it
quantized on the GPU, under the wheels of tests/gpu/fetch-wheels.sh
(compressed-tensors 0.14, whose compressor API differs from 0.19's: see
ct_decompress).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# (format, method, symmetric): each format with the method it is usually
# written with (GPTQ; AWQ for AutoAWQ's own format) and, for awq, with GPTQ
# codes as well (the packing is the same, the grids differ).
CASES = [("gptq", "gptq", True), ("gptq", "gptq", False),
         ("awq", "awq", True), ("awq", "awq", False),
         ("awq", "gptq", True), ("awq", "gptq", False),
         ("compressed-tensors", "gptq", True), ("compressed-tensors", "gptq", False)]


def case_name(fmt, method, sym):
    return f"{fmt}-{method}-{'sym' if sym else 'asym'}"


def add_common_args(ap):
    """Options both peer scripts take."""
    ap.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT",
                    help="moeq outputs to check (default: quantize CASES of --model here)")
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "peer"),
                    help="CPU build folder for moeq_core and dequant_cli (built here)")
    ap.add_argument("--moeq", default=None, help="moeq binary (default: BUILD/moeq)")
    ap.add_argument("--device", default="cpu", help="moeq quantize --device (default cpu)")
    ap.add_argument("--work", default=None,
                    help="keep the quantized checkpoints here (default: a temporary folder)")
    ap.add_argument("--model", default=os.path.join(ROOT, "demo", "qwen3-moe-demo"))
    ap.add_argument("--calib", default=None, help="default: moeq's bundled calib_data")
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=128)


class Tools:
    """The binaries the checks run: moeq and dequant_cli."""

    def __init__(self, args):
        self.build_dir = os.path.abspath(args.build)
        self.dequant = os.path.join(self.build_dir, "dequant_cli")
        self.moeq = os.path.abspath(args.moeq or os.path.join(self.build_dir, "moeq"))
        self.device = args.device
        self.build(need_moeq=args.moeq is None)

    def build(self, need_moeq):
        jobs = str(min(os.cpu_count() or 2, 16))
        subprocess.run(["cmake", "-S", ROOT, "-B", self.build_dir, "-DCMAKE_BUILD_TYPE=Release",
                        "-DMOEQ_CUDA=OFF", "-DCMAKE_C_FLAGS=-Wno-error=maybe-uninitialized"],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", self.build_dir, "-j", jobs, "--target", "moeq_core"]
                       + (["moeq"] if need_moeq else []), check=True, stdout=subprocess.DEVNULL)
        # Libraries as CMake found them (a machine may have them outside the
        # default paths: tests/gpu/env.sh sets LIBRARY_PATH and CPATH).
        subprocess.run(["cc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror",
                        "-D_POSIX_C_SOURCE=200809L", "-D_DEFAULT_SOURCE",
                        "-I" + os.path.join(ROOT, "include"), "-I" + os.path.join(ROOT, "src"),
                        os.path.join(ROOT, "tests", "peer", "dequant_cli.c"),
                        os.path.join(self.build_dir, "libmoeq_core.a"), "-lcjson", "-llapacke",
                        "-lopenblas", "-lpcre2-8", "-lutf8proc", "-lm", "-lpthread",
                        "-o", self.dequant], check=True)

    def quantize(self, model, out, fmt, method, sym, calib, nsamples, seqlen, group_size=128):
        cmd = [self.moeq, "quantize", "--model", model, "--out", out, "--format", fmt,
               "--method", method, "--sym", "true" if sym else "false",
               "--nsamples", str(nsamples), "--seqlen", str(seqlen),
               "--group-size", str(group_size), "--device", self.device, "--quiet"]
        if calib:
            cmd += ["--calib", calib]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    def weights(self, path, tmp):
        """moeq's own fp32 dequantization of every quantized linear."""
        dump = os.path.join(tmp, "moeq_dequant.safetensors")
        subprocess.run([self.dequant, path, dump], check=True)
        return {k: torch.from_numpy(v) for k, v in load_file(dump).items()}

    def eval_logits(self, path, tokens, seqlen, out):
        """moeq eval's fp32 CPU logits on the token file, [positions, vocab]."""
        subprocess.run([self.moeq, "eval", path, "--tokens", tokens, "--seqlen", str(seqlen),
                        "--logits-out", out, "--device", "cpu", "--quiet"],
                       check=True, stdout=subprocess.DEVNULL)
        vocab = json.load(open(os.path.join(path, "config.json")))["vocab_size"]
        return torch.from_numpy(np.fromfile(out, dtype="<f4").reshape(-1, vocab))


def finish(status):
    """Exits with status without the interpreter's teardown: on the GPU
    machine an imported package left a C++ std::thread joinable at exit and
    the process aborted ("terminate called without an active exception")
    after its work was done and printed, turning any result into a failure.
    Output is flushed first; temporary folders are gone by then."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def checkpoints_to_check(args, tools, work):
    """The CHECKPOINT arguments, or CASES of --model quantized into work."""
    if args.checkpoints:
        return [os.path.abspath(c) for c in args.checkpoints]
    work = os.path.abspath(work)
    os.makedirs(work, exist_ok=True)
    out = []
    for fmt, method, sym in CASES:
        path = os.path.join(work, case_name(fmt, method, sym))
        shutil.rmtree(path, ignore_errors=True)
        tools.quantize(args.model, path, fmt, method, sym, args.calib, args.nsamples,
                       args.seqlen)
        out.append(path)
    return out


def describe(path):
    """(format, method, backend) from the checkpoint's report.json."""
    rep = json.load(open(os.path.join(path, "report.json")))
    return rep["format"], rep["method"], rep["backend"]


def checkpoint_tensors(path):
    return {k: v for f in shard_files(path) for k, v in read_shard(f).items()}


def shard_files(path):
    index = os.path.join(path, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) \
        else ["model.safetensors"]
    return [os.path.join(path, f) for f in files]


def read_shard(f):
    with safe_open(f, "pt") as h:
        return {k: h.get_tensor(k) for k in h.keys()}


def compare(name, lib, lib_f32, ref, stats):
    """lib: the library's result in its dtype; lib_f32: in fp32."""
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


def quantization_config(path):
    return json.load(open(os.path.join(path, "config.json")))["quantization_config"]


def ct_decompress(state, scheme, qc):
    """compressed-tensors' dequantization of one pack-quantized linear.
    0.19 has a stateless PackedQuantizationCompressor.decompress(state,
    scheme) in compressors/pack_quantized/base.py; 0.14 (the wheel carried to
    the GPU machine) an instance method decompress_weight(state, args) in
    compressors/quantized_compressors/pack_quantized.py, which unpacks the
    zero points into the dict it is given: it gets a copy."""
    try:
        from compressed_tensors.compressors.pack_quantized.base import \
            PackedQuantizationCompressor
    except ImportError:
        from compressed_tensors.compressors import PackedQuantizationCompressor
        return PackedQuantizationCompressor(config=qc).decompress_weight(dict(state),
                                                                          scheme.weights)
    return PackedQuantizationCompressor.decompress(dict(state), scheme)["weight"]


def check_ct(path, tensors, ref, stats):
    from compressed_tensors.quantization import QuantizationConfig
    qc = QuantizationConfig.model_validate(quantization_config(path))
    assert qc.format == "pack-quantized", qc.format
    scheme = qc.config_groups["group_0"]
    for name in sorted(ref):
        base = name[:-len("weight")]
        state = {k: tensors[base + k] for k in
                 ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point")
                 if base + k in tensors}
        lib = ct_decompress(state, scheme, qc)
        state["weight_scale"] = state["weight_scale"].float()
        lib32 = ct_decompress(state, scheme, qc)
        compare(name, lib, lib32, ref[name], stats)
    # Every Linear it leaves out is in "ignore"; nothing ignored was packed.
    for module in qc.ignore:
        assert module + ".weight_packed" not in tensors, module


def check_awq(path, tensors, ref, stats):
    from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm
    q = quantization_config(path)
    assert q["quant_method"] == "awq" and q["version"] == "gemm", q
    for name in sorted(ref):
        base = name[:-len("weight")]
        qw, qz, sc = (tensors[base + k] for k in ("qweight", "qzeros", "scales"))
        gs = q["group_size"] if q["group_size"] > 0 else qw.shape[0]
        lib = dequantize_gemm(qw, qz, sc, q["bits"], gs).t()
        lib32 = dequantize_gemm(qw, qz, sc.float(), q["bits"], gs).t()
        compare(name, lib, lib32, ref[name], stats)


def gptq_dequant(tensors, base, q, in_features, out_features, dtype):
    """One gptq linear as GPTQModel reads it for inference (GPTQModel.load
    with BACKEND.TORCH): its torch kernel module, the v1 zero points moved to
    its v2 form by convert_gptq_v1_to_v2_format_module (gptqmodel/utils/
    model.py), then its dequantize_weight, with the scales in dtype.
    GPTQModel 5.6.12's checkpoint dequantizer (model_dequant.py,
    convert_gptq_file) is not used: it unpacks qzeros without the v1 offset
    whatever checkpoint_format says (measured: every weight one scale off)."""
    try:  # the class's name in GPTQModel 5.6
        from gptqmodel.nn_modules.qlinear.torch import TorchQuantLinear as Linear
    except ImportError:  # and in later releases
        from gptqmodel.nn_modules.qlinear.torch import TorchLinear as Linear
    from gptqmodel.utils.model import convert_gptq_v1_to_v2_format_module
    mod = Linear(bits=q["bits"], group_size=q["group_size"], sym=q["sym"],
                 desc_act=q["desc_act"], in_features=in_features, out_features=out_features,
                 bias=False, pack_dtype=torch.int32)
    for k in ("qweight", "qzeros", "g_idx"):
        getattr(mod, k).copy_(tensors[base + k])
    mod.scales = tensors[base + "scales"].to(dtype)
    convert_gptq_v1_to_v2_format_module(mod, bits=q["bits"], pack_dtype=torch.int32)
    # post_init would also wrap dequantize_weight in torch.compile (its
    # optimize()); the same function runs eagerly here, for time.
    mod.optimized = True
    mod.post_init()
    with torch.no_grad():
        return mod.dequantize_weight().t()


def check_gptq(path, tensors, ref, stats):
    q = quantization_config(path)
    assert q["quant_method"] == "gptq" and q["checkpoint_format"] == "gptq", q
    for name in sorted(ref):
        base = name[:-len("weight")]
        out_features, in_features = ref[name].shape
        lib = gptq_dequant(tensors, base, q, in_features, out_features, torch.float16)
        lib32 = gptq_dequant(tensors, base, q, in_features, out_features, torch.float32)
        compare(name, lib, lib32, ref[name], stats)


CHECKS = {"gptq": check_gptq, "awq": check_awq, "compressed-tensors": check_ct}


def check_weights(path, tools, tmp):
    """Part (a) on one checkpoint: prints its line, returns True when every
    linear is bit-exact both ways."""
    fmt, method, backend = describe(path)
    stats = dict(modules=0, elements=0, dtype_mismatch=0, f32_mismatch=0, max_abs=0.0,
                 first_bad=None)
    CHECKS[fmt](path, checkpoint_tensors(path), tools.weights(path, tmp), stats)
    ok = stats["modules"] > 0 and stats["dtype_mismatch"] == 0 and stats["f32_mismatch"] == 0
    print(f"weights {os.path.basename(path)} ({fmt}, {method}, quantized on {backend}): "
          f"{stats['modules']} linears, {stats['elements']} weights: "
          + ("bit-exact in the library's dtype and in fp32: ok" if ok else
             f"MISMATCH {stats['dtype_mismatch']} (dtype) / {stats['f32_mismatch']} (fp32) "
             f"elements, max {stats['max_abs']:.3g}, first {stats['first_bad']}: FAIL"),
          flush=True)
    return ok


def make_dense(path):
    """A random bf16 Qwen3 with dimensions every loader's kernels take."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(3)
    cfg = Qwen3Config(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=64, num_hidden_layers=2, vocab_size=160,
                      max_position_embeddings=256, tie_word_embeddings=False)
    Qwen3ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(path)


def logits_check(fixture, fmt, tools, tmp, calib):
    """Loads fixture quantized in fmt with transformers and compares logits
    with moeq eval's; returns (max abs difference / max abs logit, top-1
    agreement) or the loader's error."""
    from transformers import AutoModelForCausalLM
    out = os.path.join(tmp, f"dense-{fmt}")
    tools.quantize(fixture, out, fmt, "gptq", True, calib, 16, 64)
    vocab = json.load(open(os.path.join(fixture, "config.json")))["vocab_size"]
    ids = np.random.default_rng(5).integers(0, vocab, 64).astype("<i4")
    tok = os.path.join(tmp, "ids.bin")
    ids.tofile(tok)
    ours = tools.eval_logits(out, tok, 64, os.path.join(tmp, f"logits-{fmt}.bin"))
    try:
        m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, device_map="cpu")
        with torch.no_grad():
            theirs = m(torch.from_numpy(ids.astype("int64"))[None]).logits[0].float()
    except Exception as e:  # a loader that cannot run here is reported, not hidden
        return f"not loaded: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    rel = float((theirs - ours).abs().max() / ours.abs().max())
    top1 = float((theirs.argmax(-1) == ours.argmax(-1)).float().mean())
    return rel, top1


def dense_logits(tools, tmp):
    """Part (b); returns False when a loader failed."""
    fixture = os.path.join(tmp, "dense-qwen3")
    make_dense(fixture)
    calib = os.path.join(tmp, "calib.bin")
    vocab = json.load(open(os.path.join(fixture, "config.json")))["vocab_size"]
    np.random.default_rng(1).integers(0, vocab, 4096).astype("<i4").tofile(calib)
    ok = True
    for fmt in ("compressed-tensors", "awq", "gptq"):
        r = logits_check(fixture, fmt, tools, tmp, calib)
        if isinstance(r, str):
            print(f"transformers, random dense qwen3, {fmt}: {r}")
            ok = False
        else:
            print(f"transformers, random dense qwen3, {fmt}: logits max |diff| / max |logit| "
                  f"{r[0]:.2e}, top-1 agreement {r[1]:.4f}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(ap)
    ap.add_argument("--skip-logits", action="store_true", help="only part (a)")
    args = ap.parse_args()
    tools = Tools(args)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or tmp
        paths = checkpoints_to_check(args, tools, work)
        for path in paths:
            failed += not check_weights(path, tools, tmp)
        if not args.skip_logits:
            failed += not dense_logits(tools, tmp)
    print(f"check_formats_peer: {len(paths)} checkpoints, "
          + (f"{failed} FAILED" if failed else "all bit-exact"))
    finish(1 if failed else 0)


if __name__ == "__main__":
    main()
