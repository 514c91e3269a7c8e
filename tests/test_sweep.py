"""Sweeps: config expansion, run identity, the local launcher (kill + restart + skip), the Slurm job spec."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from benchmarks.cli import main
from benchmarks.collect import build_table, load_runs
from benchmarks.config import build_config, load_config_file
from benchmarks.records import write_yaml
from benchmarks.run_folder import RunBusyError, config_sections, rank0_run_lock
from benchmarks.runner import train_run
from benchmarks.sweep import (
    LAUNCHERS,
    Job,
    LaunchOptions,
    MissingEntriesError,
    SlurmOptions,
    SweepBusyError,
    SweepConfigError,
    SweepLock,
    check_config,
    expand,
    launchers,
    load_config,
    local_slots,
    make_executor,
    parse_config,
    plan,
    run_local,
    run_lock,
    run_pool,
    run_slurm,
    worker_command,
)
from benchmarks.sweep.launchers import _pool_step
from benchmarks.sweep.worker import run_job
from core.hparams import HParamError
from tests.conftest import TINY_DATA, TINY_MODEL, TINY_TRAIN, interrupted_run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "benchmarks" / "configs").glob("*/*.yaml")
                 if p.parent.name in ("aug_neurips25", "balancebenchmark"))


def one_epoch_defaults() -> dict:
    """A sweep's ``defaults`` for runs that train for real: tiny model and data, one epoch."""
    return {"model": dict(TINY_MODEL), "data": dict(TINY_DATA), "train": {**TINY_TRAIN, "epochs": 1}}


def tiny_config(**extra) -> dict:
    doc = {"name": "test/tiny", "seeds": [0, 1], "protocol": "clean",
           "defaults": {"model": dict(TINY_MODEL), "train": dict(TINY_TRAIN), "data": dict(TINY_DATA)},
           "datasets": {"synthetic": {}}, "methods": {"joint": {}, "sum": {}}}
    doc.update(extra)
    return doc


def test_expand_merges_layers_in_order_and_names_runs_by_config_hash(tmp_path):
    config = parse_config(tiny_config(
        seeds=[3],
        datasets={"synthetic": {"train": {"lr": 0.05, "epochs": 3}, "notes": "dataset notes are not knobs"}},
        methods={"ogm_ge": {"ogm_ge": {"alpha": 0.3}, "train": {"lr": 0.02},
                            "per_dataset": {"synthetic": {"ogm_ge": {"mod_end": 7}}},
                            "grid": {"ogm_ge.mod_start": [0, 1]}},
                 "unimodal_v": {"method": "unimodal", "title": "Unimodal (visual)",
                                "unimodal": {"modality": "visual"}}}))
    jobs = expand(config, tmp_path, assignments={"model": {"width": 2}, "ogm_ge": {"alpha": 0.5}})
    assert [j.label for j in jobs] == ["ogm_ge [ogm_ge.mod_start=0]", "ogm_ge [ogm_ge.mod_start=1]", "unimodal_v"]
    first = jobs[0].cfg
    # method section (0.02) beats the dataset section (0.05); --set (0.5) beats the method section (0.3)
    assert (first.train.lr, first.train.epochs, first.train.seed) == (0.02, 3, 3)
    assert (first.method_hp.alpha, first.method_hp.mod_end, first.method_hp.mod_start) == (0.5, 7, 0)
    assert first.model.width == 2 and jobs[2].cfg.train.lr == 0.05 and jobs[2].title == "Unimodal (visual)"
    for job in jobs:
        assert job.run_dir == tmp_path / job.cfg.run_name()
        assert job.cfg.run_name().endswith(job.cfg.digest()) and job.state() == "new"
    assert jobs[0].title == "OGM-GE [ogm_ge.mod_start=0]", "default title = the registered class title"


def test_job_yaml_rebuilds_the_same_run_and_the_command_resumes_it(tmp_path):
    (job,) = expand(parse_config(tiny_config(seeds=[0], methods={"aug": {"aug": {"residual_lambda": 0.2}}})),
                    tmp_path)
    job.write_files()
    sections = yaml.safe_load((job.run_dir / "job.yaml").read_text())
    rebuilt = build_config(sections.pop("method"), sections.pop("dataset"), sections)
    assert rebuilt.digest() == job.cfg.digest() and rebuilt.method_hp.residual_lambda == 0.2
    assert json.loads((job.run_dir / "job.json").read_text())["label"] == "aug"
    cmd = worker_command(job.run_dir, python="py", wandb_mode="offline", wandb_group="g")
    assert cmd[:4] == ["py", "-m", "benchmarks.sweep", str(job.run_dir)]
    assert cmd[cmd.index("--wandb") + 1] == "offline" and cmd[-2:] == ["--wandb-group", "g"]
    ddp = worker_command(job.run_dir, python="py", gpus_per_run=2)
    assert ddp[:7] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                       "benchmarks.sweep"]


def test_unknown_methods_are_listed_unless_skip_missing(tmp_path):
    config = parse_config(tiny_config(methods={"joint": {}, "not_a_method": {}, "also_missing": {}}))
    with pytest.raises(MissingEntriesError, match=r"\['also_missing', 'not_a_method'\]"):
        expand(config, tmp_path)
    jobs = expand(config, tmp_path, skip_missing=True, log=lambda msg: None)
    assert {j.cfg.method for j in jobs} == {"joint"} and len(jobs) == 2


def test_bad_configs_are_errors_that_name_the_key(tmp_path):
    with pytest.raises(SweepConfigError, match="unknown top-level key"):
        parse_config(tiny_config(method="joint"))
    with pytest.raises(SweepConfigError, match=r"methods.joint: unknown key\(s\) \['ogm_ge'\]"):
        parse_config(tiny_config(methods={"joint": {"ogm_ge": {"alpha": 1}}}))
    with pytest.raises(HParamError, match=r"methods.joint on synthetic: unknown hyperparameter\(s\) \['train.lrr'\]"):
        expand(parse_config(tiny_config(methods={"joint": {"train": {"lrr": 1}}})), tmp_path)
    with pytest.raises(SweepConfigError, match="same run"):
        expand(parse_config(tiny_config(methods={"joint": {}, "again": {"method": "joint"}})), tmp_path)
    with pytest.raises(SweepConfigError, match="match no method"):
        expand(parse_config(tiny_config()), tmp_path, assignments={"ogm_ge": {"alpha": 1}})


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_resolve_every_registered_section(path):
    config = load_config(path)
    missing = check_config(config)
    assert set(missing) <= {"method ml_lstm", "dataset twitter2015", "dataset sarcasm", "dataset nvgesture"}
    assert str(path.relative_to(ROOT)) in config.doc["command"], "the config states its own exact command"
    assert config.doc["paper"] and config.protocol in ("paper", "clean", "last")


