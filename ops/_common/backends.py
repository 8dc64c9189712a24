"""The backend table: what each op accepts and what ``backend="auto"`` picks per device.

One row per op. ``auto`` takes the first available entry of ``gpu`` on CUDA tensors and of
``cpu`` elsewhere (``cuda`` needs NVRTC; ``ninja`` asks the op's own probe: a C++ toolchain
that builds and loads the module). A GPU run that
measures a faster path updates the row, nothing else. What each row holds and why:

- merge_state (merge_state, merge_state_in_place, merge_states): the CUDA C++ kernels where NVRTC
  works, else Triton.
- attention_decode: Triton. The NVRTC decode kernel (ops/attention/decode_cuda.py) compiles for
  sm_80/sm_90 and its SASS is checked, but it has not run on a GPU (docs/status.md): put
  ``cuda`` first once tests/ops/attention/test_decode_cuda.py passes with -m gpu and the decode
  benchmark says it wins.
- attention_prefill: Triton; no CUDA prefill kernel yet, so ``cuda`` is refused.
- ssm (chunk_ssd_scan, selective_scan, selective_state_update, causal_conv1d[_update]): Triton;
  the family has no CUDA C++ kernels, so ``cuda`` is refused rather than silently mapped.
- moe (fused_topk, moe_align_block_size, fused_moe): Triton; ``cuda`` is accepted and means the
  family's GPU kernels, which are Triton.
- apollo_fused_update: Triton on CUDA.
- plan_split_kv: host code, so the device does not matter: the C++ planner (ninja) when it
  builds and loads here, else the Python one (the same plans).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import torch

BACKENDS = ("auto", "cuda", "triton", "torch")
PLANNER_BACKENDS = ("auto", "ninja", "python")


@dataclasses.dataclass(frozen=True)
class BackendRow:
    """``choices``: the accepted values; ``gpu`` / ``cpu``: what ``auto`` tries, in order, on
    CUDA tensors / elsewhere (the last entry is taken when none is available); ``alias``:
    explicit values that mean another backend; ``refused``: explicit values refused with their reason."""

    choices: tuple[str, ...]
    gpu: tuple[str, ...]
    cpu: tuple[str, ...]
    alias: tuple[tuple[str, str], ...] = ()
    refused: tuple[tuple[str, str], ...] = ()


TABLE: dict[str, BackendRow] = {
    "merge_state": BackendRow(BACKENDS, gpu=("cuda", "triton"), cpu=("torch",)),
    "attention_decode": BackendRow(("auto", "triton", "torch", "cuda"), gpu=("triton",),
                                   cpu=("torch",)),
    "attention_prefill": BackendRow(
        ("auto", "triton", "torch", "cuda"), gpu=("triton",), cpu=("torch",),
        refused=(("cuda", "backend='cuda' is decode only (no CUDA prefill kernel yet); use "
                          "'triton' or 'auto'"),)),
    "ssm": BackendRow(("auto", "triton", "torch"), gpu=("triton",), cpu=("torch",)),
    "moe": BackendRow(BACKENDS, gpu=("triton",), cpu=("torch",), alias=(("cuda", "triton"),)),
    "apollo_fused_update": BackendRow(("auto", "triton", "torch"), gpu=("triton",), cpu=("torch",)),
    "plan_split_kv": BackendRow(PLANNER_BACKENDS, gpu=("ninja", "python"),
                                cpu=("ninja", "python")),
}


def _nvrtc_available() -> bool:
    from flashkit.jit import get_backend

    return get_backend("nvrtc").available()[0]


def resolve_backend(op: str, backend: str, device: torch.device | None,
                    available: Callable[[str], bool] | None = None) -> str:
    """The backend ``op`` runs on ``device`` tensors (None: host code) for the user's
    ``backend`` (see TABLE); never ``auto``. An explicit choice is checked against the device.
    ``available(name)`` overrides the probe of a candidate of ``auto`` (default: ``cuda``
    needs NVRTC, anything else is available)."""
    row = TABLE[op]
    if backend not in row.choices:
        raise ValueError(f"backend must be one of {row.choices}, got {backend!r}")
    refused = dict(row.refused)
    if backend in refused:
        raise ValueError(refused[backend])
    if backend == "auto":
        probe = available or (lambda name: name != "cuda" or _nvrtc_available())
        candidates = row.gpu if device is not None and device.type == "cuda" else row.cpu
        return next((c for c in candidates[:-1] if probe(c)), candidates[-1])
    if device is None:
        return backend
    if backend == "cuda" and device.type != "cuda":
        raise ValueError(f"backend='cuda' needs CUDA tensors, got tensors on {device}")
    if backend == "triton" and device.type != "cuda" \
            and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError(f"backend='triton' on {device} tensors needs TRITON_INTERPRET=1 "
                         "(Triton's interpreter) set before the first launch")
    return dict(row.alias).get(backend, backend)
