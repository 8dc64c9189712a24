"""flashkit.debloat: what GPU code shared libraries carry, what a workload uses, and pruning.

    flashkit debloat inspect LIB.so [--json] | --site-packages [DIR]
    flashkit debloat trace -o T.json -- CMD ...
    flashkit debloat prune LIB.so --arch sm_90 [--trace T.json] [--keep-ptx] -o OUT.so

Pure Python over an mmap of the library (pyelftools for the host ELF, `struct` for fatbins and
cubins, lz4/zstandard for compressed entries); no CUDA toolkit or GPU needed.
"""
from .fatbin import FatbinError
from .inspect import inspect_library, inspect_site_packages
from .prune import prune_library
from .select import arch_savings, select_entries
from .trace import read_traces, run_traced, union_traces

__all__ = ["FatbinError", "inspect_library", "inspect_site_packages", "prune_library",
           "select_entries", "arch_savings", "read_traces", "union_traces", "run_traced"]
