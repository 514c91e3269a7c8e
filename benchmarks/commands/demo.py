"""``augbench demo``: generate AV-Digits, prepare it, train every method over 3 seeds, write tables and plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.commands import positive_int
from benchmarks.demo import DEMO_CONFIG, default_results, load_demo_config, run_demo
from benchmarks.errors import UsageError

HELP = "offline end-to-end demo on AV-Digits: every method, tables and plots (under runs/; --publish: results/demo)"


def profile_help(profile: str, path: Path = DEMO_CONFIG) -> str:
    """What a profile trains, read from the demo config so the help cannot drift from it."""
    demo = load_demo_config(path, profile)
    seeds, gen, epochs = len(demo["seeds"]), demo["generate"], demo["defaults"]["train"]["epochs"]
    return (f"{seeds} seed{'s' * (seeds != 1)}, {gen['train_clips']} training / {gen['test_clips']} test clips, "
            f"{epochs} epoch{'s' * (epochs != 1)}")


def configure(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help=f"a first look: {profile_help('quick')} (about 2 minutes on 2 cores)")
    mode.add_argument("--smoke", action="store_true", help=f"a pipeline check (CI): {profile_help('smoke')}")
    p.add_argument("--results", type=Path, help="where tables and plots go (default: runs/demo/results, or "
                                                "runs/demo-<profile>/results for --quick/--smoke)")
    p.add_argument("--publish", action="store_true", help="write tables and plots to the tracked results/demo "
                                                          "(results/demo-<profile>) instead of under runs/")
    p.add_argument("--work", type=Path, default=Path("runs/demo-work"),
                   help="data, cache and run folders (default: %(default)s)")
    # Checked here: the training pool refuses 0 only after the data were generated and prepared (minutes).
    p.add_argument("--workers", type=positive_int, default=2, help="training processes (one thread each)")
    p.add_argument("--methods", nargs="+", help="only these rows (default: every registered method)")


def run(args: argparse.Namespace) -> int:
    profile = "quick" if args.quick else "smoke" if args.smoke else None
    if args.publish and args.results:
        raise UsageError("--publish writes results/demo; drop --results or --publish")
    if args.publish and not (Path("results") / "paper").is_dir():
        # Elsewhere it would write a stray results/ here and compare with no earlier run.
        raise UsageError(f"--publish refreshes the repository's results/; run it from the repository root (no "
                         f"results/paper under {Path.cwd()})")
    results = args.results or default_results(profile, args.publish)
    out = run_demo(results=results, work=args.work, profile=profile, workers=args.workers, methods=args.methods)
    print(out["table"])
    print(f"wrote {', '.join(str(p) for p in out['written'])}")
    return 1 if out["summary"]["failed"] else 0
