"""Record FlashInfer's public attention signatures into flashinfer_signatures.json.

FlashInfer is parsed, never imported (it needs CUDA and its own torch):

    pip download --no-deps flashinfer-python==0.7.4 -d /tmp/fi
    python tests/ops/attention/record_flashinfer_signatures.py /tmp/fi/flashinfer_python-0.7.4-*.whl

The snapshot holds, per symbol, every parameter's name, kind and default (its source text) in
order; test_flashinfer_signatures.py holds flashkit's ``inspect.signature`` against it. Rerun
this on a new FlashInfer release and review the diff of the JSON.
"""
from __future__ import annotations

import ast
import json
import pathlib
import sys
import zipfile

FUNCTIONS = {"decode.py": ["single_decode_with_kv_cache"],
             "prefill.py": ["single_prefill_with_kv_cache"],
             "cascade.py": ["merge_state", "merge_state_in_place", "merge_states"],
             "page.py": ["append_paged_kv_cache", "get_batch_indices_positions"]}
CLASSES = {"decode.py": ["BatchDecodeWithPagedKVCacheWrapper"],
           "prefill.py": ["BatchPrefillWithPagedKVCacheWrapper",
                          "BatchPrefillWithRaggedKVCacheWrapper"],
           "cascade.py": ["MultiLevelCascadeAttentionWrapper"]}
# The methods a caller of the wrappers uses: FlashInfer's API surface (its aliases included).
METHODS = ("__init__", "plan", "run", "begin_forward", "forward", "end_forward",
           "reset_workspace_buffer", "run_return_lse", "forward_return_lse")
OUT = pathlib.Path(__file__).with_name("flashinfer_signatures.json")


def _is_overload(fn: ast.FunctionDef) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "overload" for d in fn.decorator_list)


def params(fn: ast.FunctionDef) -> list[dict]:
    """[{name, kind, default}] in order; kind as inspect.Parameter's kind names; default the
    source text of the default or null when there is none."""
    a = fn.args
    out = []
    pos = a.posonlyargs + a.args
    defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
    for i, (p, d) in enumerate(zip(pos, defaults)):
        kind = "POSITIONAL_ONLY" if i < len(a.posonlyargs) else "POSITIONAL_OR_KEYWORD"
        out.append(dict(name=p.arg, kind=kind, default=None if d is None else ast.unparse(d)))
    if a.vararg:
        out.append(dict(name=a.vararg.arg, kind="VAR_POSITIONAL", default=None))
    for p, d in zip(a.kwonlyargs, a.kw_defaults):
        out.append(dict(name=p.arg, kind="KEYWORD_ONLY",
                        default=None if d is None else ast.unparse(d)))
    if a.kwarg:
        out.append(dict(name=a.kwarg.arg, kind="VAR_KEYWORD", default=None))
    return out


def implementations(body) -> dict[str, ast.FunctionDef]:
    """name -> the def that runs (the last one not marked @overload)."""
    return {n.name: n for n in body if isinstance(n, ast.FunctionDef) and not _is_overload(n)}


def legacy_plan(plan: ast.FunctionDef, impl: ast.FunctionDef, module: ast.Module) -> list[dict]:
    """The signature a caller sees of ``plan(<required>, *deprecated_positional_args, **kwargs)``
    forwarding to ``_plan_impl(<required>, *, ...)``: the names of the module's legacy tuple
    (the one plan's body names) bind positionally in that order, the rest by keyword only."""
    used = {n.id for n in ast.walk(plan) if isinstance(n, ast.Name)}
    legacy = next(ast.literal_eval(n.value) for n in module.body if isinstance(n, ast.Assign)
                  and isinstance(n.targets[0], ast.Name) and n.targets[0].id in used
                  and isinstance(n.value, ast.Tuple))
    kw = {p["name"]: p for p in params(impl) if p["kind"] == "KEYWORD_ONLY"}
    out = [p for p in params(plan) if p["kind"] == "POSITIONAL_OR_KEYWORD"]
    out += [dict(kw.pop(name), kind="POSITIONAL_OR_KEYWORD") for name in legacy]
    return out + list(kw.values())


def record_class(cls: ast.ClassDef, module: ast.Module) -> dict:
    defs = implementations(cls.body)
    out = {}
    for node in cls.body:  # aliases: begin_forward = plan, run_return_lse = partialmethod(...)
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id in METHODS:
            out[node.targets[0].id] = {"alias": ast.unparse(node.value)}
    for name in METHODS:
        if name in defs:
            out[name] = {"params": params(defs[name])}
    if "_plan_impl" in defs and defs["plan"].args.vararg is not None:
        out["plan"] = {"params": legacy_plan(defs["plan"], defs["_plan_impl"], module)}
    return {name: out[name] for name in METHODS if name in out}


def record(sources: dict[str, str], version: str) -> dict:
    snap = {"flashinfer_version": version, "functions": {}, "classes": {}}
    for fname, names in FUNCTIONS.items():
        defs = implementations(ast.parse(sources[fname]).body)
        for name in names:
            snap["functions"][name] = params(defs[name])
    for fname, names in CLASSES.items():
        tree = ast.parse(sources[fname])
        classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        for name in names:
            snap["classes"][name] = record_class(classes[name], tree)
    return snap


def dumps(obj, indent: str = "") -> str:
    """JSON with one parameter per line, so that a new release's diff reads parameter by
    parameter."""
    inner = indent + " "
    if isinstance(obj, dict) and "kind" not in obj:
        items = [f"{inner}{json.dumps(k)}: {dumps(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(obj, list):
        return "[\n" + ",\n".join(inner + dumps(v, inner) for v in obj) + "\n" + indent + "]"
    return json.dumps(obj)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].endswith(".whl"):
        print("usage: record_flashinfer_signatures.py flashinfer_python-<version>-*.whl",
              file=sys.stderr)
        return 2
    wheel = pathlib.Path(argv[0])
    version = wheel.name.split("-")[1]
    with zipfile.ZipFile(wheel) as z:
        sources = {f: z.read(f"flashinfer/{f}").decode() for f in {*FUNCTIONS, *CLASSES}}
    OUT.write_text(dumps(record(sources, version)) + "\n")
    print(f"wrote {OUT} (FlashInfer {version})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
