// Rank discovery from each launcher's environment, and backend resolution.
#include <map>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "launch/bootstrap.h"
#include "launch/world.h"

namespace cohort::launch {
namespace {

using ::testing::HasSubstr;
using Env = std::map<std::string, std::string>;

TEST(WorldTest, NoLauncherIsASingleProcess) {
  auto w = DiscoverWorld(Env{});
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->rank, 0);
  EXPECT_EQ(w->size, 1);
  EXPECT_EQ(w->launcher, "single");
  EXPECT_FALSE(w->mpi);
}

TEST(WorldTest, OpenMpiMpirun) {
  auto w = DiscoverWorld(Env{{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "4"},
                             {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"},
                             // an enclosing Slurm allocation's variables lose
                             {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}, {"SLURM_JOB_ID", "5"}});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(w->rank, 3);
  EXPECT_EQ(w->size, 4);
  EXPECT_EQ(w->local_rank, 1);
  EXPECT_EQ(w->local_size, 2);
  EXPECT_EQ(w->launcher, "mpirun");
  EXPECT_TRUE(w->mpi);
  EXPECT_EQ(w->Describe(), "rank 3 of 4 (local 1 of 2) under mpirun");
}

TEST(WorldTest, SrunWithPmix) {
  // What `srun --mpi=pmix -n 4` on 2 nodes sets (OMPI_COMM_WORLD_* are absent there).
  auto w = DiscoverWorld(Env{{"PMIX_RANK", "2"}, {"SLURM_PROCID", "2"}, {"SLURM_STEP_NUM_TASKS", "4"},
                             {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "0"}, {"SLURM_JOB_ID", "77"},
                             {"SLURM_STEP_ID", "0"}, {"SLURM_STEP_NUM_NODES", "2"},
                             {"SLURM_STEP_TASKS_PER_NODE", "2(x2)"}});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(w->rank, 2);
  EXPECT_EQ(w->size, 4);
  EXPECT_EQ(w->local_rank, 0);
  EXPECT_EQ(w->local_size, 2);
  EXPECT_EQ(w->nodes, 2);
  EXPECT_TRUE(w->local_size_known);
  EXPECT_EQ(w->launcher, "srun");
  EXPECT_TRUE(w->mpi);
  EXPECT_EQ(w->job_id, "77.0");
}

TEST(WorldTest, SrunWithoutPmixUsesSlurmVariablesAndIsNotMpi) {
  auto w = DiscoverWorld(Env{{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "3"}, {"SLURM_LOCALID", "1"},
                             {"SLURM_STEP_NUM_TASKS", "3"}, {"SLURM_JOB_ID", "9"},
                             {"SLURM_STEP_ID", "0"}, {"SLURM_NNODES", "1"},
                             {"SLURM_STEP_TASKS_PER_NODE", "3"}});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(w->rank, 1);
  EXPECT_EQ(w->size, 3);
  EXPECT_EQ(w->local_size, 3);
  EXPECT_EQ(w->launcher, "srun");
  EXPECT_FALSE(w->mpi);
  auto b = ResolveBackend("auto", *w);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, "gloo");
}

// What an sbatch script itself sees (measured on the project's Slurm): no SLURM_STEP_NUM_TASKS.
// It is one process, not rank 0 of N waiting for peers that never come; the note says why.
TEST(WorldTest, BatchScriptWithoutSrunIsOneProcessWithAWarning) {
  auto w = DiscoverWorld(Env{{"SLURM_JOB_ID", "2"}, {"SLURM_LOCALID", "0"}, {"SLURM_NNODES", "1"},
                             {"SLURM_NTASKS", "2"}, {"SLURM_PROCID", "0"}});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(w->size, 1);
  EXPECT_EQ(w->launcher, "single");
  EXPECT_THAT(w->note, HasSubstr("not started by srun"));
}

// torchrun (or Cohort's agents) inside a Slurm or mpirun job: the innermost launcher wins.
TEST(WorldTest, TorchrunInsideSlurmUsesTorchrunVariables) {
  auto w = DiscoverWorld(Env{{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "3"},
                             {"LOCAL_WORLD_SIZE", "4"}, {"MASTER_ADDR", "127.0.0.1"},
                             {"MASTER_PORT", "29400"}, {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"},
                             {"SLURM_STEP_NUM_TASKS", "1"}, {"PMIX_RANK", "0"}, {"SLURM_JOB_ID", "7"},
                             {"SLURM_STEP_TASKS_PER_NODE", "1"}});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(w->launcher, "torchrun");
  EXPECT_EQ(w->rank, 3);
  EXPECT_EQ(w->size, 4);
  EXPECT_EQ(w->local_size, 4);
  EXPECT_FALSE(w->mpi);
}

TEST(WorldTest, TorchrunStyle) {
  auto w = DiscoverWorld(Env{{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"},
                             {"LOCAL_WORLD_SIZE", "4"}, {"MASTER_ADDR", "10.0.0.1"},
                             {"MASTER_PORT", "29500"}});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(w->rank, 5);
  EXPECT_EQ(w->size, 8);
  EXPECT_EQ(w->local_rank, 1);
  EXPECT_EQ(w->local_size, 4);
  EXPECT_TRUE(w->local_size_known);
  EXPECT_EQ(w->master_addr, "10.0.0.1");
  EXPECT_EQ(w->master_port, 29500);
  EXPECT_EQ(w->launcher, "torchrun");
  EXPECT_FALSE(w->mpi);
}

// Non-uniform tasks per node: the local count is unknown, so nothing may rely on it (binding).
TEST(WorldTest, UnknownLocalSizeIsMarked) {
  auto w = DiscoverWorld(Env{{"SLURM_PROCID", "2"}, {"SLURM_STEP_NUM_TASKS", "3"}, {"SLURM_LOCALID", "0"},
                             {"SLURM_JOB_ID", "4"}, {"SLURM_STEP_NUM_NODES", "2"},
                             {"SLURM_STEP_TASKS_PER_NODE", "2,1"}});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_FALSE(w->local_size_known);
  EXPECT_EQ(BindToLocalShare(*w), "");
}

TEST(WorldTest, MalformedValuesNameTheVariable) {
  struct Case {
    Env env;
    std::string message;
  };
  const Case cases[] = {
      {{{"OMPI_COMM_WORLD_RANK", "4"}, {"OMPI_COMM_WORLD_SIZE", "4"}},
       "OMPI_COMM_WORLD_RANK=4 is not below the world size OMPI_COMM_WORLD_SIZE=4"},
      {{{"OMPI_COMM_WORLD_RANK", "x"}, {"OMPI_COMM_WORLD_SIZE", "4"}},
       "OMPI_COMM_WORLD_RANK='x' is not an integer"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "0"}}, "WORLD_SIZE=0 is outside [1, "},
      {{{"RANK", "-1"}, {"WORLD_SIZE", "2"}}, "RANK=-1 is outside [0, "},
      {{{"WORLD_SIZE", "2"}}, "needs both RANK and WORLD_SIZE"},
      {{{"PMIX_RANK", "0"}}, "PMIX_RANK is set but the world size is not"},
      {{{"SLURM_PROCID", "0"}, {"SLURM_STEP_NUM_TASKS", "two"}}, "SLURM_STEP_NUM_TASKS='two' is not an integer"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}}, "MASTER_PORT=70000 is outside"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "12ab"}}, "MASTER_PORT='12ab'"},
  };
  for (const Case& c : cases) {
    auto w = DiscoverWorld(c.env);
    ASSERT_FALSE(w.ok()) << c.message;
    EXPECT_EQ(w.status().code(), Code::kInvalidArgument);
    EXPECT_THAT(w.status().message(), HasSubstr(c.message));
  }
}

