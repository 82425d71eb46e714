#!/usr/bin/env bash
# Data-parallel training through the real binary under a real mpirun (issue 3's correctness
# criteria at the process level):
#  - N = 2 and 4 ranks with per-rank batch B follow the loss trajectory of 1 rank with batch N*B
#    (every step, tolerance 2e-5 relative: fp32 summation order differs) and end at the same
#    final validation loss and parameter norm, for DDP and ZeRO-1;
#  - the same run twice gives bit-identical weights (CRC32C of the parameters);
#  - a signal forwarded by mpirun (SIGUSR1, Slurm's pre-timeout warning) stops every rank after
#    the same step with exit code 128 + 10;
#  - a rank killed with SIGKILL mid-run fails the job promptly, and the failure names the rank.
# (The same equivalence with final weights compared element by element runs in-process in
# trainer_test's DataParallelTest.)
source "$(dirname "$0")/../integration/lib.sh"
: "${MPIRUN:?}"
cd "$WORK"

make_shards 12 40

cat > job.yaml <<YAML
name: mp-equivalence
model: {n_layer: 2, n_head: 2, n_embd: 48, context_length: 32}
data: {train: shards/train-*.bin, val: shards/val-*.bin, batch_size: 8, tokenizer: byte}
optimizer: {lr: 3.0e-3, grad_clip: 0.5}
schedule: {warmup_steps: 3}
train: {steps: 24, grad_accum: 2, eval_interval: 12, eval_batches: 2, log_interval: 6, threads: 1}
parallel: {timeout_s: 20}
YAML

mpi() { "$MPIRUN" --oversubscribe -np "$@"; }
# rank_pid MPIRUN_PID RANK: the PID of that rank among mpirun's children (by its environment).
rank_pid() {
  local child
  for child in $(ps --ppid "$1" -o pid=); do
    if tr '\0' '\n' < "/proc/$child/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2"; then echo "$child"; return; fi
  done
}

expect_exit 0 "1 rank, batch 8" -- "$COHORT_BIN" train job.yaml --no-progress --metrics m1.jsonl
for strategy in ddp zero1; do
  expect_exit 0 "2 ranks x batch 4 ($strategy)" -- mpi 2 "$COHORT_BIN" train job.yaml --no-progress \
    --set data.batch_size=4 --set parallel.strategy=$strategy --metrics m2-$strategy.jsonl
  expect_output "\[r0\] .*data parallel: 2 ranks over mpi, strategy $strategy" "rank 0 logs the data-parallel setup"
  if grep -q "\[r1\] .* I " <<<"$OUT"; then fail "rank 1 printed info lines (only rank 0 should)"; else pass "only rank 0 prints progress"; fi
  expect_exit 0 "4 ranks x batch 2 ($strategy)" -- mpi 4 "$COHORT_BIN" train job.yaml --no-progress \
    --set data.batch_size=2 --set parallel.strategy=$strategy --metrics m4-$strategy.jsonl
done

for f in m2-ddp m4-ddp m2-zero1 m4-zero1; do
  expect_exit 0 "$f matches 1 rank with the whole batch" -- same_trajectory m1.jsonl $f.jsonl 24
done
# ZeRO-1 keeps ~1/N of the optimizer state per rank.
expect_exit 0 "zero1 optimizer state is ~1/4 per rank at N=4" -- /usr/bin/python3 -c "
import json,sys
s = lambda p: [json.loads(l) for l in open(p)][-1]['optimizer_state_floats']
r = s('m4-zero1.jsonl') / s('m1.jsonl'); print(r); sys.exit(0 if abs(r - 0.25) < 0.01 else 1)"

# Determinism: the same world size and job give bit-identical weights.
expect_exit 0 "2 ranks again" -- mpi 2 "$COHORT_BIN" train job.yaml --no-progress --set data.batch_size=4 \
  --set parallel.strategy=ddp --metrics again.jsonl
crc() { grep -o '"param_crc32c": "[0-9a-f]*"' "$1"; }
if [ "$(crc again.jsonl)" = "$(crc m2-ddp.jsonl)" ]; then pass "rerun is bit-identical"; else fail "rerun differs: $(crc again.jsonl) vs $(crc m2-ddp.jsonl)"; fi

