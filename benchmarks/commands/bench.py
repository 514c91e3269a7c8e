"""``augbench bench [step|epoch|all]``: speed figures written to ``results/bench/`` (JSON + Markdown)."""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from baselines.hparams import parse_assignments
from benchmarks.bench import SHAPES, bench_epoch, bench_steps, markdown_epoch, markdown_steps
from benchmarks.config import build_config, merge_overrides
from benchmarks.records import atomic_write_text, environment, write_json

HELP = "benchmark per-step cost of every method vs joint, and epoch vs model-only time"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="?", default="all", choices=("step", "epoch", "all"))
    p.add_argument("--shape", default="small", choices=sorted(SHAPES),
                   help="synthetic input shapes: 'cremad' = AUG's CREMA-D inputs (use on a GPU), 'small' for CPU")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--methods", nargs="*", help="methods to time (default: all registered)")
    p.add_argument("--dataset", default="synthetic", help="dataset for the epoch benchmark (a prepared cache)")
    p.add_argument("--epoch-method", default="aug", help="method for the epoch benchmark")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="NS.KEY=VALUE")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("results/bench"))


def _machine(device: str) -> dict:
    env = environment(torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available())
                                   else "cpu"))
    env["processor"] = platform.processor() or platform.machine()
    env["torch_threads"] = torch.get_num_threads()
    return env


def run(args: argparse.Namespace) -> int:
    shape = SHAPES[args.shape]
    base = merge_overrides({ns: dict(v) for ns, v in shape.items()}, {"train": {"device": args.device}},
                           parse_assignments(args.assignments))
    env = _machine(args.device)
    tag = f"{args.shape}-{'cuda' if 'cuda' in env['device'] else 'cpu'}"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what in ("step", "all"):
        print(f"per-step time, shape {args.shape}, device {env['device']}:")
        rows = bench_steps(base, args.methods, repeats=args.repeats)
        caption = (f"Per-step time on shape '{args.shape}' ({env['device']}, {env.get('gpu', env['processor'])}, "
                   f"torch {env['torch']}, {env['torch_threads']} threads, commit {env['git_commit']})")
        write_json(args.out / f"step-{tag}.json", {"rows": rows, "env": env, "shape": shape})
        atomic_write_text(args.out / f"step-{tag}.md", markdown_steps(rows, caption))
        print(markdown_steps(rows, caption))
    if args.what in ("epoch", "all"):
        overrides = base if args.dataset == "synthetic" else merge_overrides(
            {"train": {"device": args.device}}, parse_assignments(args.assignments))
        cfg = build_config(args.epoch_method, args.dataset, overrides)
        print(f"epoch time, {args.epoch_method} on {args.dataset}:")
        row = bench_epoch(cfg)
        caption = (f"Epoch vs model-only time ({env['device']}, {env.get('gpu', env['processor'])}, "
                   f"commit {env['git_commit']})")
        write_json(args.out / f"epoch-{args.dataset}-{tag}.json", {"rows": [row], "env": env})
        atomic_write_text(args.out / f"epoch-{args.dataset}-{tag}.md", markdown_epoch([row], caption))
        print(markdown_epoch([row], caption))
    return 0
