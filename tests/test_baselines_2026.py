"""Crafted-tensor checks for DGL (ICCV 2025) and MNL (NeurIPS 2025): each test pins the method's characteristic
computation on hand-computed values or against an autograd reference of the stated rule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from baselines.base import StepInfo
from baselines.dgl import DGL
from baselines.mnl import MNL, guidance_masks, negative_learning_term
from tests.conftest import build_with, first_batch, first_batch64, freeze_steps
from tests.numeric import assert_float32_logits

STEP = StepInfo(epoch=0, step=0, steps_per_epoch=4, epochs=10)


# --- DGL ----------------------------------------------------------------------------------------------------------
def dgl_reference_grads(method, batch, alpha):
    """Encoders: autograd of alpha * sum_m CE(z_m); classifier: autograd of CE(z) on the (fixed) features."""
    h = method.model.features(method.inputs(batch))
    y = batch["label"]
    head = method.model.head
    z_uni = [head({n: v if n == m else torch.zeros_like(v) for n, v in h.items()})[0] for m in h]
    enc = [p for m in h for p in method.model.encoders[m].parameters()]
    g_enc = torch.autograd.grad(alpha * sum(F.cross_entropy(v, y) for v in z_uni), enc)
    z = head({m: v.detach() for m, v in h.items()})[0]
    heads = list(head.parameters())
    g_head = torch.autograd.grad(F.cross_entropy(z, y), heads)
    return dict(zip(enc + heads, g_enc + g_head))


def test_dgl_encoders_learn_only_from_unimodal_losses_and_the_head_only_from_the_fused_loss(tiny_bundle):
    method = freeze_steps(build_with(DGL, tiny_bundle, clip_norm=0.0, alpha=3.0))
    batch = first_batch(tiny_bundle)
    reference = dgl_reference_grads(method, batch, alpha=3.0)
    method.update(batch, STEP)
    params = list(method.model.parameters())
    assert set(params) == set(reference)
    for p in params:
        torch.testing.assert_close(p.grad, reference[p], rtol=1e-4, atol=1e-6)


def test_dgl_unimodal_logits_keep_the_full_bias_and_the_fused_logits_carry_no_encoder_gradient(tiny_bundle):
    method = build_with(DGL, tiny_bundle)
    with torch.no_grad():  # the init zeroes the bias, and b/2 == b at zero
        method.model.head.fc.bias.copy_(torch.linspace(-1.0, 1.0, method.model.head.fc.bias.numel()))
    batch = first_batch(tiny_bundle)
    z, z_uni = method.forward_all(batch)
    h = method.model.features(method.inputs(batch))
    fc, (a, b) = method.model.head.fc, method.model.head.bounds["visual"]
    torch.testing.assert_close(z_uni["visual"], h["visual"] @ fc.weight[:, a:b].t() + fc.bias, rtol=1e-5, atol=1e-6)
    enc = list(method.model.encoders["audio"].parameters())
    assert all(g is None for g in torch.autograd.grad(z.sum(), enc, allow_unused=True))


def test_dgl_clips_the_global_gradient_norm(tiny_bundle):
    method = freeze_steps(build_with(DGL, tiny_bundle, clip_norm=1e-3))
    method.update(first_batch(tiny_bundle), STEP)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in method.model.parameters()]))
    assert norm.item() == pytest.approx(1e-3, rel=1e-4)


def test_dgl_keeps_float64_losses(tiny_bundle):
    method = build_with(DGL, tiny_bundle).double()
    batch = first_batch64(tiny_bundle)
    z, z_uni = method.forward_all(batch)
    assert z.dtype == torch.float64 and all(v.dtype == torch.float64 for v in z_uni.values())


def test_dgl_logs_the_fused_and_unimodal_losses_and_their_weighted_total(tiny_bundle):
    method = freeze_steps(build_with(DGL, tiny_bundle, alpha=3.0))
    batch = first_batch(tiny_bundle)
    y = batch["label"]
    with torch.no_grad():
        z, z_uni = method.forward_all(batch)
    expected = {"loss_fused": F.cross_entropy(z, y).item(),
                **{f"loss_{m}": F.cross_entropy(v, y).item() for m, v in z_uni.items()}}
    logs = method.update(batch, STEP)
    assert set(logs) == {"loss", *expected}
    for key, value in expected.items():
        assert logs[key] == pytest.approx(value, rel=1e-6)
    total = expected["loss_fused"] + 3.0 * (expected["loss_audio"] + expected["loss_visual"])
    assert logs["loss"] == pytest.approx(total, rel=1e-6)


def test_dgl_predict_is_the_concat_head_on_both_features_and_the_zero_masked_unimodal_logits(tiny_bundle):
    method = build_with(DGL, tiny_bundle)
    with torch.no_grad():   # a non-zero bias, so that a per-modality logit that drops or halves it shows
        method.model.head.fc.bias.copy_(torch.linspace(-1.0, 1.0, method.model.head.fc.bias.numel()))
    method.eval()
    batch = first_batch(tiny_bundle)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    pred = method.predict(batch)
    with torch.no_grad():
        h, z, _ = method.model(method.inputs(batch))
        fc = method.model.head.fc
    torch.testing.assert_close(pred.fused, z, rtol=0, atol=0)
    for m, (a, b) in method.model.head.bounds.items():
        torch.testing.assert_close(pred.per_modality[m], h[m] @ fc.weight[:, a:b].t() + fc.bias, rtol=1e-5, atol=1e-6)
    assert set(pred.per_modality) == {"audio", "visual"}
    assert all(torch.equal(v, before[k]) for k, v in method.state_dict().items())


# --- MNL ----------------------------------------------------------------------------------------------------------
def test_mnl_guidance_goes_from_the_modality_with_the_larger_margin_and_confidence():
    y = torch.tensor([0, 2, 0])
    z = torch.tensor([[0.0, 2.0, 1.0], [0.0, 1.0, 3.0], [0.0, 1.0, 0.0]])  # strongest non-target class: 1, 1, 1
    z_a = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 0.5], [1.0, 0.0, -5.0]])
    z_b = torch.tensor([[1.0, 0.0, 3.0], [0.0, 0.0, 2.0], [0.5, -3.0, 0.4]])
    # Row 0: xi_a = 2 > xi_b = 1 and p_a[y] > p_b[y]; row 1: xi_a = -0.5 < xi_b = 2 and p_a[y] < p_b[y]; row 2:
    # xi_a = 1 < xi_b = 3.5 but p_a[y] = 0.73 > p_b[y] = 0.52: the criteria disagree, nobody is guided.
    a_guides_b, b_guides_a = guidance_masks(z_a, z_b, z, y)
    assert a_guides_b.tolist() == [True, False, False] and b_guides_a.tolist() == [False, True, False]


def test_mnl_negative_term_adds_the_guides_non_target_probabilities_as_a_soft_target():
    y, mask = torch.tensor([0]), torch.tensor([True])
    z_weak, z_guide = torch.zeros(1, 2), torch.tensor([[0.0, math.log(3.0)]])  # guide p = (1/4, 3/4)
    # -[1 * log(1/2) + 0.7 * 3/4 * log(1/2)], averaged over B x C = 2 entries.
    expected = math.log(2.0) * (1 + 0.7 * 0.75) / 2
    assert negative_learning_term(z_weak, z_guide, y, mask, 0.7).item() == pytest.approx(expected, rel=1e-6)
    assert negative_learning_term(z_weak, z_guide, y, ~mask, 0.7).item() == 0.0
    z_weak.requires_grad_(True)
    z_guide.requires_grad_(True)
    negative_learning_term(z_weak, z_guide, y, mask, 0.7).backward()
    assert z_guide.grad is None, "the guide's probabilities are a detached target"
    # d/dz_weak of -(t . log softmax z_weak) / 2 = (sum(t) softmax(z_weak) - t) / 2 with t = (1, 0.525).
    torch.testing.assert_close(z_weak.grad, torch.tensor([[1.525 / 2 - 1, 1.525 / 2 - 0.525]]) / 2, rtol=1e-6,
                               atol=1e-7)


def mnl_reference_loss(z_t, z_v, y, weight):
    """The released model_forward's train branch written out (first modality = its txt, second = its img)."""
    out = 0.5 * z_t + 0.5 * z_v
    rows = torch.arange(y.shape[0])
    label = F.one_hot(y, z_t.shape[1])
    prob_out_masked = F.softmax(out, dim=1).clone()
    prob_out_masked[rows, y] = -1
    j = prob_out_masked.max(dim=1)[1]
    xi_t, xi_v = z_t[rows, y] - z_t[rows, j], z_v[rows, y] - z_v[rows, j]
    pt, pv = F.softmax(z_t, dim=1)[rows, y], F.softmax(z_v, dim=1)[rows, y]
    loss = F.cross_entropy(z_t, y) + F.cross_entropy(z_v, y) + F.cross_entropy(out, y)
    for weak, guide, m in ((z_v, z_t, (xi_t > xi_v) & (pt > pv)), (z_t, z_v, (xi_t <= xi_v) & (pt <= pv))):
        if m.any():
            m = m.float().unsqueeze(1)
            ls, ps = weak.log_softmax(1), guide.detach().softmax(1)
            loss = loss + torch.mean(-(label * ls * m) - weight * (ps * ls * m) + weight * (label * ps * ls * m))
    return loss


