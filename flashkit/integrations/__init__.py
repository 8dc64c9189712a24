"""flashkit's ops behind other frameworks' own extension hooks (nothing is patched).

- ``flashkit.integrations.transformers``: HF transformers' attention, mask, experts and kernel
  hub hooks (docs/integrations.md).
"""
