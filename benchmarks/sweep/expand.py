"""Expansion: an experiment config -> one ``Job`` per (dataset, method row, grid point, seed), each a resolved
``RunConfig`` and the run folder that is its identity; and what a run folder says about a job's progress."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from baselines.networks import MODEL_HPARAMS
from baselines.registry import get_method, list_methods
from benchmarks.config import RUNNER_NAMESPACES, TRAIN_HPARAMS, RunConfig, build_config, merge_overrides, method_hparams
from benchmarks.records import DamagedFileError, write_json, write_yaml
from benchmarks.run_folder import config_sections, missing_evaluation_current, read_job_file
from benchmarks.runner import CHECKPOINT
from benchmarks.sweep.spec import EvaluateSpec, SweepConfig, SweepConfigError, repeated
from core.hparams import HParamError, resolve
from datasets.registry import get_dataset, list_datasets


class MissingEntriesError(SweepConfigError):
    """The config names methods or datasets that are not registered (yet)."""


@dataclass
class Job:
    """One run of a sweep: a resolved config, its row label and its folder.

    ``overrides`` are the settings of its row (the method entry, its per-dataset entry, the grid point, ``--set``);
    the full set, over ``defaults`` and the dataset entry, is ``cfg``. For listings.
    """

    label: str
    title: str
    cfg: RunConfig
    run_dir: Path
    sweep: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    evaluate: EvaluateSpec | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.run_dir.name

    def state(self) -> str:
        """``done`` (finished, follow-ups too), ``evaluate`` (trained, follow-up missing), ``resume`` or ``new``."""
        if (self.run_dir / "DONE").exists() and (self.run_dir / "summary.json").exists():
            if self.evaluate and not missing_evaluation_current(
                    self.run_dir, split=self.evaluate.split, seed=self.evaluate.seed, rates=self.evaluate.missing,
                    batch_size=self.cfg.train.eval_batch_size):
                return "evaluate"
            return "done"
        return "resume" if (self.run_dir / CHECKPOINT).exists() else "new"

    def progress(self) -> str:
        """``done``, ``new``, or ``partial (...)`` saying what is left, for listings."""
        state = self.state()
        if state == "evaluate":
            return "partial (evaluation left)"
        if state == "resume":
            metrics = self.run_dir / "metrics.jsonl"
            epochs = len(metrics.read_text().splitlines()) if metrics.exists() else 0
            return f"partial ({epochs}/{self.cfg.train.epochs} epochs)"
        return state

    def sections(self) -> dict[str, Any]:
        """The fully resolved config in ``train --config`` form (method, dataset and namespace sections)."""
        return config_sections(self.cfg.as_dict())

    def write_files(self) -> None:
        """``job.yaml`` (the config) and ``job.json`` (row label, table keys, the follow-up evaluation), all a worker
        reads; written by the sweep parent before launching."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(self.run_dir / "job.yaml", self.sections())
        self.relabel()

    def relabel(self) -> str | None:
        """Write the run's ``job.json``: a row renamed in this sweep's config moves the run's finished seeds with it
        (the config, and so the run's identity, is untouched). A run that another sweep filed (same settings, same
        ``--out``) keeps its row there, and takes only this sweep's follow-up evaluation; returns that sweep's
        name, else None."""
        try:
            current = read_job_file(self.run_dir)
        except DamagedFileError:
            current = {}  # rewritten whole, as a run without one
        owner = current.get("sweep")
        doc = self.job_record()
        if owner not in (None, self.sweep):
            doc = {**doc, **{k: current[k] for k in ("label", "title", "sweep") if k in current}}
        write_json(self.run_dir / "job.json", doc)
        return owner if owner not in (None, self.sweep) else None

    def job_record(self) -> dict[str, Any]:
        """``job.json``'s content for this sweep: the row a table files the run under, and its follow-up."""
        doc = {"label": self.label, "title": self.title, "sweep": self.sweep, "method": self.cfg.method,
               "dataset": self.cfg.dataset, "seed": self.cfg.train.seed, **self.info}
        if self.evaluate:
            doc["evaluate"] = self.evaluate.as_dict()
        return doc


