"""Crafted-tensor checks for the 2025 methods: each test pins the method's characteristic computation on hand-computed
values, then a few check the wiring inside ``update``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from baselines.arl import ARL, arl_weights, modality_statistics
from baselines.hparams import resolve
from baselines.base import StepInfo
from benchmarks.config import method_hparams
from tests.conftest import first_batch, make_context


def build(cls, bundle, **overrides):
    hp = resolve(cls.name, method_hparams(cls), bundle.task.dataset, overrides, variants=cls.VARIANTS)
    return cls(bundle.task, hp, make_context())


def freeze_steps(method):
    """Keep the gradients ``update`` leaves behind by turning the optimizer step into a no-op."""
    method.optimizer.step = lambda *args, **kwargs: None
    return method


def entropy(*p: float) -> float:
    return -sum(x * math.log(x) for x in p)


# --- ARL ----------------------------------------------------------------------------------------------------------
# Audio: both rows put p = (3/4, 1/4); visual: rows (1, -1) and (-1, 1) put sigmoid(2) on one class.
Z_A = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])
Z_V = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])


def test_arl_modality_statistics_are_mean_abs_logit_mass_and_mean_entropy():
    stats = modality_statistics({"audio": Z_A, "visual": Z_V})
    s = 1 / (1 + math.exp(-2.0))
    expected = torch.tensor([[math.log(3.0), entropy(0.75, 0.25)], [2.0, entropy(s, 1 - s)]])
    torch.testing.assert_close(stats, expected, rtol=1e-6, atol=1e-7)


def test_arl_weights_favour_the_modality_whose_dependence_is_below_its_inverse_variance_share():
    stats = modality_statistics({"audio": Z_A, "visual": Z_V})
    w, d, q = arl_weights(stats, temperature=8.0, entropy_floor=0.3)
    s = 1 / (1 + math.exp(-2.0))
    d_a = math.log(3.0) / (math.log(3.0) + 2.0)
    h_a, h_v = entropy(0.75, 0.25), entropy(s, 1 - s)
    # Two modalities, no floor binding: q_a = (1/h_a) / (1/h_a + 1/h_v) = h_v / (h_a + h_v).
    q_a = h_v / (h_a + h_v)
    w_a = 1 / (1 + math.exp(-8.0 * ((1 - d_a) * q_a - d_a * (1 - q_a))))
    torch.testing.assert_close(d, torch.tensor([d_a, 1 - d_a]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(q, torch.tensor([q_a, 1 - q_a]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(w, torch.tensor([w_a, 1 - w_a]), rtol=1e-5, atol=1e-6)
    # Audio holds 35% of the dependence but 39% of the inverse-variance share: it is under-used and gets the larger weight.
    assert d_a < q_a and w_a == pytest.approx(0.5779, abs=1e-4)


def test_arl_weights_floor_the_entropy_share_before_inverting_it():
    # Entropy shares 0.1 / 0.9: the audio share is floored at 0.3, so q_a = (1/0.3) / (1/0.3 + 1/0.9) = 3/4.
    stats = torch.tensor([[1.0, 0.1], [1.0, 0.9]])
    w, d, q = arl_weights(stats, temperature=4.0, entropy_floor=0.3)
    torch.testing.assert_close(q, torch.tensor([0.75, 0.25]), rtol=1e-6, atol=1e-7)
    # Equal dependences 1/2: w = softmax(4 [0.5 * 0.75, 0.5 * 0.25]) = softmax([1.5, 0.5]).
    torch.testing.assert_close(w, torch.softmax(torch.tensor([1.5, 0.5]), 0), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="2 modalities"):
        arl_weights(torch.ones(3, 2), 4.0, 0.3)


def arl_reference_grads(method, batch, gamma):
    """Autograd gradients of CE(z) + gamma * sum_m CE(z_m), with z_m the shared head on zero-masked features."""
    h = method.model.features(method.inputs(batch))
    y = batch["label"]
    head = method.model.head
    z = head(h)[0]
    z_uni = {m: head({n: v if n == m else torch.zeros_like(v) for n, v in h.items()})[0] for m in h}
    loss = F.cross_entropy(z, y) + gamma * sum(F.cross_entropy(v, y) for v in z_uni.values())
    params = list(method.model.parameters())
    return dict(zip(params, torch.autograd.grad(loss, params))), z_uni


def test_arl_unimodal_logits_keep_the_full_bias_of_the_shared_classifier(tiny_bundle):
    method = build(ARL, tiny_bundle)
    batch = first_batch(tiny_bundle)
    _, z_uni = method.forward_all(batch)
    h = method.model.features(method.inputs(batch))
    fc, (a, b) = method.model.head.fc, method.model.head.bounds["audio"]
    torch.testing.assert_close(z_uni["audio"], h["audio"] @ fc.weight[:, a:b].t() + fc.bias, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["paper", "official_code"])
def test_arl_update_scales_each_encoder_gradient_by_one_plus_its_weight(tiny_bundle, variant):
    method = freeze_steps(build(ARL, tiny_bundle, variant=variant, clip_norm=0.0))
    batch = first_batch(tiny_bundle)
    reference, z_uni = arl_reference_grads(method, batch, gamma=4.0)
    logs = method.update(batch, StepInfo(epoch=6, step=0, steps_per_epoch=4, epochs=10))
    if variant == "paper":
        w, _, _ = arl_weights(modality_statistics(z_uni), 4.0, 0.3)
        expected = dict(zip(("audio", "visual"), w.tolist()))
    else:
        expected = {"audio": 0.5, "visual": 0.5}
    for m in ("audio", "visual"):
        assert logs[f"w_{m}"] == pytest.approx(expected[m], rel=1e-5)
        for p in method.model.encoders[m].parameters():
            torch.testing.assert_close(p.grad, (1 + expected[m]) * reference[p], rtol=1e-4, atol=1e-6)
    for p in method.model.head.parameters():
        torch.testing.assert_close(p.grad, reference[p], rtol=1e-4, atol=1e-6)


def test_arl_warm_up_sums_the_unimodal_losses_and_scales_nothing(tiny_bundle):
    method = freeze_steps(build(ARL, tiny_bundle, clip_norm=0.0))
    batch = first_batch(tiny_bundle)
    reference, _ = arl_reference_grads(method, batch, gamma=1.0)
    logs = method.update(batch, StepInfo(epoch=5, step=0, steps_per_epoch=4, epochs=10))
    assert not any(k.startswith("w_") for k in logs)
    for p in method.model.parameters():
        torch.testing.assert_close(p.grad, reference[p], rtol=1e-4, atol=1e-6)


def test_arl_clips_the_global_gradient_norm(tiny_bundle):
    method = freeze_steps(build(ARL, tiny_bundle, clip_norm=1e-3))
    method.update(first_batch(tiny_bundle), StepInfo(epoch=6, step=0, steps_per_epoch=4, epochs=10))
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in method.model.parameters()]))
    assert norm.item() == pytest.approx(1e-3, rel=1e-4)


def test_arl_defaults_follow_the_paper_per_dataset():
    params = {p.name: p for p in ARL.HPARAMS}
    assert params["temperature"].default_for("cremad") == 8.0 and params["temperature"].default_for("ave") == 4.0
    assert params["gamma"].default_for("kinetics_sounds") == 4.0
    assert ARL.MODALITIES == (2,) and ARL.DATA_PARALLEL == "exact"
