"""The modules a registry names in a tuple (``METHOD_MODULES``, ``DATASET_MODULES``): a name without its file is a
user error that says which tuple and which file, not an import traceback."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

from core.errors import InputError


class ListedModuleError(InputError, ImportError):
    """A registry lists a module that does not exist."""


def _missing(module: str, listed_in: str) -> ListedModuleError:
    return ListedModuleError(f"{listed_in} lists {module!r}, but there is no file {module.replace('.', '/')}.py: "
                             "create it or correct the name")


def import_listed(module: str, listed_in: str) -> ModuleType:
    """Import ``module``; a missing dependency inside it still raises its own ModuleNotFoundError."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        raise _missing(module, listed_in) from None


def listed_source(module: str, listed_in: str) -> Path:
    """The file of ``module``, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise _missing(module, listed_in)
    return Path(spec.origin)
