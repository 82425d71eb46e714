// storage/: URI parsing (StorageFor, LocalPath, IsRemoteUri) and the POSIX backend (ranged reads,
// atomic writes, listing, rename/remove/sync), including the failure cases callers rely on.
#include "storage/storage.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "storage/file_util.h"

namespace cohort::storage {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// Deterministic, position-dependent bytes so that a read from the wrong offset is detected.
std::string Pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + i / 251) & 0xff);
  return s;
}

class StorageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string base = ::testing::TempDir();
    while (base.size() > 1 && base.back() == '/') base.pop_back();
    auto dir = MakeTempDirectory(base, "storage_test.");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    dir_ = *dir;
    auto s = StorageFor(dir_);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    storage_ = *s;
  }
  void TearDown() override {
    if (dir_.empty()) return;
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // Writes `data` to `uri` through the storage API (two appends, to exercise appending).
  void Put(const std::string& uri, const std::string& data) {
    auto w = storage_->Create(uri);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    size_t half = data.size() / 2;
    ASSERT_TRUE((*w)->Append(data.data(), half).ok());
    ASSERT_TRUE((*w)->Append(data.data() + half, data.size() - half).ok());
    Status s = (*w)->Commit();
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  // The whole object at `uri` via OpenForRead + ReadAt ("<error>" on failure).
  std::string Get(const std::string& uri) {
    auto r = storage_->OpenForRead(uri);
    if (!r.ok()) return Bracketed(r.status());
    std::string out((*r)->size(), '\0');
    Status s = (*r)->ReadAt(0, out.data(), out.size());
    return s.ok() ? out : Bracketed(s);
  }
  static std::string Bracketed(const Status& s) {
    std::string out = "<";
    out += s.ToString();
    out += ">";
    return out;
  }

  std::vector<std::string> DirEntries(const std::string& dir) {
    auto names = ListDirectory(dir);
    EXPECT_TRUE(names.ok()) << names.status().ToString();
    return names.ok() ? *names : std::vector<std::string>{};
  }

  std::string dir_;
  Storage* storage_ = nullptr;
};

TEST_F(StorageTest, WriteThenReadRanges) {
  const std::string uri = Path("obj.bin");
  const std::string data = Pattern(10000);
  Put(uri, data);

  auto r = storage_->OpenForRead(uri);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const ReadableObject& obj = **r;
  EXPECT_EQ(obj.uri(), uri);
  ASSERT_EQ(obj.size(), data.size());

  struct Range {
    uint64_t offset;
    size_t n;
  };
  for (Range range : {Range{0, 100}, Range{4321, 1234}, Range{9900, 100}, Range{0, 10000},
                      Range{0, 0}, Range{5000, 0}, Range{10000, 0}}) {
    std::string got(range.n, '\0');
    Status s = obj.ReadAt(range.offset, got.data(), range.n);
    ASSERT_TRUE(s.ok()) << range.offset << "+" << range.n << ": " << s.ToString();
    EXPECT_EQ(got, data.substr(range.offset, range.n)) << range.offset << "+" << range.n;
  }
}

TEST_F(StorageTest, ConcurrentReadAtFromFourThreads) {
  const std::string uri = Path("shared.bin");
  const std::string data = Pattern(1 << 20);
  Put(uri, data);
  auto r = storage_->OpenForRead(uri);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const ReadableObject* obj = r->get();

  std::vector<std::future<int>> errors;
  for (int t = 0; t < 4; ++t) {
    errors.push_back(std::async(std::launch::async, [obj, &data, t] {
      std::mt19937_64 rng(1234 + t);
      int bad = 0;
      std::string buf;
      for (int i = 0; i < 500; ++i) {
        uint64_t offset = rng() % data.size();
        size_t n = static_cast<size_t>(rng() % (data.size() - offset + 1));
        n = std::min<size_t>(n, 64 * 1024);
        buf.assign(n, '\0');
        if (!obj->ReadAt(offset, buf.data(), n).ok() || buf != data.substr(offset, n)) ++bad;
      }
      return bad;
    }));
  }
  for (auto& e : errors) EXPECT_EQ(e.get(), 0);
}

TEST_F(StorageTest, ReadPastEndIsOutOfRange) {
  const std::string uri = Path("short.bin");
  Put(uri, "0123456789");
  auto r = storage_->OpenForRead(uri);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  char buf[16];
  for (auto [offset, n] : std::vector<std::pair<uint64_t, size_t>>{
           {5, 6}, {10, 1}, {11, 0}, {0, 11}, {UINT64_MAX, 2}, {2, SIZE_MAX}}) {
    Status s = (*r)->ReadAt(offset, buf, n);
    EXPECT_EQ(s.code(), Code::kOutOfRange) << offset << "+" << n << ": " << s.ToString();
    EXPECT_THAT(s.message(), HasSubstr(uri));
    EXPECT_THAT(s.message(), HasSubstr("size 10"));
  }
}

// Local files are memory-mapped (storage/posix.cc). A read from a page that a truncation removed
// faults; the fault is caught and the read returns DataLoss naming the file, as pread would. What
// is still there reads fine.
TEST_F(StorageTest, TruncationAfterOpenIsDataLoss) {
  const std::string uri = Path("trunc.bin");
  const std::string data = Pattern(3 * 4096);
  Put(uri, data);
  auto r = storage_->OpenForRead(uri);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  std::string buf(4096, '\0');
  ASSERT_TRUE((*r)->ReadAt(0, buf.data(), 100).ok());  // the once-a-second size check ran here
  ASSERT_EQ(::truncate(uri.c_str(), 1000), 0) << std::strerror(errno);
  ASSERT_TRUE((*r)->ReadAt(0, buf.data(), 1000).ok());
  EXPECT_EQ(buf.substr(0, 1000), data.substr(0, 1000));
  for (int again = 0; again < 2; ++again) {  // the thread's guard is re-armed after a fault
    Status s = (*r)->ReadAt(8192, buf.data(), 10);
    EXPECT_EQ(s.code(), Code::kDataLoss) << s.ToString();
    EXPECT_THAT(s.message(), HasSubstr(uri));
    EXPECT_THAT(s.message(), HasSubstr("truncated"));
    EXPECT_THAT(s.message(), HasSubstr("offset 8192"));
  }
}

// ReadVisit hands the visitor the same bytes ReadAt copies (from the mapping, without a copy), with
// ReadAt's range errors, and a hint to prefetch never faults, even past the end.
TEST_F(StorageTest, ReadVisitSeesTheBytesReadAtReads) {
  const std::string uri = Path("visit.bin");
  const std::string data = Pattern(20000);
  Put(uri, data);
  auto r = storage_->OpenForRead(uri);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto append = [](const unsigned char* p, size_t n, void* ctx) {
    static_cast<std::string*>(ctx)->append(reinterpret_cast<const char*>(p), n);
  };
  for (auto [offset, n] : std::vector<std::pair<uint64_t, size_t>>{{0, 1}, {4095, 2}, {123, 9000}, {19999, 1}, {0, 20000}}) {
    (*r)->Prefetch(offset, n);
    std::string got;
    ASSERT_TRUE((*r)->ReadVisit(offset, n, append, &got).ok());
    EXPECT_EQ(got, data.substr(offset, n)) << offset << "+" << n;
  }
  (*r)->Prefetch(19990, 1 << 20);
  (*r)->Prefetch(UINT64_MAX - 10, 100);
  std::string got;
  Status s = (*r)->ReadVisit(19990, 11, append, &got);
  EXPECT_EQ(s.code(), Code::kOutOfRange) << s.ToString();
  EXPECT_TRUE(got.empty());
}

// A visitor reading a page that a truncation removed is abandoned midway (the SIGBUS guard jumps
// out of it) and ReadVisit returns DataLoss; the guard is re-armed for the next call.
TEST_F(StorageTest, ReadVisitOfATruncatedPageIsDataLoss) {
  const std::string uri = Path("visit-trunc.bin");
  Put(uri, Pattern(4 * 4096));  // the reads below stay off the last page (checked before every read)
  auto r = storage_->OpenForRead(uri);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  struct Seen {
    uint64_t sum = 0;
    size_t started = 0, finished = 0;
  } seen;
  auto visit = [](const unsigned char* p, size_t n, void* ctx) {
    auto& x = *static_cast<Seen*>(ctx);
    ++x.started;
    for (size_t k = 0; k < n; ++k) x.sum += p[k];  // touches every byte, past the new end too
    ++x.finished;
  };
  ASSERT_TRUE((*r)->ReadVisit(0, 100, visit, &seen).ok());  // the once-a-second size check ran here
  ASSERT_EQ(::truncate(uri.c_str(), 1000), 0) << std::strerror(errno);
  for (int again = 0; again < 2; ++again) {
    Status s = (*r)->ReadVisit(4000, 5000, visit, &seen);
    EXPECT_EQ(s.code(), Code::kDataLoss) << s.ToString();
    EXPECT_THAT(s.message(), HasSubstr(uri));
    // The byte that faulted: the first of the first page past the new end (page 0 still holds
    // bytes 0..999, and reads zeros after them).
    EXPECT_THAT(s.message(), HasSubstr("reading at offset 4096"));
  }
  EXPECT_EQ(seen.started, 3u);   // the visitor ran each time: the fault came from inside it
  EXPECT_EQ(seen.finished, 1u);  // and was cut short both times
  ASSERT_TRUE((*r)->ReadVisit(0, 1000, visit, &seen).ok());
  EXPECT_EQ(seen.finished, 2u);
}

// Objects that are not mapped (here an empty file) go through ReadAt and a per-thread buffer.
TEST_F(StorageTest, ReadVisitOfAnUnmappedObject) {
  const std::string uri = Path("empty.bin");
  Put(uri, "");
  auto r = storage_->OpenForRead(uri);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  int calls = 0;
  auto count = [](const unsigned char*, size_t n, void* ctx) { *static_cast<int*>(ctx) += 1 + static_cast<int>(n); };
  EXPECT_TRUE((*r)->ReadVisit(0, 0, count, &calls).ok());
  EXPECT_EQ(calls, 1);
  Status s = (*r)->ReadVisit(0, 1, count, &calls);
  EXPECT_EQ(s.code(), Code::kOutOfRange) << s.ToString();
  EXPECT_EQ(calls, 1);
  (*r)->Prefetch(0, 100);  // nothing to prefetch, no fault
}

// Removing or replacing the name of an open file leaves the opened file readable (POSIX semantics).
TEST_F(StorageTest, RemovedOrReplacedWhileOpenStillReadsTheOpenedFile) {
  const std::string uri = Path("gone.bin");
  const std::string data = Pattern(3 * 4096);
  Put(uri, data);
  auto r = storage_->OpenForRead(uri);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(::unlink(uri.c_str()), 0);
  Put(uri, "short");  // a new, shorter file under the same name
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // past the once-a-second size check
  std::string buf(100, '\0');
  ASSERT_TRUE((*r)->ReadAt(8000, buf.data(), 100).ok());
  EXPECT_EQ(buf, data.substr(8000, 100));
}

// With a revalidation set (the token source sets one), a new modification time asks it once: a
// file only touched reads on; its answer is the read's error otherwise.
TEST_F(StorageTest, AChangedModificationTimeAsksTheRevalidationOnce) {
  const std::string uri = Path("touched.bin");
  const std::string data = Pattern(3 * 4096);
  Put(uri, data);
  auto r = storage_->OpenForRead(uri);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  int asked = 0;
  Status answer;
  (*r)->SetRevalidation([&] {
    ++asked;
    std::string inside(10, '\0');
    EXPECT_TRUE((*r)->ReadAt(3 * 4096 - 10, inside.data(), 10).ok());  // its own reads are not checked again
    return answer;
  });
  std::string buf(100, '\0');
  ASSERT_TRUE((*r)->ReadAt(0, buf.data(), 100).ok());
  auto touch = [&](long sec) {
    const struct timespec times[2] = {{sec, 0}, {sec, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, uri.c_str(), times, 0), 0) << std::strerror(errno);
  };
  touch(1700000000);
  for (int k = 0; k < 3; ++k) ASSERT_TRUE((*r)->ReadAt(3 * 4096 - 100, buf.data(), 100).ok()) << k;
  EXPECT_EQ(asked, 1);
  EXPECT_EQ(buf, data.substr(3 * 4096 - 100, 100));
  touch(1700000100);
  answer = DataLoss(uri + ": not what was opened");
  Status s = (*r)->ReadAt(3 * 4096 - 100, buf.data(), 100);
  EXPECT_EQ(s.code(), Code::kDataLoss) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("not what was opened"));
  EXPECT_EQ(asked, 2);
}

