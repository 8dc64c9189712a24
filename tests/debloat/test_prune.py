"""prune: parse -> prune -> parse keeps exactly what the rule says, shrinks the file, loads."""
import json

import pytest

from flashkit.cli import main
from flashkit.debloat import inspect_library, prune_library, select_entries
from flashkit.debloat.fatbin import FatbinError

from .conftest import call_host, loaded_containers
from .oracle import cuobjdump_entries, cuobjdump_kernels

ALL = 7  # kernels per arch in the test library


def _kinds(lib):
    return [(e["container"], e["kind"], e["arch"]) for e in inspect_library(lib)["entries"]]


def test_arch_rule_round_trip(cuda_lib, cuobjdump, tmp_path):
    variant, lib = cuda_lib
    out = tmp_path / "pruned.so"
    r = prune_library(lib, out, "sm_90")
    assert _kinds(out) == [(c, k, a) for c, k, a in _kinds(lib) if (k, a) == ("cubin", "sm_90")]
    assert cuobjdump_entries(cuobjdump, out) == [("cubin", "sm_90")] * 3
    assert [len(k) for _, k in cuobjdump_kernels(cuobjdump, out)] == [0, 1, 6]
    assert sorted(r["kernels_kept"]) == sorted(k for _, ks in cuobjdump_kernels(cuobjdump, out)
                                               for k in ks)
    assert r["bytes_after"] == out.stat().st_size
    if variant == "plain":  # 38 KiB of fatbin: whole pages are freed and cut out of the file
        assert r["bytes_after"] <= r["bytes_before"] - 4096 and r["split"]
    else:
        assert r["bytes_after"] <= r["bytes_before"]
    assert r["fatbin_after"] < r["fatbin_before"] and r["containers_without_code"] == 0
    assert call_host(out, "host_add", 2, 40) == 42 and call_host(out, "host_mul", 6, 7) == 42
    assert call_host(out, "host_catch", 1, 7) == 7
    # what the CUDA runtime will read: each wrapper's pointer, relocated by the loader, reaches
    # a container holding exactly the kept entries
    unit = [("cubin", "sm_80"), ("cubin", "sm_90"), ("ptx", "sm_90")]
    assert loaded_containers(lib) == [[("cubin", "sm_80"), ("cubin", "sm_90")], unit, unit]
    assert loaded_containers(out) == [[("cubin", "sm_90")]] * 3


def test_keep_ptx_and_best_fit(plain_lib, cuobjdump, tmp_path):
    out = tmp_path / "ptx.so"
    prune_library(plain_lib, out, "sm_90", keep_ptx=True)
    assert cuobjdump_entries(cuobjdump, out) == [("cubin", "sm_90")] * 3 + [("ptx", "sm_90")] * 2
    # sm_86 runs sm_80 cubins; compute_90 PTX does not fit below sm_90, so none is kept
    prune_library(plain_lib, out, "sm_86", keep_ptx=True)
    assert cuobjdump_entries(cuobjdump, out) == [("cubin", "sm_80")] * 3
    # sm_100 runs neither cubin (other major); the PTX is its only code
    r = prune_library(plain_lib, out, "sm_100", keep_ptx=True)
    assert cuobjdump_entries(cuobjdump, out) == [("ptx", "sm_90")] * 2
    assert r["containers_without_code"] == 0
    r = prune_library(plain_lib, out, "sm_100")
    assert r["containers_without_code"] == 2 and r["kernels_kept"] == []
    assert call_host(out, "host_add", 1, 1) == 2


