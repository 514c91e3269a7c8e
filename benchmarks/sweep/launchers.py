"""Launchers: how the unfinished jobs of a sweep get run. Each one hands every job's run folder to
``worker.run_job`` somewhere, and all share the on-disk rules: finished runs are skipped, unfinished ones resume.

- ``local``: a ``python -m benchmarks.sweep RUN_DIR`` subprocess per run, one per GPU (``--gpus``; torchrun on K GPUs
  with ``--gpus-per-run K``) or ``--workers N`` CPU processes, logging to ``<run>/train.log``. On Linux children die
  with the sweep (``PR_SET_PDEATHSIG``; torchrun gets SIGTERM, which it passes on to its ranks).
- ``pool``: ``--workers N`` long-lived processes, one run at a time each; no interpreter start-up per run, for
  sweeps of many short CPU runs (the demo).
- ``slurm``: ``benchmarks.sweep.slurm``.

Local and pool sweeps hold a lock on ``OUT/.sweep.lock`` so that two sweeps never drive the same folder (Slurm
holds it while submitting), and mirror run states into ``OUT/sweep.json`` after each run. Whatever the launcher,
a run is trained under its own ``RUN_DIR/.lock`` (``benchmarks.run_folder.run_lock``).
"""

from __future__ import annotations

import ctypes
import fcntl
import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmarks.data_identity import check_finished_runs
from benchmarks.records import runs_phrase
from benchmarks.sweep.expand import Job, write_sweep_record
from benchmarks.sweep.slurm import SlurmOptions, make_executor, run_slurm, slurm_unavailable
from benchmarks.sweep.spec import SweepConfig
from benchmarks.sweep.worker import run_job_logged, worker_command

Log = Callable[[str], None]


class SweepBusyError(RuntimeError):
    """Another sweep process holds the output folder's lock."""


@dataclass
class LaunchOptions:
    """Every launcher's knobs (each reads its own)."""

    workers: int = 1
    gpus: list[int] | None = None
    gpus_per_run: int = 1
    threads_per_worker: int | None = None
    wandb_mode: str = "disabled"
    wandb_group: str | None = None
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    resubmit: bool = False


@dataclass
class LaunchReport:
    """What a launcher did: runs skipped (already finished), launched, and failed (name -> exit code)."""

    skipped: list[str] = field(default_factory=list)
    launched: list[str] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)


