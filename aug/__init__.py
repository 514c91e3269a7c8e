"""AUG (NeurIPS 2025): sustained boosting with adaptive classifier assignment."""

__aug_bench__ = True
