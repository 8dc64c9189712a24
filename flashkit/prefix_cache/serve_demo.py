"""The serving demo at the end of ``flashkit demo``: multi-turn sessions from the trace
generator served by the tiny hybrid model through the prefix cache, every answer checked
against its recompute."""
from __future__ import annotations

import time

import torch

__all__ = ["serve_sessions"]

# bf16 attention over a KV pool written by resumed vs. one-shot forwards: max |diff| observed
# 2.2e-4 on logits of magnitude ~4 (tests/prefix_cache/test_engine.py); a wrong slot gives ~1
TOL = dict(atol=2e-3, rtol=1e-3)


def serve_sessions(sessions: int = 20, max_turns: int = 3, seed: int = 0,
                   backend: str = "torch") -> dict:
    """Serve a sharegpt-profile trace (short system prompts, a vocabulary of 512) through a
    Marconi cache (online alpha) holding a fraction of the working set; returns the metrics:
    requests, input_tokens, prefill_tokens (computed), hit_tokens, token_hit_rate,
    request_hit_rate, flops_saved_fraction (of the model's prefill FLOPs), evictions,
    all_equal (every request's logits equal one forward from scratch), max_abs_diff, alpha,
    seconds."""
    from .engine import Engine, TinyHybrid
    from .traces import TraceConfig, generate_trace

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # d_model 32: a second thread only adds contention
    try:
        t0 = time.perf_counter()
        model = TinyHybrid(layers="sasa", vocab=512, seed=seed)
        reqs = generate_trace(TraceConfig(profile="sharegpt", sessions=sessions,
                                          max_turns=max_turns, seed=seed, pool_size=4,
                                          sys_median=32, vocab=512))
        cfg = model.config
        # about a third of the trace's distinct tokens, and a dozen checkpoints
        distinct = sum(len(r["output_tokens"]) + len(r["input_tokens"]) for r in reqs
                       if r["turn_id"] == max(x["turn_id"] for x in reqs
                                              if x["session_id"] == r["session_id"]))
        cap = distinct // 3 * cfg.kv_bytes_per_token + 12 * cfg.state_bytes
        engine = Engine(model, cap, num_slots=distinct + 4096, policy="marconi",
                        backend=backend)
        n_in = hit = hits = 0
        saved = total = 0.0
        worst, equal = 0.0, True
        for r in reqs:
            inp, out = r["input_tokens"], r["output_tokens"]
            req, first = engine.start(inp, out)
            logits = torch.cat([first[None], engine.feed(req)]) if len(out) else first[None]
            engine.finish(req)
            ref = model.logits_from_scratch(req.seq, backend=backend)[len(inp) - 1:]
            if len(out):
                ref = ref[:len(out) + 1]
            worst = max(worst, float((logits[:len(ref)] - ref).abs().max()))
            equal &= bool(torch.allclose(logits[:len(ref)], ref, **TOL))
            n_in += len(inp)
            hit += req.hit
            hits += req.hit > 0
            saved += cfg.prefill_flops(req.hit)
            total += cfg.prefill_flops(len(inp))
        return {"requests": len(reqs), "sessions": sessions, "input_tokens": n_in,
                "prefill_tokens": n_in - hit, "hit_tokens": hit,
                "token_hit_rate": hit / n_in, "request_hit_rate": hits / len(reqs),
                "flops_saved_fraction": saved / total, "evictions": engine.cache.tree.evictions,
                "all_equal": equal, "max_abs_diff": worst, "alpha": engine.cache.alpha,
                "seconds": time.perf_counter() - t0}
    finally:
        torch.set_num_threads(threads)
