#!/usr/bin/env bash
# tests/gpu/run.sh: the one script a GPU machine runs. Builds moeq with the
# CUDA backend for Hopper (sm_90, Release), runs the CPU test suite (ctest)
# and the CPU-vs-CUDA parity test with its timings, and writes the logs to
# $OUT when it is set (else build/gpu/logs). Exits non-zero on any failure.
#
# A machine without the cJSON, PCRE2 or utf8proc headers gets them from the
# Debian packages in .deps/ (apt-get download on a machine that has apt
# access), unpacked under /tmp/moeq-deps: they only need to unpack, and
# their shared libraries load on any newer glibc.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=build/gpu
LOGS=${OUT:-$BUILD/logs}
mkdir -p "$LOGS"

have_headers() {
    printf '#include <cjson/cJSON.h>\n#include <pcre2.h>\n#include <utf8proc.h>\n' |
        cc -DPCRE2_CODE_UNIT_WIDTH=8 ${CPATH:+-I"$CPATH"} -E -x c - >/dev/null 2>&1
}

if ! have_headers; then
    P=/tmp/moeq-deps
    mkdir -p "$P"
    for f in .deps/*.deb; do dpkg -x "$f" "$P"; done
    LIB=$P/usr/lib/x86_64-linux-gnu
    export CPATH=$P/usr/include LIBRARY_PATH=$LIB LD_LIBRARY_PATH=$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export CMAKE_PREFIX_PATH=$P/usr CMAKE_LIBRARY_PATH=$LIB CMAKE_INCLUDE_PATH=$P/usr/include
    have_headers || { echo "run.sh: headers still missing after unpacking .deps" >&2; exit 1; }
fi

status=0
{
    date -u '+%Y-%m-%dT%H:%M:%SZ'
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    nvcc --version | tail -1
} 2>&1 | tee "$LOGS/env.log"

GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S . -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DMOEQ_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 2>&1 | tee "$LOGS/configure.log"
cmake --build "$BUILD" -j "$(nproc)" 2>&1 | tee "$LOGS/build.log"

(cd "$BUILD" && ctest --output-on-failure -j 8) 2>&1 | tee "$LOGS/ctest.log" || status=1
"$BUILD/test_cuda_parity" 2>&1 | tee "$LOGS/parity.log" || status=1

if [ "$status" -ne 0 ]; then
    echo "run.sh: FAILED (logs in $LOGS)"
else
    echo "run.sh: all passed (logs in $LOGS)"
fi
exit "$status"