def test_mnl_update_gradients_equal_the_released_loss(tiny_bundle):
    method = freeze_steps(build_with(MNL, tiny_bundle, weight=0.7))
    batch = first_batch(tiny_bundle)
    z, z_uni = method.forward_all(batch)
    torch.testing.assert_close(z, (z_uni["audio"] + z_uni["visual"]) / 2, rtol=0, atol=0)
    params = list(method.model.parameters())
    reference = torch.autograd.grad(mnl_reference_loss(z_uni["audio"], z_uni["visual"], batch["label"], 0.7), params,
                                    allow_unused=True)
    logs = method.update(batch, STEP)
    assert logs["guided_audio"] + logs["guided_visual"] <= 1.0
    for p, g in zip(params, reference):
        torch.testing.assert_close(p.grad, g if g is not None else torch.zeros_like(p), rtol=1e-4, atol=1e-6)


def test_mnl_keeps_float64_logits(tiny_bundle):
    method = build_with(MNL, tiny_bundle).double()
    batch = first_batch64(tiny_bundle)
    z, z_uni = method.forward_all(batch)
    assert z.dtype == torch.float64 and all(v.dtype == torch.float64 for v in z_uni.values())


# --- MNL: ties, the weight knob, the logs and predict (mutation audit) ------------------------------------------------
def test_mnl_ties_go_to_the_second_modality_and_a_split_criterion_guides_nobody():
    # The released rule: the first modality guides where xi_a > xi_b and p_a[y] > p_b[y] (both strict), the second
    # where xi_a <= xi_b and p_a[y] <= p_b[y] (both inclusive). Label 0 everywhere; the fused z makes j = 1 in all rows.
    y = torch.zeros(5, dtype=torch.long)
    z = torch.tensor([[0.0, 1.0, -1.0]]).repeat(5, 1)
    z_a = torch.tensor([[1.0, 0.0, 0.0],        # row 0: z_a == z_b, margins and confidences tie
                        [1.0, 0.0, -50.0],      # row 1: margins tie (1 = 1), p_a[y] > p_b[y]
                        [0.0, -200.0, -100.0],  # row 2: p[y] == 1 on both sides, xi_a = 200 > xi_b = 100
                        [1.0, 0.0, 0.5],        # row 3: margins tie, p_a[y] < p_b[y]
                        [0.0, -100.0, -200.0]])  # row 4: p[y] == 1 on both sides, xi_a = 100 < xi_b = 200
    z_b = torch.tensor([[1.0, 0.0, 0.0],
                        [1.0, 0.0, 0.5],
                        [0.0, -100.0, -200.0],
                        [1.0, 0.0, -50.0],
                        [0.0, -200.0, -100.0]])
    a_guides_b, b_guides_a = guidance_masks(z_a, z_b, z, y)
    assert a_guides_b.tolist() == [False] * 5
    assert b_guides_a.tolist() == [True, False, False, True, True]