// A path that cannot be looked up any more (its directory moved away, a file put in its place:
// ENOTDIR) says nothing about the opened file, which still reads.
TEST_F(StorageTest, APathThatNoLongerResolvesStillReadsTheOpenedFile) {
  ASSERT_TRUE(storage::MakeDirectories(Path("sub")).ok());
  const std::string uri = Path("sub/x.bin");
  const std::string data = Pattern(3 * 4096);
  Put(uri, data);
  auto r = storage_->OpenForRead(uri);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(::rename(Path("sub").c_str(), Path("sub-moved").c_str()), 0) << std::strerror(errno);
  Put(Path("sub"), "a file where the directory was");
  std::string buf(100, '\0');
  Status s = (*r)->ReadAt(3 * 4096 - 100, buf.data(), 100);  // the last page: checked on every read
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(buf, data.substr(3 * 4096 - 100, 100));
}

// A truncation inside the new last page faults nowhere (the page's tail reads as zeros); the size
// check catches it instead, at once for a read of that page (not only at the once-a-second check).
TEST_F(StorageTest, TruncationInsideTheLastPageIsDataLoss) {
  const std::string uri = Path("tail.bin");
  Put(uri, Pattern(10000));
  auto r = storage_->OpenForRead(uri);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  std::string buf(100, '\0');
  ASSERT_TRUE((*r)->ReadAt(0, buf.data(), 100).ok());  // the periodic check has just run
  ASSERT_EQ(::truncate(uri.c_str(), 9000), 0) << std::strerror(errno);
  Status s = (*r)->ReadAt(9500, buf.data(), 100);
  EXPECT_EQ(s.code(), Code::kDataLoss) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("9000 bytes, 10000 at open"));
}

