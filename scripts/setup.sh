#!/usr/bin/env bash
# Installs every dependency of vlmadapt from Debian packages (with --fuzz, also those of
# scripts/fuzz.sh). Idempotent: packages already present are not fetched again.
set -euo pipefail
PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libtorch-dev libopenblas0-pthread libgloo-dev  # libgloo-dev: the headers c10d's ProcessGroupGloo.hpp includes
  libopencv-dev libeigen3-dev libboost-program-options-dev libgtest-dev
  nlohmann-json3-dev zlib1g-dev libicu-dev
  dataset-fashion-mnist
  python3-torch python3-pil
)
# scripts/fuzz.sh: clang 14 with libFuzzer and the sanitizer runtimes, and LLVM's OpenMP.
[ "${1:-}" = "--fuzz" ] && PACKAGES+=(clang-14 libclang-rt-14-dev libomp-14-dev)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
echo "setup: all dependencies present"
