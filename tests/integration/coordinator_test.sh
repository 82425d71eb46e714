#!/usr/bin/env bash
# The coordinator, two worker agents and the job CLI as real processes on loopback (issue 6):
#  - a generic command: job whose ranks check their torchrun-style environment;
#  - the restart budget: a job whose rank always fails runs exactly max_restarts + 1 times, then
#    FAILED with the rank's exit status and output;
#  - a 2-rank training job (Gloo through the coordinator's rendezvous store) that trains,
#    checkpoints and completes;
#  - kill -9 of the agent running a job: detected within the heartbeat timeout, the job resumes on
#    the other worker from its checkpoint and completes, with exactly one restart;
#  - kill -9 of the coordinator mid-job, and during a burst of submissions: the job table is the
#    same after the restart, every acknowledged job is there once, the running job re-attaches;
#  - cancel: every rank of the job is stopped;
#  - wrong and missing tokens, oversized, truncated and garbage frames: refused, nothing created,
#    other clients still served.
# Every process is started by this script and stopped by its PID.
source "$(dirname "$0")/lib.sh"
B=$COHORT_BIN
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

cd "$WORK"
head -c 32 /dev/urandom | base64 > user.token
head -c 32 /dev/urandom | base64 > worker.token
chmod 600 user.token worker.token
HB_TIMEOUT=4
cat > coordinator.yaml <<EOF
state_dir: $WORK/state
listen: 127.0.0.1:0
http: 127.0.0.1:0
user_token_file: user.token
worker_token_file: worker.token
heartbeat_timeout_s: $HB_TIMEOUT
reattach_grace_s: 10
restart_backoff_s: 1
EOF

COORD_PID=""
start_coordinator() {  # sets COORD_PID and (first time) PORT
  "$B" coordinator --config coordinator.yaml >> coord.out 2>> coord.err &
  COORD_PID=$!
  PIDS+=("$COORD_PID")
  local i
  for i in $(seq 1 100); do
    if grep -q "listening on" coord.out 2>/dev/null && [ "$(grep -c 'listening on' coord.out)" -ge "$1" ]; then break; fi
    sleep 0.1
  done
  PORT=$(grep 'listening on' coord.out | tail -1 | sed 's/.*:\([0-9]*\)$/\1/')
  HTTP_PORT=$(grep 'http on' coord.out | tail -1 | sed 's/.*:\([0-9]*\)$/\1/')
}
start_coordinator 1
[ -n "$PORT" ] || { cat coord.err >&2; echo "coordinator did not start"; exit 1; }
# Restarts listen on the same ports.
sed -i "s/^listen: .*/listen: 127.0.0.1:$PORT/; s/^http: .*/http: 127.0.0.1:$HTTP_PORT/" coordinator.yaml
export COHORT_COORDINATOR=127.0.0.1:$PORT COHORT_TOKEN_FILE=$WORK/user.token

declare -A WPID
start_worker() {  # NAME
  "$B" worker --slots 2 --name "$1" --token-file worker.token --work-dir "$WORK/$1" --stop-grace-s 5 >> "$1.out" 2>&1 &
  WPID[$1]=$!
  PIDS+=("$!")
}
start_worker w1
start_worker w2
for i in $(seq 1 50); do
  [ "$("$B" workers 2>/dev/null | grep -c ' up ')" = 2 ] && break
  sleep 0.1
done
expect_exit 0 "two workers registered" -- "$B" workers
expect_output "w1 +up +2" "w1 is up with 2 slots"
expect_output "w2 +up +2" "w2 is up with 2 slots"

job_id() { sed -n 's/^submitted job \([0-9]*\).*/\1/p' <<<"$OUT"; }

# ---- a generic command job checks its torchrun-style environment ----------------------------------
# The script is named relative to the job file's directory: the ranks run there.
cat > envcheck.sh <<'EOF'
echo "rank=$RANK world=$WORLD_SIZE local=$LOCAL_RANK/$LOCAL_WORLD_SIZE master=$MASTER_ADDR:$MASTER_PORT cwd=$(pwd)"
echo "rank $RANK fds: $(ls /proc/self/fd | tr '\n' ' ')"
[ "$WORLD_SIZE" = 3 ] && [ "$RANK" -ge 0 ] && [ "$RANK" -lt 3 ] && [ "$LOCAL_RANK" -lt "$LOCAL_WORLD_SIZE" ] &&
  [ "$MASTER_ADDR" = 127.0.0.1 ] && [ "$MASTER_PORT" -gt 0 ]
