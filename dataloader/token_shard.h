// Token shards (the on-disk output of `cohort data prepare`) and an in-memory dataset over them.
//
// File layout, all integers little-endian:
//   offset size field
//        0    8 magic "COHORTTK"
//        8    4 format version (u32) = 1
//       12    4 token width in bytes (u32): 2 when vocab_size <= 65536, else 4
//       16    8 token count (u64)
//       24    4 vocab size (u32); every token is < vocab size
//       28   16 tokenizer name: ASCII, NUL-padded, at most 15 characters, e.g. "gpt2", "byte"
//               (the name MakeTokenizer takes, so readers can decode; "" when unknown)
//       44    4 CRC32C of the token payload (the bytes from offset 64 to the end)
//       48    4 CRC32C of header bytes [0, 48)
//       52   12 reserved, zero (checked by readers)
//       64    - token count * token width bytes of tokens; nothing after them
// Writers replace files atomically (temporary file, fsync, rename, fsync of the directory).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace cohort::data {

inline constexpr char kTokenShardMagic[8] = {'C', 'O', 'H', 'O', 'R', 'T', 'T', 'K'};
inline constexpr uint32_t kTokenShardVersion = 1;
inline constexpr size_t kTokenShardHeaderSize = 64;
inline constexpr size_t kTokenizerNameMaxLen = 15;

// Token width used for a vocabulary: 2 bytes when every id fits in u16 (vocab_size <= 65536).
uint32_t TokenWidthForVocab(uint32_t vocab_size);

struct TokenShardHeader {
  uint32_t version = kTokenShardVersion;
  uint32_t token_width = 0;
  uint64_t token_count = 0;
  uint32_t vocab_size = 0;
  std::string tokenizer;
  uint32_t payload_crc32c = 0;
  uint32_t header_crc32c = 0;
};

struct TokenShard {
  TokenShardHeader header;
  std::vector<uint32_t> tokens;
};

// Writes `tokens` as a shard at `path` (atomically; see above). InvalidArgument if vocab_size is 0,
// a token is >= vocab_size, or the tokenizer name is longer than kTokenizerNameMaxLen; NotFound if
// the directory does not exist, Io if the file cannot be written (both naming the path).
// Thread-safe for distinct paths.
Status WriteTokenShard(const std::string& path, std::span<const uint32_t> tokens, uint32_t vocab_size,
                       std::string_view tokenizer);

// Validates the kTokenShardHeaderSize header bytes `h` of the shard named `path` (a path or URI,
// for messages), whose total size is `file_size`: the checks ReadTokenShardHeader describes.
Result<TokenShardHeader> ParseTokenShardHeader(const std::string& path, const unsigned char* h,
                                               uint64_t file_size);

// Reads and validates the header only: magic, version, width (consistent with vocab size), header
// checksum, reserved bytes, and file size == 64 + count * width (catches truncation). Does not
// check the payload checksum. Errors (DataLoss for corruption, NotFound, InvalidArgument for a
// path that is not a regular file, e.g. a FIFO, which is never waited on; Io) name the file and
// the field's byte offset.
Result<TokenShardHeader> ReadTokenShardHeader(const std::string& path);

// Reads a whole shard: the header checks above plus the payload checksum and every token <
// vocab_size (the error names the token's byte offset).
Result<TokenShard> ReadTokenShard(const std::string& path);

// All tokens of one or more shards, in memory, for training and evaluation (the streaming
// dataloader replaces this for large data sets). Immutable after Open, so all const methods are
// thread-safe.
class TokenDataset {
 public:
  // Opens the shards named by `inputs`: each is a file path or a glob(3) pattern. The files are
  // de-duplicated and concatenated in bytewise-sorted path order. Errors: NotFound for a path or
  // pattern matching nothing; the ReadTokenShard errors; InvalidArgument when the shards disagree
  // on vocab size or tokenizer (naming both files) or hold no tokens at all.
  static Result<TokenDataset> Open(const std::vector<std::string>& inputs);
  static Result<TokenDataset> Open(const std::string& path_or_glob) {
    return Open(std::vector<std::string>{path_or_glob});
  }

  size_t size() const { return tokens_.size(); }
  const uint32_t* tokens() const { return tokens_.data(); }
  std::span<const uint32_t> token_span() const { return tokens_; }
  uint32_t vocab_size() const { return vocab_size_; }
  const std::string& tokenizer() const { return tokenizer_; }
  const std::vector<std::string>& files() const { return files_; }

  // OK when a window of T+1 tokens fits (size() >= T+1, T >= 1); otherwise InvalidArgument naming
  // the files. The Fill* methods check this too.
  Status CheckWindow(int T) const;

  // Random training batch: row b of inputs/targets (each B*T int32, row-major) is the window of
  // T+1 tokens starting at SampleOffset(seed, step, micro_step, first_row + b); targets are
  // inputs shifted left by one. The same arguments always give the same batch, independent of
  // any other call. Data-parallel rank r of N with B rows each passes first_row = r * B: the N
  // ranks together read exactly the rows one rank reads with N * B rows. CHECK-fails if the spans
  // are not B*T long or B < 1.
  Status FillRandom(uint64_t seed, uint64_t step, uint64_t micro_step, int B, int T,
                    std::span<int32_t> inputs, std::span<int32_t> targets,
                    uint64_t first_row = 0) const;

  // Start offset of a random window: splitmix64(seed, step, micro_step, row) mod (size() - T).
  uint64_t SampleOffset(uint64_t seed, uint64_t step, uint64_t micro_step, uint64_t row, int T) const;

  // Validation batch `batch_index`: the dataset is cut into NumSequentialWindows(T) consecutive
  // windows of T+1 tokens at stride T (window w starts at w*T); row b is window
  // (batch_index*B + b) mod NumSequentialWindows(T). So batches 0..k-1 are the same in every eval.
  Status FillSequential(uint64_t batch_index, int B, int T, std::span<int32_t> inputs,
                        std::span<int32_t> targets) const;
  // Row b is sequential window (first_window + b) mod NumSequentialWindows(T). Data-parallel
  // rank r of N evaluating global batch i of N * B rows passes first_window = (i * N + r) * B.
  Status FillWindows(uint64_t first_window, int B, int T, std::span<int32_t> inputs,
                     std::span<int32_t> targets) const;
  uint64_t NumSequentialWindows(int T) const;

 private:
  void CopyWindow(uint64_t start, int T, int32_t* in, int32_t* tgt) const;
  std::string FileList() const;

  std::vector<uint32_t> tokens_;
  uint32_t vocab_size_ = 0;
  std::string tokenizer_;
  std::vector<std::string> files_;
};

}  // namespace cohort::data
