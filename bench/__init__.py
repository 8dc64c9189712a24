"""flashkit.bench: the benchmark runner (``python -m bench.run`` in a checkout,
``python -m flashkit.bench.run`` installed), its registry of cases (bench/cases/) and the
results history (bench/results/, source checkouts only). Importing it loads nothing heavy."""
