"""Running a plan under a budget: each section in its own process group, killed at its cap.

The budget is split over the sections in proportion to their default caps (never more than the
time left before the run's deadline). A section's result file is written the moment it ends,
whatever happened: ``ok`` (every command exited 0), ``failed``, ``timeout`` (killed at its cap;
a bench section keeps every case it finished, a test section every test it finished) or
``skipped`` (no time left). The summary (``00_gpucheck.json``) is rewritten after every section.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .plan import Section

__all__ = ["scaled_caps", "run_plan", "section_path", "SUMMARY"]

SUMMARY = "00_gpucheck.json"
# After SIGTERM, how long a section may take to exit before SIGKILL (seconds).
_GRACE_S = 3.0
# ``{extra:NAME}``: a further JSON record of a section's commands (an identifier NAME)
_EXTRA = re.compile(r"\{extra:(\w+)\}")
# Output kept per section (the end of stdout and stderr together).
_TAIL_CHARS = 6000
# A section is not started with less than this left: it could not even start torch.
_MIN_START_S = 5.0
# What every section file repeats from the environment section's record.
_CONTEXT_KEYS = ("device", "host", "versions", "git")


def _measuring_own_ceilings(section: Section) -> Section:
    """The section without ``--ceilings FILE`` (no environment record holds them this run)."""
    commands = []
    for argv in section.commands:
        out, skip = [], False
        for a in argv:
            if skip:
                skip = False
            elif a == "--ceilings":
                skip = True
            else:
                out.append(a)
        commands.append(out)
    return dataclasses.replace(section, commands=commands)


def scaled_caps(sections: list[Section], budget_s: float) -> list[float]:
    """Each section's cap: its default share of ``budget_s``."""
    if not budget_s > 0:
        raise ValueError(f"budget_s must be > 0 seconds, got {budget_s}")
    total = sum(s.cap_s for s in sections)
    return [budget_s * s.cap_s / total for s in sections]


def section_path(out_dir: Path, index: int, section: Section) -> Path:
    """``NN_name.json``: NN is the section's number in the full plan (else its position)."""
    return out_dir / f"{section.index or index:02d}_{section.name}.json"


def _write(path: Path, rec: dict) -> None:
    from flashkit.bench import record

    record.write_json(rec, path)


def _read_result(path: Path, kind: str):
    """The section's own result: a JSON record, or a list of JSON lines (a torn last line, from
    a kill mid-write, is dropped)."""
    if not path.exists():
        return None
    text = path.read_text()
    if kind == "json":
        try:
            return json.loads(text)
        except ValueError:
            return None
    items = []
    for line in text.splitlines():
        try:
            items.append(json.loads(line))
        except ValueError:
            continue
    return items


def _test_summary(items: list[dict]) -> dict:
    counts: dict[str, int] = {}
    for it in items:
        counts[it["outcome"]] = counts.get(it["outcome"], 0) + 1
    return {"counts": counts, "failed": [it for it in items if it["outcome"] == "failed"],
            "slowest": sorted(items, key=lambda it: -it.get("seconds", 0))[:10]}


