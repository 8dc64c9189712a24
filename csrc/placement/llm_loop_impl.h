// The event loop proper and the engine calls it makes; included by placement/llm_loop.h (the
// state and the small helpers). Each function names the Python it reproduces.
#pragma once

namespace flashkit {
namespace placement {

// PlacementEngine._pick_scan over _scan_scores: per host (score x 8192 + cell id) + lowest id of
// its cell x by_id x 8192, +inf where the cell's buckets or the host's capacity cannot fit.
inline int64_t LLMLoop::pick_scan(double n0, double n1, const double* st, int64_t nb0,
                                  int64_t nb1) {
  const double by_id = a_.by_id * 8192.0;
  int64_t k = -1;
  double best = kInf;
  for (int64_t h = 0; h < H_; ++h) {
    const int64_t c = cell_of_[h];
    double s = kInf;
    if (c < 0) {  // out of the index: the reference's extra +inf entry
      s_[h] = s;
      continue;
    }
    if (b0_[h] >= nb0 && b1_[h] >= nb1) {  // the cell's buckets, (c / w) % w and c % w
      s = st[c] * 8192.0 + static_cast<double>(c);
    }
    s = s + cell_min_[c] * by_id;
    if (free0_[h] < n0 - kEps || free1_[h] < n1 - kEps) s = kInf;
    s_[h] = s;
    if (s < best) best = s, k = h;  // the first minimum, as argmin
  }
  if (k < 0) return -1;
  const int64_t c = cell_of_[k];
  const int64_t size = count_[c];
  if (size == 1) return k;
  if (size > kCellScan) {  // HostIndex.pick: not searched whole
    const int64_t b0 = (c % (w_ * w_)) / w_, b1 = c % w_;
    if (b0 > nb0 && b1 > nb1) return static_cast<int64_t>(cell_min_[c]);
    int64_t found = 0, pick = -1;
    double pick_key = kInf;
    const uint64_t* bits = &bits_[c * words_];
    for (int64_t wd = 0; wd < words_ && found < kCellScan; ++wd) {
      for (uint64_t b = bits[wd]; b && found < kCellScan; b &= b - 1) {
        const int64_t h = wd * 64 + __builtin_ctzll(b);
        if (!fits(h, n0, n1)) continue;
        ++found;
        const double key = host_key(h, n0, n1);
        if (pick < 0 || key < pick_key) pick = h, pick_key = key;  // ascending: lower id on ties
      }
    }
    return pick;
  }
  // the fitting hosts of that cell share (score, cell id, lowest id): the first minimum key
  int64_t pick = -1;
  double pick_key = kInf;
  for (int64_t h = 0; h < H_; ++h) {
    if (s_[h] != best) continue;
    const double key = host_key(h, n0, n1);
    if (pick < 0 || key < pick_key) pick = h, pick_key = key;
  }
  return pick;
}

// PlacementEngine.place (scan path) and assign
inline int64_t LLMLoop::place(int64_t j, double now, double r) {
  const double n0 = need0_[j], n1 = a_.slot;
  const int64_t c = life_class(r);
  const int64_t nb0 = bucket(n0), nb1 = bucket(n1);
  const int64_t tilt = a_.n_tilt > 1 ? nb0 - nb1 + a_.q : 0;
  const double* st = a_.statics + (c * a_.n_tilt + tilt) * cells_;
  const int64_t h = pick_scan(n0, n1, st, nb0, nb1);
  if (h < 0) return -1;
  assign(j, h, now, r);
  return h;
}

// PlacementEngine.assign (no capacity check: place() found the room, migrate() restores)
inline void LLMLoop::assign(int64_t j, int64_t h, double now, double r) {
  std::vector<int64_t>& its = items_[h];
  if (its.empty()) exit_[h] = now;
  free0_[h] -= need0_[j];
  free1_[h] -= a_.slot;
  item_pos_[j] = static_cast<int64_t>(its.size());
  its.push_back(j);
  item_host_[j] = h;
  if (now + r >= exit_[h]) exit_[h] = now + r, anchor_[h] = j;
}

// PlacementEngine.release. Its free-capacity update is left out: in this loop publish() always
// overwrites the host's free capacity before anything reads it.
inline void LLMLoop::release(int64_t j, double now) {
  const int64_t h = item_host_[j];
  std::vector<int64_t>& its = items_[h];
  const int64_t last = its.back();
  its[item_pos_[j]] = last;
  item_pos_[last] = item_pos_[j];
  its.pop_back();
  item_host_[j] = -1;
  if (its.empty()) {
    exit_[h] = now;
  } else if (anchor_[h] == j) {  // max over (now + remaining, item), as Python's tuples
    double be = -kInf;
    int64_t bj = -1;
    for (int64_t i : its) {
      const double e = now + remaining(i, now);
      if (e > be || (e == be && i > bj)) be = e, bj = i;
    }
    exit_[h] = be;
    anchor_[h] = bj;
  }
}

// PlacementEngine.refresh: the latest predicted exit per host, (exit, item) maximal; hosts whose
// class changed are re-indexed (with life_class, as the reference's _reindex does).
inline void LLMLoop::refresh(double now) {
  const int64_t top = a_.n_classes - 1;
  for (int64_t h = 0; h < H_; ++h) {
    double be = now;
    int64_t bj = -1;
    for (int64_t i : items_[h]) {
      const double e = now + remaining(i, now);
      if (bj < 0 || e > be || (e == be && i > bj)) be = e, bj = i;
    }
    exit_[h] = be;
    anchor_[h] = bj;
    int64_t c = a_.n_classes;
    if (bj >= 0) {
      const double rel = be - now;
      c = 0;
      if (a_.uses_lifetime && !(rel < a_.r0)) {
        const double k = 1.0 + std::floor(std::log2(rel / a_.r0));
        c = k > static_cast<double>(top) ? top : static_cast<int64_t>(k);
      }
    }
    if (c != host_cls_[h]) reindex(h, now);
  }
}

// llm_sim.publish: the instance's new "KV full" time and free capacity, then re-index it
inline void LLMLoop::publish(int64_t h, double now) {
  const double t = active_[h] ? now + (a_.cap - used_[h]) / static_cast<double>(active_[h]) : kInf;
  full_at_[h] = t;
  // the earliest full instance, (time, id) smallest, kept as it changes instead of a scan of
  // all instances per event (1M requests on 64 instances: 1.09 vs 1.17 s, two alternating runs)
  if (h == full_h_) {
    if (t > full_t_) {
      full_h_ = -2;  // it moved later: another may be first now, found before the next event
    } else {
      full_t_ = t;
    }
  } else if (full_h_ != -2 && (t < full_t_ || (t == full_t_ && h < full_h_))) {
    full_t_ = t, full_h_ = h;
  }
  const double f0 = 1 - used_[h] / a_.cap;
  free0_[h] = f0 < 0.0 ? 0.0 : f0;
  free1_[h] = 1 - static_cast<double>(active_[h]) * a_.slot;
  reindex(h, now);
}

// llm_sim.place: the instance request j (c tokens of KV) is placed on, or -1 where none has room
inline int64_t LLMLoop::place_on(int64_t j, int64_t c, double now, double r) {
  int64_t failed = -1;
  while (true) {
    const int64_t h = place(j, now, r);
    if (h < 0) return -1;
    sync(h, now);
    if (used_[h] + static_cast<double>(c) + 1 <= a_.cap && active_[h] < a_.max_batch) return h;
    release(j, now);  // the index was stale: KV grew
    publish(h, now);
    if (h == failed) {  // exact already: a prediction under one token asked for too little
      const double one = static_cast<double>(c + 1) / a_.cap;
      if (need0_[j] >= one) return -1;
      need0_[j] = one < 1.0 ? one : 1.0;
    }
    failed = h;
  }
}

// llm_sim.settle: request j starts (or goes on) decoding on h, placed there already
inline void LLMLoop::settle(int64_t j, int64_t h, double now) {
  const int64_t rem = a_.gen0[j] - done_[j];
  used_[h] += static_cast<double>(ctx_[j]);
  ++active_[h];
  admitted_at_[j] = now;
  end_[j] = now + static_cast<double>(rem);  // the oracle knows the delay too
  newest_[h].push_back(j);
  ++dep_ver_[j];
  deps_.push({now + static_cast<double>(rem), j, dep_ver_[j]});
  publish(h, now);
}

// llm_sim.admit: the queue head while it fits somewhere (the index may be stale: KV grew)
inline void LLMLoop::admit(double now) {
  const bool lifetime_aware = a_.uses_lifetime;
  while (!queue_.empty()) {
    const int64_t j = queue_.front();
    // age = tokens generated so far: time spent in the queue is not decoding
    start_[j] = now - static_cast<double>(done_[j]);
    const double r = remaining(j, now);
    const double x = lifetime_aware ? (static_cast<double>(ctx_[j]) + r) / a_.cap
                                    : static_cast<double>(ctx_[j] + 1) / a_.cap;
    need0_[j] = x < 1.0 ? x : 1.0;
    const int64_t h = place_on(j, ctx_[j], now, r);
    if (h < 0) return;
    queue_.pop_front();
    res_.wait_steps += now - queued_at_[j];
    ++res_.waited;
    settle(j, h, now);
  }
}

// llm_sim's sampling branch: the sums in host order, as the reference's loops
inline void LLMLoop::sample(double now) {
  int64_t empty = 0;
  double kv = 0.0, slots = 0.0;
  for (int64_t h = 0; h < H_; ++h) {
    const int64_t act = active_[h];
    const double u = used_[h] + static_cast<double>(act) * (now - t_upd_[h]);
    empty += act == 0;
    if (act >= a_.max_batch) kv += a_.cap - u;
    if (act && a_.cap - u < a_.probe) slots += static_cast<double>(a_.max_batch - act) * a_.slot;
  }
  const double H = static_cast<double>(H_);
  res_.t_s.push_back(now * a_.step_s);
  res_.empty_frac.push_back(static_cast<double>(empty) / H);
  res_.stranded_kv.push_back(kv / (a_.cap * H));
  res_.stranded_slots.push_back(slots / H);
}

inline LLMLoopResult LLMLoop::run() {
  int64_t i = 0, completed = 0;
  double next_sample = a_.next_sample, next_refresh = a_.refresh_steps, drain_t = a_.drain_t;
  while (true) {
    const double t_arr = i < a_.n ? a_.arrive[i] : kInf;
    const double t_dep = deps_.empty() ? kInf : deps_.top().t;
    if (full_h_ == -2) {
      full_t_ = kInf, full_h_ = -1;
      for (int64_t h = 0; h < H_; ++h) {
        if (full_at_[h] < full_t_) full_t_ = full_at_[h], full_h_ = h;
      }
    }
    const int64_t x_full = full_h_;
    const double t_full = full_t_;
    const double t_ev = t_dep < t_full ? t_dep : t_full;
    double t_nx = next_sample < next_refresh ? next_sample : next_refresh;
    if (drain_t < t_nx) t_nx = drain_t;
    if (next_mig_ < t_nx) t_nx = next_mig_;
    if (deadline_ < t_nx) t_nx = deadline_;
    double now = t_arr < t_ev ? t_arr : t_ev;
    if (t_nx < now) now = t_nx;
    if (completed == a_.n || now == kInf) break;
    if (now == t_ev) {
      if (t_dep <= t_full) {  // departure
        const Departure d = deps_.top();
        deps_.pop();
        if (d.v != dep_ver_[d.j]) continue;
        const int64_t h = item_host_[d.j];
        leave(d.j, h, now);
        res_.tokens_done += a_.gen0[d.j];
        ++completed;
        res_.last_exit = now;
        publish(h, now);
        if (draining_[h]) {
          ++res_.drain_exited;
          drained_left(d.j, h, now);
        }
        admit(now);
      } else {  // instance x_full's KV is full: preempt its newest request
        std::vector<int64_t>& stack = newest_[x_full];
        while (!stack.empty() && item_host_[stack.back()] != x_full) stack.pop_back();
        if (stack.empty()) throw std::logic_error("llm loop: a full instance holds no request");
        const int64_t j = stack.back();
        stack.pop_back();
        leave(j, x_full, now);
        done_[j] += static_cast<int64_t>(std::nearbyint(now - admitted_at_[j]));
        ctx_[j] = a_.ctx0[j] + done_[j];  // its age is set when it is admitted again
        ++dep_ver_[j];
        ++res_.preemptions;
        queued_at_[j] = now;
        queue_.push_front(j);
        publish(x_full, now);
        if (draining_[x_full]) {
          ++res_.drain_preempted;
          drained_left(j, x_full, now);
        }
        admit(now);
      }
    } else if (now == t_arr) {
      queued_at_[i] = now;
      queue_.push_back(i);
      ++i;
      admit(now);
    } else if (now == next_refresh) {
      refresh(now);
      next_refresh += a_.refresh_steps;
    } else if (now == drain_t) {
      drain_t = kInf;
      drain_start(now);
    } else if (now == next_mig_) {
      const double slots = std::floor((deadline_ - now) * a_.mig_rate + 1e-9);
      const int64_t j = drain_next(now, slots);
      if (j >= 0 && migrate(j, now) && !a_.just_in_time) ++dhead_;
      next_mig_ = pending_.empty() ? kInf : now + a_.mig_dt;
    } else if (now == deadline_) {
      drain_deadline(now);
    } else {
      if (now <= a_.horizon) sample(now);
      next_sample = now <= a_.horizon ? next_sample + a_.sample_dt : kInf;
    }
  }
  for (int64_t h : wave_) res_.drain_empty.push_back(empty_after_[h]);
  return res_;
}

}  // namespace placement
}  // namespace flashkit
