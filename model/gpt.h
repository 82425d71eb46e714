// GPT-2 (fp32, CPU): parameters, forward, backward with gradient accumulation.
//
// Architecture (matches GPT-2 / nanoGPT with bias=True, no dropout): token + position embedding,
// n_layer pre-LN blocks x += attn(ln_1(x)); x += mlp(ln_2(x)) with causal multi-head attention
// and a GELU(tanh) MLP of width 4C, final LayerNorm ln_f, and an output head tied to wte
// (logits = ln_f(x) @ wte^T). LayerNorm eps is 1e-5.
//
// Memory layout: all parameters live in ONE contiguous float buffer, and their gradients in a
// second buffer with the same layout, in layer-major order so one block is contiguous:
//   wte [V,C], wpe [T,C],
//   for each block i: ln_1.weight [C], ln_1.bias [C], attn.c_attn.weight [3C,C],
//     attn.c_attn.bias [3C], attn.c_proj.weight [C,C], attn.c_proj.bias [C], ln_2.weight [C],
//     ln_2.bias [C], mlp.c_fc.weight [4C,C], mlp.c_fc.bias [4C], mlp.c_proj.weight [C,4C],
//     mlp.c_proj.bias [C]   (names prefixed "h.<i>.")
//   ln_f.weight [C], ln_f.bias [C].
// Linear weights are [out, in] like torch.nn.Linear. The tensor table (tensors()) lists every
// tensor's GPT-2 name, offset (in floats), shape and whether AdamW weight decay applies
// (2-D weights: yes; biases and LayerNorm parameters: no).
//
// Thread safety: a Gpt is not thread-safe; use one instance per thread. Different instances may
// run concurrently. Parallelism inside a call follows kernels::SetNumThreads (calling thread).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "model/aligned_buffer.h"

namespace cohort::model {

struct GptConfig {
  int vocab_size = 50257;
  int context_length = 1024;
  int n_layer = 12;
  int n_head = 12;
  int n_embd = 768;

  // OK when all fields are positive, n_embd % n_head == 0, and each is within a sane bound
  // (vocab_size <= 2^22, context_length <= 2^16, n_layer <= 1024, n_head <= 1024,
  // n_embd <= 2^16, parameter count <= 2^34). The message names the offending field.
  Status Validate() const;

  // Number of parameters of this configuration (no validation).
  size_t NumParameters() const;
};

struct TensorInfo {
  std::string name;            // GPT-2 name, e.g. "h.3.attn.c_attn.weight"
  size_t offset = 0;           // into params() / grads(), in floats
  size_t numel = 0;
  std::vector<int64_t> shape;  // e.g. {3C, C}
  bool decay = false;          // AdamW weight decay applies
};

// A range of the parameter (and gradient) buffer, in floats.
struct ParamRange {
  size_t offset = 0;
  size_t size = 0;
};

class Gpt {
 public:
  // Validates the config (InvalidArgument) and allocates parameters and gradients (Internal if
  // that fails); gradients are zeroed, parameters zeroed until InitWeights or a load.
  // Activations are allocated on first use.
  static Result<std::unique_ptr<Gpt>> Create(const GptConfig& config);

  Gpt(const Gpt&) = delete;
  Gpt& operator=(const Gpt&) = delete;

  const GptConfig& config() const { return config_; }

  // GPT-2 initialization: weights ~ N(0, 0.02) except attn.c_proj / mlp.c_proj weights
  // ~ N(0, 0.02 / sqrt(2 * n_layer)); biases 0; LayerNorm weights 1, biases 0. Element k of the
  // buffer is drawn from a counter-based generator keyed by (seed, k) (splitmix64, common/hash.h):
  // the result depends only on the seed and the config, never on the thread count.
  void InitWeights(uint64_t seed);

  // Forward pass over inputs [B,T] (token ids). Returns the mean cross-entropy over the B*T
  // positions against targets [B,T], or NaN when targets is null. Afterwards logits() holds
  // [B,T,V] until the next Forward/ForwardBackward.
  // InvalidArgument when B < 1, T outside [1, context_length], B*T > 2^24, one layer's
  // attention probabilities B*n_head*T*T > 2^34 floats, the logits B*T*vocab_size > 2^34
  // floats, a null input, a token id / target outside [0, vocab_size), or the activation
  // buffers for this (B, T) cannot be allocated (the message names the quantity); the model's
  // parameters and gradients are then unchanged. Validation is one
  // vectorized pass over the ids. Activation buffers grow to the largest (B, T) seen and are
  // reused afterwards (no allocation in steady state).
  Result<float> Forward(const int32_t* inputs, const int32_t* targets, int B, int T);

