# Helpers for the tests that use a real single-node Slurm cluster (scripts/slurm); source after
# lib.sh. Each test gets a private cluster: its own state dir and ports, so it never touches a
# cluster the user started (build/slurm) nor one of a concurrent test run.
#
#   slurm_up                  # install Slurm if missing (root + apt), start, stop it on EXIT
#   srun_mpi N CMD...         # CMD as N ranks under `srun --mpi=pmix` (bounded wait)
#   slurm_pids                # the PIDs scripts/slurm recorded for munged, slurmctld, slurmd
SLURM_SCRIPT=$COHORT_SOURCE_DIR/scripts/slurm
SRUN_TIMEOUT=${SRUN_TIMEOUT:-180}

# A free pair of ports (slurmctld, slurmd = +1) below the ephemeral range, chosen at random.
slurm_free_port() {
  local p i
  for i in $(seq 50); do
    p=$((20000 + (RANDOM % 5000) * 2))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
    (exec 3<>"/dev/tcp/127.0.0.1/$((p + 1))") 2>/dev/null && continue
    echo "$p"
    return 0
  done
  echo "no free port pair found" >&2
  return 1
}

slurm_down() {
  [ -n "${COHORT_SLURM_DIR:-}" ] || return 0
  "$SLURM_SCRIPT" stop || true
  if [ "$FAILS" != 0 ]; then
    local f
    for f in "$COHORT_SLURM_DIR"/log/{munged.out,slurmctld.log,slurmd.log}; do
      [ -s "$f" ] && { echo "---- tail of $f" >&2; tail -12 "$f" >&2; }
    done
  fi
  rm -rf "$COHORT_SLURM_DIR"
}

# Clusters left by tests that were killed before their EXIT trap ran (e.g. SIGKILL at a timeout):
# the test that owned them is gone, so stop their recorded daemons and remove the state dir.
slurm_reap_stale() {
  local d owner
  for d in /tmp/cohort-slurm-*; do
    [ -f "$d/owner.pid" ] || continue
    owner=$(cat "$d/owner.pid" 2>/dev/null || true)
    [[ $owner =~ ^[0-9]+$ ]] && [ -d "/proc/$owner" ] && continue
    echo "stopping the cluster of a test that died: $d"
    COHORT_SLURM_DIR=$d "$SLURM_SCRIPT" stop || true
    rm -rf "$d"
  done
}

slurm_up() {
  # Client commands must reach only our cluster, even when the tests run inside an allocation.
  local v
  for v in $(compgen -e); do
    case $v in SLURM_* | SBATCH_* | SRUN_* | SALLOC_*) unset "$v" ;; esac
  done
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v srun >/dev/null; then
    "$SLURM_SCRIPT" install
  fi
  slurm_reap_stale
  COHORT_SLURM_DIR=$(mktemp -d /tmp/cohort-slurm-XXXXXX)
  echo $$ >"$COHORT_SLURM_DIR/owner.pid"
  COHORT_SLURM_PORT=$(slurm_free_port)
  export COHORT_SLURM_DIR COHORT_SLURM_PORT
  trap 'slurm_down; rm -rf "$WORK"' EXIT
  # Stop the cluster also when ctest or a user interrupts the test (the EXIT trap runs on exit).
  trap 'exit 130' INT
  trap 'exit 143' TERM
  local t0=$SECONDS
  if ! "$SLURM_SCRIPT" start; then
    fail "scripts/slurm start"
    exit 1
  fi
  SLURM_START_S=$((SECONDS - t0))
  eval "$("$SLURM_SCRIPT" env)"
}

srun_mpi() {
  local n=$1
  shift
  timeout "$SRUN_TIMEOUT" srun --mpi=pmix -n "$n" "$@"
}

slurm_pids() { cat "$COHORT_SLURM_DIR"/run/{munged,slurmctld,slurmd}.pid 2>/dev/null; }

# True if process $1 still exists and is not a zombie (a zombie has exited; its parent, here
# whatever reaps orphans, has just not collected it yet).
process_alive() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}
