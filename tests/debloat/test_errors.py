"""Truncated, corrupt and non-CUDA files: a FatbinError (CLI exit 2), never a crash or a hang."""
import random
import sys

import pytest

from flashkit.cli import main
from flashkit.debloat import inspect_library
from flashkit.debloat.elf import HostLibrary
from flashkit.debloat.fatbin import FatbinError


def _fatbin_span(lib):
    with HostLibrary(lib) as h:
        sec = h.fatbins[0]
        return sec.offset, sec.size


@pytest.mark.parametrize("keep", [0, 10, 63, 4096, "in_fatbin", "before_shdrs"])
def test_truncated(cuda_lib, tmp_path, keep, capsys):
    variant, lib = cuda_lib
    data = lib.read_bytes()
    if keep == "in_fatbin":
        off, size = _fatbin_span(lib)
        keep = off + size // 2
    elif keep == "before_shdrs":
        keep = len(data) - 100
    bad = tmp_path / "truncated.so"
    bad.write_bytes(data[:keep])
    with pytest.raises(FatbinError):
        inspect_library(bad)
    assert main(["debloat", "inspect", str(bad)]) == 2
    assert main(["debloat", "prune", str(bad), "--arch", "sm_90", "-o",
                 str(tmp_path / "o.so")]) == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("seed", range(6))
def test_fuzzed_fatbin_bytes(cuda_lib, tmp_path, seed):
    """Random bytes over the first headers and payloads: parses or raises FatbinError only."""
    variant, lib = cuda_lib
    rng = random.Random(seed)
    data = bytearray(lib.read_bytes())
    off, size = _fatbin_span(lib)
    span = min(size, 2048)  # the container and first entry headers and the start of payloads
    for _ in range(rng.choice([1, 4, 32])):
        data[off + rng.randrange(span)] = rng.randrange(256)
    bad = tmp_path / "fuzzed.so"
    bad.write_bytes(bytes(data))
    try:
        inspect_library(bad)
    except FatbinError:
        pass
    try:
        from flashkit.debloat import prune_library

        prune_library(bad, tmp_path / "o.so", "sm_90")
    except FatbinError:
        pass


def test_big_sizes_and_bad_magic(plain_lib, tmp_path):
    import struct

    off, _ = _fatbin_span(plain_lib)
    for at, value, match in [(off, 0xDEADBEEF, "no fatbin container"),
                             (off + 8, 1 << 40, "past the end"),
                             (off + 16 + 8, 1 << 40, "past the end")]:
        data = bytearray(plain_lib.read_bytes())
        struct.pack_into("<Q" if value > 2**32 else "<I", data, at, value)
        bad = tmp_path / "bad.so"
        bad.write_bytes(bytes(data))
        with pytest.raises(FatbinError, match=match):
            inspect_library(bad)


def test_implausible_uncompressed_size(plain_lib, tmp_path):
    """A header claiming terabytes uncompressed is refused before anything is allocated."""
    import struct

    with HostLibrary(plain_lib) as h:
        ptx = next(e for c in h.fatbins[0].containers for e in c.entries if e.compression)
    data = bytearray(plain_lib.read_bytes())
    struct.pack_into("<Q", data, ptx.offset + 56, 1 << 40)
    bad = tmp_path / "huge.so"
    bad.write_bytes(bytes(data))
    with pytest.raises(FatbinError, match="corrupt header"):
        inspect_library(bad)


def test_not_cuda_and_not_elf(tmp_path, capsys):
    random_bytes = tmp_path / "random.so"
    random_bytes.write_bytes(random.Random(0).randbytes(5000))
    empty = tmp_path / "empty.so"
    empty.write_bytes(b"")
    for path in (random_bytes, empty, tmp_path / "missing.so"):
        with pytest.raises(FatbinError):
            inspect_library(path)
    r = inspect_library(sys.executable)  # an ELF with no GPU code: an empty report
    assert r["gpu_bytes"] == 0 and r["entries"] == []
    assert main(["debloat", "inspect", sys.executable]) == 2
    assert "no CUDA fatbin" in capsys.readouterr().err
