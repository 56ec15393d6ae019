#!/usr/bin/env bash
# tests/gpu/run.sh: the one script a GPU machine runs. Builds moeq with the
# CUDA backend for Hopper (sm_90, Release), runs the CPU test suite (ctest),
# the CPU-vs-CUDA op parity test with its timings, the CPU-vs-CUDA pipeline
# test, the demo model quantized on both backends and evaluated, and the
# output formats checked by the libraries that own them; writes the logs to
# $OUT when it is set (else build/gpu/logs). Exits non-zero on any failure.
# Dependencies: tests/gpu/env.sh; for formats, the wheels of
# tests/gpu/fetch-wheels.sh in .whl/formats (carry .whl to the machine).
#     bash tests/gpu/run.sh [all|tests|jobs|formats]
# tests: ctest and the two CUDA test programs; jobs: the demo jobs, GPU
# evaluation, several GPUs, resume and device fallback; formats: the demo
# quantized on the GPU in every --format, symmetric and asymmetric, each
# checkpoint dequantized by its format's own library (bit for bit against
# moeq's reading) and loaded whole by a real loader (logits against moeq
# eval's); all (default): the three, in that order (each fits a separate
# device call of 10 minutes).
#     CPU_CHECK=1 [PYTHON=python3] bash tests/gpu/run.sh formats
# is a dry run of the formats part on a machine without a GPU: a CPU build
# (build/gpu-peer), moeq --device cpu, the Python checks run by $PYTHON.
set -euo pipefail
PART=${1:-all}
CPU_CHECK=${CPU_CHECK:-0}
case "$PART" in all | tests | jobs | formats) ;; *) echo "usage: run.sh [all|tests|jobs|formats]" >&2; exit 2 ;; esac
if [ "$CPU_CHECK" = 1 ] && [ "$PART" != formats ]; then
    echo "run.sh: CPU_CHECK=1 is a dry run of the formats part only" >&2
    exit 2
fi
cd "$(dirname "$0")/../.."
BUILD=build/gpu
LOGS=${OUT:-$BUILD/logs}
mkdir -p "$LOGS"

. tests/gpu/env.sh

status=0
{
    date -u '+%Y-%m-%dT%H:%M:%SZ'
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    nvcc --version | tail -1 || true
} 2>&1 | tee "$LOGS/env.log"

if [ "$CPU_CHECK" != 1 ]; then
    build_moeq_cuda "$LOGS/build.log" || { tail -30 "$LOGS/build.log"; exit 1; }
fi

# A test program that hangs fails after its limit (seconds) instead of
# stopping the script; the log says which one.
limited() {
    local limit=$1 rc=0
    shift
    timeout "$limit" "$@" || rc=$?
    [ "$rc" -eq 124 ] && echo "TIMED OUT after $limit s: $*"
    return "$rc"
}

if [ "$PART" = all ] || [ "$PART" = tests ]; then
(cd "$BUILD" && ctest --output-on-failure -j 8) 2>&1 | tee "$LOGS/ctest.log" || status=1
limited 300 "$BUILD/test_cuda_parity" 2>&1 | tee "$LOGS/parity.log" || status=1
limited 480 "$BUILD/test_cuda_pipeline" 2>&1 | tee "$LOGS/pipeline.log" || status=1
fi

if [ "$PART" = all ] || [ "$PART" = jobs ]; then

# The main job on both backends: the demo model with the bundled calibration
# set, then each output evaluated against the original (CPU eval).
for dev in cuda cpu; do
    q=$BUILD/demo-$dev
    rm -rf "$q"
    { "$BUILD/moeq" quantize --model demo/qwen3-moe-demo --out "$q" \
          --device "$dev" 2>&1 | grep -v "^layer" &&
      "$BUILD/moeq" eval "$q" --reference demo/qwen3-moe-demo --text demo/eval-sample.jsonl \
          --device cpu --quiet && python3 -c "import json,sys; s=json.load(open(sys.argv[1])); \
print('report:', s['backend'], s['total_seconds'], s['peak_device_bytes'], s['peak_host_bytes'])" "$q/report.json"
    } > "$LOGS/demo-$dev.log" 2>&1 || status=1
    tail -n 12 "$LOGS/demo-$dev.log"
done

# AWQ on the GPU: the demo job with --method awq, and the same job with
# RTN, each evaluated like the main job (CPU eval). AWQ must beat RTN in
# KL, and its router compensation must leave every routing decision as it
# was (report.json: 0 routing changes in every MoE layer).
for method in awq rtn; do
    q=$BUILD/demo-cuda-$method
    rm -rf "$q"
    { "$BUILD/moeq" quantize --model demo/qwen3-moe-demo --out "$q" --method "$method" \
          --device cuda 2>&1 | grep -v "^layer" &&
      "$BUILD/moeq" eval "$q" --reference demo/qwen3-moe-demo --text demo/eval-sample.jsonl \
          --device cpu --quiet
    } > "$LOGS/demo-cuda-$method.log" 2>&1 || status=1
