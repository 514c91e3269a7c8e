"""Data-parallel training on two gloo processes (CPU): gradient averaging, sharding, broadcast, a full run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import socket
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import benchmarks.runner as runner
import core.distributed as distributed
from baselines.base import StepInfo
from baselines.registry import get_method
from benchmarks.cli import main as cli_main
from benchmarks.config import build_config
from benchmarks.runner import (
    build_data,
    build_method,
    make_loaders,
    restore_rng,
    rng_state,
    seed_everything,
    seed_rank,
    train_run,
)
from core.distributed import DistContext, env_world, shutdown
from tests.conftest import join_gloo, make_context, tiny_overrides
from tests.numeric import close

WORLD = 2


def crafted_problem() -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """A fixed linear classifier and an 8-sample batch; rank r gets rows [4r, 4r + 4)."""
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -0.2, 0.1], [0.3, 0.8, -0.6]]))
        model.bias.copy_(torch.tensor([0.1, -0.1]))
    x = torch.arange(24, dtype=torch.float32).reshape(8, 3) / 10 - 1
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    return model, x, y


def _worker(rank: int, port: int, tmp: str) -> None:
    ddp, created = join_gloo(rank, port, WORLD)
    out: dict = {}

    # 1. Crafted case: the averaged gradient of two half-batches is the full-batch gradient.
    model, x, y = crafted_problem()
    only_rank0 = nn.Parameter(torch.ones(2))
    unused = nn.Parameter(torch.ones(2))
    ctx = make_context(momentum=0.0, weight_decay=0.0)
    ctx.step_pre_hook = ddp.step_pre_hook
    opt = ctx.make_optimizer([*model.parameters(), only_rank0, unused], lr=0.1)
    loss = F.cross_entropy(model(x[4 * rank:4 * rank + 4]), y[4 * rank:4 * rank + 4])
    if rank == 0:
        loss = loss + only_rank0.sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    out["grads"] = [model.weight.grad.clone(), model.bias.grad.clone()]
    out["params"] = [model.weight.detach().clone(), model.bias.detach().clone()]
    out["only_rank0_grad"] = only_rank0.grad.clone()
    out["unused_grad_is_none"] = unused.grad is None

    # 2. A registered method: broadcast initial parameters, sharded epoch, two steps, same parameters after.
    cfg = build_config("joint", "synthetic", tiny_overrides())
    bundle = build_data(cfg)
    method = build_method(cfg, bundle, torch.device("cpu"), step_pre_hook=ddp.step_pre_hook)
    if rank == 1:
        with torch.no_grad():
            for p in method.parameters():
                p.add_(1.0)
    ddp.broadcast_module(method)
    loaders = make_loaders(cfg, bundle, torch.device("cpu"), ddp.rank, ddp.world_size)
    out["batch_sizes"], out["rows"] = [], []
    for i, batch in enumerate(loaders.train):
        out["batch_sizes"].append(len(batch["index"]))
        out["rows"] += batch["index"].tolist()
        if i < 2:
            method.update(batch, StepInfo(0, i, len(loaders.train), 2))
    out["method_params"] = {k: v.detach().clone() for k, v in method.named_parameters()}

    # 3. The runner end to end: every rank trains, rank 0 writes the run folder.
    out["summary"] = train_run(cfg, Path(tmp) / "run", log=lambda msg: None)
    torch.save(out, Path(tmp) / f"rank{rank}.pt")
    dist.barrier()
    shutdown(created)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_two_gloo_ranks_average_gradients_shard_data_and_agree_on_parameters(tmp_path):
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    model, x, y = crafted_problem()
    full = F.cross_entropy(model(x), y)
    full.backward()
    expected = [model.weight.grad, model.bias.grad]
    for out in ranks:
        # float32 mean of two half-batch gradients against the full-batch gradient: a reordered sum.
        for got, want in zip(out["grads"], expected):
            close(got, want)
        for got, p, g in zip(out["params"], (model.weight, model.bias), expected):
            close(got, p.detach() - 0.1 * g)
        close(out["only_rank0_grad"], torch.full((2,), 0.5), msg="zeros stand in on rank 1")
        assert out["unused_grad_is_none"], "a parameter with no gradient anywhere keeps None (SGD skips it)"

    first, second = ranks
    assert set(first["rows"]).isdisjoint(second["rows"]) and len(set(first["rows"] + second["rows"])) == 64
    assert first["batch_sizes"] == second["batch_sizes"] == [8] * 4, "global batch 16 = 8 per rank, same count"
    # Broadcast start, all-reduced gradients, identical steps: the ranks agree bit for bit.
    for name, value in first["method_params"].items():
        torch.testing.assert_close(second["method_params"][name], value, rtol=0, atol=0, msg=name)

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and (tmp_path / "run" / "DONE").exists()
    assert [segment["world_size"] for segment in summary["segments"]] == [2]
    assert summary["protocols"] == json.loads(json.dumps(second["summary"]["protocols"])), \
        "rank 1 evaluates the same model on the full split"


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha1(tensor.detach().cpu().numpy().tobytes()).hexdigest()


def _spy_on_updates(seen: list[dict]) -> Callable:
    """Record, at every training step of joint, the global RNG state, the parameters and the logs; returns the
    unspied ``update`` to put back."""
    cls = get_method("joint")
    real = cls.update

    def update(self, batch, step):
        params = torch.cat([p.detach().reshape(-1) for p in self.parameters()])
        entry = {"epoch": step.epoch, "rng": digest(torch.get_rng_state()), "params": digest(params)}
        entry["logs"] = real(self, batch, step)
        seen.append(entry)
        return entry["logs"]

    cls.update = update
    return real


def _stop_at_epoch(epoch: int) -> None:
    """Make every rank fail at the start of ``epoch``, after the previous epoch's checkpoint (like a kill)."""
    real = runner.lr_factor

    def lr_factor(e, *args):
        if e == epoch:
            raise RuntimeError("stop")
        return real(e, *args)

    runner.lr_factor = lr_factor


