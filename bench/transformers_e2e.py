"""End-to-end transformers models on flashkit's hooks against transformers' own paths.

``python -m flashkit.bench.transformers_e2e [--model llama-1b|mamba2-780m|all] [--batch 8]
[--prompt 512] [--decode 128] [--tiny] [--json PATH]``

Random weights (nothing is downloaded), bf16 on CUDA:

- ``llama-1b``: Llama-3.2-1B's shape (hidden 2048, 16 layers, 32/8 heads, ffn 8192, vocab
  128256); attn_implementation "fkit" against "sdpa" and, where flash_attn is installed,
  "flash_attention_2".
- ``mamba2-780m``: mamba2-780m's shape (hidden 1536, 48 layers, state 128, head_dim 64);
  flashkit's kernel-hub functions (``fk_hf.kernelize``) against transformers' default path
  (mamba_ssm's kernels where installed, its torch fallback otherwise).

Prefill tokens/s: one forward over ``batch x prompt`` tokens. Decode tokens/s: ``batch x
decode`` tokens: greedy generate of decode + 1 tokens minus that of 1 token (the prefill).
Medians of 3 runs after a warm-up, timed with CUDA events. ``--tiny`` shrinks the models so the
script runs on a CPU (a smoke run, not a measurement).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

SHAPES = {
    "llama-1b": dict(kind="llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
                     head_dim=64, max_position_embeddings=8192),
    "mamba2-780m": dict(kind="mamba2", hidden_size=1536, num_hidden_layers=48, state_size=128,
                        expand=2, head_dim=64, num_heads=48, n_groups=1, conv_kernel=4,
                        chunk_size=256, vocab_size=50280),
}
TINY = {"llama-1b": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, vocab_size=256, head_dim=16),
        "mamba2-780m": dict(hidden_size=64, num_hidden_layers=2, state_size=16, head_dim=16,
                            num_heads=8, chunk_size=16, vocab_size=256)}


def _config(name: str, tiny: bool):
    import transformers

    shape = dict(SHAPES[name], **(TINY[name] if tiny else {}))
    kind = shape.pop("kind")
    cls = transformers.LlamaConfig if kind == "llama" else transformers.Mamba2Config
    return kind, cls(**shape)


def _timer(device):
    import torch

    if device.type == "cuda":
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
    else:
        def run(fn):
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t
    return run


def _measure(model, batch: int, prompt: int, decode: int, repeats: int = 3) -> dict:
    """Prefill: one forward. Decode: generate(decode + 1 tokens) minus generate(1 token), both
    greedy with the model's default cache."""
    import torch

    device = next(model.parameters()).device
    timer = _timer(device)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), device=device)
    mask = torch.ones_like(ids)

    def prefill():
        with torch.no_grad():
            model(ids, attention_mask=mask)

    def gen(n):
        return lambda: model.generate(ids, attention_mask=mask, max_new_tokens=n,
                                      min_new_tokens=n, do_sample=False, pad_token_id=0)

    prefill()  # warm-up: JIT compiles, allocator, plans
    gen(2)()
    pre = statistics.median(timer(prefill) for _ in range(repeats))
    one = statistics.median(timer(gen(1)) for _ in range(repeats))
    full = statistics.median(timer(gen(decode + 1)) for _ in range(repeats))
    dec = max(full - one, 1e-9)
    return {"prefill_tok_s": batch * prompt / pre, "decode_tok_s": batch * decode / dec,
            "prefill_s": pre, "decode_s": dec}


def _variants(kind: str):
    """(label, from_config keywords, kernelize with flashkit?) to compare in one run."""
    import importlib.util

    from flashkit.integrations import transformers as fk_hf

    if kind == "llama":
        out = [("fkit", dict(attn_implementation=fk_hf.NAME), False),
               ("sdpa", dict(attn_implementation="sdpa"), False)]
        if importlib.util.find_spec("flash_attn") is not None:
            out.append(("flash_attention_2", dict(attn_implementation="flash_attention_2"), False))
        return out
    base = "mamba_ssm" if importlib.util.find_spec("mamba_ssm") else "transformers-torch"
    # kernelize swaps functions that every Mamba2 model shares: the baseline runs first.
    return [(base, {}, False), ("fkit", {}, True)]


def run(names, batch, prompt, decode, tiny) -> list[dict]:
    import torch
    import transformers

    from flashkit.integrations import transformers as fk_hf

    fk_hf.register()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for name in names:
        kind, cfg = _config(name, tiny)
        for label, kw, kernelize in _variants(kind):
            torch.manual_seed(0)
            model = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(cfg), **kw)
            model = model.to(device=device, dtype=dtype).eval()
            if kernelize:
                fk_hf.kernelize(model)
            rows.append(dict(model=name, impl=label, batch=batch, prompt=prompt, decode=decode,
                             dtype=str(dtype).replace("torch.", ""),
                             **_measure(model, batch, prompt, decode)))
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="flashkit.bench.transformers_e2e", description=__doc__.split(
        "\n")[0])
    p.add_argument("--model", choices=[*SHAPES, "all"], default="all")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--tiny", action="store_true", help="tiny shapes: a CPU smoke run")
    p.add_argument("--json", help="also write the rows and the environment here")
    args = p.parse_args(argv)
    for name in ("batch", "prompt", "decode"):
        if getattr(args, name) < 1:
            print(f"--{name} must be >= 1", file=sys.stderr)
            return 2
    names = list(SHAPES) if args.model == "all" else [args.model]
    rows = run(names, args.batch, args.prompt, args.decode, args.tiny)
    for r in rows:
        print(f"{r['model']:<12} {r['impl']:<20} prefill {r['prefill_tok_s']:>12.1f} tok/s  "
              f"decode {r['decode_tok_s']:>10.1f} tok/s")
    if args.json:
        import torch

        from . import record

        env = record.environment("cuda" if torch.cuda.is_available() else "cpu")
        with open(args.json, "w") as f:
            json.dump({"environment": env, "command": " ".join(sys.argv), "rows": rows}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
