#!/usr/bin/env bash
# test.sh — the README's test command (and CI's): set up, build, and run the whole lit suite
# twice: on the normal build and on an AddressSanitizer + UBSan build of compiler and runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
lit=/usr/lib/llvm-19/build/utils/lit/lit.py
passed=0 failed=0
run_suite() { # run_suite BUILD_DIR LABEL
  local out rc=0
  out=$(python3 "$lit" -sv "$1/tests/lit" 2>&1) || rc=$?
  echo "$out" | tail -n 40
  local p f
  p=$(echo "$out" | sed -n 's/^ *Passed *: *\([0-9]*\).*/\1/p' | tail -1)
  f=$(echo "$out" | sed -n 's/^ *Failed *: *\([0-9]*\).*/\1/p' | tail -1)
  passed=$((passed + ${p:-0})) failed=$((failed + ${f:-0}))
  if [ $rc -ne 0 ] && [ -z "$f" ]; then failed=$((failed + 1)); fi
  echo "== $2: ${p:-0} passed, ${f:-0} failed"
}
scripts/build.sh build -DNNC_WERROR=ON
run_suite build "release build"
scripts/build.sh build-asan -DNNC_WERROR=ON -DNNC_SANITIZE=ON
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 run_suite build-asan "asan+ubsan build"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
