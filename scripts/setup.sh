#!/usr/bin/env bash
# setup.sh — installs what nnc needs to build and test on Debian 12, when it is missing.
set -euo pipefail
# fortunes: plain English text (/usr/share/games/fortunes) for examples/gpt.nn;
# dataset-fashion-mnist: the images the README's main command (examples/fashion_cnn.nn) and
# some tests train on (/usr/share/datasets/fashion-mnist)
packages=(gcc g++ binutils libc6-dev make cmake flex bison llvm-19-dev llvm-19-tools zlib1g-dev python3
          fortunes dataset-fashion-mnist)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