# Checkpoints across world sizes (issue 5): 4 ranks save every 8 steps; the newer checkpoints are
# removed and 2 ranks resume from step 8 (another strategy), then 3 ranks from step 16. Global batch
# 12 throughout; the three segments together must follow the 1-rank batch-12 trajectory.
expect_exit 0 "1 rank, batch 12" -- "$COHORT_BIN" train job.yaml --no-progress --set data.batch_size=12 \
  --set train.grad_accum=1 --metrics c1.jsonl
for pair in "ddp zero1 ddp" "zero1 ddp zero1"; do
  set -- $pair
  ck="$WORK/ck-$1"
  common=(--no-progress --set train.grad_accum=1 --set checkpoint.dir="$ck" --set checkpoint.interval=8)
  expect_exit 0 "4 ranks x 3 ($1), checkpoints every 8 steps" -- mpi 4 "$COHORT_BIN" train job.yaml "${common[@]}" \
    --set data.batch_size=3 --set parallel.strategy=$1 --metrics s1.jsonl
  rm -r "$ck/step-000000016" "$ck/step-000000024"
  expect_exit 0 "2 ranks x 6 ($2) resume from step 8" -- mpi 2 "$COHORT_BIN" train job.yaml "${common[@]}" \
    --set data.batch_size=6 --set parallel.strategy=$2 --metrics s2.jsonl
  expect_output "resumed from $ck/step-000000008 \(step 8, written by 4 rank\(s\) with $1" "2 ranks resume the 4-rank checkpoint"
  rm -r "$ck/step-000000024"
  expect_exit 0 "3 ranks x 4 ($3) resume from step 16" -- mpi 3 "$COHORT_BIN" train job.yaml "${common[@]}" \
    --set data.batch_size=4 --set parallel.strategy=$3 --metrics s3.jsonl
  expect_output "resumed from $ck/step-000000016 \(step 16, written by 2 rank\(s\) with $2" "3 ranks resume the 2-rank checkpoint"
  /usr/bin/python3 - s1.jsonl s2.jsonl s3.jsonl joined.jsonl <<'PY'
import json, sys
rows = []
for i, (path, lo, hi) in enumerate(zip(sys.argv[1:4], (1, 9, 17), (8, 16, 24))):
    for line in open(path):
        r = json.loads(line)
        if "step" in r and lo <= r["step"] <= hi: rows.append(r)
        if r.get("summary") and i == 2: summary = r
with open(sys.argv[4], "w") as f:
    for r in rows + [summary]: f.write(json.dumps(r) + "\n")
PY
  expect_exit 0 "4 -> 2 -> 3 ranks ($pair) follow 1 rank with the whole batch" -- same_trajectory c1.jsonl joined.jsonl 24
done

# SIGUSR1 to mpirun is forwarded to every rank: all stop after the same step, exit 138.
"$MPIRUN" --oversubscribe -np 2 "$COHORT_BIN" train job.yaml --no-progress --set data.batch_size=4 --set train.steps=100000 \
  --set train.log_interval=1 > usr1.log 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q "step .*3/100000 | loss" usr1.log && break; sleep 0.2; done
kill -USR1 "$pid"
code=0; wait "$pid" || code=$?
if [ "$code" = 138 ]; then pass "SIGUSR1: exit 138"; else fail "SIGUSR1: exit $code"; tail -5 usr1.log >&2; fi
stops=$( (grep -o "\[r[01]\] stopped by signal after [0-9]* of" usr1.log || true) | sed 's/.*after //' | sort -u | wc -l)
n_stop=$(grep -c "stopped by signal after" usr1.log || true)
if [ "$n_stop" = 2 ] && [ "$stops" = 1 ]; then pass "both ranks stopped after the same step"; else fail "ranks stopped apart:"; grep "stopped" usr1.log >&2; fi

