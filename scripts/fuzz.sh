#!/usr/bin/env bash
# The long reliability check (docs/RELIABILITY.md, "Fuzzing"); not part of scripts/test.sh.
# Builds the libFuzzer targets of tests/fuzz/ (clang++-14, AddressSanitizer and
# UndefinedBehaviorSanitizer) into build-fuzz/, replays each target's committed corpus,
# then fuzzes each for SECONDS (default 60) and prints per target the executions and
# crashes. Exits non-zero when any target crashed.
#
#   scripts/fuzz.sh [SECONDS]          every target
#   scripts/fuzz.sh 0                  build and replay the corpora only (a quick regression run)
#   TARGETS="image idx" scripts/fuzz.sh 900
#   RUNS=1000000 scripts/fuzz.sh 3600  each target until 10^6 executions (or an hour)
#
# Environment: BUILD_DIR (build-fuzz), JOBS (build jobs, default nproc), TARGETS (names
# of tests/fuzz/fuzz_<name>.cpp, default all), RUNS (executions per target, default no
# limit), NICE (e.g. "nice -n 19", prefixed to the build and every run). New inputs found go to $BUILD_DIR/corpus/<target>/ (the committed seeds in
# tests/fuzz/corpus/ are only read); crashing inputs to $BUILD_DIR/crashes/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
BUILD_DIR=${BUILD_DIR:-build-fuzz}
JOBS=${JOBS:-$(nproc)}
NICE=${NICE:-}
ALL_TARGETS=$(cd tests/fuzz && ls fuzz_*.cpp | sed 's/^fuzz_//; s/\.cpp$//' | tr '\n' ' ')
TARGETS=${TARGETS:-$ALL_TARGETS}
# Limits of one input: a reader must refuse a hostile size before allocating it, so an
# allocation over 1 GiB, a process over 2 GiB or an input taking 10 s is a finding.
LIMITS=(-rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10)

scripts/setup.sh --fuzz >/dev/null
GEN=()
command -v ninja >/dev/null && [ ! -f "$BUILD_DIR/Makefile" ] && GEN=(-G Ninja)
$NICE cmake -S tests/fuzz -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_CXX_COMPILER=clang++-14 >/dev/null
# shellcheck disable=SC2086  # the target list is word-split on purpose
$NICE cmake --build "$BUILD_DIR" -j "$JOBS" --target $(printf 'fuzz_%s ' $TARGETS)

# ASan: a reader's leak is a finding too, but libtorch keeps allocations of its own alive at
# exit; UBSan: print where.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

# libFuzzer stops at the first crash, leak, timeout or out-of-memory input and saves it.
count_crashes() { find "$BUILD_DIR/crashes/$1" -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' | wc -l; }

failed=0
declare -A EXECS CRASHES ELAPSED
for t in $TARGETS; do
  bin="$BUILD_DIR/bin/fuzz_$t"
  seeds="tests/fuzz/corpus/$t"
  log="$BUILD_DIR/logs/$t.log"
  mkdir -p "$BUILD_DIR/corpus/$t" "$BUILD_DIR/crashes/$t" "$BUILD_DIR/logs"
  # Replay: every committed seed once, as regression inputs.
  if ! $NICE "$bin" "${LIMITS[@]}" "$seeds"/* >"$log" 2>&1; then
    EXECS[$t]=replay CRASHES[$t]="replay failed (see $log)"
    failed=1
    continue
  fi
  if [ "$SECONDS_PER_TARGET" -eq 0 ]; then
    EXECS[$t]=$(ls "$seeds" | wc -l) CRASHES[$t]=0
    continue
  fi
  before=$(count_crashes "$t")
  start=$(date +%s)
  $NICE "$bin" "${LIMITS[@]}" -max_total_time="$SECONDS_PER_TARGET" -runs="${RUNS:--1}" -print_final_stats=1 \
    -artifact_prefix="$BUILD_DIR/crashes/$t/" "$BUILD_DIR/corpus/$t" "$seeds" >"$log" 2>&1 || true
  ELAPSED[$t]=$(($(date +%s) - start))
  EXECS[$t]=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  CRASHES[$t]=$(($(count_crashes "$t") - before))
  [ "${CRASHES[$t]}" -eq 0 ] || failed=1
done

printf '\n%-14s %14s %8s %s\n' target executions seconds crashes
for t in $TARGETS; do
  printf '%-14s %14s %8s %s\n' "$t" "${EXECS[$t]:-?}" "${ELAPSED[$t]:-0}" "${CRASHES[$t]}"
done
[ "$failed" -eq 0 ] || echo "fuzz: crashes found: inputs in $BUILD_DIR/crashes/, logs in $BUILD_DIR/logs/" >&2
exit "$failed"
