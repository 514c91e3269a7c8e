"""``augbench sweep CONFIG``: run every (method, dataset, seed) of an experiment config, skipping finished runs.

Before anything starts, the sweep checks that every run can succeed (registered names, settings that resolve,
dataset caches, devices) and otherwise prints what is missing, grouped, and exits with status 2.

Examples::

    augbench sweep benchmarks/configs/aug_neurips25/table1.yaml --gpus 0,1,2,3 --skip-missing
    augbench sweep benchmarks/configs/balancebenchmark/results.yaml --launcher slurm --partition gpu --time 1440
    augbench sweep CONFIG --dry-run --methods joint aug --datasets cremad --seeds 0
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from benchmarks.cli import UsageError
from benchmarks.commands import nonnegative_int, positive_int
from benchmarks.records import WANDB_MODES, listed, resolve_wandb_mode
from benchmarks.sweep import (
    LAUNCHERS,
    Job,
    LaunchOptions,
    PreflightError,
    SlurmOptions,
    SlurmUnavailableError,
    SweepBusyError,
    SweepConfig,
    check,
    load_config,
    plan,
)
from core.hparams import parse_assignments

HELP = "run an experiment config (all methods x datasets x seeds) locally or on Slurm, resuming unfinished runs"


def _gpus(text: str) -> list[int]:
    # An empty list would run on no GPU and a repeated id two runs on one GPU, both without a word.
    bad = argparse.ArgumentTypeError(f"--gpus expects a comma-separated list of distinct GPU ids, got {text!r}")
    try:
        ids = [int(g) for g in text.split(",") if g.strip()]
    except ValueError:
        raise bad from None
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
        raise bad
    return ids


# The Slurm options' defaults, SlurmOptions' own (argument -> its field): one set otherwise under another launcher is
# refused.
SLURM_FIELDS = {"partition": "partition", "time": "time_min", "cpus_per_task": "cpus_per_task", "mem_gb": "mem_gb",
                "account": "account", "qos": "qos", "constraint": "constraint",
                "array_parallelism": "array_parallelism"}
SLURM_DEFAULTS = {**{arg: getattr(SlurmOptions, field) for arg, field in SLURM_FIELDS.items()}, "resubmit": False}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="experiment config, e.g. benchmarks/configs/aug_neurips25/table1.yaml")
    p.add_argument("--launcher", choices=tuple(LAUNCHERS), default="local",
                   help="; ".join(f"{name}: {launcher.help}" for name, launcher in LAUNCHERS.items()))
    p.add_argument("--out", type=Path, help="sweep folder (default: runs/<config name, / as _>)")
    p.add_argument("--gpus", type=_gpus, help="local: GPU ids to keep busy, one run each, e.g. 0,1,2,3")
    p.add_argument("--gpus-per-run", type=nonnegative_int, default=1,
                   help="GPUs per run (data-parallel via torchrun when > 1; slurm: 0 submits CPU jobs)")
    p.add_argument("--workers", type=positive_int, default=1, help="local without --gpus, pool: concurrent CPU runs")
    p.add_argument("--threads-per-worker", type=positive_int, help="CPU runs: OMP/MKL threads each (default: cores/N)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs (state, dataset, method, seed, folder, overrides) and the checks; start nothing")
    p.add_argument("--seeds", type=int, nargs="+", help="replace the config's seeds")
    p.add_argument("--methods", nargs="+", help="only these method rows (labels of the config)")
    p.add_argument("--datasets", nargs="+", help="only these datasets")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="NS.KEY=VALUE",
                   help="override a hyperparameter in every run it applies to (repeatable)")
    p.add_argument("--skip-missing", action="store_true",
                   help="leave out methods/datasets the config names that are not registered (not missing data)")
    p.add_argument("--wandb", choices=WANDB_MODES, help="W&B mode passed to every run")
    p.add_argument("--wandb-group", help="W&B group of all runs (default: the config name)")
    slurm = p.add_argument_group("slurm launcher")
    slurm.add_argument("--partition")
    slurm.add_argument("--time", type=nonnegative_int, default=SLURM_DEFAULTS["time"],
                       help="minutes per job (jobs requeue and resume; 0: no limit, Slurm's --time=0)")
    slurm.add_argument("--cpus-per-task", type=positive_int, default=SLURM_DEFAULTS["cpus_per_task"])
    slurm.add_argument("--mem-gb", type=nonnegative_int, default=SLURM_DEFAULTS["mem_gb"],
                       help="0: all of a node's memory (Slurm's --mem=0)")
    slurm.add_argument("--account")
    slurm.add_argument("--qos")
    slurm.add_argument("--constraint")
    slurm.add_argument("--array-parallelism", type=positive_int, default=SLURM_DEFAULTS["array_parallelism"],
                       help="jobs of the array running at once")
    slurm.add_argument("--resubmit", action="store_true", help="submit runs whose earlier job is still active")


def ignored_options(args: argparse.Namespace) -> list[str]:
    """The options given that ``args.launcher`` would drop without a word: Slurm's under another launcher, and
    ``--gpus`` (the local launcher's GPU ids) under another."""
    given = [f"--{k.replace('_', '-')}" for k, default in SLURM_DEFAULTS.items() if getattr(args, k) != default]
    if args.launcher != "slurm":
        return given + (["--gpus"] if args.gpus and args.launcher != "local" else [])
    return ["--gpus"] if args.gpus else []


def default_out(name: str) -> Path:
    return Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def flat_settings(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """``{"train": {"lr": 0.1}}`` -> ``train.lr=0.1`` (space-separated)."""
    return " ".join(f"{ns}.{key}={_value(v)}" for ns, values in sections.items() for key, v in values.items())


def listing(jobs: Sequence[Job], config: SweepConfig, out: Path,
            assignments: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The dry run's table: the shared settings (the config's defaults, then the ``--set`` values that replace them
    and every row's), then one line per run with its state, cell, folder and its row's settings."""
    lines = [f"sweep {config.name} ({config.where()}) -> {out}"]
    if config.doc.get("defaults"):
        lines.append(f"defaults (every run): {flat_settings(config.doc['defaults'])}")
    if assignments:
        lines.append(f"--set (over the config's settings; a method's keys on its rows): {flat_settings(assignments)}")
    for dataset in sorted({job.cfg.dataset for job in jobs}, key=list(config.datasets).index):
        settings = {ns: v for ns, v in config.datasets[dataset].items() if ns != "notes"}
        if settings:
            lines.append(f"{dataset} (every run on it): {flat_settings(settings)}")
    rows = [("state", "dataset", "method", "seed", "run", "overrides")]
    for job in jobs:
        method = job.label if job.label == job.cfg.method else f"{job.label} ({job.cfg.method})"
        rows.append((job.progress(), job.cfg.dataset, method, str(job.cfg.train.seed), job.name,
                     flat_settings(job.overrides)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[5] for row in rows]
    counts = {state: sum(j.progress().split()[0] == state for j in jobs) for state in ("done", "partial", "new")}
    lines.append(f"{len(jobs)} runs in {out}: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
    return "\n".join(line.rstrip() for line in lines)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (SlurmUnavailableError, SweepBusyError, PreflightError) as err:
        raise UsageError(str(err)) from None


def _run(args: argparse.Namespace) -> int:
    launcher = LAUNCHERS[args.launcher]
    unavailable = launcher.unavailable()
    if unavailable and not args.dry_run:
        raise UsageError(unavailable)
    ignored = ignored_options(args)
    if ignored:
        raise UsageError(f"{', '.join(ignored)}: not options of --launcher {args.launcher}, which would ignore them")
    if args.launcher == "local" and args.gpus_per_run > 1 and not args.gpus:
        raise UsageError("--gpus-per-run > 1 needs --gpus (the GPU ids to group), e.g. --gpus 0,1,2,3")
    config = load_config(args.config)
    out = args.out or default_out(config.name)
    assignments = parse_assignments(args.assignments)
    cells = plan(config, out, seeds=args.seeds, methods=args.methods, datasets=args.datasets,
                 assignments=assignments)
    if args.skip_missing and (cells.unregistered_methods or cells.unregistered_datasets):
        print(f"skipping unregistered method(s) {cells.unregistered_methods} and dataset(s) "
              f"{cells.unregistered_datasets}")
    opts = LaunchOptions(workers=args.workers, gpus=args.gpus, gpus_per_run=args.gpus_per_run,
                         threads_per_worker=args.threads_per_worker,
                         slurm=SlurmOptions(partition=args.partition, time_min=args.time,
                                            gpus_per_run=args.gpus_per_run, cpus_per_task=args.cpus_per_task,
                                            mem_gb=args.mem_gb, account=args.account, qos=args.qos,
                                            constraint=args.constraint, array_parallelism=args.array_parallelism),
                         resubmit=args.resubmit)
    problems = check(cells, launcher, opts, skip_missing=args.skip_missing)
    if args.dry_run:
        problems.add("launcher", [unavailable] if unavailable else [])
        print(listing(cells.jobs, config, out, assignments))
    if problems:
        raise PreflightError(problems.report(len(cells.jobs), config.where(), dry_run=args.dry_run))
    if args.dry_run:
        return 0
    if not cells.jobs:
        raise UsageError(f"{config.where()}: no runs left after --methods/--datasets/--skip-missing")
    opts.wandb_mode = resolve_wandb_mode(args.wandb)
    opts.wandb_group = args.wandb_group or config.name
    report = launcher.start(cells.jobs, out, config, opts, print)
    # The failed runs named again at the end: each run's FAILED line has scrolled away in a long sweep.
    named = f": {listed(sorted(report.failed), 10)} (each run's train.log has why)" if report.failed else ""
    print(f"{len(report.launched)} launched, {len(report.skipped)} already finished, {len(report.failed)} "
          f"failed{named}")
    return 1 if report.failed else 0