def test_mnl_update_takes_the_weight_knob_and_logs_the_losses_and_guided_shares(tiny_bundle):
    weight = 0.3   # not the default, so that a hard-coded 0.7 shows
    torch.manual_seed(0)   # an init whose batch guides unequal shares both ways, whatever ran before
    method = freeze_steps(build_with(MNL, tiny_bundle, weight=weight))
    batch = first_batch(tiny_bundle)
    y = batch["label"]
    z, z_uni = method.forward_all(batch)
    a_guides_b, b_guides_a = guidance_masks(z_uni["audio"], z_uni["visual"], z, y)
    assert a_guides_b.any() and b_guides_a.any(), "the batch must guide both ways for this test to see a swap"
    ce = (F.cross_entropy(z, y) + F.cross_entropy(z_uni["audio"], y) + F.cross_entropy(z_uni["visual"], y)).item()
    reference = mnl_reference_loss(z_uni["audio"], z_uni["visual"], y, weight)
    params = list(method.model.parameters())
    grads = torch.autograd.grad(reference, params, allow_unused=True)
    logs = method.update(batch, STEP)
    assert logs["loss"] == pytest.approx(reference.item(), rel=1e-6)
    assert logs["loss_negative"] == pytest.approx(reference.item() - ce, rel=1e-5)
    # guided_<m>: the share of the batch in which modality m is the weak (guided) one.
    assert logs["guided_visual"] == a_guides_b.float().mean().item()
    assert logs["guided_audio"] == b_guides_a.float().mean().item()
    assert logs["guided_visual"] != logs["guided_audio"], "equal shares could not tell the names apart"
    for p, g in zip(params, grads):
        torch.testing.assert_close(p.grad, g if g is not None else torch.zeros_like(p), rtol=1e-4, atol=1e-6)


