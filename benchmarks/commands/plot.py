"""``augbench plot RUN_OR_SWEEP_DIR``: training curves of one run, or of every run of a sweep, as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "plot a run's curves (accuracy, per-modality accuracy, loss, method diagnostics) or a sweep's per-method curves"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="a run folder (has metrics.jsonl) or a sweep folder")
    p.add_argument("--out", type=Path, help="PNG file (default: <path>/plots/curves.png or sweep.png)")


def run(args: argparse.Namespace) -> int:
    # matplotlib costs ~1.5 s to import; every augbench command builds this parser, so import it only here.
    from benchmarks.plots import plot_run, plot_sweep

    if not args.path.is_dir():
        raise FileNotFoundError(f"{args.path} is not a folder")
    plot = plot_run if (args.path / "metrics.jsonl").exists() else plot_sweep
    print(f"wrote {plot(args.path, args.out)}")
    return 0
