#!/usr/bin/env python3
"""Turns one `moeq quantize` report.json into a benchmark record:
the GPUs used, per-layer seconds by stage (stages of the primary GPU; with
several, the wait for the others is in "forward"), the GEMM FLOPs of the layer (counted from the
shapes, see flops() below), the achieved fraction of the measured bf16
cuBLAS peak, and the run's peak device memory.

    summarize.py REPORT CONFIG --shape S --mode M --budget B --peak FLOPS
                 --gpu NAME --out FILE.json
"""
import argparse
import datetime
import json


def attention_flops(cfg, n, seqlen):
    """bf16 GEMM FLOPs and GPTQ fp32 work of one attention block: GQA
    (q/k/v, o_proj), or MLA (DeepSeek-V2/V3 config keys: the a-projections,
    then q_b/kv_b on their latents, attention with q/k heads of qk_nope +
    qk_rope and v heads of v_head_dim, o_proj; src/pipeline/mla_cuda.c)."""
    H, hq, S = cfg["hidden_size"], cfg["num_attention_heads"], n // seqlen
    if "kv_lora_rank" not in cfg:
        D, hkv = cfg["head_dim"], cfg["num_key_value_heads"]
        qd, kvd = hq * D, hkv * D
        f = 2 * n * H * H                      # q/k/v Hessian
        f += 2 * n * H * (qd + 2 * kvd)        # q/k/v
        f += 2 * 2 * S * hq * seqlen * seqlen * D  # q k^T and P v
        f += 2 * n * qd * qd                   # o_proj Hessian
        f += 2 * n * qd * H                    # o_proj
        return f, (qd + 2 * kvd) * H * H + H * qd * qd
    rq, rkv = cfg.get("q_lora_rank") or 0, cfg["kv_lora_rank"]
    nope, rot, vd = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    qrow, kvrow, od = hq * (nope + rot), hq * (nope + vd), hq * vd
    a_rows = (rq or qrow) + rkv + rot          # q_a_proj (or q_proj) and kv_a_proj_with_mqa
    f = 2 * n * H * H                          # the a-projections' Hessian
    f += 2 * n * H * a_rows                    # latents and k_rot (q itself without q_lora_rank)
    f += 2 * n * rq * rq + 2 * n * rkv * rkv   # q_b / kv_b Hessians
    f += 2 * n * rq * qrow + 2 * n * rkv * kvrow  # q and [k_nope | v] from the latents
    f += 2 * S * hq * seqlen * seqlen * (nope + rot + vd)  # q k^T and P v
    f += 2 * n * od * od + 2 * n * od * H      # o_proj Hessian and o_proj
    gptq = a_rows * H * H + (qrow * rq * rq if rq else 0) + kvrow * rkv * rkv + H * od * od
    return f, gptq


