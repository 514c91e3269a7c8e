"""Exact data-parallel steps for methods that edit gradients between backward and step: OGM, OGM-GE, AGM, MMPareto.

Two gloo ranks with B/2 samples each must take the single-process step on the global batch B. BatchNorm normalises
each rank's slice with its own statistics, so no step of a BatchNorm encoder can match exactly; these cases use
vector modalities (MLP encoders, no BatchNorm). Every case also runs with the sync/reduce API switched off (the
pre-step hook still averages the edited local gradients: the behaviour before the API), and that run must differ
from the single-process step, so each comparison is sensitive to what it pins.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pytest
import torch
import torch.distributed as dist
from torch import nn

from baselines.base import Method, StepInfo, TrainContext
from baselines.hparams import resolve
from baselines.networks import MODEL_HPARAMS
from baselines.registry import get_method
from benchmarks.config import method_hparams
from benchmarks.distributed import init_from_env, shutdown
from datasets.base import ModalitySpec, TaskSpec
from tests.conftest import make_context
from tests.test_distributed import WORLD, _free_port

BATCH = 8
STEPS = 2
LR = 0.1
TASK = TaskSpec("vectors", 3, (ModalitySpec("audio", "vector", (6,)), ModalitySpec("visual", "vector", (5,))))
MODEL_HP = resolve("model", MODEL_HPARAMS, None, {"mlp_hidden": 8, "feature_dim": 6})
# Method knobs per case: MLP encoders have no conv kernels, so OGM edits every >= 2-D encoder tensor; AGM clips on
# every step with a bound that binds, so the clipped norm must be the global batch's.
CASES = {
    "ogm": ("ogm", {"grad_params": "non_1d"}),
    "ogm_ge": ("ogm_ge", {"grad_params": "non_1d"}),
    "agm": ("agm", {"clip_trigger": 0.0, "clip_norm": 0.05}),
    "mmpareto": ("mmpareto", {}),
}
# Logged statistics that must be the global batch's (losses are logged per rank and are not compared).
GLOBAL_LOGS = ("coeff_", "k_", "cos_")


class LocalContext(TrainContext):
    """The API switched off: statistics and edits from each rank's slice, edited gradients averaged at the step."""

    def sync_gradients(self, params: Iterable[nn.Parameter], how: str = "mean") -> None:
        pass

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def global_batches() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(7)
    return [{"audio": torch.randn(BATCH, 6, generator=gen), "visual": torch.randn(BATCH, 5, generator=gen),
             "label": torch.randint(0, 3, (BATCH,), generator=gen), "index": torch.arange(BATCH)}
            for _ in range(STEPS)]


def build(case: str, ctx_cls: type[TrainContext], hook) -> Method:
    name, overrides = CASES[case]
    cls = get_method(name)
    base = make_context(lr=LR)
    ctx = ctx_cls(device=base.device, epochs=base.epochs, train_hp=base.train_hp, model_hp=MODEL_HP,
                  step_pre_hook=hook)
    torch.manual_seed(0)
    method = cls(TASK, resolve(name, method_hparams(cls), TASK.dataset, overrides, variants=cls.VARIANTS), ctx)
    return method.train()


def train(case: str, ctx_cls: type[TrainContext], hook, rank: int, world: int) -> dict:
    """STEPS updates on this rank's slice of each global batch; the final parameters, buffers and logs."""
    method = build(case, ctx_cls, hook)
    # Ranks' RNG streams differ on purpose: OGM-GE must take rank 0's noise, which a single process seeded 100 draws.
    torch.manual_seed(100 + rank)
    logs = []
    share = BATCH // world
    for i, batch in enumerate(global_batches()):
        shard = {k: v[rank * share:(rank + 1) * share] for k, v in batch.items()}
        logs.append(method.update(shard, StepInfo(epoch=0, step=i, steps_per_epoch=STEPS, epochs=1)))
    return {"params": {n: p.detach().clone() for n, p in method.named_parameters()},
            "buffers": {n: b.clone() for n, b in method.named_buffers() if b.is_floating_point()},
            "logs": [{k: v for k, v in log.items() if k.startswith(GLOBAL_LOGS)} for log in logs]}


