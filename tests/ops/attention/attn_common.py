"""Shared builders of the attention tests: paged caches, page tables, the float32 oracle, and
the CUDA-graph helpers (launch-grid recorder, capture)."""
import numpy as np
import torch

from flashkit import jit

from flashkit.ops.attention.reference import (naive_batch_attention, naive_gather_paged_kv,
                                              naive_single_attention)
from tests.helpers import device

# Against the float32 reference: the output is rounded once to fp16/bf16, and the kernel also
# rounds the softmax weights to the value dtype before the P.V dot (as FlashInfer does): observed
# max errors 1.5e-3 (fp16) and 1.2e-2 (bf16) on randn inputs at these sizes.
ATTN_TOL = {torch.float16: dict(atol=4e-3, rtol=4e-3), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}
LSE_TOL = dict(atol=1e-4, rtol=1e-4)  # float32 logits of the same rounded inputs


def dt_id(dtype):
    return str(dtype).split(".")[-1]


def make_paged(kv_lens, page_size, num_kv_heads, head_dim, dtype, layout, seed, as_tuple=False,
               spare_pages=3):
    """A cache with shuffled, interleaved pages (and some unused), and its CSR page table."""
    g = torch.Generator().manual_seed(seed)
    pages = [-(-n // page_size) for n in kv_lens]
    total = sum(pages) + spare_pages
    perm = torch.randperm(total, generator=g).to(torch.int32)
    indptr = torch.tensor([0] + pages, dtype=torch.int32).cumsum(0).to(torch.int32)
    indices = perm[:sum(pages)].contiguous()
    last = torch.tensor([n - (p - 1) * page_size if p else 0 for n, p in zip(kv_lens, pages)],
                        dtype=torch.int32)
    shape = ((total, 2, page_size, num_kv_heads, head_dim) if layout == "NHD"
             else (total, 2, num_kv_heads, page_size, head_dim))
    cache = torch.randn(shape, generator=g).to(dtype).to(device())
    if as_tuple:
        cache = (cache[:, 0].clone(), cache[:, 1].clone())
    return cache, indptr.to(device()), indices.to(device()), last.to(device())


def ref_paged(q, qo_indptr, cache, indptr, indices, last, layout, **kw):
    kv = naive_gather_paged_kv(cache, indptr.cpu(), indices.cpu(), last.cpu(), layout)
    return naive_batch_attention(q.float(), qo_indptr.cpu(),
                                 [(k.float(), v.float()) for k, v in kv], **kw)


def ref_single(q, k, v, **kw):
    return naive_single_attention(q.float(), k.float(), v.float(), **kw)


def check_attn(out, lse, ref_out, ref_lse, dtype):
    assert not out.isnan().any(), "NaN in output (an unwritten element?)"
    torch.testing.assert_close(out.float().cpu(), ref_out.float().cpu(), **ATTN_TOL[dtype])
    if lse is not None:
        assert torch.equal(torch.isneginf(lse).cpu(), torch.isneginf(ref_lse).cpu())
        finite = ~torch.isneginf(ref_lse.cpu())
        torch.testing.assert_close(lse.cpu()[finite], ref_lse.float().cpu()[finite], **LSE_TOL)


def page_table(kv_lens, page_size, num_pages, seed):
    """A CSR page table over a shared cache of ``num_pages`` pages (shuffled, disjoint)."""
    g = torch.Generator().manual_seed(seed)
    pages = [-(-n // page_size) for n in kv_lens]
    perm = torch.randperm(num_pages, generator=g)[:sum(pages)].to(torch.int32)
    indptr = torch.tensor([0, *np.cumsum(pages)], dtype=torch.int32)
    last = torch.tensor([n - (p - 1) * page_size if p else 0 for n, p in zip(kv_lens, pages)],
                        dtype=torch.int32)
    return indptr.to(device()), perm.to(device()), last.to(device())


class GridRecorder:
    """Wraps flashkit.jit.load so that every Triton launch's (kernel, grid) is recorded."""

    def __init__(self, monkeypatch):
        self.grids = []
        real = jit.load

        def load(spec):
            mod = real(spec)
            rec = self

            class Proxy:
                def __getattr__(self, name):
                    fn = getattr(mod, name)
                    if not name.endswith("_kernel"):
                        return fn

                    class Launch:
                        def __getitem__(self, grid):
                            rec.grids.append((name, tuple(grid)))
                            return fn[grid]
                    return Launch()
            return Proxy()
        monkeypatch.setattr(jit, "load", load)


def capture_graph(run):
    """Run ``run`` once on a side stream (JIT compiles outside the capture), then capture it in
    a torch.cuda.CUDAGraph and return the graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        run()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph
