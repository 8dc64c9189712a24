"""A pytest plugin (``-p flashkit.gpucheck.pytest_log``): one JSON line per test outcome, appended
as each test ends, to the file named by ``FLASHKIT_GPUCHECK_TESTLOG``.

With xdist the controller receives every worker's reports, so one process writes the file. A run
killed at its cap keeps every line written before the kill (the JUnit report pytest writes at the
end would be lost).
"""
from __future__ import annotations

import json
import os

_ENV = "FLASHKIT_GPUCHECK_TESTLOG"
_is_xdist_worker = False


def pytest_configure(config):
    # xdist gives its workers a `workerinput`; PYTEST_XDIST_WORKER is no test of that, since a
    # pytest started from inside a worker (a test that runs pytest) inherits the variable.
    global _is_xdist_worker
    _is_xdist_worker = hasattr(config, "workerinput")


def pytest_runtest_logreport(report):
    path = os.environ.get(_ENV)
    # xdist workers see their own reports too: only the controller (or a plain run) writes.
    if not path or _is_xdist_worker:
        return
    # One line per test: its call phase, or the setup/teardown phase that failed or skipped it.
    if report.when != "call" and report.passed:
        return
    line = {"test": report.nodeid, "when": report.when, "outcome": report.outcome,
            "seconds": round(report.duration, 3)}
    if report.failed or report.skipped:
        text = str(report.longrepr) if report.longrepr is not None else ""
        line["message"] = text[-2000:]
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
