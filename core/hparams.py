"""Hyperparameters declared once, next to the code that uses them, with defaults per dataset where papers differ.

Every knob lives in a namespace: ``train.*`` (runner), ``model.*`` (shared networks), ``data.*`` (the dataset) or
the method's own name (``ogm_ge.alpha``). Resolution order: declared default -> per-dataset default -> the method's
variant preset (e.g. ``official_compat``) -> user overrides (config file, then ``--set``). Unknown keys and
ill-typed values are errors that name the key and the valid alternatives; nothing is silently ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

import yaml


class HParamError(ValueError):
    """An unknown hyperparameter key, or a value of the wrong type or outside its choices."""


# ``HParam.absent_value`` of a knob that every run records.
ALWAYS_RECORDED = object()


@dataclass(frozen=True)
class HParam:
    """One knob.

    Attributes:
        name: key within its namespace (no dots).
        default: value used unless a dataset default, variant or override replaces it. Its type is the knob's type
            (``None`` means "any type"; an int default accepts floats only when written as whole numbers).
        doc: where the value comes from (paper, table, official code file) and what it does.
        per_dataset: dataset name -> default for that dataset.
        choices: allowed values, if the knob is categorical.
        low, high: inclusive bounds of a numeric knob (a probability, an epoch count), or of each element of a list
            knob (lr milestones), checked when a value is set.
        open_low: ``low`` itself is excluded (a learning rate must be > 0).
        check: a constraint that bounds cannot state (a pair's length and order), called as ``check(key, value)``
            on the typed value when one is set; raises ``HParamError`` naming ``key``.
        element: the type of a list knob's elements (int, float, str, bool); needed only when the default is empty,
            otherwise its elements' type is used.
        absent_value: for a knob added after runs were recorded without it, the value those runs ran with (the
            behaviour before the knob). While a run's value equals it, the knob stays out of the run's record
            (``HParams.as_dict``: config.yaml, the run hash, resume and table comparisons), so adding the knob
            neither renames the earlier runs' folders nor sets them apart from new ones.
    """

    name: str
    default: Any
    doc: str
    per_dataset: Mapping[str, Any] = field(default_factory=dict)
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    element: type | None = None
    open_low: bool = False
    check: Callable[[str, Any], None] | None = None
    absent_value: Any = ALWAYS_RECORDED

    def __post_init__(self) -> None:
        # The declared values pass the checks a value set by hand passes: a per-dataset default outside the bounds, of
        # another type or choice would otherwise train every run on that dataset unchecked (or fail mid-run).
        self.coerce("", self.default, key=f"knob {self.name!r}: its default")
        for dataset, value in self.per_dataset.items():
            self.coerce("", value, key=f"knob {self.name!r}: its default for dataset {dataset!r}")
        # as_dict compares a run's typed value with absent_value by type too (0 is not False): absent_value=1 on a
        # float knob (runs hold 1.0) or () on a list knob would never match, and every earlier run would be renamed;
        # one no value of the knob can hold made every earlier run fail to resume, naming a value no one set.
        if self.absent_value is not ALWAYS_RECORDED:
            object.__setattr__(self, "absent_value",
                               self.coerce("", self.absent_value, key=f"knob {self.name!r}: its absent_value"))

    def default_for(self, dataset: str | None) -> Any:
        return self.per_dataset.get(dataset, self.default) if dataset is not None else self.default

    def coerce(self, namespace: str, value: Any, *, key: str | None = None) -> Any:
        """``value`` typed and checked as ``namespace.name`` (or ``key`` in the errors), or ``HParamError``."""
        key = key or f"{namespace}.{self.name}"
        out = _typed(key, self.default, value, self.element)
        if self.choices is not None and out not in self.choices:
            raise HParamError(f"{key}={out!r} is not one of {list(self.choices)}")
        # Unbounded numbers are still finite: .inf passes any lower bound and trains on (or freezes at) it silently.
        for i, x in enumerate(out) if isinstance(out, list) else [(None, out)]:
            if is_number(x):
                check_range(key if i is None else f"{key}[{i}]", x, self.low, self.high, open_low=self.open_low)
        if self.check is not None:
            self.check(key, out)
        return out


def is_number(value: Any) -> bool:
    """An int or a float, not a bool (which Python counts as an int, and JSON and YAML give as true/false)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_range(key: str, value: float, low: float | None, high: float | None, *, open_low: bool = False) -> None:
    """A bounded knob's value within ``low``..``high`` (``low`` itself excluded with ``open_low``) and finite, or an
    error naming ``key`` and the range. Finite because an infinite lr or decay factor passes a lower bound and then
    trains on NaN without a word."""
    finite = not isinstance(value, float) or math.isfinite(value)
    inside = (low is None or value > low or (value == low and not open_low)) and (high is None or value <= high)
    if not (finite and inside):
        bounds = " and ".join(f"{op} {v}" for op, v in ((">" if open_low else ">=", low), ("<=", high))
                              if v is not None)
        raise HParamError(f"{key} must be {'' if finite else 'a finite number '}{bounds}".rstrip() + f", got {value!r}")


def _typed(key: str, default: Any, value: Any, element: type | None = None) -> Any:
    """``value`` as the type of ``default`` (any type when ``default`` is None), a list's elements as ``element`` or
    else as the default's elements, or an error naming ``key``. YAML null is a value only of a knob whose default is
    None: elsewhere it would pass the bounds unchecked, read as false in a boolean test (``deterministic: null``) and
    fail mid-run where a number is used."""
    kind = type(default)
    if default is None:
        out = value
    elif kind is bool:
        if not isinstance(value, bool):
            raise HParamError(f"{key} expects true/false, got {value!r}")
        out = value
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and not value.is_integer()):
            raise HParamError(f"{key} expects an integer, got {value!r}")
        out = int(value)
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise HParamError(f"{key} expects a number, got {value!r}")
        out = float(value)
    elif kind in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise HParamError(f"{key} expects a list, got {value!r}")
        # Elements take the type of the default's (when they share one): [1, 1] for [1.0, 1.0] is the same
        # setting (one config hash), and a string element where numbers belong is an error here, not in training.
        kinds = {element} if element is not None else {type(x) for x in default}
        like = kinds.pop()() if len(kinds) == 1 and kinds <= {bool, int, float, str} else None
        out = [_typed(f"{key}[{i}]", like, x) for i, x in enumerate(value)]
    elif kind is dict:
        if not isinstance(value, dict):
            raise HParamError(f"{key} expects a mapping, got {value!r}")
        out = dict(value)
    else:
        if not isinstance(value, kind):
            raise HParamError(f"{key} expects {kind.__name__}, got {value!r}")
        out = value
    return out


