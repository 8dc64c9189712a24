"""inspect: entries, archs, compression and kernels against cuobjdump and the cubins' own ELF."""
import json
import subprocess

import pytest

from flashkit.cli import main
from flashkit.debloat import inspect_library, inspect_site_packages

from .oracle import cuobjdump_entries, cuobjdump_kernels

KERNELS = {"_Z7add_onePfi": "add_one(float*, int)",
           "_ZN2ns4polyIfLi16EEEvPT_i": "void ns::poly<float, 16>(float*, int)",
           "_ZN2ns4polyIfLi32EEEvPT_i": "void ns::poly<float, 32>(float*, int)",
           "_ZN2ns4polyIdLi16EEEvPT_i": "void ns::poly<double, 16>(double*, int)",
           "_ZN2ns4polyIdLi32EEEvPT_i": "void ns::poly<double, 32>(double*, int)",
           "_ZN2ns4polyIiLi64EEEvPT_i": "void ns::poly<int, 64>(int*, int)",
           "fill_index": "fill_index"}


def _order(entries):
    return ([("cubin", e["arch"]) for e in entries if e["kind"] == "cubin"]
            + [("ptx", e["arch"]) for e in entries if e["kind"] == "ptx"])


def test_entries_and_kernels_match_cuobjdump(cuda_lib, cuobjdump):
    variant, lib = cuda_lib
    r = inspect_library(lib)
    assert _order(r["entries"]) == cuobjdump_entries(cuobjdump, lib)
    cubins = [e for e in r["entries"] if e["kind"] == "cubin"]
    assert [(e["arch"], sorted(k["name"] for k in e["kernels"])) for e in cubins] == \
        cuobjdump_kernels(cuobjdump, lib)
    # three containers: the device-link stub and one per translation unit
    assert [s["name"] for s in r["sections"]] == [".nv_fatbin"]
    assert r["sections"][0]["containers"] == 3
    assert set(r["archs"]) == {"sm_80", "sm_90"}
    assert r["archs"]["sm_80"]["kernels"] == r["archs"]["sm_90"]["kernels"] == len(KERNELS)
    assert r["archs"]["sm_80"]["ptx"] == 0 and r["archs"]["sm_90"]["ptx"] > 0
    assert r["gpu_bytes"] == sum(e["stored_bytes"] for e in r["entries"]) + 16 * 3
    assert r["warnings"] == []


def test_compression_as_built(cuda_lib):
    variant, lib = cuda_lib
    r = inspect_library(lib)
    cubin = {e["compression"] for e in r["entries"] if e["kind"] == "cubin"}
    ptx = {e["compression"] for e in r["entries"] if e["kind"] == "ptx"}
    # nvcc 13 compresses PTX with zstd even without -compress-all; "speed" mode uses LZ4
    assert cubin == {"plain": {None}, "zstd": {"zstd"}, "lz4": {"lz4"}}[variant]
    assert ptx == ({"lz4"} if variant == "lz4" else {"zstd"})
    for e in r["entries"]:
        if e["compression"]:
            assert e["bytes"] > e["stored_bytes"] - 64


def test_demangled_names_and_ptx_entries(plain_lib):
    r = inspect_library(plain_lib)
    names = {k["name"]: k["demangled"] for e in r["entries"] for k in e["kernels"]}
    assert names == KERNELS
    demangled = subprocess.run(["c++filt"], input="\n".join(KERNELS), capture_output=True,
                               text=True).stdout.split("\n")
    if demangled[0]:  # binutils' c++filt as a second opinion where present
        assert [d for d in demangled if d] == list(KERNELS.values())
    ptx = [e for e in r["entries"] if e["kind"] == "ptx"]
    assert sorted(k["name"] for e in ptx for k in e["kernels"]) == sorted(KERNELS)


def test_kernel_sizes_are_their_text_sections(plain_lib, cuobjdump, tmp_path):
    from elftools.elf.elffile import ELFFile

    subprocess.run([cuobjdump, "-xelf", "all", str(plain_lib)], cwd=tmp_path, check=True,
                   capture_output=True)
    expected = []
    for cubin in sorted(tmp_path.glob("*.cubin"), key=lambda p: int(p.name.split(".")[1])):
        with open(cubin, "rb") as f:
            elf = ELFFile(f)
            expected.append(sorted((s.name[6:], s["sh_size"]) for s in elf.iter_sections()
                                   if s.name.startswith(".text.")))
    r = inspect_library(plain_lib)
    got = [sorted((k["name"], k["size"]) for k in e["kernels"])
           for e in r["entries"] if e["kind"] == "cubin"]
    assert got == expected


