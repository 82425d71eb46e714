#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/config.h"
#include "tests/unit/test_util.h"

namespace cohort::config {
namespace {

using ::testing::HasSubstr;

constexpr const char* kMinimal = "data:\n  train: shards/train-*.bin\n";

Status ParseError(const std::string& yaml) {
  auto r = ParseJobSpec(yaml, "job.yaml");
  EXPECT_FALSE(r.ok()) << "expected an error for:\n" << yaml;
  return r.ok() ? Status::Ok() : r.status();
}

TEST(ConfigTest, MinimalSpecGetsDocumentedDefaults) {
  auto r = ParseJobSpec(kMinimal, "job.yaml");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const JobSpec& s = *r;
  EXPECT_EQ(s.data.train, "shards/train-*.bin");
  EXPECT_EQ(s.model.n_layer, 4);
  EXPECT_EQ(s.model.n_embd, 128);
  EXPECT_EQ(s.data.tokenizer, "byte");
  EXPECT_DOUBLE_EQ(s.optimizer.lr, 6e-4);
  EXPECT_DOUBLE_EQ(s.optimizer.beta2, 0.95);
  EXPECT_EQ(s.schedule.decay, "cosine");
  EXPECT_EQ(s.train.grad_accum, 1);
  EXPECT_EQ(s.effective_seq_len(), 128);
  EXPECT_EQ(s.parallel.strategy, "ddp");
}

TEST(ConfigTest, ParsesEverySection) {
  auto r = ParseJobSpec(R"(
name: brown-small
model: {n_layer: 2, n_head: 2, n_embd: 64, context_length: 32, vocab_size: 300}
data:
  train: t.bin
  val: v.bin
  batch_size: 4
  seq_len: 16
  tokenizer: gpt2
  format: hdf5
  hdf5_dataset: input_ids
  prefetch: 8
  loader_threads: 3
  verify: header
optimizer: {lr: 1e-3, beta1: 0.8, beta2: 0.99, eps: 1.0e-6, weight_decay: 0, grad_clip: 0.5}
schedule: {decay: constant, warmup_steps: 10, min_lr: 0.0001}
train: {steps: 100, grad_accum: 2, seed: 18446744073709551615, eval_interval: 10, eval_batches: 3, log_interval: 5, threads: 2}
checkpoint: {dir: ckpt, interval: 50, keep_last: 2}
parallel: {strategy: zero1, backend: gloo}
)", "job.yaml");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->name, "brown-small");
  EXPECT_EQ(r->model.vocab_size, 300);
  EXPECT_EQ(r->effective_seq_len(), 16);
  EXPECT_EQ(r->data.tokenizer, "gpt2");
  EXPECT_EQ(r->data.format, "hdf5");
  EXPECT_EQ(r->data.hdf5_dataset, "input_ids");
  EXPECT_EQ(r->data.prefetch, 8);
  EXPECT_EQ(r->data.loader_threads, 3);
  EXPECT_EQ(r->data.verify, "header");
  EXPECT_DOUBLE_EQ(r->optimizer.lr, 1e-3);
  EXPECT_DOUBLE_EQ(r->optimizer.eps, 1e-6);
  EXPECT_DOUBLE_EQ(r->optimizer.grad_clip, 0.5);
  EXPECT_EQ(r->schedule.decay, "constant");
  EXPECT_EQ(r->train.seed, 18446744073709551615ull);
  EXPECT_EQ(r->train.threads, 2);
  EXPECT_EQ(r->checkpoint.keep_last, 2);
  EXPECT_EQ(r->parallel.backend, "gloo");
}

TEST(ConfigTest, UnknownKeyNamesPathAndAllowedKeys) {
  Status s = ParseError(std::string(kMinimal) + "optimizer:\n  learning_rate: 0.1\n");
  EXPECT_THAT(s.message(), HasSubstr("job.yaml: optimizer.learning_rate: unknown key"));
  EXPECT_THAT(s.message(), HasSubstr("lr"));
  EXPECT_THAT(s.message(), HasSubstr("line 4"));
  s = ParseError(std::string(kMinimal) + "trian: {}\n");
  EXPECT_THAT(s.message(), HasSubstr("job.yaml: trian: unknown key"));
}

TEST(ConfigTest, WrongTypesNameTheFieldAndTheRange) {
  Status s = ParseError(std::string(kMinimal) + "model:\n  n_layer: four\n");
  EXPECT_THAT(s.message(), HasSubstr("model.n_layer: expected an integer in [1, 256], got 'four'"));
  s = ParseError(std::string(kMinimal) + "model:\n  n_layer: 2.5\n");
  EXPECT_THAT(s.message(), HasSubstr("model.n_layer: expected an integer"));
  s = ParseError(std::string(kMinimal) + "optimizer:\n  lr: [1, 2]\n");
  EXPECT_THAT(s.message(), HasSubstr("optimizer.lr: expected a number in (0, 10], got a sequence"));
  s = ParseError(std::string(kMinimal) + "optimizer:\n  lr:\n");
  EXPECT_THAT(s.message(), HasSubstr("optimizer.lr: expected a number"));
  s = ParseError(std::string(kMinimal) + "optimizer:\n  lr: .nan\n");
  EXPECT_THAT(s.message(), HasSubstr("optimizer.lr"));
  s = ParseError(std::string(kMinimal) + "train: 5\n");
  EXPECT_THAT(s.message(), HasSubstr("train: expected a mapping, got '5'"));
  s = ParseError(std::string(kMinimal) + "data:\n  train: x\n  tokenizer: bpe\n");
  // duplicate 'data' key at the root
  EXPECT_THAT(s.message(), HasSubstr("data: duplicate key"));
  s = ParseError("data:\n  train: x\n  tokenizer: bpe\n");
  EXPECT_THAT(s.message(), HasSubstr("data.tokenizer: expected one of byte | gpt2, got 'bpe'"));
  s = ParseError(std::string(kMinimal) + "train:\n  steps: 1e3\n");
  EXPECT_THAT(s.message(), HasSubstr("train.steps: expected an integer"));
}

TEST(ConfigTest, OutOfRangeValuesNameTheRange) {
  Status s = ParseError(std::string(kMinimal) + "model:\n  n_layer: 0\n");
  EXPECT_THAT(s.message(), HasSubstr("model.n_layer: value 0 is out of range [1, 256]"));
  s = ParseError(std::string(kMinimal) + "optimizer:\n  lr: 0\n");
  EXPECT_THAT(s.message(), HasSubstr("optimizer.lr: value 0 is out of range (0, 10]"));
  s = ParseError(std::string(kMinimal) + "optimizer:\n  beta2: 1.0\n");
  EXPECT_THAT(s.message(), HasSubstr("optimizer.beta2"));
  s = ParseError(std::string(kMinimal) + "train:\n  grad_accum: -1\n");
  EXPECT_THAT(s.message(), HasSubstr("train.grad_accum: value -1 is out of range"));
  s = ParseError(std::string(kMinimal) + "train:\n  seed: -1\n");
  EXPECT_THAT(s.message(), HasSubstr("train.seed"));
  s = ParseError("data:\n  train: t.bin\n  prefetch: 0\n");
  EXPECT_THAT(s.message(), HasSubstr("data.prefetch: value 0 is out of range [1, 256]"));
  s = ParseError("data:\n  train: t.bin\n  format: parquet\n");
  EXPECT_THAT(s.message(), HasSubstr("data.format"));
  s = ParseError("data:\n  train: t.bin\n  hdf5_dataset: ''\n");
  EXPECT_THAT(s.message(), HasSubstr("data.hdf5_dataset"));
  s = ParseError(std::string(kMinimal) + "model:\n  n_layer: 99999999999999999999\n");
  EXPECT_THAT(s.message(), HasSubstr("model.n_layer"));
}

TEST(ConfigTest, CrossFieldRules) {
  Status s = ParseError(std::string(kMinimal) + "model:\n  n_embd: 100\n  n_head: 3\n");
  EXPECT_THAT(s.message(), HasSubstr("model.n_embd: n_embd (100) must be divisible by model.n_head (3)"));
  s = ParseError("data:\n  train: x\n  seq_len: 512\nmodel:\n  context_length: 256\n");
  EXPECT_THAT(s.message(), HasSubstr("data.seq_len"));
  s = ParseError("model: {n_layer: 1}\n");
  EXPECT_THAT(s.message(), HasSubstr("data.train: required"));
  s = ParseError(std::string(kMinimal) + "schedule: {min_lr: 0.01}\noptimizer: {lr: 0.001}\n");
  EXPECT_THAT(s.message(), HasSubstr("schedule.min_lr"));
  s = ParseError(std::string(kMinimal) + "schedule: {warmup_steps: 11}\ntrain: {steps: 10}\n");
  EXPECT_THAT(s.message(), HasSubstr("schedule.warmup_steps"));
  s = ParseError(std::string(kMinimal) + "checkpoint: {interval: 10}\n");
  EXPECT_THAT(s.message(), HasSubstr("checkpoint.dir: required"));
  // Cross-field errors point at the field too.
  s = ParseError(std::string(kMinimal) + "model:\n  n_embd: 100\n  n_head: 3\n");
  EXPECT_THAT(s.message(), HasSubstr("(line 4, column 11)"));
  // A micro-batch larger than the model accepts is refused before any allocation.
  s = ParseError("data: {train: x, batch_size: 1048576, seq_len: 1024}\n"
                 "model: {context_length: 1024}\n");
  EXPECT_THAT(s.message(), HasSubstr("data.batch_size: batch_size * seq_len = 1073741824 tokens"));
}

TEST(ConfigTest, HostileNamesAreRejected) {
  for (const char* name : {"../../etc", "a/b", ".hidden", "-rf", "x y", ""}) {
    Status s = ParseError(std::string(kMinimal) + "name: \"" + name + "\"\n");
    EXPECT_THAT(s.message(), HasSubstr("name: must be 1-64 characters")) << name;
  }
}

TEST(ConfigTest, SyntaxErrorsCarryLineAndColumn) {
  Status s = ParseError("data:\n  train: [unclosed\n");
  EXPECT_THAT(s.message(), HasSubstr("job.yaml: invalid YAML at line"));
  s = ParseError("");
  EXPECT_THAT(s.message(), HasSubstr("empty job spec"));
  s = ParseError(std::string(kMinimal) + "---\n" + kMinimal);
  EXPECT_THAT(s.message(), HasSubstr("expected one YAML document, found 2"));
}

TEST(ConfigTest, DeepNestingIsRejectedQuickly) {
  std::string deep(100000, '[');
  Status s = ParseError("data: " + deep);
  EXPECT_THAT(s.message(), HasSubstr("nesting deeper than 16"));
}

TEST(ConfigTest, AliasFloodIsRejected) {
  // "Billion laughs": each level references the previous one nine times.
  std::string y = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n";
  for (int i = 1; i < 12; ++i) {
    y += "a" + std::to_string(i) + ": &a" + std::to_string(i) + " [";
    for (int j = 0; j < 9; ++j) y += std::string(j ? ", " : "") + "*a" + std::to_string(i - 1);
    y += "]\n";
  }
  Status s = ParseError(y + kMinimal);
  EXPECT_THAT(s.message(), HasSubstr("more than 32 aliases"));
}

TEST(ConfigTest, NodeFloodAndHugeDocumentsAreRejected) {
  std::string many = "x: [";
  for (int i = 0; i < 20000; ++i) many += "1,";
  many += "1]\n";
  EXPECT_THAT(ParseError(many).message(), HasSubstr("more than 10000 nodes"));
  std::string big(2 << 20, '#');
  EXPECT_THAT(ParseError(big).message(), HasSubstr("over the limit of 1048576 bytes"));
}

// What a resume reports when the job changed since the checkpoint was saved.
TEST(ConfigTest, JobSpecChangesNameTheFieldsThatDiffer) {
  auto a = ParseJobSpec(std::string(kMinimal), "job.yaml");
  auto b = ParseJobSpec(std::string(kMinimal), "job.yaml", Limits(), {"optimizer.lr=0.00042", "train.steps=4321"});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(JobSpecChanges(ToYaml(*a), ToYaml(*a)), "");
  const std::string changes = JobSpecChanges(ToYaml(*a), ToYaml(*b));
  EXPECT_THAT(changes, HasSubstr("optimizer.lr "));
  EXPECT_THAT(changes, HasSubstr(" -> 0.00042"));
  EXPECT_THAT(changes, HasSubstr("train.steps " + std::to_string(a->train.steps) + " -> 4321"));
  EXPECT_EQ(std::count(changes.begin(), changes.end(), ';'), 1) << changes;
  // A field only one side has (a checkpoint from a version with fewer fields).
  EXPECT_EQ(JobSpecChanges("name: x\ntrain:\n  steps: 5\n", "name: x\ntrain:\n  steps: 5\n  seed: 3\n"),
            "train.seed <none> -> 3");
}

TEST(ConfigTest, ResolvedYamlRoundTrips) {
  auto r = ParseJobSpec(std::string(kMinimal) + "optimizer: {lr: 0.00123}\ntrain: {seed: 7}\n",
                        "job.yaml");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  std::string yaml = ToYaml(*r);
  auto again = ParseJobSpec(yaml, "resolved.yaml");
  ASSERT_TRUE(again.ok()) << again.status().ToString() << "\n" << yaml;
  EXPECT_EQ(ToYaml(*again), yaml);
  EXPECT_DOUBLE_EQ(again->optimizer.lr, 0.00123);
  EXPECT_EQ(again->train.seed, 7u);
}

using TempDir = ::cohort::testing::TempDir;

TEST(ConfigTest, LoadResolvesPathsAgainstTheJobFile) {
  TempDir dir;
  std::string file = dir.path() + "/job.yaml";
  std::ofstream(file) << "data:\n  train: shards/train-*.bin\n  val: /abs/val.bin\n"
                         "checkpoint: {dir: ck, interval: 5}\n";
  auto r = LoadJobSpec(file);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->data.train, dir.path() + "/shards/train-*.bin");
  EXPECT_EQ(r->data.val, "/abs/val.bin");
  EXPECT_EQ(r->checkpoint.dir, dir.path() + "/ck");
}

TEST(ConfigTest, LoadRefusesMissingAndOversizedFiles) {
  TempDir dir;
  auto missing = LoadJobSpec(dir.path() + "/nope.yaml");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("nope.yaml"));
  std::string big = dir.path() + "/big.yaml";
  std::ofstream(big) << std::string(3 << 20, '#');
  auto r = LoadJobSpec(big);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("big.yaml: file is 3145728 bytes, over the limit"));
  auto d = LoadJobSpec(dir.path());
  ASSERT_FALSE(d.ok());
  EXPECT_THAT(d.status().message(), HasSubstr("not a regular file"));
}