EOF
cat > envcheck.yaml <<'EOF'
name: envcheck
command: [/bin/sh, envcheck.sh]
launch:
  ranks: 3
EOF
expect_exit 0 "a command job with 3 ranks over two workers succeeds" -- "$B" submit envcheck.yaml --wait
ENVJOB=$(job_id)
expect_exit 0 "its logs" -- "$B" logs "$ENVJOB"
for r in 0 1 2; do expect_output "\\[rank $r\\] rank=$r world=3" "rank $r saw RANK=$r WORLD_SIZE=3"; done
expect_output "local=1/2" "two ranks share one worker (LOCAL_RANK 1 of 2)"
expect_output "cwd=$WORK\$" "the ranks ran in the job file's directory"
expect_output "rank 0 fds: 0 1 2 3 \$" "a rank inherits no descriptor of its agent's (ls sees only its own)"

# ---- GPUs: one per rank, by CUDA_VISIBLE_DEVICES ---------------------------------------------------
# gpunode has 3 slots and 3 GPUs, named by its own CUDA_VISIBLE_DEVICES (4,5,6); gpu2 has 2 slots
# but 1 GPU. A 3-rank job fits only gpunode; a 2-rank job goes to gpu2 (the first name of the
# 2-slot workers) and is refused there.
CUDA_VISIBLE_DEVICES=4,5,6 "$B" worker --slots 3 --gpus 3 --name gpunode --token-file worker.token \
  --work-dir "$WORK/gpunode" > gpunode.out 2>&1 &
GPU_WORKER=$!
PIDS+=("$GPU_WORKER")
"$B" worker --slots 2 --gpus 1 --name gpu2 --token-file worker.token --work-dir "$WORK/gpu2" > gpu2.out 2>&1 &
GPU2_WORKER=$!
PIDS+=("$GPU2_WORKER")
for i in $(seq 1 50); do [ "$("$B" workers 2>/dev/null | grep -cE '^gpu(node|2) .* up')" = 2 ] && break; sleep 0.1; done
cat > gpus.yaml <<'EOF'
name: gpus
command: 'echo "rank $RANK local $LOCAL_RANK sees [${CUDA_VISIBLE_DEVICES-unset}]"'
launch: {ranks: 3, max_restarts: 0}
EOF
expect_exit 0 "a 3-rank job on the 3-GPU node succeeds" -- "$B" submit gpus.yaml --wait
GJ=$(job_id)
expect_exit 0 "its logs" -- "$B" logs "$GJ"
expect_output "on gpunode:0-2" "the job was packed onto the one node that holds it"
for r in 0 1 2; do
  expect_output "rank $r local $r sees \\[4,5,6\\]" "rank $r sees the launch's GPUs, named as the agent's own, LOCAL_RANK $r picks its own"
done
expect_exit 1 "a 2-rank job on the 1-GPU node is refused" -- "$B" submit gpus.yaml --set launch.ranks=2 --set name=gpus2 --wait
expect_exit 0 "status" -- "$B" status "$(job_id)"
expect_output "has 1 free GPU\\(s\\) for 2 rank\\(s\\)" "the refusal names the shortfall"
kill "$GPU_WORKER" "$GPU2_WORKER"
wait "$GPU_WORKER" "$GPU2_WORKER" 2>/dev/null || true

# ---- the restart budget ---------------------------------------------------------------------------
cat > flaky.yaml <<'EOF'
name: flaky
command: 'echo "attempt of rank $RANK failing"; exit 3'
launch:
  ranks: 1
  max_restarts: 2
EOF
expect_exit 1 "a job whose rank always exits 3 fails" -- "$B" submit flaky.yaml --wait
FLAKY=$(job_id)
expect_output "failed: rank 0 exited with status 3" "the failure names the rank and its status"
expect_exit 0 "status of the failed job" -- "$B" status "$FLAKY"
expect_output "restarts   2" "restarted exactly twice"
[ "$(grep -c '^  attempt' <<<"$OUT")" = 3 ] && pass "exactly 3 launches" || fail "launches: $(grep -c '^  attempt' <<<"$OUT"), want 3"
expect_output "attempt of rank 0 failing" "the rank's last output is shown"