// A file rewritten in place (cp over it, rsync --inplace) keeps its inode and size, and the
// mapping shows the new bytes: the change is caught by the file's modification time.
TEST_F(StorageTest, AFileRewrittenInPlaceIsDataLoss) {
  const std::string uri = Path("inplace.bin");
  Put(uri, Pattern(10000));
  auto r = storage_->OpenForRead(uri);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  std::string buf(100, '\0');
  ASSERT_TRUE((*r)->ReadAt(0, buf.data(), 100).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a later modification time
  {
    const int fd = ::open(uri.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    const std::string other(10000, 'x');
    EXPECT_EQ(::pwrite(fd, other.data(), other.size(), 0), static_cast<ssize_t>(other.size()));
    ::close(fd);
  }
  Status s = (*r)->ReadAt(9900, buf.data(), 100);
  EXPECT_EQ(s.code(), Code::kDataLoss) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("modified since it was opened"));
  EXPECT_THAT(s.message(), HasSubstr(uri));
}

TEST_F(StorageTest, UncommittedWriterLeavesNothingBehind) {
  const std::string uri = Path("never.bin");
  {
    auto w = storage_->Create(uri);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    EXPECT_EQ((*w)->uri(), uri);
    ASSERT_TRUE((*w)->Append("partial", 7).ok());
    // Invisible while being written.
    EXPECT_EQ(storage_->Stat(uri).status().code(), Code::kNotFound);
  }
  EXPECT_EQ(storage_->Stat(uri).status().code(), Code::kNotFound);
  EXPECT_TRUE(DirEntries(dir_).empty()) << "temporary files left behind";

  // Over an existing object: the old content stays.
  Put(uri, "old");
  {
    auto w = storage_->Create(uri);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    ASSERT_TRUE((*w)->Append("new content", 11).ok());
  }
  EXPECT_EQ(Get(uri), "old");
  EXPECT_THAT(DirEntries(dir_), ElementsAre("never.bin"));
}

TEST_F(StorageTest, CommitReplacesAnExistingObjectAtomically) {
  const std::string uri = Path("ckpt.bin");
  Put(uri, "old contents");
  auto old_reader = storage_->OpenForRead(uri);
  ASSERT_TRUE(old_reader.ok()) << old_reader.status().ToString();

  auto w = storage_->Create(uri);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ASSERT_TRUE((*w)->Append("new contents, longer", 20).ok());
  EXPECT_EQ(Get(uri), "old contents") << "visible before Commit";
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_EQ(Get(uri), "new contents, longer");

  // A reader opened before the commit keeps seeing the complete old object, never a mix.
  std::string buf(12, '\0');
  ASSERT_TRUE((*old_reader)->ReadAt(0, buf.data(), buf.size()).ok());
  EXPECT_EQ(buf, "old contents");
  EXPECT_THAT(DirEntries(dir_), ElementsAre("ckpt.bin"));
}

TEST_F(StorageTest, StatGivesSizes) {
  Put(Path("empty"), "");
  Put(Path("some"), Pattern(12345));
  auto empty = storage_->Stat(Path("empty"));
  ASSERT_TRUE(empty.ok()) << empty.status().ToString();
  EXPECT_EQ(empty->size, 0u);
  EXPECT_EQ(empty->uri, Path("empty"));
  auto some = storage_->Stat(Path("some"));
  ASSERT_TRUE(some.ok()) << some.status().ToString();
  EXPECT_EQ(some->size, 12345u);

  auto dir = storage_->Stat(dir_);
  EXPECT_EQ(dir.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(dir.status().message(), HasSubstr("directory"));
}

TEST_F(StorageTest, MissingObjectsAreNotFoundNamingThePath) {
  const std::string missing = Path("missing.bin");
  const std::string in_missing_dir = Path("nodir/x.bin");
  std::vector<std::pair<std::string, Status>> cases = {
      {missing, storage_->OpenForRead(missing).status()},
      {missing, storage_->Stat(missing).status()},
      {missing, storage_->List(missing).status()},
      {missing, storage_->Remove(missing)},
      {missing, storage_->Sync(missing)},
      {missing, storage_->Rename(missing, Path("to.bin"))},
      {in_missing_dir, storage_->OpenForRead(in_missing_dir).status()},
      {Path("nodir"), storage_->Create(in_missing_dir).status()},
  };
  for (const auto& [path, s] : cases) {
    EXPECT_EQ(s.code(), Code::kNotFound) << s.ToString();
    EXPECT_THAT(s.message(), HasSubstr(path));
  }
}

// Runs `fn` on a thread; if it has not returned after a few seconds it is blocked in open(2) of
// the FIFO, so open the write end to release it (and fail the test).
Status CallWithFifo(const std::string& fifo, std::function<Status()> fn) {
  auto result = std::async(std::launch::async, std::move(fn));
  if (result.wait_for(std::chrono::seconds(5)) != std::future_status::ready) {
    ADD_FAILURE() << "blocked on the FIFO " << fifo;
    while (result.wait_for(std::chrono::milliseconds(50)) != std::future_status::ready) {
      int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd >= 0) ::close(fd);
    }
  }
  return result.get();
}

TEST_F(StorageTest, FifoIsRefusedWithoutBlocking) {
  const std::string fifo = Path("fifo.bin");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
  for (Status s : {CallWithFifo(fifo, [&] { return storage_->OpenForRead(fifo).status(); }),
                   CallWithFifo(fifo, [&] { return storage_->Stat(fifo).status(); }),
                   CallWithFifo(fifo, [&] { return storage_->List(fifo).status(); }),
                   CallWithFifo(fifo, [&] { return storage_->Sync(fifo); })}) {
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
    EXPECT_THAT(s.message(), HasSubstr(fifo));
  }
  // A FIFO matched by a glob is an error too, not silently dropped from a dataset.
  Put(Path("a.bin"), "a");
  Status s = CallWithFifo(fifo, [&] { return storage_->List(Path("*.bin")).status(); });
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr(fifo));
}

