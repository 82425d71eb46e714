#!/usr/bin/env bash
# Builds the frame decoder's libFuzzer target with clang (ASan + UBSan) against the generated
# protobuf code in the build tree, seeds it with valid frames, and fuzzes for FUZZ_SECONDS
# (default 30). Fails on any crash, sanitizer report, leak or timeout (libFuzzer exits non-zero
# and leaves the input as crash-*/leak-*/timeout-* in the work directory, which is then kept).
#   COHORT_SOURCE_DIR=... COHORT_BINARY_DIR=... tests/fuzz/run_frame_fuzzer.sh
set -euo pipefail
SRC=${COHORT_SOURCE_DIR:?}
BUILD=${COHORT_BINARY_DIR:?}
SECONDS_TO_RUN=${FUZZ_SECONDS:-30}
CXX=${FUZZ_CXX:-clang++}
command -v "$CXX" >/dev/null || { echo "run_frame_fuzzer: $CXX not found (scripts/test installs clang)" >&2; exit 1; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cohort-fuzz.XXXXXX")
keep=0
trap '[ "$keep" = 1 ] || rm -rf "$WORK"' EXIT

common=(-std=c++20 -I"$SRC" -I"$BUILD" "$SRC/coordinator/wire.cc" "$BUILD/proto/coordinator.pb.cc"
        "$SRC/common/status.cc" -lprotobuf -w)
"$CXX" -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  "$SRC/tests/fuzz/frame_fuzzer.cc" "${common[@]}" -o "$WORK/frame_fuzzer"
"$CXX" -O1 -DCOHORT_FUZZ_WRITE_SEEDS "$SRC/tests/fuzz/frame_fuzzer.cc" "${common[@]}" -o "$WORK/write_seeds"
mkdir -p "$WORK/corpus"
"$WORK/write_seeds" "$WORK/corpus"

cd "$WORK"
if ! ./frame_fuzzer -max_total_time="$SECONDS_TO_RUN" -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 \
      corpus > fuzz.log 2>&1; then
  keep=1
  tail -40 fuzz.log
  echo "run_frame_fuzzer: FAILED; the input and the log are in $WORK" >&2
  exit 1
fi
grep -E "stat::number_of_executed_units|stat::peak_rss_mb" fuzz.log || true
echo "run_frame_fuzzer: no crash in ${SECONDS_TO_RUN} s"