# ---- a 2-rank training job ------------------------------------------------------------------------
make_shards 4 400
train_job() {  # NAME STEPS CKPT_INTERVAL
  cat > "$1.yaml" <<EOF
name: $1
launch: {ranks: 2, max_restarts: 2}
model: {n_layer: 2, n_head: 2, n_embd: 32, context_length: 32}
data: {train: shards/train-*.bin, batch_size: 4, tokenizer: byte}
train: {steps: $2, eval_interval: 0, eval_batches: 2, log_interval: 100, threads: 1}
checkpoint: {dir: ckpt-$1, interval: $3}
EOF
}
train_job small 60 20
expect_exit 0 "a 2-rank training job trains, checkpoints and completes" -- "$B" submit small.yaml --wait
SMALL=$(job_id)
[ -d "ckpt-small/step-000000060" ] && pass "its final checkpoint is committed" || fail "no ckpt-small/step-000000060"
expect_exit 0 "its logs" -- "$B" logs "$SMALL" --rank 0
expect_output "data parallel: 2 ranks over gloo" "the ranks formed a 2-rank Gloo group"

# ---- kill -9 the agent running a job --------------------------------------------------------------
train_job agentkill 5000 200
expect_exit 0 "submit a long job" -- "$B" submit agentkill.yaml
AK=$(job_id)
for i in $(seq 1 100); do
  [ -d ckpt-agentkill/step-000000200 ] && break
  sleep 0.1
done
# While it trains: the HTTP endpoint's metrics and JSON API.
sleep 1.5  # a heartbeat carries the trainer's progress
python3 - "$HTTP_PORT" "$AK" > http.out 2>&1 <<'PY' && pass "HTTP: /metrics and the JSON API describe the running job" || { fail "HTTP endpoint:"; cat http.out >&2; }
import json, re, sys, urllib.request, urllib.error
port, job = sys.argv[1], sys.argv[2]
base = "http://127.0.0.1:%s" % port
metrics = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
def value(name, labels=""):
    m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape(labels)), metrics, re.M)
    assert m, "no %s%s in /metrics:\n%s" % (name, labels, metrics)
    return float(m.group(1))
assert value("cohort_workers_up") == 2
assert value("cohort_jobs_running") >= 1
assert value("cohort_slots", '{kind="total"}') == 4
lab = '{job="%s",name="agentkill"}' % job
assert value("cohort_job_step", lab) >= 200, "step"
assert 0 < value("cohort_job_loss", lab) < 10
assert value("cohort_job_tokens_per_second", lab) > 0
assert 0 <= value("cohort_job_data_wait_ratio", lab) <= 1
assert value("cohort_job_checkpoints_total", lab) >= 1
assert value("cohort_job_restarts", lab) == 0
jobs = json.load(urllib.request.urlopen(base + "/api/jobs", timeout=10))
mine = [j for j in jobs if str(j["id"]) == job][0]
assert mine["state"] == "running" and mine["ranks"] == 2 and mine["progress"]["step"] >= 200, mine
one = json.load(urllib.request.urlopen(base + "/api/jobs/" + job, timeout=10))
assert len(one["attempts"]) == 1 and one["attempts"][0]["placements"][0]["count"] == 2, one
workers = json.load(urllib.request.urlopen(base + "/api/workers", timeout=10))
assert sorted(w["name"] for w in workers if w["up"]) == ["w1", "w2"], workers
for path, code in (("/api/jobs/999999", 404), ("/nope", 404), ("/api/jobs/x", 400)):
    try:
        urllib.request.urlopen(base + path, timeout=10)
        raise AssertionError(path + " answered 200")
    except urllib.error.HTTPError as e:
        assert e.code == code, (path, e.code)
