"""Crafted-tensor checks for ARL (ICCV 2025), IPRM (IJCAI 2025) and MIDAS (NeurIPS 2025): each test pins the method's
characteristic computation on hand-computed values, then a few check the wiring inside ``update``."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from baselines.arl import ARL, arl_weights, modality_statistics
from baselines.base import StepInfo
from baselines.iprm import IPRM, kl_to_fused, rebalanced_weights, slerp
from baselines.midas import (
    MIDAS,
    confidence_labels,
    hard_sample_weights,
    misaligned_loss,
    misaligned_rows,
    normalised_fused_confidence,
    weak_modality_update,
)
from baselines.networks import MODEL_HPARAMS
from benchmarks.config import TRAIN_HPARAMS, build_config, load_config_file, method_hparams
from core.data import ModalitySpec, TaskSpec
from core.hparams import resolve
from datasets.registry import get_dataset
from tests.conftest import (
    TINY_DATA,
    TINY_MODEL,
    build_with,
    first_batch,
    first_batch64,
    float64_default,
    freeze_steps,
    make_context,
)

CONFIGS = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"


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
    # Audio holds 35% of the dependence but 39% of the inverse-variance share: under-used, it gets the larger weight.
    assert d_a < q_a and w_a == pytest.approx(0.5779, abs=1e-4)


def test_arl_weights_floor_the_entropy_share_before_inverting_it():
    # Entropy shares 0.1 / 0.9: the audio share is floored at 0.3, so q_a = (1/0.3) / (1/0.3 + 1/0.9) = 3/4.
    stats = torch.tensor([[1.0, 0.1], [1.0, 0.9]])
    w, _, q = arl_weights(stats, temperature=4.0, entropy_floor=0.3)
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
    method = build_with(ARL, tiny_bundle)
    with torch.no_grad():  # the init zeroes the bias, and b/2 == b at zero
        method.model.head.fc.bias.copy_(torch.linspace(-1.0, 1.0, method.model.head.fc.bias.numel()))
    batch = first_batch(tiny_bundle)
    _, z_uni = method.forward_all(batch)
    h = method.model.features(method.inputs(batch))
    fc, (a, b) = method.model.head.fc, method.model.head.bounds["audio"]
    torch.testing.assert_close(z_uni["audio"], h["audio"] @ fc.weight[:, a:b].t() + fc.bias, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["paper", "official_code"])
def test_arl_update_scales_each_encoder_gradient_by_one_plus_its_weight(tiny_bundle, variant):
    method = freeze_steps(build_with(ARL, tiny_bundle, variant=variant, clip_norm=0.0))
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
    method = freeze_steps(build_with(ARL, tiny_bundle, clip_norm=0.0))
    batch = first_batch(tiny_bundle)
    reference, _ = arl_reference_grads(method, batch, gamma=1.0)
    logs = method.update(batch, StepInfo(epoch=5, step=0, steps_per_epoch=4, epochs=10))
    assert not any(k.startswith("w_") for k in logs)
    for p in method.model.parameters():
        torch.testing.assert_close(p.grad, reference[p], rtol=1e-4, atol=1e-6)


def test_arl_clips_the_global_gradient_norm(tiny_bundle):
    method = freeze_steps(build_with(ARL, tiny_bundle, clip_norm=1e-3))
    method.update(first_batch(tiny_bundle), StepInfo(epoch=6, step=0, steps_per_epoch=4, epochs=10))
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in method.model.parameters()]))
    assert norm.item() == pytest.approx(1e-3, rel=1e-4)


def test_arl_step_in_float64_keeps_float64_logits_losses_and_statistics(tiny_bundle):
    with float64_default():
        method = build_with(ARL, tiny_bundle)
        batch = first_batch64(tiny_bundle)
        with torch.no_grad():
            z, z_uni = method.forward_all(batch)
            expected = F.cross_entropy(z, batch["label"]).item()
        logs = method.update(batch, StepInfo(epoch=6, step=0, steps_per_epoch=4, epochs=10))
    assert z.dtype == torch.float64 and all(v.dtype == torch.float64 for v in z_uni.values())
    assert modality_statistics(z_uni).dtype == torch.float64
    assert logs["loss_fused"] == expected   # float32 logits would round the loss at ~1e-8


def test_arl_defaults_follow_the_paper_per_dataset():
    params = {p.name: p for p in ARL.HPARAMS}
    assert params["temperature"].default_for("cremad") == 8.0 and params["temperature"].default_for("ave") == 4.0
    assert params["gamma"].default_for("kinetics_sounds") == 4.0
    assert ARL.MODALITIES == (2,) and ARL.DATA_PARALLEL == "exact"



def test_arl_gradient_weights_use_the_configured_temperature_and_entropy_floor(tiny_bundle):
    # Entropy shares of Z_A / Z_V are 0.61 / 0.39: a floor of 0.45 binds on visual, the default 0.3 does not.
    method = build_with(ARL, tiny_bundle, temperature=6.0, entropy_floor=0.45)
    z_uni = {"audio": Z_A, "visual": Z_V}
    weights = method.gradient_weights(z_uni)
    w, _, q = arl_weights(modality_statistics(z_uni), 6.0, 0.45)
    s = 1 / (1 + math.exp(-2.0))
    share_a = entropy(0.75, 0.25) / (entropy(0.75, 0.25) + entropy(s, 1 - s))
    assert q[1].item() == pytest.approx((1 / 0.45) / (1 / 0.45 + 1 / share_a), rel=1e-6)  # visual's share floored
    torch.testing.assert_close(torch.stack([weights["audio"], weights["visual"]]), w, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(w, arl_weights(modality_statistics(z_uni), 6.0, 0.3)[0], rtol=1e-3, atol=0)


def test_arl_predicts_the_fused_head_and_the_shared_classifiers_unimodal_logits(tiny_bundle):
    torch.manual_seed(0)
    method = build_with(ARL, tiny_bundle)
    method.eval()
    batch = first_batch(tiny_bundle)
    pred = method.predict(batch)
    with torch.no_grad():
        h = method.model.features(method.inputs(batch))
        z = method.model.head(h)[0]
    torch.testing.assert_close(pred.fused, z, rtol=0, atol=0)
    torch.testing.assert_close(pred.per_modality, method.forward_all(batch)[1], rtol=0, atol=0)


def test_arl_defaults_follow_the_official_script():
    defaults = {p.name: p.default for p in ARL.HPARAMS}
    # --start 5, torch.clamp(H_n, 0.3), clip_grad_norm_(max_norm=40); the paper's asymmetric weights by default.
    assert {k: defaults[k] for k in ("gamma", "start_epoch", "entropy_floor", "clip_norm", "coefficients")} == {
        "gamma": 4.0, "start_epoch": 5, "entropy_floor": 0.3, "clip_norm": 40.0, "coefficients": "asymmetric"}

# --- IPRM ---------------------------------------------------------------------------------------------------------
def test_iprm_slerp_is_the_geodesic_mixup_of_the_normalised_features():
    x, y = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    half = torch.tensor(0.5)
    # theta = pi/2: each coefficient is sin(pi/4) / (1 + 1e-8).
    c = math.sin(math.pi / 4) / (1 + 1e-8)
    torch.testing.assert_close(slerp(x, y, half, half), torch.tensor([[c, c]]), rtol=1e-6, atol=1e-7)
    # Weights (1, 0) return x's direction; 60 degrees apart, weights (1/3, 2/3) land 40 degrees from x.
    torch.testing.assert_close(slerp(x, y, torch.tensor(1.0), torch.tensor(0.0)), torch.tensor([[1.0, 0.0]]),
                               rtol=1e-6, atol=1e-7)
    y60 = torch.tensor([[math.cos(math.pi / 3), math.sin(math.pi / 3)]])
    out = slerp(x, y60, torch.tensor(1 / 3), torch.tensor(2 / 3))
    angle = 2 * math.pi / 9
    torch.testing.assert_close(out, torch.tensor([[math.cos(angle), math.sin(angle)]]), rtol=1e-5, atol=1e-6)



def test_iprm_slerp_of_parallel_features_is_finite():
    # x'.x' of a normalised float32 row can round to 1 + 2^-23 (this row does), where acos is NaN; the cosine is
    # clamped to [-1, 1], so two modalities with parallel features mix to a finite vector instead of NaN logits.
    x = torch.tensor([[1.5409960746765137, -0.293428897857666, -2.1787893772125244, 0.5684312582015991,
                       -1.0845223665237427, -1.3985954523086548, 0.40334683656692505, 0.8380263447761536]])
    n = F.normalize(x, dim=1)
    assert (n * n).sum().item() > 1.0, "the crafted row must overshoot 1 in float32"
    out = slerp(x, 2 * x, torch.tensor(0.6), torch.tensor(0.4))
    assert torch.isfinite(out).all()

def test_iprm_probe_gives_the_larger_weight_to_the_modality_closer_to_the_fused_prediction():
    z_mix = torch.tensor([[0.0, 0.0]])
    z_a = torch.tensor([[math.log(3.0), 0.0]])  # p = (3/4, 1/4)
    z_v = torch.tensor([[math.log(9.0), 0.0]])  # p = (9/10, 1/10)
    kl_a = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    kl_v = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    # float32 computation against float64 references
    assert kl_to_fused(z_a, z_mix).item() == pytest.approx(kl_a, rel=1e-5)
    assert kl_to_fused(z_v, z_mix).item() == pytest.approx(kl_v, rel=1e-5)
    kl = torch.tensor([[kl_a, kl_v]])
    torch.testing.assert_close(rebalanced_weights(kl), torch.tensor([[kl_v, kl_a]]) / (kl_a + kl_v),
                               rtol=1e-6, atol=1e-7)
    assert rebalanced_weights(kl)[0, 0].item() > 0.5, "audio agrees more with the fused output"
    torch.testing.assert_close(rebalanced_weights(torch.zeros(1, 2)), torch.full((1, 2), 0.5), rtol=0, atol=0)


def iprm_reference(method, batch, lam_hat):
    h = {m: method.encoders[m](batch[m]) for m in method.modalities}
    z_uni = {m: method.uni_heads[m](h[m]) for m in method.modalities}
    y = batch["label"]
    z_mix = method.mixup_heads["audio+visual"](slerp(h["audio"], h["visual"], lam_hat[0], lam_hat[1]))
    loss = F.cross_entropy(z_mix, y) + sum(F.cross_entropy(z, y) for z in z_uni.values())
    params = list(method.parameters())
    return h, z_uni, dict(zip(params, torch.autograd.grad(loss, params, allow_unused=True)))


def test_iprm_update_advances_the_ema_probes_and_learns_on_the_recalibrated_mixup(tiny_bundle):
    method = freeze_steps(build_with(IPRM, tiny_bundle))
    method.lam_hat.copy_(torch.tensor([[0.9, 0.1]]))
    batch = first_batch(tiny_bundle)
    with torch.no_grad():
        h = {m: method.encoders[m](batch[m]) for m in method.modalities}
        z_uni = {m: method.uni_heads[m](h[m]) for m in method.modalities}
    # l = 0.8 * 0.5 + 0.2 * (0.9, 0.1) = (0.58, 0.42); the probe runs the pair head on slerp(l).
    lam = torch.tensor([0.58, 0.42])
    z_probe = method.mixup_heads["audio+visual"](slerp(h["audio"], h["visual"], lam[0], lam[1]))
    kl = torch.stack([kl_to_fused(z_uni["audio"], z_probe), kl_to_fused(z_uni["visual"], z_probe)])
    lam_hat = torch.stack([kl[1], kl[0]]) / kl.sum()
    _, _, reference = iprm_reference(method, batch, lam_hat.detach())
    logs = method.update(batch, StepInfo(epoch=0, step=0, steps_per_epoch=4, epochs=2))
    torch.testing.assert_close(method.lam, lam[None], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(method.lam_hat, lam_hat[None].detach(), rtol=1e-5, atol=1e-6)
    assert logs["lam_hat_audio_audio+visual"] == pytest.approx(lam_hat[0].item(), rel=1e-5)
    for p in method.parameters():
        torch.testing.assert_close(p.grad, reference[p], rtol=1e-4, atol=1e-6)


def test_iprm_predicts_unimodal_sum_plus_the_mixup_head_at_the_last_probed_weights(tiny_bundle):
    method = build_with(IPRM, tiny_bundle)
    method.lam.copy_(torch.tensor([[0.7, 0.3]]))
    method.eval()
    batch = first_batch(tiny_bundle)
    pred = method.predict(batch)
    with torch.no_grad():
        h = {m: method.encoders[m](batch[m]) for m in method.modalities}
        z_uni = {m: method.uni_heads[m](h[m]) for m in method.modalities}
        z_mix = method.mixup_heads["audio+visual"](slerp(h["audio"], h["visual"], torch.tensor(0.7),
                                                         torch.tensor(0.3)))
    torch.testing.assert_close(pred.fused, z_uni["audio"] + z_uni["visual"] + z_mix, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pred.per_modality["visual"], z_uni["visual"], rtol=1e-5, atol=1e-6)


def test_iprm_steps_and_predicts_in_float64(tiny_bundle):
    with float64_default():
        torch.manual_seed(0)
        method = build_with(IPRM, tiny_bundle)
        batch = first_batch64(tiny_bundle)
        with torch.no_grad():
            h = {m: method.encoders[m](batch[m]) for m in method.modalities}
            z_uni = {m: method.uni_heads[m](h[m]) for m in method.modalities}
            z_probe = method.mixup_heads["audio+visual"](slerp(h["audio"], h["visual"], 0.5, 0.5))
            kl = torch.stack([kl_to_fused(z_uni["audio"], z_probe), kl_to_fused(z_uni["visual"], z_probe)])
            lam_hat = kl.flip(0) / kl.sum()
            z_mix = method.mixup_heads["audio+visual"](slerp(h["audio"], h["visual"], lam_hat[0], lam_hat[1]))
            expected = (F.cross_entropy(z_mix, batch["label"])
                        + sum(F.cross_entropy(z, batch["label"]) for z in z_uni.values())).item()
        logs = method.update(batch, StepInfo(0, 0, 1, 1))   # float32 features met the float64 heads here
        pred = method.predict(batch)
    assert method.lam_hat.dtype == torch.float64 and pred.fused.dtype == torch.float64
    assert kl.dtype == torch.float64
    # A float32 KL or loss would differ from the float64 values at ~1e-8.
    assert logs["loss"] == pytest.approx(expected, rel=1e-13)
    assert method.lam_hat[0].tolist() == pytest.approx(lam_hat.tolist(), rel=1e-13)



def test_iprm_three_modalities_sum_the_pair_losses_and_predict_the_mean_pair_head():
    # main_trimodal.py --mixup_method tri_cls: one mixup head per pair, each pair's CE added to the loss; valid()
    # adds the mean of the three pair heads to the unimodal sum.
    cls = get_dataset("synthetic")
    bundle = cls.build(resolve("data", cls.HPARAMS, "synthetic", {**TINY_DATA, "modalities": 3}))
    hp = resolve("iprm", method_hparams(IPRM), "synthetic", {})
    # The text MLP's feature width set to the conv trunks' 8 x width, as the geodesic mixup needs.
    ctx = dataclasses.replace(make_context(), model_hp=resolve("model", MODEL_HPARAMS, None,
                                                                {**TINY_MODEL, "feature_dim": 32}))
    torch.manual_seed(0)
    method = freeze_steps(IPRM(bundle.task, hp, ctx))
    assert method.pairs == (("audio", "visual"), ("audio", "text"), ("visual", "text"))
    batch = first_batch(bundle)
    y = batch["label"]
    logs = method.update(batch, StepInfo(epoch=0, step=0, steps_per_epoch=4, epochs=2))
    with torch.no_grad():
        h = {m: method.encoders[m](batch[m]) for m in method.modalities}
        pair_ce = [F.cross_entropy(method.mixup_heads[f"{i}+{j}"](slerp(h[i], h[j], *method.lam_hat[p])), y).item()
                   for p, (i, j) in enumerate(method.pairs)]
    assert logs["loss_mixup"] == pytest.approx(sum(pair_ce), rel=1e-5)
    method.lam.copy_(torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]]))
    method.eval()
    pred = method.predict(batch)
    with torch.no_grad():
        h = {m: method.encoders[m](batch[m]) for m in method.modalities}
        z_uni = {m: method.uni_heads[m](h[m]) for m in method.modalities}
        z_mix = [method.mixup_heads[f"{i}+{j}"](slerp(h[i], h[j], *method.lam[p]))
                 for p, (i, j) in enumerate(method.pairs)]
    torch.testing.assert_close(pred.fused, sum(z_uni.values()) + sum(z_mix) / 3, rtol=1e-5, atol=1e-6)

def test_iprm_needs_equal_feature_widths():
    # The spectrogram trunk gives 8 x width = 32 features, the vector MLP feature_dim = 512 (the default).
    task = TaskSpec("mixed", 3, (ModalitySpec("audio", "spectrogram", (1, 16, 16)),
                                 ModalitySpec("text", "vector", (6,))))
    hp = resolve("iprm", method_hparams(IPRM), None, {})
    with pytest.raises(ValueError, match=r"equal feature widths, got \{'audio': 32, 'text': 512\}"):
        IPRM(task, hp, make_context())
    assert IPRM.DATA_PARALLEL == "exact" and 3 in IPRM.MODALITIES


# --- MIDAS --------------------------------------------------------------------------------------------------------
def test_midas_misaligned_rows_swap_each_modality_and_drop_equal_label_pairs():
    h1, h2 = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[10.0], [20.0], [30.0]])
    y, perm = torch.tensor([0, 1, 1]), torch.tensor([1, 2, 0])
    f1, f2, labels, keep = misaligned_rows(h1, h2, y, perm)
    # Rows 0-2: (f1_i, f2_pi(i)); rows 3-5: (f1_pi(i), f2_i).
    assert f1.squeeze(1).tolist() == [1.0, 2.0, 3.0, 2.0, 3.0, 1.0]
    assert f2.squeeze(1).tolist() == [20.0, 30.0, 10.0, 10.0, 20.0, 30.0]
    assert labels.tolist() == [[0, 1], [1, 1], [1, 0], [1, 0], [1, 1], [0, 1]]
    assert keep.tolist() == [True, False, True, True, False, True]


def test_midas_confidence_labels_normalise_each_modality_confidence_in_its_own_label():
    # The paper's example (§3.3): confidences 0.9 and 0.3 give the soft label 0.75 y_i + 0.25 y_j.
    p1 = torch.tensor([[0.9, 0.1], [0.4, 0.6]])
    p2 = torch.tensor([[0.2, 0.8], [0.7, 0.3]])
    y, perm = torch.tensor([0, 1]), torch.tensor([1, 0])
    _, _, labels, _ = misaligned_rows(torch.zeros(2, 1), torch.zeros(2, 1), y, perm)
    conf = confidence_labels(p1, p2, labels, perm)
    # Row 0: modality 1 of sample 0 (label 0, 0.9) with modality 2 of sample 1 (label 1, 0.3).
    # Row 2: modality 1 of sample 1 (label 1, 0.6) with modality 2 of sample 0 (label 0, 0.2).
    torch.testing.assert_close(conf[0], torch.tensor([0.75, 0.25]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(conf[2], torch.tensor([0.75, 0.25]), rtol=1e-6, atol=1e-7)


def test_midas_misaligned_loss_weights_each_label_part_by_alpha_confidence_and_hardness():
    z = torch.tensor([[math.log(3.0), 0.0, 0.0]])  # p = (3/5, 1/5, 1/5)
    loss = misaligned_loss(z, torch.tensor([[0, 1]]), torch.tensor([[0.75, 0.25]]), torch.tensor([1.0, 2.0]),
                           torch.tensor([1.5]))
    expected = -1.5 * (0.75 * math.log(0.6) + 2.0 * 0.25 * math.log(0.2))
    torch.testing.assert_close(loss, torch.tensor([expected]), rtol=1e-6, atol=1e-7)


def test_midas_hard_sample_weight_rises_from_one_to_two_with_the_cosine():
    h1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    h2 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    w = hard_sample_weights(h1, h2, torch.tensor([1, 0]))
    # Rows 0-1 compare modality 2 (cos = -1), rows 2-3 modality 1 (orthogonal: cos = 0).
    torch.testing.assert_close(w, torch.tensor([1.0, 1.0, 1.5, 1.5]), rtol=1e-6, atol=1e-7)
    same = hard_sample_weights(h1, h1, torch.tensor([0, 1]))
    torch.testing.assert_close(same, torch.full((4,), 2.0), rtol=1e-6, atol=1e-7)


def test_midas_weak_modality_update_follows_the_papers_example():
    # §3.4: the weak modality's label share is 0.25 but the fused model gives its class only 0.10: alpha grows.
    alpha = weak_modality_update(torch.tensor([1.3, 1.0]), torch.tensor([0.75, 0.25]), torch.tensor([0.9, 0.1]),
                                 eta=0.05)
    torch.testing.assert_close(alpha, torch.tensor([1.0, 1.0 + 0.05 * 0.15]), rtol=1e-6, atol=1e-7)
    # An over-predicted weak modality cannot push its weight below 1.
    floor = weak_modality_update(torch.tensor([1.0, 1.0]), torch.tensor([0.2, 0.8]), torch.tensor([0.6, 0.4]), 0.05)
    torch.testing.assert_close(floor, torch.ones(2), rtol=0, atol=0)  # the floor value itself
    signed = weak_modality_update(torch.tensor([1.0, 1.0]), torch.tensor([0.75, 0.25]), torch.tensor([0.9, 0.1]),
                                  eta=0.05, signal="sign")
    torch.testing.assert_close(signed, torch.tensor([1.0, 1.05]), rtol=1e-6, atol=1e-7)
    fused = normalised_fused_confidence(torch.tensor([[math.log(3.0), 0.0, math.log(2.0)]]), torch.tensor([[0, 2]]))
    torch.testing.assert_close(fused, torch.tensor([[0.6, 0.4]]), rtol=1e-6, atol=1e-7)


MAIN = StepInfo(epoch=5, step=0, steps_per_epoch=4, epochs=10)


def test_midas_update_trains_on_aligned_and_kept_misaligned_rows_then_moves_alpha(tiny_bundle):
    method = freeze_steps(build_with(MIDAS, tiny_bundle, lam=2.0))
    method.alpha.copy_(torch.tensor([1.0, 1.2]))
    batch = first_batch(tiny_bundle)
    y = batch["label"]
    torch.manual_seed(7)
    perm = torch.randperm(y.shape[0])
    h, z, z_uni = method.model(method.inputs(batch))
    f1, f2, labels, keep = misaligned_rows(h["audio"], h["visual"], y, perm)
    probs = [torch.softmax(z_uni[m], dim=1).detach() for m in ("audio", "visual")]
    conf = confidence_labels(*probs, labels, perm)
    weight = hard_sample_weights(h["audio"].detach(), h["visual"].detach(), perm)
    z_mis = method.model.head.fused(torch.cat([f1, f2], dim=1))
    per_row = misaligned_loss(z_mis, labels, conf, torch.tensor([1.0, 1.2]), weight)
    loss = (F.cross_entropy(z, y) + sum(F.cross_entropy(v, y) for v in z_uni.values())
            + 2.0 * per_row[keep].mean())
    params = list(method.model.parameters())
    reference = dict(zip(params, torch.autograd.grad(loss, params)))
    fused = normalised_fused_confidence(z_mis, labels)
    expected_alpha = weak_modality_update(torch.tensor([1.0, 1.2]), conf[keep].mean(0), fused[keep].mean(0), 0.05)

    torch.manual_seed(7)
    logs = method.update(batch, MAIN)
    assert 0 < logs["misaligned_kept"] < 1
    for p in params:
        torch.testing.assert_close(p.grad, reference[p], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(method.alpha, expected_alpha, rtol=1e-5, atol=1e-6)
    assert (method.alpha >= 1).all() and (method.alpha == 1).sum() >= 1


def test_midas_warm_up_trains_only_the_unimodal_losses(tiny_bundle):
    method = freeze_steps(build_with(MIDAS, tiny_bundle))
    batch = first_batch(tiny_bundle)
    _, _, z_uni = method.model(method.inputs(batch))
    uni = sum(F.cross_entropy(v, batch["label"]) for v in z_uni.values())
    encoders = list(method.model.encoders.parameters())
    reference = torch.autograd.grad(uni, encoders)
    logs = method.update(batch, StepInfo(epoch=4, step=0, steps_per_epoch=4, epochs=10))
    assert "loss_mis" not in logs
    assert all(p.grad is None for p in method.model.head.fused.parameters())
    for p, g in zip(encoders, reference):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("reset, expected", [("epoch", [1.0, 1.0]), ("never", [1.0, 1.4])])
def test_midas_alpha_restarts_every_epoch_as_in_algorithm_1(tiny_bundle, reset, expected):
    method = build_with(MIDAS, tiny_bundle, alpha_reset=reset)
    method.alpha.copy_(torch.tensor([1.0, 1.4]))
    method.on_epoch_start(6, None)
    assert method.alpha.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)  # float32 buffer
    assert MIDAS.MODALITIES == (2,) and MIDAS.DATA_PARALLEL == "approximate"


def test_midas_ablations_switch_the_weights_off(tiny_bundle):
    method = freeze_steps(build_with(MIDAS, tiny_bundle, weak_modality=False, hard_sample=False))
    batch = first_batch(tiny_bundle)
    y = batch["label"]
    torch.manual_seed(3)
    perm = torch.randperm(y.shape[0])
    with torch.no_grad():
        h, _, z_uni = method.model(method.inputs(batch))
        f1, f2, labels, keep = misaligned_rows(h["audio"], h["visual"], y, perm)
        conf = confidence_labels(*[torch.softmax(z_uni[m], dim=1) for m in ("audio", "visual")], labels, perm)
        z_mis = method.model.head.fused(torch.cat([f1, f2], dim=1))
        unweighted = misaligned_loss(z_mis, labels, conf, torch.ones(2), torch.ones(len(keep)))[keep].mean()
    torch.manual_seed(3)
    logs = method.update(batch, MAIN)
    assert logs["loss_mis"] == pytest.approx(unweighted.item(), rel=1e-5)
    assert method.alpha.tolist() == [1.0, 1.0]
    params = {p.name: p for p in MIDAS.HPARAMS}
    assert params["lam"].default_for("kinetics_sounds") == 5.0 and params["lam"].default_for("cremad") == 1.0
    # Algorithm 1 line 9 restarts alpha every epoch; §3.4's text gives the plain difference as the update signal.
    assert params["alpha_reset"].default == "epoch" and params["update_signal"].default == "difference"



def test_midas_predicts_the_fused_classifier_and_each_unimodal_classifier(tiny_bundle):
    # Prediction is g_f(f) on the aligned features; the per-modality outputs are the unimodal classifiers' logits.
    method = build_with(MIDAS, tiny_bundle)
    batch = first_batch(tiny_bundle)
    with torch.no_grad():
        h, _, _ = method.model(method.inputs(batch))
        fused = method.model.head.fused(torch.cat([h["audio"], h["visual"]], dim=1))
        uni = {m: method.model.head.uni[m](h[m]) for m in ("audio", "visual")}
    pred = method.predict(batch)
    torch.testing.assert_close(pred.fused, fused, rtol=1e-5, atol=1e-6)
    assert set(pred.per_modality) == {"audio", "visual"}
    for m in ("audio", "visual"):
        torch.testing.assert_close(pred.per_modality[m], uni[m], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(pred.per_modality[m], fused, rtol=1e-3, atol=1e-4)


# --- shipped recipes ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, expected, data", [
    # ARL's CramedDataset: OGM-GE's 3 s front-end, --fps 1, the first frame; IPRM's: AUG's 20 s, two random frames.
    (ARL, {"lr": 1e-3, "epochs": 100, "lr_milestones": [69, 149]},
     {"recipe": "ogm", "frames": 1, "frame_rule": "first_k"}),
    (IPRM, {"lr": 1e-2, "epochs": 100, "lr_milestones": [70]},
     {"recipe": "aug", "frames": 2, "frame_rule": "random_k"}),
    (MIDAS, {"lr": 1e-3, "epochs": 70, "lr_milestones": [50]}, None)])
def test_recipe_configs_resolve_against_the_declared_knobs(cls, expected, data):
    head, sections = load_config_file(CONFIGS / cls.name / "cremad.yaml")
    assert head == {"method": cls.name, "dataset": "cremad"}
    assert set(sections) == {"train", cls.name} | ({"data"} if data else set())
    if data:
        served = build_config(cls.name, "cremad", sections).data
        assert {k: served[k] for k in data} == data
    train = resolve("train", TRAIN_HPARAMS, "cremad", sections["train"])
    assert {k: train[k] for k in expected} == expected
    assert (train.batch_size, train.momentum, train.weight_decay) == (64, 0.9, 1e-4)
    hp = resolve(cls.name, method_hparams(cls), "cremad", sections[cls.name], variants=cls.VARIANTS)
    assert hp.as_dict() == resolve(cls.name, method_hparams(cls), "cremad", {}, variants=cls.VARIANTS).as_dict(), \
        "the recipe restates the CREMA-D defaults"
