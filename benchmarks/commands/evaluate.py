"""``augbench evaluate RUN_DIR --missing 0,0.2,0.5``: test-time missing-modality evaluation (AUG Table 5)."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.commands import nonnegative_int, positive_int
from benchmarks.evaluate import DEFAULT_MISSING_RATES, evaluate_missing, parse_rates
from benchmarks.run_folder import missing_result_file, rank0_run_lock, rate_percent

HELP = "evaluate a finished run's final checkpoint with a fraction of samples missing one modality"


def _rates(text: str) -> list[float]:
    try:
        return parse_rates(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a finished run folder")
    p.add_argument("--missing", type=_rates, default=list(DEFAULT_MISSING_RATES),
                   help="comma-separated fractions of samples that lose one modality (default "
                        f"{','.join(f'{r:g}' for r in DEFAULT_MISSING_RATES)})")
    p.add_argument("--split", default="test",
                   help="split to evaluate (default test, the one tables read; another split's result goes to "
                        "missing_modality-<split>.json beside it)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of which samples lose which modality")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: the run's train.device")
    p.add_argument("--batch-size", type=positive_int, help="default: the run's train.eval_batch_size")


def run(args: argparse.Namespace) -> int:
    with rank0_run_lock(args.run_dir):
        out = evaluate_missing(args.run_dir, args.missing, split=args.split, seed=args.seed, device=args.device,
                               batch_size=args.batch_size)
    for row in out["rates"]:
        m = row["metrics"]
        print(f"missing {rate_percent(row['rate'])}: acc {m['acc']:.4f}  macro_f1 {m['macro_f1']:.4f}  "
              f"map {m['map']:.4f}  ({row['n_missing']}/{out['n']} samples missing a modality)")
    print(f"wrote {args.run_dir / missing_result_file(args.split)}")
    return 0
