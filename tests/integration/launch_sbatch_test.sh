#!/usr/bin/env bash
# `cohort launch sbatch`: the generated script for default and custom options, shell and #SBATCH
# quoting, option and job-spec errors, -o/--force, and a tiny training job submitted with
# `sbatch --wait` to a real single-node Slurm cluster (scripts/slurm).
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/slurm_lib.sh"
cd "$WORK"
HERE=$(pwd -P)
EXE=$(readlink -f "$COHORT_BIN")

mkdir text
for i in 1 2 3 4 5; do
  for j in $(seq 1 30); do echo "Document $i line $j: the quick brown fox jumps over the lazy dog."; done > text/doc$i.txt
done
expect_exit 0 "data prepare" -- "$COHORT_BIN" data prepare --format text --input "$WORK/text/*.txt" \
  --tokenizer byte --output "$WORK/shards" --val-fraction 0.2
# A job with train.threads unset (0) and one with threads: 2, in a directory whose name needs quoting.
SPEC='model: {n_layer: 1, n_head: 2, n_embd: 16, context_length: 16}
data: {train: shards/train-*.bin, val: shards/val-*.bin, batch_size: 4, tokenizer: byte}
train: {steps: 20, eval_interval: 0, eval_batches: 1, log_interval: 1'
printf 'name: it-sbatch\n%s}\n' "$SPEC" > job.yaml
ODD="$HERE/dir with \"quotes\" it's"
mkdir -p "$ODD"
ln -s "$WORK/shards" "$ODD/shards"
printf 'name: odd\n%s, threads: 2}\n' "$SPEC" > "$ODD/job.yaml"

# --- Defaults, to stdout.
expect_exit 0 "defaults" -- "$COHORT_BIN" launch sbatch job.yaml
script=$OUT
expect_output '^#!/bin/bash' "starts with #!/bin/bash"
for line in '#SBATCH --job-name=it-sbatch' '#SBATCH --nodes=1' '#SBATCH --ntasks-per-node=1' \
    '#SBATCH --cpus-per-task=1' '#SBATCH --output=cohort-%j.out' '#SBATCH --signal=USR1@120' \
    'set -euo pipefail' 'export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}'; do
  grep -qxF -- "$line" <<<"$script" && pass "default: $line" || fail "default lacks '$line'"
done
grep -qE -- '--time|--partition|--account|--requeue' <<<"$script" && fail "default has optional lines" || pass "no optional #SBATCH lines by default"
grep -q 'SIGUSR1 and SIGTERM as stop requests' <<<"$script" && pass "documents the stop signals" || fail "no signal documentation"
want="exec srun --mpi=pmix --cpus-per-task=\"\${SLURM_CPUS_PER_TASK:-1}\" $EXE train $HERE/job.yaml --set \"train.threads=\${SLURM_CPUS_PER_TASK:-1}\""
grep -qxF -- "$want" <<<"$script" && pass "srun line with absolute paths" || { fail "srun line, want: $want"; echo "$script" | tail -3 >&2; }
# No command before the last #SBATCH line (sbatch stops reading them at the first command).
last_sbatch=$(grep -n '^#SBATCH' <<<"$script" | tail -1 | cut -d: -f1)
first_cmd=$(grep -nvE '^(#|$)' <<<"$script" | head -1 | cut -d: -f1)
[ "$last_sbatch" -lt "$first_cmd" ] && pass "#SBATCH lines precede the commands" || fail "#SBATCH after a command"
bash -n <<<"$script" && pass "default script parses" || fail "default script has bash syntax errors"

# --- Custom options; threads: 2 in the spec gives --cpus-per-task=2 and no threads override.
expect_exit 0 "custom options" -- "$COHORT_BIN" launch sbatch "$ODD/job.yaml" --nodes 2 --ntasks-per-node 4 \
  --time 2-00:00:00 --partition gpu --account "my acct" --job-name 'a "b" #c' --signal B:TERM@300 \
  --output 'logs/%x %j.out' --requeue --set train.steps=7 --set "data.val=it's/*.bin"
script=$OUT
for line in '#SBATCH --job-name="a \"b\" #c"' '#SBATCH --nodes=2' '#SBATCH --ntasks-per-node=4' \
    '#SBATCH --cpus-per-task=2' '#SBATCH --time=2-00:00:00' '#SBATCH --partition=gpu' \
    '#SBATCH --account="my acct"' '#SBATCH --output="logs/%x %j.out"' '#SBATCH --signal=B:TERM@300' \
    '#SBATCH --requeue' 'export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-2}'; do
  grep -qxF -- "$line" <<<"$script" && pass "custom: $line" || fail "custom lacks '$line'"
done
grep -q 'train.threads=' <<<"$script" && fail "threads overridden although the spec sets it" || pass "spec's threads kept"
expect_exit 0 "--cpus-per-task wins over threads" -- "$COHORT_BIN" launch sbatch "$ODD/job.yaml" --cpus-per-task 3 --signal none
expect_output '^#SBATCH --cpus-per-task=3$' "--cpus-per-task 3"
grep -q -- '^#SBATCH --signal' <<<"$OUT" && fail "--signal none still emits --signal" || pass "--signal none omits it"

# --- Shell quoting: run the script with a stub srun that prints its arguments one per line.
mkdir stub
printf '#!/bin/sh\nfor a in "$@"; do printf "<%%s>\\n" "$a"; done\n' > stub/srun
chmod +x stub/srun
printf '%s\n' "$script" > odd.sh
expect_exit 0 "script runs (stub srun)" -- env PATH="$WORK/stub:$PATH" SLURM_CPUS_PER_TASK=2 bash odd.sh
want="<--mpi=pmix>
<--cpus-per-task=2>
<$EXE>
<train>
<$ODD/job.yaml>
<--set>
<train.steps=7>
<--set>
<data.val=it's/*.bin>"
[ "$OUT" = "$want" ] && pass "arguments survive shell quoting (spaces, quotes, glob)" || { fail "srun got:"; echo "$OUT" >&2; }

# --- -o FILE: atomic write, no overwrite without --force, nothing on stdout.
expect_exit 0 "-o writes the script" -- "$COHORT_BIN" launch sbatch job.yaml -o job.sbatch
[ -x job.sbatch ] && grep -q '^exec srun' job.sbatch && pass "job.sbatch is complete and executable" || fail "job.sbatch missing or incomplete"
grep -q '^#!' <<<"$OUT" && fail "-o also printed the script" || pass "-o prints no script"
expect_exit 2 "-o refuses to overwrite" -- "$COHORT_BIN" launch sbatch job.yaml -o job.sbatch --nodes 3
expect_output "job.sbatch: exists; pass --force" "overwrite error names the file"
grep -q -- '--nodes=1' job.sbatch && pass "refused overwrite left the file alone" || fail "file changed"
expect_exit 0 "--force overwrites" -- "$COHORT_BIN" launch sbatch job.yaml -o job.sbatch --nodes 3 --force
grep -q -- '--nodes=3' job.sbatch && pass "file replaced" || fail "file not replaced"
ls -a | grep -q '\.tmp\.' && fail "temporary file left behind" || pass "no temporary files left"
expect_exit 2 "-o into a missing directory" -- "$COHORT_BIN" launch sbatch job.yaml -o nodir/x.sbatch
expect_output "nodir" "error names the directory"

# --- Bad options: exit 2 with a message naming the flag.
bad() {  # bad REGEX ARGS...: launch sbatch job.yaml ARGS fails with exit 2 and REGEX in the output
  local re=$1
  shift
  expect_exit 2 "rejects $*" -- "$COHORT_BIN" launch sbatch job.yaml "$@"
  expect_output "$re" "error for $*"
}
bad "--nodes: '0' is not an integer in \[1, " --nodes 0
bad "--nodes: 'two'" --nodes two
bad "--ntasks-per-node: '-1'" --ntasks-per-node -1
bad "--cpus-per-task: '1.5'" --cpus-per-task 1.5
bad "--time: '1:60' has minutes or seconds >= 60" --time 1:60
bad "--time: '1-24' has hours >= 24" --time 1-24
bad "--time: 'soon' is not a Slurm time" --time soon
bad "--time: '0' is zero" --time 0
bad "--signal: 'FOO@1' names no known signal" --signal FOO@1
bad "--signal: 'USR1@x'" --signal USR1@x
bad "--signal: USR1@120 fires 120 s before the limit, but --time 1 is only 60 s" --time 1
bad "--job-name: contains a control character" --job-name $'a\nb'
for t in 90 1:30:00 2-00:00:00 1-12 3-4:05 45:30 unlimited; do
  expect_exit 0 "accepts --time $t" -- "$COHORT_BIN" launch sbatch job.yaml --time "$t" --signal USR1@10
done

# --- Bad job specs: exit 2, the error names the file (and the key).
printf 'name: x\nmodel: {n_layers: 2}\ndata: {train: a.bin}\n' > bad.yaml
expect_exit 2 "bad job spec" -- "$COHORT_BIN" launch sbatch bad.yaml
expect_output "bad.yaml: model.n_layers: unknown key" "error names file and key"
expect_exit 2 "missing job spec" -- "$COHORT_BIN" launch sbatch nope.yaml
expect_output "nope.yaml" "missing file is named"
expect_exit 2 "bad override" -- "$COHORT_BIN" launch sbatch job.yaml --set optimizer.lr=-1
expect_output "optimizer.lr: value -1 is out of range" "override error names the field"
[ -e nope.sbatch ] && fail "wrote a script for a bad spec" || true

# --- A real cluster: the script runs a tiny training job to completion under sbatch --wait.
slurm_up
pass "cluster up in ${SLURM_START_S}s"
expect_exit 0 "generate the job script" -- "$COHORT_BIN" launch sbatch "$ODD/job.yaml" --set train.steps=3 \
  --output "$HERE/sb out-%j.log" --job-name 'tiny "job" #1' --time 10 -o "$HERE/tiny job.sbatch"
start=$SECONDS
expect_exit 0 "sbatch --wait" -- timeout 300 sbatch --wait "$HERE/tiny job.sbatch"
expect_output "Submitted batch job [0-9]+" "sbatch accepted the script ($((SECONDS - start))s)"
job_id=$(grep -oE 'Submitted batch job [0-9]+' <<<"$OUT" | grep -oE '[0-9]+$' || true)
log="$HERE/sb out-$job_id.log"
if [ -n "$job_id" ] && [ -f "$log" ]; then
  OUT=$(cat "$log")
  expect_output "done: 3 steps" "the job log has the training's done: line"
  expect_output "2 thread\(s\) per rank" "the run used the job's 2 threads"
else
  fail "no job log $log"; ls "$HERE" >&2
fi
expect_exit 0 "scontrol show job" -- scontrol show job "$job_id"
expect_output 'JobName=tiny "job" #1' "sbatch read the quoted job name"
expect_output "JobState=COMPLETED" "job completed"
expect_output "TimeLimit=00:10:00" "time limit applied"

# Two tasks: the script's srun --mpi=pmix starts 2 data-parallel ranks that find each other.
expect_exit 0 "generate a 2-task script" -- "$COHORT_BIN" launch sbatch "$ODD/job.yaml" --ntasks-per-node 2 \
  --cpus-per-task 1 --set train.steps=3 --set train.threads=1 --output "$HERE/dp-%j.log" -o "$HERE/dp.sbatch"
expect_exit 0 "sbatch --wait (2 tasks)" -- timeout 300 sbatch --wait "$HERE/dp.sbatch"
job_id=$(grep -oE 'Submitted batch job [0-9]+' <<<"$OUT" | grep -oE '[0-9]+$' || true)
if [ -n "$job_id" ] && [ -f "$HERE/dp-$job_id.log" ]; then
  OUT=$(cat "$HERE/dp-$job_id.log")
  expect_output "\[r0\] .*data parallel: 2 ranks over mpi" "2 ranks trained together over MPI"
  expect_output "done: 3 steps" "the 2-rank job finished"
else
  fail "no 2-task job log"
fi

# A run that fails (no such shards) fails the batch job, and sbatch --wait reports it.
printf 'name: nodata\nmodel: {n_layer: 1, n_head: 1, n_embd: 8, context_length: 8}\ndata: {train: none/*.bin}\ntrain: {steps: 2}\n' > nodata.yaml
expect_exit 0 "generate a failing job" -- "$COHORT_BIN" launch sbatch nodata.yaml -o nodata.sbatch --output "$HERE/nodata-%j.log"
set +e; timeout 300 sbatch --wait nodata.sbatch >/dev/null 2>&1; code=$?; set -e
[ "$code" != 0 ] && [ "$code" != 124 ] && pass "failed training fails sbatch --wait (exit $code)" || fail "failing job: sbatch --wait exit $code"
grep -q "none/\*.bin" "$HERE"/nodata-*.log && pass "the job log names the missing data" || { fail "job log:"; cat "$HERE"/nodata-*.log >&2 || true; }
finish