class SweepLock:
    """An exclusive ``flock`` on ``OUT/.sweep.lock`` for the life of a sweep; released by the kernel on any exit."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / ".sweep.lock"
        self.fd: int | None = None

    def __enter__(self) -> "SweepLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise SweepBusyError(f"another sweep is running on {self.path.parent} (lock {self.path}); wait for it "
                                 "or use another --out") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Tracker:
    """The report of a local or pool sweep, mirrored into ``OUT/sweep.json`` after every finished run."""

    def __init__(self, jobs: Sequence[Job], out: Path | None, config: SweepConfig | None, log: Log) -> None:
        self.jobs, self.out, self.config, self.log = jobs, out, config, log
        self.report = LaunchReport()
        self.results: dict[str, dict[str, Any]] = {}

    def pending(self) -> list[Job]:
        done = {job.name for job in self.jobs if job.state() == "done"}
        check_finished_runs([job for job in self.jobs if job.name in done])
        for job in self.jobs:
            owner = job.relabel() if job.name in done else None
            if owner:
                self.log(f"{job.name}: finished under sweep {owner!r}, whose row keeps it; reused here as done")
        self.report.skipped = [job.name for job in self.jobs if job.name in done]
        return [job for job in self.jobs if job.name not in done]

    def finished(self, name: str, code: int, seconds: float, error: str = "") -> None:
        self.results[name] = {"returncode": code, "seconds": round(seconds, 1)}
        done = f"[{len(self.results)}/{len(self.jobs) - len(self.report.skipped)}]"
        if code:
            self.report.failed[name] = code
            self.log(f"{done} FAILED {name} (exit {code}): {error}")
        else:
            self.log(f"{done} done {name} ({seconds:.1f} s)")
        self.write()

    def write(self) -> None:
        if self.out is not None and self.config is not None:
            write_sweep_record(self.out, self.config, self.jobs, self.results)


# --- local: a subprocess per run -------------------------------------------------------------------------------

def _die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Child side of ``Popen``: get ``sig`` when the sweep process dies, so a killed sweep leaves no orphan run
    writing a folder that the restarted sweep would launch again."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, sig)


def _stop_ranks_with_parent() -> None:
    """``_die_with_parent`` for torchrun: SIGTERM, which it forwards to its ranks before exiting. SIGKILL would
    reach torchrun alone and leave the ranks, its grandchildren, training on as orphans."""
    _die_with_parent(signal.SIGTERM)


def local_slots(workers: int, gpus: Sequence[int] | None, gpus_per_run: int = 1,
                threads_per_worker: int | None = None) -> list[dict[str, str]]:
    """Environment additions of each concurrent slot: GPU groups, or ``workers`` CPU processes.

    GPU ids are as this process sees them: under ``CUDA_VISIBLE_DEVICES=2,3``, ``--gpus 0,1`` means devices 2 and 3.
    """
    if gpus:
        if gpus_per_run < 1 or len(gpus) % gpus_per_run:
            raise ValueError(f"--gpus {list(gpus)} cannot be split into groups of --gpus-per-run {gpus_per_run}")
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        names = [visible[g] if g < len(visible) else str(g) for g in gpus] if visible else [str(g) for g in gpus]
        groups = [names[i:i + gpus_per_run] for i in range(0, len(names), gpus_per_run)]
        return [{"CUDA_VISIBLE_DEVICES": ",".join(group)} for group in groups]
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    threads = threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
    return [{"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} for _ in range(workers)]


def run_local(jobs: Sequence[Job], *, workers: int = 1, gpus: Sequence[int] | None = None, gpus_per_run: int = 1,
              out: Path | None = None, config: SweepConfig | None = None, wandb_mode: str = "disabled",
              wandb_group: str | None = None, threads_per_worker: int | None = None, python: str = sys.executable,
              poll_s: float = 0.2, log: Log = print) -> LaunchReport:
    """Run the unfinished ``jobs`` as subprocesses, keeping every slot busy until all are done; a failed run is
    reported and the others go on."""
    slots = local_slots(workers, gpus, gpus_per_run, threads_per_worker)
    tracker = _Tracker(jobs, out, config, log)
    queue = tracker.pending()
    log(f"{len(jobs)} runs: {len(tracker.report.skipped)} finished, {len(queue)} to run on {len(slots)} slot(s)")
    free = list(range(len(slots)))
    running: dict[int, tuple[Job, subprocess.Popen, float]] = {}
    preexec = None
    if sys.platform.startswith("linux"):
        preexec = _stop_ranks_with_parent if gpus and gpus_per_run > 1 else _die_with_parent
    try:
        while queue or running:
            while queue and free:
                job, slot = queue.pop(0), free.pop(0)
                log(f"start [{job.state()}] {job.name} (slot {slot})")
                job.write_files()
                cmd = worker_command(job.run_dir, python=python, wandb_mode=wandb_mode, wandb_group=wandb_group,
                                     gpus_per_run=gpus_per_run if gpus else 1)
                with open(job.run_dir / "train.log", "ab") as logfile:
                    logfile.write(f"$ {shlex.join(cmd)}\n".encode())
                    logfile.flush()
                    proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT,
                                            env={**os.environ, **slots[slot]}, preexec_fn=preexec)
                running[slot] = (job, proc, time.monotonic())
                tracker.report.launched.append(job.name)
            time.sleep(poll_s)
            for slot, (job, proc, started) in list(running.items()):
                if proc.poll() is not None:
                    del running[slot]
                    free.append(slot)
                    tracker.finished(job.name, proc.returncode, time.monotonic() - started,
                                     f"see {job.run_dir / 'train.log'}")
    except BaseException:
        for _, proc, _ in running.values():
            proc.terminate()
        for _, proc, _ in running.values():
            proc.wait()
        raise
    tracker.write()
    return tracker.report


# --- pool: long-lived CPU workers -------------------------------------------------------------------------------

def _pool_init(threads: int) -> None:
    """Pool worker set-up: die with the sweep (Linux), and use ``threads`` intra-op threads."""
    if sys.platform.startswith("linux"):
        _die_with_parent()
    import torch

    torch.set_num_threads(threads)


def _pool_step(task: tuple[str, str, str | None]) -> tuple[str, int, float, str]:
    """``run_job_logged`` inside a pool worker; returns (name, status, seconds, error)."""
    run_dir, wandb_mode, wandb_group = Path(task[0]), task[1], task[2]
    start = time.monotonic()
    try:
        run_job_logged(run_dir, wandb_mode=wandb_mode, wandb_group=wandb_group)
    except Exception as err:  # reported per run (one line; the traceback is in train.log), so the sweep goes on
        return run_dir.name, 1, time.monotonic() - start, f"{type(err).__name__}: {err}"
    return run_dir.name, 0, time.monotonic() - start, ""


def _pool_worker(conn: Connection, threads: int, step: Callable[[tuple[str, str, str | None]], tuple]) -> None:
    """A pool worker's life: ``step`` each task the parent sends until it sends None."""
    _pool_init(threads)
    while (task := conn.recv()) is not None:
        conn.send(step(task))


