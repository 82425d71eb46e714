// Job spec: a YAML file parsed into typed, validated structs.
//
// One schema for every job. Unknown keys, wrong types and out-of-range values are errors whose
// message names the file, the key path (e.g. "optimizer.betas[1]"), the line/column and the allowed
// range. Hostile input is bounded before it is interpreted (file size, nesting depth, node count,
// aliases; see Limits). Every field and its default is documented in docs/job-spec.md; keep the two
// in sync (config_test checks that every key appears there).
//
// Thread safety: the functions are pure; specs are plain values.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace cohort::config {

struct ModelSpec {
  int n_layer = 4;
  int n_head = 4;
  int n_embd = 128;
  int context_length = 128;
  // 0 = take the tokenizer's vocabulary size (byte: 257, gpt2: 50257).
  int vocab_size = 0;
};

struct DataSpec {
  std::string train;             // path or glob of token shards (required)
  std::string val;               // path or glob; empty = no validation
  int batch_size = 8;            // sequences per micro-batch per rank
  int seq_len = 0;               // tokens per sequence; 0 = model.context_length
  std::string tokenizer = "byte";  // byte | gpt2: must match the shards
  std::string format = "auto";     // auto | shards | hdf5 (auto: *.h5 / *.hdf5 are HDF5)
  std::string hdf5_dataset = "tokens";  // dataset name inside HDF5 files
  std::string order = "shuffle";   // shuffle: a new permutation each epoch | sequential: file order
  int prefetch = 4;                // batches read ahead by the loader
  int loader_threads = 2;          // reader threads of the loader
  int timeout_s = 600;             // longest wait for one batch before the run fails (stalled storage)
  std::string verify = "full";     // full: check shard payload checksums at start | header
};

struct OptimizerSpec {
  std::string name = "adamw";
  double lr = 6e-4;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double grad_clip = 1.0;        // max global gradient norm; 0 = no clipping
};

struct ScheduleSpec {
  std::string decay = "cosine";  // cosine | constant
  int64_t warmup_steps = 0;
  double min_lr = 0.0;           // cosine floor; must be <= optimizer.lr
};

struct TrainSpec {
  int64_t steps = 1000;
  int grad_accum = 1;            // micro-batches per optimizer step
  uint64_t seed = 1337;
  int64_t eval_interval = 100;   // steps between validation passes; 0 = only at the end
  int eval_batches = 8;          // validation micro-batches per evaluation
  int64_t log_interval = 1;      // steps between log lines
  int threads = 0;               // compute threads per rank; 0 = all cores of the machine
};

// Checkpoints (docs/checkpoint-format.md): saved asynchronously every `interval` steps, at the end
// and when stopped by a signal; a run resumes from the newest complete one (cohort train --resume).
struct CheckpointSpec {
  std::string dir;               // checkpoint root (local path); empty = no checkpoints
  int64_t interval = 0;          // steps between saves; 0 = only at the end / on a stop signal
  int keep_last = 3;             // committed checkpoints kept
  int64_t keep_every = 0;        // also keep the steps that are multiples of this; 0 = none
  std::string on_busy = "wait";  // a save due while two are still being written: wait | skip
};

// Data parallelism across the ranks the launcher started (see docs/job-spec.md).
struct ParallelSpec {
  std::string strategy = "ddp";  // ddp | zero1
  std::string backend = "auto";  // auto | mpi | gloo | nccl
  int bucket_mb = 25;            // gradient bucket size (MiB) for the overlapped reduction
  int timeout_s = 300;           // deadline of every collective; a dead peer fails the job by then
};

// How the coordinator runs the job (`cohort submit`; docs/job-spec.md#launch). `cohort train`
// under mpirun / srun ignores it: there the launcher decides.
struct LaunchSpec {
  int ranks = 1;                 // rank processes (the world size)
  int priority = 0;              // higher first; first come, first served within a priority
  int max_restarts = 3;          // failed attempts re-run (from the latest checkpoint)
  int64_t time_limit_s = 0;      // an attempt running longer is stopped and failed; 0 = none
};

struct JobSpec {
  std::string name = "job";
  // A command run on every rank instead of the built-in trainer (torchrun-style environment:
  // RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...). Empty = the trainer. A YAML string is run by
  // /bin/sh -c; a list is the argv itself. Only the coordinator runs it.
  std::vector<std::string> command;
  LaunchSpec launch;
  ModelSpec model;
  DataSpec data;
  OptimizerSpec optimizer;
  ScheduleSpec schedule;
  TrainSpec train;
  CheckpointSpec checkpoint;
  ParallelSpec parallel;

  // seq_len after defaults are applied.
  int effective_seq_len() const { return data.seq_len > 0 ? data.seq_len : model.context_length; }
};

// Bounds on the raw document, checked before any value is interpreted.
struct Limits {
  size_t max_file_bytes = 1 << 20;  // 1 MiB
  int max_depth = 16;               // nested mappings/sequences
  int max_nodes = 10000;            // scalars + collections
  int max_aliases = 32;             // `*ref` uses (alias floods)
};

// Parses a job spec from YAML text. `source` names the document in errors (normally the path).
// Relative data paths stay as written; ResolvePaths makes them relative to a base directory.
//
// `overrides` are "key.path=value" strings (e.g. "train.steps=20") applied on top of the document
// before validation, as if written in it; errors name the override.
Result<JobSpec> ParseJobSpec(std::string_view yaml, std::string_view source,
                             const Limits& limits = Limits(),
                             const std::vector<std::string>& overrides = {});

// Reads `path` (refusing files over limits.max_file_bytes before reading them) and parses it.
// Relative data and checkpoint paths in the file are resolved against the file's directory.
Result<JobSpec> LoadJobSpec(const std::string& path, const Limits& limits = Limits(),
                            const std::vector<std::string>& overrides = {});

// The fully resolved spec (every field, defaults filled in) as YAML that ParseJobSpec accepts.
std::string ToYaml(const JobSpec& spec);

// The fields in which two resolved specs (ToYaml's output, e.g. the one a checkpoint recorded and
// this run's) differ, as "optimizer.lr 0.002 -> 0.001; train.steps 2000 -> 4000" (a field only
// one of them has: "<none>" on the other side). Empty when they are the same.
std::string JobSpecChanges(const std::string& before_yaml, const std::string& after_yaml);

}  // namespace cohort::config
