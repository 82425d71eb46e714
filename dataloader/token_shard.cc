#include "dataloader/token_shard.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>

#include "common/crc32c.h"
#include "common/hash.h"
#include "storage/file_util.h"

namespace cohort::data {
namespace {

// Header field offsets (see token_shard.h).
constexpr size_t kOffMagic = 0;
constexpr size_t kOffVersion = 8;
constexpr size_t kOffWidth = 12;
constexpr size_t kOffCount = 16;
constexpr size_t kOffVocab = 24;
constexpr size_t kOffTokenizer = 28;
constexpr size_t kTokenizerField = 16;
constexpr size_t kOffPayloadCrc = 44;
constexpr size_t kOffHeaderCrc = 48;
constexpr size_t kOffReserved = 52;

// Explicit little-endian (de)serialization, so the format does not depend on the host.
void PutU32(unsigned char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
void PutU64(unsigned char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
uint32_t GetU32(const unsigned char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
uint64_t GetU64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::string At(const std::string& path, size_t offset, std::string_view what) {
  return path + ": byte offset " + std::to_string(offset) + " (" + std::string(what) + "): ";
}

// Serializes tokens[0..n) at `width` bytes each into `out` (resized).
void EncodeTokens(const uint32_t* tokens, size_t n, uint32_t width, std::vector<unsigned char>* out) {
  out->resize(n * width);
  unsigned char* p = out->data();
  if (width == 2) {
    for (size_t i = 0; i < n; ++i, p += 2) {
      p[0] = static_cast<unsigned char>(tokens[i]);
      p[1] = static_cast<unsigned char>(tokens[i] >> 8);
    }
  } else {
    for (size_t i = 0; i < n; ++i, p += 4) PutU32(p, tokens[i]);
  }
}

Status ShorterThanHeader(const std::string& path, uint64_t size) {
  return DataLoss(path + ": file is " + std::to_string(size) + " bytes, shorter than the " +
                  std::to_string(kTokenShardHeaderSize) + "-byte header (truncated?)");
}

// Validates the kTokenShardHeaderSize header bytes `h` of the shard named `path` (a path or URI,
// for messages), whose total size is `file_size`.
Result<TokenShardHeader> ParseTokenShardHeader(const std::string& path, const unsigned char* h,
                                               uint64_t file_size) {
  if (std::memcmp(h + kOffMagic, kTokenShardMagic, sizeof(kTokenShardMagic)) != 0) {
    return DataLoss(At(path, kOffMagic, "magic") + "not a Cohort token shard (expected \"COHORTTK\")");
  }
  TokenShardHeader hdr;
  hdr.version = GetU32(h + kOffVersion);
  if (hdr.version != kTokenShardVersion) {
    return DataLoss(At(path, kOffVersion, "version") + "unsupported format version " +
                    std::to_string(hdr.version) + " (this build reads version " +
                    std::to_string(kTokenShardVersion) + ")");
  }
  // The header checksum comes before the other fields: a flipped bit there should be reported as
  // corruption, not as some implausible value.
  hdr.header_crc32c = GetU32(h + kOffHeaderCrc);
  uint32_t header_crc = Crc32c(h, kOffHeaderCrc);
  if (header_crc != hdr.header_crc32c) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "stored 0x%08x, computed 0x%08x", hdr.header_crc32c, header_crc);
    return DataLoss(At(path, kOffHeaderCrc, "header checksum") + "mismatch, " + buf);
  }
  for (size_t i = kOffReserved; i < kTokenShardHeaderSize; ++i) {
    if (h[i] != 0) return DataLoss(At(path, i, "reserved") + "not zero");
  }
  hdr.token_width = GetU32(h + kOffWidth);
  hdr.token_count = GetU64(h + kOffCount);
  hdr.vocab_size = GetU32(h + kOffVocab);
  hdr.payload_crc32c = GetU32(h + kOffPayloadCrc);
  if (hdr.vocab_size == 0) return DataLoss(At(path, kOffVocab, "vocab size") + "is 0");
  // Width 4 is accepted for any vocabulary (other writers may always use u32); width 2 only when
  // every id fits.
  if (hdr.token_width != 4 && !(hdr.token_width == 2 && hdr.vocab_size <= 65536)) {
    return DataLoss(At(path, kOffWidth, "token width") + "width " + std::to_string(hdr.token_width) +
                    " is invalid for vocab size " + std::to_string(hdr.vocab_size));
  }
  const char* name = reinterpret_cast<const char*>(h + kOffTokenizer);
  size_t len = strnlen(name, kTokenizerField);
  if (len > kTokenizerNameMaxLen) {
    return DataLoss(At(path, kOffTokenizer, "tokenizer name") + "not NUL-terminated");
  }
  for (size_t i = 0; i < kTokenizerField; ++i) {
    unsigned char c = h[kOffTokenizer + i];
    if (i < len ? (c < 0x21 || c > 0x7E) : c != 0) {
      return DataLoss(At(path, kOffTokenizer + i, "tokenizer name") + "invalid byte");
    }
  }
  hdr.tokenizer.assign(name, len);
  if (hdr.token_count > (UINT64_MAX - kTokenShardHeaderSize) / hdr.token_width) {
    return DataLoss(At(path, kOffCount, "token count") + "implausible count " +
                    std::to_string(hdr.token_count));
  }
  const uint64_t expected = kTokenShardHeaderSize + hdr.token_count * hdr.token_width;
  if (file_size != expected) {
    return DataLoss(path + ": file is " + std::to_string(file_size) + " bytes but the header (token count " +
                    std::to_string(hdr.token_count) + " at byte offset 16) implies " +
                    std::to_string(expected) + (file_size < expected ? " (truncated)" : " (trailing bytes)"));
  }
  return hdr;
}

}  // namespace

uint32_t TokenWidthForVocab(uint32_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

Status WriteTokenShard(const std::string& path, std::span<const uint32_t> tokens, uint32_t vocab_size,
                       std::string_view tokenizer) {
  if (vocab_size == 0) return InvalidArgument(path + ": vocab size must be > 0");
  if (tokenizer.size() > kTokenizerNameMaxLen) {
    return InvalidArgument(path + ": tokenizer name \"" + std::string(tokenizer) + "\" longer than " +
                           std::to_string(kTokenizerNameMaxLen) + " characters");
  }
  for (char c : tokenizer) {
    if (c < 0x21 || c > 0x7E) return InvalidArgument(path + ": tokenizer name must be printable ASCII");
  }
  const uint32_t width = TokenWidthForVocab(vocab_size);

  // Pass 1: validate and checksum the payload in chunks (keeps memory flat for 100M-token shards;
  // the checksum must be known before the header is written).
  constexpr size_t kChunk = 1 << 16;
  std::vector<unsigned char> buf;
  uint32_t payload_crc = 0;
  for (size_t i = 0; i < tokens.size(); i += kChunk) {
    size_t n = std::min(kChunk, tokens.size() - i);
    for (size_t k = 0; k < n; ++k) {
      if (tokens[i + k] >= vocab_size) {
        return InvalidArgument(path + ": token " + std::to_string(i + k) + " is " +
                               std::to_string(tokens[i + k]) + ", not below the vocab size " +
                               std::to_string(vocab_size));
      }
    }
    EncodeTokens(tokens.data() + i, n, width, &buf);
    payload_crc = Crc32cExtend(payload_crc, buf.data(), buf.size());
  }

  unsigned char h[kTokenShardHeaderSize] = {};
  std::memcpy(h + kOffMagic, kTokenShardMagic, sizeof(kTokenShardMagic));
  PutU32(h + kOffVersion, kTokenShardVersion);
  PutU32(h + kOffWidth, width);
  PutU64(h + kOffCount, tokens.size());
  PutU32(h + kOffVocab, vocab_size);
  std::memcpy(h + kOffTokenizer, tokenizer.data(), tokenizer.size());
  PutU32(h + kOffPayloadCrc, payload_crc);
  PutU32(h + kOffHeaderCrc, Crc32c(h, kOffHeaderCrc));

  // Pass 2: write.
  ASSIGN_OR_RETURN(storage::AtomicFileWriter writer, storage::AtomicFileWriter::Create(path));
  RETURN_IF_ERROR(writer.Append(h, sizeof(h)));
  for (size_t i = 0; i < tokens.size(); i += kChunk) {
    size_t n = std::min(kChunk, tokens.size() - i);
    EncodeTokens(tokens.data() + i, n, width, &buf);
    RETURN_IF_ERROR(writer.Append(buf.data(), buf.size()));
  }
  return writer.Commit();
}

Result<TokenShardHeader> ReadTokenShardHeader(const storage::ReadableObject& shard) {
  if (shard.size() < kTokenShardHeaderSize) return ShorterThanHeader(shard.uri(), shard.size());
  unsigned char h[kTokenShardHeaderSize];
  RETURN_IF_ERROR(shard.ReadAt(0, h, sizeof h));
  return ParseTokenShardHeader(shard.uri(), h, shard.size());
}

Result<TokenShardHeader> ReadTokenShardHeader(const std::string& path) {
  ASSIGN_OR_RETURN(storage::Storage * store, storage::StorageFor(path));
  ASSIGN_OR_RETURN(std::unique_ptr<storage::ReadableObject> shard, store->OpenForRead(path));
  return ReadTokenShardHeader(*shard);
}

Result<TokenShard> ReadTokenShard(const std::string& path) {
  ASSIGN_OR_RETURN(std::string data, storage::ReadFileToString(path));
  if (data.size() < kTokenShardHeaderSize) return ShorterThanHeader(path, data.size());
  const auto* bytes = reinterpret_cast<const unsigned char*>(data.data());
  TokenShard shard;
  ASSIGN_OR_RETURN(shard.header, ParseTokenShardHeader(path, bytes, data.size()));
  const TokenShardHeader& hdr = shard.header;
  const unsigned char* payload = bytes + kTokenShardHeaderSize;
  const size_t payload_size = data.size() - kTokenShardHeaderSize;
  uint32_t crc = Crc32c(payload, payload_size);
  if (crc != hdr.payload_crc32c) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "stored 0x%08x, computed 0x%08x", hdr.payload_crc32c, crc);
    return DataLoss(path + ": token payload (byte offset 64.." + std::to_string(data.size()) +
                    ") fails its checksum (header byte offset 44): " + buf);
  }
  shard.tokens.resize(hdr.token_count);
  for (uint64_t i = 0; i < hdr.token_count; ++i) {
    const unsigned char* p = payload + i * hdr.token_width;
    uint32_t t = hdr.token_width == 2 ? uint32_t{p[0]} | (uint32_t{p[1]} << 8) : GetU32(p);
    if (t >= hdr.vocab_size) {
      return DataLoss(path + ": byte offset " + std::to_string(kTokenShardHeaderSize + i * hdr.token_width) +
                      ": token " + std::to_string(t) + " not below the vocab size " +
                      std::to_string(hdr.vocab_size));
    }
    shard.tokens[i] = t;
  }
  return shard;
}

}  // namespace cohort::data
