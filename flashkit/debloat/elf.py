"""The host side: a shared library's fatbin sections and the wrappers that point into them.

nvcc 13 puts every container in `.nv_fatbin` (device-linked code of `-rdc` builds adds
`__nv_relfatbin`) and, per translation unit, a 24-byte `__fatBinC_Wrapper_t` in `.nvFatBinSegment`
(magic 0x466243B1, version, data pointer, prelinked list) whose data pointer is the container's
address. In a shared object the pointer is an R_X86_64_RELATIVE (or R_AARCH64_RELATIVE) relocation
whose addend the linker also writes in place. A wrapper pointing outside the fatbin sections (a
container embedded in `.rodata`, as other compilers may emit) is followed too.

The file is mapped once (mmap); pyelftools reads only headers, payloads are read as views.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field

from .fatbin import CONTAINER, CONTAINER_MAGIC, Container, FatbinError, parse_containers

FATBIN_SECTIONS = (".nv_fatbin", "__nv_relfatbin")
WRAPPER_SECTION = ".nvFatBinSegment"
WRAPPER = struct.Struct("<iiQQ")
WRAPPER_MAGIC = 0x466243B1
RELA = struct.Struct("<QQq")
RELATIVE = {"EM_X86_64": 8, "EM_AARCH64": 1027}  # R_X86_64_RELATIVE, R_AARCH64_RELATIVE


@dataclass
class FatbinSection:
    """A section (or a span of one) holding fatbin containers; offsets are file offsets."""

    name: str
    index: int
    offset: int
    size: int
    addr: int
    containers: list[Container] = field(default_factory=list)


@dataclass(frozen=True)
class Wrapper:
    """A `__fatBinC_Wrapper_t`: its file offset and address, and the container address it holds."""

    offset: int
    addr: int
    version: int
    data_addr: int


class HostLibrary:
    """A mapped shared library and its fatbins. Use as a context manager.

    Raises `FatbinError` for a file that is not a little-endian ELF64 object or whose headers or
    fatbins do not parse.
    """

    def __init__(self, path: str | os.PathLike):
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile

        self.path = os.fspath(path)
        try:
            self.file = open(self.path, "rb")
        except OSError as exc:
            raise FatbinError(f"{self.path}: cannot open ({exc.strerror})") from None
        try:
            self.size = os.fstat(self.file.fileno()).st_size
            if self.size < 64:
                raise FatbinError(f"{self.path}: not an ELF file ({self.size} bytes)")
            self.mm = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ)
            if self.mm[:4] != b"\x7fELF" or self.mm[4] != 2 or self.mm[5] != 1:
                raise FatbinError(f"{self.path}: not a little-endian ELF64 file")
            try:
                self.elf = ELFFile(self.file)
                self.sections = list(self.elf.iter_sections())
                self.segments = list(self.elf.iter_segments())
            except (ELFError, struct.error, ValueError, OSError) as exc:
                raise FatbinError(f"{self.path}: ELF headers do not parse ({exc})") from None
            for s in self.sections:
                if s["sh_type"] != "SHT_NOBITS" and s["sh_offset"] + s["sh_size"] > self.size:
                    raise FatbinError(f"{self.path}: section {s.name} ends at "
                                      f"{s['sh_offset'] + s['sh_size']:#x}, past the file's "
                                      f"{self.size} bytes (truncated?)")
            self.wrappers = self._wrappers()
            self.fatbins = self._fatbins()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if getattr(self, "mm", None) is not None:
            try:
                self.mm.close()
            except BufferError:  # a view is still held (an error's traceback): unmapped by GC
                pass
            self.mm = None
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def section(self, name: str):
        return next((s for s in self.sections if s.name == name), None)

    def addr_to_offset(self, addr: int) -> tuple[int, int] | None:
        """``(file offset, section index)`` of the loaded address ``addr``, or None."""
        for i, s in enumerate(self.sections):
            if (s["sh_flags"] & 2 and s["sh_type"] != "SHT_NOBITS"
                    and s["sh_addr"] <= addr < s["sh_addr"] + s["sh_size"]):
                return s["sh_offset"] + addr - s["sh_addr"], i
        return None

    def relative_relocations(self) -> dict[int, tuple[int, int]]:
        """``{r_offset: (file offset of the RELA record, addend)}`` of RELATIVE relocations."""
        rtype = RELATIVE.get(self.elf["e_machine"])
        out: dict[int, tuple[int, int]] = {}
        for s in self.sections:
            if s["sh_type"] != "SHT_RELA" or s["sh_entsize"] != RELA.size or rtype is None:
                continue
            start = s["sh_offset"]
            view = memoryview(self.mm)[start:start + s["sh_size"] - s["sh_size"] % RELA.size]
            for i, (r_offset, r_info, addend) in enumerate(RELA.iter_unpack(view)):
                if r_info & 0xFFFFFFFF == rtype:
                    out[r_offset] = (start + i * RELA.size, addend)
            view.release()
        return out

    def _wrappers(self) -> list[Wrapper]:
        s = self.section(WRAPPER_SECTION)
        if s is None or s["sh_type"] == "SHT_NOBITS":
            return []
        wrappers, relocs = [], None
        for off in range(s["sh_offset"], s["sh_offset"] + s["sh_size"] - WRAPPER.size + 1,
                         WRAPPER.size):
            magic, version, data, _ = WRAPPER.unpack_from(self.mm, off)
            if magic != WRAPPER_MAGIC:
                continue
            addr = s["sh_addr"] + off - s["sh_offset"]
            if data == 0:  # the pointer lives only in its relocation's addend
                relocs = self.relative_relocations() if relocs is None else relocs
                data = relocs.get(addr + 8, (0, 0))[1]
            wrappers.append(Wrapper(off, addr, version, data))
        return wrappers

    def _fatbins(self) -> list[FatbinSection]:
        found = []
        for i, s in enumerate(self.sections):
            if s.name in FATBIN_SECTIONS and s["sh_type"] != "SHT_NOBITS" and s["sh_size"]:
                f = FatbinSection(s.name, i, s["sh_offset"], s["sh_size"], s["sh_addr"])
                f.containers = parse_containers(self.mm, f.offset, f.offset + f.size,
                                                f"{self.path} {s.name}")
                found.append(f)
        covered = {c.offset for f in found for c in f.containers}
        for w in self.wrappers:
            at = self.addr_to_offset(w.data_addr) if w.data_addr else None
            if at is None or at[0] in covered:
                continue
            off, index = at
            name = self.sections[index].name
            if off + CONTAINER.size > self.size:
                raise FatbinError(f"{self.path}: wrapper at {w.addr:#x} points past the file")
            esize = CONTAINER.unpack_from(self.mm, off)[3]
            end = min(off + CONTAINER.size + esize, self.size)
            f = FatbinSection(name, index, off, end - off, w.data_addr)
            f.containers = parse_containers(self.mm, off, end, f"{self.path} {name}@{off:#x}")
            covered.add(off)
            found.append(f)
        return found + self._scan(covered)

    def _scan(self, covered: set[int]) -> list[FatbinSection]:
        """Containers stored as plain data that no wrapper points to: libcufft 11 keeps its
        270 MB of GPU code in `.ldata` and loads it itself. A magic counts only where a whole
        container parses at an 8-aligned address; everything else is a coincidence."""
        magic = struct.pack("<I", CONTAINER_MAGIC)
        found = []
        for i, s in enumerate(self.sections):
            if (s.name in FATBIN_SECTIONS or s["sh_type"] != "SHT_PROGBITS"
                    or not s["sh_flags"] & 2 or s["sh_flags"] & 4 or s["sh_size"] < 64):
                continue
            start, end = s["sh_offset"], s["sh_offset"] + s["sh_size"]
            f = FatbinSection(s.name, i, start, 0, s["sh_addr"])
            pos = self.mm.find(magic, start, end)
            while pos >= 0:
                nxt = pos + 4
                if (s["sh_addr"] + pos - start) % 8 == 0 and pos not in covered:
                    _, version, hsize, esize = CONTAINER.unpack_from(self.mm, pos)
                    if version == 1 and hsize == CONTAINER.size and 0 < esize <= end - pos - hsize:
                        try:
                            c = parse_containers(self.mm, pos, pos + hsize + esize, "")
                        except FatbinError:
                            c = []
                        if c and c[0].entries:
                            f.containers += c
                            nxt = pos + hsize + esize
                pos = self.mm.find(magic, nxt, end)
            if f.containers:
                f.size = sum(c.size for c in f.containers)
                found.append(f)
        return found
