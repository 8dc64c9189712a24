"""The flashkit command under bad arguments, files and environment: one line naming the
command and what is wrong, exit status 2, no traceback; a bug still shows its traceback."""
import gzip
import os
import subprocess
import sys

import pytest

from .framework import CliCase, table

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

test_jit_commands = table([
    CliCase("build-arch-unknown", ("jit", "build", "--all", "--arch", "sm_xx"),
            match=r"argument --arch: expected GPU archs like sm_80 .*'sm_xx'"),
    CliCase("build-arch-empty", ("jit", "build", "--all", "--arch", ","), match=r"--arch"),
    CliCase("build-arch-bare-number", ("jit", "build", "--all", "--arch", "90"),
            match=r"--arch"),
    CliCase("build-arch-one-bad-of-two", ("jit", "build", "--all", "--arch", "sm_90,sm90"),
            match=r"'sm_90,sm90'"),
    CliCase("build-nothing-named", ("jit", "build"),
            match=r"^flashkit jit build: name specs .* or pass --all$"),
    CliCase("build-no-match", ("jit", "build", "no_such_kernel*"),
            match=r"flashkit jit build: no shipped specialization matches no_such_kernel\*"),
    CliCase("unbundle-missing", ("jit", "unbundle", "{tmp}/missing.tar.gz"),
            match=r"flashkit jit unbundle: No such file or directory: .*missing.tar.gz"),
    CliCase("unbundle-not-gzip", ("jit", "unbundle", "{tmp}/notes.txt"),
            files=(("notes.txt", b"hello\n"),),
            match=r"flashkit jit unbundle: .*notes.txt is not a readable flashkit bundle"),
    CliCase("unbundle-corrupt-gzip", ("jit", "unbundle", "{tmp}/bad.tar.gz"),
            files=(("bad.tar.gz", gzip.compress(b"x" * 4096)[:40]),),
            match=r"not a readable flashkit bundle"),
    CliCase("unbundle-a-folder", ("jit", "unbundle", "{tmp}"), match=r"Is a directory"),
    CliCase("bundle-unwritable-path", ("jit", "bundle", "{tmp}/no/such/dir/k.tar.gz"),
            match=r"flashkit jit bundle: cannot write the bundle .*k.tar.gz"),
    CliCase("bundle-onto-a-folder", ("jit", "bundle", "{tmp}"), match=r"cannot write the bundle"),
    CliCase("bundle-since-nan", ("jit", "bundle", "{tmp}/k.tar.gz", "--since-minutes", "nan"),
            match=r"--since-minutes: expected a number of minutes >= 0, got 'nan'"),
    CliCase("bundle-since-negative", ("jit", "bundle", "{tmp}/k.tar.gz", "--since-minutes",
                                      "-5"), match=r"--since-minutes"),
    CliCase("jit-without-subcommand", ("jit",), match=r"required: jit_command"),
    CliCase("jit-unknown-subcommand", ("jit", "purge"), match=r"invalid choice: 'purge'"),
    CliCase("unknown-command", ("frobnicate",), match=r"invalid choice: 'frobnicate'"),
])

test_environment = table([
    CliCase("lock-timeout-abc", ("jit", "ls"), env=(("FLASHKIT_LOCK_TIMEOUT", "abc"),),
            match=r"^flashkit jit ls: FLASHKIT_LOCK_TIMEOUT must be a number of seconds >= 0, "
                  r"got 'abc'$"),
    CliCase("lock-timeout-negative", ("jit", "clear"), env=(("FLASHKIT_LOCK_TIMEOUT", "-1"),),
            match=r"FLASHKIT_LOCK_TIMEOUT"),
    CliCase("workers-zero", ("jit", "ls"), env=(("FLASHKIT_JIT_WORKERS", "0"),),
            match=r"FLASHKIT_JIT_WORKERS must be an integer >= 1, got '0'"),
    CliCase("workers-word", ("jit", "build", "--all"), env=(("FLASHKIT_JIT_WORKERS", "four"),),
            match=r"FLASHKIT_JIT_WORKERS"),
    CliCase("disable-jit-maybe", ("jit", "ls"), env=(("FLASHKIT_DISABLE_JIT", "maybe"),),
            match=r"FLASHKIT_DISABLE_JIT must be 1/0"),
    CliCase("bf16-dot-unknown", ("doctor",), env=(("FLASHKIT_INTERPRET_BF16_DOT", "bf16"),),
            match=r"flashkit doctor: FLASHKIT_INTERPRET_BF16_DOT must be 'f32' or 'native'"),
])

test_verbose = table([
    CliCase("verbose-with-value", ("--verbose=3", "doctor"), match=r"ignored explicit argument"),
    CliCase("verbose-alone", ("-v",), match=r"required: command"),
    CliCase("verbose-twice-value", ("-v", "jit", "ls", "--verbose=yes"),
            match=r"ignored explicit argument 'yes'"),
    CliCase("verbose-after-subcommand", ("jit", "ls", "-v"), status=0, match=r"^$"),
    CliCase("verbose-shows-traceback-of-bad-input", ("-v", "jit", "unbundle", "{tmp}/x.tgz"),
            match=r"Traceback(.|\n)*flashkit jit unbundle: No such file", traceback=True),
])


def test_a_bug_keeps_its_traceback_and_says_internal_error(monkeypatch, capsys):
    from flashkit import cli

    def broken(args):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(cli, "_cmd_jit_clear", broken)
    assert cli.main(["jit", "clear"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "unsupported operand" in err
    assert "flashkit jit clear: internal error (TypeError: unsupported operand)" in err


def test_a_compile_failure_exits_1_with_the_compilers_message(monkeypatch, capsys, tmp_path):
    from flashkit import cli
    from flashkit.jit import JitCompileError

    def failing(args):
        raise JitCompileError("k_0123", tmp_path / "source.cu", tmp_path / "build.log",
                              "error: identifier \"bf16\" is undefined")

    monkeypatch.setattr(cli, "_cmd_jit_ls", failing)
    assert cli.main(["jit", "ls"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and 'identifier "bf16" is undefined' in err


@pytest.mark.parametrize("argv, env", [
    (["jit", "unbundle", "/nonexistent/k.tar.gz"], {}),
    (["jit", "ls"], {"FLASHKIT_LOCK_TIMEOUT": "abc"}),
], ids=["unbundle-missing", "lock-timeout-abc"])
def test_as_a_process(argv, env, tmp_path):
    """End to end through ``python -m flashkit``: the status and stderr a shell sees."""
    from .framework import TRIED

    TRIED["cli"] += 1
    proc = subprocess.run([sys.executable, "-m", "flashkit", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "FLASHKIT_CACHE_DIR": str(tmp_path), **env})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("flashkit jit ")
