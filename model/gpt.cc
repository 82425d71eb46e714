#include "model/gpt.h"

#include <endian.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>

#include "common/check.h"
#include "common/hash.h"
#include "kernels/cpu/cpu_kernels.h"

namespace cohort::model {
namespace {

namespace k = ::cohort::kernels;

// Tensors per block, in layout order (see gpt.h).
constexpr int kTensorsPerBlock = 12;
// Every activation sub-buffer starts on a 64-byte boundary.
constexpr size_t kPadFloats = 16;
constexpr size_t Pad(size_t n) { return (n + kPadFloats - 1) / kPadFloats * kPadFloats; }
// Upper bound on B*T (keeps every row index and GEMM dimension comfortably inside int).
constexpr int64_t kMaxPositions = int64_t{1} << 24;
// Upper bounds on the two buffers that grow fastest with the batch: one layer's attention
// probabilities B*n_head*T*T and the logits B*T*vocab_size (each also has a gradient buffer of
// the same size). 2^34 floats is 64 GiB; with n_layer <= 1024 and the other per-layer buffers
// bounded by B*T*4C <= 2^42, the activation total stays far below 2^64 bytes, so the size_t
// arithmetic in LayoutActs cannot wrap, and a request beyond these is a configuration mistake
// that is reported by name instead of surfacing as an allocation failure (or an OOM kill).
constexpr int64_t kMaxAttentionElems = int64_t{1} << 34;
constexpr int64_t kMaxLogitsElems = int64_t{1} << 34;

// Standard normal for counter `index` under `seed`: Box-Muller on the two 32-bit halves of one
// splitmix64 output, each mapped to a uniform in (0, 1). Element `index` is output index + 1 of
// the splitmix64 stream keyed by a hash of (seed ^ a constant), so the weights do not share a
// stream with other users of the same seed (e.g. the data order).
inline double NormalAt(uint64_t seed, uint64_t index) {
  const uint64_t r = HashCombine(SplitMix64(seed ^ 0x5DEECE66DULL), index);
  const double u1 = (static_cast<double>(r >> 32) + 0.5) * 0x1p-32;
  const double u2 = (static_cast<double>(r & 0xFFFFFFFFULL) + 0.5) * 0x1p-32;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Grows `buf` to at least n floats. The new buffer is allocated before the old one is released,
// so a failure (an absurd B*T) leaves everything, including logits(), as it was.
Status EnsureCapacity(AlignedBuffer& buf, size_t n, const char* what, int B, int T) {
  if (buf.size() >= n) return Status::Ok();
  AlignedBuffer bigger;
  if (!bigger.TryAllocate(n)) {
    return InvalidArgument("B = " + std::to_string(B) + ", T = " + std::to_string(T) +
                           ": cannot allocate " + std::to_string(n * sizeof(float) >> 20) +
                           " MiB of " + what);
  }
  buf = std::move(bigger);
  return Status::Ok();
}

}  // namespace

// ---- config ----------------------------------------------------------------------------------

size_t GptConfig::NumParameters() const {
  const size_t V = vocab_size, T = context_length, L = n_layer, C = n_embd;
  const size_t per_block = 2 * C + 3 * C * C + 3 * C + C * C + C + 2 * C + 4 * C * C + 4 * C +
                           4 * C * C + C;
  return V * C + T * C + L * per_block + 2 * C;
}

Status GptConfig::Validate() const {
  auto check = [](const char* field, long v, long max) -> Status {
    if (v < 1 || v > max) {
      return InvalidArgument("GptConfig." + std::string(field) + " = " + std::to_string(v) +
                             ": must be in [1, " + std::to_string(max) + "]");
    }
    return Status::Ok();
  };
  RETURN_IF_ERROR(check("vocab_size", vocab_size, 1L << 22));
  RETURN_IF_ERROR(check("context_length", context_length, 1L << 16));
  RETURN_IF_ERROR(check("n_layer", n_layer, 1024));
  RETURN_IF_ERROR(check("n_head", n_head, 1024));
  RETURN_IF_ERROR(check("n_embd", n_embd, 1L << 16));
  if (n_embd % n_head != 0) {
    return InvalidArgument("GptConfig.n_embd = " + std::to_string(n_embd) +
                           " is not divisible by n_head = " + std::to_string(n_head));
  }
  if (NumParameters() > (size_t{1} << 34)) {
    return InvalidArgument("GptConfig: " + std::to_string(NumParameters()) +
                           " parameters exceed the limit of 2^34");
  }
  return Status::Ok();
}

// ---- construction ----------------------------------------------------------------------------

Result<std::unique_ptr<Gpt>> Gpt::Create(const GptConfig& config) {
  RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<Gpt> gpt(new Gpt(config));
  const size_t n = gpt->num_params_;
  if (!gpt->params_.TryAllocate(n) || !gpt->grads_.TryAllocate(n)) {
    return Internal("GptConfig: cannot allocate " + std::to_string(2 * n * sizeof(float) >> 20) +
                    " MiB for parameters and gradients");
  }
  kernels::Fill(gpt->params_.data(), n, 0.0f);
  kernels::Fill(gpt->grads_.data(), n, 0.0f);
  return gpt;
}

Gpt::Gpt(const GptConfig& config) : config_(config) {
  const int64_t V = config.vocab_size, T = config.context_length, C = config.n_embd;
  size_t offset = 0;
  auto add = [&](std::string name, std::vector<int64_t> shape, bool decay) {
    size_t numel = 1;
    for (int64_t d : shape) numel *= static_cast<size_t>(d);
    tensors_.push_back(TensorInfo{std::move(name), offset, numel, std::move(shape), decay});
    offset += numel;
  };
  add("wte.weight", {V, C}, true);
  add("wpe.weight", {T, C}, true);
  for (int i = 0; i < config.n_layer; ++i) {
    const std::string p = "h." + std::to_string(i) + ".";
    const size_t block_start = offset;
    add(p + "ln_1.weight", {C}, false);
    add(p + "ln_1.bias", {C}, false);
    add(p + "attn.c_attn.weight", {3 * C, C}, true);
    add(p + "attn.c_attn.bias", {3 * C}, false);
    add(p + "attn.c_proj.weight", {C, C}, true);
    add(p + "attn.c_proj.bias", {C}, false);
    add(p + "ln_2.weight", {C}, false);
    add(p + "ln_2.bias", {C}, false);
    add(p + "mlp.c_fc.weight", {4 * C, C}, true);
    add(p + "mlp.c_fc.bias", {4 * C}, false);
    add(p + "mlp.c_proj.weight", {C, 4 * C}, true);
    add(p + "mlp.c_proj.bias", {C}, false);
    block_stride_ = offset - block_start;
  }
  add("ln_f.weight", {C}, false);
  add("ln_f.bias", {C}, false);
  num_params_ = offset;
  COHORT_CHECK(num_params_ == config.NumParameters()) << num_params_;
}

const TensorInfo* Gpt::FindTensor(std::string_view name) const {
  for (const TensorInfo& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

ParamRange Gpt::BlockRange(int block) const {
  const size_t C = config_.n_embd;
  const size_t emb = (static_cast<size_t>(config_.vocab_size) + config_.context_length) * C;
  COHORT_CHECK(block >= -1 && block <= config_.n_layer) << "block " << block;
  if (block == -1) return {0, emb};
  if (block == config_.n_layer) return {emb + block * block_stride_, 2 * C};
  return {emb + block * block_stride_, block_stride_};
}

Gpt::BlockParams Gpt::Block(float* base, int i) const {
  const TensorInfo* t = &tensors_[2 + static_cast<size_t>(i) * kTensorsPerBlock];
  auto at = [&](int j) { return base + t[j].offset; };
  return BlockParams{at(0), at(1), at(2), at(3), at(4),  at(5),
                     at(6), at(7), at(8), at(9), at(10), at(11)};
}

void Gpt::InitWeights(uint64_t seed) {
  const double proj_std = 0.02 / std::sqrt(2.0 * config_.n_layer);
  float* p = params_.data();
  for (const TensorInfo& t : tensors_) {
    float* dst = p + t.offset;
    const long n = static_cast<long>(t.numel);
    if (t.shape.size() == 1) {
      // LayerNorm weights start at 1; LayerNorm biases and linear biases at 0.
      const bool ln_weight = EndsWith(t.name, "ln_1.weight") || EndsWith(t.name, "ln_2.weight") ||
                             t.name == "ln_f.weight";
      k::Fill(dst, t.numel, ln_weight ? 1.0f : 0.0f);
      continue;
    }
    const bool is_proj = EndsWith(t.name, "c_proj.weight");
    const double std_dev = is_proj ? proj_std : 0.02;
    const uint64_t base = t.offset;
#pragma omp parallel for schedule(static) if (n >= (1 << 14))
    for (long i = 0; i < n; ++i) {
      dst[i] = static_cast<float>(std_dev * NormalAt(seed, base + static_cast<uint64_t>(i)));
    }
  }
}

void Gpt::ZeroGrad() { k::Fill(grads_.data(), num_params_, 0.0f); }

// ---- activation buffers ----------------------------------------------------------------------

struct Gpt::Acts {
  float* x = nullptr;      // [L+1, BT, C] residual stream entering block l (x[L]: final)
  float* xmid = nullptr;   // [L, BT, C] residual after attention
  float* ln1 = nullptr;    // [L, BT, C]
  float* mean1 = nullptr;  // [L, BT]
  float* rstd1 = nullptr;  // [L, BT]
  float* qkv = nullptr;    // [L, BT, 3C]
  float* att = nullptr;    // [L, B, NH, T, T] attention probabilities
  float* atty = nullptr;   // [L, BT, C] attention output, heads merged
  float* ln2 = nullptr;    // [L, BT, C]
  float* mean2 = nullptr;  // [L, BT]
  float* rstd2 = nullptr;  // [L, BT]
  float* fch = nullptr;    // [L, BT, 4C] GELU input (bias added)
  float* fchg = nullptr;   // [L, BT, 4C] GELU output
  float* lnf = nullptr;    // [BT, C]
  float* lnf_mean = nullptr;
  float* lnf_rstd = nullptr;
  float* logits = nullptr;  // [BT, V]
  float* losses = nullptr;  // [BT]
  size_t total = 0;         // floats
};

struct Gpt::GradActs {
  float* dlogits = nullptr;  // [BT, V]
  float* dres = nullptr;     // [BT, C] gradient of the residual stream
  float* dsmall = nullptr;   // [BT, C] LayerNorm-output / attention-output gradients
  float* dbig = nullptr;     // [BT, 4C] MLP hidden / qkv gradients
  float* datt = nullptr;     // [B, NH, T, T]
  size_t total = 0;
};

// With base == nullptr only `total` is meaningful (sizing pass).
Gpt::Acts Gpt::LayoutActs(int B, int T, float* base) const {
  const size_t BT = static_cast<size_t>(B) * T, C = config_.n_embd, L = config_.n_layer;
  const size_t V = config_.vocab_size, NH = config_.n_head;
  Acts a;
  size_t off = 0;
  auto take = [&](size_t n) {
    float* p = base ? base + off : nullptr;
    off += Pad(n);
    return p;
  };
  a.x = take((L + 1) * BT * C);
  a.xmid = take(L * BT * C);
  a.ln1 = take(L * BT * C);
  a.mean1 = take(L * BT);
  a.rstd1 = take(L * BT);
  a.qkv = take(L * BT * 3 * C);
  a.att = take(L * B * NH * T * T);
  a.atty = take(L * BT * C);
  a.ln2 = take(L * BT * C);
  a.mean2 = take(L * BT);
  a.rstd2 = take(L * BT);
  a.fch = take(L * BT * 4 * C);
  a.fchg = take(L * BT * 4 * C);
  a.lnf = take(BT * C);
  a.lnf_mean = take(BT);
  a.lnf_rstd = take(BT);
  a.logits = take(BT * V);
  a.losses = take(BT);
  a.total = off;
  return a;
}

Gpt::GradActs Gpt::LayoutGradActs(int B, int T, float* base) const {
  const size_t BT = static_cast<size_t>(B) * T, C = config_.n_embd;
  const size_t V = config_.vocab_size, NH = config_.n_head;
  GradActs g;
  size_t off = 0;
  auto take = [&](size_t n) {
    float* p = base ? base + off : nullptr;
    off += Pad(n);
    return p;
  };
  g.dlogits = take(BT * V);
  g.dres = take(BT * C);
  g.dsmall = take(BT * C);
  g.dbig = take(BT * 4 * C);
  g.datt = take(static_cast<size_t>(B) * NH * T * T);
  g.total = off;
  return g;
}

// ---- validation ------------------------------------------------------------------------------

Status Gpt::ValidateBatch(const int32_t* inputs, const int32_t* targets, int B, int T,
                          bool need_targets) const {
  if (B < 1) return InvalidArgument("batch size B = " + std::to_string(B) + " must be >= 1");
  if (T < 1 || T > config_.context_length) {
    return InvalidArgument("sequence length T = " + std::to_string(T) + " must be in [1, " +
                           std::to_string(config_.context_length) + "]");
  }
  // B < 2^31, T <= 2^16, n_head <= 1024, vocab_size <= 2^22 (config validated), so none of
  // these 64-bit products can overflow.
  const int64_t positions = static_cast<int64_t>(B) * T;
  if (positions > kMaxPositions) {
    return InvalidArgument("B*T = " + std::to_string(positions) +
                           " exceeds the limit of 2^24 positions");
  }
  const int64_t attention = positions * config_.n_head * T;
  if (attention > kMaxAttentionElems) {
    return InvalidArgument("attention buffer B*n_head*T*T = " + std::to_string(B) + "*" +
                           std::to_string(config_.n_head) + "*" + std::to_string(T) + "*" +
                           std::to_string(T) + " = " + std::to_string(attention) +
                           " floats per layer exceeds the limit of 2^34; reduce B or T");
  }
  const int64_t logits = positions * config_.vocab_size;
  if (logits > kMaxLogitsElems) {
    return InvalidArgument("logits buffer B*T*vocab_size = " + std::to_string(positions) + "*" +
                           std::to_string(config_.vocab_size) + " = " + std::to_string(logits) +
                           " floats exceeds the limit of 2^34; reduce B or T");
  }
  if (inputs == nullptr) return InvalidArgument("inputs is null");
  if (need_targets && targets == nullptr) return InvalidArgument("targets is null");
  const size_t n = static_cast<size_t>(B) * T;
  const uint32_t V = static_cast<uint32_t>(config_.vocab_size);
  // One branch-free, vectorizable pass per array (negative ids wrap to huge unsigned values);
  // the slow search for the culprit only runs on failure.
  auto scan = [&](const int32_t* ids, const char* what) -> Status {
    uint32_t bad = 0;
    for (size_t i = 0; i < n; ++i) bad |= static_cast<uint32_t>(static_cast<uint32_t>(ids[i]) >= V);
    if (bad == 0) return Status::Ok();
    for (size_t i = 0; i < n; ++i) {
      if (static_cast<uint32_t>(ids[i]) >= V) {
        return InvalidArgument(std::string(what) + "[" + std::to_string(i) + "] = " +
                               std::to_string(ids[i]) + " is outside [0, vocab_size = " +
                               std::to_string(V) + ")");
      }
    }
    return Status::Ok();
  };
  RETURN_IF_ERROR(scan(inputs, "inputs"));
  if (targets != nullptr) RETURN_IF_ERROR(scan(targets, "targets"));
  return Status::Ok();
}

// ---- forward / backward ----------------------------------------------------------------------

Result<float> Gpt::Forward(const int32_t* inputs, const int32_t* targets, int B, int T) {
  RETURN_IF_ERROR(ValidateBatch(inputs, targets, B, T, /*need_targets=*/false));
  RETURN_IF_ERROR(EnsureCapacity(acts_, LayoutActs(B, T, nullptr).total, "activations", B, T));
  const Acts a = LayoutActs(B, T, acts_.data());
  RunForward(inputs, B, T, a);
  if (targets == nullptr) return std::numeric_limits<float>::quiet_NaN();
  const int N = B * T;
  k::CrossEntropyForward(a.losses, a.logits, targets, N, config_.vocab_size);
  double sum = 0.0;
  for (int n = 0; n < N; ++n) sum += a.losses[n];
  return static_cast<float>(sum / N);
}

Result<float> Gpt::ForwardBackward(const int32_t* inputs, const int32_t* targets, int B, int T,
                                   float loss_scale) {
  RETURN_IF_ERROR(ValidateBatch(inputs, targets, B, T, /*need_targets=*/true));
  // Gradient buffers first: if the activations then fail to grow, logits() is still intact.
  RETURN_IF_ERROR(EnsureCapacity(grad_acts_, LayoutGradActs(B, T, nullptr).total,
                                 "activation gradients", B, T));
  RETURN_IF_ERROR(EnsureCapacity(acts_, LayoutActs(B, T, nullptr).total, "activations", B, T));
  const Acts a = LayoutActs(B, T, acts_.data());
  const GradActs g = LayoutGradActs(B, T, grad_acts_.data());
  RunForward(inputs, B, T, a);
  const int N = B * T;
  // Gradient of mean(losses) * loss_scale w.r.t. each logit row.
  k::CrossEntropyForwardBackward(a.losses, g.dlogits, a.logits, targets, N, config_.vocab_size,
                                 loss_scale / static_cast<float>(N));
  double sum = 0.0;
  for (int n = 0; n < N; ++n) sum += a.losses[n];
  RunBackward(inputs, B, T, a, g);
  return static_cast<float>(sum / N);
}

namespace {

// One stored row (T+1 little-endian tokens of sizeof(Word) bytes) into T inputs and T targets.
template <typename Word>
void WidenRow(const unsigned char* row, int T, int32_t* __restrict in, int32_t* __restrict tg) {
  auto load = [row](int t) {
    Word w;
    std::memcpy(&w, row + sizeof(Word) * static_cast<size_t>(t), sizeof(Word));
    if constexpr (sizeof(Word) == 2) {
      return static_cast<int32_t>(le16toh(w));
    } else {
      return static_cast<int32_t>(le32toh(w));
    }
  };
  for (int t = 0; t < T; ++t) {
    in[t] = load(t);
    tg[t] = load(t + 1);
  }
}

}  // namespace

Result<float> Gpt::ForwardBackwardRows(const unsigned char* rows, int width, int B, int T,
                                       float loss_scale) {
  if (width != 2 && width != 4) {
    return InvalidArgument("token width " + std::to_string(width) + " bytes (must be 2 or 4)");
  }
  if (rows == nullptr) return InvalidArgument("rows is null");
  if (B < 1 || T < 1 || T > config_.context_length || static_cast<int64_t>(B) * T > kMaxPositions) {
    return ForwardBackward(nullptr, nullptr, B, T, loss_scale);  // the usual message for B and T
  }
  const size_t n = static_cast<size_t>(B) * static_cast<size_t>(T);
  if (row_inputs_.size() < n) {
    row_inputs_.resize(n);
    row_targets_.resize(n);
  }
  const size_t row_bytes = (static_cast<size_t>(T) + 1) * static_cast<size_t>(width);
  for (int b = 0; b < B; ++b) {
    const unsigned char* r = rows + static_cast<size_t>(b) * row_bytes;
    int32_t* __restrict in = row_inputs_.data() + static_cast<size_t>(b) * T;
    int32_t* __restrict tg = row_targets_.data() + static_cast<size_t>(b) * T;
    if (width == 2) {
      WidenRow<uint16_t>(r, T, in, tg);
    } else {
      WidenRow<uint32_t>(r, T, in, tg);
    }
  }
  return ForwardBackward(row_inputs_.data(), row_targets_.data(), B, T, loss_scale);
}

void Gpt::RunForward(const int32_t* inputs, int B, int T, const Acts& a) {
  const int L = config_.n_layer, C = config_.n_embd, NH = config_.n_head;
  const int V = config_.vocab_size;
  const int N = B * T;
  const size_t NC = static_cast<size_t>(N) * C;
  float* p = params_.data();
  const float* wte = p + tensors_[0].offset;
  const float* wpe = p + tensors_[1].offset;

  k::EmbeddingForward(a.x, inputs, wte, wpe, B, T, C);
  for (int l = 0; l < L; ++l) {
    const BlockParams w = Block(p, l);
    const float* x = a.x + l * NC;
    float* xmid = a.xmid + l * NC;
    float* ln1 = a.ln1 + l * NC;
    float* qkv = a.qkv + l * 3 * NC;
    float* att = a.att + static_cast<size_t>(l) * B * NH * T * T;
    float* atty = a.atty + l * NC;
    float* ln2 = a.ln2 + l * NC;
    float* fch = a.fch + l * 4 * NC;
    float* fchg = a.fchg + l * 4 * NC;
    float* x_next = a.x + (l + 1) * NC;
    const size_t lN = static_cast<size_t>(l) * N;

    k::LayerNormForward(ln1, a.mean1 + lN, a.rstd1 + lN, x, w.ln1w, w.ln1b, N, C);
    k::LinearForward(qkv, ln1, w.qkvw, w.qkvb, nullptr, N, C, 3 * C);
    k::AttentionForward(atty, att, qkv, B, T, C, NH);
    // The projection is written straight into the residual stream: xmid = x + atty @ W^T + b.
    k::LinearForward(xmid, atty, w.projw, w.projb, x, N, C, C);
    k::LayerNormForward(ln2, a.mean2 + lN, a.rstd2 + lN, xmid, w.ln2w, w.ln2b, N, C);
    k::LinearForward(fch, ln2, w.fcw, nullptr, nullptr, N, C, 4 * C);
    k::BiasGeluForward(fchg, fch, w.fcb, N, 4 * C);
    k::LinearForward(x_next, fchg, w.fcprojw, w.fcprojb, xmid, N, 4 * C, C);
  }
  const TensorInfo& lnfw = tensors_[tensors_.size() - 2];
  const TensorInfo& lnfb = tensors_[tensors_.size() - 1];
  k::LayerNormForward(a.lnf, a.lnf_mean, a.lnf_rstd, a.x + L * NC, p + lnfw.offset,
                      p + lnfb.offset, N, C);
  k::LinearForward(a.logits, a.lnf, wte, nullptr, nullptr, N, C, V);
  logits_ = a.logits;
}

void Gpt::RunBackward(const int32_t* inputs, int B, int T, const Acts& a, const GradActs& g) {
  const int L = config_.n_layer, C = config_.n_embd, NH = config_.n_head;
  const int V = config_.vocab_size;
  const int N = B * T;
  const size_t NC = static_cast<size_t>(N) * C;
  float* p = params_.data();
  float* d = grads_.data();
  const float* wte = p + tensors_[0].offset;
  float* dwte = d + tensors_[0].offset;
  float* dwpe = d + tensors_[1].offset;
  const TensorInfo& lnfw = tensors_[tensors_.size() - 2];
  const TensorInfo& lnfb = tensors_[tensors_.size() - 1];

  // Tied head: dwte += dlogits^T @ lnf; dlnf = dlogits @ wte.
  k::LinearBackward(g.dsmall, dwte, nullptr, g.dlogits, a.lnf, wte, N, C, V);
  k::Fill(g.dres, NC, 0.0f);
  k::LayerNormBackward(g.dres, d + lnfw.offset, d + lnfb.offset, g.dsmall, a.x + L * NC,
                       p + lnfw.offset, a.lnf_mean, a.lnf_rstd, N, C);

  for (int l = L - 1; l >= 0; --l) {
    const BlockParams w = Block(p, l);
    const BlockParams dw = Block(d, l);
    const float* x = a.x + l * NC;
    const float* xmid = a.xmid + l * NC;
    const float* ln1 = a.ln1 + l * NC;
    const float* qkv = a.qkv + l * 3 * NC;
    const float* att = a.att + static_cast<size_t>(l) * B * NH * T * T;
    const float* atty = a.atty + l * NC;
    const float* ln2 = a.ln2 + l * NC;
    const float* fch = a.fch + l * 4 * NC;
    const float* fchg = a.fchg + l * 4 * NC;
    const size_t lN = static_cast<size_t>(l) * N;

    // g.dres holds dL/dx_{l+1}; it flows unchanged through both residual adds, and the two
    // LayerNorm backward passes add their branch's contribution into it.
    k::LinearBackward(g.dbig, dw.fcprojw, dw.fcprojb, g.dres, fchg, w.fcprojw, N, 4 * C, C);
    k::BiasGeluBackward(g.dbig, dw.fcb, g.dbig, fch, N, 4 * C);
    k::LinearBackward(g.dsmall, dw.fcw, nullptr, g.dbig, ln2, w.fcw, N, C, 4 * C);
    k::LayerNormBackward(g.dres, dw.ln2w, dw.ln2b, g.dsmall, xmid, w.ln2w, a.mean2 + lN,
                         a.rstd2 + lN, N, C);
    k::LinearBackward(g.dsmall, dw.projw, dw.projb, g.dres, atty, w.projw, N, C, C);
    k::AttentionBackward(g.dbig, g.datt, g.dsmall, qkv, att, B, T, C, NH);
    k::LinearBackward(g.dsmall, dw.qkvw, dw.qkvb, g.dbig, ln1, w.qkvw, N, C, 3 * C);
    k::LayerNormBackward(g.dres, dw.ln1w, dw.ln1b, g.dsmall, x, w.ln1w, a.mean1 + lN,
                         a.rstd1 + lN, N, C);
    if (hook_) hook_(l);
  }
  k::EmbeddingBackward(dwte, dwpe, g.dres, inputs, B, T, C);
  if (hook_) hook_(-1);
}

}  // namespace cohort::model
