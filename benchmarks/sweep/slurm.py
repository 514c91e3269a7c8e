"""The Slurm launcher: one ``submitit`` job per unfinished run (optional extra ``augbench[slurm]``), as a job array.

Jobs are checkpointable: on time-out or pre-emption submitit requeues them and they resume from the last epoch.
Submitted job ids go to ``OUT/slurm_jobs.json``; a restart skips runs whose job is still queued or running.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from benchmarks.records import listed, read_json, write_json
from benchmarks.sweep.expand import Job, write_sweep_record
from benchmarks.sweep.spec import SweepConfig
from core.distributed import env_world

# Slurm states after which a job writes nothing more (PREEMPTED and REVOKED are terminal too; a requeued job shows
# PENDING or REQUEUED). Every other state (PENDING, RUNNING, REQUEUED, READY, ..., and UNKNOWN: sacct failed or no
# longer knows the job) counts as active, since listing the active ones instead would resubmit a live job under any
# state the list forgot.
FINISHED_SLURM_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                         "DEADLINE", "PREEMPTED", "REVOKED")
# Runs named in full when their jobs ended unfinished; the rest are counted.
SHOWN_ENDED = 5


class SlurmUnavailableError(RuntimeError):
    """submitit (the ``[slurm]`` extra) is not installed, or this machine has no Slurm commands."""


@dataclass
class SlurmOptions:
    """Resources of one Slurm job (one run). ``gpus_per_run`` > 1 runs one task per GPU (data-parallel)."""

    partition: str | None = None
    time_min: int = 24 * 60
    gpus_per_run: int = 1
    cpus_per_task: int = 8
    mem_gb: int | None = 64
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 64

    def parameters(self, name: str) -> dict[str, Any]:
        """``submitit.AutoExecutor.update_parameters`` arguments."""
        params: dict[str, Any] = {"name": name, "timeout_min": self.time_min, "cpus_per_task": self.cpus_per_task,
                                  "tasks_per_node": max(1, self.gpus_per_run), "nodes": 1,
                                  "slurm_array_parallelism": self.array_parallelism}
        if self.gpus_per_run > 0:
            params["gpus_per_node"] = self.gpus_per_run
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        for key in ("partition", "account", "qos", "constraint"):
            value = getattr(self, key)
            if value is not None:
                params[f"slurm_{key}"] = value
        return params


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise SlurmUnavailableError("the Slurm launcher needs submitit: pip install 'augbench[slurm]'") from None
    return submitit


def slurm_unavailable() -> str | None:
    """Why ``--launcher slurm`` cannot submit from this machine (one line), or None."""
    try:
        _submitit()
    except SlurmUnavailableError as err:
        return str(err)
    absent = [cmd for cmd in ("sbatch", "srun") if shutil.which(cmd) is None]
    if absent:
        return (f"the Slurm launcher needs Slurm's {' and '.join(absent)} on PATH, which this machine lacks; run the "
                "sweep from a Slurm login node, or use --launcher local/pool here")
    return None


def make_executor(folder: Path, options: SlurmOptions, name: str, cluster: str | None = "slurm") -> Any:
    """A ``submitit.AutoExecutor`` for ``cluster`` (``slurm``; ``debug``/``local`` run jobs on this machine)."""
    submitit = _submitit()
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    executor.update_parameters(**options.parameters(name))
    return executor


class TrainJob:
    """The callable a Slurm job runs: ``worker.run_job`` on one run folder.

    It carries only paths and strings, so submitit pickles it by reference to this module. ``checkpoint`` makes it
    requeue itself on time-out or pre-emption; the run then resumes from its last per-epoch checkpoint.
    """

    def __init__(self, run_dir: Path, wandb_mode: str = "disabled", wandb_group: str | None = None,
                 gpus_per_run: int = 1) -> None:
        self.run_dir = Path(run_dir)
        self.wandb_mode = wandb_mode
        self.wandb_group = wandb_group
        self.gpus_per_run = gpus_per_run

    def __call__(self) -> str:
        from benchmarks.sweep.worker import run_job, run_job_logged

        if self.gpus_per_run > 1:
            _submitit().helpers.TorchDistributedEnvironment().export()
        if env_world()[0] == 0:  # rank 0 logs for the run, as under torchrun; submitit's job log gets the lines too
            run_job_logged(self.run_dir, wandb_mode=self.wandb_mode, wandb_group=self.wandb_group, echo=True)
        else:
            run_job(self.run_dir, wandb_mode=self.wandb_mode, wandb_group=self.wandb_group)
        return str(self.run_dir)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


def _slurm_state(folder: Path, job_id: str) -> str:
    """The job's Slurm state word (``CANCELLED by 123`` -> ``CANCELLED``); submitit answers UNKNOWN when sacct fails."""
    state = _submitit().SlurmJob(folder=str(folder), job_id=str(job_id)).state
    return (state.split() or ["UNKNOWN"])[0]


