#include "launch/world.h"

#include <charconv>
#include <cstdlib>
#include <string_view>

namespace cohort::launch {
namespace {

// Parses an integer environment variable. Absent -> `fallback`; malformed or outside
// [min, max] -> InvalidArgument naming it.
Result<int> IntVar(const Getenv& getenv, const char* name, int fallback, int min, int max) {
  const char* raw = getenv(name);
  if (raw == nullptr) return fallback;
  std::string_view s(raw);
  int v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || p != s.data() + s.size()) {
    return InvalidArgument(std::string("environment variable ") + name + "='" + std::string(s) +
                           "' is not an integer");
  }
  if (v < min || v > max) {
    return InvalidArgument(std::string("environment variable ") + name + "=" + std::to_string(v) +
                           " is outside [" + std::to_string(min) + ", " + std::to_string(max) +
                           "]");
  }
  return v;
}

bool Has(const Getenv& getenv, const char* name) { return getenv(name) != nullptr; }

std::string Str(const Getenv& getenv, const char* name) {
  const char* v = getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

// The first present variable of `names` (its name), or nullptr.
const char* FirstPresent(const Getenv& getenv, std::initializer_list<const char*> names) {
  for (const char* n : names) {
    if (Has(getenv, n)) return n;
  }
  return nullptr;
}

constexpr int kMaxRanks = 1 << 20;

// SLURM_STEP_TASKS_PER_NODE looks like "2(x3),1": the count on our node is not derivable without
// knowing our node index, so only the uniform case "N" or "N(xM)" gives a local size.
int UniformTasksPerNode(const std::string& s) {
  if (s.empty()) return 0;
  int v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || v <= 0) return 0;
  std::string_view rest(p, static_cast<size_t>(s.data() + s.size() - p));
  if (rest.empty() || (rest.front() == '(' && rest.find(',') == std::string_view::npos)) return v;
  return 0;
}

}  // namespace

std::string World::Describe() const {
  std::string s = "rank " + std::to_string(rank) + " of " + std::to_string(size);
  if (size > 1) s += " (local " + std::to_string(local_rank) + " of " + std::to_string(local_size) + ")";
  return s + (launcher == "single" ? std::string(", single process") : " under " + launcher);
}