def test_balancebenchmark_runs_follow_its_global_optimiser_and_schedule(tmp_path):
    # BB @4909c17 configs/global_config.yaml: SGD 1e-3, momentum 0.9, wd 1e-4, StepLR(30, 0.1) stepped per epoch.
    # Its ReconBoost trainer runs, per epoch and modality, one boosting and one correction pass with that optimiser
    # (variant bb: the train.* optimiser, shared by both steps).
    jobs = plan(load_config(ROOT / "benchmarks" / "configs" / "balancebenchmark" / "results.yaml"), tmp_path).jobs
    for job in jobs:
        train = job.cfg.train
        assert (train.lr, train.momentum, train.weight_decay) == (1e-3, 0.9, 1e-4)
        if job.cfg.method == "reconboost":
            hp = job.cfg.method_hp
            assert hp.variant == "bb" and hp.shared_optimizer and hp.head == "linear"
            assert (hp.modality_epochs, hp.correct_epochs, hp.pretrain) == (1, 1, False)
            assert (train.epochs, train.lr_milestones) == (70 * 2 * 2, [30 * 4, 60 * 4])
        else:
            assert (train.epochs, train.lr_milestones) == (70, [30, 60])


@pytest.mark.parametrize("dataset", ["cremad", "kinetics_sounds", "vggsound", "twitter2015", "sarcasm", "nvgesture"])
def test_table1_trains_aug_as_its_single_run_recipe_does(tmp_path, dataset):
    # The per-dataset AUG recipes and AUG Table 1 state one setting each; a table must not drift from its recipe.
    recipe_head, recipe = load_config_file(ROOT / "benchmarks" / "configs" / "aug" / f"{dataset}.yaml")
    single = build_config("aug", dataset, recipe)
    (job,) = [j for j in plan(load_config(ROOT / "benchmarks" / "configs" / "aug_neurips25" / "table1.yaml"), tmp_path,
                              seeds=[0], methods=["aug"], datasets=[dataset]).jobs]
    keys = ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "lr_milestones", "lr_gamma")
    assert {k: job.cfg.train[k] for k in keys} == {k: single.train[k] for k in keys}
    assert job.cfg.method_hp.as_dict() == single.method_hp.as_dict()
    data = ("recipe", "frames", "frame_rule") if dataset in ("cremad", "kinetics_sounds", "vggsound") else ()
    assert {k: job.cfg.data[k] for k in data} == {k: single.data[k] for k in data}


