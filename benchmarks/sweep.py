"""Sweeps: expand an experiment config into runs, launch the unfinished ones locally or on Slurm, resume on restart.

An experiment config (``benchmarks/configs/<paper>/<table>.yaml``) pins everything a published table needs::

    name: aug_neurips25/table1          # sweep name; W&B group and default output folder derive from it
    title: "AUG (NeurIPS 2025), Table 1"
    paper: aug_neurips25                # results/paper/<paper>.csv holds the published numbers
    table: table1                       # the rows of that file this table is compared with
    protocol: paper                     # paper | clean | last: which selection `augbench table` reports
    seeds: [0, 1, 2]
    command: augbench sweep benchmarks/configs/aug_neurips25/table1.yaml --out runs/aug_neurips25_table1
    source: "..."                       # optional free text: where the settings come from
    defaults: {train: {...}, model: {...}, data: {...}}       # every run
    datasets:                           # dataset name -> runner sections for that dataset
      cremad: {data: {recipe: aug}, train: {epochs: 200}}
    methods:                            # row label -> what to run
      joint: {}                         # label = registered method name
      ogm_ge:
        ogm_ge: {alpha: 0.8}            # the method's own namespace; also train/model/data
        per_dataset: {vggsound: {ogm_ge: {alpha: 0.1}}}
      unimodal_audio:                   # a second row of the same method
        method: unimodal
        title: "Unimodal (audio)"
        unimodal: {modality: audio}
        only_datasets: [cremad, kinetics_sounds]
        grid: {unimodal.modality: [audio]}   # optional: one run per combination ("ns.key": [values])
    grid: {train.lr: [0.01, 0.001]}     # optional, runner namespaces only: applies to every method
    evaluate: {missing: [0, 0.2, 0.5], split: test}   # optional follow-up after training (AUG Table 5)

Overrides merge in this order: ``defaults`` -> ``datasets[d]`` -> ``methods[m]`` -> ``methods[m].per_dataset[d]``
-> grid point -> ``--set`` -> seed; then ``benchmarks.config.build_config`` resolves and validates every key. A method
or dataset that is not registered is an error that lists them all, unless ``skip_missing`` (``--skip-missing``).

Each run lives in ``OUT/<RunConfig.run_name()>`` (``<dataset>-<method>-seed<S>-<hash of the full config>``), so the
folder *is* the run's identity and its state is read from disk: ``DONE`` -> skipped, ``checkpoint.pt`` -> resumed,
else started. Before launching, the sweep (the parent process only) writes two files into the run folder:
``job.yaml`` (the fully resolved config, passed to ``train --config``) and ``job.json`` (row label, title, sweep name,
paper/table/protocol for ``augbench table``). Workers write only inside their own run folder; sweep-level files
(``OUT/sweep.json``, ``OUT/slurm_jobs.json``) are written atomically by the parent. Runs checkpoint every epoch, so a
sweep killed at any point and started again loses at most the epochs that were in flight.

Launchers:

- ``local``: keeps one run per GPU (``--gpus 0,1``; ``CUDA_VISIBLE_DEVICES`` per child, ``--gpus-per-run K`` runs
  torchrun on K GPUs) or ``--workers N`` CPU processes busy, each a ``python -m benchmarks train ... --resume``
  subprocess logging to ``<run>/train.log``. On Linux children die with the sweep (``PR_SET_PDEATHSIG``), and a lock
  on ``OUT/.sweep.lock`` stops two sweeps from driving the same folder.
- ``slurm``: submits one ``submitit`` job per unfinished run (optional extra ``augbench[slurm]``), as a job array,
  with partition/time/GPU/CPU/memory options. Jobs are checkpointable: on time-out or pre-emption submitit requeues
  them and they resume from the last epoch. Submitted job ids go to ``OUT/slurm_jobs.json``; a restart skips runs
  whose job is still queued or running.
"""

from __future__ import annotations