Result<World> DiscoverWorld(const Getenv& getenv) {
  World w;
  const char* rank_var = nullptr;
  const char* size_var = nullptr;
  // The innermost launcher wins: torchrun-style variables are set for each process by the
  // launcher that started it (torchrun, Cohort's agents), which may itself run inside an
  // mpirun or Slurm job whose variables it inherited.
  if (Has(getenv, "RANK") || Has(getenv, "WORLD_SIZE")) {
    if (!Has(getenv, "RANK") || !Has(getenv, "WORLD_SIZE")) {
      return InvalidArgument("torchrun-style launch needs both RANK and WORLD_SIZE (only " +
                             std::string(Has(getenv, "RANK") ? "RANK" : "WORLD_SIZE") + " is set)");
    }
    w.launcher = "torchrun";
    rank_var = "RANK";
    size_var = "WORLD_SIZE";
    ASSIGN_OR_RETURN(w.local_rank, IntVar(getenv, "LOCAL_RANK", 0, 0, kMaxRanks));
    ASSIGN_OR_RETURN(w.local_size, IntVar(getenv, "LOCAL_WORLD_SIZE", 1, 1, kMaxRanks));
    w.local_size_known = Has(getenv, "LOCAL_WORLD_SIZE");
  } else if (Has(getenv, "OMPI_COMM_WORLD_RANK") || Has(getenv, "OMPI_COMM_WORLD_SIZE")) {
    w.launcher = "mpirun";
    w.mpi = true;
    rank_var = "OMPI_COMM_WORLD_RANK";
    size_var = "OMPI_COMM_WORLD_SIZE";
    ASSIGN_OR_RETURN(w.local_rank, IntVar(getenv, "OMPI_COMM_WORLD_LOCAL_RANK", 0, 0, kMaxRanks));
    ASSIGN_OR_RETURN(w.local_size, IntVar(getenv, "OMPI_COMM_WORLD_LOCAL_SIZE", 1, 1, kMaxRanks));
    w.local_size_known = Has(getenv, "OMPI_COMM_WORLD_LOCAL_SIZE");
    w.job_id = Str(getenv, "OMPI_MCA_ess_base_jobid");
  } else if (Has(getenv, "PMIX_RANK")) {
    w.launcher = Has(getenv, "SLURM_JOB_ID") ? "srun" : "pmix";
    w.mpi = true;
    rank_var = "PMIX_RANK";
    size_var = FirstPresent(getenv, {"PMIX_SIZE", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"});
    if (size_var == nullptr) {
      return InvalidArgument("PMIX_RANK is set but the world size is not (none of PMIX_SIZE, "
                             "SLURM_STEP_NUM_TASKS, SLURM_NTASKS)");
    }
    ASSIGN_OR_RETURN(w.local_rank, IntVar(getenv, "SLURM_LOCALID", 0, 0, kMaxRanks));
  } else if (Has(getenv, "SLURM_PROCID") && Has(getenv, "SLURM_STEP_NUM_TASKS")) {
    // Only srun sets SLURM_STEP_NUM_TASKS; an sbatch script itself (the batch step) has
    // SLURM_PROCID=0 and SLURM_NTASKS=N but is one process.
    w.launcher = "srun";
    rank_var = "SLURM_PROCID";
    size_var = "SLURM_STEP_NUM_TASKS";
    ASSIGN_OR_RETURN(w.local_rank, IntVar(getenv, "SLURM_LOCALID", 0, 0, kMaxRanks));
  } else if (Has(getenv, "SLURM_NTASKS") && std::string_view(getenv("SLURM_NTASKS")) != "1") {
    w.note = "SLURM_NTASKS=" + Str(getenv, "SLURM_NTASKS") +
             " but this process was not started by srun (it is the batch script itself): training "
             "as a single process; start the ranks with `srun --mpi=pmix cohort train ...`";
  }
  if (rank_var != nullptr) {
    ASSIGN_OR_RETURN(w.size, IntVar(getenv, size_var, 1, 1, kMaxRanks));
    ASSIGN_OR_RETURN(w.rank, IntVar(getenv, rank_var, 0, 0, kMaxRanks));
    if (w.rank >= w.size) {
      return InvalidArgument(std::string(rank_var) + "=" + std::to_string(w.rank) +
                             " is not below the world size " + size_var + "=" +
                             std::to_string(w.size));
    }
  }
  if (Has(getenv, "SLURM_JOB_ID") && w.launcher == "srun") {
    w.job_id = Str(getenv, "SLURM_JOB_ID");
    if (Has(getenv, "SLURM_STEP_ID")) w.job_id += "." + Str(getenv, "SLURM_STEP_ID");
    const int per_node = UniformTasksPerNode(Str(getenv, "SLURM_STEP_TASKS_PER_NODE"));
    if (per_node > 0) {
      w.local_size = per_node;
      w.local_size_known = true;
    }
    ASSIGN_OR_RETURN(w.nodes, IntVar(getenv, Has(getenv, "SLURM_STEP_NUM_NODES")
                                                 ? "SLURM_STEP_NUM_NODES"
                                                 : "SLURM_NNODES",
                                     1, 1, kMaxRanks));
  }
  if (w.local_rank >= w.local_size) {  // inconsistent or unknown: a lower bound, not to be relied on
    w.local_size = w.local_rank + 1;
    w.local_size_known = false;
  }
  w.master_addr = Str(getenv, "MASTER_ADDR");
  ASSIGN_OR_RETURN(w.master_port, IntVar(getenv, "MASTER_PORT", 0, 1, 65535));
  return w;
}

Result<World> DiscoverWorld(const std::map<std::string, std::string>& env) {
  return DiscoverWorld([&env](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

Result<World> DiscoverWorldFromProcess() {
  return DiscoverWorld([](const char* name) -> const char* { return std::getenv(name); });
}

}  // namespace cohort::launch
