// The llm-domain event loop of flashkit.placement (requests on decode instances, KV growing one
// token per decode step, recompute preemption, an instance drain with KV migrations), in plain
// C++17: the loop of flashkit/placement/llm_sim.py with the parts of engine.py (scan placement,
// assign, release, refresh, exclude), index.py (cells, lowest id per cell), lifetimes.Predictor
// (remaining, alive_at) and policies.py (drain_next) that it calls.
// templates/placement/llm_loop.cpp.j2 binds it; flashkit/placement/llm_native.py passes what does
// not change during a run (the policy's cell scores, the predictor's table and noise factors).
//
// The Python loop is the reference and the two must agree exactly
// (tests/placement/test_llm_native.py): every expression below keeps the reference's operands and
// their order, so the doubles are the same bit for bit. Where the reference's data structure
// has an order of its own it is reproduced:
//   - departures pop by (time, request, version), ties can therefore not depend on the heap;
//   - an instance's "KV full" time: the reference keeps a heap of (time, instance, version) with
//     stale entries; the live entries are exactly full_at[], so the earliest full instance is the
//     argmin of full_at[] with the lowest id on ties, what the heap pops;
//   - a cell of more than 32 hosts is searched in ascending host id (the llm engine's index is
//     built with ordered=True for this);
//   - Python's round() is round-half-even: std::nearbyint in the default rounding mode.
// Not reproduced bit for bit everywhere: the reference's reprediction pass takes classes from
// numpy's log2, this one from the C library's (the same result unless a numpy build dispatches
// log2 to its own AVX-512 code and a value falls within an ulp of a class boundary); likewise
// alive_at's Pareto branch, numpy's power against std::pow.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <queue>
#include <set>
#include <stdexcept>
#include <vector>

namespace flashkit {
namespace placement {

constexpr double kEps = 1e-9;      // index.py _EPS
constexpr int64_t kCellScan = 32;  // index.py _SCAN: cells up to this size are searched whole
constexpr double kInf = std::numeric_limits<double>::infinity();

// Everything the loop reads; arrays are owned by the caller. Sizes were checked by the binding.
struct LLMLoopArgs {
  int64_t n = 0;                  // requests
  const double* arrive = nullptr;   // [n] arrival, in decode steps, non-decreasing
  const int64_t* ctx0 = nullptr;    // [n] context tokens
  const int64_t* gen0 = nullptr;    // [n] generated tokens (>= 1)
  const int64_t* cls = nullptr;     // [n] predictor class (row of table / means)
  const double* mult = nullptr;     // [n] noise factor of each prediction
  const double* start0 = nullptr;   // [n] age origin (arrival)
  const double* end0 = nullptr;     // [n] true end (the oracle's)
  int mode = 0;                     // 0 repredict, 1 one-shot, 2 oracle
  const double* table = nullptr;    // [rows, cols] remaining time by class and age point
  int64_t table_cols = 0;
  const double* means = nullptr;    // [rows]
  double age0 = 1.0, grid_per_doubling = 4.0;
  int64_t grid_points = 96;
  int64_t hosts = 0, q = 16, n_classes = 14;
  double r0 = 16.0;
  const double* statics = nullptr;  // [n_classes, n_tilt, (n_classes + 1) (q + 1)^2]
  int64_t n_tilt = 1;               // 2 q + 1 when balance != 0 (tilt = nb0 - nb1 + q)
  double balance = 0.0, by_id = 1.0;
  bool uses_lifetime = true, key_is_id = false;  // key_is_id: first fit orders hosts by id
  double cap = 0.0, slot = 0.0;     // KV tokens per instance; one batch slot as a fraction
  int64_t max_batch = 1;
  double next_sample = 0.0, sample_dt = 1.0, horizon = 0.0, refresh_steps = 256.0;
  double probe = 0.0, step_s = 0.025;
  // the drain (llm_sim._drain_args; drain_t inf: none), in decode steps
  double drain_t = kInf, drain_len = 0.0, mig_rate = 1.0, mig_dt = 1.0;
  int64_t drain_k = 0, drain_offset = 0;
  const int64_t* rank = nullptr;    // [n] the baselines' drain order
  bool just_in_time = false;        // LARS's drain_next, else the baselines'
  // Predictor.survival_table(), for alive_at in the repredict mode (LARS's drain)
  const double* knots = nullptr;    // [n_knots] every class's knots, class c's shifted by base[c]
  const double* surv = nullptr;     // [n_knots] S on [knots[k], knots[k + 1])
  int64_t n_knots = 0;
  const double* base = nullptr;     // [n_curves]
  const double* t_ref = nullptr;    // [n_curves] where a class curve turns sparse
  int64_t n_curves = 0;
};

struct LLMLoopResult {
  int64_t preemptions = 0, waited = 0, tokens_done = 0;
  double wait_steps = 0.0, last_exit = 0.0;
  std::vector<double> t_s, empty_frac, stranded_kv, stranded_slots;
  int64_t migrations = 0, migrations_failed = 0, migrations_at_deadline = 0;
  int64_t drain_requests = 0, drain_exited = 0, drain_preempted = 0;
  std::vector<double> drain_empty;  // per drained instance: steps from the start to empty, -1
};

class LLMLoop {
 public:
  explicit LLMLoop(const LLMLoopArgs& a)
      : a_(a), H_(a.hosts), w_(a.q + 1), cells_((a.n_classes + 1) * w_ * w_),
        words_((a.hosts + 63) / 64), need0_(a.n, 0.0), start_(a.start0, a.start0 + a.n),
        end_(a.end0, a.end0 + a.n), ctx_(a.ctx0, a.ctx0 + a.n), done_(a.n, 0),
        admitted_at_(a.n, 0.0), queued_at_(a.n, 0.0), dep_ver_(a.n, 0), item_host_(a.n, -1),
        item_pos_(a.n, 0), used_(H_, 0.0), t_upd_(H_, 0.0), full_at_(H_, kInf), active_(H_, 0),
        newest_(H_), free0_(H_, 1.0), free1_(H_, 1.0), exit_(H_, 0.0), anchor_(H_, -1),
        host_cls_(H_, a.n_classes), items_(H_), cell_of_(H_, -1), b0_(H_, a.q), b1_(H_, a.q),
        count_(cells_, 0), excluded_(H_, 0), draining_(H_, 0), empty_after_(H_, -1.0),
        cell_min_(cells_, kInf), bits_(cells_ * words_, 0), s_(H_, kInf),
        r_top_(std::ldexp(a.r0, static_cast<int>(a.n_classes - 2))) {
    for (int64_t h = 0; h < H_; ++h) put(h, cell(a.n_classes, 1.0, 1.0));
  }

