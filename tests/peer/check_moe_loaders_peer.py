#!/usr/bin/env python3
"""check_moe_loaders_peer.py: the demo MoE (qwen3_moe) quantized by moeq in
every format, loaded as a whole model by a real loader, its logits compared
with `moeq eval --logits-out` on the same tokens.

check_formats_peer.py (a) compares every linear's dequantization bit for bit;
its part (b) runs a whole model only for a dense Qwen3, because transformers 5
fuses a MoE block's experts into 3-D parameters and does not load per-expert
quantized tensors. transformers 4.57 still builds Qwen3MoeSparseMoeBlock's
experts as a ModuleList of Qwen3MoeMLP with one nn.Linear per projection
(modeling_qwen3_moe.py, Qwen3MoeSparseMoeBlock.__init__), so the per-expert
tensors moeq writes (model.layers.L.mlp.experts.E.{gate,up,down}_proj.*) map
onto modules one to one. The loaders:
  - compressed-tensors (pack-quantized): transformers' AutoModelForCausalLM
    through its CompressedTensorsHfQuantizer: each targeted Linear becomes
    compressed-tensors' CompressedLinear, which keeps the packed tensors and
    decompresses them in its forward; fp32;
  - gptq: GPTQModel.load with its TorchQuantLinear kernel (it converts the
    v1 zero points to its internal v2 form itself), fp32; and transformers'
    AutoModelForCausalLM through its GptqHfQuantizer, i.e. optimum's
    GPTQQuantizer with GPTQModel's kernels (TorchQuantLinear asked for), which
    converts only the linears the config's modules_in_block_to_quantize names
    (so not the routers); fp32;
  - awq (GEMM): GPTQModel.load with its AwqTorchQuantLinear kernel, which
    dequantizes in fp16 (it asserts so: torch_awq.py, forward); the rest of
    the model in fp32.
GPTQModel refuses asymmetric gptq from any other quantizer (see
GPTQ_ASYM_REFUSAL); that case is printed as REFUSED and counted apart
(transformers loads it).
For each checkpoint (the CHECKPOINT arguments; without them, the demo MoE
quantized here in every case of check_formats_peer.CASES: each format,
symmetric and asymmetric; --build, --moeq and --device as there):
  1. Modules. Every linear moeq quantized (attention and all experts) must be
     an instance of the loader's quantized module (compressed-tensors: a
     Linear carrying a quantization_scheme; GPTQModel: its kernel's class),
     no module of another kind may sit under an expert, and the loader must
     hold exactly the checkpoint's expert count per layer. Then each such
     module is probed with the identity (module(I) = W^T for a linear without
     bias) and the result compared with moeq's own dequantization of the same
     checkpoint (tests/peer/dequant_cli.c): a loader that ignored the
     checkpoint's tensors (unexpected keys dropped, modules left at their
     initialisation) fails here, whatever its logits look like.
  2. Logits. 4 windows of 64 random token ids, each window scored from
     position 0 by the loader and by `moeq eval --tokens --seqlen 64
     --logits-out`; max |diff| / max |logit| over all positions and the
     top-1 agreement. The loaders compute with their own kernels, so this
     is a tolerance, not bitwise: REL_TOL and TOP1_MIN below.

transformers 4.57 reads the config names of its own time: the expert count
as num_experts and rope_theta at the top level, where moeq's config (written
after transformers 5) has num_local_experts and rope_parameters.rope_theta.
The loader therefore reads a directory of links to the checkpoint's files
with a config.json that adds those two keys and changes nothing else.

Setup by hand (CPU only; build/ is git-ignored; the system's torch is
reused):
    python3 -m venv --system-site-packages build/peer-moe-venv
    build/peer-moe-venv/bin/pip install -U setuptools wheel
    build/peer-moe-venv/bin/pip install transformers==4.57.6
    BUILD_CUDA_EXT=0 build/peer-moe-venv/bin/pip install --no-build-isolation \\
        gptqmodel==5.6.12 transformers==4.57.6
    build/peer-moe-venv/bin/pip install --no-deps compressed-tensors==0.14.0.1 optimum==2.0.0
    build/peer-moe-venv/bin/python tests/peer/check_moe_loaders_peer.py
On the GPU machine `tests/gpu/run.sh formats` runs it on the checkpoints it
quantized on the GPU, with these versions from the wheels of
tests/gpu/fetch-wheels.sh (the loaders themselves run on the CPU).
(gptqmodel's sdist needs torch visible at build time, hence
--no-build-isolation; BUILD_CUDA_EXT=0 skips its CUDA extensions.)
compressed-tensors with transformers 4.57.6, as measured: 0.14.0.1 loads
both; 0.12.2 loads symmetric only ("Decompression of packed zero points is
currently not supported"), 0.13.0 likewise ("Asymmetric quantization requires
zero-point values"); with 0.19.0 the identity probe found the symmetric
model's Linears without a weight ("'Linear' object has no attribute
'weight'") and the asymmetric packed zero points did not load (size mismatch
[32, 1] against [256, 1]).
"""
import argparse
import json
import os
import sys
import tempfile
import traceback

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_formats_peer import (Tools, add_common_args, checkpoints_to_check,  # noqa: E402
                                describe, finish, quantization_config)

