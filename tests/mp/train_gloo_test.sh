#!/usr/bin/env bash
# Data-parallel training over the Gloo backend, ranks started torchrun-style (RANK / WORLD_SIZE /
# MASTER_ADDR / MASTER_PORT; no MPI), each a background process waited for by PID:
#  - 2 ranks x batch 4 follow 1 rank x batch 8 at every step and end with the same weights as
#    the same run over MPI would (bit-identical: both backends sum in rank order);
#  - a rank killed with SIGKILL mid-run: the survivor exits on its own (no launcher kills it)
#    with an error naming the failed collective and rank, well within parallel.timeout_s;
#  - a stalled rank (SIGSTOP): the survivor gives up at the collective deadline.
source "$(dirname "$0")/../integration/lib.sh"
cd "$WORK"

make_shards 10 40
cat > job.yaml <<YAML
name: gloo-dp
model: {n_layer: 2, n_head: 2, n_embd: 48, context_length: 32}
data: {train: shards/train-*.bin, val: shards/val-*.bin, batch_size: 8, tokenizer: byte}
optimizer: {lr: 3.0e-3, grad_clip: 0.5}
schedule: {warmup_steps: 3}
train: {steps: 16, grad_accum: 2, eval_interval: 8, eval_batches: 2, log_interval: 4, threads: 1}
parallel: {timeout_s: 10}
YAML
# A port for rank 0's rendezvous store, below the ephemeral range (32768+): a port the kernel
# handed out as "free" could be given to any other process's outgoing connection before rank 0
# binds it (seen once under a parallel ctest run).
free_port() {
  /usr/bin/python3 -c '
import random, socket
for _ in range(200):
    p = random.randint(30000, 32700)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
    finally:
        s.close()'
}

# start_ranks N PORT ARGS...: starts N ranks in the background; PIDS holds them in rank order.
start_ranks() {
  local n=$1 port=$2 r; shift 2
  PIDS=()
  for r in $(seq 0 $((n - 1))); do
    RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r LOCAL_WORLD_SIZE=$n MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      "$COHORT_BIN" train job.yaml --no-progress "$@" > "rank$r.log" 2>&1 &
    PIDS+=($!)
  done
}
wait_all() { CODES=(); local p c; for p in "${PIDS[@]}"; do c=0; wait "$p" || c=$?; CODES+=("$c"); done; }

expect_exit 0 "1 rank, batch 8" -- "$COHORT_BIN" train job.yaml --no-progress --metrics one.jsonl
for strategy in ddp zero1; do
  start_ranks 2 "$(free_port)" --set data.batch_size=4 --set parallel.strategy=$strategy --metrics two-$strategy.jsonl
  wait_all
  if [ "${CODES[*]}" = "0 0" ]; then pass "2 gloo ranks ($strategy) trained"; else fail "2 gloo ranks ($strategy): exit codes ${CODES[*]}"; tail -5 rank0.log rank1.log >&2; fi
  grep -q "data parallel: 2 ranks over gloo, strategy $strategy" rank0.log && pass "rank 0 reports the gloo backend" || fail "no gloo setup line"
  expect_exit 0 "gloo 2 x batch 4 ($strategy) follows 1 x batch 8" -- same_trajectory one.jsonl two-$strategy.jsonl 16
done
if [ -n "${MPIRUN:-}" ]; then
  expect_exit 0 "the same run over MPI" -- "$MPIRUN" --oversubscribe -np 2 "$COHORT_BIN" train job.yaml --no-progress \
    --set data.batch_size=4 --metrics mpi.jsonl
  crc() { grep -o '"param_crc32c": "[0-9a-f]*"' "$1"; }
  [ "$(crc mpi.jsonl)" = "$(crc two-ddp.jsonl)" ] && pass "gloo and MPI end with bit-identical weights" \
    || fail "gloo $(crc two-ddp.jsonl) vs mpi $(crc mpi.jsonl)"
fi