done
python3 - "$LOGS/demo-cuda-awq.log" "$LOGS/demo-cuda-rtn.log" "$BUILD/demo-cuda-awq/report.json" \
    <<'PY' 2>&1 | tee "$LOGS/demo-cuda-awq-vs-rtn.log" || status=1
import json, sys
def scores(path):
    vals = dict(l.split()[:2] for l in open(path) if l.split()[:1] in (["kl"], ["perplexity"]))
    return float(vals["perplexity"]), float(vals["kl"])
(awq_ppl, awq_kl), (rtn_ppl, rtn_kl) = scores(sys.argv[1]), scores(sys.argv[2])
rep = json.load(open(sys.argv[3]))
changes = []
def walk(o):
    if isinstance(o, dict):
        changes.extend(v for k, v in o.items() if k == "awq_routing_changes")
        for v in o.values():
            walk(v)
    elif isinstance(o, list):
        for v in o:
            walk(v)
walk(rep)
print(f"demo on the GPU: AWQ perplexity {awq_ppl:.4f} KL {awq_kl:.6f}; RTN perplexity "
      f"{rtn_ppl:.4f} KL {rtn_kl:.6f}; AWQ routing changes {changes} ({rep['total_seconds']:.1f} s)")
assert awq_kl < rtn_kl, "AWQ does not beat RTN"
assert changes and all(c == 0 for c in changes), "AWQ's scaled router changed routing decisions"
PY

# moeq eval with its decoder layers on the GPU (the default where one is):
# the CUDA output again, to set beside its CPU evaluation above.
TIMEFORMAT="eval on the GPU: %R s"
{ time "$BUILD/moeq" eval "$BUILD/demo-cuda" \
      --reference demo/qwen3-moe-demo --text demo/eval-sample.jsonl --device cuda --quiet
} > "$LOGS/eval-gpu.log" 2>&1 || status=1
tail -n 6 "$LOGS/eval-gpu.log"

# The main job on every GPU of the machine (--devices), when it has several:
# evaluated on the GPU like the one-GPU output just above; its KL must stay
# within 2% of that one's (tests/gpu/test_cuda_pipeline.c checks the codes).
gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)
if [[ "$gpus" == *,* ]]; then
    q=$BUILD/demo-multi
    rm -rf "$q"
    { "$BUILD/moeq" quantize --model demo/qwen3-moe-demo --out "$q" --devices "$gpus" 2>&1 |
          grep -v "^layer" &&
      "$BUILD/moeq" eval "$q" --reference demo/qwen3-moe-demo --text demo/eval-sample.jsonl \
          --device cuda --quiet > "$q.eval" && cat "$q.eval" &&
      python3 - "$q.eval" "$LOGS/eval-gpu.log" "$q/report.json" <<'PY'
import json, sys
kl = [float(l.split()[1]) for f in sys.argv[1:3] for l in open(f) if l.startswith("kl")]
rep = json.load(open(sys.argv[3]))
print(f"devices {rep['devices']}: KL {kl[0]:.4f} vs {kl[1]:.4f} on one GPU; peaks "
      f"{[round(b / 2**20, 1) for b in rep['peak_device_bytes_per_device']]} MiB")
assert abs(kl[0] / kl[1] - 1) <= 0.02, "KL on several GPUs differs from one GPU's by over 2%"
PY
    } > "$LOGS/demo-multi.log" 2>&1 || status=1
    tail -n 4 "$LOGS/demo-multi.log"
else
    echo "NOT RUN: the demo on several GPUs (this machine has one)"
fi

# Kill a CUDA run mid-layer (test hook, src/common/failpoint.h), resume it,
# and compare with an uninterrupted CUDA run: same files (report.json aside).
r=$BUILD/resume
rm -rf "$r" && mkdir -p "$r"
q=(quantize --model demo/qwen3-moe-demo --device cuda --nsamples 16 --seqlen 256 --quiet)
{
    "$BUILD/moeq" "${q[@]}" --out "$r/ref" &&
    { MOEQ_FAILPOINT=layer-2-mid "$BUILD/moeq" "${q[@]}" --out "$r/cut"; [ $? -eq 137 ]; } &&
    [ -d "$r/cut.moeq-partial" ] && [ ! -e "$r/cut" ] &&
    "$BUILD/moeq" "${q[@]}" --out "$r/cut" --resume &&
    diff -r -x report.json "$r/ref" "$r/cut" && echo "resume on CUDA: identical output"
} > "$LOGS/resume-cuda.log" 2>&1 || { status=1; echo "resume on CUDA: FAILED"; }
tail -n 2 "$LOGS/resume-cuda.log"

