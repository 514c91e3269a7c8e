"""The method registry: a decorator plus one explicit import line per method module.

Adding a method = one new file with one ``@register``-ed class + one line in ``METHOD_MODULES``. Registration is
explicit (no folder scan, no import side effects elsewhere), and ``tests/test_registry.py`` checks that every method
file is listed and registers exactly one method. ``register`` refuses a class that does not declare its own
``DATA_PARALLEL`` level.
"""

from __future__ import annotations

from typing import TypeVar

from baselines.base import DATA_PARALLEL_LEVELS, Method
from core.listed_modules import import_listed

METHOD_MODULES = (
    "baselines.joint",
    "baselines.sum",
    "baselines.weight",
    "baselines.film",
    "baselines.gated",
    "baselines.unimodal",
    "baselines.ogm",
    "baselines.ogm_ge",
    "baselines.opm",
    "baselines.agm",
    "baselines.pmr",
    "aug.method",
    "baselines.uniform",
    "baselines.mmpareto",
    "baselines.inforeg",
    "baselines.mslr",
    "baselines.mmcosine",
    "baselines.cml",
    "baselines.lfm",
    "baselines.smv",
    "baselines.dimml",
    "baselines.relearning",
    "baselines.umt",
    "baselines.mbsd",
    "baselines.amco",
    "baselines.mla",
    "baselines.reconboost",
    "baselines.gblending",
    "baselines.greedy",
    "baselines.mses",
    "baselines.arl",
    "baselines.iprm",
    "baselines.midas",
    "baselines.remix",
    "baselines.bss",
    "baselines.dgl",
    "baselines.mnl",
)

_METHODS: dict[str, type[Method]] = {}
_loaded = False

M = TypeVar("M", bound=type[Method])


class UnknownMethodError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register(cls: M) -> M:
    """Class decorator: add a ``Method`` subclass under ``cls.name``; a duplicate name is an error."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} registered twice: {_METHODS[cls.name].__module__} and "
                         f"{cls.__module__}")
    # Declared by the class itself: a subclass of another method may synchronise differently from its parent.
    level = vars(cls).get("DATA_PARALLEL")
    if level not in DATA_PARALLEL_LEVELS:
        raise ValueError(f"method {cls.name!r} ({cls.__module__}.{cls.__qualname__}) must declare DATA_PARALLEL as "
                         f"one of {DATA_PARALLEL_LEVELS} with a comment saying why, got {level!r}")
    _METHODS[cls.name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for module in METHOD_MODULES:
            import_listed(module, "METHOD_MODULES in baselines/registry.py")
        _loaded = True


def list_methods() -> dict[str, type[Method]]:
    _load_all()
    return dict(sorted(_METHODS.items()))


def get_method(name: str) -> type[Method]:
    methods = list_methods()
    if name not in methods:
        raise UnknownMethodError(f"unknown method {name!r}; valid methods: {', '.join(methods)}")
    return methods[name]
