#include "common/config.h"

#include <sys/stat.h>

#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <vector>

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

namespace cohort::config {
namespace {

// ---- pass 1: bound the raw document before building a node tree ---------------------------
//
// yaml-cpp builds aliases as shared nodes, so an alias flood is cheap to parse but explodes when
// walked; deep nesting recurses. Counting events first keeps both bounded no matter what the
// document contains, and we never build a tree for a document that breaks a limit.
struct LimitExceeded {
  std::string message;
};

class LimitChecker : public YAML::EventHandler {
 public:
  explicit LimitChecker(const Limits& limits) : limits_(limits) {}

  void OnDocumentStart(const YAML::Mark&) override { ++documents_; }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& m, YAML::anchor_t) override { Node(m); }
  void OnAlias(const YAML::Mark& m, YAML::anchor_t) override {
    Node(m);
    if (++aliases_ > limits_.max_aliases) {
      Fail(m, "more than " + std::to_string(limits_.max_aliases) + " aliases (limit max_aliases)");
    }
  }
  void OnScalar(const YAML::Mark& m, const std::string&, YAML::anchor_t,
                const std::string&) override {
    Node(m);
  }
  void OnSequenceStart(const YAML::Mark& m, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {
    Open(m);
  }
  void OnSequenceEnd() override { --depth_; }
  void OnMapStart(const YAML::Mark& m, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {
    Open(m);
  }
  void OnMapEnd() override { --depth_; }

  int documents() const { return documents_; }

 private:
  void Node(const YAML::Mark& m) {
    if (++nodes_ > limits_.max_nodes) {
      Fail(m, "more than " + std::to_string(limits_.max_nodes) + " nodes (limit max_nodes)");
    }
  }
  void Open(const YAML::Mark& m) {
    Node(m);
    if (++depth_ > limits_.max_depth) {
      Fail(m, "nesting deeper than " + std::to_string(limits_.max_depth) + " (limit max_depth)");
    }
  }
  [[noreturn]] void Fail(const YAML::Mark& m, const std::string& what) {
    throw LimitExceeded{"line " + std::to_string(m.line + 1) + ", column " +
                        std::to_string(m.column + 1) + ": " + what};
  }

  const Limits& limits_;
  int documents_ = 0;
  int nodes_ = 0;
  int depth_ = 0;
  int aliases_ = 0;
};

std::string Where(const YAML::Node& n) {
  YAML::Mark m = n.Mark();
  if (m.is_null()) return "";
  return " (line " + std::to_string(m.line + 1) + ", column " + std::to_string(m.column + 1) + ")";
}

std::string Describe(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null: return "null";
    case YAML::NodeType::Sequence: return "a sequence";
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Scalar: {
      std::string s = n.Scalar();
      if (s.size() > 40) s = s.substr(0, 40) + "...";
      return "'" + s + "'";
    }
    default: return "an undefined value";
  }
}

template <typename T>
std::string Num(T v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// ---- pass 2: typed, validated reading --------------------------------------------------------
//
// Errors are collected in a Status as soon as the first one is found; the reader keeps the key
// path so messages say "optimizer.lr" rather than "lr".
class Reader {
 public:
  // `overridden` maps a key path set by an override to the override's text.
  Reader(std::string source, std::map<std::string, std::string> overridden)
      : source_(std::move(source)), overridden_(std::move(overridden)) {}

  // Where the value at `path` came from: " (line L, column C)", " (from override 'k=v')" or "".
  std::string Location(const std::string& path) const {
    auto it = locations_.find(path);
    return it == locations_.end() ? "" : it->second;
  }

  const Status& status() const { return status_; }

  // Reads mapping `node` at `path` (empty for the root); `fields` maps each known key to a parser.
  // Unknown or duplicated keys and non-scalar keys are errors.
  void Section(const YAML::Node& node, const std::string& path,
               const std::vector<std::pair<std::string,
                                           std::function<void(const YAML::Node&, const std::string&)>>>&
                   fields) {
    if (!status_.ok() || !node.IsDefined() || node.IsNull()) return;
    if (!node.IsMap()) {
      Error(node, path.empty() ? std::string("document") : path,
            "expected a mapping, got " + Describe(node));
      return;
    }
    std::set<std::string> seen;
    for (const auto& kv : node) {
      if (!status_.ok()) return;
      if (!kv.first.IsScalar()) {
        Error(kv.first, path, "keys must be plain strings, got " + Describe(kv.first));
        return;
      }
      const std::string key = kv.first.Scalar();
      const std::string full = path.empty() ? key : path + "." + key;
      if (!seen.insert(key).second) {
        Error(kv.first, full, "duplicate key");
        return;
      }
      bool known = false;
      for (const auto& [name, parse] : fields) {
        if (name == key) {
          known = true;
          locations_[full] = LocationOf(kv.second, full);
          parse(kv.second, full);
          break;
        }
      }
      if (!known) {
        std::string allowed;
        for (const auto& f : fields) allowed += (allowed.empty() ? "" : ", ") + f.first;
        Error(kv.first, full, "unknown key (allowed here: " + allowed + ")");
        return;
      }
    }
  }

  template <typename T>
  void Int(const YAML::Node& n, const std::string& path, T* out, T lo, T hi) {
    if (!status_.ok()) return;
    T v{};
    if (!n.IsScalar() || !ConvertInt(n.Scalar(), &v)) {
      Error(n, path, "expected an integer in [" + Num(lo) + ", " + Num(hi) + "], got " + Describe(n));
      return;
    }
    if (v < lo || v > hi) {
      Error(n, path, "value " + Num(v) + " is out of range [" + Num(lo) + ", " + Num(hi) + "]");
      return;
    }
    *out = v;
  }

  void Real(const YAML::Node& n, const std::string& path, double* out, double lo, double hi,
            bool lo_open = false) {
    if (!status_.ok()) return;
    std::string range = std::string(lo_open ? "(" : "[") + Num(lo) + ", " + Num(hi) + "]";
    double v = 0;
    if (!n.IsScalar() || !ConvertReal(n.Scalar(), &v)) {
      Error(n, path, "expected a number in " + range + ", got " + Describe(n));
      return;
    }
    if (!std::isfinite(v) || v < lo || v > hi || (lo_open && v == lo)) {
      Error(n, path, "value " + Num(v) + " is out of range " + range);
      return;
    }
    *out = v;
  }

  void String(const YAML::Node& n, const std::string& path, std::string* out, size_t max_len = 4096) {
    if (!status_.ok()) return;
    if (!n.IsScalar()) {
      Error(n, path, "expected a string, got " + Describe(n));
      return;
    }
    if (n.Scalar().size() > max_len) {
      Error(n, path, "string longer than " + std::to_string(max_len) + " bytes");
      return;
    }
    if (n.Scalar().find('\0') != std::string::npos) {
      Error(n, path, "string contains a NUL byte");
      return;
    }
    *out = n.Scalar();
  }

  // A command: a string (run by /bin/sh -c) or a non-empty list of strings (the argv).
  void Command(const YAML::Node& n, const std::string& path, std::vector<std::string>* out) {
    if (!status_.ok()) return;
    std::vector<std::string> argv;
    if (n.IsScalar()) {
      std::string line;
      String(n, path, &line, 65536);
      if (!status_.ok()) return;
      if (line.empty()) {
        Error(n, path, "empty command");
        return;
      }
      argv = {"/bin/sh", "-c", line};
    } else if (n.IsSequence()) {
      if (n.size() == 0 || n.size() > 4096) {
        Error(n, path, "expected 1 to 4096 arguments, got " + std::to_string(n.size()));
        return;
      }
      for (size_t i = 0; i < n.size() && status_.ok(); ++i) {
        std::string arg;
        String(n[i], path + "[" + std::to_string(i) + "]", &arg, 65536);
        argv.push_back(arg);
      }
      if (!status_.ok()) return;
      if (argv[0].empty()) {
        Error(n, path + "[0]", "the program is empty");
        return;
      }
    } else {
      Error(n, path, "expected a string or a list of strings, got " + Describe(n));
      return;
    }
    *out = std::move(argv);
  }

  void Enum(const YAML::Node& n, const std::string& path, std::string* out,
            const std::vector<std::string>& allowed) {
    if (!status_.ok()) return;
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : " | ") + a;
    if (!n.IsScalar()) {
      Error(n, path, "expected one of " + list + ", got " + Describe(n));
      return;
    }
    for (const auto& a : allowed) {
      if (n.Scalar() == a) {
        *out = a;
        return;
      }
    }
    Error(n, path, "expected one of " + list + ", got " + Describe(n));
  }

  void Error(const YAML::Node& n, const std::string& path, const std::string& what) {
    if (!status_.ok()) return;
    status_ = InvalidArgument(source_ + ": " + path + ": " + what + LocationOf(n, path));
  }
  void ErrorAt(const std::string& path, const std::string& what) {
    if (!status_.ok()) return;
    status_ = InvalidArgument(source_ + ": " + path + ": " + what);
  }

 private:
  template <typename T>
  static bool ConvertInt(const std::string& s, T* out) {
    if (s.empty()) return false;
    // Plain decimal only (with optional sign): "1e3", "0x10" or "1_000" in a step count is more
    // likely a mistake than an intent.
    size_t i = (s[0] == '-' || s[0] == '+') ? 1 : 0;
    if (i == s.size()) return false;
    for (size_t j = i; j < s.size(); ++j) {
      if (s[j] < '0' || s[j] > '9') return false;
    }
    errno = 0;
    char* end = nullptr;
    if constexpr (std::is_signed_v<T>) {
      long long v = std::strtoll(s.c_str(), &end, 10);
      if (errno == ERANGE || v < std::numeric_limits<T>::min() || v > std::numeric_limits<T>::max()) {
        return false;
      }
      *out = static_cast<T>(v);
    } else {
      if (s[0] == '-') return false;
      unsigned long long v = std::strtoull(s.c_str(), &end, 10);
      if (errno == ERANGE || v > std::numeric_limits<T>::max()) return false;
      *out = static_cast<T>(v);
    }
    return true;
  }

  static bool ConvertReal(const std::string& s, double* out) {
    if (s.empty()) return false;
    errno = 0;
    char* end = nullptr;
    double v = std::strtod(s.c_str(), &end);
    if (end != s.c_str() + s.size() || errno == ERANGE) return false;
    // strtod accepts "inf", "nan" and hex floats: none is a sensible hyperparameter.
    for (char c : s) {
      if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == 'e' || c == 'E' ||
            c == '-' || c == '+')) {
        return false;
      }
    }
    *out = v;
    return true;
  }

