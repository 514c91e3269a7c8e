"""See ``datasets/recipes/__init__.py``."""

from datasets.media.audio import MissingExtraError

__all__ = ["MissingExtraError"]
