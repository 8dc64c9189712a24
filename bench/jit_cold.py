"""Cold JIT time: how long a first call waits for a kernel that no cache holds.

``python -m flashkit.bench.jit_cold [--repeats N] [--json PATH] [--no-save]``. Every sample
runs in a fresh Python with empty flashkit and Triton caches (a user's first call after
install), on the paged-decode specialization the attention benchmarks use (bf16, head_dim 128,
32 q / 8 kv heads, page 16):

- ``nvrtc``: the CUDA decode kernel built for the GPU's arch (sm_90 without one): render,
  NVRTC compile, cache write. ``warm`` is the next process's build, a cache hit.
- ``triton``: on a GPU, the first BatchDecodeWithPagedKVCacheWrapper.run() minus the second
  (render, Triton compile and load, launch); without one, Triton's compile of the same kernel
  and its merge for sm_90 (flashkit.jit.triton_aot), the part of a cold call that dominates.
- ``ninja``: the split-KV planner's C++ extension (g++ and link): what a first plan() waited
  for before the planner moved off the first call's path.
- ``plan``: the first ``plan_split_kv(backend="auto")`` of a process on an empty cache (the
  Python planner serves while the C++ one builds in the background; the build is then awaited,
  not counted).
- ``decode``: on a GPU, a cold decode specialization end to end: wrapper, plan() and the first
  run() (every compile included), synchronized.

The issue's target for a decode specialization is < 2 s. Medians of ``--repeats`` processes.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

from . import record

SHAPE = dict(dtype="bfloat16", head_dim=128, num_qo_heads=32, num_kv_heads=8, page_size=16)

_NVRTC = """
import time, torch
from flashkit import jit
from flashkit.ops.attention.decode_cuda import decode_cuda_spec
arch = ("sm_%d%d" % torch.cuda.get_device_capability()) if torch.cuda.is_available() else "sm_90"
spec = decode_cuda_spec(torch.bfloat16, 128, "NHD", arch)
t = time.perf_counter(); jit.build(spec); print(time.perf_counter() - t)
"""

# One paged decode batch (kv 1000 and 300, GQA 32/8, hd128, page 16, bf16), planned on the GPU.
_GPU_DECODE_PLAN = """
dev, bf16 = "cuda", torch.bfloat16
lens = [1000, 300]
pages = [-(-n // 16) for n in lens]
indptr = torch.tensor([0, pages[0], sum(pages)], dtype=torch.int32)
last = torch.tensor([n - (p - 1) * 16 for n, p in zip(lens, pages)], dtype=torch.int32)
cache = torch.randn(sum(pages), 2, 16, 8, 128, device=dev, dtype=bf16)
q = torch.randn(2, 32, 128, device=dev, dtype=bf16)
w = BatchDecodeWithPagedKVCacheWrapper(torch.empty(1 << 24, dtype=torch.uint8, device=dev))
w.plan(indptr, torch.arange(sum(pages), dtype=torch.int32), last, 32, 8, 128, 16, q_data_type=bf16)
"""

_TRITON_GPU = """
import time, torch
from flashkit.ops.attention import BatchDecodeWithPagedKVCacheWrapper
""" + _GPU_DECODE_PLAN + """
times = []
for _ in range(2):
    torch.cuda.synchronize(); t = time.perf_counter()
    w.run(q, cache); torch.cuda.synchronize(); times.append(time.perf_counter() - t)
print(times[0] - times[1])
from flashkit.ops.scheduler import planner_spec
from flashkit.ops.scheduler.background import wait
wait(planner_spec(), timeout=600)  # no compiler left running into the next sample
"""

# Without a GPU: record the decode launches under the interpreter, then time the compile for
# sm_90 (compile_launches reports each kernel's seconds; the subprocess start is not counted).
_TRITON_AOT = """
import os
os.environ["TRITON_INTERPRET"] = "1"; os.environ["FLASHKIT_INTERPRET_BF16_DOT"] = "native"
import torch
from flashkit.jit.triton_aot import compile_launches, record_launches
from flashkit.ops.attention import BatchDecodeWithPagedKVCacheWrapper
bf16 = torch.bfloat16
w = BatchDecodeWithPagedKVCacheWrapper(torch.empty(1 << 22, dtype=torch.uint8), backend="triton")
w.plan(torch.tensor([0, 2], dtype=torch.int32), torch.arange(2, dtype=torch.int32),
       torch.tensor([9], dtype=torch.int32), 32, 8, 128, 16, q_data_type=bf16)
with record_launches() as launches:
    w.run(torch.randn(1, 32, 128).to(bf16), torch.randn(2, 2, 16, 8, 128).to(bf16))
results = compile_launches(launches, archs=("sm_90",))
assert all(r["ok"] for r in results), results
print(sum(r["seconds"] for r in results))
from flashkit.ops.scheduler import planner_spec
from flashkit.ops.scheduler.background import wait
wait(planner_spec(), timeout=600)  # no compiler left running into the next sample
"""

_PLAN = """
import time
from flashkit.ops.scheduler import plan_split_kv, planner_spec
from flashkit.ops.scheduler.background import wait
t = time.perf_counter()
plan_split_kv([1000, 300] * 32, 264, page_size=16)
print(time.perf_counter() - t)
wait(planner_spec(), timeout=600)
"""

_DECODE_GPU = """
import time, torch
from flashkit.ops.attention import BatchDecodeWithPagedKVCacheWrapper
from flashkit.ops.scheduler import planner_spec
from flashkit.ops.scheduler.background import wait
torch.empty(1, device="cuda")  # the CUDA context and the imports are not the JIT's wait
t = time.perf_counter()
""" + _GPU_DECODE_PLAN + """
w.run(q, cache); torch.cuda.synchronize()
print(time.perf_counter() - t)
wait(planner_spec(), timeout=600)
"""

_NINJA = """
import time
t = time.perf_counter()
from flashkit.ops.scheduler.planner import _ninja_module
_ninja_module(); print(time.perf_counter() - t)
"""


def _sample(code: str, env: dict) -> float:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"cold-JIT sample failed:\n{proc.stderr[-3000:]}")
    return float(proc.stdout.strip().splitlines()[-1])


# The goals first (a cut run keeps them): a cold decode end to end, the first plan.
KINDS = ("decode", "plan", "nvrtc", "triton", "ninja")


def measure(repeats: int = 3, only=KINDS) -> list[dict]:
    """One row per backend in ``only``: cold (and, for nvrtc, warm) seconds, median over
    ``repeats``."""
    import torch

    gpu = torch.cuda.is_available()
    kinds = [("nvrtc", _NVRTC, "CUDA paged decode, bf16 hd128 NHD, built for "
              + ("the GPU's arch" if gpu else "sm_90 (no GPU: compile only)")),
             ("triton", _TRITON_GPU if gpu else _TRITON_AOT,
              "first decode run() minus the second" if gpu else
              "Triton compile of the decode + merge kernels for sm_90 (no GPU)"),
             ("ninja", _NINJA, "split-KV planner extension (C++, pybind11)"),
             ("plan", _PLAN, "first plan_split_kv(auto), empty cache (C++ builds behind it)")]
    if gpu:
        kinds.append(("decode", _DECODE_GPU, "cold decode specialization end to end: plan() "
                      "+ first run(), bf16 hd128 GQA4 page 16"))
    rows = []
    for name, code, what in (k for k in kinds if k[0] in only):
        cold, warm = [], []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                env = dict(os.environ, FLASHKIT_CACHE_DIR=os.path.join(tmp, "fk"),
                           TRITON_CACHE_DIR=os.path.join(tmp, "triton"))
                env.pop("FLASHKIT_DISABLE_JIT", None)
                cold.append(_sample(code, env))
                if name == "nvrtc":
                    warm.append(_sample(code, env))
        rows.append({"backend": name, "what": what, "cold_s": statistics.median(cold),
                     "cold_samples_s": cold,
                     "warm_s": statistics.median(warm) if warm else None,
                     "target_s": 2.0 if name in ("nvrtc", "triton", "decode") else None})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flashkit.bench.jit_cold", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", nargs="+", choices=KINDS, default=KINDS,
                   help="backends to time (decode: GPU only)")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    args_list = sys.argv[1:] if argv is None else list(argv)
    rec = {"kind": "jit_cold", "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(),
           "command": shlex.join([sys.executable, "-m", "flashkit.bench.jit_cold", *args_list]),
           **record.environment(device), "shape": SHAPE, "rows": [], "complete": False}
    for kind in args.only:  # one backend at a time: a run stopped from outside keeps the rest
        for r in measure(args.repeats, (kind,)):
            rec["rows"].append(r)
            warm = f", warm {r['warm_s'] * 1e3:.1f} ms" if r["warm_s"] is not None else ""
            print(f"{r['backend']:7s} cold {r['cold_s']:.2f} s{warm}  ({r['what']})",
                  flush=True)
            if args.json:
                record.write_json(rec, args.json)
    rec["complete"] = True
    if args.json:
        record.write_json(rec, args.json)
    out = record.results_dir()
    if out is not None and not args.no_save:
        print("saved", record.save(rec, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
