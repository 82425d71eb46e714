#include "storage/storage.h"

#include <cctype>
#include <vector>

#include "storage/posix.h"

namespace cohort::storage {
namespace {

constexpr std::string_view kSchemeSeparator = "://";

// The scheme of "scheme://rest" in lower case (RFC 3986: schemes are case-insensitive), or ""
// when `uri` has none. Only a syntactically valid scheme counts, so a relative path such as
// "runs/a://b" stays a path.
std::string SchemeOf(std::string_view uri) {
  size_t sep = uri.find(kSchemeSeparator);
  if (sep == std::string_view::npos || sep == 0) return "";
  std::string scheme;
  for (size_t i = 0; i < sep; ++i) {
    unsigned char c = static_cast<unsigned char>(uri[i]);
    bool ok = std::isalpha(c) || (i > 0 && (std::isdigit(c) || c == '+' || c == '-' || c == '.'));
    if (!ok) return "";
    scheme.push_back(static_cast<char>(std::tolower(c)));
  }
  return scheme;
}

}  // namespace

Status ReadableObject::ReadVisit(uint64_t offset, size_t n, Visitor visit, void* ctx) const {
  // Reused across calls: a loader thread reads one small sample after another.
  thread_local std::vector<unsigned char> buf;
  if (buf.size() < n) buf.resize(n);
  RETURN_IF_ERROR(ReadAt(offset, buf.data(), n));
  visit(buf.data(), n, ctx);
  return Status::Ok();
}

bool IsRemoteUri(std::string_view uri) {
  std::string scheme = SchemeOf(uri);
  return !scheme.empty() && scheme != "file";
}

Result<std::string> LocalPath(std::string_view uri) {
  std::string scheme = SchemeOf(uri);
  if (scheme.empty()) {
    if (uri.empty()) return InvalidArgument("empty path");
    return std::string(uri);
  }
  if (scheme != "file") {
    return InvalidArgument(std::string(uri) + ": not a local path (scheme \"" + scheme + "\")");
  }
  std::string_view rest = uri.substr(scheme.size() + kSchemeSeparator.size());
  // RFC 8089: file://<host><abs-path>. Only the empty host (this machine) is accepted; a host part
  // is also what a relative "file://data/x" parses as, which is almost surely a typo for
  // file:///data/x or data/x, so it is refused rather than guessed at. No percent-decoding: the
  // path is taken literally so that a name containing '%' round-trips through List.
  if (rest.empty() || rest.front() != '/') {
    return InvalidArgument(std::string(uri) +
                           ": file:// URI with a host part or a relative path (write file:///abs/path "
                           "or a bare path)");
  }
  return std::string(rest);
}

Result<Storage*> StorageFor(std::string_view uri) {
  std::string scheme = SchemeOf(uri);
  if (scheme.empty() || scheme == "file") {
    // Refuse a malformed file:// URI here rather than on first use.
    if (!scheme.empty()) RETURN_IF_ERROR(LocalPath(uri).status());
    return PosixStorage();
  }
  if (scheme == "rados") {
    return InvalidArgument(std::string(uri) +
                           ": Ceph RADOS storage is not built into this binary (configure with "
                           "-DCOHORT_WITH_CEPH=ON)");
  }
  return InvalidArgument(std::string(uri) + ": unknown storage scheme \"" + scheme +
                         "\" (known: file:// and bare paths, rados://)");
}

}  // namespace cohort::storage