print("http ok")
PY
"$B" status "$AK" > st.txt
VICTIM=$(grep -o 'on w[12]' st.txt | head -1 | cut -c4-)
OTHER=$([ "$VICTIM" = w1 ] && echo w2 || echo w1)
RANK_PIDS=$(pgrep -f "$WORK/$VICTIM/$AK/epoch" || true)
[ -n "$RANK_PIDS" ] && pass "the job's ranks run on $VICTIM" || fail "no rank of job $AK found on $VICTIM"
KILLED_AT=$(date +%s.%N)
kill -9 "${WPID[$VICTIM]}"
expect_exit 0 "after kill -9 of $VICTIM's agent the job completes" -- "$B" status "$AK" --wait
expect_exit 0 "status" -- "$B" status "$AK"
expect_output "restarts   1" "exactly one restart"
expect_output "attempt 2 .* on $OTHER ranks 0-1" "the second attempt ran on $OTHER"
ENDED=$(python3 - "$WORK/state/state.db" "$AK" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(db.execute("SELECT ended_ms FROM attempts WHERE job_id=? ORDER BY epoch LIMIT 1", (int(sys.argv[2]),)).fetchone()[0] / 1000)
PY
)
python3 -c "import sys; d=$ENDED-$KILLED_AT; print('detected after %.1f s' % d); sys.exit(0 if d <= $HB_TIMEOUT + 1.5 else 1)" \
  && pass "the lost worker was detected within the heartbeat timeout" || fail "detection took too long"
expect_exit 0 "its logs" -- "$B" logs "$AK" --rank 0
expect_output "resumed from .*ckpt-agentkill/step-" "the second attempt resumed from a checkpoint"
LEFT=0
for p in $RANK_PIDS; do kill -0 "$p" 2>/dev/null && LEFT=$((LEFT + 1)); done
[ "$LEFT" = 0 ] && pass "no rank of the killed agent is left running" || fail "$LEFT ranks of the killed agent still run"
start_worker "$VICTIM"

# ---- kill -9 the coordinator mid-job --------------------------------------------------------------
train_job coordkill 3000 500
expect_exit 0 "submit a job" -- "$B" submit coordkill.yaml
CK=$(job_id)
# Killed once training runs (its first checkpoint is there), not during the ranks' rendezvous.
for i in $(seq 1 200); do
  [ -d ckpt-coordkill/step-000000500 ] && break
  sleep 0.1
done
"$B" jobs > jobs.before
kill -9 "$COORD_PID"
sleep 1
start_coordinator 2
"$B" jobs > jobs.after
diff jobs.before jobs.after > /dev/null && pass "the job table is the same after kill -9 and a restart" \
  || { fail "job tables differ:"; diff jobs.before jobs.after >&2 || true; }
expect_exit 0 "the running job completes after the coordinator's restart" -- "$B" status "$CK" --wait
expect_exit 0 "status" -- "$B" status "$CK"
expect_output "restarts   0" "its ranks were re-attached, not restarted"
grep -q "job $CK attempt (epoch [0-9]*) re-attached" coord.err && pass "the coordinator says it re-attached" \
  || fail "no re-attach message"

# ---- kill -9 the coordinator during a burst of submissions ----------------------------------------
cat > noop.yaml <<'EOF'
name: noop
command: 'true'
EOF
( for i in $(seq 1 40); do "$B" submit noop.yaml --set "name=burst-$i" 2>/dev/null || true; done ) > burst.out &
BURST=$!
sleep 0.$((RANDOM % 5 + 3))
kill -9 "$COORD_PID"
wait "$BURST" || true
start_coordinator 3
for i in $(seq 1 50); do
  [ "$("$B" workers 2>/dev/null | grep -c ' up ')" = 2 ] && break
  sleep 0.1
done
ACKED=$(grep -c '^submitted job' burst.out || true)
"$B" jobs > jobs.burst
MISSING=0
while read -r id name; do
  grep -Eq "^$id +$name " jobs.burst || { MISSING=$((MISSING + 1)); echo "missing: job $id $name" >&2; }
done < <(sed -n 's/^submitted job \([0-9]*\) (\([^,]*\),.*/\1 \2/p' burst.out)
[ "$ACKED" -gt 0 ] && [ "$MISSING" = 0 ] && pass "all $ACKED acknowledged submissions survived the kill" \
  || fail "$MISSING of $ACKED acknowledged jobs are missing"
DUPS=$(grep -o 'burst-[0-9]*' jobs.burst | sort | uniq -d | wc -l)
[ "$DUPS" = 0 ] && pass "no job was recorded twice" || fail "$DUPS jobs recorded twice"

