// Helpers shared by the unit tests: temporary directories, small file I/O, the source tree, the
// `cohort` binary, and running commands. Header-only; every function is thread-compatible.
//
// The namespace is cohort::testing, so inside namespace cohort GoogleTest's own namespace must be
// written ::testing (e.g. ::testing::Test, ::testing::HasSubstr).
#pragma once

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>

#include <gtest/gtest.h>

#include "common/check.h"

namespace cohort::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on destruction. The
// constructor CHECK-fails (aborts) if the directory cannot be created: no test can run without it.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/cohort_test.XXXXXX";
    const char* made = ::mkdtemp(tmpl.data());
    const int err = errno;
    COHORT_CHECK(made != nullptr) << "mkdtemp " << tmpl << ": " << ::strerror(err);
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

// Replaces `path` with `data` (a test failure if it cannot be written).
inline void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
  ASSERT_TRUE(f.good()) << "cannot write " << path;
}

// The contents of `path`, "" if it cannot be read.
inline std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// $name if set and non-empty, else `fallback`.
inline std::string EnvOr(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

// The source tree: $COHORT_SOURCE_DIR (set by ctest, see tests/CMakeLists.txt), else ".".
inline std::string SourceDir() { return EnvOr("COHORT_SOURCE_DIR", "."); }

// The `cohort` binary: $COHORT_BIN (set by ctest), else <build>/bin/cohort next to this test
// binary (<build>/tests/unit/<test>), else "cohort" from PATH.
inline std::string CohortBin() {
  std::string bin = EnvOr("COHORT_BIN", "");
  if (!bin.empty()) return bin;
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  std::filesystem::path guess = self.parent_path().parent_path().parent_path() / "bin" / "cohort";
  return !ec && std::filesystem::exists(guess) ? guess.string() : "cohort";
}

// The data assets directory: $COHORT_ASSETS, else SourceDir()/data/assets. Tests that need it
// fail (never skip) when it lacks what they need; see MissingAsset.
inline std::string AssetsDir() { return EnvOr("COHORT_ASSETS", SourceDir() + "/data/assets"); }

// Returns "" if `AssetsDir()/relative` exists, else the failure message to report.
inline std::string MissingAsset(const std::string& relative) {
  std::string path = AssetsDir() + "/" + relative;
  if (std::filesystem::exists(path)) return "";
  return "missing test asset " + path + ": run scripts/fetch_assets (set COHORT_ASSETS to use another directory)";
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

}  // namespace cohort::testing
