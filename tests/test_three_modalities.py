"""Three-modality runs: every registered method that declares 3 in ``MODALITIES`` trains on the synthetic 3-modality
data (``data.modalities=3``); the others refuse with a message naming the method, its supported counts and the
dataset's modalities; AUG grows learners by the old NVGesture rule (docs/methods/aug.md#aca, "Three modalities")."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from aug.method import AUG
from baselines.base import Loaders, StepInfo
from baselines.networks import MODEL_HPARAMS
from baselines.reconboost import ga_term
from baselines.registry import list_methods
from benchmarks.config import build_config, method_hparams
from benchmarks.runner import train_run
from core.hparams import resolve
from datasets.registry import get_dataset
from tests.conftest import TINY_DATA, TINY_MODEL, make_context, tiny_overrides
from tests.numeric import approx64

THREE = sorted(n for n, c in list_methods().items() if 3 in c.MODALITIES)
TWO_ONLY = sorted(n for n, c in list_methods().items() if 3 not in c.MODALITIES)


def three_modal_overrides() -> dict:
    overrides = tiny_overrides()
    overrides["data"].update(modalities=3, n_train=32, n_val=16, n_test=16)
    # Equal feature widths (8 x width 4) for the heads shared across modalities (ReconBoost, MLA).
    overrides["model"].update(feature_dim=32)
    overrides["train"].update(epochs=1)
    return overrides


def test_the_registry_has_both_kinds():
    assert {"aug", "joint", "mla", "reconboost", "unimodal"} <= set(THREE)
    assert {"ogm", "ogm_ge", "pmr"} <= set(TWO_ONLY)


@pytest.mark.parametrize("name", THREE)
def test_three_modality_run_trains(name, tmp_path):
    summary = train_run(build_config(name, "synthetic", three_modal_overrides()), tmp_path / name, log=lambda _: None)
    test = summary["protocols"]["last"]["test"]
    assert math.isfinite(test["acc"]) and test["n"] == 16
    assert set(test["per_modality"]) <= {"audio", "visual", "text"} and test["per_modality"]
    if name != "unimodal":
        assert set(test["per_modality"]) == {"audio", "visual", "text"}


@pytest.mark.parametrize("name", TWO_ONLY)
def test_two_modality_methods_refuse_three_clearly(name, tmp_path):
    with pytest.raises(ValueError) as err:
        train_run(build_config(name, "synthetic", three_modal_overrides()), tmp_path / name, log=lambda _: None)
    message = str(err.value)
    assert f"method {name!r} supports (2,) modalities" in message
    assert "dataset 'synthetic' has 3 (audio, visual, text)" in message


def three_modal_aug(**hp):
    cls = get_dataset("synthetic")
    bundle = cls.build(resolve("data", cls.HPARAMS, "synthetic", {**TINY_DATA, "modalities": 3}))
    method_hp = resolve("aug", method_hparams(AUG), "synthetic", {"aca_interval_epochs": 1, **hp},
                        variants=AUG.VARIANTS)
    ctx = make_context(epochs=4)
    return AUG(bundle.task, method_hp, ctx), bundle


@pytest.mark.parametrize("sums, grown", [([10.0, 30.0, 30.0], ["audio"]), ([10.0, 10.0, 40.0], ["audio", "visual"]),
                                         ([30.0, 30.0, 30.0], [])])
def test_aug_grows_every_modality_below_the_ratio_to_the_others(sums, grown):
    """rho_m = S_m / sum_{j != m} S_j < 0.4 (train_NVGesture.py --lam 0.4): 10/60 and 10/50 grow; 30/60 or 40/20
    do not. The two-modality rule (sigma, tau) does not apply."""
    method, bundle = three_modal_aug()
    loaders = Loaders(bundle.loader("train", batch_size=16, train=True, seed=0))
    method.score_sum = torch.tensor(sums, dtype=torch.float64)
    method.count = 60
    diag = method.on_epoch_end(0, loaders)
    assert [m for m in method.modalities if diag[f"added/{m}"]] == grown
    assert method.extra_learners() == {m: int(m in grown) for m in method.modalities}
    assert diag["score_rho/audio"] == approx64(sums[0] / (sums[1] + sums[2]))


def test_aug_three_modal_threshold_and_default_fusion_weights():
    method, bundle = three_modal_aug(three_modal_threshold=0.2)
    assert method.fusion == [0.33, 0.33, 0.34] and method.modalities == ("audio", "visual", "text")
    loaders = Loaders(bundle.loader("train", batch_size=16, train=True, seed=0))
    method.score_sum = torch.tensor([10.0, 10.0, 40.0], dtype=torch.float64)
    method.count = 60
    method.on_epoch_end(0, loaders)
    assert method.extra_learners() == {"audio": 0, "visual": 0, "text": 0}, "0.2 is not below 0.2"


def three_modal_reconboost(**hp):
    cls = get_dataset("synthetic")
    bundle = cls.build(resolve("data", cls.HPARAMS, "synthetic", {**TINY_DATA, "modalities": 3}))
    rb_cls = list_methods()["reconboost"]
    method_hp = resolve("reconboost", method_hparams(rb_cls), "synthetic",
                        {"pretrain": False, "modality_epochs": 1, "correct_epochs": 0, **hp}, variants=rb_cls.VARIANTS)
    ctx = make_context(epochs=6)
    # Equal feature widths for the shared head, as three_modal_overrides sets them.
    ctx = dataclasses.replace(ctx, model_hp=resolve("model", MODEL_HPARAMS, None, {**TINY_MODEL, "feature_dim": 32}))
    torch.manual_seed(0)
    return rb_cls(bundle.task, method_hp, ctx), bundle


def test_reconboost_ga_partner_is_the_previous_stages_learner_with_three_modalities():
    rb, bundle = three_modal_reconboost()
    rb.eval()   # fixed batch-norm statistics: the learners' outputs can be recomputed
    loaders = Loaders(bundle.loader("train", batch_size=16, train=True, seed=0))
    batch = next(iter(bundle.loader("train", batch_size=16, train=False, seed=0)))
    names = bundle.task.names
    rb.on_epoch_start(2, loaders)   # stage 2 boosts the third modality; stage 1 trained the second
    with torch.no_grad():
        z = {m: rb.learner(m, batch[m]) for m in names}
    logs = rb.update(batch, StepInfo(epoch=2, step=0, steps_per_epoch=1, epochs=6))
    assert logs["ga"] == approx64(ga_term(z[names[2]], z[names[1]], False).item())
    assert logs["ga"] != approx64(ga_term(z[names[2]], z[names[0]], False).item())


def test_reconboost_bb_ga_waits_for_a_full_round_of_three_modalities():
    # BB's epoch 0 is stages 0..M-1: with three modalities the GA term starts at stage 3, not 2.
    rb, bundle = three_modal_reconboost(ga_after_first_round=True)
    rb.train()
    loaders = Loaders(bundle.loader("train", batch_size=16, train=True, seed=0))
    batch = next(iter(bundle.loader("train", batch_size=16, train=False, seed=0)))
    seen = {}
    for epoch in range(4):
        rb.on_epoch_start(epoch, loaders)
        seen[epoch] = "ga" in rb.update(batch, StepInfo(epoch=epoch, step=0, steps_per_epoch=1, epochs=6))
    assert seen == {0: False, 1: False, 2: False, 3: True}