def api_checks(ctx: TrainContext, rank: int) -> dict:
    """Crafted gradients that differ per rank: what sync_gradients and the pre-step hook make of them."""
    out = {}
    a, b, c = (nn.Parameter(torch.zeros(2)) for _ in range(3))
    opt = ctx.make_optimizer([a, b, c], lr=1.0, momentum=0.0, weight_decay=0.0)
    a.grad = torch.full((2,), 1.0 + 2 * rank)
    if rank == 0:
        b.grad = torch.full((2,), 4.0)
    ctx.sync_gradients([a, b])
    out["mean"], out["zeros_elsewhere"] = a.grad.clone(), b.grad.clone()
    c.grad = torch.full((2,), 10.0 * rank)
    ctx.sync_gradients([c], how="main")
    out["main"] = c.grad.clone()
    # Against the contract, a synced gradient is now edited per rank: a skipped average leaves the ranks apart.
    a.grad.add_(rank)
    # A gradient created anew after its sync is not exempt: the hook averages it.
    b.grad = torch.full((2,), 2.0 * rank)
    opt.step()
    out["a_after_step"], out["b_after_step"] = a.detach().clone(), b.detach().clone()
    stats = torch.tensor([1.0 + rank, 3.0])
    out["sum"], out["mean_stat"] = ctx.all_reduce_sum(stats.clone()), ctx.all_reduce_mean(stats.clone())
    return out


def _worker(rank: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), WANDB_MODE="disabled", GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    ddp, created = init_from_env("cpu")
    ctx = make_context()
    ctx.step_pre_hook = ddp.step_pre_hook
    out = {"api": api_checks(ctx, rank)}
    for case in CASES:
        out[case] = {"exact": train(case, TrainContext, ddp.step_pre_hook, rank, WORLD),
                     "local": train(case, LocalContext, ddp.step_pre_hook, rank, WORLD)}
    torch.save(out, Path(tmp) / f"rank{rank}.pt")
    dist.barrier()
    shutdown(created)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed gloo")
    tmp = tmp_path_factory.mktemp("ddp_methods")
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_single_process_context_api_is_the_identity():
    ctx = make_context()
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([1.0, 2.0])
    ctx.sync_gradients([p])
    stats = torch.tensor([1.0, 3.0])
    assert not ctx.data_parallel
    assert p.grad.tolist() == [1.0, 2.0] and ctx.all_reduce_sum(stats) is stats and stats.tolist() == [1.0, 3.0]
    assert ctx.all_reduce_mean(stats) is stats
    with pytest.raises(ValueError, match="how='median'"):
        ctx.sync_gradients([p], how="median")


def test_sync_gradients_averages_or_takes_rank0_and_exempts_only_unchanged_gradients(ranks):
    first, second = (out["api"] for out in ranks)
    for out in (first, second):
        torch.testing.assert_close(out["mean"], torch.full((2,), 2.0))
        torch.testing.assert_close(out["zeros_elsewhere"], torch.full((2,), 2.0))
        torch.testing.assert_close(out["main"], torch.zeros(2))
        torch.testing.assert_close(out["b_after_step"], torch.full((2,), -1.0), msg="a new gradient is averaged")
        torch.testing.assert_close(out["sum"], torch.tensor([3.0, 6.0]))
        torch.testing.assert_close(out["mean_stat"], torch.tensor([1.5, 3.0]))
    torch.testing.assert_close(first["a_after_step"], torch.full((2,), -2.0))
    torch.testing.assert_close(second["a_after_step"], torch.full((2,), -3.0), msg="a synced gradient is skipped")


@pytest.mark.parametrize("case", CASES)
def test_two_ranks_with_half_batches_take_the_single_process_step(ranks, case):
    want = train(case, TrainContext, None, 0, 1)
    for out in ranks:
        got = out[case]["exact"]
        for kind in ("params", "buffers"):
            assert got[kind].keys() == want[kind].keys()
            for name, value in want[kind].items():
                torch.testing.assert_close(got[kind][name], value, atol=1e-5, rtol=1e-5, msg=f"{case} {name}")
        for got_log, want_log in zip(got["logs"], want["logs"], strict=True):
            assert got_log.keys() == want_log.keys() and want_log
            for key, value in want_log.items():
                assert got_log[key] == pytest.approx(value, abs=1e-5), (case, key)
    local = ranks[0][case]["local"]["params"]
    gap = max((local[n] - v).abs().max().item() for n, v in want["params"].items())
    assert gap > 1e-4, f"{case}: local statistics give the same step, so this case pins nothing"
