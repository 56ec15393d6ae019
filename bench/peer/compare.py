#!/usr/bin/env python3
"""Puts moeq's and llm-compressor's per-layer times from one run of
bench/peer/run.sh side by side.

    compare.py MOEQ_REPORT PEER_JSON --shape S --gpu NAME --out FILE.json

MOEQ_REPORT is `moeq quantize`'s report.json, PEER_JSON what
llmcompressor_gptq.py wrote. A moeq layer's seconds are its critical path as
bench/synthetic/summarize.py counts it: "wall", plus "write" when the run
waited for each layer's write (--wait-for-layer). The peer's are its
calibration pass, solve and propagation pass. Both runs must have used the
same calibration windows (count, length, seed, token file size) and every
expert on every token; otherwise this stops with a message. Exits 1 when the
peer's record is incomplete (the file is written all the same).
"""
import argparse
import datetime
import json
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("moeq_report")
    ap.add_argument("peer_json")
    for a in ("--shape", "--gpu", "--out"):
        ap.add_argument(a, required=True)
    a = ap.parse_args()
    rep = json.load(open(a.moeq_report))
    peer = json.load(open(a.peer_json))
    for key in ("nsamples", "seqlen", "seed", "calib_stream_tokens"):
        if rep[key] != peer[key]:
            raise SystemExit(f"compare.py: {key} differs: moeq {rep[key]}, peer {peer[key]}")
    if rep["expert_calib"] != "all":
        raise SystemExit(f"compare.py: moeq ran --expert-calib {rep['expert_calib']}; the peer "
                         "calibrates every expert on every token (all)")
    overlapped = rep.get("memory_mode") == "overlapped"
    moeq_layers = {L["layer"]: L["seconds"]["wall"] + (0 if overlapped else L["seconds"]["write"])
                   for L in rep["layers"]}
    rows = []
    for p in peer["layers"]:
        m = moeq_layers.get(p["layer"])
        rows.append({"layer": p["layer"], "moeq_seconds": m, "peer_seconds": p["seconds"],
                     "peer_over_moeq": p["seconds"] / m if m else None})
    rec = {
        "shape": a.shape, "gpu": a.gpu,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nsamples": rep["nsamples"], "seqlen": rep["seqlen"], "seed": rep["seed"],
        "tokens": rep["nsamples"] * rep["seqlen"], "layers_in_checkpoint": len(rep["layers"]),
        "peer_complete": peer["complete"],
        "moeq": {"version": rep["moeq_version"], "backend": rep["backend"],
                 "expert_calib": rep["expert_calib"], "memory_mode": rep.get("memory_mode"),
                 "total_seconds": rep["total_seconds"],
                 "peak_device_bytes": rep["peak_device_bytes"],
                 "quantization_config": rep["quantization_config"],
                 "layers": rep["layers"]},
        "peer": peer,
        "per_layer": rows,
    }
    if peer["complete"]:
        rec["total_peer_over_moeq"] = peer["total_seconds"] / rep["total_seconds"]
    json.dump(rec, open(a.out, "w"), indent=1)
    print(f"peer vs moeq, {a.shape} on {a.gpu}, {rep['nsamples']} x {rep['seqlen']} tokens, "
          f"every expert on every token:")
    for r in rows:
        m = f"{r['moeq_seconds']:.2f} s" if r["moeq_seconds"] is not None else "-"
        ratio = f"{r['peer_over_moeq']:.1f}x" if r["peer_over_moeq"] else "-"
        print(f"  layer {r['layer']}: llm-compressor {r['peer_seconds']:.2f} s, moeq {m}: {ratio}")
    if peer["complete"]:
        print(f"  whole run (load + quantize): llm-compressor {peer['total_seconds']:.1f} s "
              f"(no output written), moeq {rep['total_seconds']:.1f} s (output written): "
              f"{rec['total_peer_over_moeq']:.1f}x")
    else:
        print(f"  llm-compressor did not finish: {len(rows)} of {len(rep['layers'])} layers timed")
    print(f"wrote {a.out}")
    return 0 if peer["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
