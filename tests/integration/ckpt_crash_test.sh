#!/usr/bin/env bash
# Checkpoints against real crashes (issue 5's failure tests; ../shared/RELIABILITY.md), through
# the real binary:
#  - a SIGKILL at each phase of a save (COHORT_CRASH_AT=PHASE:STEP): the next run resumes from a
#    complete checkpoint (the one before the interrupted save, or the interrupted one once its
#    manifest is committed) and ends bit-identical to an uninterrupted run;
#  - >= 200 kill -9 at random moments of runs that save every step: after each, the checkpoint a
#    resume would load verifies completely; the count of bad loads is printed and must be 0;
#  - a full disk (a small tmpfs as the checkpoint root): a clear error naming the file, the earlier
#    checkpoints intact, no partial files left.
# KILLS (default 200) sets the number of random kills.
source "$(dirname "$0")/lib.sh"
cd "$WORK"
make_shards 8 30

cat > job.yaml <<YAML
name: crash
model: {n_layer: 2, n_head: 2, n_embd: 32, context_length: 32}
data: {train: shards/train-*.bin, batch_size: 4, tokenizer: byte}
schedule: {warmup_steps: 2, decay: constant}
train: {steps: 30, eval_interval: 0, log_interval: 1000, threads: 1}
checkpoint: {interval: 5, keep_last: 1}
YAML
crc() { grep -o '"param_crc32c": "[0-9a-f]*"' "$1"; }

expect_exit 0 "uninterrupted reference run" -- "$COHORT_BIN" train job.yaml --no-progress \
  --set checkpoint.dir="$WORK/ref" --metrics ref.jsonl
ref=$(crc ref.jsonl)

# ---- a kill at each phase of the save of step 10 ----
# Step 5 is committed first by a run that ends there (the schedule does not depend on train.steps,
# so the runs stay on the reference trajectory); the run resuming from it is killed at the phase.
for phase in shard-tmp shard-final manifest-tmp manifest latest retention; do
  root="$WORK/ph-$phase"
  expect_exit 0 "a run to step 5 ($phase)" -- "$COHORT_BIN" train job.yaml --no-progress --set train.steps=5 \
    --set checkpoint.dir="$root"
  expect_exit 137 "SIGKILL at $phase of the step-10 save" -- env COHORT_CRASH_AT="$phase:10" \
    "$COHORT_BIN" train job.yaml --no-progress --set checkpoint.dir="$root"
  case $phase in shard-tmp|shard-final|manifest-tmp) want=5 ;; *) want=10 ;; esac
  expect_exit 0 "ckpt verify after a kill at $phase" -- "$COHORT_BIN" ckpt verify "$root"
  expect_output "step +$want " "after a kill at $phase the latest complete checkpoint is step $want"
  expect_exit 0 "resume after a kill at $phase" -- "$COHORT_BIN" train job.yaml --no-progress \
    --set checkpoint.dir="$root" --metrics "ph-$phase.jsonl"
  expect_output "resumed from $root/step-0*$want \(step $want," "resumes from step $want"
  got=$(crc "ph-$phase.jsonl")
  [ "$got" = "$ref" ] && pass "final weights after a kill at $phase are bit-identical" \
    || fail "final weights after a kill at $phase: $got vs $ref"
  leftovers=$(find "$root" -name '.*tmp*' | wc -l)
  [ "$leftovers" = 0 ] && pass "no temporary files left ($phase)" || { fail "temporary files left after $phase:"; find "$root" -name '.*tmp*' >&2; }
done

