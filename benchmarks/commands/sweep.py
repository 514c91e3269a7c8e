"""``augbench sweep CONFIG``: run every (method, dataset, seed) of an experiment config, skipping finished runs.

Examples::

    augbench sweep benchmarks/configs/aug_neurips25/table1.yaml --gpus 0,1,2,3 --skip-missing
    augbench sweep benchmarks/configs/balancebenchmark/results.yaml --launcher slurm --partition gpu --time 1440
    augbench sweep CONFIG --dry-run --methods joint aug --datasets cremad --seeds 0
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from baselines.hparams import parse_assignments
from benchmarks.cli import UsageError
from benchmarks.records import WANDB_MODES, resolve_wandb_mode
from benchmarks.sweep import (SlurmOptions, SlurmUnavailableError, SweepBusyError, SweepLock, expand, load_config,
                              make_executor, run_local, run_pool, run_slurm, write_sweep_record)

HELP = "run an experiment config (all methods x datasets x seeds) locally or on Slurm, resuming unfinished runs"


def _gpus(text: str) -> list[int]:
    try:
        return [int(g) for g in text.split(",") if g.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus expects a comma-separated list of GPU ids, got {text!r}") from None


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="experiment config, e.g. benchmarks/configs/aug_neurips25/table1.yaml")
    p.add_argument("--launcher", choices=("local", "pool", "slurm"), default="local",
                   help="local: a subprocess per run (GPUs or CPU workers); pool: --workers long-lived CPU processes "
                        "(no interpreter start-up per run; for many short runs); slurm: submitit jobs")
    p.add_argument("--out", type=Path, help="sweep folder (default: runs/<config name>)")
    p.add_argument("--gpus", type=_gpus, help="local: GPU ids to keep busy, one run each, e.g. 0,1,2,3")
    p.add_argument("--gpus-per-run", type=int, default=1, help="GPUs per run (data-parallel via torchrun when > 1)")
    p.add_argument("--workers", type=int, default=1, help="local without --gpus: concurrent CPU runs")
    p.add_argument("--threads-per-worker", type=int, help="local CPU runs: OMP/MKL threads each (default: cores/N)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their states; launch nothing")
    p.add_argument("--seeds", type=int, nargs="+", help="replace the config's seeds")
    p.add_argument("--methods", nargs="+", help="only these method rows (labels of the config)")
    p.add_argument("--datasets", nargs="+", help="only these datasets")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="NS.KEY=VALUE",
                   help="override a hyperparameter in every run it applies to (repeatable)")
    p.add_argument("--skip-missing", action="store_true", help="leave out methods/datasets not registered yet")
    p.add_argument("--wandb", choices=WANDB_MODES, help="W&B mode passed to every run")
    p.add_argument("--wandb-group", help="W&B group of all runs (default: the config name)")
    slurm = p.add_argument_group("slurm launcher")
    slurm.add_argument("--partition")
    slurm.add_argument("--time", type=int, default=24 * 60, help="minutes per job (jobs requeue and resume)")
    slurm.add_argument("--cpus-per-task", type=int, default=8)
    slurm.add_argument("--mem-gb", type=int, default=64)
    slurm.add_argument("--account")
    slurm.add_argument("--qos")
    slurm.add_argument("--constraint")
    slurm.add_argument("--array-parallelism", type=int, default=64, help="jobs of the array running at once")
    slurm.add_argument("--resubmit", action="store_true", help="submit runs whose earlier job is still active")


def default_out(name: str) -> Path:
    return Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (SlurmUnavailableError, SweepBusyError) as err:
        raise UsageError(str(err)) from None


def _run(args: argparse.Namespace) -> int:
    if args.launcher == "local" and args.gpus_per_run > 1 and not args.gpus:
        raise UsageError("--gpus-per-run > 1 needs --gpus (the GPU ids to group), e.g. --gpus 0,1,2,3")
    config = load_config(args.config)
    out = args.out or default_out(config.name)
    jobs = expand(config, out, seeds=args.seeds, methods=args.methods, datasets=args.datasets,
                  assignments=parse_assignments(args.assignments), skip_missing=args.skip_missing)
    if args.dry_run:
        for job in jobs:
            print(f"{job.state():<8} {job.label:<24} {job.run_dir}")
        print(f"{len(jobs)} runs in {out}")
        return 0
    mode = resolve_wandb_mode(args.wandb)
    group = args.wandb_group or config.name
    if args.launcher == "slurm":
        options = SlurmOptions(partition=args.partition, time_min=args.time, gpus_per_run=args.gpus_per_run,
                               cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb, account=args.account,
                               qos=args.qos, constraint=args.constraint, array_parallelism=args.array_parallelism)
        out.mkdir(parents=True, exist_ok=True)
        executor = make_executor(out / ".submitit", options, name=f"augbench-{out.name}")
        submitted = run_slurm(jobs, executor, out=out, config=config, wandb_mode=mode, wandb_group=group,
                              gpus_per_run=args.gpus_per_run, resubmit=args.resubmit)
        print(f"submitted {len(submitted)} job(s); run this command again to resume or to skip finished runs")
        return 0
    with SweepLock(out):
        write_sweep_record(out, config, jobs)
        if args.launcher == "pool":
            report = run_pool(jobs, workers=args.workers, threads_per_worker=args.threads_per_worker or 1, out=out,
                              config=config, wandb_mode=mode, wandb_group=group)
            print(f"{len(report.launched)} run, {len(report.skipped)} already finished, {len(report.failed)} failed")
            return 1 if report.failed else 0
        report = run_local(jobs, workers=args.workers, gpus=args.gpus, gpus_per_run=args.gpus_per_run, out=out,
                           config=config, wandb_mode=mode, wandb_group=group,
                           threads_per_worker=args.threads_per_worker)
    print(f"{len(report.launched)} launched, {len(report.skipped)} already finished, {len(report.failed)} failed")
    return 1 if report.failed else 0
