"""AUG-Bench runner, CLI, configs, sweeps and tables."""

__aug_bench__ = True