# ---- ranks that finished survive a coordinator restart -------------------------------------------
cat > halfdone.yaml <<'EOF'
name: halfdone
command: 'if [ "$RANK" = 1 ]; then echo done early; else sleep 6; echo done late; fi'
launch: {ranks: 2, max_restarts: 0}
EOF
expect_exit 0 "submit a job whose rank 1 ends at once" -- "$B" submit halfdone.yaml
HD=$(job_id)
for i in $(seq 1 100); do
  grep -q "job $HD rank 1 finished" coord.err && break
  sleep 0.1
done
kill -9 "$COORD_PID"
start_coordinator 4
expect_exit 0 "after a restart between its ranks' exits, the job succeeds" -- "$B" status "$HD" --wait
expect_exit 0 "status" -- "$B" status "$HD"
expect_output "restarts   0" "without a restart: rank 1's exit was durable"

# ---- an agent killed and restarted at once: its ranks are gone, the coordinator notices -----------
cat > orphan.yaml <<'EOF'
name: orphan
command: 'sleep 301 & wait'
launch: {ranks: 1, max_restarts: 1}
EOF
expect_exit 0 "submit a job whose rank starts a child" -- "$B" submit orphan.yaml
OR=$(job_id)
for i in $(seq 1 100); do
  [ "$(pgrep -fc '^sleep 301' || true)" -ge 1 ] && break
  sleep 0.1
done
"$B" status "$OR" > st.txt
HOST=$(grep -o 'on w[12]' st.txt | head -1 | cut -c4-)
kill -9 "${WPID[$HOST]}"
sleep 0.5
# PR_SET_PDEATHSIG kills the rank (the shell), not what it started: the next agent must.
[ "$(pgrep -fc '^sleep 301' || true)" = 1 ] && pass "the rank's child outlived the killed agent, as expected" \
  || fail "the rank's child did not outlive the agent: the check below would prove nothing"
start_worker "$HOST"
for i in $(seq 1 100); do
  "$B" status "$OR" | grep -q "no longer running on worker $HOST" && break
  sleep 0.1
done
expect_exit 0 "status" -- "$B" status "$OR"
expect_output "no longer running on worker $HOST" "the restarted agent's missing rank failed the attempt within seconds"
for i in $(seq 1 50); do
  "$B" status "$OR" | grep -q "restarts   1" && break
  sleep 0.1
done
expect_exit 0 "status" -- "$B" status "$OR"
expect_output "restarts   1" "and the job was restarted (after its backoff)"
# The first attempt's orphan was killed by the new agent; only the second attempt's remains.
for i in $(seq 1 50); do
  [ "$(pgrep -fc '^sleep 301' || true)" -le 1 ] && break
  sleep 0.1
done
[ "$(pgrep -fc '^sleep 301' || true)" -le 1 ] && pass "the restarted agent killed what the old ranks had left running" \
  || fail "$(pgrep -fc '^sleep 301') copies of the rank's child run"
expect_exit 0 "cancel it" -- "$B" cancel "$OR"

# ---- a partitioned agent that comes back: its stale attempt is fenced off ------------------------
# SIGSTOP freezes the agent (no heartbeats, nothing read): to the coordinator it is cut off. The
# job is restarted on the other worker; when the agent resumes, it registers again listing ranks of
# the old epoch, and is told to stop them.
cat > fence.yaml <<'EOF'
name: fence
command: 'exec sleep 303'
launch: {ranks: 1, max_restarts: 1}
EOF
expect_exit 0 "submit a job" -- "$B" submit fence.yaml
FE=$(job_id)
for i in $(seq 1 100); do
  [ "$(pgrep -fc '^sleep 303' || true)" = 1 ] && break
  sleep 0.1
done
"$B" status "$FE" > st.txt
FROZEN=$(grep -o 'on w[12]' st.txt | head -1 | cut -c4-)
OLD_RANK=$(pgrep -f '^sleep 303')
kill -STOP "${WPID[$FROZEN]}"
for i in $(seq 1 100); do
  "$B" status "$FE" | grep -q "attempt 2 .*running" && break
  sleep 0.1
