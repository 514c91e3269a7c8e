"""The experiment config schema: parse and check a sweep YAML's structure (``expand`` resolves its knobs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from benchmarks.config import RUNNER_NAMESPACES
from benchmarks.evaluate import DEFAULT_MISSING_RATES, check_rates
from benchmarks.records import DuplicateKeyError, read_config_yaml

PROTOCOLS = ("paper", "clean", "last")
SWEEP_KEYS = ("name", "title", "paper", "table", "protocol", "seeds", "command", "source", "notes", "defaults",
              "datasets", "methods", "grid", "evaluate")
METHOD_KEYS = ("method", "title", "only_datasets", "per_dataset", "grid", "notes")
DATASET_KEYS = ("notes",)
EVALUATE_KEYS = ("missing", "split", "seed")
EVALUATE_SPLITS = ("train", "val", "test")


class SweepConfigError(ValueError):
    """An experiment config that cannot be expanded; the message names the file and the bad key."""


@dataclass(frozen=True)
class EvaluateSpec:
    """The follow-up after training (AUG Table 5): ``benchmarks.evaluate.evaluate_missing`` with these arguments."""

    missing: tuple[float, ...] = DEFAULT_MISSING_RATES
    split: str = "test"
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"missing": list(self.missing), "split": self.split, "seed": self.seed}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], where: str = "evaluate") -> "EvaluateSpec":
        bad = sorted(set(doc) - set(EVALUATE_KEYS))
        if bad:
            raise SweepConfigError(f"{where}: unknown key(s) {bad}; valid: {list(EVALUATE_KEYS)}")
        missing = doc.get("missing", list(DEFAULT_MISSING_RATES))
        try:
            if not isinstance(missing, list):
                raise TypeError(f"expected a list of fractions such as [0, 0.2, 0.5], got {missing!r}")
            missing = tuple(float(r) for r in missing)
            check_rates(missing)
        except (TypeError, ValueError) as err:
            raise SweepConfigError(f"{where}.missing: {err}") from None
        seed = doc.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise SweepConfigError(f"{where}.seed must be an integer >= 0 (as train.seed), got {seed!r}")
        # Checked here, not by the evaluation: that runs after training, so a typo would fail every run at the end.
        split = doc.get("split", "test")
        if split not in EVALUATE_SPLITS:
            raise SweepConfigError(f"{where}.split must be one of {list(EVALUATE_SPLITS)}, got {split!r}")
        return cls(missing, split, seed)


@dataclass
class SweepConfig:
    """A parsed experiment config; ``path`` is where it came from (for messages)."""

    name: str
    doc: dict[str, Any]
    path: Path | None = None

    @property
    def protocol(self) -> str:
        return self.doc.get("protocol", "paper")

    @property
    def seeds(self) -> list[int]:
        return list(self.doc.get("seeds", [0]))

    @property
    def methods(self) -> dict[str, dict[str, Any]]:
        return self.doc["methods"]

    @property
    def datasets(self) -> dict[str, dict[str, Any]]:
        return self.doc["datasets"]

    @property
    def evaluate(self) -> EvaluateSpec | None:
        """The follow-up evaluation of every run, or None when the ``evaluate`` section is absent or empty."""
        doc = self.doc.get("evaluate")
        return EvaluateSpec.from_dict(doc, f"{self.where()}: evaluate") if doc else None

    def where(self) -> str:
        return str(self.path) if self.path else f"sweep config {self.name!r}"


def _require_mapping(value: Any, where: str, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SweepConfigError(f"{where}: {key} must be a mapping, got {value!r}")
    return dict(value)


def _refuse_seed(sections: Mapping[str, Any], where: str, place: str) -> None:
    """The top-level ``seeds`` list sets every run's seed; a ``train.seed`` anywhere else would be overwritten."""
    if "seed" in (sections.get("train") or {}):
        raise SweepConfigError(f"{where}: {place}.train.seed: set seeds with the top-level 'seeds' list (each run "
                               f"gets one of them; a seed here would be ignored)")


def repeated(values: Sequence[Any]) -> list[Any]:
    """The values that occur more than once in ``values`` (by ``==``: 1 and 1.0 are one value), in order. Each would
    plan the same run twice, which the planner could only report as two rows resolving to one run."""
    twice: list[Any] = []
    for i, value in enumerate(values):
        if value in values[:i] and value not in twice:
            twice.append(value)
    return twice


def check_grid(grid: Any, where: str, allowed: Sequence[str]) -> dict[str, list]:
    grid = _require_mapping(grid, where, "grid")
    if "train.seed" in grid:
        raise SweepConfigError(f"{where}: grid key 'train.seed': set seeds with the top-level 'seeds' list")
    for key, values in grid.items():
        namespace, dot, name = str(key).partition(".")
        if not dot or not name or namespace not in allowed:
            raise SweepConfigError(f"{where}: grid key {key!r} must be NAMESPACE.KEY with NAMESPACE in {list(allowed)}")
        if not isinstance(values, list) or not values:
            raise SweepConfigError(f"{where}: grid[{key!r}] must be a non-empty list, got {values!r}")
        if twice := repeated(values):
            raise SweepConfigError(f"{where}: grid[{key!r}] lists {twice} more than once; list each value "
                                   "once")
    return grid


