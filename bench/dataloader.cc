// bench_dataloader: the dataloader's figures for bench/dataloader (which runs the peers: dd/cat
// for raw read bandwidth). Each mode prints one JSON object on stdout.
//
//   --mode make      --out DIR --mib M --files F      random gpt2-vocab token shards (M MiB total)
//   --mode read      --data GLOB --seq T --batch B --threads K --depth D
//                    one epoch through the loader (every sample once, shuffled), 1 rank
//   --mode train     --data GLOB [quickstart model flags]
//                    training steps fed by the loader vs by batches held in memory (differential)
//   --mode resume    --data GLOB --seq T --batch B
//                    time from creating a loader at a saved position to its first batch
//   --mode gather    --data GLOB --seq T --threads K --epochs E [--access mmap|pread]
//                    the bound for any loader of a shuffled order: K threads memcpy each sample
//                    window (2(T+1) bytes, at a random place) out of plain mmap()s of the files,
//                    with the next window prefetched; no decoding, no batches, no Cohort code
#include <algorithm>
#include <cmath>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <thread>
#include <cstring>

#include "dataloader/loader.h"
#include "dataloader/source.h"
#include "dataloader/token_shard.h"
#include "kernels/cpu/cpu_kernels.h"
#include "model/gpt.h"
#include "model/optimizer.h"

namespace {

using Clock = std::chrono::steady_clock;
using namespace cohort;

double Since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

int Fail(const Status& s) {
  std::fprintf(stderr, "bench_dataloader: %s\n", s.ToString().c_str());
  return 1;
}

std::shared_ptr<const data::SampleSource> Open(const std::string& glob, int T, uint32_t vocab, bool verify,
                                               Status* err) {
  data::SourceOptions o;
  o.patterns = {glob};
  o.seq_len = T;
  o.vocab_size = vocab;
  o.verify_checksums = verify;
  auto r = data::OpenSampleSource(o);
  if (!r.ok()) {
    *err = r.status();
    return nullptr;
  }
  return std::shared_ptr<const data::SampleSource>(std::move(*r));
}

// File pages this process maps with 2 MiB entries (/proc/self/smaps_rollup): whether the page cache
// holds the data in 2 MiB folios, which decides what mapping it costs (one fault per 2 MiB, or one
// per 16 pages of 4 KiB) and how fast `cat` reads it.
uint64_t PmdMappedFileBytes() {
  FILE* f = std::fopen("/proc/self/smaps_rollup", "r");
  if (f == nullptr) return 0;
  char line[256];
  unsigned long long kb = 0;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::sscanf(line, "FilePmdMapped: %llu kB", &kb) == 1) break;
  }
  std::fclose(f);
  return static_cast<uint64_t>(kb) * 1024;
}

int Make(const std::string& out, int mib, int files) {
  const uint64_t tokens_per_file = (static_cast<uint64_t>(mib) << 20) / 2 / static_cast<uint64_t>(files);
  std::mt19937_64 rng(7);
  std::vector<uint32_t> tokens(tokens_per_file);
  for (int f = 0; f < files; ++f) {
    for (auto& t : tokens) t = static_cast<uint32_t>(rng() % 50257);
    char name[64];
    std::snprintf(name, sizeof name, "/bench-%05d.bin", f);
    Status s = data::WriteTokenShard(out + name, tokens, 50257, "gpt2");
    if (!s.ok()) return Fail(s);
  }
  std::printf("{\"files\": %d, \"tokens\": %llu}\n", files,
              static_cast<unsigned long long>(tokens_per_file * static_cast<uint64_t>(files)));
  return 0;
}

