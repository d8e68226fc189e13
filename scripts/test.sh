#!/usr/bin/env bash
# Set-up, build, every test through ctest, then the installed package with the plugin
# example (scripts/test_plugin.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
(cd "${BUILD_DIR:-build}" && ctest --output-on-failure -j "${JOBS:-$(nproc)}")
scripts/test_plugin.sh