# ---- random kills while saving every step ----
KILLS=${KILLS:-200}
root="$WORK/sweep"
bad=0
resumed_ok=0
committed_before=0
/usr/bin/python3 -c "import random; random.seed(5); print('\n'.join(str(random.randint(0, 400)) for _ in range($KILLS)))" > delays
while read -r ms; do
  "$COHORT_BIN" train job.yaml --no-progress --set train.steps=100000 --set checkpoint.interval=1 \
    --set checkpoint.keep_last=2 --set checkpoint.dir="$root" > sweep.log 2>&1 &
  pid=$!
  sleep "$(printf '0.%03d' "$ms")"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if grep -q "error" sweep.log; then bad=$((bad + 1)); echo "run failed before the kill:" >&2; tail -3 sweep.log >&2; fi
  # What the next run would load must be complete and intact (or nothing, before the first commit;
  # once one was committed, a kill must never leave none).
  if [ -e "$root" ] && "$COHORT_BIN" ckpt list "$root" | grep -q "complete  "; then
    committed_before=1
    if "$COHORT_BIN" ckpt verify "$root" > verify.log 2>&1; then resumed_ok=$((resumed_ok + 1)); else
      bad=$((bad + 1)); echo "bad checkpoint after a kill at ${ms} ms:" >&2; tail -3 verify.log >&2; fi
  elif [ "$committed_before" = 1 ]; then
    bad=$((bad + 1)); echo "no complete checkpoint left after a kill at ${ms} ms, though one had been committed:" >&2
    "$COHORT_BIN" ckpt list "$root" >&2 || true
  fi
done < delays
echo "random kills: $KILLS, checkpoints verified after them: $resumed_ok, bad loads: $bad"
[ "$bad" = 0 ] && pass "$KILLS random kill -9: 0 bad loads" || fail "$bad bad loads in $KILLS kills"
[ "$resumed_ok" -ge $((KILLS / 2)) ] && pass "most kills came after a commit ($resumed_ok)" \
  || fail "only $resumed_ok of $KILLS kills left a checkpoint to verify: the sweep did not exercise saving"
# And the next run does resume from it (stopped again, cleanly, once it has).
"$COHORT_BIN" train job.yaml --no-progress --set train.steps=100000 --set checkpoint.interval=1 \
  --set checkpoint.dir="$root" > after.log 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q "resumed from\|error" after.log && break; sleep 0.1; done
kill -TERM "$pid"
set +e; wait "$pid"; code=$?; set -e
OUT=$(cat after.log)
[ "$code" = 143 ] && pass "the run after the sweep stops cleanly (143)" || { fail "exit $code after the sweep"; tail -5 after.log >&2; }
expect_output "resumed from $root/step-" "it resumes from the sweep's checkpoint"

# ---- a full disk: a 1.3 MB tmpfs holds two checkpoints of this model (~0.5 MB each), not three ----
small="$WORK/small"
mkdir -p "$small"
mount_small() {
  if [ "$(id -u)" = 0 ]; then mount -t tmpfs -o size=1300k tmpfs "$small"; return; fi
  return 1
}
if mount_small; then
  trap 'umount "$small" 2>/dev/null || true; rm -rf "$WORK"' EXIT
  expect_exit 1 "training onto a full disk fails at the end" -- "$COHORT_BIN" train job.yaml --no-progress \
    --set checkpoint.dir="$small" --set checkpoint.keep_last=10
  expect_output "checkpoint of step [0-9]+ abandoned, the previous ones are intact: .*$small/step-" "the error names the file"
  expect_output "No space left on device|disk full" "the error says the disk is full"
  expect_exit 0 "the committed checkpoints are intact" -- "$COHORT_BIN" ckpt verify "$small"
  expect_exit 0 "ckpt list on the full disk" -- "$COHORT_BIN" ckpt list "$small"
  if grep -q INCOMPLETE <<<"$OUT"; then fail "abandoned saves left step directories:"; echo "$OUT" >&2; else pass "no abandoned step directory left"; fi
  leftovers=$(find "$small" -name '.*tmp*' | wc -l)
  [ "$leftovers" = 0 ] && pass "no partial files left on the full disk" || { fail "partial files left:"; find "$small" >&2; }
  umount "$small"
else
  fail "cannot mount a tmpfs for the disk-full test (needs root, as CI and scripts/test run)"
fi
finish
