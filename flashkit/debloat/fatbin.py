"""The CUDA fatbin container: containers of entries (cubins, PTX), parsed with `struct` in place.

A fatbin section (`.nv_fatbin`, `__nv_relfatbin`) is a run of containers, each a 16-byte header
(magic 0xBA55ED50, version, header size, size of its entries) and then entries back to back: a
header (64 bytes, more when it carries an object name or options) and the payload, padded to 8.
Layout and flag bits as nvcc 13.0 writes them (checked against cuobjdump 13.5):

    kind      1 = PTX, 2 = cubin (ELF)
    flags     0x1 64-bit, 0x2 debug (-G), 0x10 linux host, 0x2000 LZ4 (`-compress-mode=speed`),
              0x8000 zstd (every other mode; PTX is compressed even without -compress-all),
              0x100000 arch-specific target (sm_90a)

Any other flag bit is reported as unknown, never interpreted. Payloads are read through a
memoryview, so parsing a library copies only what it decompresses.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

CONTAINER_MAGIC = 0xBA55ED50
CONTAINER = struct.Struct("<IHHQ")  # magic, version, header size, bytes of entries that follow
# kind, (0x0101), header size, payload size, compressed size, options offset, code version
# minor, major, arch, object name offset, name length, flags, (0), uncompressed size
ENTRY = struct.Struct("<HHIQIIHHIIIQQQ")

KINDS = {1: "ptx", 2: "cubin"}
FLAG_64BIT = 0x1
FLAG_DEBUG = 0x2
FLAG_LINUX = 0x10
FLAG_LZ4 = 0x2000
FLAG_ZSTD = 0x8000
FLAG_ARCH_SPECIFIC = 0x100000
MAX_RATIO = 1024
KNOWN_FLAGS = FLAG_64BIT | FLAG_DEBUG | FLAG_LINUX | FLAG_LZ4 | FLAG_ZSTD | FLAG_ARCH_SPECIFIC


class FatbinError(ValueError):
    """A fatbin that does not parse: bad magic, a size running past its section, bad payload."""


@dataclass(frozen=True)
class Entry:
    """One entry of a container; ``offset`` is its header's offset in the parsed buffer."""

    offset: int
    kind: str
    header_size: int
    payload_size: int
    compressed_size: int
    uncompressed_size: int
    arch: str
    version: tuple[int, int]
    flags: int
    name: str

    @property
    def size(self) -> int:
        """Bytes the entry takes in the container (header and padded payload)."""
        return self.header_size + self.payload_size

    @property
    def compression(self) -> str | None:
        return {0: None, FLAG_LZ4: "lz4", FLAG_ZSTD: "zstd"}.get(
            self.flags & (FLAG_LZ4 | FLAG_ZSTD), "lz4+zstd")

    @property
    def unknown_flags(self) -> int:
        return self.flags & ~KNOWN_FLAGS

    @property
    def sm(self) -> int:
        """The arch number (90 for sm_90 and sm_90a)."""
        return int(self.arch[3:].rstrip("af"))


@dataclass
class Container:
    """One fatbin container: ``offset`` in the parsed buffer, its header and its entries."""

    offset: int
    version: int
    header_size: int
    entries_size: int
    entries: list[Entry] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.header_size + self.entries_size


def parse_containers(buf, start: int, end: int, where: str) -> list[Container]:
    """Parse the containers in ``buf[start:end]`` (offsets in the result are into ``buf``).

    Zero padding between containers is skipped in 8-byte steps; anything else that is not a
    container header raises `FatbinError` naming ``where`` and the offset.
    """
    containers = []
    pos = start
    while pos < end:
        if end - pos < CONTAINER.size:
            if any(buf[pos:end]):
                raise FatbinError(f"{where}: {end - pos} stray bytes at offset {pos:#x}")
            break
        magic, version, hsize, esize = CONTAINER.unpack_from(buf, pos)
        if magic != CONTAINER_MAGIC:
            if magic == 0 and not any(buf[pos:pos + 8]):
                pos += 8
                continue
            raise FatbinError(f"{where}: no fatbin container at offset {pos:#x} "
                              f"(magic {magic:#010x}, expected {CONTAINER_MAGIC:#x})")
        if hsize < CONTAINER.size or pos + hsize + esize > end:
            raise FatbinError(f"{where}: container at {pos:#x} claims {hsize}+{esize} bytes, "
                              f"past the end of its section at {end:#x}")
        c = Container(pos, version, hsize, esize)
        c.entries = _parse_entries(buf, pos + hsize, pos + hsize + esize, where)
        containers.append(c)
        pos += hsize + esize
    return containers