def grid_points(*grids: Mapping[str, list], where: str = "grid") -> list[dict[str, dict[str, Any]]]:
    """Every combination of the grids' values as override sections (``{"train": {"lr": 0.1}, ...}``); ``where``
    names the grids in the error for a key two of them give."""
    keys = [k for grid in grids for k in grid]
    if len(set(keys)) != len(keys):
        raise SweepConfigError(f"{where}: grid key(s) given twice: {sorted({k for k in keys if keys.count(k) > 1})}")
    values = [v for grid in grids for v in grid.values()]
    points = []
    for combo in itertools.product(*values):
        point: dict[str, dict[str, Any]] = {}
        for key, value in zip(keys, combo):
            ns, _, name = key.partition(".")
            point.setdefault(ns, {})[name] = value
        points.append(point)
    return points


def _point_suffix(point: Mapping[str, Mapping[str, Any]]) -> str:
    return ",".join(f"{ns}.{k}={v}" for ns, values in point.items() for k, v in values.items())


def _namespaces(entry: Mapping[str, Any], method: str | None = None) -> dict[str, dict[str, Any]]:
    """The hyperparameter sections of a config entry (runner namespaces, plus the method's own)."""
    return {ns: dict(v) for ns, v in entry.items() if ns in RUNNER_NAMESPACES or ns == method}


def _check_assignments(assignments: Mapping[str, Mapping[str, Any]], methods: set[str]) -> None:
    unknown = sorted(set(assignments) - set(RUNNER_NAMESPACES) - methods)
    if unknown:
        raise SweepConfigError(f"--set namespace(s) {unknown} match no method of this sweep; valid: "
                               f"{sorted(set(RUNNER_NAMESPACES) | methods)}")
    if "seed" in assignments.get("train", {}):
        raise SweepConfigError("use --seeds to choose seeds, not --set train.seed")


def _refuse_set_on_grid(set_keys: Sequence[str], config: SweepConfig, labels: Sequence[str]) -> None:
    """A ``--set`` value wins over a grid point's, while the row label still shows the grid's value: the table would
    name a setting the runs did not train with."""
    grids = {"grid": config.doc.get("grid") or {}}
    grids.update({f"methods.{label}.grid": config.methods[label].get("grid") or {} for label in labels})
    for key in set_keys:
        gridded = [where for where, grid in grids.items() if key in grid]
        if gridded:
            verb = "sets" if len(gridded) == 1 else "set"
            raise SweepConfigError(f"--set {key}: {' and '.join(gridded)} of {config.where()} {verb} {key} per row; "
                                   "change the grid's values instead")


def missing_entries(config: SweepConfig) -> tuple[list[str], list[str]]:
    """(methods, datasets) named by the config that are not registered."""
    registered_methods, registered_datasets = set(list_methods()), set(list_datasets())
    methods = sorted({e.get("method", label) for label, e in config.methods.items()} - registered_methods)
    datasets = sorted(set(config.datasets) - registered_datasets)
    return methods, datasets


@dataclass
class Plan:
    """What ``plan`` made of a config: the jobs it could resolve and what kept the other cells out."""

    jobs: list[Job]
    unregistered_methods: list[str]
    unregistered_datasets: list[str]
    invalid: list[str]              # one line per (row, error), naming the datasets it applies to

    def unregistered_message(self, config: SweepConfig) -> str:
        return (f"{config.where()} names unregistered method(s) {self.unregistered_methods} and dataset(s) "
                f"{self.unregistered_datasets}; registered methods: {', '.join(list_methods())}; datasets: "
                f"{', '.join(list_datasets())}. Pass --skip-missing to run the rest.")


