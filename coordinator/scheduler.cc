#include "coordinator/scheduler.h"

#include <algorithm>
#include <tuple>

namespace cohort::coordinator {

std::vector<Placement> Pack(const std::map<std::string, int>& free, int ranks) {
  if (ranks <= 0) return {};
  std::vector<std::pair<std::string, int>> c;
  for (const auto& [name, n] : free) {
    if (n > 0) c.emplace_back(name, n);
  }
  // Most free slots first; the map's order (names) breaks ties, as stable_sort keeps it.
  std::stable_sort(c.begin(), c.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  // The fewest workers: the smallest k whose k largest hold the job.
  size_t k = 0;
  long sum = 0;
  while (k < c.size() && sum < ranks) sum += c[k++].second;
  if (sum < ranks) return {};
  std::vector<Placement> out;
  int next = 0;
  for (size_t i = 0; i + 1 < k; ++i) {
    out.push_back({c[i].first, next, c[i].second});
    next += c[i].second;
  }
  // The last worker: the smallest that holds the rest (c[k-1] does, so one exists), leaving the
  // larger free blocks whole.
  const int rest = ranks - next;
  size_t best = k - 1;
  for (size_t i = k - 1; i < c.size(); ++i) {
    if (c[i].second >= rest && c[i].second < c[best].second) best = i;  // ties: the first (name order)
  }
  out.push_back({c[best].first, next, rest});
  return out;
}

namespace {

void Take(std::map<std::string, int>* slots, const std::vector<Placement>& p) {
  for (const Placement& x : p) (*slots)[x.worker] -= x.count;
}

}  // namespace

Decision Schedule(const std::vector<QueuedJob>& queue, const std::vector<WorkerCapacity>& workers,
                  const std::vector<RunningJob>& running, int64_t now_ms) {
  std::map<std::string, int> free;
  long total = 0;
  for (const WorkerCapacity& w : workers) {
    free[w.name] = std::max(0, w.slots - w.used);
    total += std::max(0, w.slots);
  }
  std::vector<const QueuedJob*> order;
  for (const QueuedJob& j : queue) order.push_back(&j);
  std::stable_sort(order.begin(), order.end(), [](const QueuedJob* a, const QueuedJob* b) {
    return std::make_tuple(-static_cast<long>(a->priority), a->order, a->id) <
           std::make_tuple(-static_cast<long>(b->priority), b->order, b->id);
  });

  // Jobs that will release slots at a known time: the running ones and those started below.
  std::vector<RunningJob> ending;
  for (const RunningJob& r : running) {
    if (r.ends_at_ms > 0) ending.push_back(r);
  }

  Decision d;
  bool reserved = false;
  std::map<std::string, int> spare;  // slots the reserved job leaves free at its shadow time
  for (const QueuedJob* j : order) {
    if (j->ranks < 1 || j->ranks > total) continue;  // cannot run on the workers that are up
    if (!reserved) {
      std::vector<Placement> p = Pack(free, j->ranks);
      if (!p.empty()) {
        Take(&free, p);
        if (j->time_limit_ms > 0) {
          RunningJob r{j->id, {}, now_ms + j->time_limit_ms};
          for (const Placement& x : p) r.slots[x.worker] += x.count;
          ending.push_back(std::move(r));
        }
        d.starts.push_back({j->id, std::move(p), false});
        continue;
      }
      // The first job that does not fit: when would it, as the limited jobs end?
      reserved = true;
      d.reserved_job = j->id;
      std::stable_sort(ending.begin(), ending.end(), [](const RunningJob& a, const RunningJob& b) {
        return std::tie(a.ends_at_ms, a.id) < std::tie(b.ends_at_ms, b.id);
      });
      std::map<std::string, int> projected = free;
      for (const RunningJob& r : ending) {
        for (const auto& [w, n] : r.slots) {
          if (projected.count(w) > 0) projected[w] += n;  // a worker that went down frees nothing
        }
        std::vector<Placement> q = Pack(projected, j->ranks);
        if (!q.empty()) {
          d.shadow_ms = r.ends_at_ms;
          spare = projected;
          Take(&spare, q);
          break;
        }
      }
      continue;
    }
    // Behind the reservation: only what cannot delay the reserved job.
    if (j->time_limit_ms > 0 && (d.shadow_ms < 0 || now_ms + j->time_limit_ms <= d.shadow_ms)) {
      std::vector<Placement> p = Pack(free, j->ranks);
      if (!p.empty()) {
        Take(&free, p);
        d.starts.push_back({j->id, std::move(p), true});
        continue;
      }
    }
    if (d.shadow_ms >= 0) {
      std::map<std::string, int> usable;
      for (const auto& [w, n] : free) usable[w] = std::min(n, spare.count(w) > 0 ? spare[w] : 0);
      std::vector<Placement> p = Pack(usable, j->ranks);
      if (!p.empty()) {
        Take(&free, p);
        Take(&spare, p);
        d.starts.push_back({j->id, std::move(p), true});
      }
    }
  }
  return d;
}

}  // namespace cohort::coordinator
