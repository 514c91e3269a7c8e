"""ARL and IPRM declare ``DATA_PARALLEL = "exact"``: two gloo ranks with B/2 samples each must take the single-process
step on the global batch B (vector modalities, MLP encoders without BatchNorm, as in ``test_distributed_methods``).
Each case also runs with the sync/reduce API switched off, and that run must differ, so the comparison pins the
reductions the methods make."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from baselines.base import Method, StepInfo, TrainContext
from baselines.hparams import resolve
from baselines.registry import get_method
from benchmarks.config import method_hparams
from benchmarks.distributed import init_from_env, shutdown
from tests.conftest import make_context
from tests.test_distributed import WORLD, _free_port
from tests.test_distributed_methods import BATCH, LR, MODEL_HP, STEPS, TASK, LocalContext, global_batches

# ARL: past its warm-up (epoch 6 > start_epoch 5) and with a clip that binds, so the weights and the clipped norm
# must both be the global batch's.
CASES = {"arl": ({"clip_norm": 0.05}, 6), "iprm": ({}, 0)}
GLOBAL_LOGS = ("w_", "lam_hat_")


def train(case: str, ctx_cls: type[TrainContext], hook, rank: int, world: int) -> dict:
    overrides, epoch = CASES[case]
    cls = get_method(case)
    base = make_context(lr=LR)
    ctx = ctx_cls(device=base.device, epochs=base.epochs, train_hp=base.train_hp, model_hp=MODEL_HP,
                  step_pre_hook=hook)
    torch.manual_seed(0)
    method: Method = cls(TASK, resolve(case, method_hparams(cls), TASK.dataset, overrides, variants=cls.VARIANTS),
                         ctx).train()
    share = BATCH // world
    logs = []
    for i, batch in enumerate(global_batches()):
        shard = {k: v[rank * share:(rank + 1) * share] for k, v in batch.items()}
        logs.append(method.update(shard, StepInfo(epoch=epoch, step=i, steps_per_epoch=STEPS, epochs=epoch + 1)))
    return {"params": {n: p.detach().clone() for n, p in method.named_parameters()},
            "buffers": {n: b.clone() for n, b in method.named_buffers() if b.is_floating_point()},
            "logs": [{k: v for k, v in log.items() if k.startswith(GLOBAL_LOGS)} for log in logs]}


def _worker(rank: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), WANDB_MODE="disabled", GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    ddp, created = init_from_env("cpu")
    out = {case: {"exact": train(case, TrainContext, ddp.step_pre_hook, rank, WORLD),
                  "local": train(case, LocalContext, ddp.step_pre_hook, rank, WORLD)} for case in CASES}
    torch.save(out, Path(tmp) / f"rank{rank}.pt")
    dist.barrier()
    shutdown(created)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed gloo")
    tmp = tmp_path_factory.mktemp("ddp_2025")
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("case", CASES)
def test_two_ranks_with_half_batches_take_the_single_process_step(ranks, case):
    assert get_method(case).DATA_PARALLEL == "exact"
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
