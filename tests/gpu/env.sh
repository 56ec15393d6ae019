# tests/gpu/env.sh, sourced by the GPU scripts (tests/gpu/run.sh,
# bench/synthetic/run.sh) from the repository root: makes the cJSON, PCRE2
# and utf8proc headers and libraries available. A machine without them gets
# them from the Debian packages in .deps/ (apt-get download on a machine that
# has apt access), unpacked under /tmp/moeq-deps: they only need to unpack,
# and their shared libraries load on any newer glibc.
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


# Builds moeq with the CUDA backend for Hopper (sm_90 only, to save time;
# the default build covers sm_80/86/89/90) into $BUILD, logging to $1.
# NCCL (for --devices) from the CUDA toolkit, else from PyTorch's
# nvidia-nccl wheel.
build_moeq_cuda() {
    local gen=() nccl
    command -v ninja >/dev/null && gen=(-G Ninja)
    nccl=$(python3 -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null || true)
    cmake -S . -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DMOEQ_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES=90 ${nccl:+-DNCCL_ROOT="$nccl"} > "$1" 2>&1 &&
        cmake --build "$BUILD" -j "$(nproc)" >> "$1" 2>&1
}
