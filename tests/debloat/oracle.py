"""What cuobjdump says a library holds: entries in order and the kernels of each cubin."""
from __future__ import annotations

import re
import subprocess


def cuobjdump_entries(cuobjdump: str, lib) -> list[tuple[str, str]]:
    """``[(kind, arch), ...]`` in file order: cubins from --list-elf, then PTX from --list-ptx."""
    out = []
    for flag, kind in (("--list-elf", "cubin"), ("--list-ptx", "ptx")):
        text = subprocess.run([cuobjdump, flag, str(lib)], capture_output=True, text=True).stdout
        out += [(kind, m.group(1)) for m in re.finditer(r"\.(sm_\w+)\.(?:cubin|ptx)$", text, re.M)]
    return out


def cuobjdump_kernels(cuobjdump: str, lib) -> list[tuple[str, list[str]]]:
    """``[(arch, sorted kernel names), ...]`` per cubin, from --dump-resource-usage."""
    text = subprocess.run([cuobjdump, "--dump-resource-usage", str(lib)], capture_output=True,
                          text=True, check=True).stdout
    out = []
    for block in text.split("Fatbin elf code:")[1:]:
        arch = re.search(r"arch = (sm_\w+)", block).group(1)
        out.append((arch, sorted(re.findall(r"^\s*Function ([^\s:]+):", block, re.M))))
    return out