TEST_F(StorageTest, ListGlobIsSortedAndSkipsDirectories) {
  Put(Path("b.bin"), "bb");
  Put(Path("a.bin"), "a");
  Put(Path("B.bin"), "BBB");
  Put(Path("c.txt"), "not matched");
  ASSERT_EQ(::mkdir(Path("d.bin").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(Path("sub").c_str(), 0755), 0);
  Put(Path("sub/e.bin"), "'*' does not cross '/'");
  // An in-progress writer's temporary file is hidden from listings.
  auto pending = storage_->Create(Path("z.bin"));
  ASSERT_TRUE(pending.ok()) << pending.status().ToString();

  auto list = storage_->List(Path("*.bin"));
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  std::vector<std::string> uris;
  std::vector<uint64_t> sizes;
  for (const ObjectInfo& info : *list) {
    uris.push_back(info.uri);
    sizes.push_back(info.size);
  }
  // Bytewise: 'B' < 'a'.
  EXPECT_THAT(uris, ElementsAre(Path("B.bin"), Path("a.bin"), Path("b.bin")));
  EXPECT_THAT(sizes, ElementsAre(3u, 1u, 2u));

  auto none = storage_->List(Path("*.none"));
  EXPECT_EQ(none.status().code(), Code::kNotFound) << none.status().ToString();
  EXPECT_THAT(none.status().message(), HasSubstr(Path("*.none")));

  auto only_dirs = storage_->List(Path("d*"));
  EXPECT_EQ(only_dirs.status().code(), Code::kNotFound) << only_dirs.status().ToString();
  EXPECT_THAT(only_dirs.status().message(), HasSubstr(Path("d*")));

  auto missing_dir = storage_->List(Path("nodir/*.bin"));
  EXPECT_EQ(missing_dir.status().code(), Code::kNotFound) << missing_dir.status().ToString();
  EXPECT_THAT(missing_dir.status().message(), HasSubstr(Path("nodir/*.bin")));
}

TEST_F(StorageTest, ListOfASinglePath) {
  Put(Path("one.bin"), "12345");
  auto list = storage_->List(Path("one.bin"));
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].uri, Path("one.bin"));
  EXPECT_EQ((*list)[0].size, 5u);

  EXPECT_EQ(storage_->List(dir_).status().code(), Code::kInvalidArgument);
}