  LLMLoopResult run();

 private:
  struct Departure {
    double t;
    int64_t j, v;
    bool operator>(const Departure& o) const {  // Python's tuple order
      if (t != o.t) return t > o.t;
      if (j != o.j) return j > o.j;
      return v > o.v;
    }
  };

  // lifetimes.Predictor.remaining (and remaining_many: the same arithmetic, see the docs)
  double remaining(int64_t j, double now) const {
    const double age = now - start_[j];
    if (a_.mode == 0) {
      int64_t k = 0;
      if (!(age < a_.age0)) {
        k = 1 + static_cast<int64_t>(a_.grid_per_doubling * std::log2(age / a_.age0));
        if (k > a_.grid_points) k = a_.grid_points;
      }
      return a_.table[a_.cls[j] * a_.table_cols + k] * a_.mult[j];
    }
    if (a_.mode == 2) {
      const double d = end_[j] - now;
      return (d < 0.0 ? 0.0 : d) * a_.mult[j];
    }
    const double d = a_.means[a_.cls[j]] * a_.mult[j] - age;
    return d < 0.0 ? 0.0 : d;
  }

  // PlacementEngine.life_class
  int64_t life_class(double r) const {
    if (r < a_.r0) return 0;
    const int64_t top = a_.n_classes - 1;
    if (r >= r_top_) return top;
    const int64_t k = 1 + static_cast<int64_t>(std::log2(r / a_.r0));
    return k > top ? top : k;
  }

  // HostIndex.bucket; free capacities are >= -1e-15 here, so the reference's int() is >= 0 too
  int64_t bucket(double f) const {
    int64_t b = static_cast<int64_t>(f * static_cast<double>(a_.q) + kEps);
    if (b < 0) b = 0;
    return b > a_.q ? a_.q : b;
  }
  int64_t cell(int64_t c, double f0, double f1) const {
    return (c * w_ + bucket(f0)) * w_ + bucket(f1);
  }

  int64_t lowest_member(int64_t c) const {
    const uint64_t* b = &bits_[c * words_];
    for (int64_t k = 0; k < words_; ++k) {
      if (b[k]) return k * 64 + __builtin_ctzll(b[k]);
    }
    return -1;
  }

  // HostIndex.put
  void put(int64_t h, int64_t c) {
    const int64_t old = cell_of_[h];
    if (old == c) return;
    const uint64_t bit = uint64_t{1} << (h % 64);
    if (old >= 0) {
      bits_[old * words_ + h / 64] &= ~bit;
      --count_[old];
      if (cell_min_[old] == static_cast<double>(h)) {
        const int64_t m = lowest_member(old);
        cell_min_[old] = m < 0 ? kInf : static_cast<double>(m);
      }
    }
    if (c >= 0) {  // -1: out of the index (draining)
      bits_[c * words_ + h / 64] |= bit;
      ++count_[c];
      if (static_cast<double>(h) < cell_min_[c]) cell_min_[c] = static_cast<double>(h);
    }
    cell_of_[h] = c;
  }