WINDOWS, SEQLEN = 4, 64
# Logits tolerances: max |diff| / max |logit| and top-1 agreement over the
# 4 x 64 positions. Measured with the versions above (bench/RESULTS.md):
# 1.3e-6 to 1.6e-6 where the loader dequantizes in fp32, 4.8e-5 for asymmetric
# AWQ (fp16 dequantization), top-1 1.0 everywhere; the bound is 4x the
# largest. Leaving a layer's experts to the loader's initialisation fails the
# module check before this.
REL_TOL = 2e-4
TOP1_MIN = 0.99
# GPTQModel refuses asymmetric v1 GPTQ checkpoints that another quantizer
# wrote (gptqmodel/models/loader.py: only its own >= 0.9.0 are trusted), so
# that case is reported as refused, with this message, never as passed.
GPTQ_ASYM_REFUSAL = "Loading of a sym=False model with format=FORMAT.GPTQ is only supported"
# The identity probe of one module against moeq's fp32 dequantized weight,
# relative to that weight's max |w|: GPTQModel's AWQ kernel dequantizes in
# fp16 (at most half an fp16 ulp, 2^-11 relative, from moeq's fp32 values);
# the other two in fp32.
PROBE_TOL = {"compressed-tensors": 1e-6, "gptq": 1e-6, "awq": 1e-3}


def loader_dir(src, dst):
    """Links to src's files with a config.json in transformers 4.57's names."""
    os.makedirs(dst)
    for f in os.listdir(src):
        if f != "config.json":
            os.symlink(os.path.join(src, f), os.path.join(dst, f))
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["num_experts"] = cfg["num_local_experts"]
    cfg["rope_theta"] = cfg["rope_parameters"]["rope_theta"]
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"), indent=2)
    return cfg


# The loaders run on each format's checkpoints, in this order.
LOADERS = {"compressed-tensors": ["transformers"], "gptq": ["gptqmodel", "transformers"],
           "awq": ["gptqmodel"]}


def load(fmt, loader, path):
    """The loaded nn.Module, the dtype it computes in, and a predicate that
    says whether a module is the loader's quantized linear."""
    if loader == "transformers" and fmt == "compressed-tensors":
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map="cpu")
        return model, torch.float32, \
            lambda m: isinstance(m, torch.nn.Linear) and hasattr(m, "quantization_scheme")
    if loader == "transformers":
        # GPTQ: optimum's GPTQQuantizer puts GPTQModel's kernels in place of
        # the layers' Linears (transformers quantizer_gptq.py; optimum
        # gptq/quantizer.py, convert_model), here its torch kernel, the one
        # GPTQModel.load uses below (GPTQConfig's backend is a loading
        # attribute, merged into the checkpoint's config). Left to choose,
        # it takes TorchFusedQuantLinear on the CPU, which reads every grid
        # as symmetric (torch_fused.py, transform_cpu, replaces qzeros by
        # zeros): the asymmetric demo checkpoint came out with 60% of the
        # weights 1 to 4 steps off (bench/RESULTS.md).
        from gptqmodel.nn_modules.qlinear.torch import TorchQuantLinear
        from transformers import AutoModelForCausalLM, GPTQConfig
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, device_map="cpu",
            quantization_config=GPTQConfig(bits=quantization_config(path)["bits"],
                                           backend="torch"))
        return model, torch.float32, lambda m: type(m) is TorchQuantLinear
    from gptqmodel import BACKEND, GPTQModel
    if fmt == "gptq":
        from gptqmodel.nn_modules.qlinear.torch import TorchQuantLinear
        dtype = torch.float32
        model = GPTQModel.load(path, device="cpu", backend=BACKEND.TORCH, dtype=dtype).model
        return model, dtype, lambda m: type(m) is TorchQuantLinear
    from gptqmodel.nn_modules.qlinear.torch_awq import AwqTorchQuantLinear
    model = GPTQModel.load(path, device="cpu", backend=BACKEND.TORCH_AWQ,
                           dtype=torch.float16).model
    # The kernel dequantizes in fp16 (its scales must stay fp16: it asserts
    # so) and casts the weight to the input's dtype before its matmul
    # (torch_awq.py, AwqTorchQuantLinear.forward); everything else runs in
    # fp32 here. fp16 -> fp32 -> fp16 is exact, so the scales are unchanged.
    # (Wholly in fp16 the logits moved 0.10-0.15 of max |logit| from moeq's,
    # top-1 still 0.99-1.0: fp16 activations, not the weights.)
    model.float()
    for m in model.modules():
        if type(m) is AwqTorchQuantLinear:
            m.scales = m.scales.half()
    return model, torch.float32, lambda m: type(m) is AwqTorchQuantLinear


