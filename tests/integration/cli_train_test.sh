#!/usr/bin/env bash
# End to end through the real binary: data prepare -> config check/show -> train -> Ctrl-C.
source "$(dirname "$0")/lib.sh"
cd "$WORK"

mkdir text
for i in 1 2 3 4 5 6 7 8 9 10; do
  for j in $(seq 1 30); do echo "Document $i line $j: the quick brown fox jumps over the lazy dog."; done > text/doc$i.txt
done
expect_exit 0 "data prepare (byte)" -- "$COHORT_BIN" data prepare --format text --input "$WORK/text/*.txt" \
  --tokenizer byte --output "$WORK/shards" --val-fraction 0.2
ls shards/train-*.bin shards/val-*.bin >/dev/null || fail "shards were not written"
expect_exit 0 "data inspect" -- "$COHORT_BIN" data inspect shards/train-00000.bin
expect_output "byte" "inspect shows the tokenizer"

cat > job.yaml <<YAML
name: it-tiny
model: {n_layer: 2, n_head: 2, n_embd: 32, context_length: 32}
data: {train: shards/train-*.bin, val: shards/val-*.bin, batch_size: 8, tokenizer: byte}
optimizer: {lr: 3.0e-3}
schedule: {warmup_steps: 5}
train: {steps: 40, eval_interval: 20, eval_batches: 2, log_interval: 10, threads: 1}
YAML
expect_exit 0 "config check" -- "$COHORT_BIN" config check job.yaml
expect_exit 0 "config show" -- "$COHORT_BIN" config show job.yaml
expect_output "train: \"$WORK/shards/train-\*.bin\"" "show resolves paths against the job file"
expect_output "beta2: 0.95" "show fills in defaults"

printf 'model:\n  n_layers: 2\n' > bad.yaml
expect_exit 2 "config check rejects an unknown key" -- "$COHORT_BIN" config check bad.yaml
expect_output "bad.yaml: model.n_layers: unknown key" "error names file and key"
expect_exit 2 "train rejects a bad override" -- "$COHORT_BIN" train job.yaml --set optimizer.lr=-1
expect_output "optimizer.lr: value -1 is out of range" "override error names the field"

expect_exit 0 "train" -- "$COHORT_BIN" train job.yaml --no-progress
expect_output "step +40/40 \| loss" "train logs every step line"
expect_output "val loss [0-9.]+ -> [0-9.]+" "train reports val loss before and after"
expect_output "\[r0\]" "log lines carry the rank"

# signal_mid_run SIGNAL LOG REGEX -- CMD...: runs CMD in the background with its output in LOG,
# sends SIGNAL once a line of LOG matches REGEX (or after 30 s), and leaves its exit status in
# $code and its output in $OUT.
signal_mid_run() {
  local sig=$1 log=$2 regex=$3 pid
  shift 4
  "$@" > "$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do grep -qE "$regex" "$log" && break; sleep 0.05; done
  kill "-$sig" "$pid"
  set +e; wait "$pid"; code=$?; set -e
  OUT=$(cat "$log")
}

# Ctrl-C: SIGINT mid-run stops cleanly with exit code 130 and a message, well before the end.
signal_mid_run INT run.log "step .*/100000 \| loss" -- \
  "$COHORT_BIN" train job.yaml --no-progress --set train.steps=100000 --set train.log_interval=1
[ "$code" = 130 ] && pass "SIGINT exits 130" || { fail "SIGINT exit code $code, want 130"; tail run.log >&2; }
expect_output "stopped by signal after [0-9]+ of 100000 steps" "SIGINT is reported"

# SIGTERM (e.g. from a scheduler) also stops cleanly; the exit code is 128 + 15.
signal_mid_run TERM term.log "step .*/100000 \| loss" -- \
  "$COHORT_BIN" train job.yaml --no-progress --set train.steps=100000
[ "$code" = 143 ] && pass "SIGTERM exits 143" || { fail "SIGTERM exit code $code, want 143"; tail term.log >&2; }

# Preemption: SIGTERM mid-run finishes the step, commits a checkpoint and exits 143; the same
# command then resumes from it and ends with weights bit-identical to an uninterrupted run (the
# parameter CRC32C in the --metrics summary).
expect_exit 0 "uninterrupted run with checkpoints" -- "$COHORT_BIN" train job.yaml --no-progress \
  --set train.steps=3000 --set train.eval_interval=1000 --set checkpoint.dir="$WORK/ck-ref" --set checkpoint.interval=500 --metrics ref.jsonl
ref_crc=$(grep -o '"param_crc32c": "[0-9a-f]*"' ref.jsonl)
signal_mid_run TERM pre.log "step +[0-9]{3,}/3000 \| loss" -- \
  "$COHORT_BIN" train job.yaml --no-progress --set train.steps=3000 --set train.eval_interval=1000 --set train.log_interval=1 \
  --set checkpoint.dir="$WORK/ck" --set checkpoint.interval=500
[ "$code" = 143 ] && pass "SIGTERM with checkpoints exits 143" || { fail "exit code $code, want 143"; tail pre.log >&2; }
expect_output "checkpoint: step [0-9]+ committed" "the stop commits a checkpoint"
stopped=$(grep -o "stopped by signal after [0-9]*" pre.log | grep -o "[0-9]*$")
expect_exit 0 "resume after SIGTERM" -- "$COHORT_BIN" train job.yaml --no-progress --set train.steps=3000 \
  --set train.eval_interval=1000 --set checkpoint.dir="$WORK/ck" --set checkpoint.interval=500 --metrics resumed.jsonl
