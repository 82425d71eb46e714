// Checkpoints on local storage (docs/checkpoint-format.md):
//
//   <root>/step-<N>/rank-<r>-of-<W>.h5   one HDF5 file per rank: its range of the flat parameter
//                                        buffer, for the model and each optimizer state
//   <root>/step-<N>/manifest.pb          written last, once every shard is durable
//   <root>/latest                        "step-<N>", moved only after that manifest is committed
//
// N is zero-padded to 9 digits so names sort by step. Every rank writes the same ranges of every
// array: its ZeRO-1 shard (a chunk of every gradient bucket), or under DDP an even split of the
// buffer (the I/O is spread over the ranks either way). Inside a shard, a tensor lying wholly in a
// range is a dataset with the tensor's name and shape ("/model/h.0.attn.c_attn.weight"); a part of
// one cut by a range's ends is a 1-D piece named "<tensor>@<first element>", with its place in the
// tensor as attributes. Every dataset carries the CRC32C of its
// little-endian float32 bytes, and the manifest the size and CRC32C of every file.
//
// Errors name the file (and the tensor, for a checksum mismatch). This is the synchronous layer:
// the trainer's asynchronous saver (snapshot into host buffers, a writer thread, a collective
// commit) is built on it. Thread-safe: every HDF5 call holds Hdf5Mutex() (common/hdf5_lock.h).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace cohort::checkpoint {

inline constexpr uint32_t kFormatVersion = 1;

// One tensor of the flat parameter buffer (model::TensorInfo without the model dependency).
struct TensorSpec {
  std::string name;  // GPT-2 name, e.g. "h.3.attn.c_attn.weight"
  uint64_t offset = 0;
  uint64_t numel = 0;
  std::vector<int64_t> shape;
};

// Elements [offset, offset + size) of the flat parameter buffer.
struct Range {
  uint64_t offset = 0;
  uint64_t size = 0;
  bool operator==(const Range&) const = default;
};

// An array laid out like the parameter buffer, given for the shard's ranges only: the ranges'
// elements one after the other (data[0] is element ranges[0].offset).
struct RangeArray {
  std::string name;  // "model", "adam_m", "adam_v": [A-Za-z0-9_]+
  const float* data = nullptr;
};

// Page-aligned memory that only grows, for a shard's in-memory image: kept by the caller and reused
// by every shard (fresh memory costs a page fault and a page clear per 4 KiB, most of a save's
// time on a VM when it was allocated per shard), and aligned for O_DIRECT writes. Move-only.
class ImageBuffer {
 public:
  ImageBuffer() = default;
  ~ImageBuffer();
  ImageBuffer(const ImageBuffer&) = delete;
  ImageBuffer& operator=(const ImageBuffer&) = delete;
  unsigned char* data() { return data_; }
  size_t capacity() const { return capacity_; }
  // Grows to at least n bytes (rounded up to 4 KiB), keeping the contents. False when out of memory.
  bool Reserve(size_t n);

 private:
  unsigned char* data_ = nullptr;
  size_t capacity_ = 0;
};

struct ShardWrite {
  int rank = 0;
  int world = 1;
  int64_t step = 0;
  std::vector<TensorSpec> tensors;  // the whole table, in buffer order, tiling [0, total)
  std::vector<Range> ranges;        // ascending, disjoint; the ranks' ranges tile [0, total)
  std::vector<RangeArray> arrays;   // PlanShard and WriteShardImage use the names only
  // WriteShard: memory for the shard's in-memory image, kept by the caller across shards; null: a
  // temporary one.
  ImageBuffer* scratch = nullptr;
};

struct ShardFileInfo {
  std::string name;  // inside the step directory
  uint64_t size = 0;
  uint32_t crc32c = 0;
  int rank = 0;
  std::vector<Range> ranges;
};

// Where a shard's data lies in its file: one extent per dataset, in the order they are built
// (array, range, tensor). The same for every shard of the same table, ranges and array names
// (PlanShard builds one shard's metadata to find out; WriteShardImage checks that HDF5 placed
// every dataset there again).
struct ShardLayout {
  struct Extent {
    size_t array = 0;      // index into ShardWrite::arrays
    uint64_t element = 0;  // first element, counted over the shard's ranges one after the other
    uint64_t count = 0;    // floats
    uint64_t offset = 0;   // byte offset in the file (any alignment)
  };
  std::vector<Extent> extents;
  uint64_t file_size = 0;  // bytes
};

// The layout of `shard`'s file (the arrays' data is not read). InvalidArgument as WriteShard.
Result<ShardLayout> PlanShard(const ShardWrite& shard);

// Writes the shard whose data the caller already put into `image` at the layout's offsets (the
// image holds at least layout.file_size bytes): HDF5 adds the metadata around the data in place,
// while a background thread already writes the data out. Otherwise as WriteShard. The image's
// bytes outside the extents are overwritten. Internal error if HDF5 did not place the datasets
// as planned.
//
// This is how the asynchronous checkpointer saves: its snapshot is copied straight into the file
// image, so a save holds this rank's state twice (two snapshots), not three times (two snapshots
// and an image built from one of them), and the state is copied once, not twice.
Result<ShardFileInfo> WriteShardImage(const std::string& step_dir, const ShardWrite& shard, const ShardLayout& layout,
                                      ImageBuffer* image);

struct DataState {
  uint64_t seed = 0;
  uint64_t epoch = 0;
  uint64_t cursor = 0;
  uint64_t fingerprint = 0;  // of the training data; 0 = not recorded
  bool operator==(const DataState&) const = default;
};

