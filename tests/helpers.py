"""Shared test helpers: one tolerance table, poisoning, devices and backends to run."""
import torch

# Tolerances against a float64 reference. fp16/bf16 are one output rounding (bf16: 2^-8 relative).
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def kernel_backends() -> list[str]:
    """Backends that can run kernels on this machine: triton always (interpreter on CPU)."""
    return ["torch", "triton", "cuda"] if torch.cuda.is_available() else ["torch", "triton"]


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fill with NaN so that any element a kernel forgets to write fails the comparison."""
    return t.fill_(float("nan"))


def assert_rel_rmse(out: torch.Tensor, ref: torch.Tensor, bound: float):
    out, ref = out.double(), ref.double()
    err = (out - ref).norm() / ref.norm().clamp_min(1e-30)
    assert not torch.isnan(out).any(), "NaN in output"
    assert err <= bound, f"relative RMSE {err:.3g} > {bound:.3g}"
