"""Every Triton kernel family compiled for sm_80 and sm_90 without a GPU (flashkit.jit.triton_aot):
the launches the ops make under the interpreter must also build for the GPUs, fit their shared
memory, not spill, and use the tensor-core instructions they are written for."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

CASES = Path(__file__).with_name("triton_target_cases.py")

# Dynamic shared memory a block may use: A100 163 KB, H100 227 KB.
SHARED_LIMIT = {"sm_80": 163 * 1024, "sm_90": 227 * 1024}

# Kernels that use tensor cores: (family, kernel) -> at least one launch must show them.
TENSOR_CORE = {
    "attention": ["_attention_fwd_kernel"],
    "ssm": ["_ssd_partial_state_kernel", "_ssd_chunk_scan_kernel"],
    "moe": ["_fused_moe_gemm1_kernel", "_fused_moe_gemm2_kernel"],
    "optim": [],
}

# Bandwidth-bound kernels whose every build must move memory in 16-byte vectors (K/V tiles as
# 16-byte cp.async on both archs: read from the PTX).
WIDE_LOADS = ("_attention_fwd_kernel", "_merge_varlen_kernel", "_fused_moe_gemm1_kernel",
              "_fused_moe_gemm2_kernel")

# Known to spill, (uri prefix, kernel, arch): the float32 SSD scan (tf32x3 dots on 32-row
# tiles; up to ~11 KB a thread on sm_80; float32 is the exactness path, bf16/fp16 the fast
# one), and the 16-bit chunk scan on sm_80 (48 B at 255 registers; 8 warps would cost sm_90
# its 64-row wgmma tiles).
MAY_SPILL = [("chunk_ssd_scan_triton_f32", None, None),
             ("chunk_ssd_scan_triton_", "_ssd_chunk_scan_kernel", "sm_80")]


def _may_spill(r) -> bool:
    return any(r["module"].startswith(m) and k in (None, r["kernel"]) and a in (None, r["arch"])
               for m, k, a in MAY_SPILL)


def _expected_failure(r) -> bool:
    """fp8 e4m3 has no Triton conversion before sm_89; the decode ops refuse it there
    (check_fp8_device), so only that build may fail, and with that reason."""
    return r["arch"] == "sm_80" and "fp8e4nv not supported" in r["error"]


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(TENSOR_CORE))
def test_triton_kernels_build_for_gpus(family):
    proc = subprocess.run([sys.executable, str(CASES), family], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {r["arch"] for r in results} == {"sm_80", "sm_90"}
    failed = [r for r in results if not r["ok"] and not _expected_failure(r)]
    assert not failed, "\n".join(f"{r['kernel']} {r['arch']} ({r['module']}): {r['error']}"
                                 for r in failed)
    built = [r for r in results if r["ok"]]
    for r in built:
        where = f"{r['kernel']} on {r['arch']} ({r['module']}, {r['num_warps']} warps)"
        assert r["shared"] <= SHARED_LIMIT[r["arch"]], f"{where}: {r['shared']} B shared"
        if "stack" in r and not _may_spill(r):
            assert r["stack"] == 0 and r["local"] == 0, (
                f"{where}: spills ({r['registers']} registers, {r['stack']} B stack)")
        if r["kernel"] in WIDE_LOADS:
            assert r["wide_loads"] > 0, f"{where}: no 16-byte global loads"
    for kernel in TENSOR_CORE[family]:
        mine = [r for r in built if r["kernel"] == kernel]
        assert any(r["wgmma"] for r in mine if r["arch"] == "sm_90"), f"{kernel}: no wgmma"
        assert any(r["mma_sync"] for r in mine if r["arch"] == "sm_80"), f"{kernel}: no mma"