  // Overridden values were parsed from the override text, so their marks point into it: name the
  // override instead.
  std::string LocationOf(const YAML::Node& n, const std::string& path) const {
    auto it = overridden_.find(path);
    if (it != overridden_.end()) return " (from override '" + it->second + "')";
    return Where(n);
  }

  std::string source_;
  std::map<std::string, std::string> overridden_;
  std::map<std::string, std::string> locations_;
  Status status_;
};

using Fields =
    std::vector<std::pair<std::string, std::function<void(const YAML::Node&, const std::string&)>>>;

constexpr int64_t kMaxSteps = 1'000'000'000'000;
constexpr int64_t kMaxBatchTokens = int64_t{1} << 24;  // the model's limit on B*T

Status Validate(const JobSpec& s, std::string_view source, const Reader& r) {
  auto err = [&](const std::string& path, const std::string& what) {
    return InvalidArgument(std::string(source) + ": " + path + ": " + what + r.Location(path));
  };
  if (s.model.n_embd % s.model.n_head != 0) {
    return err("model.n_embd", "n_embd (" + std::to_string(s.model.n_embd) +
                                   ") must be divisible by model.n_head (" +
                                   std::to_string(s.model.n_head) + ")");
  }
  if (s.data.seq_len > s.model.context_length) {
    return err("data.seq_len", "seq_len (" + std::to_string(s.data.seq_len) +
                                   ") must not exceed model.context_length (" +
                                   std::to_string(s.model.context_length) + ")");
  }
  if (s.data.train.empty() && s.command.empty()) {
    return err("data.train", "required: path or glob of training shards (or a command: to run instead)");
  }
  if (s.data.hdf5_dataset.empty()) return err("data.hdf5_dataset", "must not be empty");
  const int64_t tokens = int64_t{s.data.batch_size} * s.effective_seq_len();
  if (tokens > kMaxBatchTokens) {
    return err("data.batch_size", "batch_size * seq_len = " + std::to_string(tokens) +
                                      " tokens per micro-batch, over the limit of " +
                                      std::to_string(kMaxBatchTokens) +
                                      " (use train.grad_accum for larger batches)");
  }
  if (s.schedule.min_lr > s.optimizer.lr) {
    return err("schedule.min_lr", "min_lr (" + Num(s.schedule.min_lr) +
                                      ") must not exceed optimizer.lr (" + Num(s.optimizer.lr) + ")");
  }
  if (s.schedule.warmup_steps > s.train.steps) {
    return err("schedule.warmup_steps", "warmup_steps (" + std::to_string(s.schedule.warmup_steps) +
                                            ") must not exceed train.steps (" +
                                            std::to_string(s.train.steps) + ")");
  }
  if (s.checkpoint.interval > 0 && s.checkpoint.dir.empty()) {
    return err("checkpoint.dir", "required when checkpoint.interval > 0");
  }
  if (s.checkpoint.dir.find("://") != std::string::npos && s.checkpoint.dir.rfind("file://", 0) != 0) {
    return err("checkpoint.dir", "\"" + s.checkpoint.dir + "\": checkpoints go to local paths in this version");
  }
  return Status::Ok();
}

