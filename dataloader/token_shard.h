// Token shards: the on-disk output of `cohort data prepare` (read for training by the sample
// source in dataloader/source.h).
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
#include "storage/storage.h"

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

// Reads and validates the header of an opened shard (any Storage): the checks ReadTokenShardHeader
// below describes, naming the object's URI.
Result<TokenShardHeader> ReadTokenShardHeader(const storage::ReadableObject& shard);

// Reads and validates the header only: magic, version, width (consistent with vocab size), header
// checksum, reserved bytes, and file size == 64 + count * width (catches truncation). Does not
// check the payload checksum. Errors (DataLoss for corruption, NotFound, InvalidArgument for a
// path that is not a regular file, e.g. a FIFO, which is never waited on; Io) name the file and
// the field's byte offset.
Result<TokenShardHeader> ReadTokenShardHeader(const std::string& path);

// Reads a whole shard: the header checks above plus the payload checksum and every token <
// vocab_size (the error names the token's byte offset).
Result<TokenShard> ReadTokenShard(const std::string& path);

}  // namespace cohort::data
