"""The runner: run directory contents, protocols, LR schedule, and resume equivalence after SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

import benchmarks.runner as runner
from baselines.base import Prediction, RowSelection
from baselines.registry import get_method
from benchmarks.config import build_config, merge_overrides
from benchmarks.errors import UsageError
from benchmarks.runner import (
    RunExistsError,
    TrainingDiverged,
    apply_selection,
    build_method,
    check_held_out_split,
    check_training_batches,
    evaluate,
    lr_factor,
    make_loaders,
    rng_state,
    select_protocols,
    set_rng_state,
    train_run,
)
from core.data import BatchLoader
from core.hparams import HParamError, resolve
from datasets.registry import get_dataset
from tests.conftest import TINY_DATA, interrupted_run, make_context, tiny_overrides
from tests.numeric import approx64

ROOT = Path(__file__).resolve().parents[1]


def test_run_directory_holds_config_metrics_summary_and_checkpoint(tmp_path):
    cfg = build_config("joint", "synthetic", tiny_overrides())
    summary = train_run(cfg, tmp_path / "run")
    run = tmp_path / "run"
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]
    assert (run / "checkpoint.pt").exists() and (run / "DONE").exists()
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["protocols"] == json.loads(json.dumps(summary["protocols"]))
    for protocol in ("paper", "clean", "last"):
        test = on_disk["protocols"][protocol]["test"]
        assert 0.0 <= test["acc"] <= 1.0 and set(test["per_modality"]) == {"audio", "visual"}
        assert {"acc", "macro_f1", "map"} <= set(test["per_modality"]["visual"])
    assert on_disk["env"]["torch"] and on_disk["wall_time_s"] > 0


def test_existing_run_is_not_silently_overwritten(tmp_path):
    cfg = build_config("joint", "synthetic", tiny_overrides())
    first = train_run(cfg, tmp_path / "run")
    with pytest.raises(RunExistsError):
        train_run(cfg, tmp_path / "run")
    assert train_run(cfg, tmp_path / "run", resume=True)["protocols"] == json.loads(json.dumps(first["protocols"]))


def test_a_run_stopped_before_its_first_checkpoint_is_not_taken_over_by_a_fresh_start(tmp_path):
    # killed in epoch 0 with checkpoint_every > 1: config.yaml and data.json exist, checkpoint.pt does not
    cfg = build_config("joint", "synthetic", tiny_overrides())
    train_run(cfg, tmp_path / "run")
    (tmp_path / "run" / "checkpoint.pt").unlink()
    for name in ("DONE", "summary.json"):
        (tmp_path / "run" / name).unlink()
    other = build_config("joint", "synthetic", merge_overrides(tiny_overrides(), {"train": {"lr": 0.05}}))
    with pytest.raises(RunExistsError, match="holds an unfinished run; continue it with: augbench train --run-dir"):
        train_run(other, tmp_path / "run")
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["lr"] == cfg.train.lr


def test_protocols_select_best_test_best_val_and_last():
    def rec(epoch, val, test):
        return {"epoch": epoch, "val": {"acc": val}, "test": {"acc": test}}

    history = [rec(0, 0.5, 0.4), rec(1, 0.7, 0.5), rec(2, 0.6, 0.9), rec(3, 0.7, 0.9)]
    out = select_protocols(history)
    assert out["paper"]["epoch"] == 2 and out["paper"]["test"]["acc"] == 0.9, "test ties go to the earliest too"
    assert out["clean"]["epoch"] == 1 and out["clean"]["test"]["acc"] == 0.5, "ties go to the earliest epoch"
    assert out["last"]["epoch"] == 3


def test_lr_schedule_matches_steplr70_stepped_at_epoch_start():
    assert [lr_factor(e, [69, 139], 0.1) for e in (0, 68, 69, 138, 139, 199)] == \
        approx64([1, 1, 0.1, 0.1, 0.01, 0.01])


def _train_cmd(run_dir: Path, epochs: int, resume: bool = False) -> list[str]:
    sets = ["model.width=4", "model.blocks=[1,1,1,1]", "data.n_train=512", "data.n_val=32", "data.n_test=32",
            "train.batch_size=16", f"train.epochs={epochs}"]
    cmd = [sys.executable, "-m", "benchmarks", "train", "--method", "joint", "--dataset", "synthetic",
           "--run-dir", str(run_dir), "--wandb", "disabled", "--no-progress"]
    cmd += [a for s in sets for a in ("--set", s)]
    return cmd + (["--resume"] if resume else [])


def test_sigkill_then_resume_gives_the_uninterrupted_summary(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    epochs = 4
    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(reference, epochs), check=True, env=env, capture_output=True, cwd=ROOT)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed, epochs), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "metrics.jsonl").exists():
        time.sleep(0.01)
    # Past the first checkpoint and inside a later epoch: kill without any chance to clean up.
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "DONE").exists(), "the run finished before it could be killed; make it longer"

    subprocess.run(_train_cmd(killed, epochs, resume=True), check=True, env=env, capture_output=True, cwd=ROOT)
    ref = json.loads((reference / "summary.json").read_text())
    got = json.loads((killed / "summary.json").read_text())
    assert got["protocols"] == ref["protocols"]
    ref_lines = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    got_lines = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["test"] for r in got_lines] == [r["test"] for r in ref_lines]


def test_deterministic_runs_skip_the_nan_fill_of_fresh_allocations():
    """Deterministic mode stays on, without PyTorch's NaN-fill of every allocation (a debugging guard costing ~5% of a
    small CPU step); killed-and-resumed runs of every method matching straight ones (test_resume_methods.py) show
    that no step reads memory it did not write."""
    try:
        runner.seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.utils.deterministic.fill_uninitialized_memory
    finally:
        torch.use_deterministic_algorithms(False)
        torch.utils.deterministic.fill_uninitialized_memory = True


def test_sgd_steps_fused_over_parameters_equal_the_per_parameter_loop():
    """make_optimizer's SGD runs foreach (one call per group); its steps are bitwise those of the per-parameter loop,
    with momentum, weight decay, a parameter without a gradient and a group added later."""
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3, 7, 7), (4,), (6, 32), (6,)]
    start = [torch.randn(shape, generator=g) for shape in shapes]
    late = torch.randn(5, generator=g)
    fused = [torch.nn.Parameter(p.clone()) for p in start]
    loop = [torch.nn.Parameter(p.clone()) for p in start]
    fused_late, loop_late = torch.nn.Parameter(late.clone()), torch.nn.Parameter(late.clone())
    opt = make_context(lr=0.1, momentum=0.9, weight_decay=1e-4).make_optimizer(fused)
    assert opt.defaults["foreach"] is True
    reference = torch.optim.SGD(loop, lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=False)
    for step in range(6):
        if step == 2:
            opt.add_param_group({"params": [fused_late], "lr": 0.05})
            reference.add_param_group({"params": [loop_late], "lr": 0.05})
        grads = [torch.randn(p.shape, generator=g) for p in [*start, late]]
        for params in ([*fused, fused_late], [*loop, loop_late]):
            for k, (p, grad) in enumerate(zip(params, grads)):
                p.grad = None if k == 1 and step % 2 else grad.clone()
        opt.step()
        reference.step()
    for a, b in zip([*fused, fused_late], [*loop, loop_late]):
        assert torch.equal(a, b)


def test_optimizers_keep_each_groups_own_lr_under_the_schedule_and_refuse_unknown_options():
    ctx = make_context(lr=0.1, momentum=0.9, weight_decay=1e-4)
    ctx.lr_factor = 0.5   # an optimizer built mid-run starts at the scheduled lr (powers of two: exact products)
    a, b, c, d = (torch.nn.Parameter(torch.zeros(2)) for _ in range(4))
    first = ctx.make_optimizer([{"params": [a]}, {"params": [b], "lr": 0.02}])
    second = ctx.make_optimizer([c], lr=0.3, momentum=0.0)
    assert [g["initial_lr"] for g in first.param_groups] == [0.1, 0.02]
    assert [g["lr"] for g in first.param_groups] == [0.05, 0.01]
    assert first.defaults["momentum"] == 0.9 and second.defaults["momentum"] == 0.0
    ctx.add_param_group(second, [d], lr=0.2)
    assert second.param_groups[1]["lr"] == 0.1
    ctx.set_lr_factor(0.25)
    assert [g["lr"] for opt in (first, second) for g in opt.param_groups] == [0.025, 0.005, 0.075, 0.05]
    with pytest.raises(TypeError, match="nesterov"):
        ctx.make_optimizer([torch.nn.Parameter(torch.zeros(1))], nesterov=True)


@pytest.mark.parametrize("kind, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_adam_optimizers_are_the_configured_kind_with_the_configured_weight_decay(kind, cls):
    ctx = make_context(lr=0.1, optimizer=kind, weight_decay=0.03)
    opt = ctx.make_optimizer([torch.nn.Parameter(torch.zeros(2))])
    assert type(opt) is cls and opt.defaults["weight_decay"] == 0.03
    assert ctx.make_optimizer([torch.nn.Parameter(torch.zeros(2))], weight_decay=0.5).defaults["weight_decay"] == 0.5


@pytest.mark.parametrize("method, key", [("gblending", "held_out_split"), ("relearning", "diagnose_split"),
                                         ("mses", "eval_split"), ("mslr", "eval_split")])
def test_a_method_reading_a_split_the_data_lacks_is_refused_before_training(tmp_path, method, key):
    # Without a validation split these failed at their first estimate or diagnosis, after training had begun.
    overrides = tiny_overrides()
    overrides["data"]["n_val"] = 0
    run_dir = tmp_path / "run"
    with pytest.raises(UsageError, match=rf"{method}.{key}='val', but synthetic serves no 'val' split .*"
                                         rf"set {method}.{key}=test"):
        train_run(build_config(method, "synthetic", overrides), run_dir, log=lambda msg: None)
    assert not run_dir.exists(), "nothing is written for a refused run"
    overrides[method] = {key: "test"}
    summary = train_run(build_config(method, "synthetic", overrides), run_dir, log=lambda msg: None)
    assert summary["protocols"]["last"]["test"]["n"] == TINY_DATA["n_test"]


@pytest.mark.parametrize("data, train", [({"n_train": 12}, {"batch_size": 16, "drop_last": True}),
                                         ({"n_train": 16}, {"batch_size": 32, "drop_last": True})])
def test_a_run_whose_training_split_gives_no_batch_is_refused_before_training(tmp_path, data, train):
    # A training split smaller than one batch under train.drop_last (data.subset makes one of a few samples per
    # class): every epoch trained no step, and the run finished as DONE, an untrained model tabulated as a result.
    overrides = merge_overrides(tiny_overrides(), {"data": data, "train": {"epochs": 1, **train}})
    run_dir = tmp_path / "run"
    with pytest.raises(UsageError, match=rf"serves {data['n_train']} training rows.*no training step.*drop_last"):
        train_run(build_config("joint", "synthetic", overrides), run_dir, log=lambda msg: None)
    assert not run_dir.exists(), "nothing is written for a refused run"
    overrides["train"]["drop_last"] = False
    summary = train_run(build_config("joint", "synthetic", overrides), run_dir, log=lambda msg: None)
    assert summary["protocols"]["last"]["test"]["acc"] is not None


@pytest.mark.parametrize("rows, drop_last, why", [
    (1, False, "fewer than its 2 data-parallel ranks"),
    (2, True, "fewer than one batch of train.batch_size=16 with train.drop_last=true")])
def test_a_training_split_that_gives_no_rank_a_batch_says_why(rows, drop_last, why):
    # As many rows as ranks is one row each: a batch unless drop_last drops it.
    cfg = build_config("joint", "synthetic", merge_overrides(tiny_overrides(), {"train": {"drop_last": drop_last}}))
    train = BatchLoader(np.arange(rows), np.zeros(rows), lambda picked: {}, batch_size=8, train=True, seed=0,
                        drop_last=drop_last)
    train.set_shard(0, 2)
    with pytest.raises(UsageError, match=rf"synthetic serves {rows} training rows, {why}: an epoch would take no"):
        check_training_batches(cfg, train, world_size=2)


@pytest.mark.parametrize("train_split, why", [("full", r"data.train_split=full trains on the validation rows"),
                                              ("clean", r"the data has none")])
def test_a_refused_held_out_split_says_why_the_data_lacks_it(train_split, why):
    cfg = build_config("gblending", "synthetic", tiny_overrides())
    cfg = SimpleNamespace(method=cfg.method, method_hp=cfg.method_hp, dataset="cremad",
                          data={"train_split": train_split})
    bundle = SimpleNamespace(splits={"train": np.arange(4), "val": np.arange(0), "test": np.arange(2)})
    with pytest.raises(UsageError, match=rf"cremad serves no 'val' split here \({why}\); set gblending"):
        check_held_out_split(cfg, bundle)


def test_a_held_out_knob_value_that_names_no_split_reads_none(tmp_path):
    # UMT's teacher_select: 'final' reads no split, 'val' and 'test' do.
    umt = get_method("umt")
    assert umt.held_out_split(build_config("umt", "synthetic", tiny_overrides()).method_hp) is None
    for split in ("val", "test"):
        overrides = merge_overrides(tiny_overrides(), {"umt": {"teacher_select": split}})
        assert umt.held_out_split(build_config("umt", "synthetic", overrides).method_hp) == split
    overrides = merge_overrides(tiny_overrides(), {"umt": {"teacher_select": "val"}, "data": {"n_val": 0}})
    with pytest.raises(UsageError, match=r"umt.teacher_select='val', but synthetic serves no 'val' split"):
        train_run(build_config("umt", "synthetic", overrides), tmp_path / "run", log=lambda msg: None)


def test_a_method_that_refuses_its_setting_leaves_no_run_folder(tmp_path):
    # OGM supports two modalities; its constructor refuses three before the run has any file.
    overrides = tiny_overrides()
    overrides["data"]["modalities"] = 3
    with pytest.raises(ValueError, match="supports \\(2,\\) modalities"):
        train_run(build_config("ogm", "synthetic", overrides), tmp_path / "run", log=lambda msg: None)
    assert not (tmp_path / "run").exists(), "a half-made folder would count as an unfinished run"


@pytest.mark.parametrize("method, knob, value, bound", [("gblending", "super_epoch", 0, ">= 1"),
                                                         ("gblending", "estimate_epochs", 1, ">= 2"),
                                                         ("reconboost", "modality_epochs", 0, ">= 1"),
                                                         ("opm", "p_exe", 1.5, ">= 0 and <= 1")])
def test_a_knob_outside_its_declared_bounds_is_refused_naming_it(method, knob, value, bound):
    overrides = tiny_overrides()
    overrides[method] = {knob: value}
    with pytest.raises(HParamError, match=rf"{method}.{knob} must be {bound}, got {value}"):
        build_config(method, "synthetic", overrides)


def test_the_summary_records_the_machine_and_which_code_trained_which_epochs(tmp_path):
    cfg = interrupted_run(tmp_path / "run", epochs=3)
    summary = train_run(cfg, tmp_path / "run", resume=True, log=lambda line: None)
    assert [s["first_epoch"] for s in summary["segments"]] == [0, 1], "the killed segment is not forgotten"
    assert all({"git_commit", "git_dirty", "torch", "torch_threads", "device"} <= set(s) for s in summary["segments"])
    env = summary["env"]
    assert env["cpu_model"] and env["torch_threads"] >= 1 and "torch_cpu_capability" in env and "git_dirty" in env
    assert env["deterministic_algorithms"] == "warn_only", "train.deterministic is on by default, and only warns"


def test_rng_states_read_back_onto_another_device_are_restored_from_the_cpu():
    # A checkpoint read with map_location a GPU moves the saved states there; torch takes them only on the CPU.
    class OnDevice:
        def __init__(self, tensor: torch.Tensor) -> None:
            self.tensor = tensor

        def cpu(self) -> torch.Tensor:
            return self.tensor

    saved = rng_state()
    expected = torch.rand(3)
    torch.rand(5)
    set_rng_state({**saved, "torch": OnDevice(saved["torch"])})
    assert torch.equal(torch.rand(3), expected)


def test_rng_states_restore_the_python_numpy_and_torch_streams():
    saved = rng_state()
    expected = (random.random(), float(np.random.rand()), torch.rand(2).tolist())
    random.random(), np.random.rand(), torch.rand(5)
    set_rng_state(saved)
    assert (random.random(), float(np.random.rand()), torch.rand(2).tolist()) == expected


def test_a_resumed_run_draws_from_the_global_generators_what_the_straight_run_drew(tmp_path, monkeypatch):
    # Dropout masks and a method's own draws come from the process's generators: a resume must go on from the state
    # checkpointed after its last epoch, not from the fresh seed.
    joint = get_method("joint")
    real, draws = joint.update, []

    def update(self, batch, step):
        if step.step == 0:
            draws.append((step.epoch, random.random(), float(np.random.rand()), torch.rand(1).item()))
        return real(self, batch, step)

    monkeypatch.setattr(joint, "update", update)
    overrides = merge_overrides(tiny_overrides(), {"train": {"epochs": 3}})
    train_run(build_config("joint", "synthetic", overrides), tmp_path / "straight", log=lambda *_: None)
    straight, draws[:] = list(draws), []
    cfg = interrupted_run(tmp_path / "run", epochs=3)
    train_run(cfg, tmp_path / "run", resume=True, log=lambda *_: None)
    assert draws == straight and [d[0] for d in draws] == [0, 1, 2]


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_a_run_whose_training_loss_turns_nan_stops_unrecorded(tmp_path, monkeypatch, bad):
    joint = get_method("joint")
    real = joint.update

    def update(self, batch, step):
        logs = real(self, batch, step)
        return {**logs, "loss": float(bad)} if step.epoch == 1 else logs

    monkeypatch.setattr(joint, "update", update)
    overrides = tiny_overrides()
    overrides["train"].update(epochs=3, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match=rf"joint diverged in epoch 1 of .*run: its mean training loss is {bad}"):
        train_run(build_config("joint", "synthetic", overrides), tmp_path / "run", log=lambda *_: None)
    assert [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [0]
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["epoch"] == 0
    assert not (tmp_path / "run" / "DONE").exists()


def test_a_private_training_pass_drops_its_partial_batch_with_the_run_and_evaluation_passes_never():
    cls = get_dataset("synthetic")
    bundle = cls.build(resolve("data", cls.HPARAMS, "synthetic", {**TINY_DATA, "n_train": 40}))
    train = bundle.loader("train", batch_size=16, train=True, seed=0, drop_last=True)
    assert [len(b["label"]) for b in train.derived(train=True, seed=1)] == [16, 16]
    assert [len(b["label"]) for b in train.derived(batch_size=16)] == [16, 16, 8]


@pytest.mark.parametrize("drop_last, steps", [(False, 3), (True, 2)])
def test_train_drop_last_drops_each_epochs_partial_batch(tmp_path, monkeypatch, drop_last, steps):
    joint = get_method("joint")
    real, sizes = joint.update, []

    def update(self, batch, step):
        sizes.append(len(batch["label"]))
        return real(self, batch, step)

    monkeypatch.setattr(joint, "update", update)
    overrides = merge_overrides(tiny_overrides(), {"data": {"n_train": 40}, "train": {"epochs": 1,
                                                                                   "drop_last": drop_last}})
    summary = train_run(build_config("joint", "synthetic", overrides), tmp_path / "run", log=lambda *_: None)
    # 40 rows in batches of 16: 16, 16 and a partial 8, which drop_last leaves out; evaluation still sees every row.
    assert sizes == [16, 16, 8][:steps]
    assert summary["protocols"]["last"]["test"]["acc"] is not None


def test_checkpoints_follow_checkpoint_every_and_the_last_epoch_is_always_saved(tmp_path, monkeypatch):
    saved = []
    real = runner.atomic_torch_save

    def save(path, obj):
        saved.append(obj["epoch"])
        real(path, obj)

    monkeypatch.setattr(runner, "atomic_torch_save", save)
    overrides = merge_overrides(tiny_overrides(), {"train": {"epochs": 5, "checkpoint_every": 2}})
    train_run(build_config("joint", "synthetic", overrides), tmp_path / "run", log=lambda *_: None)
    # After every 2nd epoch (1 and 3), and after the last (4) whatever the cadence.
    assert saved == [1, 3, 4]


def test_each_epoch_records_and_trains_at_its_scheduled_learning_rate(tmp_path, monkeypatch):
    joint = get_method("joint")
    real, lrs = joint.update, []

    def update(self, batch, step):
        if step.step == 0:
            lrs.append([g["lr"] for opt in self.ctx.optimizers for g in opt.param_groups])
        return real(self, batch, step)

    monkeypatch.setattr(joint, "update", update)
    overrides = merge_overrides(tiny_overrides(), {"train": {"epochs": 4, "lr": 0.5, "lr_milestones": [1, 3],
                                                             "lr_gamma": 0.1}})
    train_run(build_config("joint", "synthetic", overrides), tmp_path / "run", log=lambda *_: None)
    recorded = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # lr * gamma ** (milestones passed), as float64 products of the configured values.
    expected = [0.5, 0.5 * 0.1, 0.5 * 0.1, 0.5 * 0.1 ** 2]
    assert recorded == approx64(expected)
    assert [sorted(set(group)) for group in lrs] == [[approx64(x)] for x in expected]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["optimizer_lr"] for line in lines] == [{"min": approx64(x), "max": approx64(x)}
                                                                     for x in expected]


def test_the_record_names_the_rates_a_methods_own_optimizers_train_at(tmp_path):
    # ReconBoost builds its optimisers from m_lr/e_lr: the records showed train.lr alone (0.01 where Table 1's rows
    # train at 2e-5).
    overrides = merge_overrides(tiny_overrides(), {"train": {"epochs": 1, "lr": 0.01},
                                                   "reconboost": {"m_lr": 0.002, "e_lr": 0.003}})
    train_run(build_config("reconboost", "synthetic", overrides), tmp_path / "run", log=lambda *_: None)
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["lr"] == approx64(0.01) and record["optimizer_lr"]["min"] == approx64(0.002)


@pytest.mark.parametrize("max_steps, steps", [(2, 2), (10, 3)])
def test_a_step_knows_the_epochs_step_count_whatever_max_steps_per_epoch_allows(tmp_path, monkeypatch, max_steps,
                                                                                steps):
    joint = get_method("joint")
    real, seen = joint.update, []

    def update(self, batch, step):
        seen.append((step.step, step.steps_per_epoch))
        return real(self, batch, step)

    monkeypatch.setattr(joint, "update", update)
    # 40 rows in batches of 16 give 3 steps: a larger max_steps_per_epoch is no step count.
    overrides = merge_overrides(tiny_overrides(), {"data": {"n_train": 40},
                                                   "train": {"epochs": 1, "max_steps_per_epoch": max_steps}})
    train_run(build_config("joint", "synthetic", overrides), tmp_path / "run", log=lambda *_: None)
    assert seen == [(i, steps) for i in range(steps)]


def test_a_resumed_runs_wall_time_is_every_recorded_epochs_time(tmp_path):
    cfg = interrupted_run(tmp_path / "run", epochs=3)
    summary = train_run(cfg, tmp_path / "run", resume=True, log=lambda line: None)
    epochs = [json.loads(line)["time"]["epoch_s"] for line in (tmp_path / "run" / "metrics.jsonl").read_text()
              .splitlines()]
    # The same float64 additions in the same order, so equal to float64 rounding.
    assert len(epochs) == 3 and summary["wall_time_s"] == approx64(sum(epochs))


class _Rows:
    """An evaluation loader that serves the batches of ``loader`` with ``edit(i, batch)`` applied to batch i."""

    def __init__(self, loader, edit):
        self.loader, self.edit = loader, edit
        self.num_samples = loader.num_samples

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            out = self.edit(i, dict(batch))
            if out is not None:
                yield out


def test_evaluation_refuses_a_pass_that_misses_or_repeats_a_row(tiny_bundle):
    method = build_method(build_config("joint", "synthetic", tiny_overrides()), tiny_bundle, torch.device("cpu"))
    test = tiny_bundle.loader("test", batch_size=4, train=False, seed=0)
    k = tiny_bundle.task.num_classes
    assert evaluate(method, test, k)["n"] == test.num_samples == 16

    def repeat(i, batch):  # batch 1 serves batch 0's rows again: as many rows, 4 of them twice
        if i == 1:
            first = next(iter(test))
            batch = {**first}
        return batch

    with pytest.raises(RuntimeError, match=r"evaluation saw 16 rows \(12 unique\) of 16"):
        evaluate(method, _Rows(test, repeat), k)
    with pytest.raises(RuntimeError, match=r"evaluation saw 12 rows \(12 unique\) of 16"):
        evaluate(method, _Rows(test, lambda i, batch: None if i == 3 else batch), k)


    class Again(_Rows):  # every row, then batch 0 once more
        def __iter__(self):
            yield from super().__iter__()
            yield next(iter(self.loader))

    with pytest.raises(RuntimeError, match=r"evaluation saw 20 rows \(16 unique\) of 16"):
        evaluate(method, Again(test, lambda i, batch: batch), k)


class _Scripted:
    """A method whose logits are fixed functions of the rows: fused always right, audio always class 0, visual right on
    rows 4-5 (the last batch) and the next class elsewhere, and an alternative fusion right on rows 0-2 and class 0
    elsewhere."""

    def eval(self):
        return self

    def predict(self, batch):
        y, i = batch["label"], batch["index"]
        one_hot = lambda c: torch.nn.functional.one_hot(c, 3).float() * 3  # noqa: E731
        return Prediction(fused=one_hot(y), per_modality={"audio": one_hot(torch.zeros_like(y)),
                                                          "visual": one_hot(torch.where(i >= 4, y, (y + 1) % 3))},
                          alternatives={"equal": one_hot(torch.where(i < 3, y, 0))})


def test_evaluation_scores_each_modality_and_alternative_on_its_own_logits():
    labels = np.array([0, 1, 2, 0, 1, 2])
    loader = BatchLoader(np.arange(6), labels, lambda rows: {}, batch_size=4, train=False, seed=0)
    out = evaluate(_Scripted(), loader, 3)
    assert out["n"] == 6 and out["acc"] == 1.0
    per_modality = out["per_modality"]
    assert per_modality["audio"]["acc"] == approx64(2 / 6) and per_modality["visual"]["acc"] == approx64(2 / 6)
    # audio: class 0 has TP 2, 2 true and 6 predicted -> F1 4/8; classes 1 and 2 have F1 0.
    assert per_modality["audio"]["macro_f1"] == approx64(0.5 / 3)
    assert out["alternatives"]["equal"]["acc"] == approx64(4 / 6)


def test_an_epochs_logged_values_are_their_mean_over_the_steps_that_logged_them(tmp_path, monkeypatch):
    joint = get_method("joint")
    real = joint.update

    def update(self, batch, step):
        real(self, batch, step)
        # Losses 0, 1, 2 over the 3 steps; "gate" logged by step 0 only.
        return {"loss": float(step.step), **({"gate": 4.0} if step.step == 0 else {})}

    monkeypatch.setattr(joint, "update", update)
    overrides = merge_overrides(tiny_overrides(), {"data": {"n_train": 40}, "train": {"epochs": 1}})
    train_run(build_config("joint", "synthetic", overrides), tmp_path / "run", log=lambda *_: None)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    # float64 sums and divisions of small integers: exact.
    assert record["train"] == {"loss": 1.0, "gate": 4.0}


def test_a_global_batch_that_the_ranks_cannot_share_equally_is_refused(tiny_bundle):
    # train.batch_size is the global batch: 15 over 2 ranks would silently train batches of 14.
    cfg = build_config("joint", "synthetic", merge_overrides(tiny_overrides(), {"train": {"batch_size": 15}}))
    with pytest.raises(ValueError, match=r"train.batch_size=15 is the global batch and must be divisible by the 2"):
        make_loaders(cfg, tiny_bundle, torch.device("cpu"), rank=0, world_size=2)
    assert make_loaders(cfg, tiny_bundle, torch.device("cpu")).train.batch_size == 15


def test_the_run_evaluates_every_row_in_order_with_evaluation_transforms_whatever_the_epoch(tiny_bundle):
    cfg = build_config("joint", "synthetic", merge_overrides(tiny_overrides(), {"train": {"eval_batch_size": 8}}))
    loaders = make_loaders(cfg, tiny_bundle, torch.device("cpu"))
    for loader, split in ((loaders.val, "val"), (loaders.test, "test")):
        assert not loader.train, f"{split} must not take training augmentation"
        for epoch in (0, 3):
            loader.set_epoch(epoch)
            batches = [b["index"].tolist() for b in loader]
            assert [len(b) for b in batches] == [8, 8]
            assert sum(batches, []) == tiny_bundle.splits[split].tolist()


def test_select_rows_must_return_a_row_selection_or_none(tiny_bundle):
    # Bare rows would otherwise be ignored and the epoch served every row as if the method had selected none.
    train = tiny_bundle.loader("train", batch_size=16, train=True, seed=0)
    apply_selection(train, RowSelection(train.base_rows[:3]))
    with pytest.raises(TypeError, match="select_rows must return a RowSelection or None, got ndarray"):
        apply_selection(train, train.base_rows[:5])
    apply_selection(train, None)
    assert train.num_samples == len(train.base_rows)


def test_each_epoch_trains_in_its_own_shuffle_of_the_training_rows(tmp_path, monkeypatch, tiny_bundle):
    joint = get_method("joint")
    real, orders = joint.update, {}

    def update(self, batch, step):
        orders.setdefault(step.epoch, []).extend(batch["index"].tolist())
        return real(self, batch, step)

    monkeypatch.setattr(joint, "update", update)
    overrides = merge_overrides(tiny_overrides(), {"train": {"epochs": 3}})
    train_run(build_config("joint", "synthetic", overrides), tmp_path / "run", log=lambda *_: None)
    train = tiny_bundle.loader("train", batch_size=16, train=True, seed=0)
    for epoch in range(3):
        train.set_epoch(epoch)
        assert orders[epoch] == [i for b in train for i in b["index"].tolist()]
    assert len({tuple(order) for order in orders.values()}) == 3


def test_each_epochs_records_are_the_scores_of_its_model_on_the_val_and_test_rows(tmp_path):
    # Val and test of different sizes, so that one split scored in place of the other shows.
    overrides = merge_overrides(tiny_overrides(), {"data": {"n_val": 24}, "train": {"epochs": 1}})
    cfg = build_config("joint", "synthetic", overrides)
    train_run(cfg, tmp_path / "run", log=lambda *_: None)
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    bundle = runner.build_data(cfg)
    method = build_method(cfg, bundle, torch.device("cpu"))
    method.load_checkpoint_state(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["method"])
    loaders = make_loaders(cfg, bundle, torch.device("cpu"))
    assert (record["val"]["n"], record["test"]["n"]) == (24, TINY_DATA["n_test"])
    for split, loader in (("val", loaders.val), ("test", loaders.test)):
        expected = json.loads(json.dumps(evaluate(method, loader, bundle.task.num_classes)))
        assert record[split] == expected, split


def test_epoch_end_hooks_run_in_training_mode_after_the_evaluation(tmp_path, monkeypatch):
    # A hook that trains (re-estimates, grows a learner) would otherwise take its steps with dropout and batch-norm
    # updates off, as evaluation left them.
    joint = get_method("joint")
    modes = []
    monkeypatch.setattr(joint, "on_epoch_end", lambda self, epoch, loaders: modes.append(self.training))
    train_run(build_config("joint", "synthetic", tiny_overrides()), tmp_path / "run", log=lambda *_: None)
    assert modes == [True, True]


def test_a_resume_takes_metrics_back_to_the_checkpointed_epochs_before_training_on(tmp_path):
    # Killed after epoch 2 was logged, with its last checkpoint after epoch 1: epoch 2 is trained again, and until
    # then metrics.jsonl must not hold a record the checkpoint does not have.
    cfg = build_config("joint", "synthetic", merge_overrides(tiny_overrides(), {"train": {"epochs": 4,
                                                                                          "checkpoint_every": 2}}))

    def stop_at(prefix):
        def log(line):
            if line.startswith(prefix):
                raise RuntimeError("stop")
        return log

    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="stop"):
        train_run(cfg, run, log=stop_at("epoch 2"))
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="stop"):
        train_run(cfg, run, resume=True, log=stop_at("resuming"))
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_an_extension_stopped_before_its_first_new_epoch_resumes_to_the_extended_run(tmp_path):
    # Extending drops DONE before anything else: the old summary and DONE left together would pass for the
    # finished extended run, and the resume would hand back the shorter run's summary.
    run = tmp_path / "run"
    cfg = build_config("joint", "synthetic", tiny_overrides())
    train_run(cfg, run, log=lambda *_: None)
    longer = build_config("joint", "synthetic", merge_overrides(tiny_overrides(), {"train": {"epochs": 3}}))

    def stop(line):
        if line.startswith("extending"):
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        train_run(longer, run, resume=True, extend_epochs=True, log=stop)
    assert not (run / "DONE").exists()
    summary = train_run(longer, run, resume=True, log=lambda *_: None)
    assert summary["epochs"] == 3 and summary["protocols"]["last"]["epoch"] == 2


def test_the_summary_carries_the_datas_split_files_and_subset(tmp_path, monkeypatch):
    # Prepared datasets name their split files' state, and data.subset marks a smoke run; both travel with the
    # numbers into the summary that tables read.
    real = runner.build_data
    split_files = {"train": "verified", "test": "unknown"}
    subset = {"per_class": 4, "rows": {"train": 8, "val": 8, "test": 8}}

    def build_data(cfg):
        bundle = real(cfg)
        bundle.info.update(split_files=split_files, subset=subset)
        return bundle

    monkeypatch.setattr(runner, "build_data", build_data)
    summary = train_run(build_config("joint", "synthetic", tiny_overrides()), tmp_path / "run", log=lambda *_: None)
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["split_files"], summary["subset"]) == (on_disk["split_files"], on_disk["subset"]) == \
        (split_files, subset)
    monkeypatch.setattr(runner, "build_data", real)
    assert "subset" not in train_run(build_config("joint", "synthetic", tiny_overrides()), tmp_path / "whole",
                                     log=lambda *_: None)


def test_an_interruption_after_the_last_epoch_is_not_placed_inside_one(tmp_path):
    # Ctrl-C after the last epoch's record and checkpoint, before summary.json and DONE.
    run = tmp_path / "run"
    assert runner._interrupted_message(run, 2) == f"interrupted before the run started; nothing was written to {run}"
    train_run(build_config("joint", "synthetic", tiny_overrides()), run, log=lambda *_: None)
    assert runner._interrupted_message(run, 2) == (
        f"interrupted after the last epoch; epochs 0-1 are checkpointed in {run}. Resume at epoch 2 with: "
        f"augbench train --run-dir {run} --resume")


def test_the_interruption_message_maps_the_checkpoint_instead_of_reading_it_into_memory(tmp_path, monkeypatch):
    # It only needs the epoch; a full-size checkpoint (hundreds of MB) read into RAM would delay the Ctrl-C exit.
    run = tmp_path / "run"
    train_run(build_config("joint", "synthetic", tiny_overrides()), run, log=lambda *_: None)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    assert "Resume at epoch 2" in runner._interrupted_message(run, 2)
    assert [kw["mmap"] for kw in calls] == [True]


def test_an_evaluation_of_a_method_without_alternative_fusions_records_none(tiny_bundle):
    method = build_method(build_config("joint", "synthetic", tiny_overrides()), tiny_bundle, torch.device("cpu"))
    out = evaluate(method, tiny_bundle.loader("test", batch_size=8, train=False, seed=0), tiny_bundle.task.num_classes)
    assert "alternatives" not in out and set(out["per_modality"]) == {"audio", "visual"}


def test_seeding_sets_both_process_wide_determinism_switches_either_way():
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark)
    try:
        runner.seed_everything(0, False)
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
        runner.seed_everything(0, True)
        assert not torch.backends.cudnn.benchmark and torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]


@pytest.mark.parametrize("cuda", [True, False])
def test_train_device_auto_takes_the_gpu_when_there_is_one_and_cuda_without_one_is_refused(monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert runner.select_device("auto") == torch.device("cuda" if cuda else "cpu")
    assert runner.select_device("cpu") == torch.device("cpu")
    if cuda:
        assert runner.select_device("cuda") == torch.device("cuda")
    else:
        with pytest.raises(runner.DeviceUnavailableError, match="train.device=cuda but torch sees no CUDA device"):
            runner.select_device("cuda")


def test_seeding_restarts_the_python_numpy_and_torch_streams_from_the_seed(monkeypatch):
    # Methods draw from all three (per-sample drops, permutations, dropout): a run is reproducible only if the seed
    # restarts each one.
    def draws():
        return random.random(), float(np.random.rand()), torch.rand(1).item()

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.utils.deterministic.fill_uninitialized_memory)
    try:
        runner.seed_everything(7, False)
        first = draws()
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        runner.seed_everything(7, True)
        # cuBLAS is deterministic only with a fixed workspace, which must be set before its first call.
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert draws() == first
        runner.seed_everything(8, False)
        assert all(a != b for a, b in zip(draws(), first))
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark, torch.utils.deterministic.fill_uninitialized_memory = before[2:]


def test_evaluation_scores_the_model_in_eval_mode_and_leaves_its_weights_and_statistics_alone(tiny_bundle):
    # In training mode, dropout would score a random sub-network and batch norm would normalise by each evaluation
    # batch and fold the val/test rows into its running statistics, which the next epoch then trains with.
    method = build_method(build_config("joint", "synthetic", tiny_overrides()), tiny_bundle, torch.device("cpu"))
    method.train()
    before = {k: v.clone() for k, v in method.state_dict().items()}
    test = tiny_bundle.loader("test", batch_size=4, train=False, seed=0)
    first = evaluate(method, test, tiny_bundle.task.num_classes)
    assert not method.training
    after = method.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    method.train()
    assert evaluate(method, test, tiny_bundle.task.num_classes) == first


def test_a_finished_run_that_lost_its_summary_resumes_to_the_same_summary(tmp_path):
    # DONE alone is no finished run: resuming writes summary.json again from the last checkpoint, training nothing.
    run = tmp_path / "run"
    cfg = build_config("joint", "synthetic", tiny_overrides())
    first = json.loads(json.dumps(train_run(cfg, run, log=lambda *_: None)))
    (run / "summary.json").unlink()
    lines = []
    again = train_run(cfg, run, resume=True, log=lines.append)
    assert lines == [f"resuming {run.name} at epoch 2"], "no epoch is trained again"
    assert json.loads((run / "summary.json").read_text())["protocols"] == again["protocols"] == first["protocols"]


def test_an_epoch_line_shows_each_splits_fused_and_per_modality_accuracy_and_nan_for_a_loss_never_logged():
    # A method that logs no loss must not read as one that reached a loss of 0.
    def split(acc, audio, visual):
        return {"acc": acc, "per_modality": {"audio": {"acc": audio}, "visual": {"acc": visual}}}

    record = {"epoch": 3, "train": {}, "val": split(0.5, 0.25, 0.125), "test": split(0.75, 0.5, 0.375)}
    assert runner._epoch_line(record) == ("epoch 3 | loss nan | val acc 0.500 (audio 0.250 visual 0.125) | "
                                          "test acc 0.750 (audio 0.500 visual 0.375)")
    del record["val"]
    record["train"]["loss"] = 1.25
    assert runner._epoch_line(record) == "epoch 3 | loss 1.2500 | test acc 0.750 (audio 0.500 visual 0.375)"


def test_an_interruption_before_the_first_checkpoint_says_the_resume_starts_at_epoch_0(tmp_path):
    # checkpoint_every=2: epoch 0 is recorded in metrics.jsonl but not checkpointed, so a resume trains it again.
    run = tmp_path / "run"
    cfg = build_config("joint", "synthetic", merge_overrides(tiny_overrides(), {"train": {"epochs": 3,
                                                                                          "checkpoint_every": 2}}))

    def stop(line):
        if line.startswith("epoch 0"):
            raise KeyboardInterrupt

    with pytest.raises(runner.RunInterrupted) as stopped:
        train_run(cfg, run, log=stop)
    assert str(stopped.value) == (f"interrupted during epoch 1 (of epochs 0-2); no epoch is checkpointed yet in {run}. "
                                  f"Resume at epoch 0 with: augbench train --run-dir {run} --resume")


def test_the_ranks_training_batches_together_are_the_single_process_global_batches(tiny_bundle):
    # train.batch_size is the global batch: under 2 ranks each trains on half of it, not a whole batch of its own.
    cfg = build_config("joint", "synthetic", tiny_overrides())
    single = _train_batches(cfg, tiny_bundle)
    ranks = [_train_batches(cfg, tiny_bundle, rank, 2) for rank in (0, 1)]
    assert [len(b) for b in single] == [16] * 4 and [len(b) for r in ranks for b in r] == [8] * 8
    assert [sorted(a + b) for a, b in zip(*ranks)] == [sorted(b) for b in single]


def _train_batches(cfg, bundle, rank=0, world_size=1):
    """The row indices of each batch that ``rank`` of ``world_size`` trains on in epoch 1."""
    train = make_loaders(cfg, bundle, torch.device("cpu"), rank, world_size).train
    train.set_epoch(1)
    return [batch["index"].tolist() for batch in train]


def test_a_method_whose_steps_log_no_loss_is_not_taken_for_a_diverged_one(tmp_path, monkeypatch):
    # Divergence is read from a logged loss; a method that logs none has nothing to diverge on.
    joint = get_method("joint")
    real = joint.update

    def update(self, batch, step):
        real(self, batch, step)
        return {}

    monkeypatch.setattr(joint, "update", update)
    overrides = merge_overrides(tiny_overrides(), {"train": {"epochs": 1}})
    summary = train_run(build_config("joint", "synthetic", overrides), tmp_path / "run", log=lambda *_: None)
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["train"] == {} and summary["protocols"]["last"]["epoch"] == 0


def test_epoch_hooks_and_steps_run_in_training_mode_whatever_mode_the_hook_before_left(tmp_path, monkeypatch):
    # A hook that scores rows (eval mode, as a method's own estimate does) in on_epoch_end or select_rows must not
    # leave the next hook or the epoch's steps without dropout and batch-norm updates.
    joint = get_method("joint")
    real, modes = joint.update, []

    def on_epoch_start(self, epoch, loaders):
        modes.append(("start", self.training))

    def select_rows(self, epoch, loaders):
        self.eval()

    def update(self, batch, step):
        modes.append(("step", self.training))
        return real(self, batch, step)

    def on_epoch_end(self, epoch, loaders):
        self.eval()

    for name, hook in (("on_epoch_start", on_epoch_start), ("select_rows", select_rows), ("update", update),
                       ("on_epoch_end", on_epoch_end)):
        monkeypatch.setattr(joint, name, hook)
    train_run(build_config("joint", "synthetic", tiny_overrides()), tmp_path / "run", log=lambda *_: None)
    assert modes == ([("start", True)] + [("step", True)] * 4) * 2


def test_an_epoch_end_hook_that_returns_nothing_records_empty_diagnostics(tmp_path, monkeypatch):
    # Plots and the demo read record["diag"] as a mapping; a hook without diagnostics must not record null there.
    monkeypatch.setattr(get_method("joint"), "on_epoch_end", lambda self, epoch, loaders: None)
    train_run(build_config("joint", "synthetic", tiny_overrides()), tmp_path / "run", log=lambda *_: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [record["diag"] for record in records] == [{}, {}]


def test_a_dataset_serving_other_modalities_than_it_declares_is_refused(monkeypatch):
    # A sweep checks methods' settings against the declared names before any data is read; training must see those.
    from benchmarks.config import build_config
    from benchmarks.runner import build_data
    from datasets.synthetic import Synthetic

    cfg = build_config("joint", "synthetic", tiny_overrides())
    assert build_data(cfg).task.names == Synthetic.modality_names(cfg.data) == ("audio", "visual")
    monkeypatch.setattr(Synthetic, "modality_names", classmethod(lambda cls, hp: ("audio", "image")))
    with pytest.raises(RuntimeError, match=r"dataset 'synthetic' declares modalities \['audio', 'image'\] "
                                           r"\(modality_names\) but serves \['audio', 'visual'\]"):
        build_data(cfg)


def test_finishing_a_run_killed_after_its_last_checkpoint_adds_no_segment_and_keeps_the_trainers_env(tmp_path,
                                                                                                     monkeypatch):
    # Killed after the last checkpoint, before summary.json and DONE: the resume trains no epoch, yet it added a
    # segment starting at the run's end and the summary named the finishing process's machine as the run's.
    cfg = build_config("joint", "synthetic", tiny_overrides())
    run_dir = tmp_path / "run"
    train_run(cfg, run_dir, log=lambda line: None)
    first = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "DONE").unlink()
    (run_dir / "summary.json").unlink()
    real = runner.environment
    monkeypatch.setattr(runner, "environment", lambda device: {**real(device), "cpu_model": "another machine"})
    summary = train_run(cfg, run_dir, resume=True, log=lambda line: None)
    assert [s["first_epoch"] for s in summary["segments"]] == [0]
    assert summary["env"]["cpu_model"] == first["env"]["cpu_model"] != "another machine"
    assert summary["protocols"] == first["protocols"]
