"""``augbench train``: train one method on one dataset into a run directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from baselines.hparams import parse_assignments
from benchmarks.config import build_config, load_config_file, merge_overrides
from benchmarks.records import WANDB_MODES
from benchmarks.runner import train_run

HELP = "train one method on one dataset"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", help="registered method name (see `augbench list`)")
    p.add_argument("--dataset", help="registered dataset name")
    p.add_argument("--config", type=Path, help="YAML with method/dataset and namespace sections")
    p.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=N")
    p.add_argument("--seed", type=int, help="shortcut for --set train.seed=N")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="NS.KEY=VALUE",
                   help="override a hyperparameter, e.g. --set ogm_ge.alpha=0.8 (repeatable)")
    p.add_argument("--out", type=Path, default=Path("runs"), help="parent folder of the run directory")
    p.add_argument("--run-dir", type=Path, help="exact run directory (default: OUT/<dataset>-<method>-seed<S>-<hash>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in the same directory")
    p.add_argument("--wandb", choices=WANDB_MODES, help="W&B mode (default: online with credentials, else offline)")
    p.add_argument("--wandb-group", help="W&B group (sweeps set it)")
    p.add_argument("--no-progress", action="store_true", help="hide the per-batch progress bar")


def run(args: argparse.Namespace) -> int:
    head, file_overrides = load_config_file(args.config) if args.config else ({}, {})
    method = args.method or head.get("method")
    dataset = args.dataset or head.get("dataset")
    if not method or not dataset:
        raise ValueError("give --method and --dataset (or a --config that names them)")
    shortcuts = {"train": {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed)) if v is not None}}
    cfg = build_config(method, dataset, merge_overrides(file_overrides, parse_assignments(args.assignments),
                                                         shortcuts))
    run_dir = args.run_dir or args.out / cfg.run_name()
    print(f"run directory: {run_dir}")
    summary = train_run(cfg, run_dir, resume=args.resume, wandb_mode=args.wandb, wandb_group=args.wandb_group,
                        progress=not args.no_progress)
    brief = {name: {"epoch": p["epoch"], "test_acc": (p.get("test") or {}).get("acc")}
             for name, p in summary["protocols"].items()}
    print(json.dumps(brief, indent=2))
    return 0