# SIGKILL of rank 1 mid-run: rank 0 must exit by itself with a clear error.
start_ranks 2 "$(free_port)" --set data.batch_size=4 --set train.steps=100000 --set train.log_interval=1
for _ in $(seq 1 150); do grep -q "step .*3/100000 | loss" rank0.log && break; sleep 0.2; done
# Unbound ranks pin themselves to their share of the cores (launch/bootstrap.h BindToLocalShare).
cores=$(nproc)
if [ "$cores" -ge 2 ]; then
  share=$((cores / 2))
  want0="0"; [ "$share" -gt 1 ] && want0="0-$((share - 1))"
  got0=$(awk '/Cpus_allowed_list/ {print $2}' /proc/${PIDS[0]}/status)
  [ "$got0" = "$want0" ] && pass "rank 0 bound to cores $got0 of $cores" || fail "rank 0 allowed cores '$got0', want '$want0'"
  grep -q "bound to core" rank0.log && pass "binding is logged" || fail "binding not logged"
fi
start=$(date +%s.%N)
kill -KILL "${PIDS[1]}"
wait_all
elapsed=$(/usr/bin/python3 -c "import time; print(round(time.time() - $start, 1))")
if [ "${CODES[0]}" = 1 ] && grep -qE "UNAVAILABLE: .*rank 1" rank0.log; then
  pass "kill -9 rank 1: rank 0 failed by itself in ${elapsed}s naming rank 1: $(grep -oE 'UNAVAILABLE: .{0,110}' rank0.log | head -1)"
else
  fail "kill -9 rank 1: rank 0 exit ${CODES[0]} after ${elapsed}s:"; tail -4 rank0.log >&2
fi
/usr/bin/python3 -c "import sys; sys.exit(0 if $elapsed < 10 else 1)" && pass "within the 10 s timeout" || fail "took ${elapsed}s"

# Rank 1 fails by itself (missing data): rank 0 is released at once, not at the deadline.
port=$(free_port)
RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "$COHORT_BIN" train job.yaml --no-progress \
  --set data.batch_size=4 > rank0.log 2>&1 &
p0=$!
start=$(date +%s)
RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "$COHORT_BIN" train job.yaml --no-progress \
  --set data.batch_size=4 --set "data.train=$WORK/nowhere/*.bin" > rank1.log 2>&1 &
p1=$!
c0=0; wait "$p0" || c0=$?
c1=0; wait "$p1" || c1=$?
elapsed=$(( $(date +%s) - start ))
if [ "$c1" = 2 ] && grep -q "nowhere" rank1.log; then pass "rank 1 reports its missing data (exit 2)"; else fail "rank 1: exit $c1"; tail -3 rank1.log >&2; fi
if [ "$c0" = 1 ] && grep -q "UNAVAILABLE" rank0.log && [ "$elapsed" -lt 8 ]; then
  pass "rank 0 released in ${elapsed}s (deadline 10 s): $(grep -oE 'UNAVAILABLE: .{0,90}' rank0.log | head -1)"
else
  fail "rank 0: exit $c0 after ${elapsed}s"; tail -3 rank0.log >&2
fi

# SIGSTOP of rank 1: rank 0 gives up at the 10 s collective deadline.
start_ranks 2 "$(free_port)" --set data.batch_size=4 --set train.steps=100000 --set train.log_interval=1
for _ in $(seq 1 150); do grep -q "step .*3/100000 | loss" rank0.log && break; sleep 0.2; done
start=$(date +%s)
kill -STOP "${PIDS[1]}"
c=0; wait "${PIDS[0]}" || c=$?
elapsed=$(( $(date +%s) - start ))
kill -KILL "${PIDS[1]}"; wait "${PIDS[1]}" 2>/dev/null || true
if [ "$c" = 1 ] && grep -q "DEADLINE_EXCEEDED" rank0.log && [ "$elapsed" -le 25 ]; then
  pass "stalled rank 1: rank 0 hit the deadline in ${elapsed}s"
else
  fail "stalled rank 1: rank 0 exit $c after ${elapsed}s:"; tail -4 rank0.log >&2
fi
finish