def _runs_worker(rank: int, port: int, tmp: str) -> None:
    _, created = join_gloo(rank, port, WORLD)
    overrides = tiny_overrides()
    overrides["train"]["epochs"] = 2
    cfg = build_config("joint", "synthetic", overrides)
    out: dict = {"full": [], "resumed": []}
    real_update = _spy_on_updates(out["full"])
    train_run(cfg, Path(tmp) / "full", log=lambda msg: None)
    real_lr_factor = runner.lr_factor
    _stop_at_epoch(1)
    try:
        train_run(cfg, Path(tmp) / "cut", log=lambda msg: None)
    except RuntimeError as err:
        out["stopped"] = str(err)
    runner.lr_factor = real_lr_factor
    get_method("joint").update = real_update
    _spy_on_updates(out["resumed"])
    out["resume_log"] = []
    train_run(cfg, Path(tmp) / "cut", resume=True, log=out["resume_log"].append)
    torch.save(out, Path(tmp) / f"rank{rank}.pt")
    dist.barrier()
    shutdown(created)


def _lagging_worker(rank: int, port: int, tmp: str) -> None:
    _, created = join_gloo(rank, port, WORLD)
    if rank == 1:
        time.sleep(3.0)  # a rank slower to start (page cache, a busy core) than rank 0 is to write config.yaml
    overrides = tiny_overrides()
    overrides["train"]["epochs"] = 1
    train_run(build_config("joint", "synthetic", overrides), Path(tmp) / "run", log=lambda msg: None)
    (Path(tmp) / f"rank{rank}.done").touch()
    shutdown(created)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_a_rank_that_starts_late_trains_the_run_rank_0_has_begun(tmp_path):
    torch.multiprocessing.spawn(_lagging_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    assert sorted(p.name for p in tmp_path.glob("rank*.done")) == ["rank0.done", "rank1.done"]
    assert (tmp_path / "run" / "DONE").exists()


def _hook_worker(rank: int, port: int, tmp: str) -> None:
    _, created = join_gloo(rank, port, WORLD)
    joint, starts = get_method("joint"), []
    real = joint.update

    def on_epoch_end(self, epoch, loaders):
        with torch.no_grad():
            next(self.parameters()).add_(float(rank + 1))

    def update(self, batch, step):
        if step.step == 0:
            starts.append(torch.cat([p.detach().flatten() for p in self.parameters()]))
        return real(self, batch, step)

    joint.on_epoch_end, joint.update = on_epoch_end, update
    train_run(build_config("joint", "synthetic", tiny_overrides()), Path(tmp) / "run", log=lambda msg: None)
    torch.save(starts, Path(tmp) / f"rank{rank}.pt")
    shutdown(created)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_the_model_an_epoch_end_hook_leaves_on_rank_0_goes_to_every_rank(tmp_path):
    # A hook may change the model differently on each rank (AUG grows a learner from rank 0's draws); the next
    # epoch must start from rank 0's model everywhere.
    torch.multiprocessing.spawn(_hook_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    assert len(first) == len(second) == 2
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def _cli_worker(rank: int, port: int, tmp: str) -> None:
    _, created = join_gloo(rank, port, WORLD)
    args = ["train", "--method", "joint", "--dataset", "synthetic", "--epochs", "1", "--out", str(Path(tmp) / "runs"),
            "--wandb", "disabled", "--no-progress", "--set", "model.width=4", "--set", "model.blocks=[1,1,1,1]",
            "--set", "data.n_train=32"]
    with open(Path(tmp) / f"rank{rank}.out", "w") as out, contextlib.redirect_stdout(out):
        assert cli_main(args) == 0
    shutdown(created)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_the_train_command_reports_once_under_torchrun(tmp_path):
    torch.multiprocessing.spawn(_cli_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    assert (tmp_path / "rank1.out").read_text() == ""
    report = (tmp_path / "rank0.out").read_text()
    assert report.startswith("run directory: ") and '"clean"' in report


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Two gloo ranks: a 2-epoch joint run, and the same run stopped after epoch 0 and resumed."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed gloo")
    tmp = tmp_path_factory.mktemp("ddp_runs")
    torch.multiprocessing.spawn(_runs_worker, args=(_free_port(), str(tmp)), nprocs=WORLD, join=True)
    return tmp, [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_ranks_start_from_one_model_but_draw_their_own_random_streams(runs):
    _, (first, second) = runs
    assert first["full"][0]["params"] == second["full"][0]["params"], "rank 0's initial model on every rank"
    assert len(first["full"]) == len(second["full"]) > 0
    for a, b in zip(first["full"], second["full"]):
        assert a["params"] == b["params"], "averaged gradients keep the ranks equal"
        assert a["rng"] != b["rng"], "dropout masks and per-sample draws must differ between ranks"


def test_resume_restores_every_rank_its_own_random_state(runs):
    tmp, ranks = runs
    assert all(out["stopped"] == "stop" for out in ranks)
    assert len(torch.load(tmp / "cut" / "checkpoint.pt", weights_only=False)["rng_ranks"]) == WORLD
    for out in ranks:
        full = [e["rng"] for e in out["full"] if e["epoch"] == 1]
        assert [e["rng"] for e in out["resumed"]] == full, "the resumed epoch replays this rank's stream"
    resumed = json.loads((tmp / "cut" / "summary.json").read_text())["protocols"]
    assert resumed == json.loads((tmp / "full" / "summary.json").read_text())["protocols"]


def test_only_rank_0_logs_a_resumed_run(runs):
    _, (first, second) = runs
    assert first["resume_log"][0] == "resuming cut at epoch 1" and len(first["resume_log"]) == 2, "and epoch 1's line"
    assert second["resume_log"] == [], "the other ranks are quiet"


def test_recorded_train_loss_is_the_mean_over_every_rank(runs):
    tmp, ranks = runs
    recorded = [json.loads(line)["train"]["loss"] for line in (tmp / "full" / "metrics.jsonl").read_text().splitlines()]
    for epoch, value in enumerate(recorded):
        losses = [e["logs"]["loss"] for out in ranks for e in out["full"] if e["epoch"] == epoch]
        assert value == pytest.approx(sum(losses) / len(losses), rel=1e-12)
        own = [e["logs"]["loss"] for e in ranks[0]["full"] if e["epoch"] == epoch]
        assert value != pytest.approx(sum(own) / len(own), rel=1e-9), "rank 0's steps alone are not the epoch"


def test_rank_0_keeps_the_single_process_stream_and_other_ranks_get_their_own():
    # What rank 0 draws and broadcasts (AUG's new learners, say) must be what one process would draw.
    seed_everything(5, False)
    single = torch.rand(4)
    draws = []
    for rank in (0, 1):
        seed_everything(5, False)
        seed_rank(5, DistContext(rank, 2, rank))
        draws.append(torch.rand(4))
    torch.testing.assert_close(draws[0], single, rtol=0, atol=0)
    assert not torch.equal(draws[1], single)
    # With more ranks, each rank other than 0 draws its own stream, not one shared by all of them.
    seed_everything(5, False)
    seed_rank(5, DistContext(2, 3, 2))
    assert not torch.equal(torch.rand(4), draws[1])


def test_every_rank_draws_its_own_python_and_numpy_streams_too():
    # Per-sample drops and permutations may come from random or numpy rather than torch.
    draws = []
    for rank, world in ((0, 1), (0, 2), (1, 2), (2, 3)):
        seed_everything(5, False)
        seed_rank(5, DistContext(rank, world, rank))
        draws.append((random.random(), float(np.random.rand())))
    assert draws[1] == draws[0], "rank 0 keeps the single-process streams"
    for stream in zip(*draws[1:]):
        assert len(set(stream)) == 3, "rank 0, rank 1 of 2 and rank 2 of 3 each draw their own"


def test_an_old_checkpoint_restores_its_one_state_on_rank_0_and_a_fresh_stream_elsewhere():
    torch.manual_seed(3)
    saved = rng_state()
    expected = torch.rand(4)
    restore_rng({"rng": saved}, 0, DistContext(0, 2, 0), epoch=1)
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)
    restore_rng({"rng": saved}, 0, DistContext(1, 2, 1), epoch=1)
    assert not torch.equal(torch.rand(4), expected), "rank 1 must not replay rank 0's stream"


def test_a_rank_an_old_checkpoint_lacks_resumes_on_the_stream_of_its_rank_and_epoch():
    # Seeded afresh, not left wherever the process's stream stood: two resumes of one checkpoint draw alike.
    rank1 = DistContext(1, 2, 1)
    seed_rank(0, rank1, "resume", 1)
    expected = torch.rand(4)
    torch.manual_seed(3)
    saved = rng_state()
    torch.rand(7)
    restore_rng({"rng": saved}, 0, rank1, epoch=1)
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)
    restore_rng({"rng": saved}, 0, rank1, epoch=2)
    assert not torch.equal(torch.rand(4), expected), "another resumed epoch draws another stream"


def test_env_world_reads_rank_world_size_and_local_rank_from_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert env_world() == (0, 1, 0), "no torchrun: a single process"
    # A second node: the global rank is not the local one.
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert env_world() == (3, 4, 1)
    monkeypatch.delenv("LOCAL_RANK")
    assert env_world() == (3, 4, 3), "without LOCAL_RANK the local rank is the rank"
    for rank, world in (("4", "4"), ("-1", "4"), ("0", "0")):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", world)
        with pytest.raises(ValueError, match=f"RANK={rank}, WORLD_SIZE={world}"):
            env_world()


@pytest.mark.parametrize("call", ["broadcast_module", "sync_for_eval"])
def test_ranks_compare_their_structure_before_any_collective_that_copies_a_module(monkeypatch, call):
    # Collectives over tensors that differ in number or size hang or corrupt silently on the other ranks, so the
    # structure check must come first; exercised on one process with the collectives recorded.
    calls = []

    def diverged(module):
        calls.append("check")
        raise distributed.RankDivergenceError("rank 1 holds other tensors")

    monkeypatch.setattr(distributed, "check_same_structure", diverged)
    for name in ("broadcast", "all_reduce"):
        monkeypatch.setattr(distributed.dist, name, lambda *args, _name=name, **kwargs: calls.append(_name))
    with pytest.raises(distributed.RankDivergenceError, match="rank 1 holds other tensors"):
        getattr(DistContext(rank=0, world_size=2), call)(nn.Linear(2, 2))
    assert calls == ["check"]


# --- joining the group and choosing the device (one process, the collectives' entry points recorded) -----------------
def test_a_cpu_run_joins_with_gloo_even_where_cuda_is_available(monkeypatch):
    # train.device=cpu on a GPU machine: NCCL cannot reduce CPU tensors, so the group must be gloo; otherwise NCCL.
    joined = []
    for name, value in (("RANK", "3"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend, **kwargs: joined.append((backend, kwargs["rank"], kwargs["world_size"])))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for device in ("cpu", "auto", "cuda"):
        ctx, created = distributed.init_from_env(device)
        assert created and ctx == DistContext(3, 4, 1), device
    assert joined == [("gloo", 3, 4), ("nccl", 3, 4), ("nccl", 3, 4)]


def test_a_rank_trains_on_its_local_gpu_not_the_one_its_global_rank_names(monkeypatch):
    # Rank 3 of 4 on a second node of two GPUs each is local rank 1: cuda:3 does not exist there.
    pinned = []
    monkeypatch.setattr(torch.cuda, "set_device", pinned.append)
    assert DistContext(3, 4, 1).device(torch.device("cuda")) == torch.device("cuda", 1)
    assert pinned == [1]
    assert DistContext(3, 4, 1).device(torch.device("cpu")) == torch.device("cpu")
    assert DistContext().device(torch.device("cuda")) == torch.device("cuda"), "a single process keeps its device"
    assert pinned == [1]


def test_the_runner_broadcasts_checks_rows_and_syncs_for_evaluation_at_their_points(tmp_path, monkeypatch):
    # Rank 0's model goes to every rank before the first step and again after every epoch hook (which may change it
    # per rank); the epoch's rows are compared before its steps; the ranks' models are made one before evaluating.
    # Recorded on one process whose context stands in for a rank's.
    events: list = []

    class Recording(DistContext):
        def broadcast_module(self, module):
            events.append("broadcast")

        def sync_for_eval(self, module):
            events.append("sync_for_eval")

        def check_same_rows(self, rows):
            events.append(("rows", len(rows)))

    joint = get_method("joint")
    real_update, real_end, real_evaluate = joint.update, joint.on_epoch_end, runner.evaluate
    monkeypatch.setattr(runner, "init_from_env", lambda device: (Recording(), False))
    monkeypatch.setattr(joint, "update", lambda self, batch, step: events.append("update") or real_update(
        self, batch, step))
    monkeypatch.setattr(joint, "on_epoch_end", lambda self, epoch, loaders: events.append("on_epoch_end") or real_end(
        self, epoch, loaders))
    monkeypatch.setattr(runner, "evaluate", lambda *args: events.append("evaluate") or real_evaluate(*args))
    overrides = tiny_overrides()
    overrides["train"].update(epochs=2, max_steps_per_epoch=2)
    train_run(build_config("joint", "synthetic", overrides), tmp_path / "run", log=lambda msg: None)
    epoch = [("rows", 64), "update", "update", "sync_for_eval", "evaluate", "evaluate", "on_epoch_end", "broadcast"]
    assert events == ["broadcast", *epoch, *epoch]