int Read(const std::string& glob, int T, int B, int threads, int depth, bool verify, int epochs,
         data::Layout layout) {
  Status err;
  const auto t_open = Clock::now();
  auto src = Open(glob, T, 50257, verify, &err);
  if (!src) return Fail(err);
  const double open_s = Since(t_open);
  data::LoaderOptions o;
  o.batch_size = B;
  o.threads = threads;
  o.depth = depth;
  o.layout = layout;
  o.start = {1, 0, 0};
  const uint64_t batches = static_cast<uint64_t>(epochs) * src->num_samples() / static_cast<uint64_t>(B);
  const auto t0 = Clock::now();
  auto loader = data::DataLoader::Create(src, o);
  if (!loader.ok()) return Fail(loader.status());
  uint64_t checksum = 0;
  const uint64_t first_epoch = src->num_samples() / static_cast<uint64_t>(B);
  double first_epoch_s = 0;
  for (uint64_t k = 0; k < batches; ++k) {
    auto b = (*loader)->Next();
    if (!b.ok()) return Fail(b.status());
    checksum += layout == data::Layout::kPairs ? static_cast<uint64_t>(b->inputs[0]) : b->rows[0];
    if (k + 1 == first_epoch) first_epoch_s = Since(t0);
  }
  const double secs = Since(t0);
  // The epochs after the first, timed in the same process: the mapping is in place by then.
  const double later_tokens = static_cast<double>(batches - first_epoch) * B * T;
  const double later_bps = batches > first_epoch ? later_tokens * 2 / (secs - first_epoch_s) : 0;
  // Dataset bytes consumed: each sample advances T tokens of its file (windows overlap by one).
  const double tokens = static_cast<double>(batches) * B * T;
  uint64_t file_bytes = 0;
  for (const auto& f : src->files()) file_bytes += f.tokens * 2 + 64;
  std::printf(
      "{\"samples\": %llu, \"seconds\": %.3f, \"tokens_per_s\": %.0f, \"bytes_per_s\": %.0f, "
      "\"open_seconds\": %.3f, \"file_bytes\": %llu, \"wait_seconds\": %.3f, \"later_epochs_bytes_per_s\": %.0f, "
      "\"pmd_mapped_bytes\": %llu, \"check\": %llu}\n",
      static_cast<unsigned long long>(batches * static_cast<uint64_t>(B)), secs, tokens / secs,
      tokens * 2 / secs, open_s, static_cast<unsigned long long>(file_bytes),
      (*loader)->total_wait_seconds(), later_bps, static_cast<unsigned long long>(PmdMappedFileBytes()),
      static_cast<unsigned long long>(checksum));
  return 0;
}