TEST_F(StorageTest, FileUrisRoundTrip) {
  const std::string prefix = "file://" + dir_;
  Put(prefix + "/x.bin", "xx");
  Put(prefix + "/y.bin", "yyy");
  EXPECT_EQ(Get(Path("x.bin")), "xx") << "file:// names the same file as the bare path";

  auto list = storage_->List(prefix + "/*.bin");
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].uri, prefix + "/x.bin");
  EXPECT_EQ((*list)[1].uri, prefix + "/y.bin");
  for (const ObjectInfo& info : *list) {
    auto r = storage_->OpenForRead(info.uri);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ((*r)->uri(), info.uri);
    EXPECT_EQ((*r)->size(), info.size);
    auto st = storage_->Stat(info.uri);
    ASSERT_TRUE(st.ok()) << st.status().ToString();
    EXPECT_EQ(st->uri, info.uri);
  }
  EXPECT_EQ(Get(prefix + "/y.bin"), "yyy");

  // Errors name the URI as the caller spelled it.
  auto missing = storage_->OpenForRead(prefix + "/nope.bin");
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr(prefix + "/nope.bin"));
  auto none = storage_->List(prefix + "/*.none");
  EXPECT_EQ(none.status().code(), Code::kNotFound);
  EXPECT_THAT(none.status().message(), HasSubstr(prefix + "/*.none"));

  // A malformed file:// URI is refused by every method.
  EXPECT_EQ(storage_->Stat("file://host" + dir_ + "/x.bin").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(storage_->Create("file://rel/x.bin").status().code(), Code::kInvalidArgument);
}