def _kill(proc: subprocess.Popen) -> None:
    """SIGTERM the command's whole process group (pytest's xdist workers, a bench's compiler
    children), then SIGKILL what is left after the grace period."""
    for sig, wait in ((signal.SIGTERM, _GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _run_commands(section: Section, cap_s: float, result_path: Path, log_path: Path) -> dict:
    """Run the section's commands one after another inside ``cap_s``; what happened."""
    start = time.monotonic()
    deadline = start + cap_s
    env = dict(os.environ, PYTHONUNBUFFERED="1", FLASHKIT_GPUCHECK_TESTLOG=str(result_path),
               **section.env)
    status, codes, commands = "ok", [], []
    with open(log_path, "w") as log:
        for argv in section.commands:
            argv = [_EXTRA.sub(lambda m: str(result_path.parent / f"extra_{m[1]}.json"),
                               a.replace("{result}", str(result_path))) for a in argv]
            commands.append(argv)
            left = deadline - time.monotonic()
            if left <= 0:
                status = "timeout"
                break
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=section.cwd, start_new_session=True)
            try:
                codes.append(proc.wait(timeout=left))
            except subprocess.TimeoutExpired:
                _kill(proc)
                codes.append(None)
                status = "timeout"
                break
            if codes[-1] != 0:
                status = "failed"  # the next commands still run: their results count too
    with open(log_path, errors="replace") as log:
        tail = log.read()[-_TAIL_CHARS:]
    return {"status": status, "returncodes": codes, "commands": commands,
            "elapsed_s": round(time.monotonic() - start, 2), "output_tail": tail}


def run_plan(sections: list[Section], out_dir, budget_s: float, *, command: str,
             context: dict | None = None, echo=print, min_start_s: float = _MIN_START_S) -> dict:
    """Run ``sections`` in order under ``budget_s`` seconds; one file per section in
    ``out_dir`` plus the summary. A section left less than ``min_start_s`` is skipped.
    Returns the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    caps = scaled_caps(sections, budget_s)
    started = time.monotonic()
    deadline = started + budget_s
    summary = {"kind": "gpucheck", "command": command, "budget_s": budget_s,
               "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               **(context or {}),
               "sections": [{"name": s.name, "title": s.title, "cap_s": round(c, 1),
                             "estimate_s": round(s.estimate_s, 1), "status": "pending",
                             "file": section_path(out_dir, i + 1, s).name}
                            for i, (s, c) in enumerate(zip(sections, caps))]}
    _write(out_dir / SUMMARY, summary)
    env_record = None
    with tempfile.TemporaryDirectory(prefix="gpucheck-") as tmp:
        for i, (section, cap) in enumerate(zip(sections, caps)):
            path = section_path(out_dir, i + 1, section)
            cap = min(cap, deadline - time.monotonic())
            rec = {"kind": "gpucheck-section", "section": section.name, "title": section.title,
                   "command": command, "cap_s": round(cap, 1),
                   "estimate_s": round(section.estimate_s, 1)}
            if env_record is not None:  # device, versions and commit in every file
                rec.update({k: env_record.get(k) for k in _CONTEXT_KEYS})
            if cap < min_start_s:
                rec.update(status="skipped", note=f"{max(cap, 0):.1f} s left of the budget")
            else:
                echo(f"[{i + 1}/{len(sections)}] {section.name}: {section.title} "
                     f"(cap {cap:.0f} s)")
                result_path = Path(tmp) / f"{section.name}.{section.result}"
                if env_record is None or "ceilings" not in env_record:
                    section = _measuring_own_ceilings(section)
                rec.update(_run_commands(section, cap, result_path, Path(tmp) / "log"))
                result = _read_result(result_path, section.result)
                if section.result == "jsonl":
                    rec["tests"] = _test_summary(result or [])
                    rec["results"] = result or []
                else:
                    rec["result"] = result
                extra = sorted({m for argv in section.commands for a in argv
                                for m in _EXTRA.findall(a)})
                if extra:  # further records of the same section (same file: 8 come back)
                    rec["extra"] = {n: _read_result(Path(tmp) / f"extra_{n}.json", "json")
                                    for n in extra}
                if section.name == "environment" and isinstance(result, dict):
                    env_record = result
                    rec.update({k: result.get(k) for k in _CONTEXT_KEYS + ("ceilings",)})
                    summary.update({k: result.get(k) for k in _CONTEXT_KEYS})
            _write(path, rec)
            entry = summary["sections"][i]
            entry.update(status=rec["status"], elapsed_s=rec.get("elapsed_s"))
            _write(out_dir / SUMMARY, summary)
            echo(f"    {rec['status']} in {rec.get('elapsed_s', 0):.1f} s -> {path}")
    summary["elapsed_s"] = round(time.monotonic() - started, 2)
    _write(out_dir / SUMMARY, summary)
    return summary