def _parse_entries(buf, pos: int, end: int, where: str) -> list[Entry]:
    entries = []
    while pos < end:
        if end - pos < ENTRY.size:
            if any(buf[pos:end]):
                raise FatbinError(f"{where}: truncated entry header at {pos:#x}")
            break
        (kind, _, hsize, psize, csize, _opt, minor, major, arch, name_off, name_len, flags, _,
         usize) = ENTRY.unpack_from(buf, pos)
        if hsize < ENTRY.size or pos + hsize + psize > end:
            raise FatbinError(f"{where}: entry at {pos:#x} claims {hsize}+{psize} bytes, "
                              f"past the end of its container at {end:#x}")
        if csize > psize or (flags & (FLAG_LZ4 | FLAG_ZSTD) and usize == 0):
            raise FatbinError(f"{where}: entry at {pos:#x} has inconsistent sizes "
                              f"(payload {psize}, compressed {csize}, uncompressed {usize})")
        name = ""
        if name_len and name_off + name_len <= hsize:
            name = bytes(buf[pos + name_off:pos + name_off + name_len]).split(b"\0")[0].decode(
                "utf-8", "replace")
        suffix = "a" if flags & FLAG_ARCH_SPECIFIC else ""
        entries.append(Entry(pos, KINDS.get(kind, f"kind{kind}"), hsize, psize, csize, usize,
                             f"sm_{arch}{suffix}", (major, minor), flags, name))
        pos += hsize + psize
    return entries


def payload(buf, entry: Entry, where: str):
    """The entry's payload, decompressed (bytes) or a view into ``buf`` when stored raw."""
    raw = memoryview(buf)[entry.offset + entry.header_size:entry.offset + entry.size]
    method = entry.compression
    if method is None:
        return raw
    data = raw[:entry.compressed_size or entry.payload_size]
    raw.release()
    # LZ4 cannot exceed 255:1; cubins and PTX reach 32:1 at most (libcublasLt 12.9). A header
    # claiming more is corrupt, and would have us allocate whatever it says.
    if entry.uncompressed_size > max(1 << 20, MAX_RATIO * len(data)):
        data.release()
        raise FatbinError(f"{where}: entry at {entry.offset:#x} claims {entry.uncompressed_size} "
                          f"bytes uncompressed from {entry.payload_size}; corrupt header")
    try:
        if method == "lz4":
            import lz4.block

            out = lz4.block.decompress(data, uncompressed_size=entry.uncompressed_size)
        elif method == "zstd":
            import zstandard

            out = zstandard.ZstdDecompressor().decompress(
                data, max_output_size=entry.uncompressed_size)
        else:
            raise FatbinError(f"{where}: entry at {entry.offset:#x} has both LZ4 and zstd flags "
                              f"({entry.flags:#x})")
    except ImportError as exc:
        raise FatbinError(f"{where}: {method}-compressed entries need the {exc.name} package "
                          "(pip install flashkit[debloat])") from None
    except FatbinError:
        raise
    except Exception as exc:  # lz4/zstandard raise their own error types on corrupt frames
        raise FatbinError(f"{where}: entry at {entry.offset:#x}: {method} payload does not "
                          f"decompress ({exc})") from None
    finally:
        data.release()
    if len(out) != entry.uncompressed_size:
        raise FatbinError(f"{where}: entry at {entry.offset:#x} decompresses to {len(out)} bytes, "
                          f"its header says {entry.uncompressed_size}")
    return out


def build_container(buf, container: Container, keep: list[Entry]) -> bytes:
    """A container holding only ``keep`` (entries of ``container``), copied byte for byte."""
    body = b"".join(bytes(buf[e.offset:e.offset + e.size]) for e in keep)
    header = bytearray(buf[container.offset:container.offset + container.header_size])
    CONTAINER.pack_into(header, 0, CONTAINER_MAGIC, container.version, container.header_size,
                        len(body))
    return bytes(header) + body
