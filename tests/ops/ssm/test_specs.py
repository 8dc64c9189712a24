"""Every shipped ssm specialization renders to valid Python with readable, distinct uris."""
import pytest

from flashkit.ops.ssm import shipped_specs

SPECS = shipped_specs("sm_90")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_shipped_spec_renders(spec):
    compile(spec.source, spec.name, "exec")
    assert spec.uri.startswith(spec.name + "_")


def test_uris_distinct():
    assert len({s.uri for s in SPECS}) == len(SPECS)
