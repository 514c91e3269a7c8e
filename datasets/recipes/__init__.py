"""The former name of ``datasets.media``, kept only because ``baselines/encoders.py`` imports ``MissingExtraError``
from ``datasets.recipes.audio``; delete this package when that import reads ``datasets.media.audio``."""