int Train(const std::string& glob, const model::GptConfig& c, int B, int steps, int threads) {
  if (steps < 20) {  // the differential is taken over pairs of 10-step blocks, and needs two for its interval
    return Fail(InvalidArgument("--steps " + std::to_string(steps) + ": train mode needs at least 20 steps"));
  }
  const int T = c.context_length;
  Status err;
  auto src = Open(glob, T, static_cast<uint32_t>(c.vocab_size), true, &err);
  if (!src) return Fail(err);
  kernels::SetNumThreads(threads);
  auto gpt = model::Gpt::Create(c);
  if (!gpt.ok()) return Fail(gpt.status());
  model::AdamWConfig oc;
  oc.lr = 1e-4f;
  auto adamw = model::AdamW::Create(oc, (*gpt)->tensors());
  if (!adamw.ok()) return Fail(adamw.status());
  // Synthetic: the first `kHeld` batches of the same stream, read beforehand and cycled.
  constexpr int kHeld = 8;
  const data::GlobalSampler sampler(src->num_samples(), 1, true);
  std::vector<std::vector<int32_t>> held_in(kHeld, std::vector<int32_t>(static_cast<size_t>(B) * T)), held_tg = held_in;
  for (int k = 0; k < kHeld; ++k) {
    Status s = data::ReadRows(*src, sampler, static_cast<uint64_t>(k) * B, 1, 0, held_in[k], held_tg[k]);
    if (!s.ok()) return Fail(s);
  }
  // `rows` set: a loader batch in the stored layout, widened by the model as the trainer does.
  auto step = [&](const int32_t* in, const int32_t* tg, const data::Batch* rows = nullptr) -> Status {
    (*gpt)->ZeroGrad();
    auto l = rows != nullptr ? (*gpt)->ForwardBackwardRows(rows->rows.data(), rows->token_width, B, T, 1.0f)
                             : (*gpt)->ForwardBackward(in, tg, B, T, 1.0f);
    if (!l.ok()) return l.status();
    model::ClipGradNorm((*gpt)->grads(), (*gpt)->num_parameters(), 1.0f);
    (*adamw)->Step((*gpt)->params(), (*gpt)->grads(), oc.lr);
    return Status::Ok();
  };
  // Alternate blocks of steps with each feed, so drift in this machine's speed hits both alike.
  constexpr int kBlock = 10;
  data::LoaderOptions o;
  o.batch_size = B;
  o.start = {1, 0, 0};
  o.layout = data::Layout::kStoredRows;  // as the trainer reads
  auto loader = data::DataLoader::Create(src, o);
  if (!loader.ok()) return Fail(loader.status());
  std::vector<double> with_loader, synthetic;
  for (int s = 0; s < 2; ++s) {  // warm-up
    auto b = (*loader)->Next();
    if (!b.ok()) return Fail(b.status());
    if (Status st = step(nullptr, nullptr, &*b); !st.ok()) return Fail(st);
  }
  const double wait0 = (*loader)->total_wait_seconds();
  double in_next = 0;  // all of the time inside Next(), handing the previous buffer back included
  for (int done = 0; done < steps; done += kBlock) {
    for (int s = 0; s < kBlock; ++s) {
      const auto t0 = Clock::now();
      auto b = (*loader)->Next();
      in_next += Since(t0);
      if (!b.ok()) return Fail(b.status());
      if (Status st = step(nullptr, nullptr, &*b); !st.ok()) return Fail(st);
      with_loader.push_back(Since(t0));
    }
    for (int s = 0; s < kBlock; ++s) {
      const auto t0 = Clock::now();
      const int k = (done + s) % kHeld;
      if (Status st = step(held_in[k].data(), held_tg[k].data()); !st.ok()) return Fail(st);
      synthetic.push_back(Since(t0));
    }
  }
  auto mean = [](const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return s / static_cast<double>(v.size());
  };
  const double a = mean(with_loader), b = mean(synthetic);
  const double waited = (*loader)->total_wait_seconds() - wait0;
  // Per pair of neighbouring blocks, the relative difference: its median, and a 95% interval of its
  // mean (normal approximation), so a reader can tell a real cost from this machine's drift.
  std::vector<double> pairs;
  for (size_t i = 0; i + kBlock <= with_loader.size(); i += kBlock) {
    const std::vector<double> l(with_loader.begin() + static_cast<ptrdiff_t>(i),
                                with_loader.begin() + static_cast<ptrdiff_t>(i + kBlock));
    const std::vector<double> m(synthetic.begin() + static_cast<ptrdiff_t>(i),
                                synthetic.begin() + static_cast<ptrdiff_t>(i + kBlock));
    pairs.push_back((mean(l) - mean(m)) / mean(l));
  }
  const double pm = mean(pairs);
  double var = 0;
  for (double d : pairs) var += (d - pm) * (d - pm);
  const double half = pairs.size() > 1 ? 1.96 * std::sqrt(var / static_cast<double>(pairs.size() - 1) /
                                                          static_cast<double>(pairs.size()))
                                       : 0.0;
  std::vector<double> sorted = pairs;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted.empty() ? 0.0
                        : sorted.size() % 2 ? sorted[sorted.size() / 2]
                                            : (sorted[sorted.size() / 2 - 1] + sorted[sorted.size() / 2]) / 2;
  std::printf(
      "{\"steps\": %zu, \"loader_ms\": %.3f, \"synthetic_ms\": %.3f, \"differential_fraction\": %.5f, "
      "\"differential_median\": %.5f, \"differential_ci95\": [%.5f, %.5f], \"block_pairs\": %zu, "
      "\"measured_wait_fraction\": %.6f, \"next_call_fraction\": %.6f}\n",
      with_loader.size(), 1e3 * a, 1e3 * b, (a - b) / a, median, pm - half, pm + half, pairs.size(),
      waited / (a * static_cast<double>(with_loader.size())), in_next / (a * static_cast<double>(with_loader.size())));
  return 0;
}

