#!/usr/bin/env bash
# bench/synthetic/run.sh: per-layer speed and memory of `moeq quantize` on
# the CUDA backend at real MoE layer shapes (synthetic weights from
# make_synthetic.py), for each expert-calibration mode. Run on a GPU machine
# from anywhere:
#     bench/synthetic/run.sh [SHAPE...]      (default: qwen3-30b-a3b; the shapes of
#                                             make_synthetic.py, e.g. deepseek-v3-mla)
#     env: MODES="all weighted routed" LAYERS=3 NSAMPLES=128 SEQLEN=2048
#          BUDGET=      (e.g. 24GiB: passed as --vram-budget)
#          MEMORY=overlapped  (or wait: --wait-for-layer)
#          STATE=1      (--state-every: the resume record after every layer;
#                        0: none, the time without it)
#          DEVICES=     (e.g. 0,1: passed as --devices, tag -<n>gpu)
#          SUFFIX=      (appended to the tag, e.g. -h200 for another GPU model)
#          WORK=/tmp/moeq-bench (checkpoints, outputs; several GiB)
# Writes bench/results/<shape>-<mode>-<memory>[-<budget>].json (summarize.py) and
# a table on stdout; logs to build/gpu/bench-logs; with $OUT set, both go
# into $OUT/bench.tgz as well (one file comes back from a remote machine).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=build/gpu
LOGS=$BUILD/bench-logs
WORK=${WORK:-/tmp/moeq-bench}
MODES=${MODES:-all weighted routed}
LAYERS=${LAYERS:-3}
NSAMPLES=${NSAMPLES:-128}
SEQLEN=${SEQLEN:-2048}
BUDGET=${BUDGET:-}
MEMORY=${MEMORY:-overlapped}
STATE=${STATE:-1}
SHAPES=("$@")
[ ${#SHAPES[@]} -eq 0 ] && SHAPES=(qwen3-30b-a3b)
mkdir -p "$LOGS" "$WORK" bench/results
. tests/gpu/env.sh
build_moeq_cuda "$LOGS/build.log" || { tail -30 "$LOGS/build.log"; exit 1; }

# The bf16 GEMM peak this GPU reaches through cuBLAS (torch.matmul), the
# yardstick for the achieved fractions.
peak=$(python3 - <<'PY'
import torch, time
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(3):
    a @ b
torch.cuda.synchronize()
best = 0.0
for _ in range(5):
    t = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    best = max(best, 20 * 2 * 8192**3 / (time.perf_counter() - t))
print(f"{best:.6g}")
PY
)
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "bf16 GEMM peak through cuBLAS on $gpu: $(python3 -c "print(round($peak/1e12, 1))") TFLOP/s"

for shape in "${SHAPES[@]}"; do
    ckpt=$WORK/$shape
    tokens=$((NSAMPLES * SEQLEN))
    if [ ! -f "$ckpt/config.json" ]; then
        rm -rf "$ckpt"
        python3 bench/synthetic/make_synthetic.py "$shape" "$ckpt" --layers "$LAYERS" \
            --tokens "$tokens" | tee "$LOGS/make-$shape.log"
    fi
    for mode in $MODES; do
        out=$WORK/out-$shape-$mode
        rm -rf "$out"
        extra=()
        tag=$shape-$mode-$MEMORY
        [ "$MEMORY" = wait ] && extra+=(--wait-for-layer)
        extra+=(--state-every "$STATE")
        [ "$STATE" = 1 ] || tag=$tag-state$STATE
        [ -n "$BUDGET" ] && { extra+=(--vram-budget "$BUDGET"); tag=$tag-$BUDGET; }
        [ -n "${DEVICES:-}" ] &&
            { extra+=(--devices "$DEVICES"); tag=$tag-$(echo "$DEVICES" | tr , '\n' | wc -l)gpu; }
        tag=$tag${SUFFIX:-}
        "$BUILD/moeq" quantize --model "$ckpt" --out "$out" --device cuda \
            --calib "$ckpt/tokens.bin" --nsamples "$NSAMPLES" --seqlen "$SEQLEN" \
            --expert-calib "$mode" "${extra[@]}" > "$LOGS/quantize-$tag.log" 2>&1 ||
            { tail -20 "$LOGS/quantize-$tag.log"; exit 1; }
        python3 bench/synthetic/summarize.py "$out/report.json" "$ckpt/config.json" \
            --shape "$shape" --mode "$mode" --budget "${BUDGET:-none}" --peak "$peak" \
            --gpu "$gpu" --out "bench/results/$tag.json"
        rm -rf "$out"
    done
done
if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/bench.tgz" bench/results/*.json "$LOGS"
fi
