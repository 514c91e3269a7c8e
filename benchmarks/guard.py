"""Fail early and clearly when one of our top-level packages is shadowed by another distribution.

``datasets`` is also Hugging Face's import name; ``core``, ``aug``, ``baselines`` and ``benchmarks`` exist on PyPI
too. Each of our packages sets ``__aug_bench__ = True``; a foreign package of the same name does not.
"""

from __future__ import annotations

import importlib

PACKAGES = ("core", "aug", "baselines", "benchmarks", "datasets")


class ShadowedPackageError(ImportError):
    pass


def check_packages() -> None:
    for name in PACKAGES:
        module = importlib.import_module(name)
        if getattr(module, "__aug_bench__", False) is not True:
            raise ShadowedPackageError(
                f"'import {name}' resolved to {getattr(module, '__file__', None)!r}, which is not AUG-Bench's "
                f"{name} package. Another package named {name!r} (for 'datasets', usually Hugging Face datasets) "
                "is shadowing it. Install AUG-Bench into its own virtual environment; see README, 'Installation'.")
