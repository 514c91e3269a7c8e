"""AUG-Bench's shared core: hyperparameter declarations, the data types (TaskSpec, Batch, BatchLoader), the
data-parallel context and provenance records. Everything else builds on it: ``datasets`` and the methods
(``baselines``, ``aug``) import only ``core``; the engine (``benchmarks``) sits on top."""

__aug_bench__ = True
