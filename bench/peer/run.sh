#!/usr/bin/env bash
# bench/peer/run.sh: moeq and a peer, llm-compressor's GPTQ
# (llmcompressor_gptq.py), side by side on one GPU in one run: the same
# synthetic Qwen3-30B-A3B-shaped checkpoint (make_synthetic.py), the same
# calibration windows, 4-bit g128 with every expert calibrated on every
# token; per-layer seconds of both and their ratio. On a GPU machine, from
# the repository root or anywhere:
#     bench/peer/run.sh
#     env: LAYERS=2 NSAMPLES=128 SEQLEN=2048
#          STATE=1      (moeq --state-every; 1 is the CLI's default)
#          DEADLINE=570 (seconds from the start by which the peer is stopped;
#                        the layers it finished are kept)
#          WORK=/tmp/moeq-peer (checkpoint and moeq's output; a few GiB)
#          CPU_CHECK=1  (a dry run of the script on a machine without a GPU:
#                        the tiny-qwen3 shape, a CPU build in build/release,
#                        moeq --device cpu; the record stays in the log folder)
# Python packages the machine lacks come from .whl/*.whl (installed under
# /tmp/site) when that folder exists. Writes bench/results/peer-<shape>.json
# (compare.py) and prints a summary; logs to build/gpu/peer-logs; with $OUT
# set, both go into $OUT/peer.tgz. Exits non-zero, saying why, when either
# tool fails, the peer does not import, or the peer runs past DEADLINE.
set -euo pipefail
cd "$(dirname "$0")/../.."
CPU_CHECK=${CPU_CHECK:-0}
if [ "$CPU_CHECK" = 1 ]; then
    SHAPE=tiny-qwen3 BUILD=build/release DEVICE=cpu GPU_ARG=
    NSAMPLES=${NSAMPLES:-8} SEQLEN=${SEQLEN:-512}
else
    SHAPE=qwen3-30b-a3b BUILD=build/gpu DEVICE=cuda GPU_ARG=--require-gpu
    NSAMPLES=${NSAMPLES:-128} SEQLEN=${SEQLEN:-2048}
fi
LAYERS=${LAYERS:-2}
STATE=${STATE:-1}
DEADLINE=${DEADLINE:-570}
WORK=${WORK:-/tmp/moeq-peer}
LOGS=$BUILD/peer-logs
RESULT=bench/results/peer-$SHAPE.json
[ "$CPU_CHECK" = 1 ] && RESULT=$LOGS/peer-$SHAPE.json
mkdir -p "$LOGS" "$WORK" bench/results
rm -f "$LOGS"/peer.json "$LOGS"/moeq-report.json "$RESULT"

pack() {
    [ -n "${OUT:-}" ] || return 0
    local files=("$LOGS")
    [ -f "$RESULT" ] && [ "$CPU_CHECK" != 1 ] && files+=("$RESULT")
    tar czf "$OUT/peer.tgz" "${files[@]}"
}
fail() {
    echo "peer/run.sh: FAILED: $*" >&2
    pack
    exit 1
}

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl > "$LOGS/wheels.log" 2>&1 ||
        { tail -20 "$LOGS/wheels.log"; fail "installing the wheels in .whl"; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# The peer must import before anything is built or generated.
python3 - > "$LOGS/peer-import.log" 2>&1 <<'PY' || { cat "$LOGS/peer-import.log"; fail "llm-compressor does not import"; }
import importlib.metadata as md
import llmcompressor, compressed_tensors, torch, transformers
from llmcompressor.modifiers.gptq import GPTQModifier
from llmcompressor.modeling.moe.linearize import load_quantizable_moe
print("llmcompressor", md.version("llmcompressor"), "compressed-tensors",
      md.version("compressed-tensors"), "torch", torch.__version__, "transformers",
      transformers.__version__, "datasets", md.version("datasets"),
      "gpu", torch.cuda.is_available())
PY
cat "$LOGS/peer-import.log"

if [ "$CPU_CHECK" = 1 ]; then
    { cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DMOEQ_CUDA=OFF &&
        cmake --build "$BUILD" -j2 --target moeq; } > "$LOGS/build.log" 2>&1 ||
        { tail -30 "$LOGS/build.log"; fail "building moeq"; }
    gpu="none (CPU check)"
else
    . tests/gpu/env.sh
    build_moeq_cuda "$LOGS/build.log" || { tail -30 "$LOGS/build.log"; fail "building moeq"; }
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
fi
echo "built moeq at $((SECONDS)) s"

tokens=$((NSAMPLES * SEQLEN))
ckpt=$WORK/$SHAPE-L$LAYERS-T$tokens
if [ ! -f "$ckpt/tokens.bin" ]; then
    rm -rf "$ckpt"
    python3 bench/synthetic/make_synthetic.py "$SHAPE" "$ckpt" --layers "$LAYERS" \
        --tokens "$tokens" > "$LOGS/make.log" 2>&1 || { cat "$LOGS/make.log"; fail "make_synthetic.py"; }
    cat "$LOGS/make.log"
fi

out=$WORK/out-moeq
rm -rf "$out"
"$BUILD/moeq" quantize --model "$ckpt" --out "$out" --device "$DEVICE" --calib "$ckpt/tokens.bin" \
    --nsamples "$NSAMPLES" --seqlen "$SEQLEN" --expert-calib all --state-every "$STATE" \
    > "$LOGS/moeq.log" 2>&1 || { tail -20 "$LOGS/moeq.log"; fail "moeq quantize"; }
cp "$out/report.json" "$LOGS/moeq-report.json"
rm -rf "$out"
tail -n $((LAYERS + 2)) "$LOGS/moeq.log"
echo "moeq done at $((SECONDS)) s"

left=$((DEADLINE - SECONDS))
[ "$left" -gt 30 ] || fail "only $left s left before DEADLINE=$DEADLINE for the peer"
set +e
TQDM_DISABLE=1 LLM_COMPRESSOR_LOG_LEVEL=WARNING PYTHONUNBUFFERED=1 \
    timeout --kill-after=10 "$left" python3 bench/peer/llmcompressor_gptq.py "$ckpt" \
    --out "$LOGS/peer.json" --nsamples "$NSAMPLES" --seqlen "$SEQLEN" $GPU_ARG \
    > "$LOGS/peer.log" 2>&1
rc=$?
set -e
grep '^peer ' "$LOGS/peer.log" || true
echo "peer done at $((SECONDS)) s (exit $rc)"
if [ ! -f "$LOGS/peer.json" ]; then
    tail -30 "$LOGS/peer.log"
    fail "llm-compressor wrote no record (exit $rc)"
fi
set +e
python3 bench/peer/compare.py "$LOGS/moeq-report.json" "$LOGS/peer.json" --shape "$SHAPE" \
    --gpu "$gpu" --out "$RESULT"
crc=$?
set -e
if [ "$rc" -ne 0 ]; then
    tail -30 "$LOGS/peer.log"
    [ "$rc" -eq 124 ] && fail "llm-compressor ran past DEADLINE=$DEADLINE s (layers it finished are in $RESULT)"
    fail "llm-compressor exited with $rc"
fi
[ "$crc" -eq 0 ] || fail "compare.py exited with $crc"
pack