# A setting the CUDA loop lacks (here --true-sequential false): --device auto
# runs it on the CPU and says so; --device cuda refuses before writing.
f=$BUILD/fallback
rm -rf "$f" && mkdir -p "$f"
q=(quantize --model demo/qwen3-moe-demo --nsamples 4 --seqlen 128 --true-sequential false)
{
    "$BUILD/moeq" "${q[@]}" --out "$f/auto" 2> "$f/auto.err" &&
    grep -q "running on the CPU: the CUDA pipeline calibrates true-sequentially only" "$f/auto.err" &&
    python3 -c "import json,sys; assert json.load(open(sys.argv[1]))['backend'] == 'cpu'" \
        "$f/auto/report.json" &&
    { "$BUILD/moeq" "${q[@]}" --out "$f/cuda" --device cuda 2> "$f/cuda.err"; [ $? -eq 1 ]; } &&
    grep -q "true-sequentially only" "$f/cuda.err" && [ ! -e "$f/cuda" ] &&
    [ ! -e "$f/cuda.moeq-partial" ] && echo "device fallback: auto ran on the CPU, cuda refused"
} > "$LOGS/fallback.log" 2>&1 || { status=1; echo "device fallback: FAILED"; cat "$f"/*.err; }
tail -n 1 "$LOGS/fallback.log"

fi

if [ "$PART" = all ] || [ "$PART" = formats ]; then

# Every output format read by the library that owns it. The demo is
# quantized on the GPU in each case of CASES in tests/peer/check_formats_peer.py
# (gptq with GPTQ, awq with AWQ and with GPTQ, compressed-tensors with GPTQ;
# symmetric and asymmetric); then
#   check_formats_peer.py dequantizes every quantized linear with GPTQModel
#     (gptq, awq) or compressed-tensors and compares it with moeq's own
#     reading (tests/peer/dequant_cli.c) bit for bit;
#   check_moe_loaders_peer.py loads each checkpoint whole (transformers 4.57
#     for compressed-tensors and gptq, GPTQModel for gptq and awq; on the
#     CPU), checks every quantized module against moeq's weights and
#     compares the logits with `moeq eval`'s within a tolerance. GPTQModel
#     refuses asymmetric gptq it did not write: reported as REFUSED, not as
#     a pass (transformers loads it).
# The packages come from tests/gpu/fetch-wheels.sh: .whl/formats, carried
# with each call, and transformers 4.57.6 from .whl/formats-large, which does
# not fit in the same call: carried once and kept on the machine in
# build/formats-wheels (copied there here when a call carries it). They are
# installed under /tmp/site-formats and put first on PYTHONPATH for these
# two scripts only. dequant_cli links a CPU build of the library
# (build/gpu-peer).
PYTHON=${PYTHON:-python3}
F=$BUILD/formats
SITE=/tmp/site-formats
KEPT=build/formats-wheels
rm -rf "$F" && mkdir -p "$F"
if [ "$CPU_CHECK" = 1 ]; then
    moeq_args=(--device cpu)
else
    moeq_args=(--moeq "$BUILD/moeq" --device cuda)
fi
peer() {
    PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} "$PYTHON" "$@"
}
if compgen -G ".whl/formats-large/*.whl" > /dev/null; then
    mkdir -p "$KEPT" && cp .whl/formats-large/*.whl "$KEPT"/
fi
if ! compgen -G ".whl/formats/*.whl" > /dev/null || ! compgen -G "$KEPT/*.whl" > /dev/null; then
    echo "formats: FAILED: wheels missing (.whl/formats: $(ls .whl/formats 2>/dev/null | wc -l)," \
        "$KEPT: $(ls "$KEPT" 2>/dev/null | wc -l)); run tests/gpu/fetch-wheels.sh and carry" \
        ".whl/formats, and .whl/formats-large once (see its header)"
    status=1
elif ! { rm -rf "$SITE" && "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
            --no-cache-dir --upgrade --target "$SITE" .whl/formats/*.whl "$KEPT"/*.whl; } \
        > "$LOGS/formats-wheels.log" 2>&1; then
    tail -20 "$LOGS/formats-wheels.log"
    echo "formats: FAILED: installing the wheels"
    status=1
# The versions the checks were written for, or a clear stop. The scripts
# leave through os._exit (see check_formats_peer.finish), and so does this.
elif ! peer - > "$LOGS/formats-import.log" 2>&1 <<'PY'; then
import os, sys
import compressed_tensors, gptqmodel, optimum.version, torch, transformers
have = {"transformers": transformers.__version__, "optimum": optimum.version.__version__,
        "compressed-tensors": compressed_tensors.__version__,
        "gptqmodel": gptqmodel.__version__}
want = {"transformers": "4.57.6", "optimum": "2.0.0", "compressed-tensors": "0.14.0.1",
        "gptqmodel": "5.6.12"}
print(f"formats: torch {torch.__version__}, "
      + ", ".join(f"{k} {v}" for k, v in have.items()), flush=True)
bad = {k: v for k, v in have.items() if v != want[k]}
if bad:
    print(f"formats: imported {bad}, expected {want}", flush=True)
sys.stderr.flush()
os._exit(1 if bad else 0)
PY
    tail -20 "$LOGS/formats-import.log"
    echo "formats: FAILED: the peers do not import, or not in the versions of the wheels"
    status=1
else
    grep "^formats:" "$LOGS/formats-import.log"
    # Diagnostics: which package, imported alone, makes a normal interpreter
    # exit fail (an abort at teardown was seen on the GPU machine).
    for m in torch tokenizers transformers compressed_tensors optimum pcre gptqmodel; do
        rc=0
        peer -c "import $m" > /dev/null 2>&1 || rc=$?
        echo "formats: plain exit after importing $m alone: rc $rc"
    done | tee -a "$LOGS/formats-import.log" | grep -v "rc 0$" || true
    # GPTQModel wraps its torch kernel's dequantization in torch.compile,
    # whose CPU code needs the interpreter's C headers; without them the
    # same functions run eagerly (TORCHDYNAMO_DISABLE, for the rest of the
    # script: this part is the last), and the log says so.
    if ! "$PYTHON" -c 'import os, sysconfig, sys
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
        echo "formats: no Python.h for $PYTHON: torch.compile disabled, GPTQModel's kernels run eagerly"
        export TORCHDYNAMO_DISABLE=1
    fi
    common=(--build build/gpu-peer "${moeq_args[@]}")
    peer tests/peer/check_formats_peer.py "${common[@]}" --work "$F" --skip-logits \
        > "$LOGS/formats-weights.log" 2>&1 || status=1
    grep -E "^(weights|check_formats_peer)" "$LOGS/formats-weights.log" ||
        tail -30 "$LOGS/formats-weights.log"
    # The checkpoints just checked, as the first script wrote them.
    ckpts=("$F"/*)
    if [ -d "${ckpts[0]}" ]; then
        peer tests/peer/check_moe_loaders_peer.py "${common[@]}" "${ckpts[@]}" \
            > "$LOGS/formats-loaders.log" 2>&1 || status=1
        grep -E "^(loader|check_moe_loaders_peer|torch)" "$LOGS/formats-loaders.log" ||
            tail -30 "$LOGS/formats-loaders.log"
    else
        echo "formats: FAILED: no checkpoint was quantized"
        status=1
    fi
    # One line per checkpoint: both checks' verdicts.
    "$PYTHON" - "$LOGS/formats-weights.log" "$LOGS/formats-loaders.log" "${ckpts[@]}" \
        <<'PY' 2>&1 | tee "$LOGS/formats-summary.log"
import os, re, sys
logs = [open(p).read().splitlines() if os.path.exists(p) else [] for p in sys.argv[1:3]]
def verdict(line):
    if "REFUSED" in line:
        return "REFUSED (asymmetric v1 it did not write)"
    m = re.search(r"logits max \|diff\| / max \|logit\| (\S+) .*top-1 (\S+)", line)
    return line.rsplit(" ", 1)[-1] + (f" (logits {m.group(1)}, top-1 {m.group(2)})" if m else "")
for path in sys.argv[3:]:
    name = os.path.basename(path)
    weights = [verdict(l) for l in logs[0] if l.startswith(f"weights {name} ")]
    loads = [f"{l.split()[2].rstrip(':')} {verdict(l)}" for l in logs[1]
             if l.startswith(f"loader {name} ")]
    print(f"formats {name}: weights against the library, bit for bit: "
          f"{weights[0] if weights else 'NOT RUN'}; whole-model loads: "
          f"{', '.join(loads) if loads else 'NOT RUN'}")
PY
fi

fi

if [ "$status" -ne 0 ]; then
    echo "run.sh: FAILED (logs in $LOGS)"
else
    echo "run.sh ($PART): all passed (logs in $LOGS)"
fi
exit "$status"