done
expect_exit 0 "status" -- "$B" status "$FE"
expect_output "attempt 1 .*worker $FROZEN lost" "the frozen worker's attempt failed"
expect_output "attempt 2 .* running on" "and the job runs again elsewhere"
kill -CONT "${WPID[$FROZEN]}"
for i in $(seq 1 100); do
  kill -0 "$OLD_RANK" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$OLD_RANK" 2>/dev/null && fail "the stale rank still runs after its agent came back" \
  || pass "the agent that came back was told to stop the stale attempt's rank"
grep -q "runs ranks of job $FE epoch [0-9]*, which is not a running attempt: stopping them" coord.err \
  && pass "the coordinator fenced the stale epoch off" || fail "no fencing message"
expect_exit 0 "status" -- "$B" status "$FE"
expect_output "state      running" "the restarted attempt is unaffected"
expect_exit 0 "cancel it" -- "$B" cancel "$FE"

# ---- cancel ---------------------------------------------------------------------------------------
cat > sleeper.yaml <<'EOF'
name: sleeper
command: 'sleep 300 & wait'
launch: {ranks: 4}
EOF
expect_exit 0 "submit a 4-rank job" -- "$B" submit sleeper.yaml
SL=$(job_id)
for i in $(seq 1 100); do
  [ "$(pgrep -fc 'sleep 300' || true)" -ge 4 ] && break
  sleep 0.1
done
expect_exit 0 "cancel it" -- "$B" cancel "$SL"
for i in $(seq 1 100); do
  [ "$(pgrep -fc 'sleep 300' || true)" = 0 ] && break
  sleep 0.1
done
[ "$(pgrep -fc 'sleep 300' || true)" = 0 ] && pass "every rank (and its children) stopped on both nodes" \
  || fail "ranks of the cancelled job still run"
expect_exit 0 "status" -- "$B" status "$SL"
expect_output "state      cancelled" "the job is cancelled"

# ---- refused clients ------------------------------------------------------------------------------
head -c 32 /dev/urandom | base64 > wrong.token
chmod 600 wrong.token
expect_exit 2 "a wrong token is refused" -- "$B" jobs --token-file wrong.token
expect_output "authentication failed for the user role" "the refusal says why"
expect_exit 2 "the worker token does not work for users" -- "$B" jobs --token-file worker.token
: > empty.token
expect_exit 2 "an empty token file is refused before connecting" -- "$B" jobs --token-file empty.token
expect_exit 2 "a user token does not register a worker" -- timeout 5 "$B" worker --slots 1 --name intruder --token-file user.token
BEFORE=$("$B" jobs | wc -l)
python3 - "$PORT" <<'PY' > frames.out
import socket, struct, sys, time
port = int(sys.argv[1])
def conn():
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s
def closed(s):
    try:
        s.settimeout(10)
        while True:
            d = s.recv(4096)
            if not d:
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
results = {}
s = conn(); s.sendall(struct.pack("<I", 1 << 30)); results["oversized"] = closed(s)
s = conn(); s.sendall(b"\xde\xad\xbe\xef" * 64); results["garbage"] = closed(s)
s = conn(); s.sendall(struct.pack("<I", 100) + b"\x12\x05"); s.shutdown(socket.SHUT_WR); results["truncated"] = closed(s)
s = conn(); s.sendall(struct.pack("<I", 4) + b"\xff\xff\xff\xff"); results["unparsable"] = closed(s)
# A submit without a hello: refused and closed.
s = conn(); s.sendall(struct.pack("<I", 6) + b"\x52\x04\x0a\x02\x78\x78"); results["no hello"] = closed(s)
s = conn(); results["silent"] = closed(s)  # no hello within the handshake timeout (5 s)
for k, v in results.items():
    print(k, "closed" if v else "OPEN")
PY
for k in oversized garbage truncated unparsable "no hello" silent; do
  grep -q "^$k closed" frames.out && pass "a $k connection is closed" || fail "a $k connection stayed open"
done
AFTER=$("$B" jobs | wc -l)
[ "$BEFORE" = "$AFTER" ] && pass "nothing was created by refused clients, and others are still served" \
  || fail "job count changed from $BEFORE to $AFTER lines"
grep -q "the peer announced a frame of 1073741824 bytes" coord.err && pass "the oversized frame is named in the log" \
  || fail "no log line for the oversized frame"

finish
