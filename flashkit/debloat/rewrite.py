"""Rewrite a shared library with a smaller `.nv_fatbin`, keeping every loaded address unchanged.

The section lives in a loaded segment, usually followed by other content (`.eh_frame`, and in
libcublasLt a 160 MB `.cask_resource`). Moving that content would change addresses that code
reaches without relocations, so the virtual layout is kept and only file bytes go:

1. the kept containers are packed from the section's start (each container moves at most down),
   and every pointer to a moved container is rewritten: the data field of its
   `__fatBinC_Wrapper_t` in place and the addend of its RELATIVE relocation;
2. the freed tail of the section, rounded inward to the segments' alignment A (4 KiB for recent
   linkers, 2 MiB in older NVIDIA libraries), is cut out of the file; every file offset after the
   cut (section headers, program headers, e_shoff) moves down by that multiple of A, so offsets
   stay congruent to addresses as the loader requires;
3. when the segment holding the section has content after it, the segment is split in two
   PT_LOADs around the hole. The program header table then needs one more entry, so it moves
   to the old section's last bytes, where the second half begins (glibc finds it there: it is
   inside a loaded segment, as PT_PHDR requires). binutils' strip and objcopy always put the
   table right after the ELF header, where the larger one no longer fits, and produce a broken
   file: strip before pruning, not after.

Anything that would make this unsafe is refused with a `FatbinError`: a container no wrapper
points to, another relocation into the section, a section or segment straddling the cut.
"""
from __future__ import annotations

import struct

from .elf import RELA, HostLibrary
from .fatbin import Entry, FatbinError, build_container

PHDR = struct.Struct("<IIQQQQQQ")  # type, flags, offset, vaddr, paddr, filesz, memsz, align
SHDR = struct.Struct("<IIQQQQIIQQ")
PT_LOAD, PT_PHDR = 1, 6