def test_site_packages_sorted_by_gpu_bytes(cuda_lib_dir, plain_lib, tmp_path):
    import shutil
    import sys

    site = tmp_path / "site"
    (site / "pkg").mkdir(parents=True)
    shutil.copy(plain_lib, site / "pkg" / "libbig.so")
    shutil.copy(sys.executable, site / "pkg" / "notcuda.so")  # an ELF without GPU code
    (site / "pkg" / "broken.so.1").write_bytes(b"\x7fELF" + bytes(40))
    (site / "pkg" / "readme.txt").write_text("not a library")
    reports = inspect_site_packages(site)
    assert [r["path"].rsplit("/", 1)[1] for r in reports] == ["libbig.so", "broken.so.1",
                                                              "notcuda.so"]
    assert reports[0]["gpu_bytes"] > 0 and reports[2]["gpu_bytes"] == 0
    assert "error" in reports[1] and "error" not in reports[2]
    assert main(["debloat", "inspect", "--site-packages", str(site)]) == 0


def test_cli_json_and_text(plain_lib, capsys):
    assert main(["debloat", "inspect", str(plain_lib), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["file_bytes"] == plain_lib.stat().st_size and len(r["entries"]) == 8
    assert main(["debloat", "inspect", str(plain_lib), "--kernels"]) == 0
    out = capsys.readouterr().out
    assert "sm_90" in out and "void ns::poly<int, 64>(int*, int)" in out
    assert main(["debloat", "inspect", str(plain_lib), "--arch", "sm_90"]) == 0
    from flashkit.debloat import arch_savings

    dropped = arch_savings(r, "sm_90")  # the sm_80 cubins and the PTX
    assert dropped == sum(e["stored_bytes"] for e in r["entries"]
                          if (e["kind"], e["arch"]) != ("cubin", "sm_90"))
    assert f"sm_90 only: {dropped / 1024:.1f} KiB" in capsys.readouterr().out
    assert main(["debloat", "inspect", str(plain_lib), "--arch", "hopper"]) == 2


def test_bad_arguments(tmp_path, plain_lib, capsys):
    assert main(["debloat", "inspect"]) == 2
    assert main(["debloat", "inspect", str(plain_lib), "--site-packages"]) == 2
    assert main(["debloat", "inspect", "--site-packages", str(tmp_path / "missing")]) == 2
    assert "neither" in capsys.readouterr().err
    with pytest.raises(TypeError, match="path"):
        inspect_library(3)
    with pytest.raises(ValueError, match="root"):
        inspect_site_packages(tmp_path / "missing")


def test_containers_embedded_as_data(plain_lib, tmp_path):
    """A container stored as plain data (libcufft keeps its GPU code in .ldata) is found by its
    magic and parses; a stray magic that is not a whole container is ignored."""
    import shutil

    from flashkit.debloat.elf import HostLibrary

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    with HostLibrary(plain_lib) as h:
        c = h.fatbins[0].containers[1]
        blob = bytes(h.mm[c.offset:c.offset + c.size])
    body = ",".join(str(b) for b in blob)
    stray = "0x50,0xed,0x55,0xba,1,0,16,0,255,255,255,255,0,0,0,0"
    (tmp_path / "blob.c").write_text(
        f"__attribute__((aligned(8))) const unsigned char stray[] = {{{stray}}};\n"
        f"__attribute__((aligned(8))) const unsigned char blob[] = {{{body}}};\n"
        "const unsigned char* get_blob(void) { return blob; }\n")
    lib = tmp_path / "libblob.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "blob.c")],
                   check=True, capture_output=True)
    r = inspect_library(lib)
    assert [s["name"] for s in r["sections"]] == [".rodata"]
    expected = inspect_library(plain_lib)
    assert [(e["kind"], e["arch"], e["kernels"]) for e in r["entries"]] == \
        [(e["kind"], e["arch"], e["kernels"]) for e in expected["entries"] if e["container"] == 1]