bool IsSafeName(const std::string& s) {
  if (s.empty() || s.size() > 64 || s[0] == '.' || s[0] == '-') return false;
  for (char c : s) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) {
      return false;
    }
  }
  return true;
}

// Absolute directory of `path` (relative paths are taken from the working directory).
std::string AbsoluteDirname(const std::string& path) {
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(path, ec);
  if (ec) return "";
  return abs.parent_path().lexically_normal().string();
}

std::string ResolveAgainst(const std::string& base, const std::string& p) {
  if (p.empty() || p[0] == '/' || base.empty() || p.find("://") != std::string::npos) return p;
  // lexically_normal folds "configs/../data" so logs and `config show` print a clean path; glob
  // characters are untouched.
  return (std::filesystem::path(base) / p).lexically_normal().string();
}


Status ApplyOverride(YAML::Node& root, const std::string& override_text) {
  const std::string where = "override '" + override_text + "'";
  size_t eq = override_text.find('=');
  if (eq == std::string::npos || eq == 0) {
    return InvalidArgument(where + ": expected key.path=value");
  }
  std::vector<std::string> keys;
  std::string path = override_text.substr(0, eq);
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string k = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (k.empty()) return InvalidArgument(where + ": empty key in '" + path + "'");
    keys.push_back(k);
    if (keys.size() > 8) return InvalidArgument(where + ": key path too deep");
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  YAML::Node value;
  try {
    value = YAML::Load(override_text.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    return InvalidArgument(where + ": invalid value: " + e.msg);
  }
  if (!value.IsScalar() && !value.IsNull()) {
    return InvalidArgument(where + ": value must be a scalar");
  }
  if (!root.IsDefined() || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  // Walk with reset() so we rebind handles instead of assigning through them (yaml-cpp's operator=
  // on a node handle overwrites the referenced node).
  YAML::Node cur;
  cur.reset(root);
  for (size_t i = 0; i + 1 < keys.size(); ++i) {
    if (!cur.IsMap()) return InvalidArgument(where + ": '" + keys[i] + "' is not inside a mapping");
    YAML::Node next = cur[keys[i]];
    if (!next.IsDefined() || next.IsNull()) {
      cur[keys[i]] = YAML::Node(YAML::NodeType::Map);
      next = cur[keys[i]];
    }
    cur.reset(next);
  }
  if (!cur.IsMap()) return InvalidArgument(where + ": parent of '" + keys.back() + "' is not a mapping");
  cur[keys.back()] = value;
  return Status::Ok();
}

}  // namespace

Result<JobSpec> ParseJobSpec(std::string_view yaml, std::string_view source, const Limits& limits,
                             const std::vector<std::string>& overrides) {
  const std::string src(source);
  if (yaml.size() > limits.max_file_bytes) {
    return InvalidArgument(src + ": document is " + std::to_string(yaml.size()) +
                           " bytes, over the limit of " + std::to_string(limits.max_file_bytes) +
                           " bytes (max_file_bytes)");
  }
  const std::string text(yaml);
  try {
    std::istringstream in(text);
    YAML::Parser parser(in);
    LimitChecker checker(limits);
    while (parser.HandleNextDocument(checker)) {
    }
    if (checker.documents() > 1) {
      return InvalidArgument(src + ": expected one YAML document, found " +
                             std::to_string(checker.documents()));
    }
  } catch (const LimitExceeded& e) {
    return InvalidArgument(src + ": " + e.message);
  } catch (const YAML::Exception& e) {
    return InvalidArgument(src + ": invalid YAML at line " + std::to_string(e.mark.line + 1) +
                           ", column " + std::to_string(e.mark.column + 1) + ": " + e.msg);
  }

  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return InvalidArgument(src + ": invalid YAML at line " + std::to_string(e.mark.line + 1) +
                           ", column " + std::to_string(e.mark.column + 1) + ": " + e.msg);
  }
  if (overrides.size() > 64) return InvalidArgument("more than 64 overrides");
  std::map<std::string, std::string> overridden;
  for (const auto& o : overrides) {
    RETURN_IF_ERROR(ApplyOverride(root, o));
    overridden[o.substr(0, o.find('='))] = o;
  }
  if (!root.IsDefined() || root.IsNull()) {
    return InvalidArgument(src + ": empty job spec (data.train is required)");
  }

  JobSpec s;
  Reader r(src, std::move(overridden));
  try {
    r.Section(root, "", Fields{
      {"name", [&](const YAML::Node& n, const std::string& p) {
         r.String(n, p, &s.name, 64);
         if (r.status().ok() && !IsSafeName(s.name)) {
           r.Error(n, p, "must be 1-64 characters of [A-Za-z0-9._-], not starting with '.' or '-'");
         }
       }},
      {"command", [&](const YAML::Node& n, const std::string& p) { r.Command(n, p, &s.command); }},
      {"launch", [&](const YAML::Node& n, const std::string& p) {
         r.Section(n, p, Fields{
           {"ranks", [&](auto& v, auto& q) { r.Int(v, q, &s.launch.ranks, 1, 1 << 20); }},
           {"priority", [&](auto& v, auto& q) { r.Int(v, q, &s.launch.priority, -1000000, 1000000); }},
           {"max_restarts", [&](auto& v, auto& q) { r.Int(v, q, &s.launch.max_restarts, 0, 1000000); }},
           {"time_limit_s", [&](auto& v, auto& q) { r.Int<int64_t>(v, q, &s.launch.time_limit_s, 0, int64_t{1} << 40); }},
         });
       }},
      {"model", [&](const YAML::Node& n, const std::string& p) {
         r.Section(n, p, Fields{
           {"n_layer", [&](auto& v, auto& q) { r.Int(v, q, &s.model.n_layer, 1, 256); }},
           {"n_head", [&](auto& v, auto& q) { r.Int(v, q, &s.model.n_head, 1, 256); }},
           {"n_embd", [&](auto& v, auto& q) { r.Int(v, q, &s.model.n_embd, 1, 65536); }},
           {"context_length", [&](auto& v, auto& q) { r.Int(v, q, &s.model.context_length, 1, 1 << 16); }},
           {"vocab_size", [&](auto& v, auto& q) { r.Int(v, q, &s.model.vocab_size, 0, 1 << 22); }},
         });
       }},
      {"data", [&](const YAML::Node& n, const std::string& p) {
         r.Section(n, p, Fields{
           {"train", [&](auto& v, auto& q) { r.String(v, q, &s.data.train); }},
           {"val", [&](auto& v, auto& q) { r.String(v, q, &s.data.val); }},
           {"batch_size", [&](auto& v, auto& q) { r.Int(v, q, &s.data.batch_size, 1, 1 << 20); }},
           {"seq_len", [&](auto& v, auto& q) { r.Int(v, q, &s.data.seq_len, 0, 1 << 16); }},
           {"tokenizer", [&](auto& v, auto& q) { r.Enum(v, q, &s.data.tokenizer, {"byte", "gpt2"}); }},
           {"format", [&](auto& v, auto& q) { r.Enum(v, q, &s.data.format, {"auto", "shards", "hdf5"}); }},
           {"hdf5_dataset", [&](auto& v, auto& q) { r.String(v, q, &s.data.hdf5_dataset, 1024); }},
           {"order", [&](auto& v, auto& q) { r.Enum(v, q, &s.data.order, {"shuffle", "sequential"}); }},
           {"prefetch", [&](auto& v, auto& q) { r.Int(v, q, &s.data.prefetch, 1, 256); }},
           {"loader_threads", [&](auto& v, auto& q) { r.Int(v, q, &s.data.loader_threads, 1, 64); }},
           {"timeout_s", [&](auto& v, auto& q) { r.Int(v, q, &s.data.timeout_s, 1, 86400); }},
           {"verify", [&](auto& v, auto& q) { r.Enum(v, q, &s.data.verify, {"full", "header"}); }},
         });
       }},
      {"optimizer", [&](const YAML::Node& n, const std::string& p) {
         r.Section(n, p, Fields{
           {"name", [&](auto& v, auto& q) { r.Enum(v, q, &s.optimizer.name, {"adamw"}); }},
           {"lr", [&](auto& v, auto& q) { r.Real(v, q, &s.optimizer.lr, 0, 10, /*lo_open=*/true); }},
           {"beta1", [&](auto& v, auto& q) { r.Real(v, q, &s.optimizer.beta1, 0, 0.999999); }},
           {"beta2", [&](auto& v, auto& q) { r.Real(v, q, &s.optimizer.beta2, 0, 0.999999); }},
           {"eps", [&](auto& v, auto& q) { r.Real(v, q, &s.optimizer.eps, 0, 1, /*lo_open=*/true); }},
           {"weight_decay", [&](auto& v, auto& q) { r.Real(v, q, &s.optimizer.weight_decay, 0, 10); }},
           {"grad_clip", [&](auto& v, auto& q) { r.Real(v, q, &s.optimizer.grad_clip, 0, 1e6); }},
         });
       }},
      {"schedule", [&](const YAML::Node& n, const std::string& p) {
         r.Section(n, p, Fields{
           {"decay", [&](auto& v, auto& q) { r.Enum(v, q, &s.schedule.decay, {"cosine", "constant"}); }},
           {"warmup_steps", [&](auto& v, auto& q) { r.Int<int64_t>(v, q, &s.schedule.warmup_steps, 0, kMaxSteps); }},
           {"min_lr", [&](auto& v, auto& q) { r.Real(v, q, &s.schedule.min_lr, 0, 10); }},
         });
       }},
      {"train", [&](const YAML::Node& n, const std::string& p) {
         r.Section(n, p, Fields{
           {"steps", [&](auto& v, auto& q) { r.Int<int64_t>(v, q, &s.train.steps, 1, kMaxSteps); }},
           {"grad_accum", [&](auto& v, auto& q) { r.Int(v, q, &s.train.grad_accum, 1, 1 << 16); }},
           {"seed", [&](auto& v, auto& q) { r.Int<uint64_t>(v, q, &s.train.seed, 0, std::numeric_limits<uint64_t>::max()); }},
           {"eval_interval", [&](auto& v, auto& q) { r.Int<int64_t>(v, q, &s.train.eval_interval, 0, kMaxSteps); }},
           {"eval_batches", [&](auto& v, auto& q) { r.Int(v, q, &s.train.eval_batches, 1, 1 << 20); }},
           {"log_interval", [&](auto& v, auto& q) { r.Int<int64_t>(v, q, &s.train.log_interval, 1, kMaxSteps); }},
           {"threads", [&](auto& v, auto& q) { r.Int(v, q, &s.train.threads, 0, 4096); }},
         });
       }},
      {"checkpoint", [&](const YAML::Node& n, const std::string& p) {
         r.Section(n, p, Fields{
           {"dir", [&](auto& v, auto& q) { r.String(v, q, &s.checkpoint.dir); }},
           {"interval", [&](auto& v, auto& q) { r.Int<int64_t>(v, q, &s.checkpoint.interval, 0, kMaxSteps); }},
           {"keep_last", [&](auto& v, auto& q) { r.Int(v, q, &s.checkpoint.keep_last, 1, 1 << 20); }},
           {"keep_every", [&](auto& v, auto& q) { r.Int<int64_t>(v, q, &s.checkpoint.keep_every, 0, kMaxSteps); }},
           {"on_busy", [&](auto& v, auto& q) { r.Enum(v, q, &s.checkpoint.on_busy, {"wait", "skip"}); }},
         });
       }},
      {"parallel", [&](const YAML::Node& n, const std::string& p) {
         r.Section(n, p, Fields{
           {"strategy", [&](auto& v, auto& q) { r.Enum(v, q, &s.parallel.strategy, {"ddp", "zero1"}); }},
           {"backend", [&](auto& v, auto& q) { r.Enum(v, q, &s.parallel.backend, {"auto", "mpi", "gloo", "nccl"}); }},
           {"bucket_mb", [&](auto& v, auto& q) { r.Int(v, q, &s.parallel.bucket_mb, 1, 1024); }},
           {"timeout_s", [&](auto& v, auto& q) { r.Int(v, q, &s.parallel.timeout_s, 1, 86400); }},
         });
       }},
    });
  } catch (const YAML::Exception& e) {
    // Not expected after the checks above; never let a library exception escape the module.
    return InvalidArgument(src + ": " + e.what());
  }
  RETURN_IF_ERROR(r.status());
  RETURN_IF_ERROR(Validate(s, source, r));
  return s;
}

