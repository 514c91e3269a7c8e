"""One cell of a sweep, whatever process a launcher gives it: ``job.yaml`` -> train (resuming) -> the follow-up
evaluation from ``job.json``. Everything it needs is in the run folder, which the sweep parent wrote.

``python -m benchmarks.sweep RUN_DIR`` (``worker_command``) is the local launcher's child, under ``torchrun`` for
several GPUs; the pool launcher calls ``run_job`` in its worker processes and the Slurm launcher in its jobs.

``run_job`` holds ``RUN_DIR/.lock`` while it trains and evaluates, so two launchers (a local sweep and a Slurm
array, or a restarted sweep and an orphaned rank of the killed one) never write one run folder at once.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from benchmarks.evaluate import evaluate_missing
from benchmarks.records import read_yaml
from benchmarks.run_folder import (
    RunBusyError,
    build_from_sections,
    missing_evaluation_current,
    missing_result_file,
    rank0_run_lock,
    read_job_file,
)
from benchmarks.runner import train_run
from benchmarks.sweep.spec import EvaluateSpec
from core.distributed import env_world


def run_job(run_dir: Path, *, wandb_mode: str = "disabled", wandb_group: str | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the run in ``run_dir`` (resuming; a finished run is not trained again), then its evaluation if its
    ``job.json`` asks for one and it has not been written yet; returns the training summary. Under torchrun every
    rank trains and rank 0 alone evaluates. Rank 0 holds the run's lock throughout (the other ranks write nothing);
    raises ``RunBusyError`` before touching the folder when another process holds it."""
    run_dir = Path(run_dir)
    with rank0_run_lock(run_dir):
        return _train_and_evaluate(run_dir, wandb_mode, wandb_group, log)


def run_job_logged(run_dir: Path, *, wandb_mode: str = "disabled", wandb_group: str | None = None,
                   echo: bool = False) -> dict[str, Any]:
    """``run_job`` with its lines appended to the run's ``train.log`` (and printed too with ``echo``), and the
    traceback of a failure there, as the local launcher's child leaves them (its output goes to that file); the
    pool's workers and Slurm's jobs run this. A run another process holds leaves that process's log alone."""
    run_dir = Path(run_dir)
    with open(run_dir / "train.log", "a") as logfile:
        def log(line: str) -> None:
            if echo:
                print(line, flush=True)
            print(line, file=logfile, flush=True)

        try:
            return run_job(run_dir, wandb_mode=wandb_mode, wandb_group=wandb_group, log=log)
        except RunBusyError:
            raise
        except Exception:
            traceback.print_exc(file=logfile)
            raise


def _train_and_evaluate(run_dir: Path, wandb_mode: str, wandb_group: str | None,
                        log: Callable[[str], None]) -> dict[str, Any]:
    cfg = build_from_sections(read_yaml(run_dir / "job.yaml"))
    summary = train_run(cfg, run_dir, resume=True, wandb_mode=wandb_mode, wandb_group=wandb_group, log=log)
    wanted = read_job_file(run_dir).get("evaluate")
    if wanted and env_world()[0] == 0:
        spec = EvaluateSpec.from_dict(wanted, f"{run_dir / 'job.json'}: evaluate")
        if not missing_evaluation_current(run_dir, split=spec.split, seed=spec.seed, rates=spec.missing,
                                          batch_size=cfg.train.eval_batch_size):
            evaluate_missing(run_dir, spec.missing, split=spec.split, seed=spec.seed)
            log(f"wrote {run_dir / missing_result_file(spec.split)}")
    return summary


def worker_command(run_dir: Path, *, python: str = sys.executable, wandb_mode: str = "disabled",
                   wandb_group: str | None = None, gpus_per_run: int = 1) -> list[str]:
    """The argv that runs ``run_job`` on ``run_dir`` in a fresh process (torchrun when ``gpus_per_run`` > 1)."""
    launcher = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus_per_run}",
                "-m"] if gpus_per_run > 1 else [python, "-m"]
    cmd = launcher + ["benchmarks.sweep", str(run_dir), "--wandb", wandb_mode]
    return cmd + (["--wandb-group", wandb_group] if wandb_group else [])
