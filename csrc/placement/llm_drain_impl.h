// The instance drain of the llm-domain event loop: migrations, Predictor.alive_at, the policies'
// drain_next, the drain's start and deadline; included by placement/llm_loop.h after the loop
// (placement/llm_loop_impl.h). Each function names the Python it reproduces.
#pragma once

namespace flashkit {
namespace placement {

// llm_sim.migrate: move j off its draining instance with its KV; false (it stays) if no room
inline bool LLMLoop::migrate(int64_t j, double now) {
  const int64_t src = item_host_[j];
  sync(src, now);
  const int64_t g = static_cast<int64_t>(std::nearbyint(now - admitted_at_[j]));
  const int64_t c = a_.ctx0[j] + done_[j] + g;
  const double r = remaining(j, now);
  release(j, now);
  const double x = a_.uses_lifetime ? (static_cast<double>(c) + r) / a_.cap
                                    : static_cast<double>(c + 1) / a_.cap;
  need0_[j] = x < 1.0 ? x : 1.0;
  const int64_t h = place_on(j, c, now, r);
  if (h < 0) {
    ++res_.migrations_failed;
    need0_[j] = 0.0;  // its KV is in used_ already; publish() sets the free KV
    assign(j, src, now, r);
    publish(src, now);
    return false;
  }
  used_[src] -= static_cast<double>(ctx_[j]) + (now - admitted_at_[j]);
  --active_[src];
  done_[j] += g;
  ctx_[j] = c;
  start_[j] = now - static_cast<double>(done_[j]);
  ++res_.migrations;
  settle(j, h, now);
  publish(src, now);
  drained_left(j, src, now);
  return true;
}

// Predictor.alive_at for one request: S(age + d) / S(age) from its class curve (repredict; the
// Pareto shape where the curve is sparse), else whether the predicted remaining time outlasts d
inline double LLMLoop::alive_at(int64_t j, double now, double until) const {
  const double d = until - now;
  if (a_.mode != 0) return remaining(j, now) > d ? 1.0 : 0.0;
  double age = now - start_[j];
  age = age < 0.0 ? 0.0 : age;
  const int64_t c = a_.cls[j];
  const double base = a_.base[c], half = a_.n_curves > 1 ? a_.base[1] / 2 : kInf;
  const double m = a_.mult[j];
  auto s_at = [&](double x) {  // _s[searchsorted(_knots, x, side="right") - 1]
    int64_t k = std::upper_bound(a_.knots, a_.knots + a_.n_knots, x) - a_.knots - 1;
    if (k < 0) k += a_.n_knots;  // numpy's index -1
    return a_.surv[k];
  };
  const double a0 = age < half ? age : half;
  const double x1 = age + d / m;
  const double s0 = s_at(base + a0), s1 = s_at(base + (x1 < half ? x1 : half));
  const double ratio = s1 / s0;
  double r = remaining(j, now) / m;
  r = r < 1e-12 ? 1e-12 : r;
  const double pareto = std::pow(age / (age + d / m), 1 + age / r);
  if (s0 > 0 && age < a_.t_ref[c]) return ratio;
  return age > 0 ? pareto : 0.0;
}

// Policy.drain_next: the request to migrate in this slot (-1: let it pass). Baselines: the
// next of the random order still pending. LARS: none while the slots left can still move every
// pending request, else the one likeliest alive at the deadline (then the longest predicted
// remaining time, then the lowest id: the reference's lexsort)
inline int64_t LLMLoop::drain_next(double now, double slots) {
  if (!a_.just_in_time) {
    while (dhead_ < dqueue_.size() && !pending_.count(dqueue_[dhead_])) ++dhead_;
    return dhead_ < dqueue_.size() ? dqueue_[dhead_] : -1;
  }
  if (static_cast<double>(pending_.size()) <= slots) return -1;
  int64_t best = -1;
  double bp = 0.0, br = 0.0;
  for (int64_t j : pending_) {
    const double p = alive_at(j, now, deadline_), r = remaining(j, now);
    if (best < 0 || p > bp || (p == bp && r > br)) best = j, bp = p, br = r;
  }
  return best;
}

// llm_sim's drain branch: busy instances, spread over the ids, stop admitting
inline void LLMLoop::drain_start(double now) {
  std::vector<int64_t> busy;
  for (int64_t h = 0; h < H_; ++h) {
    if (active_[h]) busy.push_back(h);
  }
  const int64_t nb = static_cast<int64_t>(busy.size());
  const int64_t stride = std::max<int64_t>(1, nb / a_.drain_k);
  for (int64_t k = a_.drain_offset % stride;
       k < nb && static_cast<int64_t>(wave_.size()) < a_.drain_k; k += stride) {
    const int64_t h = busy[k];
    wave_.push_back(h);
    excluded_[h] = 1;  // PlacementEngine.exclude
    put(h, -1);
    draining_[h] = 1;
    pending_.insert(items_[h].begin(), items_[h].end());
  }
  res_.drain_requests = static_cast<int64_t>(pending_.size());
  dqueue_.assign(pending_.begin(), pending_.end());
  std::sort(dqueue_.begin(), dqueue_.end(),
            [&](int64_t x, int64_t y) { return a_.rank[x] < a_.rank[y]; });
  drain_start_ = now;
  deadline_ = now + a_.drain_len;
  next_mig_ = pending_.empty() ? kInf : now + a_.mig_dt;
}

// llm_sim's deadline branch: what is left migrates now; the instances return to service
inline void LLMLoop::drain_deadline(double now) {
  for (int64_t h : wave_) {
    if (!draining_[h]) continue;
    std::vector<int64_t> its(items_[h]);
    std::sort(its.begin(), its.end());
    for (int64_t j : its) {
      if (migrate(j, now)) ++res_.migrations_at_deadline;
    }
  }
  for (int64_t h : wave_) {
    draining_[h] = 0;
    excluded_[h] = 0;
    reindex(h, now);
  }
  pending_.clear();
  deadline_ = next_mig_ = kInf;
  admit(now);
}

}  // namespace placement
}  // namespace flashkit
