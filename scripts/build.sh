#!/usr/bin/env bash
# build.sh [DIR] [cmake options...] — configures and builds nnc and libnnrt.a into DIR (build/).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build}
shift || true
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
cmake --build "$dir" -j"$(nproc)"
