#!/usr/bin/env bash
# A real single-node Slurm cluster (scripts/slurm): start/status/stop behave, `srun --mpi=pmix`
# starts MPI ranks (the collectives conformance suite on 2 and 3 ranks), and stop leaves none of
# the daemons it started. $COLLECTIVES_MPI_TEST comes from ctest.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/slurm_lib.sh"
: "${COLLECTIVES_MPI_TEST:?COLLECTIVES_MPI_TEST must point at the collectives_mpi_test binary}"
cd "$WORK"

slurm_up
pass "cluster up in ${SLURM_START_S}s ($COHORT_SLURM_DIR, port $COHORT_SLURM_PORT)"

expect_exit 0 "start again" -- "$SLURM_SCRIPT" start
expect_output "already running" "start detects the running cluster"
expect_exit 0 "status" -- "$SLURM_SCRIPT" status
expect_output "slurmd: running \(pid [0-9]+\)" "status lists the daemons"
expect_output "idle" "status shows the idle node"

# Every task gets its rank from PMIx / Slurm; 4 tasks fit although the machine may have 2 cores.
expect_exit 0 "srun -n 4" -- srun_mpi 4 bash -c 'echo "task $SLURM_PROCID pmix ${PMIX_RANK:-none}"'
if [ "$(grep -cE '^task ([0-3]) pmix \1$' <<<"$OUT")" = 4 ]; then pass "4 tasks, PMIX_RANK = SLURM_PROCID"
else fail "srun -n 4 ranks:"; echo "$OUT" >&2; fi

for n in 2 3; do
  start=$SECONDS
  expect_exit 0 "collectives conformance under srun --mpi=pmix -n $n" -- srun_mpi "$n" "$COLLECTIVES_MPI_TEST"
  expect_output "mpi conformance on $n ranks: [0-9]+ passed, 0 failed" "all checks pass on $n ranks ($((SECONDS - start))s)"
done

# Data-parallel training under srun: with PMIx the ranks use MPI and find each other through
# it; the 2-rank run with batch 4 matches the 1-rank run with batch 8 at every logged step.
make_shards 8 30
cat > job.yaml <<YAML
name: srun-dp
model: {n_layer: 2, n_head: 2, n_embd: 32, context_length: 32}
data: {train: $WORK/shards/train-*.bin, val: $WORK/shards/val-*.bin, batch_size: 8, tokenizer: byte}
schedule: {warmup_steps: 2}
train: {steps: 12, eval_interval: 0, eval_batches: 2, log_interval: 4, threads: 1}
parallel: {timeout_s: 30}
YAML
expect_exit 0 "train, 1 process" -- "$COHORT_BIN" train job.yaml --no-progress --metrics one.jsonl
expect_exit 0 "train under srun --mpi=pmix -n 2" -- srun_mpi 2 "$COHORT_BIN" train job.yaml --no-progress \
  --set data.batch_size=4 --metrics two.jsonl
expect_output "\[r0\] .*rank 0 of 2 \(local 0 of 2\) under srun: mpi backend" "ranks found through PMIx, MPI backend"
expect_exit 0 "srun -n 2 x batch 4 follows 1 x batch 8" -- same_trajectory one.jsonl two.jsonl 12

# Without PMIx (srun --mpi=none) MPI cannot find its peers: the ranks use Gloo, meeting through a
# file store keyed by the Slurm job id (all ranks on one node), with the same trajectory.
expect_exit 0 "train under srun --mpi=none -n 2" -- timeout "$SRUN_TIMEOUT" srun --mpi=none -n 2 \
  "$COHORT_BIN" train job.yaml --no-progress --set data.batch_size=4 --metrics gloo.jsonl
expect_output "\[r0\] .*rank 0 of 2 \(local 0 of 2\) under srun: gloo backend" "Slurm variables, Gloo backend"
same=$(/usr/bin/python3 -c "
import json
a = [json.loads(l) for l in open('two.jsonl')]
b = [json.loads(l) for l in open('gloo.jsonl')]
print(a[-1]['param_crc32c'] == b[-1]['param_crc32c'] and len(a) == len(b))")
[ "$same" = True ] && pass "srun + gloo ends bit-identical to srun + mpi" || fail "gloo and mpi runs under srun differ"

# stop: every recorded daemon is gone (zombies not yet reaped by init count as gone); a second
# stop and status are harmless.
pids=$(slurm_pids)
[ "$(wc -w <<<"$pids")" = 3 ] && pass "three PIDs recorded" || fail "recorded PIDs: '$pids'"
start=$SECONDS
expect_exit 0 "stop" -- "$SLURM_SCRIPT" stop
expect_output "stopped slurmd \([0-9]+\) slurmctld \([0-9]+\) munged \([0-9]+\)" "stop names what it stopped ($((SECONDS - start))s)"
alive=""
for p in $pids; do process_alive "$p" && alive+=" $p($(cat /proc/$p/comm 2>/dev/null))"; done
[ -z "$alive" ] && pass "no daemon of ours survives stop" || fail "still running after stop:$alive"
ls "$COHORT_SLURM_DIR"/run/*.pid >/dev/null 2>&1 && fail "PID files left after stop" || pass "PID files removed"
expect_exit 0 "stop when stopped" -- "$SLURM_SCRIPT" stop
expect_output "not running" "second stop is a no-op"
expect_exit 3 "status when stopped" -- "$SLURM_SCRIPT" status
finish