  // PlacementEngine._reindex (a draining host stays out of the index). The host's buckets
  // are kept beside its cell: the scan then tests them without two integer divisions per host
  // (cell / w % w, cell % w; 1.35 vs 1.24 s for the 1M-request loop, mean of two alternating
  // runs each on the shared 2-core machine, where one run varies by 30 %).
  void reindex(int64_t h, double now) {
    if (excluded_[h]) return;
    int64_t c = a_.n_classes;
    if (!items_[h].empty()) c = a_.uses_lifetime ? life_class(exit_[h] - now) : 0;
    host_cls_[h] = c;
    b0_[h] = bucket(free0_[h]);
    b1_[h] = bucket(free1_[h]);
    put(h, (c * w_ + b0_[h]) * w_ + b1_[h]);
  }

  double host_key(int64_t h, double n0, double n1) const {
    if (a_.key_is_id) return static_cast<double>(h);
    const double a0 = free0_[h] - n0, a1 = free1_[h] - n1;
    if (a_.balance == 0.0) return a0 + a1;
    return a0 + a1 + a_.balance * std::fabs(a0 - a1);
  }
  bool fits(int64_t h, double n0, double n1) const {
    return free0_[h] >= n0 - kEps && free1_[h] >= n1 - kEps;
  }

  int64_t pick_scan(double n0, double n1, const double* st, int64_t nb0, int64_t nb1);
  int64_t place(int64_t j, double now, double r);
  void assign(int64_t j, int64_t h, double now, double r);
  int64_t place_on(int64_t j, int64_t c, double now, double r);
  void settle(int64_t j, int64_t h, double now);
  bool migrate(int64_t j, double now);
  void drained_left(int64_t j, int64_t h, double now) {
    pending_.erase(j);
    if (active_[h] == 0 && empty_after_[h] < 0) empty_after_[h] = now - drain_start_;
  }
  double alive_at(int64_t j, double now, double until) const;
  int64_t drain_next(double now, double slots);
  void drain_start(double now);
  void drain_deadline(double now);
  void release(int64_t j, double now);
  void refresh(double now);
  void sync(int64_t h, double now) {
    used_[h] += static_cast<double>(active_[h]) * (now - t_upd_[h]);
    t_upd_[h] = now;
  }
  void publish(int64_t h, double now);
  void leave(int64_t j, int64_t h, double now) {
    sync(h, now);
    used_[h] -= static_cast<double>(ctx_[j]) + (now - admitted_at_[j]);
    --active_[h];
    release(j, now);
  }
  void admit(double now);
  void sample(double now);

  const LLMLoopArgs a_;
  const int64_t H_, w_, cells_, words_;
  std::vector<double> need0_, start_, end_;
  std::vector<int64_t> ctx_, done_;
  std::vector<double> admitted_at_, queued_at_;
  std::vector<int64_t> dep_ver_, item_host_, item_pos_;
  std::vector<double> used_, t_upd_, full_at_;
  std::vector<int64_t> active_;
  std::vector<std::vector<int64_t>> newest_;  // admission order per instance, for preemption
  std::vector<double> free0_, free1_, exit_;
  std::vector<int64_t> anchor_, host_cls_;
  std::vector<std::vector<int64_t>> items_;   // unordered: only max() and emptiness are read
  std::vector<int64_t> cell_of_, b0_, b1_, count_;
  std::vector<char> excluded_, draining_;     // out of the index; being drained now
  std::vector<double> empty_after_;           // steps from the drain start to empty (-1: not)
  std::vector<int64_t> wave_;                 // the drained instances
  std::set<int64_t> pending_;                 // requests still on them, ascending
  std::vector<int64_t> dqueue_;               // the baselines' drain order
  size_t dhead_ = 0;                          // its next entry
  double drain_start_ = 0.0, deadline_ = kInf, next_mig_ = kInf;
  std::vector<double> cell_min_;
  std::vector<uint64_t> bits_;                // members of each cell, ascending by host id
  std::vector<double> s_;                     // scan scores, one per host
  double full_t_ = kInf;                      // the earliest full_at_ and its instance (-1:
  int64_t full_h_ = -1;                       // none, -2: to be found again)
  const double r_top_;
  std::priority_queue<Departure, std::vector<Departure>, std::greater<Departure>> deps_;
  std::deque<int64_t> queue_;
  LLMLoopResult res_;
};

}  // namespace placement
}  // namespace flashkit

#include "placement/llm_loop_impl.h"
#include "placement/llm_drain_impl.h"