Result<JobSpec> LoadJobSpec(const std::string& path, const Limits& limits,
                            const std::vector<std::string>& overrides) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return ErrnoError(path, errno);
  if (!S_ISREG(st.st_mode)) return InvalidArgument(path + ": not a regular file");
  if (static_cast<uint64_t>(st.st_size) > limits.max_file_bytes) {
    return InvalidArgument(path + ": file is " + std::to_string(st.st_size) +
                           " bytes, over the limit of " + std::to_string(limits.max_file_bytes) +
                           " bytes (max_file_bytes)");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoError(path, errno);
  std::string text;
  text.resize(static_cast<size_t>(st.st_size));
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (in.gcount() != static_cast<std::streamsize>(text.size())) {
    return IoError(path + ": short read");
  }
  ASSIGN_OR_RETURN(JobSpec spec, ParseJobSpec(text, path, limits, overrides));
  const std::string base = AbsoluteDirname(path);
  spec.data.train = ResolveAgainst(base, spec.data.train);
  spec.data.val = ResolveAgainst(base, spec.data.val);
  spec.checkpoint.dir = ResolveAgainst(base, spec.checkpoint.dir);
  return spec;
}

// Shortest decimal that parses back to the same double ("0.003", not "0.0030000000000000001").
std::string ShortestDouble(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  COHORT_CHECK(ec == std::errc()) << "to_chars failed";
  std::string out(buf, end);
  // YAML 1.2 core schema needs a '.' or an exponent to read a float; "1" would still parse as a
  // number here, but keep floats visibly floats.
  if (out.find_first_of(".en") == std::string::npos) out += ".0";
  return out;
}