  // Forward + backward: returns the mean loss L and ACCUMULATES d(L * loss_scale)/d(params)
  // into grads() (use loss_scale = 1/accum_steps for gradient accumulation; call ZeroGrad
  // before the first micro-step). targets must be non-null. Same errors as Forward; on error
  // grads() is unchanged.
  Result<float> ForwardBackward(const int32_t* inputs, const int32_t* targets, int B, int T,
                                float loss_scale = 1.0f);

  // ForwardBackward for a batch in the loader's stored layout (data::Layout::kStoredRows): B rows
  // of T+1 little-endian tokens of `width` bytes (2 or 4) each, row b at rows + b*(T+1)*width;
  // each row's first T tokens are the inputs, its last T the targets. The rows are widened into
  // buffers the model keeps (grown once), then ForwardBackward runs; same errors, plus
  // InvalidArgument for a width other than 2 or 4. Handing the model 2-byte tokens instead of two
  // int32 arrays quarters what the loader writes per token.
  Result<float> ForwardBackwardRows(const unsigned char* rows, int width, int B, int T,
                                    float loss_scale = 1.0f);

  // Sets grads() to zero.
  void ZeroGrad();

  // Called during ForwardBackward on the calling thread: hook(i) for i = n_layer-1 down to 0
  // right after block i's gradients are final, then hook(-1) when the embeddings are final.
  // Invariant: when hook(i) runs, grads()[BlockRange(i).offset, num_parameters()) are final for
  // this micro-step (ln_f lies after the last block); at hook(-1) all of grads() is. The hook
  // must not call back into this Gpt. Pass an empty function to remove it.
  void SetBackwardHook(std::function<void(int block)> hook) { hook_ = std::move(hook); }

  // Parameter buffer range of block i in [0, n_layer); i == -1: the embeddings (wte, wpe);
  // i == n_layer: ln_f.
  ParamRange BlockRange(int block) const;

  size_t num_parameters() const { return num_params_; }
  float* params() { return params_.data(); }
  const float* params() const { return params_.data(); }
  float* grads() { return grads_.data(); }
  const float* grads() const { return grads_.data(); }
  std::span<float> param_span() { return {params_.data(), num_params_}; }
  std::span<float> grad_span() { return {grads_.data(), num_params_}; }

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // nullptr when no tensor has that name.
  const TensorInfo* FindTensor(std::string_view name) const;

  // Logits [B,T,V] of the last forward pass (nullptr before the first).
  const float* logits() const { return logits_; }

  // Bytes currently held by activation and activation-gradient buffers.
  size_t activation_bytes() const {
    return (acts_.size() + grad_acts_.size()) * sizeof(float);
  }

 private:
  // Pointers into a parameter-layout buffer (params or grads) for block i.
  struct BlockParams {
    float *ln1w, *ln1b, *qkvw, *qkvb, *projw, *projb, *ln2w, *ln2b, *fcw, *fcb, *fcprojw,
        *fcprojb;
  };
  // Pointers into the activation buffers for the current (B, T).
  struct Acts;
  struct GradActs;

  explicit Gpt(const GptConfig& config);
  std::vector<int32_t> row_inputs_, row_targets_;  // ForwardBackwardRows' widened batch
  BlockParams Block(float* base, int i) const;
  Status ValidateBatch(const int32_t* inputs, const int32_t* targets, int B, int T,
                       bool need_targets) const;
  Acts LayoutActs(int B, int T, float* base) const;
  GradActs LayoutGradActs(int B, int T, float* base) const;
  void RunForward(const int32_t* inputs, int B, int T, const Acts& a);
  void RunBackward(const int32_t* inputs, int B, int T, const Acts& a, const GradActs& g);

  GptConfig config_;
  std::vector<TensorInfo> tensors_;
  size_t num_params_ = 0;
  size_t block_stride_ = 0;  // floats per block
  AlignedBuffer params_;
  AlignedBuffer grads_;
  AlignedBuffer acts_;       // saved activations, grown to the largest (B, T) seen
  AlignedBuffer grad_acts_;  // activation gradients, allocated on first backward
  const float* logits_ = nullptr;
  std::function<void(int)> hook_;
};

}  // namespace cohort::model