def check_modules(model, dtype, is_quant, ref, n_experts, tol):
    """Every linear moeq quantized is the loader's quantized module and
    computes with the checkpoint's weights; returns (module count, worst
    probe difference relative to max |w|) or raises with the first fault."""
    mods = dict(model.named_modules())
    names = {k[:-len(".weight")] for k in ref}
    quant = {n for n, m in mods.items() if is_quant(m)}
    if quant != names:
        raise AssertionError(f"quantized modules differ from the checkpoint's: "
                             f"{sorted(names - quant)[:3]} not quantized, "
                             f"{sorted(quant - names)[:3]} not in the checkpoint")
    for n, m in mods.items():
        parts = n.split(".")
        if "experts" in parts and n.endswith("_proj") and n not in quant:
            raise AssertionError(f"{n}: {type(m).__name__} under an expert, not quantized")
        if n.endswith(".mlp.experts") and len(m) != n_experts:
            raise AssertionError(f"{n}: {len(m)} experts, the checkpoint has {n_experts}")
    worst = 0.0
    with torch.no_grad():
        for n in sorted(names):
            w = ref[n + ".weight"]
            eye = torch.eye(w.shape[1], dtype=dtype)
            got = mods[n](eye).float().t()
            rel = float((got - w).abs().max() / w.abs().max())
            if rel > tol:
                raise AssertionError(f"{n}: module(I) differs from moeq's weight by {rel:.3g} "
                                     f"of max |w| (tolerance {tol:g})")
            worst = max(worst, rel)
    return len(names), worst


def run_case(path, loader, tools, tmp, tok_path):
    """Loads one checkpoint whole with one loader and checks it; prints its
    line and returns True when the modules and logits pass."""
    fmt, method, backend = describe(path)
    ref = tools.weights(path, tmp)
    ours = tools.eval_logits(path, tok_path, SEQLEN, os.path.join(tmp, "logits.bin"))
    ldir = os.path.join(tmp, f"{os.path.basename(path)}-{loader}")
    cfg = loader_dir(path, ldir)
    ours = ours.reshape(WINDOWS, SEQLEN, cfg["vocab_size"])
    model, dtype, is_quant = load(fmt, loader, ldir)
    model.eval()
    count, probe = check_modules(model, dtype, is_quant, ref, cfg["num_local_experts"],
                                 PROBE_TOL[fmt])
    ids = np.fromfile(tok_path, dtype="<i4").reshape(WINDOWS, SEQLEN)
    with torch.no_grad():
        theirs = torch.stack([model(torch.from_numpy(w.astype("int64"))[None]).logits[0].float()
                              for w in ids])
    rel = float((theirs - ours).abs().max() / ours.abs().max())
    top1 = float((theirs.argmax(-1) == ours.argmax(-1)).float().mean())
    ok = rel <= REL_TOL and top1 >= TOP1_MIN
    print(f"loader {os.path.basename(path)} {loader} ({fmt}, {method}, quantized on {backend}; "
          f"{str(dtype)[6:]}): {count} quantized modules "
          f"({type(dict(model.named_modules())[sorted(ref)[0][:-7]]).__name__}), identity probe "
          f"max {probe:.2e}; logits max |diff| / max |logit| {rel:.2e} (tol {REL_TOL:g}), "
          f"top-1 {top1:.4f} (min {TOP1_MIN:g}): {'ok' if ok else 'FAIL'}", flush=True)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(ap)
    args = ap.parse_args()
    import compressed_tensors
    import gptqmodel
    import transformers
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"compressed-tensors {compressed_tensors.__version__}, gptqmodel {gptqmodel.__version__}")
    tools = Tools(args)
    vocab = json.load(open(os.path.join(args.model, "config.json")))["vocab_size"]
    ids = np.random.default_rng(11).integers(0, vocab, (WINDOWS, SEQLEN)).astype("<i4")
    passed = failed = 0
    refused = []
    with tempfile.TemporaryDirectory() as tmp:
        tok_path = os.path.join(tmp, "ids.bin")
        ids.tofile(tok_path)
        for path in checkpoints_to_check(args, tools, args.work or tmp):
            for loader in LOADERS[describe(path)[0]]:
                case = f"loader {os.path.basename(path)} {loader}"
                try:
                    ok = run_case(path, loader, tools, tmp, tok_path)
                    passed += ok
                    failed += not ok
                except Exception as e:  # reported with the case, never hidden
                    msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                    q = quantization_config(path)
                    if loader == "gptqmodel" and q.get("quant_method") == "gptq" and \
                            not q["sym"] and GPTQ_ASYM_REFUSAL in str(e):
                        print(f"{case}: REFUSED by GPTQModel: {msg}", flush=True)
                        refused.append(case[len("loader "):])
                        continue
                    traceback.print_exc()
                    print(f"{case}: FAIL: {msg}", flush=True)
                    failed += 1
    print(f"check_moe_loaders_peer: {passed} passed, {failed} failed" +
          (f"; not loaded (refused by the loader): {', '.join(refused)}" if refused else ""))
    finish(1 if failed else 0)


if __name__ == "__main__":
    main()
