"""Run in a fresh interpreter: dlopen a library and read its fatbin wrappers from memory, after
the dynamic loader applied the relocations, as the CUDA runtime will at registration.

    python loaded.py LIB.so EXPORTED_FUNCTION

Prints one JSON line: per wrapper, the (kind, arch) of the entries of the container its data
pointer reaches in memory.
"""
import ctypes
import json
import sys

from flashkit.debloat.elf import WRAPPER, HostLibrary
from flashkit.debloat.fatbin import CONTAINER, parse_containers

path, fn = sys.argv[1], sys.argv[2]
lib = ctypes.CDLL(path)
with HostLibrary(path) as h:
    value = next(s["st_value"] for s in h.section(".dynsym").iter_symbols() if s.name == fn)
    wrappers = [w.addr for w in h.wrappers]
base = ctypes.cast(getattr(lib, fn), ctypes.c_void_p).value - value
out = []
for addr in wrappers:
    _, _, data, _ = WRAPPER.unpack(ctypes.string_at(base + addr, WRAPPER.size))
    esize = CONTAINER.unpack(ctypes.string_at(data, CONTAINER.size))[3]
    blob = ctypes.string_at(data, CONTAINER.size + esize)
    (c,) = parse_containers(blob, 0, len(blob), "memory")
    out.append([[e.kind, e.arch] for e in c.entries])
print(json.dumps(out))