def test_local_slots_split_gpus_into_groups_and_cpu_workers(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert local_slots(1, [0, 1, 2, 3], gpus_per_run=2) == [{"CUDA_VISIBLE_DEVICES": "0,1"},
                                                            {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert local_slots(3, None, threads_per_worker=1) == [{"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}] * 3
    with pytest.raises(ValueError, match="groups"):
        local_slots(1, [0, 1, 2], gpus_per_run=2)


def test_local_slots_share_the_cpus_among_workers_and_refuse_zero_workers_or_group_size(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert local_slots(3, None) == [{"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}] * 3
    assert local_slots(16, None)[0]["OMP_NUM_THREADS"] == "1", "more workers than cores still get one thread each"
    with pytest.raises(ValueError, match="--workers must be >= 1, got 0"):
        local_slots(0, None)
    with pytest.raises(ValueError, match="groups of --gpus-per-run 0"):
        local_slots(1, [0, 1], gpus_per_run=0)


class _ExitedRun:
    """A run's subprocess that has already exited with the code ``codes`` gives its run folder."""

    codes: dict[str, int] = {}
    started: list["_ExitedRun"] = []

    def __init__(self, cmd, **kwargs):
        self.cmd, self.env = cmd, kwargs["env"]
        self.run = Path(cmd[cmd.index("benchmarks.sweep") + 1]).name
        self.returncode = self.codes[self.run]
        self.started.append(self)

    def poll(self):
        return self.returncode


def test_local_runs_get_their_slots_devices_in_order_and_each_failure_names_its_run_code_and_log(tmp_path,
                                                                                                 monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,6")
    monkeypatch.setattr("subprocess.Popen", _ExitedRun)
    monkeypatch.setattr(_ExitedRun, "started", [])
    out = tmp_path / "out"
    config = parse_config(tiny_config())
    done, killed, failed, ok = jobs = expand(config, out)
    done.run_dir.mkdir(parents=True)
    (done.run_dir / "DONE").write_text("")
    (done.run_dir / "summary.json").write_text("{}")
    killed.run_dir.mkdir(parents=True)
    (killed.run_dir / "train.log").write_text("the interrupted attempt\n")
    monkeypatch.setattr(_ExitedRun, "codes", {killed.name: -signal.SIGKILL, failed.name: 3, ok.name: 0})
    polls = []

    def sleep(seconds):
        # every run exits at once, so a sweep still polling after many rounds has lost a slot
        polls.append(seconds)
        assert len(polls) < 50, "the sweep stopped handing runs to its freed slots"

    monkeypatch.setattr(launchers.time, "sleep", sleep)
    lines = []
    report = run_local(jobs, gpus=[1, 0], out=out, config=config, log=lines.append, poll_s=0)
    assert report.launched == [killed.name, failed.name, ok.name] and report.skipped == [done.name]
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in _ExitedRun.started] == ["6", "5", "6"], "the slot's GPU wins"
    assert report.failed == {killed.name: -signal.SIGKILL, failed.name: 3}, "a signal is a failure too"
    assert f"[1/3] FAILED {killed.name} (exit -9): see {killed.run_dir / 'train.log'}" in lines
    assert f"[2/3] FAILED {failed.name} (exit 3): see {failed.run_dir / 'train.log'}" in lines
    log = (killed.run_dir / "train.log").read_text()
    assert log.startswith("the interrupted attempt\n$ ") and "benchmarks.sweep" in log, "a relaunch appends"
    runs = {r["run"]: r for r in json.loads((out / "sweep.json").read_text())["runs"]}
    assert [runs[job.name].get("returncode") for job in jobs] == [None, -signal.SIGKILL, 3, 0]
    assert all(runs[job.name]["seconds"] >= 0 for job in (killed, failed, ok))
    (out / "sweep.json").unlink()
    run_local([done], out=out, config=config, log=lambda line: None, poll_s=0)
    assert [r["state"] for r in json.loads((out / "sweep.json").read_text())["runs"]] == ["done"], "nothing to run"

    _ExitedRun.started.clear()
    run_local([ok], workers=2, gpus_per_run=2, threads_per_worker=1, log=lambda line: None, poll_s=0)
    (cpu,) = _ExitedRun.started
    assert "torch.distributed.run" not in cpu.cmd and cpu.env["OMP_NUM_THREADS"] == "1", "no GPUs: one process"


def test_a_local_sweep_that_fails_to_start_a_run_stops_the_runs_it_started(tmp_path, monkeypatch):
    started = []

    class Running:
        def __init__(self, cmd, **kwargs):
            if started:
                raise OSError(errno.EAGAIN, "fork failed")
            self.stopped = self.waited = False
            started.append(self)

        def poll(self):
            return None

        def terminate(self):
            self.stopped = True

        def wait(self):
            self.waited = True

    monkeypatch.setattr("subprocess.Popen", Running)
    jobs = expand(parse_config(tiny_config(seeds=[0])), tmp_path)
    with pytest.raises(OSError, match="fork failed"):
        run_local(jobs, workers=2, threads_per_worker=1, log=lambda line: None, poll_s=0)
    assert [(p.stopped, p.waited) for p in started] == [(True, True)]


def _sweep_parent(jobs: list[Job]) -> None:
    run_local(jobs, workers=1, threads_per_worker=1, log=lambda msg: None, poll_s=0.05)


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def _protocols(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())["protocols"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork + /proc + PR_SET_PDEATHSIG")
def test_local_sweep_killed_midway_resumes_to_the_uninterrupted_result_and_skips_finished_runs(tmp_path):
    data = {**TINY_DATA, "n_train": 256}
    config = parse_config(tiny_config(defaults={"model": dict(TINY_MODEL), "data": data,
                                                "train": {**TINY_TRAIN, "epochs": 3}}))
    out = tmp_path / "sweep"
    jobs = expand(config, out)
    assert len(jobs) == 4

    # The sweep parent is a forked copy of this process (no interpreter start-up); its children are real
    # `python -m benchmarks train` processes.
    parent = multiprocessing.get_context("fork").Process(target=_sweep_parent, args=(jobs,))
    parent.start()
    deadline = time.time() + 240
    while time.time() < deadline and not any(j.state() == "resume" for j in jobs):
        time.sleep(0.01)
    parent.kill()
    parent.join()
    assert any(j.state() == "resume" for j in jobs), "no run reached its first checkpoint in time"
    assert not all(j.state() == "done" for j in jobs)
    time.sleep(0.5)
    assert not _processes_mentioning(str(out)), "training children must die with the sweep"

    report = run_local(jobs, workers=4, threads_per_worker=1, log=lambda msg: None, poll_s=0.05)
    assert not report.failed and set(report.launched) | set(report.skipped) == {j.name for j in jobs}
    assert all(j.state() == "done" for j in jobs)
    for job in jobs:
        reference = train_run(job.cfg, tmp_path / "reference" / job.name, log=lambda msg: None)
        assert _protocols(job.run_dir) == json.loads(json.dumps(reference["protocols"])), job.name
        lines = (job.run_dir / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]

    again = run_local(jobs, workers=2, log=lambda msg: None)
    assert again.launched == [] and sorted(again.skipped) == sorted(j.name for j in jobs)


def test_cli_dry_run_lists_states_and_unknown_methods_fail_cleanly(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tiny_config(methods={"joint": {}, "nope": {}})))
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    assert "unregistered method(s) ['nope']" in capsys.readouterr().err
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--dry-run", "--skip-missing",
                 "--seeds", "5"]) == 0
    out = capsys.readouterr().out
    assert "1 runs in" in out and "new" in out and "seed5" in out
    assert not (tmp_path / "out").exists(), "a dry run writes nothing"


def test_slurm_launcher_job_spec_and_debug_execution(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    options = SlurmOptions(partition="gpu", time_min=90, gpus_per_run=2, cpus_per_task=4, mem_gb=16, account="acc")
    monkeypatch.setattr(submitit.slurm.slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    executor = make_executor(tmp_path / "submitit", options, name="augbench-test")
    script = submitit.slurm.slurm._make_sbatch_string(command="CMD", folder=str(tmp_path),
                                                      **executor._executor.parameters)
    for flag in ("--partition=gpu", "--time=90", "--gpus-per-node=2", "--ntasks-per-node=2", "--cpus-per-task=4",
                 "--mem=16GB", "--account=acc", "--job-name=augbench-test", "--signal=USR2"):
        assert f"#SBATCH {flag}" in script, flag

    config = parse_config(tiny_config(seeds=[0], methods={"joint": {}}, defaults=one_epoch_defaults()))
    out = tmp_path / "out"
    jobs = expand(config, out)
    debug = make_executor(tmp_path / "submitit", SlurmOptions(), name="augbench-test", cluster="debug")
    (handle,) = run_slurm(jobs, debug, out=out, config=config, log=lambda msg: None)
    assert handle.result() == str(jobs[0].run_dir)
    assert jobs[0].state() == "done"
    assert "epoch 0 |" in (jobs[0].run_dir / "train.log").read_text(), "a Slurm run logs to its train.log too"
    assert json.loads((out / "slurm_jobs.json").read_text()) == {jobs[0].name: str(handle.job_id)}
    assert run_slurm(jobs, debug, out=out, log=lambda msg: None) == [], "finished runs are not submitted again"
    assert hasattr(handle.submission().function, "checkpoint"), "jobs requeue on time-out and resume"


def _step_killing_sum_runs(task: tuple) -> tuple:
    """A pool step whose worker is SIGKILLed (as by the OOM killer) on the ``sum`` run; other runs train."""
    if "-sum-" in task[0]:
        os.kill(os.getpid(), signal.SIGKILL)
    return _pool_step(task)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL")
def test_pool_worker_killed_mid_run_fails_that_run_and_the_others_go_on(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.sweep.launchers._pool_step", _step_killing_sum_runs)
    config = parse_config(tiny_config(seeds=[0], methods={"sum": {}, "joint": {}}, defaults=one_epoch_defaults()))
    jobs = expand(config, tmp_path / "out")
    lines, reports = [], []
    sweep = threading.Thread(target=lambda: reports.append(run_pool(jobs, workers=1, log=lines.append)), daemon=True)
    sweep.start()
    sweep.join(timeout=180)
    assert not sweep.is_alive(), f"the pool sweep hangs after its worker died: {lines}"
    (sum_run,) = [job.name for job in jobs if "-sum-" in job.name]
    assert reports[0].failed == {sum_run: -signal.SIGKILL}
    assert any(f"FAILED {sum_run} (exit -9)" in line for line in lines), lines
    assert [job.state() for job in jobs if job.name != sum_run] == ["done"]


def test_a_pool_run_that_fails_leaves_its_traceback_in_its_train_log(tmp_path):
    # The console shows one line; the traceback had been nowhere.
    config = parse_config(tiny_config(seeds=[0], methods={"joint": {}}, defaults=one_epoch_defaults()))
    (job,) = expand(config, tmp_path / "out")
    job.write_files()
    (job.run_dir / "checkpoint.pt").write_bytes(b"cut short")
    name, status, _, error = _pool_step((str(job.run_dir), "disabled", None))
    assert (name, status) == (job.name, 1) and error.startswith("DamagedFileError: ")
    log = (job.run_dir / "train.log").read_text()
    assert "Traceback (most recent call last)" in log and log.rstrip().splitlines()[-1].startswith(
        "benchmarks.records.DamagedFileError: ")


def test_a_run_another_process_holds_fails_clearly_and_is_left_untouched(tmp_path):
    config = parse_config(tiny_config(seeds=[0], methods={"joint": {}}, defaults=one_epoch_defaults()))
    (job,) = expand(config, tmp_path / "out")
    job.write_files()
    lines = []
    with run_lock(job.run_dir):
        report = run_pool([job], workers=1, log=lines.append)
    assert list(report.failed) == [job.name]
    (failed,) = [line for line in lines if "FAILED" in line]
    assert f"run folder {job.run_dir} is in use by another process (pid {os.getpid()} on" in failed
    assert job.state() == "new"
    assert sorted(p.name for p in job.run_dir.iterdir()) == [".lock", "job.json", "job.yaml", "train.log"]
    assert (job.run_dir / "train.log").read_text() == ""


def test_train_and_evaluate_commands_respect_the_run_lock(tmp_path, capsys):
    run_dir = tmp_path / "run"
    common = ["--method", "joint", "--dataset", "synthetic", "--run-dir", str(run_dir), "--wandb", "disabled",
              "--no-progress", "--epochs", "1", "--set", "model.width=4", "--set", "model.blocks=[1,1,1,1]",
              "--set", "data.n_train=32"]
    assert main(["train", *common]) == 0
    before = (run_dir / "metrics.jsonl").read_text()
    with run_lock(run_dir):
        assert main(["train", *common, "--extend-epochs", "3"]) == 2
        assert main(["evaluate", str(run_dir), "--missing", "0"]) == 2
    assert capsys.readouterr().err.count(f"run folder {run_dir} is in use by another process") == 2
    assert (run_dir / "metrics.jsonl").read_text() == before and not (run_dir / "missing_modality.json").exists()


def test_a_fresh_run_folder_is_locked_from_the_start_and_removed_if_nothing_was_written(tmp_path):
    run_dir = tmp_path / "fresh"
    with rank0_run_lock(run_dir):
        assert (run_dir / ".lock").exists()
        with pytest.raises(RunBusyError, match=f"run folder {run_dir} is in use"):
            with rank0_run_lock(run_dir):
                pass
    assert not run_dir.exists(), "a run that wrote nothing leaves no folder"
    with rank0_run_lock(run_dir):
        (run_dir / "config.yaml").write_text("x")
    assert (run_dir / "config.yaml").exists()


def test_a_run_another_sweep_filed_keeps_its_row_when_this_sweep_evaluates_it(tmp_path):
    out = tmp_path / "out"
    (mine,) = expand(parse_config(tiny_config(name="test/a", seeds=[0], methods={"joint": {}})), out)
    mine.write_files()
    evaluate = {"missing": [0.0, 0.5]}
    (theirs,) = expand(parse_config(tiny_config(name="test/b", seeds=[0], evaluate=evaluate,
                                                methods={"concat": {"method": "joint", "title": "Concat (b)"}})), out)
    theirs.write_files()
    job = json.loads((mine.run_dir / "job.json").read_text())
    assert (job["label"], job["title"], job["sweep"], job["evaluate"]["missing"]) == (
        "joint", "Concat", "test/a", [0.0, 0.5])
    (mine.run_dir / "job.json").write_text('{"label": "jo')  # damaged: rewritten whole, not fatal
    assert mine.relabel() is None and json.loads((mine.run_dir / "job.json").read_text())["label"] == "joint"


def test_a_filesystem_without_flock_runs_unlocked_with_a_warning(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr("fcntl.flock", no_flock)
    with pytest.warns(UserWarning, match="this filesystem has no flock"):
        with run_lock(tmp_path):
            pass


def test_a_busy_run_folder_names_the_process_holding_it_and_nothing_an_earlier_holder_left(tmp_path):
    (tmp_path / ".lock").write_text("pid 99999999 on a-host-with-a-long-name-that-ran-this-run-before\n")
    with run_lock(tmp_path):
        with pytest.raises(RunBusyError) as busy:
            with run_lock(tmp_path):
                pass
    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    assert f"is in use by another process ({holder}); not started" in str(busy.value)


@pytest.mark.parametrize("code", [errno.EACCES, errno.EIO])
def test_a_flock_failure_other_than_no_flock_support_is_raised_not_run_unlocked(tmp_path, monkeypatch, code):
    def failing_flock(fd, op):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("fcntl.flock", failing_flock)
    with pytest.raises(OSError) as raised:
        with run_lock(tmp_path):
            pytest.fail("the run went ahead unlocked")
    assert raised.value.errno == code


def test_slurm_submission_refuses_a_folder_a_local_sweep_drives(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.sweep.launchers.run_slurm", lambda *a, **k: pytest.fail("submitted"))
    config = parse_config(tiny_config(seeds=[0]))
    out = tmp_path / "out"
    with SweepLock(out), pytest.raises(SweepBusyError, match="another sweep is running"):
        LAUNCHERS["slurm"].start(expand(config, out), out, config, LaunchOptions(), lambda line: None)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
def test_torchrun_children_are_stopped_with_sigterm_which_torchrun_forwards_to_its_ranks(tmp_path, monkeypatch):
    started = []

    class Done:
        returncode = 0

        def __init__(self, cmd, **kwargs):
            started.append((cmd, kwargs["preexec_fn"]))

        def poll(self):
            return 0

    monkeypatch.setattr("subprocess.Popen", Done)
    jobs = expand(parse_config(tiny_config(seeds=[0], methods={"joint": {}})), tmp_path)
    run_local(jobs, gpus=[0, 1], gpus_per_run=2, log=lambda line: None, poll_s=0)
    run_local(jobs, workers=1, log=lambda line: None, poll_s=0)
    (torchrun, torchrun_preexec), (single, single_preexec) = started
    assert "torch.distributed.run" in torchrun and "torch.distributed.run" not in single
    assert torchrun_preexec is launchers._stop_ranks_with_parent and single_preexec is launchers._die_with_parent


class _FakeExecutor:
    """Records what ``run_slurm`` submits; job ids count from 9000."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.submitted, self.tasks, self.batched = folder, [], [], False

    @contextlib.contextmanager
    def batch(self):
        self.batched = True
        yield
        self.batched = False

    def submit(self, fn):
        assert self.batched, "a run submitted as a job of its own, not as a task of the sweep's array"
        self.submitted.append(fn.run_dir.name)
        self.tasks.append(fn)
        return type("Handle", (), {"job_id": str(9000 + len(self.submitted))})()


def test_slurm_jobs_in_any_unfinished_or_unknown_state_are_not_submitted_again(tmp_path, monkeypatch):
    out = tmp_path / "out"
    jobs = expand(parse_config(tiny_config()), out)
    states = dict(zip([job.name for job in jobs], ["REQUEUED", "UNKNOWN", "PREEMPTED"]))
    out.mkdir()
    (out / "slurm_jobs.json").write_text(json.dumps({name: str(i) for i, name in enumerate(states)}))
    monkeypatch.setattr("benchmarks.sweep.slurm._slurm_state",
                        lambda folder, job_id: states[list(states)[int(job_id)]].split()[0])
    executor, lines = _FakeExecutor(tmp_path / "submitit"), []
    run_slurm(jobs, executor, out=out, log=lines.append)
    assert executor.submitted == [jobs[2].name, jobs[3].name], "preempted and never-submitted runs only"
    assert any("UNKNOWN (sacct failed" in line and jobs[1].name in line and "--resubmit" in line for line in lines)
    executor = _FakeExecutor(tmp_path / "submitit")
    run_slurm(jobs, executor, out=out, resubmit=True, log=lines.append)
    assert executor.submitted == [job.name for job in jobs]


def test_slurm_names_the_runs_whose_jobs_ended_unfinished_when_it_submits_them_again(tmp_path, monkeypatch):
    # A run that fails on every submission (a bug, memory) was resubmitted on each rerun without a word.
    out = tmp_path / "out"
    failed, oom, preempted, new = jobs = expand(parse_config(tiny_config()), out)
    out.mkdir()
    (out / "slurm_jobs.json").write_text(json.dumps({failed.name: "42_0", oom.name: "42_3", preempted.name: "43_1"}))
    states = {"42_0": "FAILED", "42_3": "OUT_OF_MEMORY", "43_1": "PREEMPTED"}
    monkeypatch.setattr("benchmarks.sweep.slurm._slurm_state", lambda folder, job_id: states[job_id])
    executor, lines = _FakeExecutor(tmp_path / "submitit"), []
    run_slurm(jobs, executor, out=out, log=lines.append)
    assert executor.submitted == [job.name for job in jobs]
    (line,) = [x for x in lines if "ended without finishing" in x]
    assert line.startswith("2 run(s) whose last Slurm job ended without finishing the run, submitted again: ")
    assert f"{failed.name} (job 42_0: FAILED, log {tmp_path / 'submitit' / '42_0_0_log.err'})" in line
    assert f"{oom.name} (job 42_3: OUT_OF_MEMORY" in line and preempted.name not in line
    assert "4 runs: 0 finished, 0 active, submitting 4" in lines


def test_a_damaged_slurm_job_record_says_what_the_file_is_and_how_to_recover(tmp_path):
    from benchmarks.records import DamagedFileError

    out = tmp_path / "out"
    jobs = expand(parse_config(tiny_config()), out)
    out.mkdir()
    (out / "slurm_jobs.json").write_text('{"run": "4')
    with pytest.raises(DamagedFileError, match=r"slurm_jobs.json is damaged: not valid JSON .*it records each "
                                               r"submitted run's Slurm job: restore it, or delete it once squeue"):
        run_slurm(jobs, _FakeExecutor(tmp_path / "submitit"), out=out, log=lambda line: None)


def test_slurm_submits_every_unfinished_run_as_one_array_and_records_each_runs_own_job(tmp_path, monkeypatch):
    from benchmarks.runner import CHECKPOINT

    out = tmp_path / "out"
    config = parse_config(tiny_config())
    done, resumed, new, active = jobs = expand(config, out)
    for job in (done, resumed):
        job.run_dir.mkdir(parents=True)
    (done.run_dir / "DONE").write_text("")
    (done.run_dir / "summary.json").write_text("{}")
    (resumed.run_dir / CHECKPOINT).write_bytes(b"")
    (out / "slurm_jobs.json").write_text(json.dumps({active.name: "77", done.name: "5"}))
    monkeypatch.setattr("benchmarks.sweep.slurm._slurm_state",
                        lambda folder, job_id: {"77": "RUNNING", "5": "COMPLETED"}[job_id])
    executor, lines = _FakeExecutor(tmp_path / "submitit"), []
    run_slurm(jobs, executor, out=out, config=config, wandb_mode="offline", gpus_per_run=2, log=lines.append)
    assert "4 runs: 1 finished, 1 active, submitting 2" in lines
    assert executor.submitted == [resumed.name, new.name], "a run with a checkpoint is submitted to resume"
    assert [(t.run_dir, t.wandb_mode, t.gpus_per_run) for t in executor.tasks] == [
        (resumed.run_dir, "offline", 2), (new.run_dir, "offline", 2)]
    assert json.loads((out / "slurm_jobs.json").read_text()) == {
        active.name: "77", done.name: "5", resumed.name: "9001", new.name: "9002"}
    assert (new.run_dir / "job.yaml").exists(), "a task reads its run's config from the folder"
    assert json.loads((done.run_dir / "job.json").read_text())["label"] == done.label
    states = {r["run"]: r["state"] for r in json.loads((out / "sweep.json").read_text())["runs"]}
    assert states == {done.name: "done", resumed.name: "resume", new.name: "new", active.name: "new"}


def test_the_slurm_launcher_names_its_jobs_after_the_output_folder_and_logs_under_it(tmp_path, monkeypatch):
    made, executors = [], []

    def executor(folder, options, name):
        made.append((folder, options.gpus_per_run, name))
        executors.append(_FakeExecutor(folder))
        return executors[-1]

    monkeypatch.setattr(launchers, "make_executor", executor)
    out = tmp_path / "out"
    config = parse_config(tiny_config(seeds=[0]))
    jobs = expand(config, out)
    opts = LaunchOptions(slurm=SlurmOptions(gpus_per_run=2))
    report = LAUNCHERS["slurm"].start(jobs, out, config, opts, lambda line: None)
    assert made == [(out / ".submitit", 2, "augbench-out")] and report.launched == ["9001", "9002"]
    assert [task.gpus_per_run for task in executors[0].tasks] == [2, 2], "each task gets the Slurm job's GPUs"


def test_the_slurm_launcher_reports_finished_runs_as_skipped_and_submits_only_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr(launchers, "make_executor", lambda folder, options, name: _FakeExecutor(folder))
    out = tmp_path / "out"
    config = parse_config(tiny_config(seeds=[0]))
    done, rest = expand(config, out)
    done.run_dir.mkdir(parents=True)
    (done.run_dir / "DONE").write_text("")
    (done.run_dir / "summary.json").write_text("{}")
    report = LAUNCHERS["slurm"].start([done, rest], out, config, LaunchOptions(), lambda line: None)
    assert (report.skipped, report.launched, report.failed) == ([done.name], ["9001"], {})


def test_local_gpu_ids_outside_the_visible_range_are_named_including_negative_ones(tmp_path, monkeypatch):
    # A negative id would index CUDA_VISIBLE_DEVICES from its end and run on a device nobody listed.
    monkeypatch.setattr(launchers, "cuda_device_count", lambda: 2)
    (job,) = expand(parse_config(tiny_config(seeds=[0], methods={"joint": {}})), tmp_path)
    problems = launchers._local_device_problems([job], LaunchOptions(gpus=[-1, 1, 2]))
    assert problems == ["--gpus -1,1,2: GPU(s) [-1, 2] are not present; this process sees 2 CUDA device(s)"]


def _sbatch_script(tmp_path: Path, monkeypatch, options: SlurmOptions, **extra) -> list[str]:
    submitit = pytest.importorskip("submitit")
    monkeypatch.setattr(submitit.slurm.slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    executor = make_executor(tmp_path / "submitit", options, name="augbench-test")
    return submitit.slurm.slurm._make_sbatch_string(command="CMD", folder=str(tmp_path),
                                                    **executor._executor.parameters, **extra).splitlines()


def test_slurm_script_arrays_the_runs_asks_one_gpu_by_default_and_writes_only_the_options_given(tmp_path, monkeypatch):
    lines = _sbatch_script(tmp_path, monkeypatch, SlurmOptions(qos="high", constraint="a100", mem_gb=None),
                           map_count=100)
    for flag in ("--array=0-99%64", "--gpus-per-node=1", "--ntasks-per-node=1", "--qos=high", "--constraint=a100"):
        assert f"#SBATCH {flag}" in lines, flag
    assert not any(line.startswith("#SBATCH --mem") for line in lines), "no memory request unless one is given"
    cpu = _sbatch_script(tmp_path, monkeypatch, SlurmOptions(gpus_per_run=0))
    sbatch = [line for line in cpu if line.startswith("#SBATCH")]
    assert "#SBATCH --ntasks-per-node=1" in sbatch and not any("gpus" in line for line in sbatch)


def test_a_slurm_task_trains_its_run_with_the_sweeps_wandb_settings_and_requeues_itself(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    from types import SimpleNamespace

    from benchmarks.sweep.slurm import TrainJob, _slurm_state

    calls = []

    def run_job(run_dir, log, **kwargs):
        log("trained")
        calls.append((run_dir, kwargs))

    monkeypatch.setattr("benchmarks.sweep.worker.run_job", run_job)
    (tmp_path / "run").mkdir()
    task = TrainJob(tmp_path / "run", "offline", "g")
    assert task() == str(tmp_path / "run")
    assert calls == [(tmp_path / "run", {"wandb_mode": "offline", "wandb_group": "g"})]
    assert (tmp_path / "run" / "train.log").read_text() == "trained\n"
    assert task.checkpoint().function is task, "a requeued job trains the same run on"
    states = {"1": "CANCELLED by 123", "2": ""}
    monkeypatch.setattr(submitit, "SlurmJob", lambda folder, job_id: SimpleNamespace(state=states[job_id]))
    assert (_slurm_state(tmp_path, "1"), _slurm_state(tmp_path, "2")) == ("CANCELLED", "UNKNOWN")


def test_a_finished_run_another_sweep_filed_keeps_its_row_there(tmp_path):
    defaults = one_epoch_defaults()
    out = tmp_path / "out"
    (first,) = expand(parse_config(tiny_config(name="test/a", seeds=[0], methods={"joint": {}}, defaults=defaults)),
                      out)
    assert not run_pool([first], workers=1, log=lambda line: None).failed
    (other,) = expand(parse_config(tiny_config(name="test/b", seeds=[0], methods={"concat": {"method": "joint"}},
                                               defaults=defaults)), out)
    lines = []
    assert run_pool([other], workers=1, log=lines.append).skipped == [other.name]
    assert json.loads((first.run_dir / "job.json").read_text())["label"] == "joint"
    assert any("finished under sweep 'test/a'" in line for line in lines)
    with pytest.raises(ValueError, match="--workers must be >= 1, got 0"):
        run_pool([other], workers=0)


def test_renaming_a_row_moves_its_finished_runs_with_it(tmp_path):
    defaults = one_epoch_defaults()
    out = tmp_path / "out"
    (first,) = expand(parse_config(tiny_config(seeds=[0], methods={"joint": {}}, defaults=defaults)), out)
    assert not run_pool([first], workers=1, log=lambda line: None).failed
    renamed = expand(parse_config(tiny_config(seeds=[0, 1], methods={"concat": {"method": "joint"}},
                                              defaults=defaults)), out)
    assert renamed[0].run_dir == first.run_dir, "same config, same run"
    report = run_pool(renamed, workers=1, log=lambda line: None)
    assert report.skipped == [first.name] and not report.failed
    assert json.loads((first.run_dir / "job.json").read_text())["label"] == "concat"
    (row,) = build_table(load_runs(out), protocol="clean").rows
    assert {cell.n for cell in row[1]} == {2}


def test_table_without_config_reports_the_protocol_the_sweep_recorded(tmp_path, capsys):
    defaults = one_epoch_defaults()
    out = tmp_path / "out"
    jobs = expand(parse_config(tiny_config(seeds=[0], methods={"joint": {}}, protocol="last", defaults=defaults)), out)
    assert not run_pool(jobs, workers=1, log=lambda line: None).failed
    assert main(["table", str(out)]) == 0
    assert "Protocol: last epoch" in capsys.readouterr().out
    assert main(["table", str(out), "--protocol", "clean"]) == 0
    assert "Protocol: clean" in capsys.readouterr().out


def test_a_run_is_done_only_with_both_markers_and_its_follow_up_evaluation(tmp_path):
    from benchmarks.runner import CHECKPOINT

    plain, followed = (expand(parse_config(tiny_config(seeds=[0], methods={"joint": {}}, **extra)), tmp_path / name)[0]
                       for name, extra in (("plain", {}), ("followed", {"evaluate": {"missing": [0.0, 0.5]}})))
    for job in (plain, followed):
        job.run_dir.mkdir(parents=True)
        (job.run_dir / "DONE").write_text("")
        assert job.state() == "new", "DONE without summary.json is not a finished run"
        (job.run_dir / "DONE").unlink()
        (job.run_dir / "summary.json").write_text("{}")
        assert job.state() == "new", "summary.json without DONE is not a finished run"
        (job.run_dir / CHECKPOINT).write_bytes(b"")
        assert job.state() == "resume"
        (job.run_dir / "DONE").write_text("")
    assert plain.state() == "done"
    assert followed.state() == "evaluate", "trained but its missing-modality evaluation is not written yet"


def test_a_follow_up_evaluation_counts_only_with_the_sweeps_split_seed_and_rates(tmp_path):
    (job,) = expand(parse_config(tiny_config(seeds=[0], methods={"joint": {}},
                                             evaluate={"missing": [0, 0.5], "split": "val", "seed": 1})), tmp_path)
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "DONE").write_text("")
    (job.run_dir / "summary.json").write_text(json.dumps({"protocols": {"last": {"epoch": 2}}}))
    result = {"checkpoint_epoch": 2, "split": "val", "seed": 1, "rates": [{"rate": 0.0}, {"rate": 0.5}],
              "batch_size": job.cfg.train.eval_batch_size}
    for change, state in (({}, "done"), ({"seed": 0}, "evaluate"), ({"rates": [{"rate": 0.0}]}, "evaluate"),
                          ({"checkpoint_epoch": 1}, "evaluate"), ({"batch_size": 3}, "evaluate")):
        (job.run_dir / "missing_modality-val.json").write_text(json.dumps({**result, **change}))
        assert job.state() == state, change


def test_per_dataset_settings_beat_the_row_and_grids_combine_every_key(tmp_path):
    from benchmarks.sweep.expand import grid_points

    assert grid_points({"train.lr": [0.1, 0.2]}, {"model.width": [2, 4]}) == [
        {"train": {"lr": lr}, "model": {"width": w}} for lr in (0.1, 0.2) for w in (2, 4)]
    with pytest.raises(SweepConfigError, match="given twice"):
        grid_points({"train.lr": [0.1]}, {"train.lr": [0.2]})
    config = parse_config(tiny_config(seeds=[0], methods={"joint": {
        "train": {"lr": 0.02}, "per_dataset": {"synthetic": {"train": {"lr": 0.03}}}}}))
    (job,) = expand(config, tmp_path)
    assert job.cfg.train.lr == 0.03, "a row's per-dataset entry overrides the row's own settings on that dataset"


def test_grid_keys_of_one_namespace_all_reach_every_run_and_its_row_label(tmp_path):
    from benchmarks.sweep.expand import grid_points

    assert grid_points({"train.lr": [0.1, 0.2], "train.epochs": [1]}) == [
        {"train": {"lr": 0.1, "epochs": 1}}, {"train": {"lr": 0.2, "epochs": 1}}]
    config = parse_config(tiny_config(seeds=[0], methods={"joint": {
        "grid": {"train.lr": [0.1, 0.2], "train.epochs": [1, 2]}}}))
    jobs = expand(config, tmp_path)
    assert sorted((j.label, j.cfg.train.lr, j.cfg.train.epochs) for j in jobs) == [
        (f"joint [train.lr={lr},train.epochs={epochs}]", lr, epochs) for lr in (0.1, 0.2) for epochs in (1, 2)]
    both = parse_config(tiny_config(seeds=[0], grid={"train.epochs": [1, 2]}, methods={"joint": {
        "grid": {"train.lr": [0.1]}}}))
    assert sorted((j.label, j.cfg.train.epochs) for j in expand(both, tmp_path)) == [
        ("joint [train.epochs=1,train.lr=0.1]", 1), ("joint [train.epochs=2,train.lr=0.1]", 2)]


def test_a_grid_point_beats_the_per_dataset_entry_and_set_beats_both_row_layers(tmp_path):
    # The row label names the grid's value, so the run must train with it; a command-line value wins over the config.
    gridded = parse_config(tiny_config(seeds=[0], methods={"joint": {
        "grid": {"train.lr": [0.1, 0.2]}, "per_dataset": {"synthetic": {"train": {"lr": 0.3}}}}}))
    assert [(j.label, j.cfg.train.lr) for j in expand(gridded, tmp_path)] == [
        ("joint [train.lr=0.1]", 0.1), ("joint [train.lr=0.2]", 0.2)]
    per_dataset = parse_config(tiny_config(seeds=[0], methods={"joint": {
        "train": {"lr": 0.02}, "per_dataset": {"synthetic": {"train": {"lr": 0.03}}}}}))
    (job,) = expand(per_dataset, tmp_path, assignments={"train": {"lr": 0.5}})
    assert job.cfg.train.lr == 0.5 and job.overrides["train"]["lr"] == 0.5


def test_a_renamed_row_alone_on_its_method_keeps_the_registered_title(tmp_path):
    config = parse_config(tiny_config(seeds=[0], methods={"concat": {"method": "joint"}, "sum": {}}))
    assert sorted((j.label, j.title) for j in expand(config, tmp_path)) == [("concat", "Concat"), ("sum", "Sum")]


def test_unregistered_datasets_are_left_out_or_ignored_when_filtered_away(tmp_path):
    config = parse_config(tiny_config(datasets={"synthetic": {}, "not_a_dataset": {}}))
    with pytest.raises(MissingEntriesError, match="not_a_dataset"):
        expand(config, tmp_path)
    skipped = expand(config, tmp_path, skip_missing=True, log=lambda line: None)
    filtered = expand(config, tmp_path, datasets=["synthetic"])
    for jobs in (skipped, filtered):
        assert sorted((j.cfg.dataset, j.cfg.method, j.cfg.train.seed) for j in jobs) == [
            ("synthetic", m, s) for m in ("joint", "sum") for s in (0, 1)]


def test_a_trained_run_whose_evaluation_is_missing_is_launched_again_not_skipped(tmp_path):
    config = parse_config(tiny_config(seeds=[0], evaluate={"missing": [0.0, 0.5]}))
    trained, new = expand(config, tmp_path)
    trained.run_dir.mkdir(parents=True)
    (trained.run_dir / "DONE").write_text("")
    (trained.run_dir / "summary.json").write_text("{}")
    tracker = launchers._Tracker([trained, new], None, None, lambda line: None)
    assert [job.name for job in tracker.pending()] == [trained.name, new.name]
    assert tracker.report.skipped == []


def test_preflight_checks_only_unfinished_runs(tmp_path, monkeypatch):
    from benchmarks.sweep.preflight import check

    monkeypatch.setattr(launchers, "cuda_device_count", lambda: 0)
    config = parse_config(tiny_config(defaults={"model": dict(TINY_MODEL), "data": dict(TINY_DATA),
                                                "train": {**TINY_TRAIN, "device": "cuda"}}))
    planned = plan(config, tmp_path)
    assert check(planned, LAUNCHERS["pool"], LaunchOptions()), "unfinished cuda runs on a machine without one"
    for job in planned.jobs:
        job.run_dir.mkdir(parents=True)
        (job.run_dir / "DONE").write_text("")
        (job.run_dir / "summary.json").write_text("{}")
    assert not check(planned, LAUNCHERS["pool"], LaunchOptions()).groups, "finished runs need no device"


def test_a_pool_worker_that_exits_0_without_a_result_fails_its_run():
    class Conn:
        def recv(self):
            raise EOFError

    class Proc:
        exitcode = 0

        def join(self):
            pass

    worker = launchers._PoolWorker.__new__(launchers._PoolWorker)
    worker.conn, worker.proc, worker.task, worker.started = Conn(), Proc(), ("/x/run-a", "disabled", None), 0.0
    name, status, _, error = worker.result()
    assert (name, status) == ("run-a", 1) and "died" in error and worker.task is None


def test_seeds_default_to_seed_0_and_only_datasets_must_name_datasets_of_the_config(tmp_path):
    doc = tiny_config()
    del doc["seeds"]
    jobs = expand(parse_config(doc), tmp_path)
    assert sorted((j.cfg.method, j.cfg.train.seed) for j in jobs) == [("joint", 0), ("sum", 0)]
    with pytest.raises(SweepConfigError, match=r"methods\.joint\.only_datasets must be a non-empty list"):
        parse_config(tiny_config(methods={"joint": {"only_datasets": ["cremad"]}, "sum": {}}))


def test_method_knobs_are_refused_in_the_top_level_grid_and_defaults():
    with pytest.raises(SweepConfigError, match=r"grid key 'ogm_ge\.alpha' must be NAMESPACE\.KEY"):
        parse_config(tiny_config(grid={"ogm_ge.alpha": [0.1, 0.2]}))
    with pytest.raises(SweepConfigError, match=r"defaults\.ogm_ge: only runner namespaces"):
        parse_config(tiny_config(defaults={"ogm_ge": {"alpha": 0.1}}))


def test_a_lock_held_before_its_holder_wrote_its_name_is_busy_with_the_holder_unknown(tmp_path):
    fd = os.open(tmp_path / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunBusyError, match=r"is in use by another process \(holder unknown\); not started"):
            with run_lock(tmp_path):
                pass
    finally:
        os.close(fd)


def test_ranks_other_than_0_neither_make_nor_lock_the_run_folder(tmp_path, monkeypatch):
    busy, fresh = tmp_path / "busy", tmp_path / "fresh"
    busy.mkdir()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with run_lock(busy), rank0_run_lock(busy), rank0_run_lock(fresh):
        assert not fresh.exists()


def test_a_sweep_worker_resumes_an_interrupted_run_instead_of_starting_it_again(tmp_path):
    # A launcher restarted after a kill hands the worker a run folder holding its first epoch: the worker must train
    # on from the checkpoint, keeping that epoch's record as it was.
    run = tmp_path / "run"
    cfg = interrupted_run(run, epochs=3)
    write_yaml(run / "job.yaml", config_sections(cfg.as_dict()))
    first = (run / "metrics.jsonl").read_text().splitlines()
    lines = []
    run_job(run, log=lines.append)
    records = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in records] == [0, 1, 2] and records[:1] == first
    assert not any(line.startswith("epoch 0") for line in lines), "epoch 0 trained again"
