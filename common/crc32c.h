// CRC32C (Castagnoli), the checksum of every on-disk format in Cohort (token shards, checkpoints).
// Backed by Intel ISA-L's crc32_iscsi (SSE4.2 / PCLMUL when available). Thread-safe, pure.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cohort {

// Extends `crc` (the value returned for the bytes before) over `data`. Crc32c(x, n) with the default
// start equals the standard CRC-32C of the bytes (e.g. "123456789" -> 0xE3069283).
uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t n);
inline uint32_t Crc32c(const void* data, size_t n) { return Crc32cExtend(0, data, n); }

}  // namespace cohort