import ctypes
import fcntl
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from baselines.hparams import HParamError, resolve
from baselines.networks import MODEL_HPARAMS
from baselines.registry import get_method, list_methods
from benchmarks.config import (RUNNER_NAMESPACES, TRAIN_HPARAMS, RunConfig, build_config, merge_overrides,
                               method_hparams)
from benchmarks.records import write_json, write_yaml
from benchmarks.runner import CHECKPOINT
from datasets.registry import get_dataset, list_datasets

PROTOCOLS = ("paper", "clean", "last")
SWEEP_KEYS = ("name", "title", "paper", "table", "protocol", "seeds", "command", "source", "notes", "defaults",
              "datasets", "methods", "grid", "evaluate")
METHOD_KEYS = ("method", "title", "only_datasets", "per_dataset", "grid", "notes")
DATASET_KEYS = ("notes",)
EVALUATE_KEYS = ("missing", "split", "seed")
# Slurm states in which a submitted job may still write its run folder.
ACTIVE_SLURM_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING")


class SweepConfigError(ValueError):
    """An experiment config that cannot be expanded; the message names the file and the bad key."""


class MissingEntriesError(SweepConfigError):
    """The config names methods or datasets that are not registered (yet)."""


class SlurmUnavailableError(RuntimeError):
    """submitit (the ``[slurm]`` extra) is not installed."""


class SweepBusyError(RuntimeError):
    """Another sweep process holds the output folder's lock."""


# --- the config -------------------------------------------------------------------------------------------------

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
    def evaluate(self) -> dict[str, Any]:
        return self.doc.get("evaluate") or {}

    def where(self) -> str:
        return str(self.path) if self.path else f"sweep config {self.name!r}"


