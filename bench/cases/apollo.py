"""APOLLO / APOLLO-Mini optimizer step vs torch.optim.AdamW (and apollo-torch where it imports).

A LLaMA-like parameter set: ``layers`` blocks of q, k, v, o [h, h], gate, up [f, h], down [h, f]
(APOLLO on these, as in the paper) plus the embedding and head [vocab, h] and the norms [h]
(AdamW in every optimizer). One timed call is one ``optimizer.step()`` with fixed gradients.
CUDA: h=4096, f=11008, vocab 32000, 4 of LLaMA-7B's 32 layers, bf16, rank 256. CPU: the same
ratios scaled by 1/4 (h=1024, f=2752, vocab 8000, 2 layers, float32, rank 64); a smoke test of
the runner, not numbers to compare.

State memory is measured with flashkit.optim.optimizer_state_bytes after a first step and
shown in each row's name (``(state X MiB)``): the registry has no per-row metric field.

Bytes a step moves differ by optimizer, so the case reports times and speedups only (flops and
bytes 0). Per projected W [m, n] (elt bytes per element, r the rank, C = max(m, n)):
  AdamW (fused, ideal):      read G, read+write W, read+write both moments: 5 m n elt (bf16
                             moments) -- foreach runs ~10 separate passes.
  flashkit APOLLO (Triton):  the matmul reads G; the moments kernel reads G again (channel
                             norms) and R, M, V (and writes M, V): 2 m n elt + 5 r C 4; the weight
                             pass reads G and W and writes W: 3 m n elt. Total 5 m n elt + 20 r C.
"""
from __future__ import annotations

import functools

from ..registry import Case, Setup, optional, register

GPU = dict(hidden=4096, ffn=11008, vocab=32000, layers=4, rank=256, dtype="bfloat16")
CPU = dict(hidden=1024, ffn=2752, vocab=8000, layers=2, rank=64, dtype="float32")
CPU_QUICK = dict(hidden=256, ffn=688, vocab=2000, layers=1, rank=16, dtype="float32")
LR = 1e-3


def llama_shapes(hidden: int, ffn: int, vocab: int, layers: int):
    """(projected matrix shapes, other shapes) of a LLaMA-like model (nn.Linear weights)."""
    block = [(hidden, hidden)] * 4 + [(ffn, hidden), (ffn, hidden), (hidden, ffn)]
    return block * layers, [(vocab, hidden), (vocab, hidden)] + [(hidden,)] * (2 * layers + 1)


def _params(shapes, dtype, device, seed):
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for s in shapes:
        p = torch.nn.Parameter(0.02 * torch.randn(s, generator=gen, device=device).to(dtype))
        p.grad = 1e-3 * torch.randn(s, generator=gen, device=device).to(dtype)
        out.append(p)
    return out


def _setup(cfg: dict, device: str, quick: bool) -> Setup:
    import torch

    from flashkit.optim import APOLLO, APOLLOMini, optimizer_state_bytes

    dtype = getattr(torch, cfg["dtype"])
    proj_shapes, other_shapes = llama_shapes(cfg["hidden"], cfg["ffn"], cfg["vocab"],
                                             cfg["layers"])
    cuda = device.startswith("cuda")

    def groups(seed):
        return (_params(proj_shapes, dtype, device, seed),
                _params(other_shapes, dtype, device, seed + 1))

    def apollo(backend):
        proj, other = groups(0)
        return APOLLO([{"params": other}, {"params": proj, "rank": cfg["rank"]}], lr=LR,
                      backend=backend)

    def mini(backend):
        proj, other = groups(0)
        return APOLLOMini([{"params": other, "rank": None}, {"params": proj}], lr=LR,
                          backend=backend)

    def adamw(**kw):
        proj, other = groups(0)
        return torch.optim.AdamW(other + proj, lr=LR, **kw)

    makers = {"flashkit-apollo-torch": functools.partial(apollo, "torch"),
              "flashkit-apollo_mini-torch": functools.partial(mini, "torch")}
    skipped = {}
    if cuda:
        makers["flashkit-apollo-triton"] = functools.partial(apollo, "triton")
        makers["flashkit-apollo_mini-triton"] = functools.partial(mini, "triton")
    else:
        skipped["flashkit-apollo-triton"] = "Triton would run in its interpreter on the CPU"
    baselines = {"torch-adamw-foreach": functools.partial(adamw, foreach=True),
                 "torch-adamw-fused": functools.partial(adamw, fused=True)}

    def apollo_torch(rank, scale_type, scale):
        from apollo_torch import APOLLOAdamW

        def make():
            proj, other = groups(0)
            return APOLLOAdamW([{"params": other},
                                {"params": proj, "rank": rank, "proj": "random",
                                 "scale_type": scale_type, "scale": scale,
                                 "update_proj_gap": 200, "proj_type": "std"}], lr=LR)

        return make

    optional(baselines, skipped, "apollo-torch",
             functools.partial(apollo_torch, cfg["rank"], "channel", 1))
    optional(baselines, skipped, "apollo-torch-mini", functools.partial(apollo_torch, 1, "tensor",
                                                                        128))

    def build(table):
        out = {}
        for name, make in table.items():
            try:
                opt = make()
                opt.step()  # allocates the state (and builds the Triton kernels)
            except Exception as exc:  # e.g. fused AdamW on a device without it
                skipped[name] = f"{type(exc).__name__}: {exc}"
                continue
            mib = optimizer_state_bytes(opt) / 2**20
            out[f"{name} (state {mib:.1f} MiB)"] = opt.step
        return out

    return Setup(impls=build(makers), baselines=build(baselines), inputs=[()], skipped=skipped)


def _case(tag: str, cfg: dict, **kw) -> Case:
    h, f, v, n = cfg["hidden"], cfg["ffn"], cfg["vocab"], cfg["layers"]
    return register(Case(
        name=f"APOLLO/{tag}_h{h}_l{n}_r{cfg['rank']}", op="APOLLO",
        shape=f"LLaMA-like h={h} ffn={f} vocab={v} layers={n} {cfg['dtype']} rank={cfg['rank']}",
        setup=functools.partial(_setup, cfg), **kw))


_case("llama7b", GPU, devices=("cuda",))
_case("cpu", CPU, devices=("cpu",))
_case("cpu_quick", CPU_QUICK, devices=("cpu",), full=False, quick=("cpu",))