def plan(config: SweepConfig, out: Path, *, seeds: Sequence[int] | None = None,
         methods: Sequence[str] | None = None, datasets: Sequence[str] | None = None,
         assignments: Mapping[str, Mapping[str, Any]] | None = None) -> Plan:
    """Resolve every cell of ``config`` (optionally restricted to some seeds / method labels / datasets).

    Cells of unregistered methods or datasets are left out and named; a cell whose settings do not resolve is left
    out and its error recorded once per (row, message) with the datasets it hits, so that a bad key shared by many
    cells is one line. Raises ``SweepConfigError`` for a bad filter, a bad ``--set`` or two rows that are one run.
    """
    out = Path(out)
    assignments = {ns: dict(v) for ns, v in (assignments or {}).items()}
    labels, dataset_names = list(config.methods), list(config.datasets)
    for given, valid, what in ((methods, labels, "method"), (datasets, dataset_names, "dataset")):
        bad = sorted(set(given or ()) - set(valid))
        if bad:
            raise SweepConfigError(f"--{what}s {bad} not in {config.where()}; it has {valid}")
    labels = [label for label in labels if not methods or label in set(methods)]
    dataset_names = [d for d in dataset_names if not datasets or d in set(datasets)]
    method_of = {label: config.methods[label].get("method", label) for label in labels}
    if twice := repeated(seeds or []):
        raise SweepConfigError(f"--seeds {list(seeds)} names seed(s) {twice} more than once; give each "
                               "seed once")
    _check_assignments(assignments, set(method_of.values()))
    set_keys = [f"{ns}.{key}" for ns, values in assignments.items() for key in values]
    _refuse_set_on_grid(set_keys, config, labels)
    missing_methods, missing_datasets = missing_entries(config)
    result = Plan([], [m for m in missing_methods if m in method_of.values()],
                  [d for d in missing_datasets if d in dataset_names], [])

    defaults = config.doc.get("defaults") or {}
    top_grid = config.doc.get("grid") or {}
    info = {k: config.doc[k] for k in ("paper", "table") if k in config.doc}
    info["protocol"] = config.protocol
    evaluate = config.evaluate
    errors: dict[tuple[str, str], list[str]] = {}
    seen: dict[str, str] = {}
    for dataset in dataset_names:
        if dataset in result.unregistered_datasets:
            continue
        for label in labels:
            entry, method = config.methods[label], method_of[label]
            only = entry.get("only_datasets")
            if method in result.unregistered_methods or (only is not None and dataset not in only):
                continue
            title = entry.get("title") or get_method(method).title or label
            shared = sum(e.get("method", other) == method for other, e in config.methods.items()) > 1
            if not entry.get("title") and label != method and shared:
                title = f"{title} ({label})"  # two rows of one method must not share a title in tables
            per_dataset = (entry.get("per_dataset") or {}).get(dataset, {})
            for point in grid_points(top_grid, entry.get("grid") or {},
                                     where=f"{config.where()}: the top-level grid and methods.{label}.grid"):
                suffix = _point_suffix(point)
                row = f"{label} [{suffix}]" if suffix else label
                row_title = f"{title} [{suffix}]" if suffix else title
                row_settings = merge_overrides(_namespaces(entry, method), per_dataset, point,
                                               _namespaces(assignments, method))
                for seed in (list(seeds) if seeds else config.seeds):
                    layers = merge_overrides(defaults, _namespaces(config.datasets[dataset]), row_settings,
                                             {"train": {"seed": seed}})
                    try:
                        cfg = build_config(method, dataset, layers)
                    except HParamError as err:
                        # a value given on the command line is the culprit wherever it lands
                        where = next((f"--set {key}" for key in set_keys if key in str(err)), f"methods.{label}")
                        errors.setdefault((where, str(err)), [])
                        if dataset not in errors[(where, str(err))]:
                            errors[(where, str(err))].append(dataset)
                        continue
                    if cfg.run_name() in seen:
                        raise SweepConfigError(f"{config.where()}: rows {seen[cfg.run_name()]!r} and {row!r} resolve "
                                               f"to the same run {cfg.run_name()} on {dataset}; give them different "
                                               "settings or drop one (only_datasets)")
                    seen[cfg.run_name()] = row
                    result.jobs.append(Job(row, row_title, cfg, out / cfg.run_name(), config.name, dict(info),
                                           evaluate, row_settings))
    result.invalid = [f"{config.where()}: {where} on {', '.join(names)}: {message}"
                      for (where, message), names in errors.items()]
    return result


