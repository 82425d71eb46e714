#include "dataloader/source.h"

#include <endian.h>

#include <algorithm>
#include <cstring>
#include <string_view>
#include <vector>

#include "common/crc32c.h"
#include "common/hash.h"
#include "common/text.h"
#include "storage/storage.h"

namespace cohort::data {
namespace {

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool IsHdf5Name(std::string_view uri) {
  return EndsWith(uri, ".h5") || EndsWith(uri, ".hdf5") || EndsWith(uri, ".H5") ||
         EndsWith(uri, ".HDF5");
}

}  // namespace

uint64_t SampleSource::Fingerprint() const {
  const std::string k = kind();
  uint64_t h = HashCombine(SplitMix64(Crc32c(k.data(), k.size())), static_cast<uint64_t>(seq_len()));
  h = HashCombine(h, num_samples());
  for (const SourceFileInfo& f : files()) {
    h = HashCombine(h, Crc32c(f.uri.data(), f.uri.size()));
    h = HashCombine(h, f.tokens);
    h = HashCombine(h, f.samples);
  }
  return h;
}

Status SampleSource::ReadRow(uint64_t index, int32_t* inputs, int32_t* targets) const {
  thread_local std::vector<int32_t> sample;
  const size_t T = static_cast<size_t>(seq_len());
  sample.resize(T + 1);
  RETURN_IF_ERROR(Read(index, sample.data()));
  std::memcpy(inputs, sample.data(), T * sizeof(int32_t));
  std::memcpy(targets, sample.data() + 1, T * sizeof(int32_t));
  return Status::Ok();
}

Status SampleSource::ReadStored(uint64_t index, unsigned char* out) const {
  thread_local std::vector<int32_t> sample;
  const size_t n = static_cast<size_t>(seq_len()) + 1;
  sample.resize(n);
  RETURN_IF_ERROR(Read(index, sample.data()));
  for (size_t k = 0; k < n; ++k) {
    const uint32_t v = htole32(static_cast<uint32_t>(sample[k]));
    std::memcpy(out + 4 * k, &v, 4);
  }
  return Status::Ok();
}

std::string SampleSource::Locate(uint64_t index) const { return "sample " + std::to_string(index); }

std::string SampleSource::Describe() const {
  const auto& f = files();
  std::string s = std::to_string(f.size()) + (f.size() == 1 ? " file" : " files");
  if (f.size() == 1) {
    s += " (" + f.front().uri + ")";
  } else if (!f.empty()) {
    s += " (" + f.front().uri + " .. " + f.back().uri + ")";
  }
  return s + " of " + kind() + ", " + WithThousands(num_samples()) + " samples of " +
         std::to_string(seq_len() + 1) + " tokens";
}

Result<std::unique_ptr<SampleSource>> OpenSampleSource(const SourceOptions& options) {
  if (options.patterns.empty()) return InvalidArgument("no data files given");
  if (options.seq_len < 1) return InvalidArgument("sequence length must be >= 1");
  std::vector<std::string> files;
  for (const std::string& pattern : options.patterns) {
    ASSIGN_OR_RETURN(storage::Storage * store, storage::StorageFor(pattern));
    ASSIGN_OR_RETURN(std::vector<storage::ObjectInfo> objects, store->List(pattern));
    for (auto& o : objects) files.push_back(std::move(o.uri));
  }
  std::sort(files.begin(), files.end());
  files.erase(std::unique(files.begin(), files.end()), files.end());

  std::string format = options.format;
  if (format == "auto") {
    const auto hdf5 = std::count_if(files.begin(), files.end(), [](const std::string& f) { return IsHdf5Name(f); });
    if (hdf5 != 0 && static_cast<size_t>(hdf5) != files.size()) {
      const auto it = std::find_if(files.begin(), files.end(), [](const std::string& f) { return IsHdf5Name(f); });
      const auto other = std::find_if(files.begin(), files.end(), [](const std::string& f) { return !IsHdf5Name(f); });
      return InvalidArgument("the data files mix HDF5 (" + *it + ") and other files (" + *other +
                             "); give one format per split, or set the format explicitly");
    }
    format = hdf5 != 0 ? "hdf5" : "shards";
  }
  if (format == "shards") return OpenTokenShardSource(files, options);
  if (format == "hdf5") {
    std::vector<std::string> paths;
    for (const std::string& f : files) {
      if (storage::IsRemoteUri(f)) {
        return InvalidArgument(f + ": HDF5 data must be on a local file system (the HDF5 library "
                                   "reads files itself); use token shards for remote storage");
      }
      ASSIGN_OR_RETURN(std::string path, storage::LocalPath(f));
      paths.push_back(std::move(path));
    }
    return OpenHdf5Source(paths, options);
  }
  return InvalidArgument("unknown data format \"" + format + "\" (expected auto, shards or hdf5)");
}

}  // namespace cohort::data
