"""Inputs and tolerances shared by the ssm tests."""
import torch

from tests.helpers import assert_rel_rmse, device

# Backends the ssm ops have (no CUDA C++ kernels in this family): torch always, triton under the
# interpreter on CPU.
BACKENDS = ["torch", "triton"]

# One table for the scans, against the float64 recurrence on the same (rounded) inputs.
# float32: chunked sums reorder the recurrence; observed max abs error 2.6e-5 on |y| <= 55
# (L=257, chunk 64), so 1e-4 abs + 1e-4 rel. 16-bit inputs: y is rounded to the input dtype and
# the dots take 16-bit operands; observed relative RMSE 3.2e-3 (bf16), 2.9e-4 (fp16).
SCAN_TOL = {
    torch.float32: dict(atol=1e-4, rtol=1e-4, rmse=1e-5),
    torch.float16: dict(atol=None, rtol=None, rmse=2e-3),
    torch.bfloat16: dict(atol=None, rtol=None, rmse=1e-2),
}
# States are float32 whatever the inputs: observed relative RMSE <= 2.4e-4 from fp16 inputs
# (the dots' 16-bit operands), 2e-7 from float32 ones.
STATE_TOL = {
    torch.float32: dict(atol=1e-4, rtol=1e-4, rmse=1e-5),
    torch.float16: dict(atol=None, rtol=None, rmse=2e-3),
    torch.bfloat16: dict(atol=None, rtol=None, rmse=1e-2),
}


def check(out, ref, dtype, table=SCAN_TOL, what=""):
    tol = table[dtype]
    out, ref = out.double().cpu(), ref.double().cpu()
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    if tol["atol"] is not None:
        torch.testing.assert_close(out, ref, atol=tol["atol"], rtol=tol["rtol"], msg=what)
    assert_rel_rmse(out, ref, tol["rmse"])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(g, *shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(device())


def rand(g, *shape, lo=0.0, hi=1.0):
    return (lo + (hi - lo) * torch.rand(*shape, generator=g)).to(device())
