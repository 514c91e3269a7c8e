"""``python -m benchmarks.sweep RUN_DIR``: run one prepared cell of a sweep (``worker.run_job``); the local
launcher's child process. Users run ``augbench sweep CONFIG``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.records import WANDB_MODES
from benchmarks.run_folder import RunBusyError
from benchmarks.sweep.worker import run_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder holding job.yaml (and job.json)")
    parser.add_argument("--wandb", choices=WANDB_MODES, default="disabled")
    parser.add_argument("--wandb-group")
    args = parser.parse_args(argv)
    try:
        run_job(args.run_dir, wandb_mode=args.wandb, wandb_group=args.wandb_group)
    except RunBusyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
