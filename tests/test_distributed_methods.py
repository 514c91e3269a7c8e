"""Data-parallel exactness: every method that declares ``DATA_PARALLEL = "exact"`` takes, on two gloo ranks with B/2
samples each, the single-process steps on the global batch B, epoch hooks and row selection included.

Each method trains two short epochs (``on_epoch_start`` -> ``select_rows`` -> two ``update`` steps -> ``on_epoch_end``)
through the runner's row selection and the loader's sharding, on vector modalities: MLP encoders have no BatchNorm,
which normalises each rank's slice with its own statistics, so no step of a BatchNorm encoder can match exactly.
The methods whose exactness rests on the sync/reduce API (OGM, OGM-GE, AGM and MMPareto edit gradients between
backward and step, G-Blending reduces its estimation losses) also run with that API switched off (the pre-step hook
still averages the edited local gradients), and that run must differ from the single-process one, so each of those
comparisons is sensitive to what it pins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

import baselines.opm as opm
import benchmarks.runner as runner
from baselines.base import Loaders, Method, StepInfo, TrainContext
from baselines.midas import weak_modality_update
from baselines.networks import MODEL_HPARAMS
from baselines.registry import get_method, list_methods
from benchmarks.config import build_config, method_hparams
from benchmarks.runner import apply_selection, check_data_parallel
from core.data import BatchLoader, ModalitySpec, TaskSpec
from core.distributed import DistContext, RankDivergenceError, check_same_structure, shutdown
from core.hparams import resolve
from tests.conftest import join_gloo, make_context, tiny_overrides
from tests.test_distributed import WORLD, _free_port

BATCH = 8
STEPS = 2
EPOCHS = 2
LR = 0.1
N_TRAIN, N_VAL = 48, 16
TASK = TaskSpec("vectors", 3, (ModalitySpec("audio", "vector", (6,)), ModalitySpec("visual", "vector", (5,))))
MODEL_HP = resolve("model", MODEL_HPARAMS, None, {"mlp_hidden": 8, "feature_dim": 6})
EXACT = sorted(name for name, cls in list_methods().items() if cls.DATA_PARALLEL == "exact")
# Exact methods' other settings that reduce their statistics otherwise (cases ``name:setting`` of OVERRIDES).
EXACT_CASES = [*EXACT, "gblending:sum", "gblending:first_epoch"]
# Knobs per method: MLP encoders have no conv kernels, so OGM edits every >= 2-D encoder tensor; AGM clips on every
# step with a bound that binds; the others make their hooks act (and stay cheap) within two epochs.
OVERRIDES = {
    "ogm": {"grad_params": "non_1d"},
    "ogm_ge": {"grad_params": "non_1d"},
    "agm": {"clip_trigger": 0.0, "clip_norm": 0.05},
    "smv": {"warmup": 0},
    "lfm": {"schedule": "learnable"},
    "umt": {"teacher_epochs": 1},
    "reconboost": {"pretrain_epochs": 1, "modality_epochs": 1, "correct_epochs": 1},
    # One estimate (epoch 0): the weights divide by the squared overfitting change O^2, which a second estimate after
    # two tiny epochs makes ~1e-7, where the rounding of loss sums alone moves them by more than the tolerance.
    "gblending": {"estimate_epochs": 2},
    # BB's batch-sum estimation losses: each rank's sum of its slices' means, averaged over the ranks.
    "gblending:sum": {"estimate_epochs": 2, "loss_reduction": "sum"},
    # BB's interval start: the weights come from the scratch epochs' training losses, reduced over the ranks (the
    # default's evaluation passes see every row on every rank and need no reduction).
    "gblending:first_epoch": {"estimate_epochs": 2, "interval_start": "first_epoch"},
    "aug": {"aca_interval_epochs": 1},
    # Past the warm-up from the first epoch, with a clip that binds: the weights and the clipped norm are global.
    "arl": {"start_epoch": -1, "clip_norm": 0.05},
    # A clip that binds: the clipped norm is the global batch's.
    "dgl": {"clip_norm": 0.05},
    # Pacing that keeps int(50 * fraction) rows, odd in some epochs.
    "bss:heuristic": {"scheduler": "heuristic"},
    # Past the warm-up: the weak-modality weights are updated from the first step.
    "midas": {"warmup_epochs": 0},
    # Past the warm-up: Remix selects its rows per modality from the first epoch.
    "remix": {"warmup": 0},
}
# Full epochs of the exact methods that choose the epoch's rows, and of the approximate ones whose row count varies:
# 50 training rows make SMV's expanded list odd in its second epoch and BSS's heuristic pacing keep an odd count (n mod
# W rows are left out), while BSS's learning scheduler serves every row.
APPROXIMATE_ROWS = ("smv", "bss:heuristic")
SELECTING = sorted({name for name in EXACT if get_method(name).select_rows is not Method.select_rows}
                   | {"bss", *APPROXIMATE_ROWS})
N_TRAIN_FULL = 50
# Methods whose exactness rests on the sync/reduce API: without it their steps must differ.
SENSITIVE = ("ogm", "ogm_ge", "agm", "mmpareto", "gblending:first_epoch", "arl", "iprm", "dgl")
# Logged statistics that must be the global batch's (losses are logged per rank and are not compared).
GLOBAL_LOGS = ("coeff_", "k_", "cos_", "w_audio", "w_visual", "lam_hat_")


class LocalContext(TrainContext):
    """The API switched off: statistics and edits from each rank's slice, edited gradients averaged at the step."""

    def sync_gradients(self, params: Iterable[nn.Parameter], how: str = "mean") -> None:
        pass

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def loaders(rank: int, world: int, n_train: int | None = None) -> Loaders:
    """A fixed vector dataset; the training loader serves this rank's B/world part of every global batch."""
    gen = torch.Generator().manual_seed(7)
    n_train = n_train or N_TRAIN
    n = n_train + N_VAL
    audio, visual = torch.randn(n, 6, generator=gen), torch.randn(n, 5, generator=gen)
    labels = torch.randint(0, 3, (n,), generator=gen).numpy()

    def gather(rows: np.ndarray) -> dict[str, torch.Tensor]:
        return {"audio": audio[rows], "visual": visual[rows]}

    train = BatchLoader(np.arange(n_train), labels, gather, batch_size=BATCH // world, train=True, seed=0)
    if world > 1:
        train.set_shard(rank, world)
    val, test = (BatchLoader(np.arange(n_train, n), labels, gather, batch_size=16, train=False, seed=0)
                 for _ in range(2))
    return Loaders(train, val, test)


def build(case: str, ctx_cls: type[TrainContext], hook) -> Method:
    """The method of ``case``: a registry name, or ``name:setting`` for one of its other settings in OVERRIDES."""
    name = case.partition(":")[0]
    cls = get_method(name)
    base = make_context(epochs=EPOCHS, lr=LR)
    ctx = ctx_cls(device=base.device, epochs=EPOCHS, train_hp=base.train_hp, model_hp=MODEL_HP, step_pre_hook=hook)
    torch.manual_seed(0)
    hp = resolve(name, method_hparams(cls), TASK.dataset, OVERRIDES.get(case, {}), variants=cls.VARIANTS)
    return cls(TASK, hp, ctx).train()


def train(name: str, ctx_cls: type[TrainContext], hook, rank: int, world: int, full_epochs: bool = False,
          n_train: int | None = None) -> dict:
    """Two epochs of at most STEPS updates each (every batch with ``full_epochs``), as the runner drives them; final
    parameters, buffers and logs, and what the epoch hook reports."""
    method = build(name, ctx_cls, hook)
    data = loaders(rank, world, n_train)
    method.ctx.loaders = data
    # Ranks' RNG streams differ on purpose: OGM-GE must take rank 0's noise, which a single process seeded 100 draws.
    torch.manual_seed(100 + rank)
    logs, diags = [], []
    for epoch in range(EPOCHS):
        for loader in (data.train, data.val, data.test):
            loader.set_epoch(epoch)
        method.train()
        method.on_epoch_start(epoch, data)
        apply_selection(data.train, method.select_rows(epoch, data))
        method.train()
        steps = len(data.train) if full_epochs else min(STEPS, len(data.train))
        for i, batch in enumerate(data.train):
            if i >= steps:
                break
            logs.append(method.update(batch, StepInfo(epoch=epoch, step=i, steps_per_epoch=steps, epochs=EPOCHS)))
        if epoch < EPOCHS - 1:
            diags.append(method.on_epoch_end(epoch, data) or {})
    return {"params": {n: p.detach().clone() for n, p in method.named_parameters()},
            "buffers": {n: b.clone() for n, b in method.named_buffers() if b.is_floating_point()},
            "logs": [{k: v for k, v in log.items() if k.startswith(GLOBAL_LOGS)} for log in logs], "diag": diags}


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
    # A gradient created anew after its sync is not exempt: the hook averages it, even while the synced tensor lives on
    # (a method that kept it).
    kept = b.grad
    b.grad = torch.full((2,), 2.0 * rank)
    opt.step()
    out["a_after_step"], out["b_after_step"] = a.detach().clone(), b.detach().clone()
    del kept
    stats = torch.tensor([1.0 + rank, 3.0])
    out["sum"], out["mean_stat"] = ctx.all_reduce_sum(stats.clone()), ctx.all_reduce_mean(stats.clone())
    return out


def exchange_checks(ctx: TrainContext, ddp: DistContext, rank: int) -> dict:
    """Gradients of two dtypes in one step, a synced gradient accumulated in place before a second step, rank-keyed
    log sums and a structure that differs in size only."""
    out = {}
    f, e = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = ctx.make_optimizer([f, e], lr=1.0, momentum=0.0, weight_decay=0.0)
    f.grad, e.grad = torch.full((2,), 1.0 + 2 * rank), torch.full((2,), 1.0 + 2 * rank, dtype=torch.float64)
    opt.step()
    out["float32"], out["float64"] = f.detach().clone(), e.detach().clone()
    d = nn.Parameter(torch.zeros(2))
    opt = ctx.make_optimizer([d], lr=1.0, momentum=0.0, weight_decay=0.0)
    d.grad = torch.full((2,), 1.0 + 2 * rank)
    ctx.sync_gradients([d])
    opt.step()
    d.grad.fill_(1.0 + 2 * rank)  # the same tensor, refilled per rank (zero_grad(set_to_none=False) + backward)
    opt.step()
    out["second_step"] = d.detach().clone()
    out["sums"] = ddp.sum_by_key({"a": 1.0, "c": 5.0} if rank == 0 else {"b": 2.0, "a": 3.0})
    try:
        check_same_structure(nn.Linear(2, 1 + rank))
        out["sizes"] = None
    except RankDivergenceError as err:
        out["sizes"] = str(err)
    return out


def selection_checks(ddp: DistContext, rank: int) -> dict:
    """What the runner's cross-rank check of the epoch's training rows makes of equal and different selections."""
    out = {}
    ddp.check_same_rows(np.array([3, 1, 1, 2]))
    for case, rows in {"order": np.array([3, 1, 1, 2]) if rank == 0 else np.array([1, 3, 1, 2]),
                       "length": np.arange(4 + rank)}.items():
        try:
            ddp.check_same_rows(rows)
            out[case] = None
        except RankDivergenceError as err:
            out[case] = str(err)
    return out


def eval_sync_checks(ddp: DistContext, rank: int) -> dict:
    """A model whose BatchNorm statistics and weights differ per rank, after the runner's pre-evaluation sync."""
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.fill_(1.0 + rank)
        model[1].running_mean.copy_(torch.tensor([1.0, 2.0]) * (1 + 2 * rank))
        model[1].running_var.fill_(1.0 + 2.0 * rank)
        model[1].num_batches_tracked.fill_(3 + rank)
    ddp.sync_for_eval(model)
    return {"weight": model[0].weight.detach().clone(), "running_mean": model[1].running_mean.clone(),
            "running_var": model[1].running_var.clone(), "batches": int(model[1].num_batches_tracked)}


def broadcast_checks(ddp: DistContext, rank: int) -> dict:
    """A model whose weights and BatchNorm buffers differ per rank, after the runner's broadcast of rank 0's model
    (before training and after every epoch hook, which may have changed a method's buffers on one rank only)."""
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.fill_(1.0 + rank)
        model[1].running_mean.fill_(1.0 + 2 * rank)
        model[1].num_batches_tracked.fill_(3 + rank)
    ddp.broadcast_module(model)
    return {"weight": model[0].weight.detach().clone(), "running_mean": model[1].running_mean.clone(),
            "batches": int(model[1].num_batches_tracked)}


def opm_idle_rank_checks(hook, rank: int) -> dict:
    """One OPM dropping step in which rank 1's own drops keep no sample while rank 0 keeps all of its."""
    cls = get_method("opm")
    base = make_context(epochs=1, lr=LR)
    ctx = TrainContext(device=base.device, epochs=1, train_hp=base.train_hp, model_hp=MODEL_HP, step_pre_hook=hook)
    torch.manual_seed(0)
    hp = resolve("opm", method_hparams(cls), TASK.dataset, {"warmup_epochs": 0, "p_exe": 1.0}, variants=cls.VARIANTS)
    method = cls(TASK, hp, ctx).train()
    before = {n: p.detach().clone() for n, p in method.named_parameters()}

    def drop_features(h, q, theta_gradient):
        rows = next(iter(h.values())).shape[0]
        return h, torch.full((rows,), rank == 0), None

    real, opm.drop_features = opm.drop_features, drop_features
    try:
        logs = method.update(next(iter(loaders(rank, WORLD).train)), StepInfo(epoch=0, step=0, steps_per_epoch=1,
                                                                                 epochs=1))
    finally:
        opm.drop_features = real
    return {"logs": logs, "before": before,
            "after": {n: p.detach().clone() for n, p in method.named_parameters()}}


def _worker(rank: int, port: int, tmp: str) -> None:
    ddp, created = join_gloo(rank, port, WORLD)
    ctx = make_context()
    ctx.step_pre_hook = ddp.step_pre_hook
    out = {"api": api_checks(ctx, rank), "rows": selection_checks(ddp, rank), "eval_sync": eval_sync_checks(ddp, rank),
           "opm_idle": opm_idle_rank_checks(ddp.step_pre_hook, rank), "exchange": exchange_checks(ctx, ddp, rank),
           "broadcast": broadcast_checks(ddp, rank)}
    out["full"] = {name: train(name, TrainContext, ddp.step_pre_hook, rank, WORLD, True, N_TRAIN_FULL)
                   for name in SELECTING}
    for name in EXACT_CASES:
        out[name] = {"exact": train(name, TrainContext, ddp.step_pre_hook, rank, WORLD)}
        if name in SENSITIVE:
            out[name]["local"] = train(name, LocalContext, ddp.step_pre_hook, rank, WORLD)
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
        # Sums and halves of small integers are exact in float32.
        torch.testing.assert_close(out["mean"], torch.full((2,), 2.0), rtol=0, atol=0)
        torch.testing.assert_close(out["zeros_elsewhere"], torch.full((2,), 2.0), rtol=0, atol=0)
        torch.testing.assert_close(out["main"], torch.zeros(2), rtol=0, atol=0)
        torch.testing.assert_close(out["b_after_step"], torch.full((2,), -1.0), rtol=0, atol=0,
                                   msg="a new gradient is averaged")
        torch.testing.assert_close(out["sum"], torch.tensor([3.0, 6.0]), rtol=0, atol=0)
        torch.testing.assert_close(out["mean_stat"], torch.tensor([1.5, 3.0]), rtol=0, atol=0)
    torch.testing.assert_close(first["a_after_step"], torch.full((2,), -2.0), rtol=0, atol=0)
    torch.testing.assert_close(second["a_after_step"], torch.full((2,), -3.0), rtol=0, atol=0,
                               msg="a synced gradient is skipped")


def test_every_dtype_bucket_is_averaged_and_a_sync_exempts_one_step_only(ranks):
    for out in (r["exchange"] for r in ranks):
        # Means of 1 and 3: exact in float32 and float64.
        torch.testing.assert_close(out["float32"], torch.full((2,), -2.0), rtol=0, atol=0)
        torch.testing.assert_close(out["float64"], torch.full((2,), -2.0, dtype=torch.float64), rtol=0, atol=0,
                                   msg="the float64 bucket is averaged too")
        torch.testing.assert_close(out["second_step"], torch.full((2,), -4.0), rtol=0, atol=0,
                                   msg="a step ends the exemption: the refilled gradient is averaged")


def test_sum_by_key_sums_keys_some_ranks_lack_in_rank_0s_order_first(ranks):
    for out in (r["exchange"] for r in ranks):
        assert list(out["sums"].items()) == [("a", 4.0), ("c", 5.0), ("b", 2.0)]


def test_ranks_whose_tensors_differ_in_size_only_are_stopped(ranks):
    for out in (r["exchange"] for r in ranks):
        assert out["sizes"] and "parameter tensors 2..2, elements 3..6" in out["sizes"]


def test_ranks_that_select_different_rows_are_stopped(ranks):
    for out in ranks:
        assert out["rows"]["order"] and "select different training rows" in out["rows"]["order"]
        assert out["rows"]["length"] and "select different training rows" in out["rows"]["length"]


def test_ranks_evaluate_with_averaged_batchnorm_statistics_and_rank_0s_other_tensors(ranks):
    for out in (r["eval_sync"] for r in ranks):
        # Means of (1, 2) and (3, 6), and of 1 and 3: sums and halves of small integers, exact in float32.
        torch.testing.assert_close(out["running_mean"], torch.tensor([2.0, 4.0]), rtol=0, atol=0)
        torch.testing.assert_close(out["running_var"], torch.full((2,), 2.0), rtol=0, atol=0)
        torch.testing.assert_close(out["weight"], torch.ones(2, 2), rtol=0, atol=0, msg="rank 0's weights")
        assert out["batches"] == 3, "rank 0's step count"


def test_the_broadcast_of_rank_0s_model_copies_its_buffers_too(ranks):
    for out in (r["broadcast"] for r in ranks):
        torch.testing.assert_close(out["weight"], torch.ones(2, 2), rtol=0, atol=0)
        torch.testing.assert_close(out["running_mean"], torch.ones(2), rtol=0, atol=0, msg="rank 0's buffer")
        assert out["batches"] == 3, "rank 0's step count"


def test_an_opm_rank_that_keeps_no_sample_still_joins_the_step(ranks):
    first, second = (out["opm_idle"] for out in ranks)
    assert second["logs"]["kept"] == 0.0 and "loss" not in second["logs"] and first["logs"]["kept"] == 1.0
    for name, value in first["after"].items():
        torch.testing.assert_close(second["after"][name], value, rtol=0, atol=0, msg=name)
    assert any(not torch.equal(first["before"][n], v) for n, v in first["after"].items()), "rank 0's samples step"




def test_midas_weights_its_weak_modality_from_every_ranks_statistics():
    # MIDAS is approximate (misaligned pairs come from each rank's slice), but its weak-modality weight alpha must come
    # from the global batch's statistics. One process stands in for rank 0 of two: its all_reduce_sum adds a crafted
    # rank 1's sums (4 kept pairs, audio confidence 0.1 and visual 0.9 each, fused confidences 0), making audio weak.
    reduced = []

    class TwoRanks(TrainContext):
        def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
            tensor += torch.tensor([0.4, 3.6, 0.0, 0.0, 4.0], dtype=tensor.dtype)
            reduced.append(tensor.clone())
            return tensor

    method = build("midas", TwoRanks, None)
    torch.manual_seed(0)
    method.update(next(iter(loaders(0, 1).train)), StepInfo(epoch=0, step=0, steps_per_epoch=1, epochs=EPOCHS))
    (sums,) = reduced
    expected = weak_modality_update(torch.ones_like(method.alpha), sums[:2] / sums[-1], sums[2:4] / sums[-1],
                                    method.hp.eta, method.hp.update_signal)
    assert expected[0] > 1 and expected[1] == 1, "the crafted sums raise the audio weight"
    torch.testing.assert_close(method.alpha, expected, rtol=0, atol=0)


def test_amco_flags_dependence_from_every_ranks_block_mass():
    # One process stands in for rank 0 of two: its all_reduce_mean averages in a crafted rank 1 whose whole mass sits
    # on the block this rank finds below sigma, so the reduced flags are the opposite of this rank's own.
    local, reduced = [], []

    class TwoRanks(TrainContext):
        def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
            local.append(tensor.clone())
            tensor = (tensor + (tensor <= 0.5).to(tensor.dtype)) / 2
            reduced.append(tensor.clone())
            return tensor

    method = build("amco", TwoRanks, None)
    method.update(next(iter(loaders(0, 1).train)), StepInfo(epoch=0, step=0, steps_per_epoch=1, epochs=EPOCHS))
    (mine,), (mass,) = local, reduced
    assert method.hp.sigma == 0.5 and not torch.equal(mine > 0.5, mass > 0.5), "the crafted rank turns the flags"
    assert method.dependent.tolist() == (mass > 0.5).tolist()


def test_exact_methods_include_the_synchronised_ones():
    assert set(SENSITIVE) <= set(EXACT_CASES) and len(EXACT) >= 10


@pytest.mark.parametrize("name", EXACT_CASES)
def test_two_ranks_with_half_batches_take_the_single_process_steps(ranks, name):
    want = train(name, TrainContext, None, 0, 1)
    for out in ranks:
        got = out[name]["exact"]
        for kind in ("params", "buffers"):
            assert got[kind].keys() == want[kind].keys()
            for key, value in want[kind].items():
                torch.testing.assert_close(got[kind][key], value, atol=1e-5, rtol=1e-5, msg=(
                    f"{name} {key}: declared DATA_PARALLEL = 'exact', but two ranks with half batches step "
                    f"differently from one process (unsynced batch statistics or per-rank random draws; see "
                    f"docs/add-a-method.md, Data parallelism)"))
        for got_log, want_log in zip(got["logs"], want["logs"], strict=True):
            assert got_log.keys() == want_log.keys()
            for key, value in want_log.items():
                assert got_log[key] == pytest.approx(value, abs=1e-5), (name, key)
        # What the epoch hooks report (AUG's scores and losses per sample of the epoch) is the global batches' too.
        for got_diag, want_diag in zip(got["diag"], want["diag"], strict=True):
            assert got_diag.keys() == want_diag.keys()
            for key, value in want_diag.items():
                assert got_diag[key] == pytest.approx(value, abs=1e-5, nan_ok=True), (name, "diag", key)
    if name in SENSITIVE:
        local = ranks[0][name]["local"]["params"]
        gap = max((local[n] - v).abs().max().item() for n, v in want["params"].items())
        assert gap > 1e-4, f"{name}: local statistics give the same step, so this case pins nothing"


def _largest_gap(got: dict, want: dict) -> float:
    return max((got[kind][key] - value).abs().max().item() for kind in ("params", "buffers")
               for key, value in want[kind].items())


@pytest.mark.parametrize("name", SELECTING)
def test_row_selecting_methods_match_one_process_over_full_epochs_unless_their_row_count_varies(ranks, name):
    want = train(name, TrainContext, None, 0, 1, True, N_TRAIN_FULL)
    gap = max(_largest_gap(out["full"][name], want) for out in ranks)
    if name in APPROXIMATE_ROWS:
        assert get_method(name.partition(":")[0]).DATA_PARALLEL == "approximate"
        assert gap > 1e-4, f"{name}: an odd row count leaves a row out under two ranks, so it is approximate"
    else:
        assert gap < 1e-5, f"{name}: full epochs on two ranks differ from one process"


def test_torchrun_refuses_an_unsupported_method_before_any_collective(monkeypatch, tmp_path):
    class Unsupported(get_method("joint")):  # type: ignore[misc]
        DATA_PARALLEL = "unsupported"  # test double

    monkeypatch.setattr(runner, "get_method", lambda _: Unsupported)
    check_data_parallel("joint", 1)
    with pytest.raises(RuntimeError, match="'joint' declares DATA_PARALLEL = 'unsupported'.*torchrun with 2"):
        check_data_parallel("joint", 2)
    monkeypatch.setattr(runner, "init_from_env", lambda device: (DistContext(0, 2, 0), False))
    cfg = build_config("joint", "synthetic", tiny_overrides())
    with pytest.raises(RuntimeError, match="unsupported"):
        runner.train_run(cfg, tmp_path / "run")


def test_summary_records_the_data_parallel_level(tmp_path):
    overrides = tiny_overrides()
    overrides["train"]["epochs"] = 1
    cfg = build_config("pmr", "synthetic", overrides)
    summary = runner.train_run(cfg, tmp_path / "run", log=lambda line: None)
    assert summary["data_parallel"] == "approximate"
    recorded = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert recorded["data_parallel"] == "approximate"
    assert recorded["world_size"] == 1 and [s["world_size"] for s in recorded["segments"]] == [1], \
        "a table tells one process from data-parallel runs by the recorded number of ranks"
