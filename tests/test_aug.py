"""AUG (docs/methods/aug.md and the issue's acceptance list): the loss, the learners, ACA, the per-modality steps, the
paper/official switches, checkpoints and an end-to-end run on synthetic data."""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from aug.aca import aca_check_epochs, aca_decision, default_interval, gate_targets, running_scores
from aug.method import AUG
from aug.model import RESIDUAL_TARGETS, LearnerStack, learner_logits, sustained_boosting_loss
from baselines.base import Loaders, StepInfo
from benchmarks.config import TRAIN_HPARAMS, build_config, load_config_file, method_hparams
from benchmarks.runner import train_run
from core.hparams import HParamError, resolve
from datasets.registry import get_dataset
from tests.conftest import TINY_DATA, first_batch, float64_default, make_context, tiny_overrides
from tests.numeric import approx, approx64, close

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "benchmarks" / "configs" / "aug"
STEP = StepInfo(epoch=0, step=0, steps_per_epoch=4, epochs=2)


def build(bundle, epochs: int = 2, **overrides) -> AUG:
    hp = resolve("aug", method_hparams(AUG), bundle.task.dataset, overrides, variants=AUG.VARIANTS)
    torch.manual_seed(0)
    return AUG(bundle.task, hp, make_context(epochs=epochs))


def loaders(bundle) -> Loaders:
    return Loaders(bundle.loader("train", batch_size=16, train=True, seed=0),
                   bundle.loader("val", batch_size=32, train=False, seed=0),
                   bundle.loader("test", batch_size=32, train=False, seed=0))


def ce_soft(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(z, dim=1)).sum(1).mean()


# --- the sustained-boosting loss (docs/methods/aug.md#loss) ----------------------------------------------------------
def test_loss_matches_a_hand_computed_value():
    # K = 2, y = 0: z_0 = (0, 0) so q_y = 1/2; z_1 = (log 3, 0) so p(z_new)_y = p(z_all)_y = 3/4.
    z = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])
    loss, z_all = sustained_boosting_loss(z, torch.tensor([0]), lam=0.5)
    expected = math.log(4 / 3) + math.log(2) + (1 - 0.5 * 0.5) * math.log(4 / 3)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    close(z_all, z.sum(1))


def test_single_learner_loss_is_plain_cross_entropy():
    z = torch.randn(5, 1, 3)
    y = torch.tensor([0, 1, 2, 1, 0])
    loss, _ = sustained_boosting_loss(z, y, lam=0.5)
    close(loss, F.cross_entropy(z[:, 0], y))


def test_residual_ce_is_the_soft_target_ce_and_the_weighted_ce():
    torch.manual_seed(1)
    z = torch.randn(6, 3, 4)
    y = torch.tensor([0, 1, 2, 3, 1, 2])
    lam = 0.33
    loss, _ = sustained_boosting_loss(z, y, lam)
    z_prev, z_new = z[:, 0] + z[:, 1], z[:, 2]
    residual = loss - F.cross_entropy(z.sum(1), y) - F.cross_entropy(z_prev, y)
    q_y = torch.softmax(z_prev, 1).gather(1, y[:, None])[:, 0]
    onehot = F.one_hot(y, 4).float()
    close(residual, ce_soft(z_new, onehot - lam * q_y[:, None] * onehot))
    weighted = ((1 - lam * q_y) * F.cross_entropy(z_new, y, reduction="none")).mean()
    close(residual, weighted)


def test_per_learner_prob_sum_target_sums_each_previous_learners_softmax():
    torch.manual_seed(2)
    z = torch.randn(4, 3, 5)
    y = torch.tensor([4, 0, 2, 2])
    loss, _ = sustained_boosting_loss(z, y, 0.2, residual_target="per_learner_prob_sum")
    q_y = (torch.softmax(z[:, 0], 1) + torch.softmax(z[:, 1], 1)).gather(1, y[:, None])[:, 0]
    residual = ((1 - 0.2 * q_y) * F.cross_entropy(z[:, 2], y, reduction="none")).mean()
    expected = F.cross_entropy(z.sum(1), y) + F.cross_entropy(z[:, 0] + z[:, 1], y) + residual
    close(loss, expected)
    with pytest.raises(ValueError, match="residual_target='bogus'"):
        sustained_boosting_loss(z, y, 0.2, residual_target="bogus")


def test_residual_target_is_detached():
    torch.manual_seed(3)
    z = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0])
    loss, _ = sustained_boosting_loss(z, y, 0.5)
    residual = loss - F.cross_entropy(z.sum(1), y) - F.cross_entropy(z[:, :2].sum(1), y)
    (grad,) = torch.autograd.grad(residual, z)
    assert grad[:, :2].abs().max() < 1e-12, "no gradient may reach earlier learners through q"
    assert grad[:, 2].abs().max() > 1e-3


@pytest.mark.parametrize("extra", [1, 2])
def test_previous_ensemble_is_the_sum_of_all_but_the_newest_learner(extra):
    torch.manual_seed(4)
    stack = LearnerStack(8, 6)
    for _ in range(extra):
        stack.grow()
    head = torch.nn.Linear(6, 3)
    h = torch.randn(7, 8)
    y = torch.randint(0, 3, (7,))
    z = learner_logits(stack, head, h)
    per_learner = [head(F.relu(layer(h))) for layer in stack.layers]
    close(z, torch.stack(per_learner, 1))
    z_prev = per_learner[0] if extra == 1 else per_learner[0] + per_learner[1]
    q_y = torch.softmax(z_prev, 1).gather(1, y[:, None])[:, 0]
    expected = (F.cross_entropy(sum(per_learner), y) + F.cross_entropy(z_prev, y)
                + ((1 - 0.5 * q_y) * F.cross_entropy(per_learner[-1], y, reduction="none")).mean())
    close(sustained_boosting_loss(z, y, 0.5)[0], expected)


# --- learners and gate -----------------------------------------------------------------------------------------------
def test_learner_parameter_counts():
    stacks = [LearnerStack(512, 256), LearnerStack(512, 256)]
    head = torch.nn.Linear(256, 6)
    base = sum(p.numel() for s in stacks for p in s.parameters()) + sum(p.numel() for p in head.parameters())
    assert base == 264_198
    layer = stacks[1].grow()
    assert sum(p.numel() for p in layer.parameters()) == 131_328
    assert torch.count_nonzero(layer.bias) == 0 and layer.weight.std().item() == pytest.approx(
        math.sqrt(2 / (512 + 256)), rel=0.05), "Xavier-normal weight, zero bias"
    # Normal, not uniform (the same std): a uniform weight never exceeds sqrt(3) std, a normal one does for 8.3 %.
    beyond = (layer.weight.abs() > math.sqrt(3) * math.sqrt(2 / (512 + 256))).float().mean().item()
    assert beyond == pytest.approx(0.083, abs=0.01)


