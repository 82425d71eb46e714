#!/usr/bin/env bash
# Peers of a failed rank must not hang (RELIABILITY.md: "rank killed mid-step", "hung rank in a
# collective"), 3 ranks under a real mpirun:
#  - rank 1 SIGKILLs itself after one all-reduce: mpirun ends the job with a failure that names it;
#  - rank 1 stops joining collectives: the others' all-reduce returns DEADLINE_EXCEEDED after the
#    5 s communicator timeout and the job fails instead of hanging.
set -uo pipefail
: "${MPIRUN:?}" "${BIN:?}"
passes=0 fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

start=$(date +%s)
out=$(timeout 60 "$MPIRUN" --oversubscribe -np 3 "$BIN" kill 2>&1); code=$?
elapsed=$(( $(date +%s) - start ))
echo "$out" | tail -8
if [ "$code" = 124 ]; then fail "kill: job hung for 60 s after a rank was killed"
elif [ "$code" = 0 ]; then fail "kill: job succeeded although rank 1 was killed"
elif ! grep -qiE "rank 1 .*signal 9" <<<"$out"; then fail "kill: the failure does not name the killed rank"
else echo "ok: killed rank -> job failed in ${elapsed}s (exit $code)"; passes=$((passes + 1)); fi

start=$(date +%s)
out=$(timeout 60 "$MPIRUN" --oversubscribe -np 3 "$BIN" stall 2>&1); code=$?
elapsed=$(( $(date +%s) - start ))
echo "$out" | tail -8
if [ "$code" = 124 ]; then fail "stall: job hung for 60 s behind a stalled rank"
elif [ "$code" = 0 ]; then fail "stall: job succeeded although rank 1 stalled"
elif ! grep -q "DEADLINE_EXCEEDED" <<<"$out"; then fail "stall: no DEADLINE_EXCEEDED from the waiting ranks"
elif [ "$elapsed" -gt 30 ]; then fail "stall: took ${elapsed}s for a 5 s timeout"
else echo "ok: stalled rank -> peers timed out, job failed in ${elapsed}s (exit $code)"; passes=$((passes + 1)); fi

echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