namespace {

// ToYaml's output as "section.key" -> value: two levels, "section:" lines and "  key: value" under
// them. Any other line (a list item) is kept whole under its section, numbered.
std::map<std::string, std::string> FlattenSpecYaml(const std::string& yaml) {
  std::map<std::string, std::string> out;
  std::istringstream lines(yaml);
  std::string line, section;
  int other = 0;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    const bool nested = line[0] == ' ';
    const size_t first = line.find_first_not_of(' ');
    if (first == std::string::npos) continue;
    const std::string body = line.substr(first);
    const size_t colon = body.find(": ");
    if (!nested && body.back() == ':') {
      section = body.substr(0, body.size() - 1);
      continue;
    }
    const std::string prefix = nested ? section + "." : "";
    if (colon == std::string::npos || body[0] == '-') {
      out[prefix + "#" + std::to_string(other++)] = body;
    } else {
      out[prefix + body.substr(0, colon)] = body.substr(colon + 2);
    }
    if (!nested) section.clear();
  }
  return out;
}

}  // namespace

std::string JobSpecChanges(const std::string& before_yaml, const std::string& after_yaml) {
  const auto before = FlattenSpecYaml(before_yaml), after = FlattenSpecYaml(after_yaml);
  std::string out;
  auto add = [&](const std::string& key, const std::string& a, const std::string& b) {
    out += (out.empty() ? "" : "; ") + key + " " + a + " -> " + b;
  };
  for (const auto& [key, value] : before) {
    auto it = after.find(key);
    if (it == after.end()) {
      add(key, value, "<none>");
    } else if (it->second != value) {
      add(key, value, it->second);
    }
  }
  for (const auto& [key, value] : after) {
    if (before.count(key) == 0) add(key, "<none>", value);
  }
  return out;
}

