"""flashkit's attention API against FlashInfer's recorded signatures (flashinfer_signatures.json,
written by record_flashinfer_signatures.py from FlashInfer's source).

The contract: every FlashInfer parameter appears in flashkit with the same name, kind, position
and default, so that a call written for FlashInfer binds every argument to the same parameter;
flashkit may only add keyword-only parameters after them (its backend/variant extensions).
Aliases (``begin_forward = plan``, ``run_return_lse = partialmethod(run, return_lse=True)``) are
the same objects.
"""
from __future__ import annotations

import ast
import functools
import inspect
import json
import pathlib

import pytest

from flashkit.ops import attention

SNAPSHOT = json.loads(pathlib.Path(__file__).with_name("flashinfer_signatures.json").read_text())
EMPTY = inspect.Parameter.empty


def _flashkit_params(fn) -> list[dict]:
    return [dict(name=p.name, kind=p.kind.name,
                 default=None if p.default is EMPTY else repr(p.default))
            for p in inspect.signature(fn).parameters.values()]


def check_params(where: str, fn, theirs: list[dict]) -> None:
    ours = _flashkit_params(fn)
    assert ours[:len(theirs)] == theirs, (
        f"{where}: flashkit's first {len(theirs)} parameters differ from FlashInfer "
        f"{SNAPSHOT['flashinfer_version']}'s\n ours:   {ours[:len(theirs)]}\n theirs: {theirs}")
    extra = [p for p in ours[len(theirs):] if p["kind"] != "KEYWORD_ONLY"]
    assert not extra, f"{where}: flashkit's extensions must be keyword-only, got {extra}"


@pytest.mark.parametrize("name", sorted(SNAPSHOT["functions"]))
def test_function_signature(name):
    check_params(name, getattr(attention, name), SNAPSHOT["functions"][name])


CASES = [(c, m) for c, methods in sorted(SNAPSHOT["classes"].items()) for m in methods]


@pytest.mark.parametrize("cls_name,method", CASES, ids=[f"{c}.{m}" for c, m in CASES])
def test_method_signature(cls_name, method):
    cls = getattr(attention, cls_name)
    entry = SNAPSHOT["classes"][cls_name][method]
    assert hasattr(cls, method), f"{cls_name}.{method} is missing"
    if "params" in entry:
        check_params(f"{cls_name}.{method}", getattr(cls, method), entry["params"])
        return
    alias = ast.parse(entry["alias"], mode="eval").body
    ours = inspect.getattr_static(cls, method)
    if isinstance(alias, ast.Name):  # begin_forward = plan
        assert ours is inspect.getattr_static(cls, alias.id), \
            f"{cls_name}.{method} must be {cls_name}.{alias.id}"
        return
    # functools.partialmethod(run, return_lse=True)
    assert isinstance(ours, functools.partialmethod), f"{cls_name}.{method}: not a partialmethod"
    assert ours.func is inspect.getattr_static(cls, alias.args[0].id)
    assert ours.keywords == {k.arg: ast.literal_eval(k.value) for k in alias.keywords}


def test_snapshot_covers_the_scope():
    """The symbols of FlashInfer's attention API that flashkit claims, all recorded."""
    assert set(SNAPSHOT["functions"]) == {
        "single_decode_with_kv_cache", "single_prefill_with_kv_cache", "merge_state",
        "merge_state_in_place", "merge_states", "append_paged_kv_cache",
        "get_batch_indices_positions"}
    assert set(SNAPSHOT["classes"]) == {
        "BatchDecodeWithPagedKVCacheWrapper", "BatchPrefillWithPagedKVCacheWrapper",
        "BatchPrefillWithRaggedKVCacheWrapper", "MultiLevelCascadeAttentionWrapper"}
    assert SNAPSHOT["flashinfer_version"].startswith("0.7.")


def test_recorder_reads_overloads_aliases_and_legacy_plans():
    """The recorder on a small source of FlashInfer's shapes: @overload stubs skipped, aliases
    kept as text, a plan(*deprecated_positional_args, **kwargs) expanded to what binds."""
    import ast as _ast

    from tests.ops.attention.record_flashinfer_signatures import params, record_class

    src = '''
_LEGACY = ("window_left", "q_data_type")
class W:
    def __init__(self, ws, kv_layout="NHD"): ...
    def plan(self, indptr, *deprecated_positional_args, **kwargs):
        return _merge(_LEGACY, deprecated_positional_args, kwargs)
    def _plan_impl(self, indptr, *, window_left=-1, q_data_type="float16", extra=None): ...
    begin_forward = plan
    @overload
    def run(self, q, return_lse: Literal[False] = False): ...
    def run(self, q, *args, out=None, return_lse=False): ...
    run_return_lse = functools.partialmethod(run, return_lse=True)
'''
    tree = _ast.parse(src)
    rec = record_class(tree.body[1], tree)
    names = lambda m: [(p["name"], p["kind"][:3], p["default"]) for p in rec[m]["params"]]
    assert names("plan") == [("self", "POS", None), ("indptr", "POS", None),
                             ("window_left", "POS", "-1"), ("q_data_type", "POS", "'float16'"),
                             ("extra", "KEY", "None")]
    assert names("run") == [("self", "POS", None), ("q", "POS", None), ("args", "VAR", None),
                            ("out", "KEY", "None"), ("return_lse", "KEY", "False")]
    assert rec["begin_forward"] == {"alias": "plan"}
    assert rec["run_return_lse"] == {"alias": "functools.partialmethod(run, return_lse=True)"}
    assert list(rec) == ["__init__", "plan", "run", "begin_forward", "run_return_lse"]
    assert params(tree.body[1].body[0])[1] == {"name": "ws", "kind": "POSITIONAL_OR_KEYWORD",
                                               "default": None}
