"""`flashkit demo` (and `make demo`): every op on the best device here, checked against its
reference, every JIT backend exercised (the split-KV planner and the placement simulator's
compiled loop against their Python references), then a short timing table."""
from __future__ import annotations

import os
import time


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _op_rows(device: str, backends: list[str]):
    """(op, backend, shape, error, tolerance, seconds) for every check of demo_checks."""
    import torch

    from .demo_checks import CHECKS, DEFAULT_TOLERANCE, TOLERANCE, relative_error

    rows = []
    for op, check in CHECKS.items():
        shape, ref, calls = check(device, backends)
        for backend, call in calls.items():
            t0 = time.perf_counter()
            try:
                out = call()
                if device == "cuda":
                    torch.cuda.synchronize()
                err = relative_error(out, ref)
            except Exception as exc:  # reported as a failed row, never hidden
                shape, err = f"{type(exc).__name__}: {exc}"[:80], float("inf")
            rows.append((op, backend, shape, err, TOLERANCE.get(op, DEFAULT_TOLERANCE),
                         time.perf_counter() - t0))
    return rows


def _nvrtc_rows(device: str):
    """Compile every shipped CUDA specialization (for this GPU, else sm_80 and sm_90)."""
    import torch

    from flashkit import jit, ops  # noqa: F401  (registers the shipped specs)

    if not jit.get_backend("nvrtc").available()[0]:
        return []
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        archs = [f"sm_{major}{minor}"]
    else:
        archs = ["sm_80", "sm_90"]
    specs = [s for s in jit.shipped_specs(archs) if s.backend == "nvrtc"]
    t0 = time.perf_counter()
    results = jit.build_many(specs)
    ok = sum(1 for r in results if not isinstance(r, BaseException))
    compiled = sum(1 for r in results if not isinstance(r, BaseException) and r.compiled)
    return [(f"nvrtc build ({','.join(archs)})", f"{ok}/{len(specs)} ok",
             f"{compiled} compiled, {ok - compiled} cached", time.perf_counter() - t0,
             ok == len(specs))]


def _planner_rows():
    import torch

    from flashkit.ops.scheduler import naive_plan_split_kv, plan_split_kv

    g = torch.Generator().manual_seed(int(time.time()))
    # Pareto(64, 1.2) lengths by inverse CDF: most requests short, a few very long.
    kv_lens = (64 * (1 - torch.rand(256, generator=g)) ** (-1 / 1.2)).clamp(max=65536).long()
    kv_lens[::17] = 0
    t0 = time.perf_counter()
    plan = plan_split_kv(kv_lens, 264, page_size=16, backend="ninja")
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(20):
        plan = plan_split_kv(kv_lens, 264, page_size=16, backend="ninja")
    per_plan = (time.perf_counter() - t0) / 20
    ref = naive_plan_split_kv(kv_lens.tolist(), 264, page_size=16)
    same = all(torch.equal(getattr(plan, f), torch.as_tensor(getattr(ref, f)))
               for f in ("request", "kv_start", "kv_end", "merge_indptr", "worker_indptr",
                         "worker_items", "worker_load"))
    return [("plan_split_kv (ninja)", f"batch 256 -> {plan.num_items} items, chunk {plan.chunk_size}",
             f"first call {first:.2f} s (build or cache load), then {per_plan * 1e6:.0f} us/plan",
             per_plan, same)]


def _placement_rows():
    from flashkit.placement import generate_llm_trace
    from flashkit.placement.llm_sim import simulate_llm

    # 20,000 requests at 60/s on 12 decode instances: enough load that preemptions happen
    tr = generate_llm_trace(20_000, rate=60.0, seed=int(time.time()) % 1000)
    kw = dict(n_instances=12, kv_block_requests=0)
    t0 = time.perf_counter()
    bf = simulate_llm(tr, "best-fit", backend="ninja", **kw)
    first = time.perf_counter() - t0
    lava = simulate_llm(tr, "lava", backend="ninja", **kw)
    ref = simulate_llm(tr, "lava", backend="python", **kw)
    skip = ("seconds", "kv_seconds", "backend")
    same = all(ref[k] == v for k, v in lava.items() if k not in skip)
    return [("placement llm loop (ninja)",
             f"20k requests on 12 instances: {bf['preemptions']} preemptions best-fit, "
             f"{lava['preemptions']} LAVA",
             f"first call {first:.1f} s (build or cache load), then {lava['seconds']:.2f} s a run "
             f"vs {ref['seconds']:.2f} s for the Python loop, "
             f"{'the same' if same else 'different'} metrics", lava["seconds"],
             same)]


