"""``augbench train``: train one method on one dataset into a run directory.

``--resume`` continues a run under its own config: with ``--run-dir`` alone the config is read from the run, and a
config given on the command line must match it key for key. ``--extend-epochs N`` is the one sanctioned change: it
raises the run's ``train.epochs`` to ``N`` (a finished run trains on) and records that in the run folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.errors import UsageError
from benchmarks.records import WANDB_MODES
from core.hparams import HParamError, parse_assignments

HELP = "train one method on one dataset"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", help="registered method name (see `augbench list`)")
    p.add_argument("--dataset", help="registered dataset name")
    p.add_argument("--config", type=Path, help="YAML with method/dataset and namespace sections")
    p.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=N (a --set of it must agree)")
    p.add_argument("--seed", type=int, help="shortcut for --set train.seed=N (a --set of it must agree)")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="NS.KEY=VALUE",
                   help="override a hyperparameter, e.g. --set ogm_ge.alpha=0.8 (repeatable)")
    p.add_argument("--out", type=Path, default=Path("runs"), help="parent folder of the run directory")
    p.add_argument("--run-dir", type=Path, help="exact run directory (default: OUT/<dataset>-<method>-seed<S>-<hash>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in the run directory under its own config (with --run-dir alone, the "
                        "config is read from the run; any other config must match it exactly)")
    p.add_argument("--extend-epochs", type=int, metavar="TOTAL",
                   help="resume and raise the run's train.epochs to TOTAL (also a finished run); recorded in the "
                        "run's extensions.json and summary")
    p.add_argument("--wandb", choices=WANDB_MODES, help="W&B mode (default: online with credentials, else offline)")
    p.add_argument("--wandb-group", help="W&B group (sweeps set it)")
    p.add_argument("--no-progress", action="store_true", help="hide the per-batch progress bar")


def shortcuts(args: argparse.Namespace, assignments: dict[str, dict]) -> dict[str, dict]:
    """``--epochs``/``--seed`` as train overrides. Given together with a ``--set`` of the same key and another value,
    one of the two would be dropped without a word, so that is refused."""
    given = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed)) if v is not None}
    for key, value in given.items():
        assigned = assignments.get("train", {}).get(key, value)
        if assigned != value:
            raise UsageError(f"--{key} {value} and --set train.{key}={assigned} set the same key; give one of them")
    return {"train": given}


def run(args: argparse.Namespace) -> int:
    # Imported here so that `augbench --help` and `augbench train --help` do not load torch.
    from benchmarks.config import build_config, config_overrides, load_config_file, merge_overrides
    from benchmarks.run_folder import RUN_CONFIG_KEYS, rank0_run_lock, recorded_config
    from benchmarks.runner import quiet, train_run
    from core.distributed import env_world

    resume = args.resume or args.extend_epochs is not None
    head, file_overrides = load_config_file(args.config) if args.config else ({}, {})
    method = args.method or head.get("method")
    dataset = args.dataset or head.get("dataset")
    assignments = parse_assignments(args.assignments)
    overrides = merge_overrides(file_overrides, assignments, shortcuts(args, assignments))
    if not method and not dataset and resume and args.run_dir:
        recorded = recorded_config(args.run_dir, RUN_CONFIG_KEYS)
        if recorded is None:
            raise UsageError(f"{args.run_dir} holds no run to resume (no config.yaml); give --method and --dataset "
                             "to start one")
        method, dataset, sections = config_overrides(recorded)
        overrides = merge_overrides(sections, overrides)
    if not method or not dataset:
        raise UsageError("give --method and --dataset (or a --config that names them, or --run-dir of a run to "
                         "--resume)")
    if args.config:
        try:  # the config file's own settings first, so that an error in them names the file
            build_config(method, dataset, file_overrides)
        except HParamError as err:
            raise HParamError(f"{args.config}: {err}") from None
    cfg = build_config(method, dataset, overrides)
    run_dir = args.run_dir or args.out / cfg.run_name()
    if args.extend_epochs is not None:
        if recorded_config(run_dir) is None:
            raise UsageError(f"--extend-epochs: {run_dir} holds no run to extend")
        cfg = build_config(method, dataset, merge_overrides(overrides, {"train": {"epochs": args.extend_epochs}}))
    # Under torchrun every rank runs this command; rank 0 reports for all of them.
    report = print if env_world()[0] == 0 else quiet
    report(f"run directory: {run_dir}")
    with rank0_run_lock(run_dir):
        summary = train_run(cfg, run_dir, resume=resume, extend_epochs=args.extend_epochs is not None,
                            wandb_mode=args.wandb, wandb_group=args.wandb_group, progress=not args.no_progress)
    brief = {name: {"epoch": p["epoch"], "test_acc": (p.get("test") or {}).get("acc")}
             for name, p in summary["protocols"].items()}
    report(json.dumps(brief, indent=2))
    return 0
