#include "common/crc32c.h"

#include <climits>

#include <isa-l/crc.h>

namespace cohort {

uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t n) {
  // ISA-L works on the raw (non-inverted) register and takes an int length: invert around it and
  // feed at most INT_MAX bytes per call so multi-GiB buffers are handled.
  uint32_t reg = ~crc;
  auto* p = static_cast<const unsigned char*>(data);
  while (n > 0) {
    size_t chunk = n > static_cast<size_t>(INT_MAX) ? static_cast<size_t>(1) << 30 : n;
    reg = crc32_iscsi(const_cast<unsigned char*>(p), static_cast<int>(chunk), reg);
    p += chunk;
    n -= chunk;
  }
  return ~reg;
}

}  // namespace cohort
