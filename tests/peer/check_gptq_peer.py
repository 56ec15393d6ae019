#!/usr/bin/env python3
"""check_gptq_peer.py: moeq's GPTQ solver and GPTQ v1 packer against peers.

(a) Solver agreement. The same random W [rows, cols] and H = (2/n) X^T X
    (X: correlated columns with outlier channels) go through moeq
    (tests/peer/gptq_cli.c) and through llm-compressor's
    llmcompressor.modifiers.gptq.gptq_quantize.quantize_weight, damping 0.01,
    block 128, for several settings. llm-compressor takes its grids (scale,
    zero point) from an observer fitted on the ORIGINAL weights, i.e. moeq's
    static_groups=1; so each setting compares
      - moeq static groups vs llm-compressor fed moeq's own scales and zeros
        (the sweeps alone: should agree up to float rounding order),
      - vs llm-compressor with its own qparams (compressed-tensors'
        calculate_qparams: fp32 scales where moeq rounds to fp16),
    and reports moeq's default dynamic groups (fitted on the weights as
    earlier blocks left them, as GPTQModel/AutoGPTQ do) beside them.
(b) Packing agreement. moeq's packed qweight/qzeros/scales/g_idx are
    dequantized by GPTQModel's own code: its checkpoint dequantizer
    (gptqmodel.utils.model_dequant.convert_gptq_file, checkpoint_format
    "gptq") and its runtime path (TorchLinear after
    convert_gptq_v1_to_v2_format_module, then dequantize_weight), and must
    equal moeq's dequantized weights bit for bit.

Setup (CPU is enough; build/ is git-ignored):
    pip install llmcompressor compressed-tensors   # or into the venv below
    python3 -m venv --system-site-packages build/peer-venv
    build/peer-venv/bin/pip install gptqmodel
    build/peer-venv/bin/python tests/peer/check_gptq_peer.py
The script builds build/peer (Release) and the CLI itself. Fresh random data
each run; --seed repeats one.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(ROOT, "build", "peer")
CLI = os.path.join(BUILD, "gptq_cli")
DAMP, BLOCK = 0.01, 128


def build_cli():
    # -Wno-error=maybe-uninitialized: gcc -O3 flags a false positive in
    # src/common/fileio.c that -O1 (the Asan test build) does not.
    subprocess.run(["cmake", "-S", ROOT, "-B", BUILD, "-DCMAKE_BUILD_TYPE=Release",
                    "-DMOEQ_CUDA=OFF", "-DCMAKE_C_FLAGS=-Wno-error=maybe-uninitialized"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", BUILD, "-j2", "--target", "moeq_core"], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["gcc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Wshadow",
                    "-Wstrict-prototypes", "-Wmissing-prototypes", "-Werror",
                    "-D_POSIX_C_SOURCE=200809L", "-D_DEFAULT_SOURCE",
                    "-I" + os.path.join(ROOT, "include"), "-I" + os.path.join(ROOT, "src"),
                    os.path.join(ROOT, "tests", "peer", "gptq_cli.c"),
                    os.path.join(BUILD, "libmoeq_core.a"), "-lcjson", "-llapacke", "-lopenblas",
                    "-lpcre2-8", "-lutf8proc", "-lm", "-lpthread", "-o", CLI], check=True)


def make_problem(rng, rows, cols, n_tokens):
    """W ~ N(0, 0.02^2) and H from activations with correlated columns and
    log-normal channel scales (a few outlier channels), as in real layers."""
    z = rng.standard_normal((n_tokens, cols))
    mix = np.eye(cols) + 0.5 * rng.standard_normal((cols, cols)) / np.sqrt(cols)
    x = (z @ mix) * np.exp(rng.standard_normal(cols))
    h = (2.0 / n_tokens) * (x.T @ x)
    w = 0.02 * rng.standard_normal((rows, cols))
    return w.astype(np.float32), h.astype(np.float32)


def run_moeq(tmp, w, h, bits, group_size, sym, desc_act, static_groups):
    src, dst = os.path.join(tmp, "in.safetensors"), os.path.join(tmp, "out.safetensors")
    save_file({"W": w, "H": h}, src)
    subprocess.run([CLI, src, dst, str(bits), str(group_size), str(int(sym)),
                    str(int(desc_act)), str(int(static_groups))], check=True)
    out = load_file(dst)
    with safe_open(dst, framework="numpy") as f:
        out["loss"] = float(f.metadata()["loss"])
    return out


def output_error(w, wq, h):
    """tr((W - Q) H (W - Q)^T), the layer-output error GPTQ minimises."""
    d = w.astype(np.float64) - wq.astype(np.float64)
    return float(np.einsum("ij,jk,ik->", d, h.astype(np.float64), d))


def llmc_quantize(w, h, bits, group_size, sym, act_order, scale, zero_point):
    """llm-compressor's GPTQ on one weight; scale/zero_point [rows, n_groups]
    in compressed-tensors' signed convention (zero 0 for symmetric)."""
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
    args = llmc_args(bits, group_size, sym, act_order)
    # quantize_weight works in place on its weight and Hessian: give it copies.
    q, loss, fallback = quantize_weight(
        torch.tensor(w)[None], torch.tensor(h)[None], scale[None], zero_point[None],
        None, args, blocksize=BLOCK, percdamp=DAMP)
    assert not bool(fallback[0]), "llm-compressor fell back to RTN"
    return q[0].numpy(), float(loss[0])


