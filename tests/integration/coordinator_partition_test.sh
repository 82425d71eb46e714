#!/usr/bin/env bash
# A worker agent cut off by the network (RELIABILITY.md: "worker agent lost / partitioned"): the
# agent runs in its own network namespace, joined to the coordinator by a veth pair, and the link is
# taken down under a running job. Nothing is closed or reset: the TCP connection just stops
# carrying anything, in both directions.
#  - the coordinator declares the worker down within the heartbeat timeout and restarts the job on
#    the other worker (once the cut-off ranks have surely stopped: the agent's stop grace), from
#    its start (no checkpoint here) with one restart;
#  - the cut-off agent stops its own ranks once it has heard nothing for its lease;
#  - when the link comes back, the agent registers again, and the restarted job is untouched.
# Needs root (network namespaces); CI runs as root. Every process is started here and stopped by PID.
source "$(dirname "$0")/lib.sh"
B=$COHORT_BIN
[ "$(id -u)" = 0 ] || { echo "coordinator_partition: needs root for a network namespace" >&2; exit 1; }
NS=cohort-part-$$
HOST_IF=cph$$
NS_IF=cpn$$
HOST_IP=10.231.$(( $$ % 250 )).1
NS_IP=10.231.$(( $$ % 250 )).2
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  ip netns pids "$NS" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip link del "$HOST_IF" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$NS"
ip link add "$HOST_IF" type veth peer name "$NS_IF"
ip link set "$NS_IF" netns "$NS"
ip addr add "$HOST_IP/30" dev "$HOST_IF"
ip link set "$HOST_IF" up
ip netns exec "$NS" ip addr add "$NS_IP/30" dev "$NS_IF"
ip netns exec "$NS" ip link set "$NS_IF" up
ip netns exec "$NS" ip link set lo up
# (The worker's registration below is what shows the link works.)

cd "$WORK"
head -c 32 /dev/urandom | base64 > user.token
head -c 32 /dev/urandom | base64 > worker.token
chmod 600 user.token worker.token
HB_TIMEOUT=3
cat > coordinator.yaml <<EOF
state_dir: $WORK/state
listen: $HOST_IP:0
http: off
user_token_file: user.token
worker_token_file: worker.token
heartbeat_timeout_s: $HB_TIMEOUT
restart_backoff_s: 1
EOF
"$B" coordinator --config coordinator.yaml > coord.out 2> coord.err &
PIDS+=("$!")
for i in $(seq 1 100); do grep -q "listening on" coord.out 2>/dev/null && break; sleep 0.1; done
PORT=$(grep -m1 'listening on' coord.out | sed 's/.*:\([0-9]*\)$/\1/')
export COHORT_COORDINATOR=$HOST_IP:$PORT COHORT_TOKEN_FILE=$WORK/user.token

# w-cut runs in the namespace (2 slots); w-host on the host (2 slots).
ip netns exec "$NS" "$B" worker --slots 2 --name w-cut --token-file worker.token --work-dir "$WORK/w-cut" \
  --stop-grace-s 2 > w-cut.out 2>&1 &
CUT_PID=$!
PIDS+=("$CUT_PID")
for i in $(seq 1 50); do "$B" workers 2>/dev/null | grep -q "w-cut .* up" && break; sleep 0.1; done
expect_exit 0 "the namespaced worker registered" -- "$B" workers
expect_output "w-cut +up +2" "w-cut is up"

# The job lands on w-cut, the only worker so far.
cat > cut.yaml <<'EOF'
name: cut
command: 'exec sleep 304'
launch: {ranks: 2, max_restarts: 1}
EOF
expect_exit 0 "submit a 2-rank job" -- "$B" submit cut.yaml
CJ=$(sed -n 's/^submitted job \([0-9]*\).*/\1/p' <<<"$OUT")
for i in $(seq 1 100); do [ "$(pgrep -fc '^sleep 304' || true)" = 2 ] && break; sleep 0.1; done
[ "$(pgrep -fc '^sleep 304' || true)" = 2 ] && pass "both ranks run on w-cut" || fail "the ranks did not start"
OLD_RANKS=$(pgrep -f '^sleep 304' | tr '\n' ' ')
expect_exit 0 "status" -- "$B" status "$CJ"
expect_output "on w-cut ranks 0-1" "placed on w-cut"
"$B" worker --slots 2 --name w-host --token-file worker.token --work-dir "$WORK/w-host" --stop-grace-s 2 > w-host.out 2>&1 &
PIDS+=("$!")
for i in $(seq 1 50); do "$B" workers 2>/dev/null | grep -q "w-host .* up" && break; sleep 0.1; done

# Cut the link.
CUT_AT=$(date +%s.%N)
ip netns exec "$NS" ip link set "$NS_IF" down
for i in $(seq 1 150); do
  "$B" status "$CJ" | grep -q "attempt 2 .* running on w-host" && break
  sleep 0.1
done
expect_exit 0 "status after the cut" -- "$B" status "$CJ"
expect_output "attempt 1 .*worker w-cut lost: no heartbeat" "the cut-off worker's attempt failed for want of heartbeats"
expect_output "attempt 2 .* running on w-host ranks 0-1" "the job runs again on w-host"
expect_output "restarts   1" "with exactly one restart"
ENDED=$(python3 - "$WORK/state/state.db" "$CJ" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(db.execute("SELECT ended_ms FROM attempts WHERE job_id=? ORDER BY epoch LIMIT 1", (int(sys.argv[2]),)).fetchone()[0] / 1000)
PY
)
python3 -c "import sys; d=$ENDED-$CUT_AT; print('detected after %.1f s' % d); sys.exit(0 if d <= $HB_TIMEOUT + 1.5 else 1)" \
  && pass "detected within the heartbeat timeout" || fail "detection took too long"

# The cut-off agent stops its ranks on its own once its lease (the heartbeat timeout) runs out.
for i in $(seq 1 100); do
  left=0
  for p in $OLD_RANKS; do kill -0 "$p" 2>/dev/null && left=$((left + 1)); done
  [ "$left" = 0 ] && break
  sleep 0.1
done
[ "$left" = 0 ] && pass "the cut-off agent stopped its own ranks (its lease ran out)" || fail "$left old ranks still run"
grep -q "nothing from the coordinator for" w-cut.out && pass "the agent says why" || fail "no lease message from the agent"

# The link comes back: the agent registers again; the restarted job is untouched.
ip netns exec "$NS" ip link set "$NS_IF" up
for i in $(seq 1 150); do "$B" workers 2>/dev/null | grep -q "w-cut .* up" && break; sleep 0.1; done
expect_exit 0 "workers" -- "$B" workers
expect_output "w-cut +up" "w-cut registered again after the link came back"
expect_exit 0 "status" -- "$B" status "$CJ"
expect_output "state      running" "the restarted job still runs"
expect_output "restarts   1" "and was not restarted again"
expect_exit 0 "cancel it" -- "$B" cancel "$CJ"
finish