std::string ToYaml(const JobSpec& s) {
  YAML::Emitter e;
  e << YAML::BeginMap;
  e << YAML::Key << "name" << YAML::Value << s.name;
  if (!s.command.empty()) {
    e << YAML::Key << "command" << YAML::Value << YAML::Flow << YAML::BeginSeq;
    for (const auto& a : s.command) e << YAML::DoubleQuoted << a;
    e << YAML::EndSeq;
  }
  e << YAML::Key << "launch" << YAML::Value << YAML::BeginMap
    << YAML::Key << "ranks" << YAML::Value << s.launch.ranks
    << YAML::Key << "priority" << YAML::Value << s.launch.priority
    << YAML::Key << "max_restarts" << YAML::Value << s.launch.max_restarts
    << YAML::Key << "time_limit_s" << YAML::Value << s.launch.time_limit_s << YAML::EndMap;
  e << YAML::Key << "model" << YAML::Value << YAML::BeginMap
    << YAML::Key << "n_layer" << YAML::Value << s.model.n_layer
    << YAML::Key << "n_head" << YAML::Value << s.model.n_head
    << YAML::Key << "n_embd" << YAML::Value << s.model.n_embd
    << YAML::Key << "context_length" << YAML::Value << s.model.context_length
    << YAML::Key << "vocab_size" << YAML::Value << s.model.vocab_size << YAML::EndMap;
  e << YAML::Key << "data" << YAML::Value << YAML::BeginMap
    << YAML::Key << "train" << YAML::Value << YAML::DoubleQuoted << s.data.train
    << YAML::Key << "val" << YAML::Value << YAML::DoubleQuoted << s.data.val
    << YAML::Key << "batch_size" << YAML::Value << s.data.batch_size
    << YAML::Key << "seq_len" << YAML::Value << s.data.seq_len
    << YAML::Key << "tokenizer" << YAML::Value << s.data.tokenizer
    << YAML::Key << "format" << YAML::Value << s.data.format
    << YAML::Key << "hdf5_dataset" << YAML::Value << YAML::DoubleQuoted << s.data.hdf5_dataset
    << YAML::Key << "order" << YAML::Value << s.data.order
    << YAML::Key << "prefetch" << YAML::Value << s.data.prefetch
    << YAML::Key << "loader_threads" << YAML::Value << s.data.loader_threads
    << YAML::Key << "timeout_s" << YAML::Value << s.data.timeout_s
    << YAML::Key << "verify" << YAML::Value << s.data.verify << YAML::EndMap;
  e << YAML::Key << "optimizer" << YAML::Value << YAML::BeginMap
    << YAML::Key << "name" << YAML::Value << s.optimizer.name
    << YAML::Key << "lr" << YAML::Value << ShortestDouble(s.optimizer.lr)
    << YAML::Key << "beta1" << YAML::Value << ShortestDouble(s.optimizer.beta1)
    << YAML::Key << "beta2" << YAML::Value << ShortestDouble(s.optimizer.beta2)
    << YAML::Key << "eps" << YAML::Value << ShortestDouble(s.optimizer.eps)
    << YAML::Key << "weight_decay" << YAML::Value << ShortestDouble(s.optimizer.weight_decay)
    << YAML::Key << "grad_clip" << YAML::Value << ShortestDouble(s.optimizer.grad_clip) << YAML::EndMap;
  e << YAML::Key << "schedule" << YAML::Value << YAML::BeginMap
    << YAML::Key << "decay" << YAML::Value << s.schedule.decay
    << YAML::Key << "warmup_steps" << YAML::Value << s.schedule.warmup_steps
    << YAML::Key << "min_lr" << YAML::Value << ShortestDouble(s.schedule.min_lr) << YAML::EndMap;
  e << YAML::Key << "train" << YAML::Value << YAML::BeginMap
    << YAML::Key << "steps" << YAML::Value << s.train.steps
    << YAML::Key << "grad_accum" << YAML::Value << s.train.grad_accum
    << YAML::Key << "seed" << YAML::Value << s.train.seed
    << YAML::Key << "eval_interval" << YAML::Value << s.train.eval_interval
    << YAML::Key << "eval_batches" << YAML::Value << s.train.eval_batches
    << YAML::Key << "log_interval" << YAML::Value << s.train.log_interval
    << YAML::Key << "threads" << YAML::Value << s.train.threads << YAML::EndMap;
  e << YAML::Key << "checkpoint" << YAML::Value << YAML::BeginMap
    << YAML::Key << "dir" << YAML::Value << YAML::DoubleQuoted << s.checkpoint.dir
    << YAML::Key << "interval" << YAML::Value << s.checkpoint.interval
    << YAML::Key << "keep_last" << YAML::Value << s.checkpoint.keep_last
    << YAML::Key << "keep_every" << YAML::Value << s.checkpoint.keep_every
    << YAML::Key << "on_busy" << YAML::Value << s.checkpoint.on_busy << YAML::EndMap;
  e << YAML::Key << "parallel" << YAML::Value << YAML::BeginMap
    << YAML::Key << "strategy" << YAML::Value << s.parallel.strategy
    << YAML::Key << "backend" << YAML::Value << s.parallel.backend
    << YAML::Key << "bucket_mb" << YAML::Value << s.parallel.bucket_mb
    << YAML::Key << "timeout_s" << YAML::Value << s.parallel.timeout_s << YAML::EndMap;
  e << YAML::EndMap;
  return std::string(e.c_str()) + "\n";
}

}  // namespace cohort::config