TEST_F(StorageTest, RenameReplacesTheTarget) {
  Put(Path("from.bin"), "new");
  Put(Path("to.bin"), "old");
  ASSERT_TRUE(storage_->Rename(Path("from.bin"), Path("to.bin")).ok());
  EXPECT_EQ(Get(Path("to.bin")), "new");
  EXPECT_EQ(storage_->Stat(Path("from.bin")).status().code(), Code::kNotFound);

  // Across directories (both are synced), and with file:// spelling.
  ASSERT_TRUE(storage_->MakeParents(Path("sub/x")).ok());
  Status s = storage_->Rename(Path("to.bin"), "file://" + Path("sub/moved.bin"));
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(Get(Path("sub/moved.bin")), "new");
  EXPECT_THAT(DirEntries(dir_), ElementsAre("sub"));
}

TEST_F(StorageTest, Remove) {
  Put(Path("gone.bin"), "x");
  ASSERT_TRUE(storage_->Remove(Path("gone.bin")).ok());
  EXPECT_EQ(storage_->Stat(Path("gone.bin")).status().code(), Code::kNotFound);

  Status again = storage_->Remove(Path("gone.bin"));
  EXPECT_EQ(again.code(), Code::kNotFound) << again.ToString();
  EXPECT_THAT(again.message(), HasSubstr(Path("gone.bin")));

  ASSERT_EQ(::mkdir(Path("dir").c_str(), 0755), 0);
  Status dir = storage_->Remove(Path("dir"));
  EXPECT_EQ(dir.code(), Code::kInvalidArgument) << dir.ToString();
  EXPECT_THAT(dir.message(), HasSubstr(Path("dir")));
  EXPECT_TRUE(IsDirectory(Path("dir")));
}

