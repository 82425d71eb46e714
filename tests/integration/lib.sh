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