struct Manifest {
  uint32_t format_version = kFormatVersion;
  int64_t step = 0;
  int world_size = 1;
  std::string strategy = "ddp";  // ddp | zero1
  std::string job_spec_yaml;
  DataState data;
  int64_t optimizer_step = 0;
  uint64_t num_parameters = 0;
  std::vector<std::string> states;  // array names in every shard, e.g. {"model", "adam_m", "adam_v"}
  std::vector<ShardFileInfo> files;  // by rank
  std::vector<uint64_t> rng_seeds;   // by rank; may be empty
  int64_t created_unix_ms = 0;
};

// "step-000001200" and <root>/step-000001200.
std::string StepDirName(int64_t step);
std::string StepDir(const std::string& root, int64_t step);
// The step a directory name ("step-" and 1 to 18 digits) stands for; nullopt for any other name.
std::optional<int64_t> StepFromDirName(std::string_view name);
// "rank-00002-of-00004.h5".
std::string ShardFileName(int rank, int world);

// Writes this rank's shard into `step_dir` (created if missing) durably: an HDF5 file under a
// temporary name, fsync, rename, fsync of the directory. (PlanShard, the arrays copied into an
// image, WriteShardImage: for tools and tests; the trainer's saver plans once.) InvalidArgument for a range or table
// that does not fit; Io (naming the file) when writing fails, e.g. a full disk; the temporary
// file is removed on every failure.
Result<ShardFileInfo> WriteShard(const std::string& step_dir, const ShardWrite& shard);

// Withdraws a commit of the step in `step_dir` (removes its manifest, syncs the directory), so
// that its shards can be replaced or removed without a crash ever leaving the manifest over other
// or missing shards. Ok when there is none. WriteShardImage calls it before writing a shard.
Status WithdrawCommit(const std::string& step_dir);

// Commits the checkpoint in `m.step`'s directory under `root`: checks that every file the
// manifest lists is there with its recorded size, writes manifest.pb (temporary file, fsync,
// rename, fsync of the directory), then points <root>/latest at it the same way. Until the
// manifest's rename the step does not exist for readers; once it is in place the commit stands:
// a failure after that (syncing the directory, moving `latest`) returns Ok with `warning` set.
Status Commit(const std::string& root, const Manifest& m, std::string* warning = nullptr);

// Reads and validates <step_dir>/manifest.pb (checksum, version, fields). NotFound when there is
// none; DataLoss naming the file when it is corrupt.
Result<Manifest> ReadManifest(const std::string& step_dir);

struct Entry {
  int64_t step = 0;
  std::string dir;
  bool complete = false;      // a valid manifest, every file present with its size
  bool has_manifest = false;  // false: never committed (what an interrupted save leaves)
  std::string problem;        // why not complete
};

// The step directories under `root`, oldest first. NotFound when root does not exist.
Result<std::vector<Entry>> List(const std::string& root);

// The newest complete checkpoint under `root`; NotFound (naming root and, when there are some,
// why each newer directory was skipped) when there is none.
Result<Entry> FindLatest(const std::string& root);

// Full verification of one checkpoint: the manifest, every file's size and CRC32C, and every
// dataset's CRC32C. DataLoss naming the file (and tensor) at the first mismatch.
Status Verify(const std::string& step_dir, Manifest* manifest = nullptr);

// Reads elements [offset, offset + count) of array `name` in flat-buffer coordinates from the
// shards that hold them, checking each dataset's CRC32C: loading at any world size (resharding)
// is reading the ranges the new ranks need. Memory beyond `out` is bounded (datasets are read in
// pieces of a few MiB). On an error, `out` holds an unspecified mix and must not be used.
Status ReadRange(const std::string& step_dir, const Manifest& m, const std::string& name, uint64_t offset,
                 uint64_t count, float* out);

// Writes the model weights of a checkpoint (gathered from every shard, each piece's CRC32C checked)
// into one safetensors file (https://huggingface.co/docs/safetensors: an 8-byte little-endian
// header length, a JSON header, then the raw little-endian data), tensors in buffer order with
// their GPT-2 names, atomically (temporary file, fsync, rename). `hf_layout`: the four matmul
// weights of each block (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) are transposed to
// Hugging Face GPT-2's Conv1D layout [in, out] (Cohort stores [out, in], like torch.nn.Linear), so
// the file loads into transformers' GPT2LMHeadModel; otherwise they are written as stored.
Status ExportSafetensors(const std::string& step_dir, const std::string& out_path, bool hf_layout);

// Removes what interrupted saves leave behind: temporary files of writers killed mid-write
// (".latest.tmp.*" in the root; ".rank-*.h5.tmp-*" and ".manifest.pb.tmp.*" in step directories),
// and step directories that were never committed (no manifest.pb at all), with their shards. A
// step directory whose manifest exists but is damaged is kept: it was committed, and is reported
// rather than deleted. Only for a root no other process is writing to (the trainer calls it on rank
// 0 after choosing where to resume, before its first save). Returns how many files it removed;
// errors other than a missing root are ignored.
int RemoveInterruptedSaves(const std::string& root);

// Fault injection for the crash tests (tests/integration/ckpt_crash_test.sh): after
// SetCrashPointForTesting("PHASE:STEP") the process kills itself with SIGKILL when the save of
// step STEP reaches PHASE: shard-tmp (this rank's shard written and fsynced under its temporary
// name), shard-final (renamed to its final name, not committed), manifest-tmp (the manifest written
// under its temporary name, not renamed), manifest (committed; `latest` not moved), latest (moved;
// retention not run), retention (an old checkpoint's files removed, its directory not). `cohort
// train` sets it from $COHORT_CRASH_AT. InvalidArgument for a malformed point.
Status SetCrashPointForTesting(const std::string& point);
void CrashPoint(const char* phase, int64_t step);

}  // namespace cohort::checkpoint
