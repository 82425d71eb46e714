#!/usr/bin/env bash
# Multi-process tests of the Gloo backend: starts N ranks of collectives_gloo_test as background
# processes on this host (transport on 127.0.0.1) and waits for each by PID.
#
#   BIN=.../collectives_gloo_test gloo_test.sh conformance NP file|tcp
#   BIN=... gloo_test.sh peer-death        # 3 ranks; rank 1 killed (between / inside collectives)
#                                          # or stalled, with a tcp and a file store; 5 s timeout
#   BIN=... gloo_test.sh bootstrap         # bad options, unreachable store, port in use, missing peer
set -uo pipefail
: "${BIN:?path of collectives_gloo_test}"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gloo_test.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
passes=0 fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
pass() { echo "ok: $*"; passes=$((passes + 1)); }

store_uri() {
  case "$1" in
    file) echo "file://$TMP/store" ;;
    tcp) echo "tcp://127.0.0.1:$("$BIN" --mode free-port)" ;;
    *) echo "unknown store kind $1" >&2; exit 2 ;;
  esac
}

# launch NP MODE STORE TIMEOUT_MS: runs the ranks and waits for all of them; sets codes[r] and
# secs[r] (when rank r exited, seconds since the start, ms precision). Rank r's output is in
# $TMP/out.r. `timeout` only guards against a hang of the test itself.
launch() {
  local np=$1 mode=$2 store=$3 tmo=$4 prefix="run-$RANDOM-$RANDOM" r i done_pid code
  local pids=()
  local -A rank_of=()
  rm -f "$TMP"/out.*
  local start=$(($(date +%s%N) / 1000000))
  for ((r = 0; r < np; r++)); do
    timeout 300 "$BIN" --mode "$mode" --rank "$r" --size "$np" --store "$store" --prefix "$prefix" \
      --timeout-ms "$tmo" >"$TMP/out.$r" 2>&1 &
    pids+=($!)
    rank_of[$!]=$r
  done
  codes=() secs=() msecs=()
  for ((i = 0; i < np; i++)); do
    wait -n -p done_pid "${pids[@]}"
    code=$?
    local left=() p
    for p in "${pids[@]}"; do [ "$p" = "$done_pid" ] || left+=("$p"); done
    pids=("${left[@]}")
    local ms=$(($(date +%s%N) / 1000000 - start))
    r=${rank_of[$done_pid]}
    codes[$r]=$code
    msecs[$r]=$ms
    secs[$r]=$((ms / 1000)).$(printf %03d $((ms % 1000)))
  done
  for ((r = 0; r < np; r++)); do
    sed "s/^/  [rank $r, exit ${codes[$r]} at ${secs[$r]}s] /" "$TMP/out.$r" | tail -5
  done
}

conformance() {
  local np=$1 kind=$2
  launch "$np" conformance "$(store_uri "$kind")" 120000
  local ok=1 r
  for ((r = 0; r < np; r++)); do [ "${codes[$r]}" = 0 ] || ok=0; done
  if [ $ok = 1 ]; then pass "conformance np=$np store=$kind (${secs[0]}s)"; else fail "conformance np=$np store=$kind"; fi
}

peer_death() {
  local mode kind
  for mode in kill kill-mid stall; do
    for kind in tcp file; do
      launch 3 "$mode" "$(store_uri "$kind")" 5000
      local what="$mode/$kind: rank 1 $([ "$mode" = stall ] && echo stalled || echo killed)"
      local all="$(cat "$TMP"/out.0 "$TMP"/out.2)"
      # The survivors (ranks 0 and 2) must be done long before the test's own guard.
      local elapsed=${secs[0]} elapsed_ms=${msecs[0]}
      [ "${msecs[2]}" -gt "$elapsed_ms" ] && elapsed=${secs[2]} elapsed_ms=${msecs[2]}
      if [ "${codes[0]}" = 124 ] || [ "${codes[2]}" = 124 ]; then fail "$what: a peer hung"
      elif [ "${codes[0]}" != 3 ] || [ "${codes[2]}" != 3 ]; then fail "$what: peers exited ${codes[0]}, ${codes[2]} (want 3: failed cleanly)"
      elif [ "$elapsed_ms" -ge 30000 ]; then fail "$what: peers took ${elapsed}s with a 5 s timeout"
      elif [ "$mode" = stall ] && ! grep -q "DEADLINE_EXCEEDED.*waiting for rank 1" <<<"$all"; then
        fail "$what: no DEADLINE_EXCEEDED naming rank 1"
      elif [ "$mode" != stall ] && ! grep -qE "(UNAVAILABLE|DEADLINE_EXCEEDED)" <<<"$all"; then
        fail "$what: no UNAVAILABLE/DEADLINE_EXCEEDED error"
      elif [ "$mode" = kill ] && ! grep -qE "(waiting for|sending to|receiving from) rank 1" <<<"$all"; then
        fail "$what: no error names rank 1"
      else
        pass "$what -> peers failed cleanly in ${elapsed}s"
      fi
    done
  done
}

bootstrap() {
  timeout 120 "$BIN" --mode bootstrap --tmp "$TMP" 2>&1
  if [ $? = 0 ]; then pass "bootstrap errors"; else fail "bootstrap errors"; fi
}

case "${1:-}" in
  conformance) conformance "$2" "$3" ;;
  peer-death) peer_death ;;
  bootstrap) bootstrap ;;
  *) echo "usage: $0 conformance NP file|tcp | peer-death | bootstrap" >&2; exit 2 ;;
esac
echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