def _round_up(x: int, a: int) -> int:
    return -(-x // a) * a


def rewrite_fatbin(lib: HostLibrary, keep: dict[int, list[Entry]], out_path: str) -> dict:
    """Write ``lib`` to ``out_path`` with `.nv_fatbin` holding only ``keep`` (container offset ->
    entries to keep, in order). Returns ``{"cut_bytes", "split", "moved_containers"}``."""
    sec = next((f for f in lib.fatbins if f.name == ".nv_fatbin"), None)
    if sec is None:
        raise FatbinError(f"{lib.path}: no .nv_fatbin section to rewrite")
    ehdr = lib.elf.header
    where = f"{lib.path} .nv_fatbin"
    if ehdr["e_phentsize"] != PHDR.size or ehdr["e_shentsize"] != SHDR.size:
        raise FatbinError(f"{lib.path}: unexpected ELF header table entry sizes "
                          f"({ehdr['e_phentsize']}, {ehdr['e_shentsize']})")
    buf = bytearray(lib.mm)

    # 1. pack the kept containers, 8-aligned as the section is
    new_offsets: dict[int, int] = {}
    pos = sec.offset
    for c in sec.containers:
        blob = build_container(lib.mm, c, keep.get(c.offset, []))
        pos = _round_up(pos, 8)
        new_offsets[c.offset] = pos
        buf[pos:pos + len(blob)] = blob
        pos += len(blob)
    new_size = pos - sec.offset
    buf[pos:sec.offset + sec.size] = bytes(sec.offset + sec.size - pos)
    _repoint(lib, sec, new_offsets, buf, where)

    # 2. where the cut goes
    loads = [p for p in lib.segments if p["p_type"] == "PT_LOAD"]
    seg = next((p for p in loads if p["p_offset"] <= sec.offset
                and sec.offset + sec.size <= p["p_offset"] + p["p_filesz"]), None)
    if seg is None:
        raise FatbinError(f"{where}: the section is not inside one loaded segment")
    if seg["p_filesz"] != seg["p_memsz"]:
        raise FatbinError(f"{where}: its segment has memsz != filesz; refusing to split it")
    align = max(p["p_align"] for p in loads) or 1
    sec_end = sec.offset + sec.size
    tail = seg["p_offset"] + seg["p_filesz"] > sec_end  # segment content after the section
    phnum = ehdr["e_phnum"] + (1 if tail else 0)
    cut_start = _round_up(pos, align)
    later = [s["sh_offset"] for s in lib.sections
             if s["sh_type"] != "SHT_NOBITS" and s["sh_size"] and s["sh_offset"] >= sec_end]
    later += [p["p_offset"] for p in lib.segments if p["p_offset"] >= sec_end]
    later += [ehdr["e_shoff"]] if ehdr["e_shoff"] >= sec_end else []
    limit = min(later, default=lib.size)
    phdr_at = None
    if tail:  # the second half opens with the (one entry longer) program header table,
        at = (limit - phnum * PHDR.size) // 8 * 8  # in the old section's last bytes
        phdr_at = at if at >= pos else None
    end = phdr_at if tail else limit
    delta = max(0, (end - cut_start) // align * align) if end is not None else 0
    if delta == 0:  # nothing to gain at this alignment: the packed section, the same file size
        tail, phdr_at, cut_start = False, None, lib.size
    cut_end = cut_start + delta

    def moved(off: int, what: str) -> int:
        if off >= cut_end:
            return off - delta
        if off > cut_start:
            raise FatbinError(f"{where}: {what} at {off:#x} lies in the span to cut")
        return off

    # 3. program headers (maybe split), section headers, ELF header
    phdrs = [list(PHDR.unpack_from(lib.mm, ehdr["e_phoff"] + i * PHDR.size))
             for i in range(ehdr["e_phnum"])]
    out_phdrs = []
    for h in phdrs:
        if h[2] == seg["p_offset"] and h[0] == PT_LOAD and h[3] == seg["p_vaddr"]:
            head = pos - h[2]
            if tail:
                rest = phdr_at - h[2]
                out_phdrs.append([PT_LOAD, h[1], h[2], h[3], h[4], head, head, h[7]])
                out_phdrs.append([PT_LOAD, h[1], phdr_at - delta, h[3] + rest, h[4] + rest,
                                  h[5] - rest, h[6] - rest, h[7]])
            elif delta:
                out_phdrs.append([PT_LOAD, h[1], h[2], h[3], h[4], head, head, h[7]])
            else:
                out_phdrs.append(h)
            continue
        if h[0] == PT_PHDR and phdr_at is not None:
            vaddr = seg["p_vaddr"] + phdr_at - seg["p_offset"]
            out_phdrs.append([PT_PHDR, h[1], phdr_at - delta, vaddr, vaddr, phnum * PHDR.size,
                              phnum * PHDR.size, h[7]])
            continue
        if h[2] < cut_start < h[2] + h[5]:
            raise FatbinError(f"{where}: segment at {h[2]:#x} straddles the span to cut")
        out_phdrs.append([h[0], h[1], moved(h[2], "a segment")] + h[3:])
    table = b"".join(PHDR.pack(*h) for h in out_phdrs)
    if phdr_at is not None:
        buf[ehdr["e_phoff"]:ehdr["e_phoff"] + ehdr["e_phnum"] * PHDR.size] = bytes(
            ehdr["e_phnum"] * PHDR.size)
        buf[phdr_at:phdr_at + len(table)] = table
        struct.pack_into("<Q", buf, 0x20, phdr_at - delta)  # e_phoff
        struct.pack_into("<H", buf, 0x38, len(out_phdrs))  # e_phnum
    else:
        buf[ehdr["e_phoff"]:ehdr["e_phoff"] + len(table)] = table

    for i, s in enumerate(lib.sections):
        at = ehdr["e_shoff"] + i * SHDR.size
        fields = list(SHDR.unpack_from(lib.mm, at))
        if i == sec.index:
            fields[5] = new_size
        elif s["sh_type"] == "SHT_NOBITS":
            fields[4] = fields[4] - delta if fields[4] >= cut_end else min(fields[4], cut_start)
        elif fields[5]:
            if fields[4] < cut_start < fields[4] + fields[5]:
                raise FatbinError(f"{where}: section {s.name} straddles the span to cut")
            fields[4] = moved(fields[4], f"section {s.name}")
        elif fields[4] >= cut_end:
            fields[4] -= delta
        SHDR.pack_into(buf, at, *fields)
    struct.pack_into("<Q", buf, 0x28, moved(ehdr["e_shoff"], "the section header table"))

    with open(out_path, "wb") as f:
        f.write(memoryview(buf)[:cut_start])
        f.write(memoryview(buf)[cut_end:])
    return {"cut_bytes": delta, "split": bool(tail),
            "moved_containers": sum(1 for o, n in new_offsets.items() if o != n)}


def _repoint(lib: HostLibrary, sec, new_offsets: dict[int, int], buf: bytearray, where: str):
    """Point every wrapper of a moved container at its new address; refuse unknown references."""
    lo, hi = sec.addr, sec.addr + sec.size
    by_addr = {sec.addr + off - sec.offset: off for off in new_offsets}
    wrapped = {w.data_addr for w in lib.wrappers}
    relocs = lib.relative_relocations()
    wrapper_fields = {w.addr + 8 for w in lib.wrappers}
    for r_offset, (_, addend) in relocs.items():
        if lo <= addend < hi and r_offset not in wrapper_fields:
            raise FatbinError(f"{where}: a relocation at {r_offset:#x} points into the section "
                              "from outside .nvFatBinSegment; refusing to move containers")
    dynsym = lib.section(".dynsym")
    for sym in dynsym.iter_symbols() if dynsym is not None else ():
        # the first container never moves; anything else a symbol names might
        if sym["st_shndx"] == sec.index and sym["st_value"] != sec.addr:
            raise FatbinError(f"{where}: exported symbol {sym.name} points into the section; "
                              "refusing to move containers")
    for addr, off in by_addr.items():
        if new_offsets[off] != off and addr not in wrapped:
            raise FatbinError(f"{where}: container at {off:#x} is not referenced from "
                              ".nvFatBinSegment; refusing to move it")
    for w in lib.wrappers:
        off = by_addr.get(w.data_addr)
        if off is None or new_offsets[off] == off:
            continue
        new_addr = sec.addr + new_offsets[off] - sec.offset
        if struct.unpack_from("<Q", lib.mm, w.offset + 8)[0]:  # in place (and RELR's addend)
            struct.pack_into("<Q", buf, w.offset + 8, new_addr)
        rela = relocs.get(w.addr + 8)
        if rela is not None:
            r_offset, r_info, _ = RELA.unpack_from(lib.mm, rela[0])
            RELA.pack_into(buf, rela[0], r_offset, r_info, new_addr)
        elif lib.elf["e_type"] == "ET_DYN" and not struct.unpack_from("<Q", lib.mm,
                                                                        w.offset + 8)[0]:
            raise FatbinError(f"{where}: no relocation found for wrapper at {w.addr:#x}")


