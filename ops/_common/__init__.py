"""Plumbing every op family shares; a family file holds only what is particular to it.

- ``backends``: the one table of what ``backend="auto"`` means per op and device, and the
  resolver every public op calls.
- ``custom_op``: the one way an op is registered with torch.library and the eager-mode bypass
  of the dispatcher.
- ``checks``: tensor, int and index-dtype checks (each failure a ValueError naming the argument).
- ``triton``: what Triton launchers share: ``pow2``, the dtype tag of spec names, the float32
  dot-precision policy and the interpreter's bf16-dot switch.
- ``specs``: the memoization of spec builders.
"""
