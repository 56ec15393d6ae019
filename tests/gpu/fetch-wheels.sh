#!/usr/bin/env bash
# tests/gpu/fetch-wheels.sh: the Python packages `tests/gpu/run.sh formats`
# needs beyond what the GPU machine has (Python 3.12, torch, transformers 5,
# tokenizers, safetensors, huggingface_hub, numpy, accelerate, pillow), as
# wheels for a machine without network: run it here, then carry them to the
# GPU machine, where run.sh installs them with
#     python3 -m pip install --no-index --no-deps --target /tmp/site-formats WHEELS
# and puts /tmp/site-formats first on PYTHONPATH. Nothing is compiled there.
#
# Two folders, because one device call carries at most 64 MiB with the
# tracked tree (about 54 MB of it):
#   .whl/formats/        18 wheels, 8.0 MiB: carry with .deps on each
#                        `run.sh formats` call;
#   .whl/formats-large/  transformers 4.57.6, 11.4 MiB: carry once to a warm
#                        machine and keep it there, in a call of its own:
#                            mkdir -p build/formats-wheels &&
#                                cp .whl/formats-large/*.whl build/formats-wheels/
#                        (ignored build outputs stay between calls). run.sh
#                        installs build/formats-wheels/*.whl with
#                        .whl/formats, and copies .whl/formats-large there
#                        itself when a call carries both.
#
# Why these versions (bench/RESULTS.md, "The demo MoE loaded whole by
# transformers 4.57 / GPTQModel"): transformers 5 fuses a MoE block's experts
# into 3-D parameters and does not load per-expert quantized tensors, so the
# whole-model loaders run under transformers 4.57.6, which wants
# huggingface_hub < 1.0, tokenizers <= 0.23.0 and requests (its import-time
# version check) and loads GPTQ through optimum (2.0.0, the release before
# gptqmodel 5.6.12); compressed-tensors 0.14.0.1 is the release that loaded
# both the symmetric and the asymmetric demo checkpoint under it; gptqmodel
# 5.6.12 with the releases of its runtime imports current when it came out
# (December 2025: device-smi, logbar, pypcre, tokenicer). The rest are what
# those import and the GPU machine lacks (it has pillow, 12.3.0). Not in .whl/
# itself because bench/peer/run.sh installs .whl/*.whl (llm-compressor under
# transformers 5).
#
# Built here rather than downloaded, because PyPI has only sources for them:
#   gptqmodel: BUILD_CUDA_EXT=0 (no CUDA extensions: the checks use its
#     pure-torch kernels), with the torch of `python3` visible to its setup
#     (--no-build-isolation; its setup.py imports torch): a py3-none-any wheel;
#   device-smi, logbar, tokenicer: pure Python, py3-none-any;
#   pypcre: a C extension, compiled against this machine's PCRE2 headers
#     (libpcre2-dev) by a Python 3.12 interpreter ($PYTHON312, else
#     python3.12 or pyenv's 3.12), linked to libpcre2-8.so.0, which any
#     Debian or Ubuntu has (and .deps/ carries).
# Everything else is a binary or pure-Python wheel for CPython 3.12 on
# manylinux x86-64. The script checks that the two folders end up with
# exactly the pinned set.
#     tests/gpu/fetch-wheels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=.whl/formats
LARGE=.whl/formats-large
# A Python 3.12 for pypcre: $PYTHON312, else python3.12, else pyenv's.
if [ -z "${PYTHON312:-}" ]; then
    for p in python3.12 $(pyenv root 2>/dev/null)/versions/3.12*/bin/python3; do
        if "$p" -c '' 2>/dev/null; then PYTHON312=$p; break; fi
    done
fi
PYTHON312=${PYTHON312:-python3.12}

# CPython 3.12 manylinux wheels, downloaded as they are.
LARGE_DOWNLOAD=(transformers==4.57.6)
DOWNLOAD=(
    huggingface_hub==0.36.2 tokenizers==0.22.2 requests==2.34.2
    urllib3==2.8.0 charset_normalizer==3.5.2
    optimum==2.0.0 compressed-tensors==0.14.0.1 loguru==0.7.3 pydantic==2.13.4 pydantic_core==2.46.4
    annotated_types==0.7.0 typing_inspection==0.4.2
    threadpoolctl==3.8.0
)
# Sources built into wheels here (see above).
BUILD_PURE=(device-smi==0.5.3 logbar==0.1.9 tokenicer==0.0.5)
BUILD_CP312=(pypcre==0.2.9)
GPTQMODEL=gptqmodel==5.6.12

"$PYTHON312" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' ||
    { echo "fetch-wheels.sh: PYTHON312=$PYTHON312 is not a Python 3.12" >&2; exit 1; }
python3 -c 'import torch, setuptools' ||
    { echo "fetch-wheels.sh: gptqmodel's setup needs torch and setuptools in python3" >&2; exit 1; }

rm -rf "$DEST" "$LARGE"
mkdir -p "$DEST" "$LARGE"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

download() {
    local dest=$1
    shift
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d "$dest" "$@"
}
download "$DEST" "${DOWNLOAD[@]}"
download "$LARGE" "${LARGE_DOWNLOAD[@]}"

for spec in "${BUILD_PURE[@]}" "${BUILD_CP312[@]}"; do
    python3 -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$tmp/src" "$spec"
done
for spec in "${BUILD_PURE[@]}" "${BUILD_CP312[@]}"; do
    name=${spec%%==*}
    src=$(ls "$tmp"/src/"${name//-/_}"-"${spec##*==}".tar.gz 2>/dev/null ||
          ls "$tmp"/src/"$name"-"${spec##*==}".tar.gz)
    "$PYTHON312" -m pip wheel -q --no-cache-dir --no-deps -w "$DEST" "$src"
done
BUILD_CUDA_EXT=0 python3 -m pip wheel -q --no-cache-dir --no-deps --no-build-isolation \
    -w "$DEST" "$GPTQMODEL"

# Exactly the pinned sets: one wheel per pin, of the pinned version.
check_set() {
    python3 - "$@" <<'PY'
import os, re, sys
dest, pins = sys.argv[1], sys.argv[2:]
norm = lambda s: re.sub(r"[-_.]+", "_", s).lower()
files = sorted(f for f in os.listdir(dest) if f.endswith(".whl"))
have = {(norm(f.split("-")[0]), f.split("-")[1]) for f in files}
want = {(norm(p.split("==")[0]), p.split("==")[1]) for p in pins}
assert have == want and len(files) == len(pins), \
    f"{dest}: wheels differ from the pins: extra {sorted(have - want)}, missing {sorted(want - have)}"
size = sum(os.path.getsize(os.path.join(dest, f)) for f in files)
print(f"{len(files)} wheels in {dest}, {size / 2**20:.1f} MiB")
PY
}
check_set "$DEST" "${DOWNLOAD[@]}" "${BUILD_PURE[@]}" "${BUILD_CP312[@]}" "$GPTQMODEL"
check_set "$LARGE" "${LARGE_DOWNLOAD[@]}"