int Resume(const std::string& glob, int T, int B) {
  Status err;
  auto src = Open(glob, T, 50257, false, &err);
  if (!src) return Fail(err);
  const data::GlobalSampler sampler(src->num_samples(), 1, true);
  std::printf("{\"num_samples\": %llu, \"resume\": [", static_cast<unsigned long long>(src->num_samples()));
  const uint64_t positions[] = {0, 1000, 1000000, 1000000000, 1000000000000ull};
  for (size_t i = 0; i < std::size(positions); ++i) {
    // Best of 5: the first touch of a file region may be a cold read, which is I/O, not seeking.
    double best = 1e9;
    for (int rep = 0; rep < 5; ++rep) {
      data::LoaderOptions o;
      o.batch_size = B;
      o.start = sampler.StateAt(positions[i]);
      const auto t0 = Clock::now();
      auto loader = data::DataLoader::Create(src, o);
      if (!loader.ok()) return Fail(loader.status());
      auto b = (*loader)->Next();
      if (!b.ok()) return Fail(b.status());
      best = std::min(best, Since(t0));
    }
    std::printf("%s{\"position\": %llu, \"ms\": %.3f}", i ? ", " : "",
                static_cast<unsigned long long>(positions[i]), 1e3 * best);
  }
  std::printf("]}\n");
  return 0;
}