// docs/job-spec.md must document every key the parser accepts.
// Splits a Markdown table row "| a | b |" into trimmed cells.
std::vector<std::string> Cells(const std::string& row) {
  std::vector<std::string> cells;
  std::string cell;
  for (size_t i = 1; i < row.size(); ++i) {
    if (row[i] == '|' && row[i - 1] != '\\') {
      size_t b = cell.find_first_not_of(' '), e = cell.find_last_not_of(' ');
      cells.push_back(b == std::string::npos ? "" : cell.substr(b, e - b + 1));
      cell.clear();
    } else {
      cell += row[i];
    }
  }
  return cells;
}

// Documented default and resolved value agree: as numbers when both parse as numbers, else as text
// (backticks and quotes stripped).
bool SameDefault(std::string doc, std::string actual) {
  auto strip = [](std::string x) {
    std::string out;
    for (char c : x) {
      if (c != '`' && c != '"') out += c;
    }
    return out;
  };
  doc = strip(doc);
  actual = strip(actual);
  char* end1 = nullptr;
  char* end2 = nullptr;
  double a = std::strtod(doc.c_str(), &end1);
  double b = std::strtod(actual.c_str(), &end2);
  if (!doc.empty() && !actual.empty() && *end1 == '\0' && *end2 == '\0') return a == b;
  return doc == actual;
}