def test_mnl_predict_is_the_mean_of_the_unimodal_logits_and_leaves_the_model_alone(tiny_bundle):
    method = build_with(MNL, tiny_bundle)
    method.eval()
    batch = first_batch(tiny_bundle)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    pred = method.predict(batch)
    _, _, z_uni = method.model(method.inputs(batch))
    for m in ("audio", "visual"):
        torch.testing.assert_close(pred.per_modality[m], z_uni[m], rtol=0, atol=0)
    torch.testing.assert_close(pred.fused, (z_uni["audio"] + z_uni["visual"]) / 2, rtol=0, atol=0)
    assert all(torch.equal(v, before[k]) for k, v in method.state_dict().items())


# --- the released defaults (mutation audit) --------------------------------------------------------------------------
def test_defaults_are_the_released_codes(tiny_bundle):
    # The parity cases pin their own values, so a drifted default would show nowhere else: DGL cramed_dgl.sh --alpha 4
    # and main_dgl.py clip_grad_norm_(max_norm=40); MNL --weight1 0.7.
    dgl = build_with(DGL, tiny_bundle).hp
    assert (dgl.alpha, dgl.clip_norm) == (4.0, 40.0)
    assert build_with(MNL, tiny_bundle).hp.weight == 0.7


# --- bf16 autocast: the losses see float32 logits (mutation audit) ----------------------------------------------------
@pytest.mark.parametrize("cls", [DGL, MNL], ids=["dgl", "mnl"])
def test_bf16_autocast_logits_reach_the_losses_and_predictions_in_float32(cls, tiny_bundle):
    method = build_with(cls, tiny_bundle)
    method.ctx.amp = True   # the CPU takes the bf16 autocast branch a GPU run takes
    batch = first_batch(tiny_bundle)
    assert_float32_logits(*method.forward_all(batch))
    pred = method.predict(batch)
    assert_float32_logits(pred.fused, pred.per_modality)
    assert math.isfinite(method.update(batch, STEP)["loss"])