expect_output "resumed from $WORK/ck/step-0*$stopped \(step $stopped," "resumes at the step it stopped after"
got_crc=$(grep -o '"param_crc32c": "[0-9a-f]*"' resumed.jsonl)
[ -n "$ref_crc" ] && [ "$got_crc" = "$ref_crc" ] && pass "resumed weights are bit-identical ($got_crc)" \
  || fail "resumed weights differ: $got_crc vs $ref_crc"
expect_exit 0 "ckpt list" -- "$COHORT_BIN" ckpt list "$WORK/ck"
expect_output "step-000003000 +complete +\(latest" "the final checkpoint is the latest"
expect_exit 0 "ckpt verify" -- "$COHORT_BIN" ckpt verify "$WORK/ck"
expect_output "OK: every file and tensor checksum matches" "verify passes"

# Bad data stops the run before training with an error naming the file: a flipped payload byte
# fails the checksum check; a token outside the vocabulary (with data.verify: header, so the
# checksum pass is skipped) is caught when its sample is read (validation reads sample 0 first),
# naming the byte offset.
cp -r shards bad
printf '\x7f' | dd of=bad/val-00000.bin bs=1 seek=101 conv=notrunc status=none
expect_exit 2 "train refuses a corrupt shard" -- "$COHORT_BIN" train job.yaml --no-progress \
  --set data.val="$WORK/bad/val-*.bin"
expect_output "data.val: .*bad/val-00000.bin: token payload checksum mismatch" "the error names the file"
expect_exit 2 "an out-of-vocabulary token stops training" -- "$COHORT_BIN" train job.yaml --no-progress \
  --set data.val="$WORK/bad/val-*.bin" --set data.verify=header
expect_output "bad/val-00000.bin: byte offset 100: token 32[0-9]+ >= vocab size 257" \
  "the error names the file and the offset"
expect_output "train data: [0-9]+ files? .*samples of 33 tokens" "the log describes the data"
expect_exit 0 "data verify passes good data" -- "$COHORT_BIN" data verify "$WORK/shards/*.bin" --seq-len 32
expect_output "^ok: [0-9]+ files .*every token < 257" "verify reports what it read"
expect_exit 2 "data verify finds the corrupt shard" -- "$COHORT_BIN" data verify "$WORK/bad/*.bin" --seq-len 32
expect_output "bad/val-00000.bin: token payload checksum mismatch" "verify names the corrupt file"

# On a terminal, a progress line is redrawn in place (\r + erase line) with a bar, the rate and an
# ETA. `script` runs the command on a real pseudo-terminal.
if command -v script >/dev/null; then
  script -qefc "'$COHORT_BIN' train job.yaml --set train.steps=30 --set train.log_interval=1000" tty.log >/dev/null 2>&1 || true
  if grep -q $'\r\033\[K\[=*>* *\] [0-9]*/30 loss [0-9.]* | [0-9.KM]* tok/s | eta' tty.log; then
    pass "progress line on a TTY"
  else
    fail "no progress line on a TTY:"; tail -c 600 tty.log | cat -v >&2
  fi
  expect_exit 0 "train off a TTY" -- "$COHORT_BIN" train job.yaml --set train.steps=30
  if grep -q $'\r' <<<"$OUT"; then fail "progress line drawn when stderr is not a TTY"; else pass "no progress line off a TTY"; fi
else
  fail "script(1) (bsdutils) is missing: cannot test the TTY progress line"
fi

expect_exit 2 "unknown flag is a usage error" -- "$COHORT_BIN" train job.yaml --no-such-flag
expect_exit 2 "missing job file is a usage error" -- "$COHORT_BIN" train nope.yaml
expect_output "nope.yaml" "missing file is named"

# A launcher environment that makes no sense is bad input naming the variable, never a hang.
expect_exit 2 "rank outside the world" -- env OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_RANK=2 "$COHORT_BIN" train job.yaml
expect_output "OMPI_COMM_WORLD_RANK=2 is not below the world size OMPI_COMM_WORLD_SIZE=2" "names the variables"
expect_exit 2 "RANK without WORLD_SIZE" -- env RANK=1 "$COHORT_BIN" train job.yaml
expect_output "needs both RANK and WORLD_SIZE" "names the missing variable"
expect_exit 2 "non-numeric world size" -- env SLURM_PROCID=0 SLURM_STEP_NUM_TASKS=two "$COHORT_BIN" train job.yaml
expect_output "SLURM_STEP_NUM_TASKS='two' is not an integer" "names the malformed variable"
# An sbatch script that runs cohort without srun is one process, and is told so.
expect_exit 0 "batch script without srun" -- env SLURM_JOB_ID=3 SLURM_PROCID=0 SLURM_NTASKS=4 "$COHORT_BIN" train job.yaml --set train.steps=2 --set schedule.warmup_steps=0
expect_output "SLURM_NTASKS=4 but this process was not started by srun" "warns that srun is missing"
expect_exit 2 "mpi backend without an MPI launcher" -- env RANK=0 WORLD_SIZE=2 "$COHORT_BIN" train job.yaml --set parallel.backend=mpi
expect_output "backend: mpi needs an MPI-aware launcher" "says which launcher MPI needs"
finish
