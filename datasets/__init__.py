"""AUG-Bench datasets: split parsers, raw -> cache preparation, cache-backed batch loaders, synthetic and demo data.

This package shares its import name with Hugging Face ``datasets``; ``benchmarks.guard`` checks the sentinel below.
"""

__aug_bench__ = True