// docs/job-spec.md documents every key the parser accepts, with the default the parser applies.
TEST(ConfigTest, EveryKeyIsDocumentedWithItsDefault) {
  std::ifstream in(::cohort::testing::SourceDir() + "/docs/job-spec.md");
  ASSERT_TRUE(in) << "docs/job-spec.md is missing";
  // Map "`section.key`" -> documented default, using each table's header to find the column.
  std::map<std::string, std::string> documented;
  std::string line;
  int default_col = -1;
  while (std::getline(in, line)) {
    if (line.rfind("| key |", 0) == 0) {
      auto header = Cells(line);
      default_col = -1;
      for (size_t c = 0; c < header.size(); ++c) {
        if (header[c] == "default") default_col = static_cast<int>(c);
      }
    } else if (line.rfind("| `", 0) == 0 && default_col >= 0) {
      auto cells = Cells(line);
      if (static_cast<int>(cells.size()) > default_col) documented[cells[0]] = cells[default_col];
    }
  }
  auto r = ParseJobSpec(kMinimal, "job.yaml");
  ASSERT_TRUE(r.ok());
  std::string section;
  std::istringstream lines(ToYaml(*r));
  int checked = 0;
  while (std::getline(lines, line)) {
    std::smatch m;
    std::string key, value;
    if (std::regex_match(line, m, std::regex(R"(^([a-z_]+):(.*)$)"))) {
      section = m[1];
      if (section != "name") continue;
      key = "`name`";
      value = m[2];
    } else if (std::regex_match(line, m, std::regex(R"(^  ([a-z_0-9]+):(.*)$)"))) {
      key = "`" + section + "." + std::string(m[1]) + "`";
      value = m[2];
    } else {
      continue;
    }
    value.erase(0, value.find_first_not_of(' '));
    auto it = documented.find(key);
    ASSERT_NE(it, documented.end()) << key << " is not documented in a table with a default column";
    ++checked;
    if (key == "`data.train`") continue;  // required: the minimal spec's value is not a default
    EXPECT_TRUE(SameDefault(it->second, value))
        << key << ": documented default '" << it->second << "', parser default '" << value << "'";
  }
  EXPECT_GT(checked, 30);
}

}  // namespace
}  // namespace cohort::config

