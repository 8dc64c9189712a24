"""HF transformers on flashkit's ops, through transformers' own hooks (nothing is patched).

>>> from flashkit.integrations import transformers as fk_hf
>>> fk_hf.register()
>>> model = AutoModelForCausalLM.from_config(cfg, attn_implementation="fkit",
...                                          experts_implementation="fkit")
>>> fk_hf.kernelize(model)   # Mamba-2 / hybrid layers: the kernel-hub functions

``register()`` adds "fkit" (flashkit; see NAME) to AttentionInterface, AttentionMaskInterface and
ExpertsInterface, and flashkit's SSM functions to the ``kernels`` package's global mapping
(when ``kernels`` is installed). Importing flashkit registers nothing. See docs/integrations.md.
"""
from __future__ import annotations

from . import _state

__all__ = ["register", "is_registered", "kernelize", "NAME"]

# transformers (5.22.2) treats any attention implementation whose name contains "flash" as a
# FlashAttention kernel and loads flash_attn's functions from the hub for it, registered or not
# (utils.generic.is_flash_attention_requested, called by
# PreTrainedModel._check_and_adjust_attn_implementation), so the name flashkit registers under
# has none. docs/integrations.md cites the lines; a contract test watches for a change.
NAME = "fkit"


def _hooks():
    """(interface class, our function) for each transformers hook."""
    from transformers import AttentionInterface
    from transformers.integrations.moe import ExpertsInterface
    from transformers.masking_utils import AttentionMaskInterface

    from .attention import attention_forward, padding_mask
    from .experts import experts_forward

    return ((AttentionInterface, attention_forward), (AttentionMaskInterface, padding_mask),
            (ExpertsInterface, experts_forward))


def _check_free(interface, ours) -> None:
    held = interface._global_mapping.get(NAME)
    if held is not None and held is not ours:
        where = f"{getattr(held, '__module__', '?')}.{getattr(held, '__qualname__', held)}"
        raise RuntimeError(f"{interface.__name__} already holds a different {NAME!r} "
                           f"implementation ({where}); flashkit will not replace it")


def register(backend: str | None = None) -> None:
    """Register flashkit (as NAME, "fkit") with transformers (idempotent).

    Parameters
    ----------
    backend : the ops' backend: "auto" (the first default: Triton on CUDA, the torch reference
        on CPU) | "torch" | "triton" | "cuda" (the NVRTC decode kernel where one exists, Triton
        elsewhere); None keeps the current one

    Raises
    ------
    RuntimeError
        if another "fkit" implementation is already registered with one of the hooks.
    """
    if backend is not None:
        _state.set_backend(backend)
    hooks = _hooks()
    for interface, fn in hooks:
        _check_free(interface, fn)
    for interface, fn in hooks:
        interface.register(NAME, fn)
    try:
        import kernels
    except ImportError:
        return
    from .mamba import kernel_mapping

    kernels.register_kernel_mapping(kernel_mapping())


def is_registered() -> bool:
    """Whether every transformers hook holds flashkit's implementation."""
    try:
        hooks = _hooks()
    except ImportError:
        return False
    return all(interface._global_mapping.get(NAME) is fn for interface, fn in hooks)


def kernelize(model, *, mode=None):
    """Swap the model's kernel-hub functions (Mamba-2 scans, causal conv1d) for flashkit's.

    Runs ``kernels.kernelize`` with flashkit's mapping on top of the registered one, for the
    model's device. ``mode``: a ``kernels.Mode`` (default: INFERENCE; in TRAINING mode the
    originals stay, flashkit's SSM ops having no backward). Returns the model.
    """
    import kernels
    from transformers.utils import import_utils

    from .mamba import kernel_mapping

    if not import_utils.is_kernels_available():
        # transformers then makes its hub decorators no-ops: nothing could be swapped.
        raise RuntimeError(
            f"transformers disables its kernel hub for kernels {kernels.__version__} (it needs "
            f">={import_utils.KERNELS_MIN_VERSION},<{import_utils.KERNELS_MAX_VERSION}); "
            f"install flashkit[transformers] for a matching pair")

    mode = kernels.Mode.INFERENCE if mode is None else mode
    device = next(model.parameters()).device.type
    with kernels.use_kernel_mapping(kernel_mapping(), inherit_mapping=True):
        kernels.kernelize(model, mode=mode, device=device)
    return model
