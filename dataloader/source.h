// Sample sources: a tokenized dataset seen as a fixed sequence of samples, each T+1 tokens (T
// inputs plus the next-token target of the last one), numbered 0 .. num_samples()-1. The global
// sampler (sampler.h) decides which sample index each rank reads at each step; a source only maps
// an index to tokens.
//
// Sample numbering: the files matching the patterns are taken in bytewise-sorted URI order.
//   - Token shards (token_shard.h) and 1-D HDF5 token datasets: file f of n_f tokens holds
//     floor((n_f - 1) / T) samples; sample j of the file is tokens [j*T, j*T + T + 1) (windows at
//     stride T overlapping by the one target token; windows never cross files). A file shorter than
//     T+1 tokens holds none.
//   - 2-D HDF5 datasets [rows, L]: each row is a sample made of its first T+1 tokens; L < T+1 is an
//     error naming the file and dataset.
//   Sample indexes run through file 0's samples, then file 1's, and so on.
//
// Thread safety: after Open*, every const method may be called concurrently (prefetch threads).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace cohort::data {

struct SourceFileInfo {
  std::string uri;
  uint64_t tokens = 0;   // tokens in the file (2-D HDF5: rows * L)
  uint64_t samples = 0;  // samples this file contributes
};

class SampleSource {
 public:
  virtual ~SampleSource() = default;

  // T: each sample is T+1 tokens.
  virtual int seq_len() const = 0;
  virtual uint64_t num_samples() const = 0;
  // Every token is < vocab_size() (checked on read).
  virtual uint32_t vocab_size() const = 0;
  virtual const std::vector<SourceFileInfo>& files() const = 0;
  // "token shards" or "HDF5 dataset 'tokens'", for logs and errors.
  virtual std::string kind() const = 0;

  // Writes sample `index` (< num_samples()) as T+1 tokens to out. Errors name the file and the
  // byte offset (token shards) or element index (HDF5): DataLoss for a token >= vocab_size() or a
  // file that changed or shrank since it was opened, Io for read failures. Never blocks without
  // bound on anything but the storage read itself.
  virtual Status Read(uint64_t index, int32_t* out) const = 0;

  // Sample `index` as a training row: inputs = its first T tokens, targets = its last T (the
  // inputs shifted left by one). Same errors as Read. The default goes through Read and a
  // per-thread scratch sample; token shards decode straight from storage into both rows.
  virtual Status ReadRow(uint64_t index, int32_t* inputs, int32_t* targets) const;

  // The sample's T+1 tokens as stored_width()-byte little-endian integers, into out ((T+1) *
  // stored_width() bytes): the loader's compact layout (loader.h, Layout::kStoredRows). Same
  // checks and errors as Read. Token shards copy their bytes as they are; the default goes
  // through Read (4-byte tokens).
  virtual int stored_width() const { return 4; }
  virtual Status ReadStored(uint64_t index, unsigned char* out) const;

  // A hint that sample `index` (< num_samples()) is read soon (token shards on local files: the
  // CPU starts loading its bytes). Never blocks; may do nothing.
  virtual void Prefetch(uint64_t index) const {}

  // Checks the whole-file checksums of files f with f % parts == part (token shards: payload
  // CRC32C; HDF5 has none: its own filters check what they cover on read), several files at a
  // time. Data-parallel ranks each take one part, so a job reads its data once in total, not once
  // per rank. DataLoss naming the file on a mismatch.
  virtual Status VerifyFiles(int part, int parts) const { return Status::Ok(); }

  // Where sample `index` lives, for messages: "train-003.bin byte offset 1234" (token shards),
  // "a.h5: dataset 'tokens' row 17" (HDF5). Default: "sample <index>".
  virtual std::string Locate(uint64_t index) const;

  // Identifies the data (file names, sizes, sample count, T): equal fingerprints mean the same
  // samples. Stored with the data state so a resume can refuse data that changed underneath it.
  uint64_t Fingerprint() const;
  // "3 files (train-000.bin .. train-002.bin), 12,345 samples of 129 tokens" for logs and errors.
  std::string Describe() const;
};

// How a job's data is stored; parsed from the job spec's data section.
struct SourceOptions {
  std::vector<std::string> patterns;  // URIs or globs (file://, bare paths); sorted, de-duplicated
  int seq_len = 0;                    // T >= 1
  std::string format = "auto";        // auto | shards | hdf5 ("auto": by extension, .h5/.hdf5 = hdf5)
  std::string hdf5_dataset = "tokens";  // dataset name inside each HDF5 file
  uint32_t vocab_size = 0;            // the model's vocabulary: tokens must be below it
  std::string tokenizer;              // token shards only: must match the shard headers ("" = any)
  // Token shards: check every file's payload CRC32C when opening (one sequential read of the
  // data, in parallel over files): VerifyFiles(0, 1). Off when the caller verifies otherwise
  // (the trainer splits the files over its ranks).
  bool verify_checksums = true;
};

// Opens the files `options.patterns` match. Errors name the pattern or file: NotFound when a
// pattern matches nothing; the header, checksum and type errors of each format; InvalidArgument
// when files disagree (vocab, tokenizer, row length), when the tokens exceed vocab_size, or when
// the files hold no sample of T+1 tokens at all.
Result<std::unique_ptr<SampleSource>> OpenSampleSource(const SourceOptions& options);

// The two formats, over an already expanded, sorted list of files (OpenSampleSource expands the
// patterns and picks the format). Token shards take file:// URIs or paths (any Storage); HDF5 takes
// local paths only (the HDF5 library does its own I/O). options.patterns is ignored.
Result<std::unique_ptr<SampleSource>> OpenTokenShardSource(const std::vector<std::string>& files,
                                                           const SourceOptions& options);
Result<std::unique_ptr<SampleSource>> OpenHdf5Source(const std::vector<std::string>& files,
                                                     const SourceOptions& options);

}  // namespace cohort::data