def llmc_args(bits, group_size, sym, act_order):
    from compressed_tensors.quantization import QuantizationArgs
    return QuantizationArgs(num_bits=bits, type="int", symmetric=sym,
                            strategy="group" if group_size > 0 else "channel",
                            group_size=group_size if group_size > 0 else None,
                            actorder="weight" if act_order else None)


def llmc_own_qparams(w, bits, group_size, sym, act_order):
    """compressed-tensors' min/max qparams per row and group of the original W."""
    from compressed_tensors.quantization.utils import calculate_qparams
    rows, cols = w.shape
    gs = group_size if group_size > 0 else cols
    wg = torch.from_numpy(w).reshape(rows, cols // gs, gs)
    return calculate_qparams(wg.amin(-1), wg.amax(-1), llmc_args(bits, group_size, sym, act_order))


def codes_of(wq, scale_rg, zero_unsigned_rg, g_idx):
    """Grid index of each dequantized weight: round(q / s) + z."""
    s = scale_rg[:, g_idx]
    z = zero_unsigned_rg[:, g_idx]
    return np.rint(wq.astype(np.float64) / s).astype(np.int64) + z


def solver_case(tmp, w, h, name, bits, group_size, sym, act_order):
    rows, cols = w.shape
    half = 1 << (bits - 1)
    m_static = run_moeq(tmp, w, h, bits, group_size, sym, act_order, 1)
    m_dyn = run_moeq(tmp, w, h, bits, group_size, sym, act_order, 0)
    g_idx = m_static["g_idx"].astype(np.int64)
    # llm-compressor fed moeq's own grids: scales [n_groups, rows] -> [rows, n_groups]
    scale = torch.from_numpy(m_static["scales"].T.copy())
    zero_signed = torch.from_numpy((m_static["zeros"].T - half).astype(np.float32))
    l_same, l_same_loss = llmc_quantize(w, h, bits, group_size, sym, act_order, scale,
                                        zero_signed)
    own_s, own_z = llmc_own_qparams(w, bits, group_size, sym, act_order)
    l_own, l_own_loss = llmc_quantize(w, h, bits, group_size, sym, act_order, own_s, own_z)

    m_codes = m_static["codes"].astype(np.int64)
    same_codes = codes_of(l_same, m_static["scales"].T.astype(np.float64),
                          m_static["zeros"].T.astype(np.int64), g_idx)
    own_codes = codes_of(l_own, own_s.double().numpy(),
                         (own_z.double().numpy() + half).astype(np.int64), g_idx)
    deq = m_static["dequant"]
    err = {k: output_error(w, v, h) for k, v in
           (("moeq_static", deq), ("moeq_dynamic", m_dyn["dequant"]),
            ("llmc_moeq_grids", l_same), ("llmc_own_qparams", l_own))}
    return {
        "case": name,
        "identical_codes_llmc_moeq_grids": float((same_codes == m_codes).mean()),
        "max_abs_diff_llmc_moeq_grids": float(np.abs(l_same - deq).max()),
        "identical_codes_llmc_own_qparams": float((own_codes == m_codes).mean()),
        "max_abs_diff_llmc_own_qparams": float(np.abs(l_own - deq).max()),
        "max_rel_scale_diff_own_vs_moeq": float(np.abs(own_s.double().numpy() /
                                                       m_static["scales"].T - 1).max()),
        "out_err": err,
        "gptq_loss": {"moeq_static": m_static.pop("loss"), "moeq_dynamic": m_dyn["loss"],
                      "llmc_moeq_grids": l_same_loss, "llmc_own_qparams": l_own_loss},
        "packed": m_static,
    }


def gptqmodel_dequant_checkpoint(tmp, packed, bits):
    """GPTQModel's checkpoint dequantizer on a one-module v1 shard."""
    from gptqmodel.utils.model_dequant import convert_gptq_file
    path = os.path.join(tmp, "shard.safetensors")
    save_file({"m.qweight": packed["qweight"], "m.qzeros": packed["qzeros"],
               "m.scales": packed["scales_f16"], "m.g_idx": packed["g_idx"]}, path)
    out = convert_gptq_file(path, torch.float32, {"bits": bits, "checkpoint_format": "gptq"},
                            "cpu")
    return out["m.weight"].numpy()


def gptqmodel_dequant_runtime(packed, bits, group_size, sym, desc_act, scale_dtype):
    """GPTQModel's inference module (what transformers uses for GPTQ) after
    its v1 -> v2 qzeros conversion."""
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear
    from gptqmodel.utils.model import convert_gptq_v1_to_v2_format_module
    rows, cols = packed["dequant"].shape
    mod = TorchLinear(bits=bits, group_size=group_size, sym=sym, desc_act=desc_act,
                      in_features=cols, out_features=rows, bias=False, pack_dtype=torch.int32)
    mod.qweight.copy_(torch.from_numpy(packed["qweight"]))
    mod.qzeros.copy_(torch.from_numpy(packed["qzeros"]))
    mod.g_idx.copy_(torch.from_numpy(packed["g_idx"]))
    mod.scales = torch.from_numpy(packed["scales_f16"]).to(scale_dtype)
    convert_gptq_v1_to_v2_format_module(mod, bits=bits, pack_dtype=torch.int32)
    mod.post_init()
    with torch.no_grad():
        return mod.dequantize_weight().T.float().numpy()


def packing_case(tmp, case, bits, group_size, sym, desc_act):
    p = case["packed"]
    deq = p["dequant"]
    ck = gptqmodel_dequant_checkpoint(tmp, p, bits)
    rt32 = gptqmodel_dequant_runtime(p, bits, group_size, sym, desc_act, torch.float32)
    rt16 = gptqmodel_dequant_runtime(p, bits, group_size, sym, desc_act, torch.float16)
    deq16 = deq.astype(np.float16).astype(np.float32)
    return {
        "case": case["case"],
        "zero_points_at_0": int((p["zeros"] == 0).sum()),
        "checkpoint_dequant_bit_exact": bool(np.array_equal(ck.view(np.uint32),
                                                            deq.view(np.uint32))),
        "runtime_fp32_bit_exact": bool(np.array_equal(rt32.view(np.uint32),
                                                      deq.view(np.uint32))),
        "runtime_fp32_mismatches": int((rt32 != deq).sum()),
        "runtime_fp16_equals_moeq_rounded_to_fp16": bool(np.array_equal(rt16, deq16)),
    }


CASES = [  # name, bits, group_size, sym, act_order, rows shifted positive
    ("4-bit g128 sym", 4, 128, True, False, False),
    ("4-bit g128 asym", 4, 128, False, False, False),
    ("3-bit g128 sym", 3, 128, True, False, False),
    ("4-bit g-1 sym", 4, -1, True, False, False),
    ("4-bit g128 sym act-order", 4, 128, True, True, False),
    ("2-bit g128 asym", 2, 128, False, False, False),
    ("8-bit g128 asym", 8, 128, False, False, False),
    # All-positive rows make asymmetric zero points 0: the v1 edge case.
    ("4-bit g128 asym, zero points 0", 4, 128, False, False, True),
    ("3-bit g128 asym, zero points 0", 3, 128, False, False, True),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--json", help="write the results here too")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else int(time.time() * 1000) % (2 ** 31)
    print(f"seed {seed} (--seed {seed} repeats); W [{a.rows}, {a.cols}], {a.tokens} tokens; "
          f"damp {DAMP}, block {BLOCK}")
    torch.set_num_threads(2)
    build_cli()
    import compressed_tensors
    import gptqmodel
    import llmcompressor
    print(f"torch {torch.__version__}, llmcompressor {llmcompressor.__version__}, "
          f"compressed-tensors {compressed_tensors.__version__}, "
          f"gptqmodel {gptqmodel.__version__}")
    rng = np.random.default_rng(seed)
    w, h = make_problem(rng, a.rows, a.cols, a.tokens)
    results, failures = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, bits, gs, sym, act, positive in CASES:
            wc = w.copy()
            if positive:
                wc[: a.rows // 8] = np.abs(wc[: a.rows // 8]) + 0.01
            c = solver_case(tmp, wc, h, name, bits, gs, sym, act)
            pk = packing_case(tmp, c, bits, gs, sym, act)
            del c["packed"]
            e = c["out_err"]
            print(f"\n{name}")
            print(f"  vs llmc on moeq's grids: identical codes "
                  f"{c['identical_codes_llmc_moeq_grids']:.4%}, max |dW| "
                  f"{c['max_abs_diff_llmc_moeq_grids']:.3g}")
            print(f"  vs llmc own qparams:     identical codes "
                  f"{c['identical_codes_llmc_own_qparams']:.4%}, max |dW| "
                  f"{c['max_abs_diff_llmc_own_qparams']:.3g}, max rel scale diff "
                  f"{c['max_rel_scale_diff_own_vs_moeq']:.3g}")
            print("  tr(dW H dW^T): " + ", ".join(f"{k} {v:.6g}" for k, v in e.items()))
            print(f"  packing: zero points at 0: {pk['zero_points_at_0']}; GPTQModel checkpoint "
                  f"dequant bit-exact {pk['checkpoint_dequant_bit_exact']}; runtime fp32 "
                  f"bit-exact {pk['runtime_fp32_bit_exact']} "
                  f"({pk['runtime_fp32_mismatches']} mismatches); runtime fp16 == moeq "
                  f"rounded {pk['runtime_fp16_equals_moeq_rounded_to_fp16']}")
            # Packing must be exact wherever the v1 format is unambiguous; a
            # zero point of 0 is read differently by different loaders
            # (docs/formats.md), so the runtime path is only reported there.
            if not pk["checkpoint_dequant_bit_exact"]:
                failures += 1
            if pk["zero_points_at_0"] == 0 and not (pk["runtime_fp32_bit_exact"] and
                                                    pk["runtime_fp16_equals_moeq_rounded_to_fp16"]):
                failures += 1
            results.append({**c, "packing": pk})
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"seed": seed, "results": results}, f, indent=1)
    print(f"\n{len(CASES) * 2 - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
