#!/usr/bin/env bash
# Every example job in configs/ is valid and trains on the real default dataset (prepared by
# scripts/setup). The quickstart run is shortened with --set, and its validation loss must fall well
# below the initial value (uniform over 257 byte tokens: ln 257 = 5.55).
source "$(dirname "$0")/lib.sh"
DATA=$COHORT_SOURCE_DIR/data/brown-byte
if ! ls "$DATA"/train-*.bin >/dev/null 2>&1; then
  fail "$DATA has no shards: run scripts/setup (or scripts/prepare_brown) first"
  finish
fi
for cfg in "$COHORT_SOURCE_DIR"/configs/*.yaml; do
  expect_exit 0 "config check $(basename "$cfg")" -- "$COHORT_BIN" config check "$cfg"
done

expect_exit 0 "quickstart (shortened)" -- "$COHORT_BIN" train "$COHORT_SOURCE_DIR/configs/quickstart.yaml" \
  --no-progress --set train.steps=${QUICKSTART_STEPS:-300} --set train.eval_interval=0
echo "$OUT" | grep -E "val loss|done" || true
line=$(grep -Eo "val loss [0-9.]+ -> [0-9.]+" <<<"$OUT" || true)
if [ -z "$line" ]; then
  fail "quickstart did not report its val loss"
else
  read -r first last < <(awk '{print $3, $5}' <<<"$line")
  if awk -v a="$first" -v b="$last" 'BEGIN { exit !(a > 5.0 && b < 0.6 * a) }'; then
    pass "quickstart val loss fell from $first to $last"
  else
    fail "quickstart val loss $first -> $last: want a start near 5.55 and an end below 60% of it"
  fi
fi
finish
