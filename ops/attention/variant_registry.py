"""The process-wide registry of attention variants: the custom op takes a variant as a string
key (torch.library schemas hold no Python objects), and its implementation looks it up here."""
from __future__ import annotations

from .variants import AttentionVariant

_VARIANTS: dict[str, AttentionVariant] = {}


def variant_key(variant: AttentionVariant | None) -> str:
    if variant is None:
        return ""
    key = f"{variant.name}:{hash(variant)}"
    _VARIANTS[key] = variant
    return key


def lookup_variant(key: str) -> AttentionVariant | None:
    """The variant ``variant_key`` registered under ``key`` (None for "")."""
    return _VARIANTS.get(key) if key else None
