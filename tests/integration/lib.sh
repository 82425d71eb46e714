# Shared helpers for the shell integration tests (sourced). Each test runs with `set -euo pipefail`,
# gets $COHORT_BIN and $COHORT_SOURCE_DIR from ctest, and works in a fresh temp dir it removes.
set -euo pipefail
: "${COHORT_BIN:?COHORT_BIN must point at the cohort binary (run through ctest)}"
: "${COHORT_SOURCE_DIR:?COHORT_SOURCE_DIR must be set (run through ctest)}"
WORK=$(mktemp -d /tmp/cohort-it-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
FAILS=0
PASSES=0
fail() { echo "FAIL: $*" >&2; FAILS=$((FAILS + 1)); }
pass() { echo "ok: $*"; PASSES=$((PASSES + 1)); }
# expect_exit CODE DESC -- CMD...: runs CMD, captures stdout+stderr in $OUT, checks the exit code.
expect_exit() {
  local want=$1 desc=$2; shift 3
  set +e
  OUT=$("$@" 2>&1)
  local got=$?
  set -e
  if [ "$got" = "$want" ]; then pass "$desc (exit $got)"; else fail "$desc: exit $got, want $want; output:"; echo "$OUT" | tail -20 >&2; fi
}
# expect_output REGEX DESC: checks $OUT from the last expect_exit.
expect_output() {
  if grep -Eq -- "$1" <<<"$OUT"; then pass "$2"; else fail "$2: output lacks /$1/:"; echo "$OUT" | tail -20 >&2; fi
}
finish() {
  echo "$PASSES passed, $FAILS failed"
  [ "$FAILS" = 0 ]
}

# make_shards DOCS LINES: DOCS small English text files of LINES lines under $WORK/text, prepared
# into byte-level shards in $WORK/shards (20% validation). For the data-parallel tests.
make_shards() {
  local i j
  mkdir -p "$WORK/text"
  for i in $(seq 1 "$1"); do
    for j in $(seq 1 "$2"); do echo "Document $i line $j: pack my box with five dozen liquor jugs, said the $j-th fox."; done > "$WORK/text/doc$i.txt"
  done
  expect_exit 0 "data prepare" -- "$COHORT_BIN" data prepare --format text --input "$WORK/text/*.txt" \
    --tokenizer byte --output "$WORK/shards" --val-fraction 0.2
}

# same_trajectory REF GOT [STEPS]: two `cohort train --metrics` files agree at every step (loss and
# gradient norm within 2e-5 relative: fp32 summation order differs between world sizes) and in the
# final validation loss and parameter norm; with STEPS, both have exactly that many steps. Prints
# the first differences; exit status 0 when they agree.
same_trajectory() {
  /usr/bin/python3 - "$@" <<'PY'
import json, sys
def load(p):
    rows = [json.loads(l) for l in open(p)]
    return [r for r in rows if "step" in r], next(r for r in rows if r.get("summary"))
ref_steps, ref_sum = load(sys.argv[1])
got_steps, got_sum = load(sys.argv[2])
bad = []
if len(ref_steps) != len(got_steps): bad.append(f"{len(got_steps)} steps vs {len(ref_steps)}")
if len(sys.argv) > 3 and len(got_steps) != int(sys.argv[3]): bad.append(f"{len(got_steps)} steps, want {sys.argv[3]}")
for a, b in zip(ref_steps, got_steps):
    for k in ("loss", "grad_norm"):
        if abs(a[k] - b[k]) > 2e-5 * abs(a[k]): bad.append(f"step {a['step']} {k}: {b[k]} vs {a[k]}")
for k in ("final_val_loss", "param_l2"):
    if abs(ref_sum[k] - got_sum[k]) > 2e-5 * abs(ref_sum[k]): bad.append(f"{k}: {got_sum[k]} vs {ref_sum[k]}")
print("; ".join(bad[:5]) if bad else f"{len(got_steps)} steps match")
sys.exit(1 if bad else 0)
PY
}