def _check_method(label: str, entry: Any, datasets: Mapping[str, Any], where: str) -> dict[str, Any]:
    entry = _require_mapping(entry, where, f"methods.{label}")
    method = entry.get("method", label)
    allowed = set(METHOD_KEYS) | set(RUNNER_NAMESPACES) | {method}
    bad = sorted(set(entry) - allowed)
    if bad:
        raise SweepConfigError(f"{where}: methods.{label}: unknown key(s) {bad}; valid: {sorted(allowed)} "
                               f"(the method's own namespace is {method!r})")
    only = entry.get("only_datasets")
    # An empty list would plan no run of the row at all, without a word; leaving the key out means every dataset.
    if only is not None and (not isinstance(only, list) or not only or set(only) - set(datasets)):
        raise SweepConfigError(f"{where}: methods.{label}.only_datasets must be a non-empty list of datasets of this "
                               f"config ({sorted(datasets)}), got {only!r}")
    per_dataset = _require_mapping(entry.get("per_dataset"), where, f"methods.{label}.per_dataset")
    for dataset, sections in per_dataset.items():
        if dataset not in datasets:
            raise SweepConfigError(f"{where}: methods.{label}.per_dataset.{dataset}: not a dataset of this "
                                   f"config ({sorted(datasets)})")
        bad = sorted(set(_require_mapping(sections, where, f"methods.{label}.per_dataset.{dataset}"))
                     - set(RUNNER_NAMESPACES) - {method})
        if bad:
            raise SweepConfigError(f"{where}: methods.{label}.per_dataset.{dataset}: unknown namespace(s) {bad}")
        _refuse_seed(sections, where, f"methods.{label}.per_dataset.{dataset}")
    _refuse_seed(entry, where, f"methods.{label}")
    check_grid(entry.get("grid"), f"{where}: methods.{label}", (*RUNNER_NAMESPACES, method))
    return entry


def parse_config(doc: Mapping[str, Any], path: Path | None = None) -> SweepConfig:
    """Check the structure of an experiment config (not yet the hyperparameter keys; ``expand`` does that)."""
    where = str(path) if path else "sweep config"
    if not isinstance(doc, Mapping):
        raise SweepConfigError(f"{where}: expected a mapping at the top level")
    doc = dict(doc)
    unknown = sorted(set(doc) - set(SWEEP_KEYS))
    if unknown:
        raise SweepConfigError(f"{where}: unknown top-level key(s) {unknown}; valid: {list(SWEEP_KEYS)}")
    for key in ("name", "datasets", "methods"):
        if not doc.get(key):
            raise SweepConfigError(f"{where}: missing required key {key!r}")
    if doc.get("protocol", "paper") not in PROTOCOLS:
        raise SweepConfigError(f"{where}: protocol {doc['protocol']!r} is not one of {list(PROTOCOLS)}")
    seeds = doc.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                             for s in seeds):
        raise SweepConfigError(f"{where}: seeds must be a non-empty list of integers, got {seeds!r}")
    if twice := repeated(seeds):
        raise SweepConfigError(f"{where}: seeds {seeds} names seed(s) {twice} more than once; list each "
                               "seed once")
    defaults = _require_mapping(doc.get("defaults"), where, "defaults")
    for ns in defaults:
        if ns not in RUNNER_NAMESPACES:
            raise SweepConfigError(f"{where}: defaults.{ns}: only runner namespaces {list(RUNNER_NAMESPACES)} "
                                   "apply to every run; put method knobs under methods.<name>")
    _refuse_seed(defaults, where, "defaults")
    doc["datasets"] = _require_mapping(doc["datasets"], where, "datasets")
    for name, entry in doc["datasets"].items():
        entry = _require_mapping(entry, where, f"datasets.{name}")
        bad = sorted(set(entry) - set(RUNNER_NAMESPACES) - set(DATASET_KEYS))
        if bad:
            raise SweepConfigError(f"{where}: datasets.{name}: unknown key(s) {bad}; valid: "
                                   f"{list(RUNNER_NAMESPACES) + list(DATASET_KEYS)}")
        _refuse_seed(entry, where, f"datasets.{name}")
        doc["datasets"][name] = entry
    doc["methods"] = _require_mapping(doc["methods"], where, "methods")
    for label, entry in doc["methods"].items():
        doc["methods"][label] = _check_method(label, entry, doc["datasets"], where)
    check_grid(doc.get("grid"), where, RUNNER_NAMESPACES)
    if "evaluate" in doc:
        EvaluateSpec.from_dict(_require_mapping(doc["evaluate"], where, "evaluate"), f"{where}: evaluate")
    return SweepConfig(str(doc["name"]), doc, path)


def load_config(path: Path) -> SweepConfig:
    path = Path(path)
    if not path.is_file():
        # a folder is most often a sweep's output folder given where its config belongs
        raise FileNotFoundError(f"sweep config {path} is a folder, not a config file" if path.is_dir() else
                                f"sweep config {path} does not exist")
    try:
        doc = read_config_yaml(path)
    except DuplicateKeyError as err:
        raise SweepConfigError(str(err)) from None
    return parse_config(doc, path)
