// Split-KV work planner: cut each request's KV range into chunks and balance the chunks over
// workers (CTAs) with LPT. Plain C++17, no Python: templates/scheduler/split_kv.cpp.j2 binds it.
//
// The algorithm is specified in flashkit/ops/scheduler/planner.py; ops/scheduler/reference.py is
// the plain-Python oracle, and the two must agree exactly (tests/ops/scheduler/test_planner.py).
//
// Two phases so that the caller can allocate the outputs (numpy arrays today, pinned buffers
// later) and have them written in place:
//   split_kv_shape  - chunk size and item count (a binary search over the makespan model)
//   split_kv_fill   - the items, the merge CSR and the LPT assignment
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <numeric>
#include <utility>
#include <vector>

namespace flashkit {
namespace scheduler {

struct SplitKVShape {
  int64_t chunk_pages;  // c: pages per chunk
  int64_t chunk_size;   // c * page_size, in tokens
  int64_t num_items;    // sum_i ceil(pages_i / c)
};

// ceil(a / b) for a >= 0, b >= 1, without the overflow of (a + b - 1) / b.
inline int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }

// sum_i ceil(pages_i / c) for pages sorted descending with the zeros dropped. A request of at
// most c pages is one item, so only the head of the list needs a division: on a Zipf batch of 256
// requests (264 workers) this took the search from 12 us to 2 us (2-core x86 VM).
inline int64_t split_kv_num_items(const std::vector<int64_t>& pages_desc, int64_t c) {
  int64_t n = static_cast<int64_t>(pages_desc.size());
  for (int64_t p : pages_desc) {
    if (p <= c) break;
    n += ceil_div(p, c) - 1;
  }
  return n;
}

// The makespan model of a chunk of c pages: the longest item, L(c) = min(c * page_size, max_len)
// + item_overhead, against the mean load, A(c) = ceil((sum_len + n_items(c) * item_overhead) / W).
// LPT lands within one item of max(L, A); L grows with c and A shrinks, so the best c sits where
// they cross.
struct SplitKVModel {
  const std::vector<int64_t>& pages_desc;
  int64_t page_size, max_len, sum_len, item_overhead, num_workers;
  int64_t longest(int64_t c) const { return std::min(c * page_size, max_len) + item_overhead; }
  int64_t mean(int64_t c) const {
    return ceil_div(sum_len + split_kv_num_items(pages_desc, c) * item_overhead, num_workers);
  }
  int64_t makespan(int64_t c) const { return std::max(longest(c), mean(c)); }
};

inline SplitKVShape split_kv_shape(const int64_t* kv_lens, int64_t batch, int64_t num_workers,
                                   int64_t page_size, int64_t min_chunk_tokens,
                                   int64_t item_overhead) {
  std::vector<int64_t> pages;
  pages.reserve(static_cast<size_t>(batch));
  int64_t max_len = 0, sum_len = 0;
  for (int64_t i = 0; i < batch; ++i) {
    if (kv_lens[i] > 0) pages.push_back(ceil_div(kv_lens[i], page_size));
    max_len = std::max(max_len, kv_lens[i]);
    sum_len += kv_lens[i];
  }
  std::sort(pages.begin(), pages.end(), std::greater<int64_t>());
  const SplitKVModel model{pages, page_size, max_len, sum_len, item_overhead, num_workers};
  const int64_t min_chunk_pages = std::max<int64_t>(1, ceil_div(min_chunk_tokens, page_size));
  const int64_t hi = std::max(min_chunk_pages, pages.empty() ? 0 : pages.front());
  // Smallest c in [min_chunk_pages, hi] with longest(c) >= mean(c) (monotone); hi if none.
  int64_t lo = min_chunk_pages, up = hi;
  while (lo < up) {
    const int64_t mid = lo + (up - lo) / 2;
    if (model.longest(mid) >= model.mean(mid)) {
      up = mid;
    } else {
      lo = mid + 1;
    }
  }
  int64_t c = lo;
  // Left of the crossing the mean dominates: one page less may still be better (ties: larger c,
  // fewer partial states to merge).
  if (c > min_chunk_pages && model.makespan(c - 1) < model.makespan(c)) --c;
  return {c, c * page_size, split_kv_num_items(pages, c)};
}

// Writes request/kv_start/kv_end [num_items], merge_indptr [batch + 1], worker_indptr
// [num_workers + 1], worker_items [num_items] and worker_load [num_workers].
inline void split_kv_fill(const int64_t* kv_lens, int64_t batch, int64_t num_workers,
                          int64_t item_overhead, const SplitKVShape& shape, int32_t* request,
                          int32_t* kv_start, int32_t* kv_end, int32_t* merge_indptr,
                          int32_t* worker_indptr, int32_t* worker_items, int64_t* worker_load) {
  const int64_t n = shape.num_items;
  const int64_t chunk = shape.chunk_size;
  int64_t k = 0;
  merge_indptr[0] = 0;
  for (int64_t i = 0; i < batch; ++i) {
    for (int64_t start = 0; start < kv_lens[i]; start += chunk, ++k) {
      request[k] = static_cast<int32_t>(i);
      kv_start[k] = static_cast<int32_t>(start);
      kv_end[k] = static_cast<int32_t>(std::min(start + chunk, kv_lens[i]));
    }
    merge_indptr[i + 1] = static_cast<int32_t>(k);
  }

  // LPT: items by cost descending (ties: lower index first), each to the least-loaded worker
  // (ties: lower worker first). cost = length + item_overhead, so every item costs >= 1.
  std::vector<int64_t> cost(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) cost[j] = (kv_end[j] - kv_start[j]) + item_overhead;
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return cost[a] != cost[b] ? cost[a] > cost[b] : a < b;
  });

  // A min-heap of (load, worker): lexicographic order is the tie rule, and as workers are
  // distinct its minimum is unique, so any correct heap gives the same plan. The chosen worker's
  // load only grows, so one sift-down of the root replaces a pop and a push.
  using Slot = std::pair<int64_t, int32_t>;
  std::vector<Slot> heap(static_cast<size_t>(num_workers));
  for (int64_t w = 0; w < num_workers; ++w) heap[w] = {0, static_cast<int32_t>(w)};  // a heap
  std::vector<int32_t> worker_of(static_cast<size_t>(n));
  for (int32_t j : order) {
    worker_of[j] = heap[0].second;
    heap[0].first += cost[j];
    for (int64_t i = 0;;) {
      const int64_t l = 2 * i + 1, r = l + 1;
      if (l >= num_workers) break;
      const int64_t m = (r < num_workers && heap[r] < heap[l]) ? r : l;
      if (!(heap[m] < heap[i])) break;
      std::swap(heap[m], heap[i]);
      i = m;
    }
  }

  // CSR by worker, each worker's items in the order they were assigned (a stable counting sort
  // of the LPT order).
  std::fill(worker_indptr, worker_indptr + num_workers + 1, 0);
  std::fill(worker_load, worker_load + num_workers, 0);
  for (int64_t j = 0; j < n; ++j) {
    ++worker_indptr[worker_of[j] + 1];
    worker_load[worker_of[j]] += cost[j];
  }
  for (int64_t w = 0; w < num_workers; ++w) worker_indptr[w + 1] += worker_indptr[w];
  std::vector<int32_t> next(worker_indptr, worker_indptr + num_workers);
  for (int32_t j : order) worker_items[next[worker_of[j]]++] = j;
}

}  // namespace scheduler
}  // namespace flashkit