def flops(cfg, mode, n, seqlen, expert_tokens):
    """bf16 tensor-core GEMM FLOPs of one MoE layer as moeq computes it.

    Hessians are full GEMMs (2 n d^2: both triangles); attention scores and
    P v are full T x T squares (the causal half is computed too); GPTQ's fp32
    lazy updates (about rows * cols^2) are counted apart in gptq_fp32."""
    H = cfg["hidden_size"]
    E = cfg.get("num_experts") or cfg["n_routed_experts"]
    I, k = cfg["moe_intermediate_size"], cfg["num_experts_per_tok"]
    Is = cfg.get("shared_expert_intermediate_size") or cfg.get("n_shared_experts", 0) * I
    f, gptq = attention_flops(cfg, n, seqlen)
    f += 2 * n * H * H                     # MLP input Hessian (shared gate/up)
    f += 2 * n * H * E                     # router
    if mode == "routed":
        m = sum(expert_tokens)             # = n k
        f += 2 * m * H * H                 # per-expert gate/up Hessians
        f += 2 * m * H * 2 * I + 2 * m * I * I  # down inputs and Hessians
    else:
        if mode == "weighted":
            f += E * 2 * n * H * H         # per-expert weighted gate/up Hessians
        f += E * (2 * n * H * 2 * I + 2 * n * I * I)  # every expert on every token
    f += n * k * (2 * H * 2 * I + 2 * I * H)  # the routed forward
    if Is:
        f += 2 * n * H * 2 * Is + 2 * n * Is * Is + n * (2 * H * 2 * Is + 2 * Is * H) + 2 * n * H
    gptq += E * (2 * I * H * H + H * I * I)
    if Is:
        gptq += 2 * Is * H * H + H * Is * Is
    return f, gptq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("report")
    ap.add_argument("config")
    for a in ("--shape", "--mode", "--budget", "--gpu", "--out"):
        ap.add_argument(a, required=True)
    ap.add_argument("--peak", type=float, required=True)
    a = ap.parse_args()
    rep = json.load(open(a.report))
    cfg = json.load(open(a.config))
    n = rep["nsamples"] * rep["seqlen"]
    overlapped = rep.get("memory_mode") == "overlapped"
    layers = []
    for L in rep["layers"]:
        s = L["seconds"]
        # The layer's time on the critical path: overlapped, reading and
        # writing run beside the GPU work and "wall" holds the rest;
        # waiting, the write follows.
        total = s["wall"] + (0 if overlapped else s["write"])
        compute = s["capture"] + s["hessian"] + s.get("prepare", 0) + s["solve"] + s["forward"]
        f, g = flops(cfg, a.mode, n, rep["seqlen"], L.get("expert_tokens", []))
        layers.append({"layer": L["layer"], "seconds": s, "total_seconds": total,
                       "gemm_flops": f, "gptq_fp32_flops": g,
                       "fraction_of_bf16_peak_compute": f / compute / a.peak if compute else 0,
                       "fraction_of_bf16_peak_total": f / total / a.peak if total else 0})
    steady = layers[1:] or layers
    rec = {"shape": a.shape, "mode": a.mode, "budget": a.budget, "tokens": n,
           "memory_mode": rep.get("memory_mode", "wait-for-layer"),
           "nsamples": rep["nsamples"], "seqlen": rep["seqlen"], "gpu": a.gpu,
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "backend": rep["backend"], "bf16_peak_flops": a.peak,
           "devices": rep.get("devices", [rep.get("device", 0)]),
           "peak_device_bytes": rep["peak_device_bytes"],
           "peak_device_bytes_per_device": rep.get("peak_device_bytes_per_device",
                                                   [rep["peak_device_bytes"]]),
           "peak_host_bytes": rep["peak_host_bytes"],
           "total_seconds": rep["total_seconds"],
           "steady_state_seconds_per_layer": sum(l["total_seconds"] for l in steady) / len(steady),
           "layers": layers}
    json.dump(rec, open(a.out, "w"), indent=1)
    print(f"{a.shape} {a.mode} {rec['memory_mode']} budget {a.budget} on "
          f"{len(rec['devices'])} GPU(s): {n} tokens, peak device "
          f"{rec['peak_device_bytes'] / 2**30:.2f} GiB, steady state "
          f"{rec['steady_state_seconds_per_layer']:.2f} s/layer")
    for l in layers:
        s = l["seconds"]
        print(f"  layer {l['layer']}: {l['total_seconds']:.2f} s on the critical path; load "
              f"{s['load']:.2f}, capture "
              f"{s['capture']:.2f}, hessian {s['hessian']:.2f}, prepare {s.get('prepare', 0):.2f}, solve {s['solve']:.2f}, forward "
              f"{s['forward']:.2f}, write {s['write']:.2f}; {l['gemm_flops'] / 1e12:.1f} TFLOP "
              f"bf16 GEMM = {100 * l['fraction_of_bf16_peak_compute']:.1f}% of peak over the "
              f"compute stages, {100 * l['fraction_of_bf16_peak_total']:.1f}% over the layer")


if __name__ == "__main__":
    main()
