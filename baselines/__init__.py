"""AUG-Bench baselines: the method contract, the registry, shared networks and one file per published method."""

__aug_bench__ = True