namespace cohort::config {
namespace {

TEST(ConfigOverrideTest, OverridesApplyBeforeValidation) {
  auto r = ParseJobSpec(kMinimal, "job.yaml", Limits(),
                        {"train.steps=20", "optimizer.lr=0.01", "model.n_layer=2", "name=x1"});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->train.steps, 20);
  EXPECT_DOUBLE_EQ(r->optimizer.lr, 0.01);
  EXPECT_EQ(r->model.n_layer, 2);
  EXPECT_EQ(r->name, "x1");
  EXPECT_EQ(r->data.train, "shards/train-*.bin");  // untouched keys stay
  // An override can supply a required key.
  auto only = ParseJobSpec("", "job.yaml", Limits(), {"data.train=t.bin"});
  ASSERT_TRUE(only.ok()) << only.status().ToString();
  EXPECT_EQ(only->data.train, "t.bin");
}

TEST(ConfigOverrideTest, BadOverridesAreNamed) {
  auto r = ParseJobSpec(kMinimal, "job.yaml", Limits(), {"train.stpes=20"});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("train.stpes: unknown key"));
  r = ParseJobSpec(kMinimal, "job.yaml", Limits(), {"train.steps"});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("override 'train.steps': expected key.path=value"));
  r = ParseJobSpec(kMinimal, "job.yaml", Limits(), {"data.train.x=1"});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("override 'data.train.x=1'"));
  r = ParseJobSpec(kMinimal, "job.yaml", Limits(), {"train.steps=[1,2]"});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("value must be a scalar"));
  r = ParseJobSpec(kMinimal, "job.yaml", Limits(), {"optimizer.lr=-1"});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("optimizer.lr: value -1 is out of range"));
  EXPECT_THAT(r.status().message(), HasSubstr("(from override 'optimizer.lr=-1')"));
  EXPECT_THAT(r.status().message(), ::testing::Not(HasSubstr("line 1")));
  r = ParseJobSpec(kMinimal, "job.yaml", Limits(), {"train..steps=1"});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("empty key"));
}

}  // namespace
}  // namespace cohort::config