def _require_mapping(value: Any, where: str, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SweepConfigError(f"{where}: {key} must be a mapping, got {value!r}")
    return dict(value)


def _check_grid(grid: Any, where: str, allowed: Sequence[str]) -> dict[str, list]:
    grid = _require_mapping(grid, where, "grid")
    for key, values in grid.items():
        namespace, dot, name = str(key).partition(".")
        if not dot or not name or namespace not in allowed:
            raise SweepConfigError(f"{where}: grid key {key!r} must be NAMESPACE.KEY with NAMESPACE in {list(allowed)}")
        if not isinstance(values, list) or not values:
            raise SweepConfigError(f"{where}: grid[{key!r}] must be a non-empty list, got {values!r}")
    return grid


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
    defaults = _require_mapping(doc.get("defaults"), where, "defaults")
    for ns in defaults:
        if ns not in RUNNER_NAMESPACES:
            raise SweepConfigError(f"{where}: defaults.{ns}: only runner namespaces {list(RUNNER_NAMESPACES)} "
                                   "apply to every run; put method knobs under methods.<name>")
    if "seed" in defaults.get("train", {}):
        raise SweepConfigError(f"{where}: set seeds with the top-level 'seeds' list, not defaults.train.seed")
    doc["datasets"] = _require_mapping(doc["datasets"], where, "datasets")
    for name, entry in doc["datasets"].items():
        entry = _require_mapping(entry, where, f"datasets.{name}")
        bad = sorted(set(entry) - set(RUNNER_NAMESPACES) - set(DATASET_KEYS))
        if bad:
            raise SweepConfigError(f"{where}: datasets.{name}: unknown key(s) {bad}; valid: "
                                   f"{list(RUNNER_NAMESPACES) + list(DATASET_KEYS)}")
        doc["datasets"][name] = entry
    doc["methods"] = _require_mapping(doc["methods"], where, "methods")
    for label, entry in doc["methods"].items():
        entry = _require_mapping(entry, where, f"methods.{label}")
        method = entry.get("method", label)
        allowed = set(METHOD_KEYS) | set(RUNNER_NAMESPACES) | {method}
        bad = sorted(set(entry) - allowed)
        if bad:
            raise SweepConfigError(f"{where}: methods.{label}: unknown key(s) {bad}; valid: {sorted(allowed)} "
                                   f"(the method's own namespace is {method!r})")
        only = entry.get("only_datasets")
        if only is not None and (not isinstance(only, list) or set(only) - set(doc["datasets"])):
            raise SweepConfigError(f"{where}: methods.{label}.only_datasets must list datasets of this config "
                                   f"({sorted(doc['datasets'])}), got {only!r}")
        per_dataset = _require_mapping(entry.get("per_dataset"), where, f"methods.{label}.per_dataset")
        for dataset, sections in per_dataset.items():
            if dataset not in doc["datasets"]:
                raise SweepConfigError(f"{where}: methods.{label}.per_dataset.{dataset}: not a dataset of this "
                                       f"config ({sorted(doc['datasets'])})")
            bad = sorted(set(_require_mapping(sections, where, f"methods.{label}.per_dataset.{dataset}"))
                         - set(RUNNER_NAMESPACES) - {method})
            if bad:
                raise SweepConfigError(f"{where}: methods.{label}.per_dataset.{dataset}: unknown namespace(s) {bad}")
        _check_grid(entry.get("grid"), f"{where}: methods.{label}", (*RUNNER_NAMESPACES, method))
        doc["methods"][label] = entry
    _check_grid(doc.get("grid"), where, RUNNER_NAMESPACES)
    evaluate = _require_mapping(doc.get("evaluate"), where, "evaluate")
    bad = sorted(set(evaluate) - set(EVALUATE_KEYS))
    if bad:
        raise SweepConfigError(f"{where}: evaluate: unknown key(s) {bad}; valid: {list(EVALUATE_KEYS)}")
    return SweepConfig(str(doc["name"]), doc, path)


def load_config(path: Path) -> SweepConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep config {path} does not exist")
    with open(path) as f:
        doc = yaml.safe_load(f)
    return parse_config(doc, path)


# --- jobs -------------------------------------------------------------------------------------------------------

@dataclass
class Job:
    """One run of a sweep: a resolved config, its row label and its folder."""

    label: str
    title: str
    cfg: RunConfig
    run_dir: Path
    sweep: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.run_dir.name

    def state(self) -> str:
        """``done`` (finished, follow-ups too), ``evaluate`` (trained, follow-up missing), ``resume`` or ``new``."""
        if (self.run_dir / "DONE").exists() and (self.run_dir / "summary.json").exists():
            if self.evaluate and not (self.run_dir / "missing_modality.json").exists():
                return "evaluate"
            return "done"
        return "resume" if (self.run_dir / CHECKPOINT).exists() else "new"

    def sections(self) -> dict[str, Any]:
        """The fully resolved config in ``train --config`` form (method, dataset and namespace sections)."""
        return config_sections(self.cfg.as_dict())

    def write_files(self) -> None:
        """``job.yaml`` and ``job.json`` in the run folder; called by the sweep parent before launching."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(self.run_dir / "job.yaml", self.sections())
        write_json(self.run_dir / "job.json", {"label": self.label, "title": self.title, "sweep": self.sweep,
                                               "method": self.cfg.method, "dataset": self.cfg.dataset,
                                               "seed": self.cfg.train.seed, **self.info})

    def commands(self, *, python: str = sys.executable, wandb_mode: str = "disabled", wandb_group: str | None = None,
                 gpus_per_run: int = 1) -> list[list[str]]:
        """The argv lists still needed for this run, in order (training, then the optional evaluation)."""
        out = []
        if self.state() in ("new", "resume"):
            launcher = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus_per_run}",
                        "-m"] if gpus_per_run > 1 else [python, "-m"]
            cmd = launcher + ["benchmarks", "train", "--config", str(self.run_dir / "job.yaml"),
                              "--run-dir", str(self.run_dir), "--resume", "--no-progress", "--wandb", wandb_mode]
            out.append(cmd + (["--wandb-group", wandb_group] if wandb_group else []))
        if self.evaluate and not (self.run_dir / "missing_modality.json").exists():
            out.append([python, "-m", "benchmarks", "evaluate", str(self.run_dir)] + evaluate_args(self.evaluate))
        return out


def evaluate_args(spec: Mapping[str, Any]) -> list[str]:
    args = ["--missing", ",".join(str(r) for r in spec.get("missing", [0, 0.2, 0.5]))]
    if "split" in spec:
        args += ["--split", str(spec["split"])]
    if "seed" in spec:
        args += ["--seed", str(spec["seed"])]
    return args


def config_sections(as_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``RunConfig.as_dict()`` (or a run's ``config.yaml``) -> ``{"method", "dataset", "train", ..., <method>}``."""
    method = as_dict["method"]
    out = {"method": method, "dataset": as_dict["dataset"]}
    for ns in RUNNER_NAMESPACES:
        out[ns] = dict(as_dict[ns])
    out[method] = dict(as_dict.get("hparams", {}).get(method, {}))
    return out


def run_config_from_dict(as_dict: Mapping[str, Any]) -> RunConfig:
    """Rebuild the ``RunConfig`` a run's ``config.yaml`` describes (same digest, same run name)."""
    sections = config_sections(as_dict)
    method, dataset = sections.pop("method"), sections.pop("dataset")
    return build_config(method, dataset, sections)


def _grid_points(*grids: Mapping[str, list]) -> list[dict[str, dict[str, Any]]]:
    keys = [k for grid in grids for k in grid]
    if len(set(keys)) != len(keys):
        raise SweepConfigError(f"grid key(s) given twice: {sorted({k for k in keys if keys.count(k) > 1})}")
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


def missing_entries(config: SweepConfig) -> tuple[list[str], list[str]]:
    """(methods, datasets) named by the config that are not registered."""
    registered_methods, registered_datasets = set(list_methods()), set(list_datasets())
    methods = sorted({e.get("method", label) for label, e in config.methods.items()} - registered_methods)
    datasets = sorted(set(config.datasets) - registered_datasets)
    return methods, datasets


def expand(config: SweepConfig, out: Path, *, seeds: Sequence[int] | None = None,
           methods: Sequence[str] | None = None, datasets: Sequence[str] | None = None,
           assignments: Mapping[str, Mapping[str, Any]] | None = None, skip_missing: bool = False,
           log: Callable[[str], None] = print) -> list[Job]:
    """Every run of ``config`` (optionally restricted to some seeds / method labels / datasets) as a ``Job``.

    Raises:
        MissingEntriesError: unregistered methods or datasets, unless ``skip_missing`` (then they are left out).
        SweepConfigError, HParamError: a bad filter, a bad key or value, or two rows resolving to the same run.
    """
    out = Path(out)
    assignments = {ns: dict(v) for ns, v in (assignments or {}).items()}
    labels = list(config.methods)
    dataset_names = list(config.datasets)
    for given, valid, what in ((methods, labels, "method"), (datasets, dataset_names, "dataset")):
        bad = sorted(set(given or ()) - set(valid))
        if bad:
            raise SweepConfigError(f"--{what}s {bad} not in {config.where()}; it has {valid}")
    if methods:
        labels = [label for label in labels if label in set(methods)]
    if datasets:
        dataset_names = [d for d in dataset_names if d in set(datasets)]
    method_of = {label: config.methods[label].get("method", label) for label in labels}
    _check_assignments(assignments, set(method_of.values()))

    missing_methods, missing_datasets = missing_entries(config)
    missing_methods = [m for m in missing_methods if m in method_of.values()]
    missing_datasets = [d for d in missing_datasets if d in dataset_names]
    if (missing_methods or missing_datasets) and not skip_missing:
        raise MissingEntriesError(
            f"{config.where()} names unregistered method(s) {missing_methods} and dataset(s) {missing_datasets}; "
            f"registered methods: {', '.join(list_methods())}; datasets: {', '.join(list_datasets())}. "
            "Pass --skip-missing to run the rest.")
    if missing_methods or missing_datasets:
        log(f"skipping unregistered method(s) {missing_methods} and dataset(s) {missing_datasets}")

    defaults = config.doc.get("defaults") or {}
    top_grid = config.doc.get("grid") or {}
    info = {k: config.doc[k] for k in ("paper", "table") if k in config.doc}
    info["protocol"] = config.protocol
    jobs: list[Job] = []
    seen: dict[str, str] = {}
    for dataset in dataset_names:
        if dataset in missing_datasets:
            continue
        for label in labels:
            entry, method = config.methods[label], method_of[label]
            if method in missing_methods:
                continue
            only = entry.get("only_datasets")
            if only is not None and dataset not in only:
                continue
            title = entry.get("title") or get_method(method).title or label
            per_dataset = (entry.get("per_dataset") or {}).get(dataset, {})
            for point in _grid_points(top_grid, entry.get("grid") or {}):
                suffix = _point_suffix(point)
                row = f"{label} [{suffix}]" if suffix else label
                row_title = f"{title} [{suffix}]" if suffix else title
                for seed in (list(seeds) if seeds else config.seeds):
                    layers = merge_overrides(defaults, _namespaces(config.datasets[dataset]),
                                             _namespaces(entry, method), per_dataset, point,
                                             _namespaces(assignments, method), {"train": {"seed": seed}})
                    try:
                        cfg = build_config(method, dataset, layers)
                    except HParamError as err:
                        raise HParamError(f"{config.where()}: methods.{label} on {dataset}: {err}") from None
                    run_dir = out / cfg.run_name()
                    if cfg.run_name() in seen:
                        raise SweepConfigError(f"{config.where()}: rows {seen[cfg.run_name()]!r} and {row!r} resolve "
                                               f"to the same run {cfg.run_name()} on {dataset}; give them different "
                                               "settings or drop one (only_datasets)")
                    seen[cfg.run_name()] = row
                    jobs.append(Job(row, row_title, cfg, run_dir, config.name, dict(info), dict(config.evaluate)))
    return jobs


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


# --- sweep-level records ----------------------------------------------------------------------------------------

def write_sweep_record(out: Path, config: SweepConfig, jobs: Sequence[Job],
                       results: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """``OUT/sweep.json``: the sweep's runs and their states (parent process only, atomic)."""
    results = results or {}
    write_json(Path(out) / "sweep.json", {
        "name": config.name, "config": str(config.path) if config.path else None, "protocol": config.protocol,
        "runs": [{"run": j.name, "label": j.label, "method": j.cfg.method, "dataset": j.cfg.dataset,
                  "seed": j.cfg.train.seed, "state": j.state(), **results.get(j.name, {})} for j in jobs]})


class SweepLock:
    """An exclusive ``flock`` on ``OUT/.sweep.lock`` for the life of a sweep; released by the kernel on any exit."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / ".sweep.lock"
        self.fd: int | None = None

    def __enter__(self) -> "SweepLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise SweepBusyError(f"another sweep is running on {self.path.parent} (lock {self.path}); wait for it "
                               "or use another --out") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# --- local launcher ---------------------------------------------------------------------------------------------

def _die_with_parent() -> None:
    """Child side of ``Popen``: get SIGKILL when the sweep process dies, so a killed sweep leaves no orphan run
    writing a folder that the restarted sweep would launch again."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass
class _Running:
    job: Job
    commands: list[list[str]]
    proc: subprocess.Popen
    slot: int
    started: float


@dataclass
class LocalReport:
    """What ``run_local`` did: runs skipped (already finished), launched, and failed (name -> exit code)."""

    skipped: list[str] = field(default_factory=list)
    launched: list[str] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)


def local_slots(workers: int, gpus: Sequence[int] | None, gpus_per_run: int = 1,
                threads_per_worker: int | None = None) -> list[dict[str, str]]:
    """Environment additions of each concurrent slot: GPU groups, or ``workers`` CPU processes."""
    if gpus:
        if gpus_per_run < 1 or len(gpus) % gpus_per_run:
            raise ValueError(f"--gpus {list(gpus)} cannot be split into groups of --gpus-per-run {gpus_per_run}")
        groups = [gpus[i:i + gpus_per_run] for i in range(0, len(gpus), gpus_per_run)]
        return [{"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in group)} for group in groups]
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    threads = threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
    return [{"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} for _ in range(workers)]


def run_local(jobs: Sequence[Job], *, workers: int = 1, gpus: Sequence[int] | None = None, gpus_per_run: int = 1,
              out: Path | None = None, config: SweepConfig | None = None, wandb_mode: str = "disabled",
              wandb_group: str | None = None, threads_per_worker: int | None = None, python: str = sys.executable,
              poll_s: float = 0.2, log: Callable[[str], None] = print) -> LocalReport:
    """Run the unfinished ``jobs`` as subprocesses, keeping every slot busy until all are done.

    Each job's steps (training, then the optional evaluation) run in one slot, one after the other; a failed step
    ends that job and is reported (the others go on). Finished runs are skipped, unfinished ones resume.
    """
    slots = local_slots(workers, gpus, gpus_per_run, threads_per_worker)
    report = LocalReport()
    queue: list[Job] = []
    for job in jobs:
        if job.state() == "done":
            report.skipped.append(job.name)
        else:
            queue.append(job)
    log(f"{len(jobs)} runs: {len(report.skipped)} finished, {len(queue)} to run on {len(slots)} slot(s)")
    results: dict[str, dict[str, Any]] = {}
    free = list(range(len(slots)))
    running: list[_Running] = []
    preexec = _die_with_parent if sys.platform.startswith("linux") else None

    def start(job: Job, commands: list[list[str]], slot: int) -> _Running:
        env = {**os.environ, **slots[slot]}
        with open(job.run_dir / "train.log", "ab") as logfile:
            logfile.write(f"$ {shlex.join(commands[0])}\n".encode())
            logfile.flush()
            proc = subprocess.Popen(commands[0], stdout=logfile, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=preexec)
        return _Running(job, commands[1:], proc, slot, time.monotonic())

    try:
        while queue or running:
            while queue and free:
                job = queue.pop(0)
                state = job.state()
                job.write_files()
                commands = job.commands(python=python, wandb_mode=wandb_mode, wandb_group=wandb_group,
                                        gpus_per_run=gpus_per_run if gpus else 1)
                slot = free.pop(0)
                running.append(start(job, commands, slot))
                report.launched.append(job.name)
                log(f"start [{state}] {job.name} (slot {slot})")
            time.sleep(poll_s)
            for item in list(running):
                code = item.proc.poll()
                if code is None:
                    continue
                running.remove(item)
                if code == 0 and item.commands:
                    running.append(start(item.job, item.commands, item.slot))
                    continue
                free.append(item.slot)
                results[item.job.name] = {"returncode": code, "seconds": round(time.monotonic() - item.started, 1)}
                if code != 0:
                    report.failed[item.job.name] = code
                    log(f"FAILED {item.job.name} (exit {code}); see {item.job.run_dir / 'train.log'}")
                else:
                    log(f"done {item.job.name} ({results[item.job.name]['seconds']} s)")
                if out is not None and config is not None:
                    write_sweep_record(out, config, jobs, results)
    except BaseException:
        for item in running:
            item.proc.terminate()
        for item in running:
            item.proc.wait()
        raise
    if out is not None and config is not None:
        write_sweep_record(out, config, jobs, results)
    return report


# --- Pool launcher (long-lived CPU workers) ------------------------------------------------------------------------
def _pool_init(threads: int) -> None:
    """Pool worker set-up: die with the sweep (Linux), and use ``threads`` intra-op threads."""
    if sys.platform.startswith("linux"):
        _die_with_parent()
    import torch

    torch.set_num_threads(threads)


def _pool_step(task: tuple[str, dict[str, Any], dict[str, Any], str, str | None]) -> tuple[str, int, float, str]:
    """Train (and evaluate) one run inside a pool worker; returns (name, status, seconds, error)."""
    from benchmarks.evaluate import evaluate_missing
    from benchmarks.runner import train_run

    run_dir, sections, evaluate, wandb_mode, wandb_group = Path(task[0]), *task[1:]
    start = time.monotonic()
    head = {k: sections[k] for k in ("method", "dataset")}
    try:
        cfg = build_config(head["method"], head["dataset"],
                           {k: v for k, v in sections.items() if k not in ("method", "dataset")})
        with open(run_dir / "train.log", "a") as logfile:
            train_run(cfg, run_dir, resume=True, wandb_mode=wandb_mode, wandb_group=wandb_group,
                      log=lambda line: print(line, file=logfile, flush=True))
        if evaluate and not (run_dir / "missing_modality.json").exists():
            evaluate_missing(run_dir, evaluate.get("missing", (0.0, 0.2, 0.5)), split=evaluate.get("split", "test"),
                             seed=evaluate.get("seed", 0))
    except Exception as err:  # reported per run, so one failing method does not stop the sweep
        return run_dir.name, 1, time.monotonic() - start, f"{type(err).__name__}: {err}"
    return run_dir.name, 0, time.monotonic() - start, ""


def run_pool(jobs: Sequence[Job], *, workers: int = 1, threads_per_worker: int = 1, out: Path | None = None,
             config: SweepConfig | None = None, wandb_mode: str = "disabled", wandb_group: str | None = None,
             log: Callable[[str], None] = print) -> LocalReport:
    """Run the unfinished ``jobs`` in ``workers`` long-lived processes, one run at a time each.

    Same on-disk semantics as ``run_local`` (finished runs skipped, unfinished ones resumed from their last epoch),
    without starting a Python interpreter per run: for sweeps of many short CPU runs (the demo), where importing
    torch would cost as much as training.
    """
    import multiprocessing

    report = LocalReport()
    queue = []
    for job in jobs:
        if job.state() == "done":
            report.skipped.append(job.name)
        else:
            job.write_files()
            queue.append(job)
    log(f"{len(jobs)} runs: {len(report.skipped)} finished, {len(queue)} to run in {workers} worker process(es)")
    results: dict[str, dict[str, Any]] = {}
    tasks = [(str(job.run_dir), job.sections(), job.evaluate, wandb_mode, wandb_group) for job in queue]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_pool_init, initargs=(threads_per_worker,)) as pool:
        for done, (name, status, seconds, error) in enumerate(pool.imap_unordered(_pool_step, tasks), 1):
            report.launched.append(name)
            results[name] = {"returncode": status, "seconds": round(seconds, 1)}
            if status:
                report.failed[name] = status
                log(f"[{done}/{len(tasks)}] FAILED {name}: {error}")
            else:
                log(f"[{done}/{len(tasks)}] done {name} ({seconds:.1f} s)")
            if out is not None and config is not None:
                write_sweep_record(out, config, jobs, results)
    return report


# --- Slurm launcher ---------------------------------------------------------------------------------------------

@dataclass
class SlurmOptions:
    """Resources of one Slurm job (one run). ``gpus_per_run`` > 1 runs one task per GPU (data-parallel)."""

    partition: str | None = None
    time_min: int = 24 * 60
    gpus_per_run: int = 1
    cpus_per_task: int = 8
    mem_gb: int | None = 64
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 64

    def parameters(self, name: str) -> dict[str, Any]:
        """``submitit.AutoExecutor.update_parameters`` arguments."""
        params: dict[str, Any] = {"name": name, "timeout_min": self.time_min, "cpus_per_task": self.cpus_per_task,
                                  "tasks_per_node": max(1, self.gpus_per_run), "nodes": 1,
                                  "slurm_array_parallelism": self.array_parallelism}
        if self.gpus_per_run > 0:
            params["gpus_per_node"] = self.gpus_per_run
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        for key in ("partition", "account", "qos", "constraint"):
            value = getattr(self, key)
            if value is not None:
                params[f"slurm_{key}"] = value
        return params


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise SlurmUnavailableError("the Slurm launcher needs submitit: pip install 'augbench[slurm]'") from None
    return submitit


def make_executor(folder: Path, options: SlurmOptions, name: str, cluster: str | None = "slurm") -> Any:
    """A ``submitit.AutoExecutor`` for ``cluster`` (``slurm``; ``debug``/``local`` run jobs on this machine)."""
    submitit = _submitit()
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    executor.update_parameters(**options.parameters(name))
    return executor


class TrainJob:
    """The callable a Slurm job runs: train one run (resuming), then its optional evaluation.

    It carries only paths and strings, so submitit pickles it by reference to this module. ``checkpoint`` makes it
    requeue itself on time-out or pre-emption; the run then resumes from its last per-epoch checkpoint.
    """

    def __init__(self, run_dir: Path, wandb_mode: str = "disabled", wandb_group: str | None = None,
                 evaluate: Mapping[str, Any] | None = None, gpus_per_run: int = 1) -> None:
        self.run_dir = Path(run_dir)
        self.wandb_mode = wandb_mode
        self.wandb_group = wandb_group
        self.evaluate = dict(evaluate or {})
        self.gpus_per_run = gpus_per_run

    def __call__(self) -> str:
        from benchmarks.runner import train_run

        if self.gpus_per_run > 1:
            _submitit().helpers.TorchDistributedEnvironment().export()
        with open(self.run_dir / "job.yaml") as f:
            sections = yaml.safe_load(f)
        method, dataset = sections.pop("method"), sections.pop("dataset")
        cfg = build_config(method, dataset, sections)
        train_run(cfg, self.run_dir, resume=True, wandb_mode=self.wandb_mode, wandb_group=self.wandb_group)
        if self.evaluate and int(os.environ.get("RANK", "0")) == 0:
            from benchmarks.evaluate import evaluate_missing

            evaluate_missing(self.run_dir, rates=self.evaluate.get("missing", [0, 0.2, 0.5]),
                             split=self.evaluate.get("split", "test"), seed=self.evaluate.get("seed", 0))
        return str(self.run_dir)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


def _active_slurm_jobs(record: Mapping[str, str], folder: Path) -> set[str]:
    submitit = _submitit()
    active = set()
    for run, job_id in record.items():
        state = submitit.SlurmJob(folder=str(folder), job_id=str(job_id)).state
        if state.split()[0] in ACTIVE_SLURM_STATES:
            active.add(run)
    return active


def run_slurm(jobs: Sequence[Job], executor: Any, *, out: Path, config: SweepConfig | None = None,
              wandb_mode: str = "disabled", wandb_group: str | None = None, gpus_per_run: int = 1,
              resubmit: bool = False, log: Callable[[str], None] = print) -> list[Any]:
    """Submit every unfinished run as one job of a Slurm array; returns the submitit jobs.

    Runs whose recorded job (``OUT/slurm_jobs.json``) is still queued or running are not submitted again unless
    ``resubmit``.
    """
    record_path = Path(out) / "slurm_jobs.json"
    record: dict[str, str] = json.loads(record_path.read_text()) if record_path.exists() else {}
    pending = [job for job in jobs if job.state() != "done"]
    if record and not resubmit:
        active = _active_slurm_jobs({j.name: record[j.name] for j in pending if j.name in record},
                                    Path(executor.folder))
        if active:
            log(f"{len(active)} run(s) still queued or running on Slurm; not submitted again (--resubmit to force)")
        pending = [job for job in pending if job.name not in active]
    log(f"{len(jobs)} runs: {len(jobs) - len(pending)} finished or active, submitting {len(pending)}")
    submitted = []
    if pending:
        with executor.batch():
            for job in pending:
                job.write_files()
                submitted.append(executor.submit(TrainJob(job.run_dir, wandb_mode, wandb_group, job.evaluate,
                                                          gpus_per_run)))
    for job, handle in zip(pending, submitted):
        record[job.name] = str(handle.job_id)
    write_json(record_path, record)
    if config is not None:
        write_sweep_record(out, config, jobs)
    return submitted