# A rank that fails by itself (its data is missing): the job ends at once, not at the 20 s
# collective deadline, with that rank's error (MPMD launch: rank 1 gets another data path).
start=$(date +%s)
expect_exit 1 "rank 1 fails alone" -- "$MPIRUN" --oversubscribe -np 1 "$COHORT_BIN" train job.yaml --no-progress \
  --set data.batch_size=4 : -np 1 "$COHORT_BIN" train job.yaml --no-progress --set data.batch_size=4 \
  --set "data.train=$WORK/nowhere/*.bin"
elapsed=$(( $(date +%s) - start ))
expect_output "\[r1\] error: .*nowhere.*aborting the MPI job" "the failing rank's error names the missing data"
[ "$elapsed" -lt 15 ] && pass "the job ended in ${elapsed}s (deadline 20 s)" || fail "the job took ${elapsed}s to end"

# SIGKILL of rank 1 mid-run: the job fails within the timeout and the failure names the rank.
"$MPIRUN" --oversubscribe -np 3 "$COHORT_BIN" train job.yaml --no-progress --set data.batch_size=4 --set train.steps=100000 \
  --set train.log_interval=1 > kill.log 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q "step .*3/100000 | loss" kill.log && break; sleep 0.2; done
victim=$(rank_pid "$pid" 1)
if [ -z "$victim" ]; then fail "could not find rank 1 among mpirun's children"; kill -KILL "$pid"; fi
start=$(date +%s)
[ -n "$victim" ] && kill -KILL "$victim"
code=0; wait "$pid" || code=$?
elapsed=$(( $(date +%s) - start ))
if [ "$code" = 0 ]; then fail "kill -9 of rank 1: the job succeeded"
elif [ "$elapsed" -gt 25 ]; then fail "kill -9 of rank 1: the job took ${elapsed}s to fail"
elif ! grep -qiE "rank 1 .*(signal 9|killed)" kill.log; then fail "kill -9 of rank 1: the failure does not name rank 1:"; tail -8 kill.log >&2
else pass "kill -9 of rank 1: job failed in ${elapsed}s (exit $code), rank 1 named"; fi

# Interrupted run (issue 5): 2 ranks train 2,000 steps saving every 100; rank 1 is killed with
# SIGKILL at a random step after a checkpoint; the same command then resumes from the newest
# complete checkpoint and ends with weights bit-identical to an uninterrupted 2-rank run.
long=(--no-progress --set data.batch_size=4 --set train.grad_accum=1 --set train.steps=2000 --set train.eval_interval=1000
      --set train.log_interval=1 --set checkpoint.interval=100)
expect_exit 0 "2 ranks, 2,000 steps, uninterrupted" -- mpi 2 "$COHORT_BIN" train job.yaml "${long[@]}" \
  --set checkpoint.dir="$WORK/long-ref" --metrics long-ref.jsonl
kill_after=$(/usr/bin/python3 -c "import random; print(random.randint(150, 1500))")
"$MPIRUN" --oversubscribe -np 2 "$COHORT_BIN" train job.yaml "${long[@]}" --set checkpoint.dir="$WORK/long" > long.log 2>&1 &
pid=$!
for _ in $(seq 1 600); do grep -qE "step +$kill_after/2000 \| loss" long.log && break; sleep 0.05; done
victim=$(rank_pid "$pid" 1)
[ -n "$victim" ] && kill -KILL "$victim" || { fail "could not find rank 1"; kill -KILL "$pid"; }
code=0; wait "$pid" || code=$?
[ "$code" != 0 ] && pass "kill -9 of rank 1 near step $kill_after fails the job (exit $code)" || fail "the job survived the kill"
expect_exit 0 "the same command resumes" -- mpi 2 "$COHORT_BIN" train job.yaml "${long[@]}" \
  --set checkpoint.dir="$WORK/long" --metrics long.jsonl
expect_output "resumed from $WORK/long/step-0+[1-9][0-9]*00 " "it resumes from a checkpoint taken before the kill"
if [ "$(crc long.jsonl)" = "$(crc long-ref.jsonl)" ]; then pass "final weights bit-identical to the uninterrupted run ($(crc long.jsonl))"
else fail "final weights differ: $(crc long.jsonl) vs $(crc long-ref.jsonl)"; fi
finish