def _serving(console) -> bool:
    """Multi-turn sessions served by the tiny hybrid model through the prefix cache."""
    from .prefix_cache.serve_demo import serve_sessions

    console.rule("serving through the prefix cache (flashkit.prefix_cache)")
    r = serve_sessions()
    console.print(
        f"{r['sessions']} sessions, {r['requests']} requests of a sharegpt-profile trace, tiny "
        f"hybrid model (Mamba-2 + attention, flashkit kernels, torch backend), Marconi cache "
        f"holding a third of the working set ({r['evictions']} evictions, alpha {r['alpha']:g})")
    console.print(
        f"  token hit rate {r['token_hit_rate']:.1%}, request hit rate "
        f"{r['request_hit_rate']:.1%}; prefilled {r['prefill_tokens']} of "
        f"{r['input_tokens']} input tokens; prefill FLOPs saved {r['flops_saved_fraction']:.1%}")
    verdict = "[green]every cached answer equals its recompute" if r["all_equal"] else \
        "[red]a cached answer differs from its recompute"
    console.print(f"  {verdict} (max |logit diff| {r['max_abs_diff']:.1e}, bf16 attention) "
                  f"[{r['seconds']:.1f} s]")
    return r["all_equal"]


def main(quick: bool = True) -> int:
    from rich.console import Console
    from rich.table import Table

    device = _device()
    if device == "cpu":
        # Before any Triton module loads: without a GPU, Triton kernels run in its interpreter.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from .doctor import collect

    console = Console(width=150)
    info = collect()
    console.rule("[bold]flashkit demo")
    console.print(f"flashkit {info['flashkit']}  torch {info['torch']}  triton {info['triton']}  "
                  f"{info['nvrtc']}  GPU: {info['gpu']}")
    for name, state in info["backends"].items():
        console.print(f"  {name:<7}{state}")

    backends = ["torch", "triton"] + (["cuda"] if device == "cuda" and
                                      info["backends"]["nvrtc"].startswith("compile +") else [])
    table = Table(title=f"ops on {device}, checked against the float64 reference", title_justify="left")
    for col in ("op", "backend", "shape", "max |err|/(1+|ref|)", "tolerance", "seconds", "status"):
        table.add_column(col)
    all_ok = True
    for op, backend, shape, err, tol, seconds in _op_rows(device, backends):
        ok = err <= tol
        all_ok &= ok
        note = " (interpreter)" if backend == "triton" and device == "cpu" else ""
        table.add_row(op, backend + note, shape, f"{err:.2e}", f"{tol:.1e}", f"{seconds:.3f}",
                      "[green]ok" if ok else "[red]FAIL")
    console.print(table)

    jit_table = Table(title="JIT backends", title_justify="left")
    for col in ("what", "result", "detail", "seconds", "status"):
        jit_table.add_column(col)
    for what, result, detail, seconds, ok in _nvrtc_rows(device) + _planner_rows() + _placement_rows():
        all_ok &= ok
        jit_table.add_row(what, result, detail, f"{seconds:.4f}", "[green]ok" if ok else "[red]FAIL")
    console.print(jit_table)

    from flashkit.bench.run import main as bench_main

    console.rule("timings (flashkit bench --quick)")
    bench_args = ["merge_states", "plan_split_kv", "--device", device, "--no-save"]
    status = bench_main(bench_args + (["--quick"] if quick else []))
    all_ok &= status == 0
    all_ok &= _serving(console)
    console.rule("[green]all checks passed" if all_ok else "[red]some checks failed")
    return 0 if all_ok else 1