TEST_F(StorageTest, SyncAFileAndADirectory) {
  Put(Path("f.bin"), "data");
  EXPECT_TRUE(storage_->Sync(Path("f.bin")).ok());
  EXPECT_TRUE(storage_->Sync(dir_).ok());
  EXPECT_TRUE(storage_->Sync("file://" + dir_).ok());
}

TEST_F(StorageTest, MakeParentsThenCreateInAFreshNestedDirectory) {
  const std::string uri = Path("a/b/c/obj.bin");
  auto before = storage_->Create(uri);
  EXPECT_EQ(before.status().code(), Code::kNotFound) << before.status().ToString();
  EXPECT_THAT(before.status().message(), HasSubstr(Path("a/b/c")));

  ASSERT_TRUE(storage_->MakeParents(uri).ok());
  ASSERT_TRUE(storage_->MakeParents(uri).ok()) << "not idempotent";
  EXPECT_TRUE(IsDirectory(Path("a/b/c")));
  Put(uri, "nested");
  EXPECT_EQ(Get(uri), "nested");

  const std::string file_uri = "file://" + Path("x/y/obj.bin");
  ASSERT_TRUE(storage_->MakeParents(file_uri).ok());
  Put(file_uri, "nested too");
  EXPECT_EQ(Get(Path("x/y/obj.bin")), "nested too");

  // Parents of a bare name or a top-level path need nothing.
  EXPECT_TRUE(storage_->MakeParents("relative.bin").ok());
  EXPECT_TRUE(storage_->MakeParents("/top.bin").ok());

  // Creating an object where a directory is cannot succeed: refused up front.
  auto over_dir = storage_->Create(Path("a"));
  EXPECT_EQ(over_dir.status().code(), Code::kInvalidArgument) << over_dir.status().ToString();
}