TEST(BackendTest, AutoPicksMpiUnderMpiLaunchersElseGloo) {
  World mpi;
  mpi.size = 2;
  mpi.mpi = true;
  mpi.launcher = "mpirun";
  World env;
  env.size = 2;
  env.launcher = "torchrun";
  EXPECT_EQ(*ResolveBackend("auto", mpi), "mpi");
  EXPECT_EQ(*ResolveBackend("auto", env), "gloo");
  EXPECT_EQ(*ResolveBackend("gloo", mpi), "gloo");
  auto bad = ResolveBackend("mpi", env);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("mpi needs an MPI-aware launcher"));
  auto nccl = ResolveBackend("nccl", mpi);
  ASSERT_FALSE(nccl.ok());
  EXPECT_THAT(nccl.status().message(), HasSubstr("nccl is not available"));
}

TEST(BackendTest, OneRankNeedsNoTransport) {
  World one;
  BootstrapOptions o;
  o.backend = "mpi";  // even so: no MPI_Init for a single process
  auto c = Connect(one, o);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ((*c)->size(), 1);
  float x = 2.0f;
  EXPECT_TRUE((*c)->AllReduce(&x, 1, collectives::DataType::kFloat32, collectives::ReduceOp::kAvg).ok());
  EXPECT_EQ(x, 2.0f);
}

}  // namespace
}  // namespace cohort::launch
