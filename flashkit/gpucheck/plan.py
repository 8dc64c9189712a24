"""The sections of a GPU check, in the order they run, with their default caps and estimates.

One section is one or more commands run in a subprocess of their own (killed at the section's
cap) and one result file. Seven sections plus the run's summary make eight files, the most a
GPU slot returns. Caps are seconds on a 16-core H200; they sum to :data:`DEFAULT_BUDGET_S`, so
the default run (plus the installs of ``make gpu-check``, seconds) ends inside 8.5 minutes.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Callable

from . import estimate

__all__ = ["Section", "default_plan", "DEFAULT_BUDGET_S", "TEST_TIMEOUT_S", "BENCH_CASES",
           "TEST_SELECTIONS"]

# Seconds one test may take before pytest-timeout fails it (a Triton compile of the decode
# kernel took 2.54 s on the CPU box, bench/results/; a test 40x that is hung, not slow).
TEST_TIMEOUT_S = 120

REPO = Path(__file__).resolve().parents[2]
_DECODE, _PREFILL = "BatchDecodeWithPagedKVCacheWrapper", "single_prefill_with_kv_cache"
# The benchmarks of each section, headline shapes first (case names; see bench/cases/).
BENCH_CASES = {
    # The cases the goals name first (decode at kv >= 4k and skewed, prefill at 8k), so a
    # section cut at its cap has them.
    "attention": [f"{op}/{shape}" for op, shape in (
        (_DECODE, "b32_kv4096_uniform"), (_DECODE, "b64_kv4096_zipf"), (_PREFILL, "causal_seq8192"),
        (_DECODE, "b32_kv32768_uniform"), (_PREFILL, "causal_seq16384"),
        (_PREFILL, "causal_seq4096"), (_DECODE, "b32_kv1024_uniform"),
        (_DECODE, "b32_kv16384_uniform"), (_PREFILL, "causal_seq1024"),
        (_PREFILL, "causal_seq2048"))],
    "ssm": [f"chunk_ssd_scan/{ck}b{b}_L{L}_h80_p64_n128_g1"
            for b, L in ((1, 8192), (8, 8192), (1, 32768)) for ck in ("", "ckpt_")],
    "moe": [f"fused_moe/{m}_t{t}" for m in ("mixtral", "qwen3_30b_a3b") for t in (64, 512, 4096)],
    "misc": ["merge_states/seq4096_n8_h32_d128", "merge_states/seq16384_n32_h32_d128",
             "APOLLO/llama7b_h4096_l4_r256"],
}


@dataclasses.dataclass
class Section:
    """One step of the check.

    name : file stem and the word used in the summary
    title : what it does, for the plan
    cap_s : default cap (seconds); scaled to the budget by the runner
    commands : argv lists run one after another; ``{result}`` in an argument is replaced by
        the path the command writes its JSON (or JSON-lines) result to, ``{extra:NAME}`` by
        the path of a further JSON record, kept in the same file under ``extra[NAME]``
    result : "json" (one record, possibly rewritten as it goes) or "jsonl" (one line per item)
    estimate_s : expected seconds on an H200, from the section's sizes
    detail : what the estimate counts, for the plan
    env : extra environment variables of the commands
    """

    name: str
    title: str
    cap_s: float
    commands: list[list[str]]
    result: str = "json"
    estimate_s: float = 0.0
    detail: str = ""
    env: dict = dataclasses.field(default_factory=dict)
    index: int = 0  # the file's number (NN_name.json), fixed by the full plan
    cwd: str | None = None  # where the commands run (pytest's paths are the checkout's)


# The gpu-marked tests first (they are few), then every other kernel test: on a GPU the suite
# runs its kernels there (tests/helpers.device() is cuda).
TEST_SELECTIONS = [["tests", "-m", "gpu"],
                   ["tests/ops", "tests/optim", "tests/moe", "-m", "not gpu and not slow"]]


def _pytest_commands(python: str, workers: int, plugins: set[str]) -> list[list[str]]:
    """pytest over TEST_SELECTIONS, with a per-test timeout and xdist where installed."""
    base = [python, "-m", "pytest", "-q", "-p", "flashkit.gpucheck.pytest_log"]
    if "timeout" in plugins:
        base += ["--timeout", str(TEST_TIMEOUT_S)]
    if "xdist" in plugins and workers > 1:
        base += ["-n", str(workers)]
    return [base + args for args in TEST_SELECTIONS]


def _bench(python: str, cases: list[str], results: Callable[[str], str],
           quick: bool) -> list[list[str]]:
    # quick: the ops' smallest --quick cases on this machine's device (a rehearsal).
    select = sorted({c.split("/")[0] for c in cases}) + ["--quick"] if quick else [
        *cases, "--device", "cuda"]
    return [[python, "-m", "flashkit.bench.run", *select, "--no-save", "--json", "{result}",
             "--ceilings", results("environment")]]


# The 7B hybrid's three layer kinds at 16-16384 tokens: ~10 s of kernels on an H200 (the
# 16k attention layer, 4.4e13 causal FLOPs, dominates) plus their first compiles.
CACHE_LATENCY_S = 20


def _cache_latency(python: str, quick: bool) -> list[str]:
    # quick: one point on this machine's device (the 7B layers take seconds per call on a CPU)
    return [python, "-m", "flashkit", "cache-latency", "--max-tokens", "16" if quick else "16384",
            "--rep-ms", "20", "--out", "{extra:prefix_cache_latency}"]


def default_plan(out_dir: str, *, python: str = sys.executable, workers: int | None = None,
                 plugins: set[str] | None = None, n_tests: int | None = None,
                 quick: bool = False) -> list[Section]:
    """The sections of ``python -m flashkit.gpucheck``, in order (``n_tests``: how many tests
    the test section collects, for its estimate; None: not counted). ``quick``: a rehearsal of
    the mechanics on any machine (the gpu-marked tests only, the ops' --quick cases on this
    device, cold JIT of nvrtc and the first plan only); estimates stay the GPU run's."""
    workers = workers or os.cpu_count() or 1
    plugins = estimate.pytest_plugins() if plugins is None else plugins

    def results(name):
        return os.path.join(out_dir, f"{index[name]:02d}_{name}.json")

    index = {"environment": 1, "tests": 2, "attention": 3, "ssm": 4, "moe": 5, "misc": 6,
             "jit_cold": 7}
    tests_est, tests_detail = estimate.tests(n_tests, workers, plugins)
    sections = [
        Section("environment", "device, clocks, driver, versions; copy and bf16 matmul ceilings",
                25, [[python, "-m", "flashkit.gpucheck.environment", "--json", "{result}"]],
                estimate_s=estimate.ENVIRONMENT_S, detail="start + 1 GiB copies + 8192^3 matmul"),
        Section("tests", "pytest: -m gpu, then the kernel tests (tests/ops, optim, moe) on the "
                "GPU", 130, _pytest_commands(python, workers, plugins)[:1 if quick else None],
                result="jsonl", cwd=str(REPO),
                estimate_s=tests_est, detail=tests_detail),
    ]
    for name, cap, title in (("attention", 100, "paged decode kv 1k-32k + Zipf; causal prefill "
                              "1k-16k"),
                             ("ssm", 30, "chunk_ssd_scan, Mamba-2 2.7B, with/without checkpoints"),
                             ("moe", 45, "fused_moe: Mixtral 8x top-2, Qwen3-30B-A3B 128x top-8"),
                             ("misc", 75, "merge_states; the APOLLO step; the prefix cache's "
                              "prefill-latency table (7B hybrid, 16-16k tokens)")):
        est, detail = estimate.bench(BENCH_CASES[name])
        commands = _bench(python, BENCH_CASES[name], results, quick)
        if name == "misc":
            commands.append(_cache_latency(python, quick))
            est, detail = est + CACHE_LATENCY_S, f"{detail} + latency table ~{CACHE_LATENCY_S} s"
        sections.append(Section(name, title, cap, commands, estimate_s=est, detail=detail))
    est, detail = estimate.jit_cold()
    sections.append(Section(
        "jit_cold", "cold JIT: first-call wait per backend, fresh processes, empty caches", 70,
        [[python, "-m", "flashkit.bench.jit_cold", "--repeats", "1", "--no-save", "--json",
          "{result}", *(["--only", "plan", "nvrtc"] if quick else [])]],
        estimate_s=est, detail=detail))
    for s in sections:
        s.index = index[s.name]
    return sections


DEFAULT_BUDGET_S = 25 + 130 + 100 + 30 + 45 + 75 + 70  # 475 s
