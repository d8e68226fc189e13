#!/usr/bin/env bash
# The sanitizer check (docs/RELIABILITY.md, "Sanitizers"); not part of scripts/test.sh.
# Builds the library, the CLI and every test suite with gcc, AddressSanitizer and
# UndefinedBehaviorSanitizer into build-asan/, then runs the suite through ctest. Any
# report fails: ASan and UBSan stop the process at the first one (halt_on_error,
# -fno-sanitize-recover), LeakSanitizer reports leaks at exit, and every report of every
# process (the tests and the CLI they run as a subprocess) is also written to
# build-asan/sanitizer-logs/, which must stay empty: a test that expects the CLI to fail
# would otherwise pass on a CLI killed by a report.
#
#   scripts/sanitize.sh                       build, then the whole suite (ctest -j JOBS)
#   scripts/sanitize.sh -R 'Tokenizer|Recipe' build, then the tests matching (any ctest args)
#   BUILD_ONLY=1 scripts/sanitize.sh          build only
#
# Environment: BUILD_DIR (build-asan), JOBS (build and ctest jobs, default nproc),
# NICE (e.g. "nice -n 19", prefixed to the build and the tests), TEST_TIMEOUT (seconds
# per test, default 3600: sanitized tests run 2-5 times slower). ASAN_OPTIONS,
# UBSAN_OPTIONS and LSAN_OPTIONS given are appended to the ones set here.
# Suppressions: tests/sanitizers/lsan.supp (libtorch's and its dependencies' own leaks,
# each entry with its reason); nothing of vlmadapt's own code is suppressed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD_DIR=${BUILD_DIR:-build-asan}
JOBS=${JOBS:-$(nproc)}
NICE=${NICE:-}
TEST_TIMEOUT=${TEST_TIMEOUT:-3600}
case $BUILD_DIR in /*) ;; *) BUILD_DIR=$ROOT/$BUILD_DIR ;; esac
LOGS=$BUILD_DIR/sanitizer-logs
SUPP=$ROOT/tests/sanitizers

# -O1 -g1: fast enough, and line tables for the stack traces; no -DNDEBUG, so assertions
# stay on. The flags are the same for every target, so the precompiled header is reused.
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
# -static-libubsan: gcc's shared libubsan, loaded beside libasan, ignores log_path and
# prints to stderr only, where a report of the CLI run as a subprocess could go unseen.
LINK="$SAN -static-libubsan"

# The tests are also run while building (gtest_discover_tests lists them), so the options
# hold from here on. log_path: every report also lands in $LOGS/report.<pid>.
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:strict_init_order=1:check_initialization_order=1:log_path=$LOGS/report${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$LOGS/report${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$SUPP/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"

rm -rf "$LOGS"
mkdir -p "$LOGS"

report_logs() {
  local files
  files=$(find "$LOGS" -type f | sort)
  [ -z "$files" ] && return 0
  echo "sanitize: $(echo "$files" | wc -l) sanitizer report(s):" >&2
  for f in $files; do
    echo "==== $f" >&2
    head -c 20000 "$f" >&2
  done
  return 1
}

GEN=()
command -v ninja >/dev/null && [ ! -f "$BUILD_DIR/Makefile" ] && GEN=(-G Ninja)
$NICE cmake -S . -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_CXX_COMPILER=g++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
  -DCMAKE_CXX_FLAGS="$SAN" -DCMAKE_EXE_LINKER_FLAGS="$LINK" -DCMAKE_SHARED_LINKER_FLAGS="$LINK" \
  -DVLMADAPT_TEST_TIMEOUT="$TEST_TIMEOUT" >/dev/null
build_rc=0
$NICE cmake --build "$BUILD_DIR" -j "$JOBS" || build_rc=$?
if [ "$build_rc" -ne 0 ]; then
  report_logs || true
  exit "$build_rc"
fi
if [ -n "${BUILD_ONLY:-}" ]; then
  report_logs
  exit
fi

ctest_rc=0
(cd "$BUILD_DIR" && $NICE ctest --output-on-failure -j "$JOBS" --timeout "$TEST_TIMEOUT" "$@") || ctest_rc=$?
logs_rc=0
report_logs || logs_rc=$?
if [ "$ctest_rc" -ne 0 ] || [ "$logs_rc" -ne 0 ]; then
  echo "sanitize: FAILED (ctest exit $ctest_rc; reports in $LOGS/)" >&2
  exit 1
fi
echo "sanitize: no sanitizer report"
