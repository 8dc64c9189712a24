"""Kernels of one cubin and of one PTX text.

A cubin is a small ELF64 (e_machine 190, EM_CUDA). Its kernels are the FUNC symbols that carry
STO_CUDA_ENTRY (0x10) in st_other, each in its own `.text.<kernel>` section whose size is the
kernel's code size. Device functions that were not inlined are local FUNC symbols without that
bit and are not kernels (cuobjdump's resource listing agrees). The reader is `struct` over the
payload view: a cubin of libcublasLt holds up to a few thousand symbols, and pyelftools' per-symbol
objects cost ~20x more than this loop.
"""
from __future__ import annotations

import re
import struct

from .fatbin import FatbinError

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
SHDR = struct.Struct("<IIQQQQIIQQ")
SYM = struct.Struct("<IBBHQQ")
EM_CUDA = 190
SHT_SYMTAB = 2
STT_FUNC = 2
STO_CUDA_ENTRY = 0x10
_PTX_ENTRY = re.compile(rb"\.entry\s+([A-Za-z_$][\w$]*)")


def _cstr(table: bytes, at: int) -> str:
    end = table.find(b"\0", at)
    return table[at:end if end >= 0 else len(table)].decode("utf-8", "replace")


def cubin_kernels(data, where: str) -> list[tuple[str, int]]:
    """``[(mangled name, code bytes), ...]`` of the kernels of the cubin ``data`` (bytes-like).

    Raises `FatbinError` naming ``where`` when the payload is not a CUDA ELF or a table runs past
    its end.
    """
    n = len(data)
    if n < EHDR.size or bytes(data[:4]) != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise FatbinError(f"{where}: cubin payload is not a little-endian ELF64 file")
    (_, _, machine, _, _, _, shoff, _, _, _, _, shentsize, shnum,
     shstrndx) = EHDR.unpack_from(data, 0)
    if machine != EM_CUDA:
        raise FatbinError(f"{where}: cubin has e_machine {machine}, expected {EM_CUDA} (CUDA)")
    if shnum == 0:
        return []
    if shentsize != SHDR.size or shoff + shnum * SHDR.size > n or shstrndx >= shnum:
        raise FatbinError(f"{where}: cubin section table runs past its {n} bytes")
    sections = [SHDR.unpack_from(data, shoff + i * SHDR.size) for i in range(shnum)]
    for s in sections:
        if s[1] != 8 and s[4] + s[5] > n:  # SHT_NOBITS takes no file bytes
            raise FatbinError(f"{where}: cubin section at {s[4]:#x}+{s[5]} runs past {n} bytes")

    def table(i: int) -> bytes:
        return bytes(data[sections[i][4]:sections[i][4] + sections[i][5]])

    names = table(shstrndx)
    kernels = []
    for s in sections:
        if s[1] != SHT_SYMTAB or s[9] != SYM.size or s[6] >= shnum:
            continue
        strtab = table(s[6])
        for name, info, other, shndx, _value, size in SYM.iter_unpack(
                data[s[4]:s[4] + s[5] - s[5] % SYM.size]):
            if info & 0xF != STT_FUNC or not other & STO_CUDA_ENTRY:
                continue
            kname = _cstr(strtab, name)
            if 0 < shndx < shnum and _cstr(names, sections[shndx][0]) == f".text.{kname}":
                size = sections[shndx][5]
            kernels.append((kname, size))
    return kernels


def ptx_kernels(text) -> list[str]:
    """Names of the `.entry` functions of a PTX text (bytes-like)."""
    return [m.group(1).decode() for m in _PTX_ENTRY.finditer(bytes(text))]