def expand(config: SweepConfig, out: Path, *, seeds: Sequence[int] | None = None,
           methods: Sequence[str] | None = None, datasets: Sequence[str] | None = None,
           assignments: Mapping[str, Mapping[str, Any]] | None = None, skip_missing: bool = False,
           log: Callable[[str], None] = print) -> list[Job]:
    """Every run of ``config`` (optionally restricted to some seeds / method labels / datasets) as a ``Job``.

    Raises:
        MissingEntriesError: unregistered methods or datasets, unless ``skip_missing`` (then they are left out).
        HParamError: settings that do not resolve, every distinct error in one message.
        SweepConfigError: a bad filter or ``--set``, or two rows resolving to the same run.
    """
    result = plan(config, out, seeds=seeds, methods=methods, datasets=datasets, assignments=assignments)
    if result.unregistered_methods or result.unregistered_datasets:
        if not skip_missing:
            raise MissingEntriesError(result.unregistered_message(config))
        log(f"skipping unregistered method(s) {result.unregistered_methods} and dataset(s) "
            f"{result.unregistered_datasets}")
    if result.invalid:
        raise HParamError("\n".join(result.invalid))
    return result.jobs


def check_config(config: SweepConfig) -> list[str]:
    """Resolve every section that can be checked now; returns the unregistered names (problems raise).

    Runner sections always resolve against ``TRAIN_HPARAMS``/``MODEL_HPARAMS``; a method's section resolves when the
    method is registered, ``data`` sections when the dataset is.
    """
    missing_methods, missing_datasets = missing_entries(config)
    defaults = config.doc.get("defaults") or {}
    for dataset, dentry in config.datasets.items():
        for label, entry in config.methods.items():
            method = entry.get("method", label)
            merged = merge_overrides(defaults, _namespaces(dentry), _namespaces(entry, method),
                                     (entry.get("per_dataset") or {}).get(dataset, {}))
            where = f"{config.where()}: methods.{label} on {dataset}"
            try:
                resolve("train", TRAIN_HPARAMS, dataset, merged.get("train"))
                resolve("model", MODEL_HPARAMS, dataset, merged.get("model"))
                if dataset not in missing_datasets:
                    resolve("data", get_dataset(dataset).HPARAMS, dataset, merged.get("data"))
                if method not in missing_methods:
                    cls = get_method(method)
                    resolve(method, method_hparams(cls), dataset, merged.get(method), variants=cls.VARIANTS)
            except HParamError as err:
                raise HParamError(f"{where}: {err}") from None
    return [f"method {m}" for m in missing_methods] + [f"dataset {d}" for d in missing_datasets]


def write_sweep_record(out: Path, config: SweepConfig, jobs: Sequence[Job],
                       results: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """``OUT/sweep.json``: the sweep's runs and their states (parent process only, atomic)."""
    results = results or {}
    write_json(Path(out) / "sweep.json", {
        "name": config.name, "config": str(config.path) if config.path else None, "protocol": config.protocol,
        "runs": [{"run": j.name, "label": j.label, "method": j.cfg.method, "dataset": j.cfg.dataset,
                  "seed": j.cfg.train.seed, "state": j.state(), **results.get(j.name, {})} for j in jobs]})