def _active_slurm_jobs(record: Mapping[str, str], folder: Path, log: Callable[[str], None]) -> set[str]:
    """The runs of ``record`` (unfinished runs) whose job may still write its run folder, saying which ones Slurm
    could not tell and which jobs ended without finishing their run (a crash, memory, time limit, cancel), with
    where their logs are: those are submitted again, and a run that fails every time must not go unnoticed."""
    states = {run: _slurm_state(folder, job_id) for run, job_id in record.items()}
    unknown = sorted(run for run, state in states.items() if state == "UNKNOWN")
    if unknown:
        log(f"the Slurm state of {len(unknown)} recorded job(s) is UNKNOWN (sacct failed or no longer knows them; "
            f"e.g. job {record[unknown[0]]} of {unknown[0]}); not submitted again in case they still run. Check "
            "with squeue/sacct, then use --resubmit to submit them anyway")
    ended = sorted(run for run, state in states.items() if state in FINISHED_SLURM_STATES and state != "PREEMPTED")
    if ended:
        named = [f"{run} (job {record[run]}: {states[run]}, log {folder / f'{record[run]}_0_log.err'})"
                 for run in ended]
        log(f"{len(ended)} run(s) whose last Slurm job ended without finishing the run, submitted again: "
            f"{listed(named, SHOWN_ENDED, '; ')}")
    return {run for run, state in states.items() if state not in FINISHED_SLURM_STATES}


def run_slurm(jobs: Sequence[Job], executor: Any, *, out: Path, config: SweepConfig | None = None,
              wandb_mode: str = "disabled", wandb_group: str | None = None, gpus_per_run: int = 1,
              resubmit: bool = False, log: Callable[[str], None] = print) -> list[Any]:
    """Submit every unfinished run as one job of a Slurm array; returns the submitit jobs.

    Runs whose recorded job (``OUT/slurm_jobs.json``) is still queued or running are not submitted again unless
    ``resubmit``.
    """
    record_path = Path(out) / "slurm_jobs.json"
    record: dict[str, str] = read_json(record_path, default={}, remedy=(
        "it records each submitted run's Slurm job: restore it, or delete it once squeue shows none of this sweep's "
        "jobs (else runs still queued or running are submitted again)"))
    unfinished = pending = [job for job in jobs if job.state() != "done"]
    if record and not resubmit:
        active = _active_slurm_jobs({j.name: record[j.name] for j in pending if j.name in record},
                                    Path(executor.folder), log)
        if active:
            log(f"{len(active)} run(s) may still be queued or running on Slurm; not submitted again (--resubmit to "
                "force)")
        pending = [job for job in pending if job.name not in active]
    log(f"{len(jobs)} runs: {len(jobs) - len(unfinished)} finished, {len(unfinished) - len(pending)} active, "
        f"submitting {len(pending)}")
    submitted = []
    if pending:
        with executor.batch():
            for job in pending:
                job.write_files()
                submitted.append(executor.submit(TrainJob(job.run_dir, wandb_mode, wandb_group, gpus_per_run)))
    for job, handle in zip(pending, submitted):
        record[job.name] = str(handle.job_id)
    submitted_names = {job.name for job in pending}
    for job in jobs:
        # Finished and still-active runs too: a row renamed in the config moves them with it.
        if job.name not in submitted_names and job.run_dir.is_dir():
            job.relabel()
    write_json(record_path, record)
    if config is not None:
        write_sweep_record(out, config, jobs)
    return submitted