class _PoolWorker:
    """One long-lived worker process, its pipe, and the run it is on (None while idle).

    The parent watches each worker's own process, so a worker that dies mid-run (SIGKILL, OOM, ``os._exit``) is
    attributed to its run and replaced; ``multiprocessing.Pool`` would replace it too but wait forever for the lost
    task's result.
    """

    def __init__(self, ctx: Any, threads: int) -> None:
        self.conn, child = ctx.Pipe()
        # `_pool_step` is looked up now, not bound at import, so tests can hand workers a step that dies.
        self.proc = ctx.Process(target=_pool_worker, args=(child, threads, _pool_step), daemon=True)
        self.proc.start()
        child.close()
        self.task: tuple[str, str, str | None] | None = None
        self.started = 0.0

    def give(self, task: tuple[str, str, str | None]) -> None:
        self.task, self.started = task, time.monotonic()
        self.conn.send(task)

    def result(self) -> tuple[str, int, float, str]:
        """The finished task's (name, status, seconds, error); a dead worker's run fails with its exit code."""
        name = Path(self.task[0]).name
        try:
            return self.conn.recv()
        except EOFError:
            self.proc.join()
            code = self.proc.exitcode or 1
            return name, code, time.monotonic() - self.started, f"the worker process died (exit {code})"
        finally:
            self.task = None

    def stop(self) -> None:
        # Let the worker exit on its own, so that its exit handlers run and its logs are flushed.
        if self.proc.is_alive():
            self.conn.send(None)
        self.proc.join()
        self.conn.close()


def run_pool(jobs: Sequence[Job], *, workers: int = 1, threads_per_worker: int = 1, out: Path | None = None,
             config: SweepConfig | None = None, wandb_mode: str = "disabled", wandb_group: str | None = None,
             log: Log = print) -> LaunchReport:
    """Run the unfinished ``jobs`` in ``workers`` long-lived processes, one run at a time each; a run whose worker
    dies is reported failed with the worker's exit code, and a fresh worker takes the next run."""
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    tracker = _Tracker(jobs, out, config, log)
    queue = tracker.pending()
    for job in queue:
        job.write_files()
    log(f"{len(jobs)} runs: {len(tracker.report.skipped)} finished, {len(queue)} to run in {workers} worker "
        "process(es)")
    tasks = [(str(job.run_dir), wandb_mode, wandb_group) for job in queue]
    ctx = multiprocessing.get_context("spawn")
    pool = [_PoolWorker(ctx, threads_per_worker) for _ in range(min(workers, len(tasks)))]
    try:
        _drive_pool(pool, tasks, tracker, lambda: _PoolWorker(ctx, threads_per_worker))
    except BaseException:
        for worker in pool:
            worker.proc.terminate()
        raise
    for worker in pool:
        worker.stop()
    tracker.write()
    return tracker.report


def _drive_pool(pool: list[_PoolWorker], tasks: list[tuple[str, str, str | None]], tracker: _Tracker,
                spawn: Callable[[], _PoolWorker]) -> None:
    """Hand ``tasks`` to idle workers until every one has a result, replacing workers that die."""
    while tasks or any(worker.task for worker in pool):
        for i, worker in enumerate(pool):
            if worker.task is None and tasks:
                if not worker.proc.is_alive():
                    worker.stop()
                    pool[i] = worker = spawn()
                worker.give(tasks.pop(0))
        busy = [worker for worker in pool if worker.task]
        # A result or a death: a dead worker's pipe reads as closed, so waiting on the pipes alone is enough.
        ready = wait([worker.conn for worker in busy])
        for worker in busy:
            if worker.conn in ready:
                name, status, seconds, error = worker.result()
                tracker.report.launched.append(name)
                tracker.finished(name, status, seconds, error)


# --- the registry -----------------------------------------------------------------------------------------------

def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count()


def _cuda_problems(pending: Sequence[Job], opts: LaunchOptions) -> list[str]:
    """Runs set to ``train.device=cuda`` on a machine without a CUDA device."""
    cuda = [job for job in pending if job.cfg.train.device == "cuda"]
    if cuda and cuda_device_count() == 0:
        return [f"train.device=cuda in {runs_phrase(len(cuda))} (e.g. {cuda[0].name}), but this machine has no CUDA "
                "device"]
    return []


def _batch_problems(pending: Sequence[Job], ranks: int) -> list[str]:
    """Runs whose global batch does not split over the ``ranks`` data-parallel processes of one run."""
    uneven = [job for job in pending if ranks > 1 and job.cfg.train.batch_size % ranks]
    if uneven:
        return [f"train.batch_size={uneven[0].cfg.train.batch_size} (e.g. {uneven[0].name}; "
                f"{runs_phrase(len(uneven))}) does not split over the {ranks} GPUs of --gpus-per-run {ranks}"]
    return []