class HParams(Mapping[str, Any]):
    """Resolved, read-only values of one namespace; readable as ``hp.alpha`` or ``hp["alpha"]``."""

    def __init__(self, namespace: str, values: Mapping[str, Any], absent: Mapping[str, Any] | None = None) -> None:
        self._namespace = namespace
        self._values = dict(values)
        # name -> HParam.absent_value of the knobs that runs recorded before them lack
        self._absent = dict(absent or {})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{self._namespace} has no hyperparameter {name!r}; it has "
                                 f"{sorted(self._values)}") from None

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"HParams({self._namespace!r}, {self._values!r})"

    def as_dict(self) -> dict[str, Any]:
        """The values a run records: all but a knob at its ``HParam.absent_value`` (0 is not False here)."""
        return {name: value for name, value in self._values.items()
                if not (name in self._absent and type(value) is type(self._absent[name])
                        and value == self._absent[name])}


def resolve(namespace: str, declared: Iterable[HParam], dataset: str | None,
            overrides: Mapping[str, Any] | None = None,
            variants: Mapping[str, Mapping[str, Any]] | None = None) -> HParams:
    """Resolve one namespace. ``overrides`` are keyed by bare name (``alpha``), not ``ns.alpha``."""
    table = {p.name: p for p in declared}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(table))
    if unknown:
        raise HParamError(f"unknown hyperparameter(s) {[f'{namespace}.{k}' for k in unknown]}; valid keys for "
                          f"{namespace!r}: {sorted(table)}")
    values = {name: p.default_for(dataset) for name, p in table.items()}
    if variants:
        variant = overrides.get("variant", values.get("variant"))
        preset = variants.get(variant, {}) if variant is not None else {}
        for name, value in preset.items():
            if name not in table:
                raise HParamError(f"variant {variant!r} of {namespace!r} sets undeclared key {name!r}")
            try:
                values[name] = table[name].coerce(namespace, value)
            except HParamError as err:
                raise HParamError(f"variant {variant!r} of {namespace!r}: {err}") from None
    for name, value in overrides.items():
        values[name] = table[name].coerce(namespace, value)
    return HParams(namespace, values, {name: p.absent_value for name, p in table.items()
                                       if p.absent_value is not ALWAYS_RECORDED})


def variant_param(variants: Mapping[str, Mapping[str, Any]], doc: str) -> HParam:
    """The ``variant`` knob of a method whose official code differs from its paper: ``paper`` is the default."""
    return HParam("variant", "paper", doc, choices=("paper", *variants))


def _scientific(value: Any) -> Any:
    """YAML reads "1e-3" as a string; scientific notation on the command line is a float."""
    if isinstance(value, str) and value.strip() and any(c in value.lower() for c in "e."):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def command_line_value(text: str, where: str) -> Any:
    """A command-line value as YAML (``true``, ``0.8``, ``[69, 139]``, a string; empty text is ""). Text that is not
    YAML is an ``HParamError`` starting with ``where``: yaml's own message names only "<unicode string>"."""
    if not text.strip():
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at column {mark.column + 1}" if mark is not None else ""
        raise HParamError(f"{where}: the value is not valid YAML ({getattr(err, 'problem', None) or 'unparsable'}"
                          f"{at})") from None


def parse_assignments(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``["ogm_ge.alpha=0.8", "train.lr=1e-3"]`` -> ``{"ogm_ge": {"alpha": 0.8}, "train": {"lr": 0.001}}``.

    Values are parsed as YAML scalars/lists, so ``true``, ``0.8``, ``[69, 139]`` and strings all work.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        namespace, dot, name = key.strip().partition(".")
        if not sep or not dot or not namespace or not name or "." in name:
            raise HParamError(f"bad --set {item!r}: expected NAMESPACE.KEY=VALUE, e.g. ogm_ge.alpha=0.8")
        value = command_line_value(raw, f"bad --set {item!r}")
        value = [_scientific(v) for v in value] if isinstance(value, list) else _scientific(value)
        section = out.setdefault(namespace, {})
        if name in section and section[name] != value:
            # One of the two would be dropped without a word (the last one was taken).
            raise HParamError(f"--set {namespace}.{name} given twice, {section[name]!r} and {value!r}; give it once")
        section[name] = value
    return out