def test_gate_scales_only_the_extra_learners():
    torch.manual_seed(5)
    stack = LearnerStack(8, 6)
    stack.grow()
    stack.grow()
    head = torch.nn.Linear(6, 3)
    h = torch.randn(4, 8)
    plain = learner_logits(stack, head, h)
    gated = learner_logits(stack, head, h, torch.tensor(0.25))
    close(gated[:, 0], plain[:, 0])
    close(gated[:, 1:], 0.25 * plain[:, 1:])


def test_running_scores_match_the_official_expression_and_set_gate_targets():
    batch, epoch = torch.tensor([3.0, 5.0], dtype=torch.float64), torch.tensor([20.0, 16.0], dtype=torch.float64)
    k = 3
    s_a = (3 / (k + 1) + 20 * k / (k + 1)) / (5 / (k + 1) + 16 * k / (k + 1))  # train_KS.py
    close(running_scores(batch, epoch, k), torch.tensor([s_a, 1 / s_a], dtype=torch.float64))
    assert gate_targets(torch.tensor([1.2, 1 / 1.2])).tolist() == [0.0, 1.0]
    assert gate_targets(torch.tensor([1.0, 1.0])).tolist() == [1.0, 0.0]
    three = running_scores(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0]), 1)
    close(three, torch.tensor([11 / 55, 22 / 44, 33 / 33]))
    assert gate_targets(three).tolist() == [1.0, 1.0, 0.0]


# --- adaptive classifier assignment (docs/methods/aug.md#aca) --------------------------------------------------------
def test_aca_schedule():
    compat = aca_check_epochs(200, 20, after_first=True)
    paper = aca_check_epochs(200, 20, after_first=False)
    assert compat == [0] + list(range(19, 180, 20)) and len(compat) == 10
    assert paper == list(range(19, 180, 20)) and paper[-1] == 179
    assert aca_check_epochs(4, 1, after_first=False) == [0, 1, 2]
    assert default_interval(200) == 20 and default_interval(100) == 10 and default_interval(7) == 1
    with pytest.raises(ValueError, match="aca_interval_epochs"):
        aca_check_epochs(10, 0, after_first=False)


@pytest.mark.parametrize("sums, count, rule, grown", [
    ((52.0, 50.0), 100, "difference", [1]),   # d = 0.02 > tau: audio stronger -> visual
    ((48.0, 50.0), 100, "difference", [0]),   # d = -0.02 < -tau -> audio
    ((50.5, 50.0), 100, "difference", []),    # |d| = 0.005 inside the dead zone
    ((10.5, 10.0), 100, "difference", []),    # d = 0.005: no learner ...
    ((10.5, 10.0), 100, "ratio", [1]),        # ... while the ratio 1.05 > 1.01 adds one to visual
    ((40.0, 50.0), 100, "ratio", [0]),        # 0.8 < 0.99 -> audio
    ((50.4, 50.0), 100, "ratio", []),         # 1.008 inside [0.99, 1.01]
    ((52.0, 50.0), 0, "difference", []),      # no samples seen: no decision
])
def test_aca_two_modality_rules(sums, count, rule, grown):
    assert aca_decision(sums, count, rule, sigma=1.0, tau=0.01, threshold=0.4) == grown


def test_aca_sigma_moves_the_balance_point():
    assert aca_decision((60.0, 50.0), 100, "difference", sigma=1.2, tau=0.01, threshold=0.4) == []
    assert aca_decision((60.0, 50.0), 100, "ratio", sigma=1.3, tau=0.01, threshold=0.4) == [0]


@pytest.mark.parametrize("sums, count, rule, sigma, grown", [
    # tau = 1/4, every quantity a power-of-two fraction, so d and rho land exactly on the dead zone's edges.
    ((3.0, 2.0), 4, "difference", 1.0, []),    # d = 3/4 - 2/4 = +tau: strict, no learner
    ((1.0, 2.0), 4, "difference", 1.0, []),    # d = -tau
    ((2.0, 2.0), 4, "difference", 0.5, []),    # d = 2/4 - 0.5 * 2/4 = +tau with sigma != 1
    ((1.0, 4.0), 4, "difference", 0.5, []),    # d = 1/4 - 0.5 * 4/4 = -tau
    ((3.25, 2.0), 4, "difference", 1.0, [1]),  # d = 5/16 just outside
    ((0.75, 2.0), 4, "difference", 1.0, [0]),  # d = -5/16
    ((5.0, 4.0), 4, "ratio", 1.0, []),         # rho = 5/4 = sigma + tau
    ((3.0, 4.0), 4, "ratio", 1.0, []),         # rho = 3/4 = sigma - tau
    ((5.5, 4.0), 4, "ratio", 1.0, [1]),
    ((2.5, 4.0), 4, "ratio", 1.0, [0]),
    ((3.0, 4.0), 4, "ratio", 0.5, []),         # rho = 3/4 = sigma + tau with sigma != 1
    ((1.0, 4.0), 4, "ratio", 0.5, []),         # rho = 1/4 = sigma - tau
    ((3.5, 4.0), 4, "ratio", 0.5, [1]),
    ((0.5, 4.0), 4, "ratio", 0.5, [0]),
])
def test_aca_dead_zone_edges_add_no_learner(sums, count, rule, sigma, grown):
    assert aca_decision(sums, count, rule, sigma=sigma, tau=0.25, threshold=0.4) == grown


@pytest.mark.parametrize("sums, grown", [
    ((10.0, 30.0, 40.0), [0]),         # rho = 0.14, 0.6, 1.0
    ((10.0, 12.0, 40.0), [0, 1]),      # two weak modalities each get one learner at the same check
    ((10.0, 10.0, 10.0), []),          # rho = 0.5 for all
])
def test_aca_three_modalities(sums, grown):
    for rule in ("difference", "ratio"):
        assert aca_decision(sums, 100, rule, sigma=1.0, tau=0.01, threshold=0.4) == grown


# --- one training iteration (docs/methods/aug.md#iteration) ---------------------------------------------------------
def record_steps(method: AUG, watch: torch.nn.Parameter) -> list[torch.Tensor]:
    """Wrap the optimizer's step to snapshot ``watch`` before the first step and after every step."""
    snapshots = [watch.detach().clone()]
    step = method.optimizer.step

    def counting_step(*args, **kwargs):
        out = step(*args, **kwargs)
        snapshots.append(watch.detach().clone())
        return out

    method.optimizer.step = counting_step
    return snapshots