int Gather(const std::string& pattern, int T, int threads, int epochs, bool use_pread) {
  glob_t g;
  if (::glob(pattern.c_str(), 0, nullptr, &g) != 0) {
    std::fprintf(stderr, "bench_dataloader: %s matches nothing\n", pattern.c_str());
    return 1;
  }
  struct Map {
    const unsigned char* p;
    uint64_t windows;
    int fd;  // --access pread: kept open
  };
  std::vector<Map> maps;
  const uint64_t window = 2 * static_cast<uint64_t>(T);  // stride between samples, 2-byte tokens
  uint64_t total = 0;
  for (size_t i = 0; i < g.gl_pathc; ++i) {
    const int fd = ::open(g.gl_pathv[i], O_RDONLY);
    struct stat st;
    if (fd < 0 || ::fstat(fd, &st) != 0) return 1;
    if (st.st_size < 64 + static_cast<off_t>(window) + 2) {  // no whole window
      ::close(fd);
      continue;
    }
    const uint64_t payload = static_cast<uint64_t>(st.st_size) - 64;
    if (use_pread) {
      maps.push_back({nullptr, (payload - 2) / window, fd});
    } else {
      void* p = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
      ::close(fd);
      if (p == MAP_FAILED) return 1;
      maps.push_back({static_cast<const unsigned char*>(p) + 64, (payload - 2) / window, -1});
    }
    total += maps.back().windows;
  }
  ::globfree(&g);
  if (maps.empty()) {
    std::fprintf(stderr, "bench_dataloader: %s: no file holds a sample of %d tokens\n", pattern.c_str(), T + 1);
    return 1;
  }
  const size_t n = static_cast<size_t>(window) + 2;
  std::atomic<uint64_t> sink{0};
  const auto t0 = Clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::mt19937_64 rng(100 + static_cast<uint64_t>(t));
      std::vector<unsigned char> buf(n);
      uint64_t acc = 0;
      const uint64_t mine = static_cast<uint64_t>(epochs) * total / static_cast<uint64_t>(threads);
      if (use_pread) {  // one pread per sample: no mapping, a system call instead
        for (uint64_t k = 0; k < mine; ++k) {
          const Map& m = maps[rng() % maps.size()];
          const off_t at = static_cast<off_t>(64 + (rng() % m.windows) * window);
          if (::pread(m.fd, buf.data(), n, at) != static_cast<ssize_t>(n)) std::abort();
          acc += buf[k % n];
        }
        sink += acc;
        return;
      }
      auto pick = [&]() -> const unsigned char* {
        const Map& m = maps[rng() % maps.size()];
        return m.p + (rng() % m.windows) * window;
      };
      const unsigned char* next = pick();
      for (uint64_t k = 0; k < mine; ++k) {
        const unsigned char* cur = next;
        next = pick();
        for (size_t off = 0; off < n; off += 64) __builtin_prefetch(next + off, 0, 3);
        std::memcpy(buf.data(), cur, n);
        acc += buf[k % n];
      }
      sink += acc;
    });
  }
  for (auto& th : pool) th.join();
  const double secs = Since(t0);
  const double bytes = static_cast<double>(static_cast<uint64_t>(epochs) * total / static_cast<uint64_t>(threads) *
                                           static_cast<uint64_t>(threads)) * static_cast<double>(window);
  // Counted as the loader counts: T tokens (the window's stride) per sample.
  std::printf("{\"seconds\": %.3f, \"bytes_per_s\": %.0f, \"pmd_mapped_bytes\": %llu, \"check\": %llu}\n", secs,
              bytes / secs, static_cast<unsigned long long>(PmdMappedFileBytes()),
              static_cast<unsigned long long>(sink.load()));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Cohort dataloader benchmark"};
  std::string mode, data, out, layout = "rows", access = "mmap";
  int epochs = 1, mib = 512, files = 8, T = 1024, B = 8, threads = 2, depth = 4, steps = 40, compute_threads = 1;
  bool verify = false;
  model::GptConfig c{257, 128, 4, 4, 128};
  app.add_option("--mode", mode)->required()->check(CLI::IsMember({"make", "read", "train", "resume", "gather"}));
  app.add_option("--data", data);
  app.add_option("--out", out);
  app.add_option("--mib", mib);
  app.add_option("--files", files);
  app.add_option("--seq", T);
  app.add_option("--batch", B);
  app.add_option("--threads", threads, "loader threads");
  app.add_option("--depth", depth);
  app.add_option("--epochs", epochs, "read mode: epochs to read");
  app.add_option("--layout", layout, "read mode: rows (stored tokens, as the trainer reads) | pairs (int32 inputs and targets)")
      ->check(CLI::IsMember({"rows", "pairs"}));
  app.add_option("--access", access, "gather mode: mmap (copy out of mappings of the files) | pread (a read per sample)")
      ->check(CLI::IsMember({"mmap", "pread"}));
  app.add_option("--verify", verify, "check payload checksums when opening");
  app.add_option("--steps", steps);
  app.add_option("--compute-threads", compute_threads);
  app.add_option("--layers", c.n_layer);
  app.add_option("--embd", c.n_embd);
  app.add_option("--heads", c.n_head);
  app.add_option("--ctx", c.context_length);
  app.add_option("--vocab", c.vocab_size);
  CLI11_PARSE(app, argc, argv);
  if (mode == "make") return Make(out, mib, files);
  if (mode == "read") {
    return Read(data, T, B, threads, depth, verify, epochs,
                layout == "rows" ? data::Layout::kStoredRows : data::Layout::kPairs);
  }
  if (mode == "train") return Train(data, c, B, steps, compute_threads);
  if (mode == "gather") return Gather(data, T, threads, epochs, access == "pread");
  return Resume(data, T, B);
}
