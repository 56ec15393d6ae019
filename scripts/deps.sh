#!/usr/bin/env bash
# Installs the Debian packages moeq builds with, if any is missing.
# Used by the README's commands and by CI; safe to run again.
set -euo pipefail
packages=(build-essential cmake pkg-config libcjson-dev liblapacke-dev libopenblas-dev
          libpcre2-dev libutf8proc-dev xz-utils clang libclang-rt-dev)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "moeq: installing ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi
