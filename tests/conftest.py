import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# Set before anything loads a Triton module: @triton.jit reads it when a kernel is defined.
# Without a GPU, Triton kernels run in its interpreter on CPU tensors.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
# One cache for the whole run (shared by xdist workers: concurrent builds are part of the test).
os.environ.setdefault("FLASHKIT_CACHE_DIR", str(REPO / ".pytest_cache" / "flashkit-jit"))


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A fresh, empty JIT cache for this test only (and no in-process hits from others)."""
    from flashkit.jit import cache

    monkeypatch.setenv("FLASHKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FLASHKIT_DISABLE_JIT", raising=False)
    saved = dict(cache._loaded)
    cache._loaded.clear()
    yield tmp_path / "cache"
    cache._loaded.clear()
    cache._loaded.update(saved)
