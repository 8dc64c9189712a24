"""CUDA shared libraries built once per session with nvcc, and cuobjdump as the oracle.

Each build is one nvcc call (~4 s on 2 cores): two translation units, so the library holds a
device-link container and one container per unit; sm_80 and sm_90 cubins and compute_90 PTX;
template kernels (mangled names), an extern "C" kernel, and host functions to call through ctypes.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest

UNIT_A = r"""
__global__ void add_one(float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] += 1.f;
}
#include <stdexcept>
extern "C" int host_add(int a, int b) { return a + b; }
// unwinding needs .eh_frame_hdr, found through PT_GNU_EH_FRAME after the rewrite
extern "C" int host_catch(int a, int b) {
  try { if (a) throw std::runtime_error("caught"); } catch (const std::exception&) { return b; }
  return 0;
}
extern "C" int launch_add_one(float* x, int n) { add_one<<<1, 32>>>(x, n); return 0; }
"""
# Enough instantiations that the unit's cubins span several 4 KiB pages, so pruning them frees
# whole pages and the file shrinks.
UNIT_B = r"""
namespace ns {
template <typename T, int K>
__global__ void poly(T* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) { T v = x[i]; T acc = 0;
#pragma unroll
    for (int k = 0; k < K; ++k) acc = acc * v + T(k + 1);
    x[i] = acc; }
}
template __global__ void poly<float, 16>(float*, int);
template __global__ void poly<float, 32>(float*, int);
template __global__ void poly<double, 16>(double*, int);
template __global__ void poly<double, 32>(double*, int);
template __global__ void poly<int, 64>(int*, int);
}
extern "C" __global__ void fill_index(int* x) { x[threadIdx.x] = threadIdx.x; }
extern "C" int host_mul(int a, int b) { return a * b; }
"""
GENCODE = ["-gencode", "arch=compute_80,code=sm_80",
           "-gencode", "arch=compute_90,code=[sm_90,compute_90]"]
VARIANTS = {"plain": [], "zstd": ["-Xfatbin", "-compress-all"],
            "lz4": ["-Xfatbin", "-compress-all", "-compress-mode=speed"]}


def _tool(name: str, *wheel_globs: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for g in wheel_globs:
        hits = glob.glob(os.path.join(sys.prefix, "lib", "python*", "site-packages", g))
        if hits:
            return hits[0]
    return None


@pytest.fixture(scope="session")
def cuobjdump() -> str:
    path = _tool("cuobjdump", "nvidia/cu*/bin/cuobjdump", "nvidia/cuda_cuobjdump/bin/cuobjdump",
                 "triton/backends/nvidia/bin/cuobjdump")
    if path is None:
        pytest.skip("cuobjdump not found (pip install nvidia-cuda-cuobjdump)")
    return path


@pytest.fixture(scope="session")
def cuda_lib_dir(tmp_path_factory):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found")
    root = tmp_path_factory.mktemp("cuda-libs")
    (root / "unit_a.cu").write_text(UNIT_A)
    (root / "unit_b.cu").write_text(UNIT_B)
    return root, nvcc


def _build(cuda_lib_dir, variant: str):
    root, nvcc = cuda_lib_dir
    out = root / f"lib{variant}.so"
    if not out.exists():
        subprocess.run([nvcc, "-shared", "-Xcompiler", "-fPIC", *GENCODE, *VARIANTS[variant],
                        "-o", str(out), str(root / "unit_a.cu"), str(root / "unit_b.cu")],
                       check=True, capture_output=True, cwd=root)
    return out


@pytest.fixture(scope="session", params=sorted(VARIANTS))
def cuda_lib(request, cuda_lib_dir):
    """(variant, path) for each of plain, zstd and lz4 compressed fatbins."""
    return request.param, _build(cuda_lib_dir, request.param)


@pytest.fixture(scope="session")
def plain_lib(cuda_lib_dir):
    return _build(cuda_lib_dir, "plain")


def loaded_containers(lib, fn: str = "host_add") -> list[list[tuple[str, str]]]:
    """Per wrapper, the entries its relocated data pointer reaches in the loaded ``lib``."""
    import json
    from pathlib import Path

    script = Path(__file__).with_name("loaded.py")
    out = subprocess.run([sys.executable, str(script), str(lib), fn], check=True,
                         capture_output=True, text=True).stdout
    return [[tuple(e) for e in c] for c in json.loads(out)]


def call_host(lib, fn: str, a: int, b: int) -> int:
    """Load ``lib`` in a fresh interpreter and call its extern "C" ``fn(a, b)``."""
    code = f"import ctypes; print(ctypes.CDLL({str(lib)!r}).{fn}({a}, {b}))"
    return int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                              text=True).stdout)