def record_learner_logits(method: AUG) -> dict[str, torch.Tensor]:
    """Hook each modality's learner stack to rebuild its per-learner logits H(phi_k(h)), (B, n + 1, K), by hand, from
    copies of the learners and the shared head as they are at that modality's forward (before its step)."""
    logits: dict[str, torch.Tensor] = {}

    def hook(modality):
        def rebuild(stack, args):
            (h,) = args
            layers, head = copy.deepcopy(stack.layers), copy.deepcopy(method.head)
            with torch.no_grad():
                logits[modality] = torch.stack([head(F.relu(layer(h))) for layer in layers], 1)
        return rebuild

    for m in method.modalities:
        method.learners[m].register_forward_pre_hook(hook(m))
    return logits


def true_class_sum(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.softmax(z, 1).gather(1, y[:, None]).sum()


def step_with_learners(bundle, added: list[str]) -> tuple[AUG, dict[str, torch.Tensor], torch.Tensor, dict]:
    """A method with learners added to ``added``'s modalities after one training step on the first batch: the
    method, each modality's recorded learner logits, the labels and the step's logs."""
    method = build(bundle)
    for modality in added:
        method.add_learner(modality)
    method.train()
    logits = record_learner_logits(method)
    batch = first_batch(bundle)
    logs = method.update(batch, STEP)
    return method, logits, batch["label"], logs


def test_confidence_score_is_the_whole_ensembles_true_class_probability(tiny_bundle):
    # S_m sums softmax(z_all)[y] over the batch, z_all the sum of ALL of m's learners' logits from the training
    # forward before m's step (docs/methods/aug.md#aca): not learner 0's logits, nor the previous ensemble's.
    method, logits, y, _ = step_with_learners(tiny_bundle, ["audio", "audio", "visual"])
    assert set(logits) == {"audio", "visual"} and logits["audio"].shape[1] == 3 and logits["visual"].shape[1] == 2
    expected = torch.stack([true_class_sum(logits[m].sum(1), y) for m in method.modalities])
    # Computed in float32 (the logits' dtype), accumulated in float64: compared at float32 tolerance.
    close(method.score_sum, expected, dtype=torch.float32)
    assert method.count == len(y)
    for m, s in zip(method.modalities, expected):  # the wrong readings miss by far more than the tolerance
        z = logits[m]
        assert abs(true_class_sum(z[:, 0], y) - s) > 1e-3 * s, m
        assert abs(true_class_sum(z[:, :-1].sum(1), y) - s) > 1e-3 * s, m


def test_ensemble_ce_diagnostic_is_the_whole_ensembles_cross_entropy(tiny_bundle):
    # ensemble_ce/m (and its gap) reads CE(z_all, y) of the training forward, comparable across learner counts: not
    # learner 0's CE, nor the boosting loss.
    method, logits, y, logs = step_with_learners(tiny_bundle, ["audio", "visual"])
    expected = torch.stack([F.cross_entropy(logits[m].sum(1), y) for m in method.modalities])
    # float32 CE accumulated in float64 as CE * batch size: float32 tolerance.
    close(method.ce_sum, expected * len(y), dtype=torch.float32)
    for m, ce in zip(method.modalities, expected):  # the wrong readings miss by far more than the tolerance
        assert abs(F.cross_entropy(logits[m][:, 0], y) - ce) > 1e-3 * ce, m
        assert abs(logs[f"loss_{m}"] - ce) > 1e-3 * ce, m
    diag = method.on_epoch_end(0, loaders(tiny_bundle))
    assert diag["ensemble_ce/audio"] == approx(expected[0].item())
    assert diag["ensemble_ce_gap"] == approx((expected[0] - expected[1]).item())


def test_epoch_start_resets_the_accumulators(tiny_bundle):
    method = build(tiny_bundle)
    method.train()
    batch = first_batch(tiny_bundle)
    y = batch["label"]
    method.update(batch, STEP)
    assert method.count == len(y) and bool((method.score_sum > 0).all())
    method.on_epoch_start(1, loaders(tiny_bundle))
    assert method.count == 0
    for name in ("score_sum", "loss_sum", "ce_sum"):
        assert torch.count_nonzero(getattr(method, name)) == 0, name
    logits = record_learner_logits(method)
    logs = method.update(batch, STEP)
    assert method.count == len(y), "the new epoch counts only its own batch"
    # float32 computations accumulated in float64: float32 tolerance.
    close(method.score_sum, torch.stack([true_class_sum(logits[m].sum(1), y) for m in method.modalities]),
          dtype=torch.float32)
    close(method.loss_sum, torch.tensor([logs[f"loss_{m}"] * len(y) for m in method.modalities]), dtype=torch.float32)


def test_shared_head_is_stepped_once_per_modality_and_visual_sees_the_updated_head(tiny_bundle):
    method = build(tiny_bundle)
    method.train()
    snapshots = record_steps(method, method.head.weight)
    seen = []
    method.head.register_forward_pre_hook(lambda mod, args: seen.append(mod.weight.detach().clone()))
    method.update(first_batch(tiny_bundle), STEP)
    assert len(snapshots) == 3, "one optimizer step per modality"
    assert not torch.equal(snapshots[0], snapshots[1]) and not torch.equal(snapshots[1], snapshots[2])
    close(seen[0], snapshots[0])
    close(seen[1], snapshots[1])
    assert all(p.grad is None for p in method.parameters())


def test_encoder_features_are_not_detached(tiny_bundle):
    method = build(tiny_bundle)
    method.add_learner("visual")
    h = torch.randn(4, method.encoders["visual"].out_dim, requires_grad=True)
    z = method.modality_logits("visual", h, None)
    loss, _ = sustained_boosting_loss(z, torch.tensor([0, 1, 2, 3]), 0.5)
    loss.backward()
    assert h.grad is not None and torch.count_nonzero(h.grad) > 0


@pytest.mark.parametrize("set_to_none, moves", [(False, True), (True, False)])
def test_zero_filled_gradients_give_the_audio_side_an_extra_step(tiny_bundle, set_to_none, moves):
    method = build(tiny_bundle, variant="official_compat", zero_grad_set_to_none=set_to_none)
    method.train()
    batch = first_batch(tiny_bundle)
    method.update(batch, STEP)  # fills the momentum buffers
    conv = method.encoders["audio"].trunk.stem[0].weight
    snapshots = record_steps(method, conv)
    method.update(batch, STEP)
    assert not torch.equal(snapshots[0], snapshots[1]), "the audio step moves the audio encoder"
    assert (not torch.equal(snapshots[1], snapshots[2])) == moves, "audio encoder during the visual step"


def test_paper_mode_trains_new_learners_in_a_new_param_group(tiny_bundle):
    method = build(tiny_bundle)
    method.ctx.set_lr_factor(0.1)
    groups = len(method.optimizer.param_groups)
    method.add_learner("visual")
    layer = method.learners["visual"].layers[-1]
    group = method.optimizer.param_groups[-1]
    assert len(method.optimizer.param_groups) == groups + 1
    assert group["params"] == [layer.weight, layer.bias]
    assert group["lr"] == approx64(0.01 * 0.1) and group["momentum"] == 0.9 and group["weight_decay"] == 1e-4
    before = layer.weight.detach().clone()
    method.train()
    method.update(first_batch(tiny_bundle), STEP)
    assert not torch.equal(before, layer.weight)


def test_compat_mode_freezes_new_learners_but_the_encoder_gets_gradient_through_them(tiny_bundle):
    method = build(tiny_bundle, variant="official_compat")
    groups = len(method.optimizer.param_groups)
    method.add_learner("visual")
    layer = method.learners["visual"].layers[-1]
    assert len(method.optimizer.param_groups) == groups
    before = layer.weight.detach().clone()
    method.train()
    method.update(first_batch(tiny_bundle), STEP)
    torch.testing.assert_close(layer.weight, before, rtol=0, atol=0)
    h = torch.randn(4, method.encoders["visual"].out_dim, requires_grad=True)
    method.modality_logits("visual", h, None)[:, -1].sum().backward()  # the frozen learner's logits only
    assert layer.weight.grad is None and torch.count_nonzero(h.grad) > 0


def test_gated_variant_takes_a_third_step_and_updates_the_running_scores(tiny_bundle):
    method = build(tiny_bundle, variant="official_gated")
    assert method.hp.gate and len(method.optimizer.param_groups) == 2
    assert method.optimizer.param_groups[1]["lr"] == approx64(0.001)
    method.add_learner("visual")
    method.train()
    gate_weight = method.gate.net[0].weight
    snapshots = record_steps(method, gate_weight)
    method.update(first_batch(tiny_bundle), STEP)
    assert len(snapshots) == 4
    assert torch.equal(snapshots[0], snapshots[2]) and not torch.equal(snapshots[2], snapshots[3])
    s = method.score_sum
    close(method.running, (s / s.flip(0)).float())


def test_resume_keeps_the_gate_scores_in_the_run_dtype(tiny_bundle):
    # A float64 parity run resumed from a checkpoint must not continue with float32-rounded gate scores.
    with float64_default():
        method = build(tiny_bundle, variant="official_gated")
        method.running = torch.tensor([1 / 3, 3.0], dtype=torch.float64)
        clone = build(tiny_bundle, variant="official_gated")
        clone.load_checkpoint_state(copy.deepcopy(method.checkpoint_state()))
    assert clone.running.dtype == torch.float64 and torch.equal(clone.running, method.running)


@pytest.mark.parametrize("dataset, variant, lam", [
    ("cremad", "official_gated", 0.2), ("cremad", "official_compat", 0.5), ("kinetics_sounds", "official_gated", 0.2),
    ("cremad", "paper", 0.5)])
def test_gated_variant_uses_lambda_0_2_on_every_dataset(dataset, variant, lam):
    # njustkmg/NeurIPS25-AUG @966dbf5: train_CREMAD.py, train_KS.py and train_NVGesture.py are all gated with
    # "- 0.2 * criterion(add_fea, kl)"; the ungated train_CREMAD.py of ced44c6 uses 0.5.
    hp = resolve("aug", method_hparams(AUG), dataset, {"variant": variant}, variants=AUG.VARIANTS)
    assert hp.gate == (variant == "official_gated") and hp.residual_lambda == lam


@pytest.mark.parametrize("variant, checks", [
    ("official_compat", [0, 4, 9, 14, 19, 24, 29, 34, 39, 44]),  # the code's check = int(50 / 10)
    ("official_gated", [0, 4, 9, 14, 19, 24, 29, 34, 39, 44]),
    ("paper", [19, 39])])                                        # the paper's t_N = 20 on CREMA-D
def test_official_variants_take_the_codes_aca_interval_at_any_epoch_count(tiny_bundle, variant, checks):
    hp = resolve("aug", method_hparams(AUG), "cremad", {"variant": variant}, variants=AUG.VARIANTS)
    assert sorted(AUG(tiny_bundle.task, hp, make_context(epochs=50)).check_epochs) == checks


# --- prediction, configuration errors, three modalities --------------------------------------------------------------
def test_test_time_fusion_uses_the_published_weights(tiny_bundle):
    method = build(tiny_bundle)
    method.add_learner("audio")
    method.eval()
    batch = first_batch(tiny_bundle)
    pred = method.predict(batch)
    with torch.no_grad():
        out = {m: method.modality_logits(m, method.encoders[m](batch[m]), None).sum(1) for m in ("audio", "visual")}
    close(pred.per_modality["audio"], out["audio"])
    close(pred.fused, 0.4 * out["audio"] + 0.6 * out["visual"])
    # The diagnostic is the 0.5/0.5 fusion itself, not its double: mAP and confidence depend on the logits' scale.
    close(pred.alternatives["equal_fusion"], 0.5 * (out["audio"] + out["visual"]))
    custom = build(tiny_bundle, fusion_weights=[0.5, 0.5])
    custom.eval()
    pred = custom.predict(batch)
    close(pred.fused, 0.5 * (pred.per_modality["audio"] + pred.per_modality["visual"]))
    # The weights follow the dataset's modality order, whatever order the per-modality steps take.
    reordered = build(tiny_bundle, modality_order=["visual", "audio"])
    reordered.eval()
    pred = reordered.predict(batch)
    close(pred.fused, 0.4 * pred.per_modality["audio"] + 0.6 * pred.per_modality["visual"])


def test_bad_fusion_weights_and_order_name_the_key(tiny_bundle):
    with pytest.raises(HParamError, match="aug.fusion_weights"):
        build(tiny_bundle, fusion_weights=[1.0])
    with pytest.raises(HParamError, match="aug.modality_order"):
        build(tiny_bundle, modality_order=["audio", "text"])


def test_three_modalities_step_each_modality_and_use_the_nvgesture_weights():
    cls = get_dataset("synthetic")
    bundle = cls.build(resolve("data", cls.HPARAMS, "synthetic", {**TINY_DATA, "modalities": 3}))
    method = build(bundle)
    assert method.fusion == [0.33, 0.33, 0.34]
    method.train()
    snapshots = record_steps(method, method.head.weight)
    logs = method.update(first_batch(bundle), STEP)
    assert len(snapshots) == 4 and set(logs) == {"loss", "loss_audio", "loss_visual", "loss_text"}
    method.score_sum = torch.tensor([10.0, 12.0, 40.0], dtype=torch.float64)
    diag = method.on_epoch_end(0, loaders(bundle))
    assert method.extra_learners() == {"audio": 1, "visual": 1, "text": 0}
    assert diag["added/audio"] == 1.0 and diag["added/text"] == 0.0
    assert diag["score_rho/audio"] == approx64(10 / 52)
    method.eval()
    pred = method.predict(first_batch(bundle))
    out = pred.per_modality
    close(pred.fused, 0.33 * out["audio"] + 0.33 * out["visual"] + 0.34 * out["text"])
    close(pred.alternatives["equal_fusion"], (out["audio"] + out["visual"] + out["text"]) / 3)


def test_epoch_end_diagnostics_and_decision(tiny_bundle):
    method = build(tiny_bundle, epochs=4, aca_interval_epochs=2)
    data = loaders(tiny_bundle)
    method.on_epoch_start(0, data)
    method.score_sum = torch.tensor([60.0, 40.0], dtype=torch.float64)
    method.count = 100
    diag = method.on_epoch_end(0, data)  # epoch 0 is not a check in paper mode
    assert diag["aca_check"] == 0.0 and method.extra_learners() == {"audio": 0, "visual": 0}
    assert diag["score/audio"] == approx64(0.6) and diag["score_ratio"] == approx64(1.5)
    assert diag["score_difference"] == approx64(0.2)
    diag = method.on_epoch_end(1, data)
    assert diag["aca_check"] == 1.0 and diag["added/visual"] == 1.0 and diag["extra_learners/visual"] == 1.0


@pytest.mark.parametrize("sums, grown", [([51.5, 50.0], {"audio": 0, "visual": 1}), ([50.5, 50.0], None)])
def test_paper_aca_at_epoch_end_compares_the_per_sample_scores_with_tau(tiny_bundle, sums, grown):
    # s_m = S_m / N with N the epoch's sample count: (51.5 - 50) / 100 = 0.015 > tau = 0.01 grows visual;
    # (50.5 - 50) / 100 = 0.005 is inside the dead zone (the wrong N, e.g. 2N or a batch count, flips one of them).
    method = build(tiny_bundle, epochs=4, aca_interval_epochs=2)
    data = loaders(tiny_bundle)
    method.on_epoch_start(1, data)
    method.score_sum = torch.tensor(sums, dtype=torch.float64)
    method.count = 100
    diag = method.on_epoch_end(1, data)
    assert diag["aca_check"] == 1.0
    assert method.extra_learners() == (grown or {"audio": 0, "visual": 0})


def test_score_difference_diagnostic_weighs_the_visual_score_by_sigma(tiny_bundle):
    method = build(tiny_bundle, epochs=4, aca_interval_epochs=2, sigma=0.5)
    data = loaders(tiny_bundle)
    method.on_epoch_start(0, data)
    method.score_sum = torch.tensor([60.0, 40.0], dtype=torch.float64)
    method.count = 100
    diag = method.on_epoch_end(0, data)
    assert diag["score_difference"] == approx64(0.4)  # (60 - 0.5 * 40) / 100
    assert diag["score_ratio"] == approx64(1.5), "the ratio diagnostic has no sigma"


# --- the method passes its knobs on (each test fails if update/on_epoch_end ignores the knob) -------------------------
def epoch_end_growth(bundle, sums: list[float], **overrides) -> dict[str, int]:
    """The learners added at a paper-schedule check (epoch 1 of 4, t_N = 2) with epoch sums ``sums`` over N = 100."""
    method = build(bundle, epochs=4, aca_interval_epochs=2, **overrides)
    data = loaders(bundle)
    method.on_epoch_start(1, data)
    method.score_sum = torch.tensor(sums, dtype=torch.float64)
    method.count = 100
    assert method.on_epoch_end(1, data)["aca_check"] == 1.0
    return method.extra_learners()


NOTHING = {"audio": 0, "visual": 0}
VISUAL = {"audio": 0, "visual": 1}


@pytest.mark.parametrize("sums, overrides, grown", [
    # S = (10.5, 10): d = 0.005 is inside the paper's dead zone, rho = 1.05 is outside the code's.
    ([10.5, 10.0], {}, NOTHING),
    ([10.5, 10.0], {"aca_rule": "ratio"}, VISUAL),
    # S = (60, 50): d = 0.1 grows visual by default; sigma = 1.2 balances it (0.6 - 1.2 * 0.5 = 0) and tau = 0.2
    # covers it.
    ([60.0, 50.0], {}, VISUAL),
    ([60.0, 50.0], {"sigma": 1.2}, NOTHING),
    ([60.0, 50.0], {"tau": 0.2}, NOTHING),
])
def test_epoch_end_decides_with_the_runs_rule_sigma_and_tau(tiny_bundle, sums, overrides, grown):
    assert epoch_end_growth(tiny_bundle, sums, **overrides) == grown


def test_a_learner_goes_to_the_weak_modality_whatever_the_step_order(tiny_bundle):
    # score_sum is in dataset order (audio, visual): visual is the weak one, though it is stepped first.
    assert epoch_end_growth(tiny_bundle, [60.0, 40.0], modality_order=["visual", "audio"]) == VISUAL


def test_epoch_end_uses_the_runs_three_modality_threshold():
    cls = get_dataset("synthetic")
    bundle = cls.build(resolve("data", cls.HPARAMS, "synthetic", {**TINY_DATA, "modalities": 3}))
    # rho = 10/52, 12/50, 40/22: below 0.4 for audio and visual; below 0.2 for audio alone.
    grown = epoch_end_growth(bundle, [10.0, 12.0, 40.0], three_modal_threshold=0.2)
    assert grown == {"audio": 1, "visual": 0, "text": 0}


@pytest.mark.parametrize("lam, target", [(0.2, "ensemble_softmax"), (0.2, "per_learner_prob_sum"),
                                         (0.5, "per_learner_prob_sum")])
def test_update_trains_with_the_runs_lambda_and_residual_target(tiny_bundle, lam, target):
    method = build(tiny_bundle, residual_lambda=lam, residual_target=target)
    for m in method.modalities:
        method.add_learner(m)
        method.add_learner(m)  # two previous learners: the two residual targets differ
    method.train()
    logits = record_learner_logits(method)
    batch = first_batch(tiny_bundle)
    logs = method.update(batch, STEP)
    y = batch["label"]
    for m in method.modalities:
        expected = sustained_boosting_loss(logits[m], y, lam, target)[0]
        assert logs[f"loss_{m}"] == approx(expected.item())
        others = [sustained_boosting_loss(logits[m], y, other_lam, other_target)[0].item()
                  for other_lam in (0.2, 0.5) for other_target in RESIDUAL_TARGETS
                  if (other_lam, other_target) != (lam, target)]
        assert all(logs[f"loss_{m}"] != approx(v) for v in others), "the crafted case must tell the settings apart"


def test_gated_training_scales_the_extra_learners_by_the_gate(tiny_bundle):
    # train_KS.py @966dbf5 gates the extra learners in the training forward as well as at test time.
    method = build(tiny_bundle, variant="official_gated")
    method.add_learner("visual")
    method.running = torch.tensor([1.5, 1 / 1.5])
    method.train()
    gates = method.gate_values().clone()
    logits = record_learner_logits(method)
    batch = first_batch(tiny_bundle)
    logs = method.update(batch, STEP)
    z = logits["visual"].clone()
    z[:, 1:] *= gates[1]
    lam = method.hp.residual_lambda
    assert logs["loss_visual"] == approx(sustained_boosting_loss(z, batch["label"], lam)[0].item())
    ungated = sustained_boosting_loss(logits["visual"], batch["label"], lam)[0].item()
    assert logs["loss_visual"] != approx(ungated), "an ungated forward would score the same"


def test_epoch_statistics_accumulate_over_the_epochs_batches(tiny_bundle):
    method = build(tiny_bundle)
    method.add_learner("visual")
    method.train()
    data = loaders(tiny_bundle)
    method.on_epoch_start(0, data)
    first, second = list(itertools.islice(iter(data.train), 2))
    method.update(first, STEP)
    losses, ces = method.loss_sum.clone(), method.ce_sum.clone()
    logits = record_learner_logits(method)
    logs = method.update(second, StepInfo(epoch=0, step=1, steps_per_epoch=4, epochs=2))
    n = len(second["label"])
    close(method.loss_sum, losses + torch.tensor([logs["loss_audio"], logs["loss_visual"]], dtype=torch.float64) * n,
          dtype=torch.float32)
    ce = [F.cross_entropy(logits[m].sum(1), second["label"]).item() for m in method.modalities]
    close(method.ce_sum, ces + torch.tensor(ce, dtype=torch.float64) * n, dtype=torch.float32)
    assert method.count == len(first["label"]) + n


def test_logged_loss_weighs_the_modalities_by_the_fusion_weights(tiny_bundle):
    method = build(tiny_bundle, fusion_weights=[0.1, 0.9])
    method.train()
    logs = method.update(first_batch(tiny_bundle), STEP)
    assert logs["loss"] == approx(0.1 * logs["loss_audio"] + 0.9 * logs["loss_visual"])
    assert logs["loss"] != approx(0.5 * (logs["loss_audio"] + logs["loss_visual"]))


@pytest.mark.parametrize("dataset, interval, lam", [
    # The paper's t_N per dataset; lambda 0.2 where the gated scripts @966dbf5 set it, else train_CREMAD.py's 0.5.
    ("cremad", 20, 0.5), ("kinetics_sounds", 10, 0.2), ("vggsound", 10, 0.5), ("nvgesture", 10, 0.2),
    ("twitter2015", 5, 0.5), ("sarcasm", 1, 0.5), ("ave", 0, 0.5),
])
def test_per_dataset_defaults_are_the_papers(dataset, interval, lam):
    hp = resolve("aug", method_hparams(AUG), dataset, {}, variants=AUG.VARIANTS)
    assert (hp.aca_interval_epochs, hp.residual_lambda) == (interval, lam)


# --- checkpoints and end-to-end ---------------------------------------------------------------------------------------
class Interrupt(Exception):
    pass


def aug_config(**aug_hp):
    overrides = tiny_overrides("aug", aca_interval_epochs=1, **aug_hp)
    overrides["train"]["epochs"] = 4
    overrides["data"].update(dominant="audio", strong_reliability=1.0, weak_reliability=0.3, noise=0.5)
    return build_config("aug", "synthetic", overrides)


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("variant", ["paper", "official_compat"])
def test_end_to_end_grows_the_weak_modality_and_resumes_identically(tmp_path, variant):
    cfg = aug_config(variant=variant)
    train_run(cfg, tmp_path / "full", log=lambda line: None)
    full = history(tmp_path / "full")
    learners = [(r["diag"]["extra_learners/audio"], r["diag"]["extra_learners/visual"]) for r in full]
    assert learners[-1][0] == 0 and learners[-1][1] >= 2, learners
    assert all(r["diag"]["added/audio"] == 0.0 for r in full)

    def stop_after_epoch_1(line: str) -> None:
        if line.startswith("epoch 1 "):
            raise Interrupt

    with pytest.raises(Interrupt):
        train_run(cfg, tmp_path / "resumed", log=stop_after_epoch_1)
    assert full[1]["diag"]["added/visual"] == 1.0, "the interruption falls right after an assignment"
    train_run(cfg, tmp_path / "resumed", resume=True, log=lambda line: None)
    resumed = history(tmp_path / "resumed")
    for a, b in zip(full[2:], resumed[2:]):
        assert a["train"]["loss"] == pytest.approx(b["train"]["loss"], rel=1e-5)
        assert a["diag"]["extra_learners/visual"] == b["diag"]["extra_learners/visual"]
        assert a["test"]["acc"] == b["test"]["acc"]


def test_checkpoint_round_trip_restores_learners_groups_and_next_step(tiny_bundle):
    method = build(tiny_bundle, variant="official_gated", register_new_learners=True)
    method.train()
    batch = first_batch(tiny_bundle)
    method.add_learner("visual")
    method.add_learner("audio")
    method.add_learner("visual")
    method.update(batch, STEP)
    # Deep copy: optimizer.load_state_dict would otherwise share the live momentum buffers with ``method``.
    state = copy.deepcopy(method.checkpoint_state())
    clone = build(tiny_bundle, variant="official_gated", register_new_learners=True)
    clone.load_checkpoint_state(state)
    assert clone.history == ["visual", "audio", "visual"] and clone.extra_learners() == {"audio": 1, "visual": 2}
    assert len(clone.optimizer.param_groups) == len(method.optimizer.param_groups)
    close(clone.running, method.running)
    clone.train()
    assert clone.update(batch, STEP)["loss"] == pytest.approx(method.update(batch, STEP)["loss"], rel=1e-6)
    with pytest.raises(RuntimeError, match="does not extend"):
        other = build(tiny_bundle)
        other.add_learner("audio")
        other.load_extra_state({**state["extra"], "history": ["visual"]})


# --- configs ----------------------------------------------------------------------------------------------------------
EXPECTED = {  # dataset: (residual_lambda, aca_interval_epochs, optimizer)
    "cremad": (0.5, 20, "sgd"), "kinetics_sounds": (0.2, 10, "sgd"), "vggsound": (0.5, 10, "sgd"),
    "nvgesture": (0.2, 10, "sgd"), "twitter2015": (0.5, 5, "adam"), "sarcasm": (0.5, 1, "adam"),
}


@pytest.mark.parametrize("dataset", sorted(EXPECTED))
def test_configs_resolve_against_the_declared_knobs(dataset):
    head, sections = load_config_file(CONFIGS / f"{dataset}.yaml")
    assert head == {"method": "aug", "dataset": dataset}
    assert set(sections) <= {"train", "aug", "data", "model"}
    train = resolve("train", TRAIN_HPARAMS, dataset, sections["train"])
    hp = resolve("aug", method_hparams(AUG), dataset, sections["aug"], variants=AUG.VARIANTS)
    lam, interval, optimizer = EXPECTED[dataset]
    assert (hp.residual_lambda, hp.aca_interval_epochs, train.optimizer) == (lam, interval, optimizer)
    assert hp.sigma == 1.0 and hp.tau == 0.01
    if optimizer == "adam":
        assert train.lr == approx64(2e-5)
    else:
        assert train.lr == approx64(1e-2) and train.momentum == 0.9 and train.weight_decay == 1e-4
    if dataset == "cremad":
        assert (train.epochs, train.batch_size, train.lr_milestones) == (200, 64, [69, 139])
        assert aca_check_epochs(train.epochs, hp.aca_interval_epochs, False)[-1] == 179
    # An explicit value would win over a variant's preset: the config leaves lambda to the gated preset's 0.2.
    gated = resolve("aug", method_hparams(AUG), dataset, {**sections["aug"], "variant": "official_gated"},
                    variants=AUG.VARIANTS)
    assert gated.residual_lambda == 0.2 and gated.gate


# --- second audit: pins no test held (docs/methods/aug.md) -----------------------------------------------------------
@pytest.mark.parametrize("rule", ["difference", "ratio"])
def test_aca_without_confidence_in_a_modality_adds_no_learner(rule):
    # A zero epoch sum (no training forward counted for that modality) is "no data", not an infinitely weak or strong
    # modality: no learner, and no division by zero in the ratio rule.
    for sums in ((5.0, 0.0), (0.0, 5.0)):
        assert aca_decision(sums, 10, rule, sigma=1.0, tau=0.01, threshold=0.4) == []


def test_aca_three_modalities_threshold_is_strict():
    # rho_audio = 1 / (2 + 2) = 1/4, exactly the threshold: not below it (docs/methods/aug.md#aca: rho_m < 0.4).
    assert aca_decision((1.0, 2.0, 2.0), 4, "ratio", sigma=1.0, tau=0.01, threshold=0.25) == []
    assert aca_decision((0.96875, 2.0, 2.0), 4, "ratio", sigma=1.0, tau=0.01, threshold=0.25) == [0]


@pytest.mark.parametrize("variant, expected", [
    # docs/methods/aug.md#paper-vs-code rows 1, 2, 4, 6, 10, 11 and #gated (lambda 0.2 in every gated script).
    ("paper", dict(register_new_learners=True, aca_rule="difference", aca_check_after_first_epoch=False,
                   zero_grad_set_to_none=True, residual_target="ensemble_softmax", gate=False)),
    ("official_compat", dict(register_new_learners=False, aca_rule="ratio", aca_check_after_first_epoch=True,
                             zero_grad_set_to_none=False, residual_target="ensemble_softmax", gate=False,
                             aca_interval_epochs=0)),
    ("official_gated", dict(register_new_learners=False, aca_rule="ratio", aca_check_after_first_epoch=True,
                            zero_grad_set_to_none=False, residual_target="ensemble_softmax", gate=True,
                            residual_lambda=0.2, aca_interval_epochs=0)),
])
def test_variants_select_the_documented_column(variant, expected):
    hp = resolve("aug", method_hparams(AUG), "synthetic", {"variant": variant}, variants=AUG.VARIANTS)
    assert {k: getattr(hp, k) for k in expected} == expected
    # Shared by every variant: sigma, tau (paper, all datasets), the NVGesture cut-off, the learner width
    # (AudioVideo.py) and the gate's lr (train_KS.py: lr / 10).
    assert (hp.sigma, hp.tau, hp.three_modal_threshold, hp.learner_dim, hp.gate_lr_scale) == (1.0, 0.01, 0.4, 256, 0.1)


def test_grown_learner_takes_the_stacks_dtype():
    # A learner added to a float64 (parity) or GPU model must live where the others do, or the stacked forward fails.
    stack = LearnerStack(8, 6).double()
    layer = stack.grow()
    assert layer.weight.dtype == torch.float64 and layer.bias.dtype == torch.float64
    assert stack(torch.randn(3, 8, dtype=torch.float64)).shape == (3, 2, 6)


def test_loss_of_bfloat16_logits_is_computed_in_float32():
    # Under autocast the logits arrive in bfloat16; the three CE terms must not be computed (and returned) in bfloat16.
    torch.manual_seed(6)
    z = torch.randn(8, 3, 5).to(torch.bfloat16)
    y = torch.randint(0, 5, (8,))
    loss, z_all = sustained_boosting_loss(z, y, 0.5)
    expected, _ = sustained_boosting_loss(z.float(), y, 0.5)
    assert loss.dtype == torch.float32 and z_all.dtype == torch.float32
    close(loss, expected)


def test_modality_order_sets_the_step_order_and_each_modalitys_statistics_stay_its_own(tiny_bundle):
    # aug.modality_order=[visual, audio]: visual is forwarded and stepped first, audio sees the head after visual's
    # step; the confidence sums and the logged losses stay in the dataset's order.
    method = build(tiny_bundle, modality_order=["visual", "audio"])
    method.add_learner("audio")
    method.train()
    logits = record_learner_logits(method)
    order = []
    for m in method.modalities:
        method.learners[m].register_forward_pre_hook(lambda mod, args, m=m: order.append(m))
    batch = first_batch(tiny_bundle)
    y = batch["label"]
    logs = method.update(batch, STEP)
    assert order == ["visual", "audio"]
    expected = torch.stack([true_class_sum(logits[m].sum(1), y) for m in method.modalities])
    close(method.score_sum, expected, dtype=torch.float32)
    assert logs["loss_audio"] != approx(logs["loss_visual"])
    close(method.loss_sum, torch.tensor([logs["loss_audio"], logs["loss_visual"]]) * len(y), dtype=torch.float32)


def test_gate_step_fits_the_previous_scores_to_the_updated_scores_targets(tiny_bundle):
    # docs/methods/aug.md#gated: step k's running score is (T + k S) over the other modality's, S the epoch's sum
    # including this batch; the gate's MSE takes g(previous running score) to the targets of the updated one.
    method = build(tiny_bundle, variant="official_gated")
    method.add_learner("visual")
    method.train()
    batch = first_batch(tiny_bundle)
    method.update(batch, STEP)
    first = method.score_sum.clone()
    # The previous scores on the other side of the balance point, so that their targets are not the updated ones'.
    method.running = method.running.flip(0)
    previous = method.running.clone()
    gate = copy.deepcopy(method.gate)
    grads = []
    step = method.optimizer.step

    def record(*args, **kwargs):
        grads.append([None if p.grad is None else p.grad.clone() for p in method.gate.parameters()])
        return step(*args, **kwargs)

    method.optimizer.step = record
    method.update(batch, StepInfo(epoch=0, step=1, steps_per_epoch=4, epochs=2))
    batch_sums = method.score_sum - first
    u = batch_sums + 1 * method.score_sum
    close(method.running, (u / u.flip(0)).float())
    assert not torch.equal(gate_targets(previous), gate_targets(method.running))
    F.mse_loss(gate(previous), gate_targets(method.running)).backward()
    assert all(g is None for g in grads[0] + grads[1]), "the modality steps leave the gate alone"
    for actual, param in zip(grads[2], gate.parameters()):
        close(actual, param.grad)


def test_gated_prediction_scales_the_extra_learners_by_the_last_gate_values(tiny_bundle):
    # docs/methods/aug.md#gated: test time uses the last gate values.
    method = build(tiny_bundle, variant="official_gated")
    method.add_learner("visual")
    method.running = torch.tensor([1.5, 1 / 1.5])
    method.eval()
    batch = first_batch(tiny_bundle)
    pred = method.predict(batch)
    gates = method.gate_values()
    with torch.no_grad():
        h = method.encoders["visual"](batch["visual"])
        z = learner_logits(method.learners["visual"], method.head, h)
    close(pred.per_modality["visual"], z[:, 0] + gates[1] * z[:, 1])
    assert (z[:, 1] * (1 - gates[1])).abs().max() > 1e-3, "an ungated prediction would differ"
    diag = method.on_epoch_end(0, loaders(tiny_bundle))
    assert [diag["gate/audio"], diag["gate/visual"]] == approx(gates.tolist())


def test_epoch_loss_diagnostics_are_per_sample_means_and_their_gap(tiny_bundle):
    method = build(tiny_bundle, epochs=4, aca_interval_epochs=2)
    data = loaders(tiny_bundle)
    method.on_epoch_start(0, data)
    method.loss_sum = torch.tensor([30.0, 20.0], dtype=torch.float64)
    method.count = 100
    diag = method.on_epoch_end(0, data)
    assert (diag["train_loss/audio"], diag["train_loss/visual"]) == (approx64(0.3), approx64(0.2))
    assert diag["loss_gap"] == approx64(0.1), "L^a - L^v: positive when audio's loss is the larger"


def test_a_checkpoint_with_learners_of_an_unknown_modality_is_refused_by_name(tiny_bundle):
    method = build(tiny_bundle)
    state = method.extra_state()
    with pytest.raises(RuntimeError, match=r"modalities \['text'\]"):
        method.load_extra_state({**state, "history": ["audio", "text"]})
    assert method.extra_learners() == {"audio": 0, "visual": 0}, "nothing grown before the refusal"


def test_checkpoint_restores_the_epoch_accumulators(tiny_bundle):
    method = build(tiny_bundle)
    method.train()
    method.update(first_batch(tiny_bundle), STEP)
    clone = build(tiny_bundle)
    clone.load_checkpoint_state(copy.deepcopy(method.checkpoint_state()))
    assert clone.count == method.count
    for name in ("score_sum", "loss_sum", "ce_sum"):
        assert torch.equal(getattr(clone, name), getattr(method, name)), name


def test_a_checkpoint_extending_a_grown_model_adds_only_the_missing_learners(tiny_bundle):
    method = build(tiny_bundle)
    method.add_learner("visual")
    state = {**method.extra_state(), "history": ["visual", "audio", "visual"]}
    method.load_extra_state(state)
    assert method.history == ["visual", "audio", "visual"]
    assert method.extra_learners() == {"audio": 1, "visual": 2}


def test_mixed_precision_prediction_returns_float32_logits(tiny_bundle):
    # Under bf16 autocast the metrics (softmax, mAP) and the fusion must read float32 logits, not bfloat16 ones.
    method = build(tiny_bundle)
    method.add_learner("audio")
    method.ctx.amp = True
    method.eval()
    pred = method.predict(first_batch(tiny_bundle))
    assert pred.fused.dtype == torch.float32 and pred.alternatives["equal_fusion"].dtype == torch.float32
    assert {z.dtype for z in pred.per_modality.values()} == {torch.float32}


def _aug_epochs(*added):
    return [{"epoch": e, "train": {"loss": 1.0},
             "diag": {"aca_check": 1.0, "added/audio": a, "added/visual": v,
                      "extra_learners/audio": 0.0, "extra_learners/visual": 0.0}}
            for e, (a, v) in enumerate(added)]


def test_aug_mechanism_acted_only_when_a_learner_added_before_the_last_epoch_trained():
    assert AUG.mechanism_acted(_aug_epochs((0.0, 0.0), (0.0, 1.0), (0.0, 0.0))) is True
    # Added at the last epoch's check: the learner never trained a step.
    assert AUG.mechanism_acted(_aug_epochs((0.0, 0.0), (0.0, 0.0), (1.0, 0.0))) is False
    assert AUG.mechanism_acted(_aug_epochs((0.0, 0.0), (0.0, 0.0))) is False
    # A history logged without ACA's keys cannot be judged.
    assert AUG.mechanism_acted([{"epoch": 0, "train": {"loss": 1.0}, "diag": {}}]) is None
    assert AUG.mechanism_acted([]) is None