def _local_device_problems(pending: Sequence[Job], opts: LaunchOptions) -> list[str]:
    """GPUs of ``--gpus`` this process does not see, or that do not split into ``--gpus-per-run`` groups, and global
    batches that do not split over a run's GPUs."""
    if not opts.gpus:
        return _cuda_problems(pending, opts)
    if not pending:
        return []
    count, gpus = cuda_device_count(), ",".join(map(str, opts.gpus))
    out = []
    absent = [g for g in opts.gpus if not 0 <= g < count]
    if absent:
        out.append(f"--gpus {gpus}: GPU(s) {absent} are not present; this process sees {count} CUDA device(s)")
    if opts.gpus_per_run < 1 or len(opts.gpus) % opts.gpus_per_run:
        out.append(f"--gpus {gpus} cannot be split into groups of --gpus-per-run {opts.gpus_per_run}")
    return out + _batch_problems(pending, opts.gpus_per_run)


def _slurm_device_problems(pending: Sequence[Job], opts: LaunchOptions) -> list[str]:
    """What each job would lack on its node: a GPU for ``train.device=cuda`` runs submitted without one, and a
    global batch that splits over the run's GPUs (the cluster's devices themselves are not visible from here)."""
    ranks = opts.slurm.gpus_per_run
    cuda = [job for job in pending if job.cfg.train.device == "cuda"]
    out = [f"train.device=cuda in {runs_phrase(len(cuda))} (e.g. {cuda[0].name}), but --gpus-per-run 0 gives their "
           "jobs no GPU"] if cuda and ranks < 1 else []
    return out + _batch_problems(pending, ranks)


def _start_local(jobs: Sequence[Job], out: Path, config: SweepConfig, opts: LaunchOptions, log: Log) -> LaunchReport:
    with SweepLock(out):
        write_sweep_record(out, config, jobs)
        return run_local(jobs, workers=opts.workers, gpus=opts.gpus, gpus_per_run=opts.gpus_per_run, out=out,
                         config=config, wandb_mode=opts.wandb_mode, wandb_group=opts.wandb_group,
                         threads_per_worker=opts.threads_per_worker, log=log)


def _start_pool(jobs: Sequence[Job], out: Path, config: SweepConfig, opts: LaunchOptions, log: Log) -> LaunchReport:
    with SweepLock(out):
        write_sweep_record(out, config, jobs)
        return run_pool(jobs, workers=opts.workers, threads_per_worker=opts.threads_per_worker or 1, out=out,
                        config=config, wandb_mode=opts.wandb_mode, wandb_group=opts.wandb_group, log=log)


def _start_slurm(jobs: Sequence[Job], out: Path, config: SweepConfig, opts: LaunchOptions, log: Log) -> LaunchReport:
    check_finished_runs([job for job in jobs if job.state() == "done"])
    # Not while a local or pool sweep drives this folder, nor another submission rewrites slurm_jobs.json; runs
    # that still collide later (a job that starts while a local sweep trains its run) meet the run's own lock.
    with SweepLock(out):
        executor = make_executor(out / ".submitit", opts.slurm, name=f"augbench-{out.name}")
        handles = run_slurm(jobs, executor, out=out, config=config, wandb_mode=opts.wandb_mode,
                            wandb_group=opts.wandb_group, gpus_per_run=opts.slurm.gpus_per_run,
                            resubmit=opts.resubmit, log=log)
    log(f"submitted {len(handles)} job(s); run this command again to resume or to skip finished runs")
    return LaunchReport(skipped=[j.name for j in jobs if j.state() == "done"],
                        launched=[str(h.job_id) for h in handles])


@dataclass(frozen=True)
class Launcher:
    """A registered launcher: ``start`` runs (or submits) the jobs; ``unavailable`` says in one line why it cannot
    work from this machine; ``device_problems`` lists the devices the unfinished jobs would lack here."""

    name: str
    help: str
    start: Callable[[Sequence[Job], Path, SweepConfig, LaunchOptions, Log], LaunchReport]
    device_problems: Callable[[Sequence[Job], LaunchOptions], list[str]]
    unavailable: Callable[[], str | None] = lambda: None


LAUNCHERS = {launcher.name: launcher for launcher in (
    Launcher("local", "a subprocess per run (one per GPU of --gpus, or --workers CPU processes)", _start_local,
             _local_device_problems),
    Launcher("pool", "--workers long-lived CPU processes (no interpreter start-up per run; many short runs)",
             _start_pool, _cuda_problems),
    Launcher("slurm", "one submitit job per run, as a Slurm job array", _start_slurm, _slurm_device_problems,
             slurm_unavailable),
)}
