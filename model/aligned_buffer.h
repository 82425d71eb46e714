// AlignedBuffer: an owned, 64-byte aligned, uninitialized float array (model parameters,
// gradients, optimizer state, activations). Move-only. Not thread-safe beyond what float* is.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <utility>

namespace cohort::model {

class AlignedBuffer {
 public:
  static constexpr std::align_val_t kAlignment{64};

  AlignedBuffer() = default;
  // Allocates n floats (contents unspecified; pages are not touched until written). Returns
  // false, leaving the buffer empty, when the allocation fails (never throws).
  bool TryAllocate(size_t n) {
    Reset();
    if (n == 0) return true;
    if (n > SIZE_MAX / sizeof(float)) return false;
    data_ = static_cast<float*>(::operator new[](n * sizeof(float), kAlignment, std::nothrow));
    if (data_ == nullptr) return false;
    size_ = n;
    return true;
  }
  ~AlignedBuffer() { Reset(); }
  AlignedBuffer(AlignedBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    if (this != &o) {
      Reset();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  float* data() { return data_; }
  const float* data() const { return data_; }
  size_t size() const { return size_; }

  void Reset() {
    if (data_ != nullptr) ::operator delete[](data_, kAlignment);
    data_ = nullptr;
    size_ = 0;
  }

 private:
  float* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace cohort::model
