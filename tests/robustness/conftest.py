"""Counts the robustness cases tried (table rows, CLI rows, property examples) and prints the
totals at the end of the run, summed over xdist workers."""
import pytest

from .framework import TRIED


def _add(counts):
    for key, value in counts.items():
        TRIED[key] = TRIED.get(key, 0) + value


def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand the counts to the controller
        workeroutput["robustness_tried"] = dict(TRIED)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    _add(getattr(node, "workeroutput", {}).get("robustness_tried", {}))


def pytest_terminal_summary(terminalreporter):
    if getattr(terminalreporter.config, "workeroutput", None) is not None:
        return
    total = sum(TRIED.values())
    if total:
        terminalreporter.write_line(
            f"robustness: {total} cases tried ({TRIED['table']} table rows, {TRIED['cli']} CLI "
            f"calls, {TRIED['property']} property examples)")