TEST(StorageFor, Schemes) {
  auto file = StorageFor("file:///tmp/x");
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  ASSERT_NE(*file, nullptr);
  EXPECT_EQ((*file)->scheme(), "file");
  for (std::string_view uri : {"/tmp/x", "relative/x", "x", "FILE:///tmp/x", "runs/a://b"}) {
    auto s = StorageFor(uri);
    ASSERT_TRUE(s.ok()) << uri << ": " << s.status().ToString();
    EXPECT_EQ(*s, *file) << uri << ": not the one process-wide POSIX backend";
  }

  auto rados = StorageFor("rados://pool/ckpt/step_100");
  EXPECT_EQ(rados.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(rados.status().message(), HasSubstr("rados://pool/ckpt/step_100"));
  EXPECT_THAT(rados.status().message(), HasSubstr("-DCOHORT_WITH_CEPH=ON"));

  auto s3 = StorageFor("s3://bucket/key");
  EXPECT_EQ(s3.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(s3.status().message(), HasSubstr("s3://bucket/key"));
  EXPECT_THAT(s3.status().message(), HasSubstr("\"s3\""));

  auto host = StorageFor("file://host/x");
  EXPECT_EQ(host.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(host.status().message(), HasSubstr("file://host/x"));
}

TEST(StorageFor, IsRemoteUri) {
  EXPECT_TRUE(IsRemoteUri("rados://pool/x"));
  EXPECT_TRUE(IsRemoteUri("s3://bucket/key"));
  EXPECT_FALSE(IsRemoteUri("file:///a"));
  EXPECT_FALSE(IsRemoteUri("File:///a"));
  EXPECT_FALSE(IsRemoteUri("/a/b"));
  EXPECT_FALSE(IsRemoteUri("a/b"));
  EXPECT_FALSE(IsRemoteUri("runs/a://b"));  // not a scheme: '/' before "://"
  EXPECT_FALSE(IsRemoteUri("://x"));
  EXPECT_FALSE(IsRemoteUri(""));
}

TEST(LocalPath, Cases) {
  auto expect_path = [](std::string_view uri, const std::string& path) {
    auto p = LocalPath(uri);
    ASSERT_TRUE(p.ok()) << uri << ": " << p.status().ToString();
    EXPECT_EQ(*p, path) << uri;
  };
  expect_path("file:///a/b", "/a/b");
  expect_path("file:///", "/");
  expect_path("FILE:///a", "/a");
  expect_path("/a/b", "/a/b");
  expect_path("a/b", "a/b");
  expect_path("a%20b", "a%20b");
  expect_path("file:///a%20b", "/a%20b");

  for (std::string_view uri : {"file://host/a", "file://rel/x", "file://", "file://localhost",
                               "rados://pool/x", "s3://b/k"}) {
    auto p = LocalPath(uri);
    EXPECT_EQ(p.status().code(), Code::kInvalidArgument) << uri;
    EXPECT_THAT(p.status().message(), HasSubstr(std::string(uri)));
  }
  EXPECT_EQ(LocalPath("").status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace cohort::storage
