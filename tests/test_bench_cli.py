"""`flashkit bench`'s own options through the flashkit CLI: --help, --list, --quick, and bad
arguments answered in one line with exit status 2."""
import subprocess
import sys

import pytest

from flashkit.cli import main


def test_bench_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--quick", "--list", "--json", "--device", "--ceilings"):
        assert option in out


def test_bench_list_uses_public_op_names(capsys):
    assert main(["bench", "chunk_ssd_scan", "--quick", "--list", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith("chunk_ssd_scan/") for line in lines)
    # Every op a full CUDA run knows is a public flashkit name (matched in any case).
    assert main(["bench", "--list", "--device", "cuda"]) == 0
    import flashkit

    ops = {line.split("/")[0] for line in capsys.readouterr().out.splitlines()}
    assert ops and ops <= set(flashkit.__all__), ops - set(flashkit.__all__)
    assert main(["bench", "apollo", "--list", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("APOLLO/")


@pytest.mark.parametrize("argv, message", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--device", "tpu"], "invalid choice"),
    (["no_such_op", "--device", "cpu"], "no case matches no_such_op"),
    (["merge_states", "--device", "cpu", "--json", "/proc/nope/x.json"], "--json"),
    (["merge_states", "--device", "cpu", "--ceilings", "/nonexistent.json"], "--ceilings"),
])
def test_bad_bench_arguments_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert lines[0].startswith("flashkit bench: error:")


def test_python_dash_m_flashkit_bench_list():
    """The real entry point (argparse's subcommand path, not only main())."""
    proc = subprocess.run([sys.executable, "-m", "flashkit", "bench", "--quick", "--list",
                           "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "merge_states/" in proc.stdout