def test_trace_rule_drops_unused_cubins(plain_lib, cuobjdump, tmp_path, capsys):
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"flashkit_trace": 1, "libraries": [], "flashkit_uris": [],
                                 "kernels": ["add_one(float*, int)"]}))  # as the profiler names it
    out = tmp_path / "used.so"
    assert main(["debloat", "prune", str(plain_lib), "--arch", "sm_90", "--trace", str(trace),
                 "--keep-ptx", "-o", str(out), "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["kernels_kept"] == ["_Z7add_onePfi"]
    assert "never loaded libplain.so" in capsys.readouterr().err  # the trace lists no libraries
    # the device-link stub (no kernels) stays; unit_b's cubin and PTX go
    assert cuobjdump_kernels(cuobjdump, out) == [("sm_90", []), ("sm_90", ["_Z7add_onePfi"])]
    assert loaded_containers(out) == [[("cubin", "sm_90")], [("cubin", "sm_90"), ("ptx", "sm_90")],
                                      []]
    assert cuobjdump_entries(cuobjdump, out) == [("cubin", "sm_90")] * 2 + [("ptx", "sm_90")]
    assert call_host(out, "host_mul", 3, 3) == 9
    assert [k for _, k, _ in _kinds(out)] == ["cubin", "cubin", "ptx"]


def test_select_entries_rule():
    def row(kind, arch, names=("k",)):
        return {"kind": kind, "arch": arch,
                "kernels": [{"name": n, "demangled": n} for n in names]}

    rows = [row("cubin", "sm_80"), row("cubin", "sm_86"), row("cubin", "sm_90"),
            row("cubin", "sm_90a"), row("cubin", "sm_100"), row("ptx", "sm_80"),
            row("ptx", "sm_90"), row("kind16", "sm_90", ())]

    def pick(*args, **kw):
        return [(r["kind"], r["arch"]) for r in select_entries(rows, *args, **kw)]

    assert pick("sm_90") == [("cubin", "sm_90"), ("cubin", "sm_90a"), ("kind16", "sm_90")]
    assert pick("sm_89", keep_ptx=True) == [("cubin", "sm_86"), ("ptx", "sm_80"),
                                            ("kind16", "sm_90")]
    assert pick("sm_90", used={"other"}) == [("kind16", "sm_90")]
    assert pick("sm_120", keep_ptx=True) == [("ptx", "sm_90"), ("kind16", "sm_90")]


def test_bad_inputs(plain_lib, tmp_path, capsys):
    with pytest.raises(ValueError, match="arch"):
        prune_library(plain_lib, tmp_path / "o.so", "hopper")
    with pytest.raises(ValueError, match="out"):
        prune_library(plain_lib, plain_lib, "sm_90")
    with pytest.raises(TypeError, match="used"):
        prune_library(plain_lib, tmp_path / "o.so", "sm_90", used=["k"])
    import sys

    with pytest.raises(FatbinError, match="no .nv_fatbin"):
        prune_library(sys.executable, tmp_path / "o.so", "sm_90")
    assert main(["debloat", "prune", str(plain_lib), "--arch", "sm9", "-o",
                 str(tmp_path / "o.so")]) == 2
    assert main(["debloat", "prune", str(plain_lib), "--arch", "sm_90", "--trace",
                 str(tmp_path / "missing.json"), "-o", str(tmp_path / "o.so")]) == 2
    err = capsys.readouterr().err
    assert "arch" in err and "missing.json" in err and "Traceback" not in err


def test_refuses_references_it_cannot_follow(plain_lib, tmp_path):
    """Another pointer into .nv_fatbin, or a container no wrapper names: refused, not guessed."""
    from flashkit.debloat.elf import RELA, WRAPPER_MAGIC, HostLibrary

    with HostLibrary(plain_lib) as h:
        sec = h.fatbins[0]
        fields = {w.addr + 8 for w in h.wrappers}
        other = next(at for r_offset, (at, _) in sorted(h.relative_relocations().items())
                     if r_offset not in fields)
        wrapper = h.wrappers[-1].offset
    data = bytearray(plain_lib.read_bytes())
    r_offset, r_info, _ = RELA.unpack_from(data, other)
    RELA.pack_into(data, other, r_offset, r_info, sec.addr + 64)
    bad = tmp_path / "reloc.so"
    bad.write_bytes(bytes(data))
    with pytest.raises(FatbinError, match="relocation .* points into the section"):
        prune_library(bad, tmp_path / "o.so", "sm_90")

    data = bytearray(plain_lib.read_bytes())
    assert int.from_bytes(data[wrapper:wrapper + 4], "little") == WRAPPER_MAGIC
    data[wrapper:wrapper + 4] = bytes(4)  # the last unit's wrapper is gone: its pointer is now
    bad.write_bytes(bytes(data))          # a relocation from elsewhere, its container unnamed
    with pytest.raises(FatbinError, match="refusing to move"):
        prune_library(bad, tmp_path / "o.so", "sm_90")
