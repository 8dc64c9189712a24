"""flashkit.gpucheck: one prepared GPU run that tests and times every kernel inside a slot.

``python -m flashkit.gpucheck [--budget-s S] [--out DIR] [--dry-run] [--only NAME ...]``
(``make gpu-check`` installs flashkit and the carried fla-core wheel first). Sections, in
order, each in its own subprocess killed at its cap, each writing its JSON to DIR as it ends:
environment + ceilings, the GPU tests, the benchmarks (attention, ssm, moe, misc) and cold
JIT. ``--dry-run`` prints the plan with each section's estimated seconds and runs nothing.
"""
from .cli import main

__all__ = ["main"]
