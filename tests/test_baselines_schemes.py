"""Learning-scheme baselines on crafted tensors: MLA, ReconBoost, G-Blending, Greedy and MSES (docs/methods/mla.md,
reconboost.md, gblending.md, greedy.md, mses-mslr.md#mses)."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines import gblending
from baselines.base import Loaders, StepInfo
from baselines.gblending import FUSED, blend_weight, blending_weights, rebatch
from baselines.greedy import MMTM, GreedyNet, bdr_gap, curation_target, speed_ratio
from baselines.mla import entropy_gate, owm_update
from baselines.mses import should_stop, smoothed_loss
from baselines.networks import MODEL_HPARAMS
from baselines.reconboost import ensemble_members, ga_term, reconciled_loss, stage_at
from baselines.registry import get_method
from benchmarks.config import method_hparams
from core.data import ModalitySpec, TaskSpec
from core.hparams import resolve
from datasets.registry import get_dataset
from tests.conftest import TINY_DATA, TINY_MODEL, first_batch, first_batch64, float64_default, make_context
from tests.numeric import approx, approx64, close, tol


def build(name, bundle, **overrides):
    cls = get_method(name)
    hp = resolve(name, method_hparams(cls), bundle.task.dataset, overrides, variants=cls.VARIANTS)
    torch.manual_seed(0)
    return cls(bundle.task, hp, make_context())


def step(epoch=0, i=0):
    return StepInfo(epoch=epoch, step=i, steps_per_epoch=4, epochs=10)


def loaders_for(bundle, val=True, test=True):
    return Loaders(bundle.loader("train", batch_size=16, train=True, seed=0),
                   bundle.loader("val", batch_size=32, train=False, seed=0) if val else None,
                   bundle.loader("test", batch_size=32, train=False, seed=0) if test else None)


def params_of(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


# --- MLA -----------------------------------------------------------------------------------------------------------

def test_owm_update_on_crafted_r():
    P = torch.eye(3)
    r = torch.tensor([[1.0, 0.0, 0.0]])
    expected = torch.diag(torch.tensor([1 - 1 / 1.1, 1.0, 1.0]))
    close(owm_update(P, r, a=0.1), expected / expected.norm())
    # A general r: k = P r^T, P - k k^T / (a + r k), Frobenius-normalised.
    P = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    r = torch.tensor([[1.0, 2.0]])
    k = P @ r.t()
    raw = P - k @ k.t() / (0.01 + (r @ k).item())
    close(owm_update(P, r, a=0.01), raw / raw.norm())
    # BB / official form: k k^T divided elementwise by a + k r, the (d, d) outer product k r = [[3, 6], [2.5, 5]].
    raw = torch.tensor([[2 - 9 / 3.01, 0.5 - 7.5 / 6.01], [0.5 - 7.5 / 2.51, 1 - 6.25 / 5.01]])
    close(owm_update(P, r, a=0.01, form="bb"), raw / raw.norm())


def test_mla_projection_changes_the_head_gradient_and_is_identity_when_disabled(tiny_bundle):
    feats = torch.randn(8, 32)
    grad = torch.randn(4, 32)
    for projection, expect_change in ((True, True), (False, False)):
        mla = build("mla", tiny_bundle, projection=projection)
        mla.turns.fill_(1)
        mla.head.weight.grad = grad.clone()
        mla.head.bias.grad = torch.ones(4)
        mla.project_head_grad(feats, a=0.1)
        if expect_change:
            P = owm_update(torch.eye(32), feats.mean(0, keepdim=True), 0.1)
            close(mla.P, P)
            close(mla.head.weight.grad, grad @ P.t())
            assert not torch.allclose(mla.head.weight.grad, grad, **tol(torch.float32))
        else:
            close(mla.head.weight.grad, grad)
            close(mla.P, torch.eye(32))
        close(mla.head.bias.grad, torch.ones(4))
    # The very first turn of training is never projected.
    mla = build("mla", tiny_bundle)
    mla.head.weight.grad = grad.clone()
    mla.project_head_grad(feats, a=0.1)
    close(mla.head.weight.grad, grad)


def test_mla_bb_projection_adds_the_gradient_times_the_transposed_projector(tiny_bundle):
    # BB's form: grad += grad P^T with the outer-product denominator. From a P that is no longer symmetric (as after
    # two BB updates: the elementwise division by k r breaks the symmetry) P^T and P differ.
    torch.manual_seed(1)
    feats = torch.randn(8, 32)
    grad = torch.randn(4, 32)
    start = torch.eye(32) + 0.05 * torch.randn(32, 32)
    mla = build("mla", tiny_bundle, projection_form="bb")
    mla.P.copy_(start)
    mla.turns.fill_(1)
    mla.head.weight.grad = grad.clone()
    mla.project_head_grad(feats, a=0.1)
    P = owm_update(start, feats.mean(0, keepdim=True), 0.1, "bb")
    close(mla.P, P)
    close(mla.head.weight.grad, grad + grad @ P.t())
    assert not torch.allclose(grad @ P.t(), grad @ P, **tol(torch.float32)), "the crafted P is not symmetric"


def test_mla_projection_regulariser_is_a_tenth_to_the_power_one_plus_the_epoch_fraction(tiny_bundle, monkeypatch):
    # a = 0.1^(1 + batch_idx / len(loader)) (GSPlugin.before_update): step 2 of 4 gives 0.1^1.5. The first turn of
    # training is not projected, so only the visual turn updates P.
    from baselines import mla as mla_module

    seen = []
    original = mla_module.owm_update

    def record(P, r, a, form="paper"):
        seen.append(a)
        return original(P, r, a, form)

    monkeypatch.setattr(mla_module, "owm_update", record)
    mla = build("mla", tiny_bundle)
    mla.update(first_batch(tiny_bundle), step(i=2))
    assert seen == [approx64(0.1 ** 1.5)]
    mla.update(first_batch(tiny_bundle), step(epoch=3, i=0))
    assert seen[1:] == [approx64(0.1), approx64(0.1)]


def test_mla_fixed_fusion_uses_the_official_training_weight_0_55(tiny_bundle):
    # Official main.py: `if __name__ == "__main__": main(av_alpha = 0.55)`; valid() fuses 0.55 z_a + 0.45 z_v.
    mla = build("mla", tiny_bundle, fusion="fixed")
    mla.eval()
    batch = first_batch(tiny_bundle)
    pred = mla.predict(batch)
    close(pred.fused, 0.55 * pred.per_modality["audio"] + 0.45 * pred.per_modality["visual"])



def test_mla_update_projects_each_turns_head_gradient_with_that_turns_features_before_its_step(tiny_bundle):
    # Official train_epoch (--gs_flag): backward, GSPlugin.before_update(head, features of this modality), step. The
    # first turn of training is not projected; the visual turn's P is built from the visual features.
    mla = build("mla", tiny_bundle)
    batch = first_batch(tiny_bundle)
    h = {m: mla.encoders[m](batch[m]) for m in mla.modalities}
    raw = {m: torch.autograd.grad(F.cross_entropy(mla.head(h[m]), batch["label"]), mla.head.weight)[0]
           for m in mla.modalities}
    seen = []
    mla.optimizer.step = lambda: seen.append(mla.head.weight.grad.clone())
    logs = mla.update(batch, step(i=0))
    audio, visual = mla.modalities
    P = owm_update(torch.eye(h[visual].shape[1]), h[visual].detach().mean(0, keepdim=True), a=0.1)
    # Same float32 forward and backward as update's, reduced in another order.
    close(seen[0], raw[audio], rtol=1e-4, atol=1e-7)
    close(mla.P, P, rtol=1e-4, atol=1e-7)
    close(seen[1], raw[visual] @ P.t(), rtol=1e-4, atol=1e-8)
    # The logged loss is the fixed-fusion weighting of the two turns' losses (0.55 / 0.45).
    assert logs["loss"] == approx64(0.55 * logs[f"loss_{audio}"] + 0.45 * logs[f"loss_{visual}"])


def test_mla_fixed_fusion_with_three_modalities_weights_them_in_the_dataset_order():
    cls = get_dataset("synthetic")
    bundle = cls.build(resolve("data", cls.HPARAMS, "synthetic", {**TINY_DATA, "modalities": 3}))
    hp = resolve("mla", method_hparams(get_method("mla")), "synthetic", {"fusion": "fixed"})
    # The text MLP's feature width set to the conv trunks' 8 x width, as the shared head needs.
    ctx = dataclasses.replace(make_context(), model_hp=resolve("model", MODEL_HPARAMS, None,
                                                                {**TINY_MODEL, "feature_dim": 32}))
    mla = get_method("mla")(bundle.task, hp, ctx)
    mla.eval()
    pred = mla.predict(first_batch(bundle))
    z = pred.per_modality
    # Official --a_alpha 0.35, --v_alpha 0.25, --t_alpha 0.4.
    close(pred.fused, 0.35 * z["audio"] + 0.25 * z["visual"] + 0.4 * z["text"])

def test_mla_entropy_gate_per_sample_and_per_batch():
    z_a = torch.tensor([[8.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # sample 0 confident, sample 1 uniform
    z_v = torch.tensor([[0.0, 0.0, 0.0], [0.0, 8.0, 0.0]])
    w = entropy_gate({"audio": z_a, "visual": z_v}, "per_sample")

    def ent(z, dim):
        p = torch.softmax(z, dim=dim)
        return -(p * p.log())

    h_a, h_v = ent(z_a, 1).sum(1), ent(z_v, 1).sum(1)
    close(w["audio"].squeeze(1), 1 / (1 + torch.exp(h_a - h_v)))
    assert w["audio"][0] > 0.7 and w["audio"][1] < 0.3  # |H_a - H_v| <= log 3
    close(w["audio"] + w["visual"], torch.ones(2, 1))
    wb = entropy_gate({"audio": z_a, "visual": z_v}, "per_batch")
    assert wb["audio"].shape == (1, 1)
    expected = 1 / (1 + torch.exp(ent(z_a, 0).sum() - ent(z_v, 0).sum()))
    close(wb["audio"].squeeze(), expected)


def test_mla_zero_filled_gradients_move_the_first_encoder_in_the_second_turn(tiny_bundle):
    batch = first_batch(tiny_bundle)
    after = {}
    for to_none in (True, False):
        mla = build("mla", tiny_bundle, zero_grad_set_to_none=to_none)
        mla.update(batch, step())
        after[to_none] = (params_of(mla.encoders["audio"]), params_of(mla.encoders["visual"]))
        assert all(p.grad is None for p in mla.parameters())
    assert not same(after[True][0], after[False][0]), "official zero-fill: extra momentum/decay step for audio"
    assert same(after[True][1], after[False][1]), "the last modality's encoder is stepped once either way"


def in_float64(fn):
    """Run fn() with float64 as the default dtype (an ``augbench parity`` run)."""
    with float64_default():
        return fn()


def test_mla_step_in_float64_keeps_float64_losses_and_logits(tiny_bundle):
    def run():
        mla = build("mla", tiny_bundle, projection=True)
        batch = first_batch64(tiny_bundle)
        with torch.no_grad():
            first = mla.modalities[0]
            expected = F.cross_entropy(mla.head(mla.encoders[first](batch[first])), batch["label"]).item()
        logs = mla.update(batch, step())
        mla.update(batch, step(i=1))   # the projection runs from the second turn on, in float64
        return expected, logs, mla.predict(batch), mla.P
    expected, logs, pred, P = in_float64(run)
    assert logs[f"loss_{next(iter(pred.per_modality))}"] == expected   # a float32 loss differs at ~1e-8
    assert pred.fused.dtype == torch.float64 and P.dtype == torch.float64


# --- ReconBoost ----------------------------------------------------------------------------------------------------

def test_reconboost_reconciled_loss_weight_on_crafted_logits():
    logits = torch.zeros(2, 4, requires_grad=True)
    labels = torch.tensor([0, 1])
    others = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), 0.0, 0.0]])  # q_y = 1/4 and 1/2
    loss, weight = reconciled_loss(logits, labels, others, w1=5.0, w2=1.0)
    close(weight, torch.tensor([(-5 + 0.25) / 4, (-5 + 0.5) / 4]))
    assert loss.item() == pytest.approx(((-5 + 0.25) / 4 + (-5 + 0.5) / 4) / 2 * math.log(0.25), rel=1e-6)
    loss.backward()
    # d/dz of w log p_y = w (e_y - p): the gradient is a CE gradient scaled by -w.
    expected = torch.stack([weight[0] * (F.one_hot(labels[0], 4) - 0.25),
                            weight[1] * (F.one_hot(labels[1], 4) - 0.25)]) / 2
    close(logits.grad, expected)
    _, weight = reconciled_loss(logits, labels, None, w1=5.0, w2=1.0)
    close(weight, torch.full((2,), -1.0))  # no other learner: official c0, q_y = 1


def test_reconboost_losses_and_learners_stay_in_float64(tiny_bundle):
    logits = torch.tensor([[0.3, -1.1, 2.0], [1.0, 0.1, -0.4]], dtype=torch.float64)
    others = torch.tensor([[1.0, 0.0, 0.5], [-0.2, 0.7, 0.1]], dtype=torch.float64)
    labels = torch.tensor([2, 0])
    loss, _ = reconciled_loss(logits, labels, others, 1.0, 0.5)
    q_y = torch.softmax(others, 1)[[0, 1], labels]
    expected = ((-1.0 + 0.5 * q_y) / 3 * torch.log_softmax(logits, 1)[[0, 1], labels]).mean()
    assert loss.dtype == torch.float64 and loss.item() == expected.item()   # float32 would differ at ~1e-8
    assert ga_term(logits, others, True).dtype == torch.float64
    first = tiny_bundle.task.names[0]
    z = in_float64(lambda: build("reconboost", tiny_bundle).learner(first, first_batch64(tiny_bundle)[first]))
    assert z.dtype == torch.float64


def test_reconboost_ga_partner_second_pass_moves_the_partner_batch_norm_statistics_twice(tiny_bundle):
    def stage1_state(second_pass):
        rb = build("reconboost", tiny_bundle, pretrain=False, modality_epochs=1, correct_epochs=0,
                   ga_partner_second_pass=second_pass)
        rb.train()
        loaders, batch = loaders_for(tiny_bundle), first_batch(tiny_bundle)
        rb.on_epoch_start(0, loaders)
        rb.update(batch, step())
        rb.on_epoch_start(1, loaders)   # stage 1 trains visual; the partner audio is a member
        audio = rb.encoders["audio"]
        before = {n: b.clone() for n, b in audio.named_buffers()}
        logs = rb.update(batch, step(1))
        return rb, before, logs, batch

    rb1, _, logs1, batch = stage1_state(False)
    rb2, before2, logs2, _ = stage1_state(True)
    assert logs1["ga"] == logs2["ga"]   # train-mode outputs use batch statistics: the same logits both times
    with torch.no_grad():
        rb1.encoders["audio"](batch["audio"])   # one more train-mode pass = the official second forward
    means = [n for n, _ in rb2.encoders["audio"].named_buffers() if n.endswith("running_mean")]
    assert means
    for n, b in rb2.encoders["audio"].named_buffers():
        if n in means:
            assert not torch.equal(b, before2[n])
            close(b, dict(rb1.encoders["audio"].named_buffers())[n])


def test_reconboost_pretrain_head_until_stage_keeps_the_visual_classifier_through_stage_0(tiny_bundle):
    rb = build("reconboost", tiny_bundle, pretrain=True, pretrain_epochs=0, modality_epochs=1, correct_epochs=1,
               pretrain_head_until_stage=True)
    audio, visual = tiny_bundle.task.names[:2]
    loaders = loaders_for(tiny_bundle)
    rb.on_epoch_start(1, loaders)   # stage 0, correction: visual still on its own classifier, audio on the shared
    assert rb.head_of(visual) is rb.pretrain_heads[visual] and rb.head_of(audio) is rb.head
    own = params_of(rb.pretrain_heads[visual])
    rb.update(first_batch(tiny_bundle), step(1))
    assert same(own, params_of(rb.pretrain_heads[visual]))   # used in F, left out of the correction optimizer
    rb.on_epoch_start(2, loaders)   # stage 1 trains visual: model.fc = net_ensemble.head
    assert rb.head_of(visual) is rb.head
    default = build("reconboost", tiny_bundle, pretrain=True, pretrain_epochs=0)
    assert default.head_of(visual) is default.head


def test_reconboost_stage_schedule_is_a_function_of_the_epoch():
    pos = [stage_at(e, 4, 4, 2) for e in range(18)]
    assert [(p.stage, p.modality, p.phase, p.phase_epoch) for p in (pos[0], pos[3], pos[4], pos[7], pos[8], pos[16])] \
        == [(0, 0, "modality", 0), (0, 0, "modality", 3), (0, 0, "correct", 0), (0, 0, "correct", 3),
            (1, 1, "modality", 0), (2, 0, "modality", 0)]
    assert [(p.stage, p.modality) for p in (stage_at(e, 1, 0, 3) for e in range(4))] == [(0, 0), (1, 1), (2, 2),
                                                                                        (3, 0)]
    assert ensemble_members(0, 4, 4, 2, pretrained=False) == [False, False]
    assert ensemble_members(4, 4, 4, 2, pretrained=False) == [True, False]
    assert ensemble_members(11, 4, 4, 2, pretrained=False) == [True, False]
    assert ensemble_members(12, 4, 4, 2, pretrained=False) == [True, True]
    assert ensemble_members(0, 4, 4, 2, pretrained=True) == [True, True]


def test_reconboost_phase_optimizers_restart_at_the_start_of_their_phase_only(tiny_bundle):
    rb = build("reconboost", tiny_bundle, pretrain=False)  # 4 modality epochs, then 4 correction epochs per stage
    loaders = loaders_for(tiny_bundle)
    p = next(rb.encoders["audio"].parameters())
    rb.modality_opts[0].state[p]["momentum_buffer"] = torch.ones_like(p)
    rb.on_epoch_start(0, loaders)
    assert p not in rb.modality_opts[0].state, "stage 0's modality phase starts with a fresh optimizer"
    rb.modality_opts[0].state[p]["momentum_buffer"] = torch.ones_like(p)
    rb.correct_opt.state[p]["momentum_buffer"] = torch.ones_like(p)
    for epoch in (1, 2, 3):
        rb.on_epoch_start(epoch, loaders)
        assert p in rb.modality_opts[0].state, f"epoch {epoch} is inside the phase: its momentum carries on"
    rb.on_epoch_start(4, loaders)
    assert p not in rb.correct_opt.state and p in rb.modality_opts[0].state
    rb.correct_opt.state[p]["momentum_buffer"] = torch.ones_like(p)
    rb.on_epoch_start(5, loaders)
    assert p in rb.correct_opt.state


def test_reconboost_ga_term_has_zero_gradient_in_compat_and_flows_with_ga_grad():
    z = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    partner = torch.tensor([[0.0, 1.0, 0.0]], requires_grad=True)
    compat = ga_term(z, partner, flow=False)
    assert compat.item() > 0 and not compat.requires_grad
    flowing = ga_term(z, partner, flow=True)
    assert flowing.item() == approx(compat.item())
    flowing.backward()
    assert z.grad.abs().sum() > 0 and partner.grad is None
    # The MSE is a mean over B x K entries: softmaxes (1/2, 1/2) and (0.9, 0.1) differ by 0.4 in both classes.
    half, peaked = torch.tensor([[0.5, 0.5]]).log(), torch.tensor([[0.9, 0.1]]).log()
    assert ga_term(half, peaked, flow=False).item() == approx(0.16)


def test_reconboost_steps_train_only_their_parameters(tiny_bundle):
    rb = build("reconboost", tiny_bundle, pretrain=False, modality_epochs=1, correct_epochs=1)
    loaders, batch = loaders_for(tiny_bundle), first_batch(tiny_bundle)
    rb.on_epoch_start(0, loaders)
    audio, visual, beta = params_of(rb.encoders["audio"]), params_of(rb.encoders["visual"]), rb.beta.item()
    logs = rb.update(batch, step())
    assert "ga" not in logs and not same(audio, params_of(rb.encoders["audio"]))
    assert same(visual, params_of(rb.encoders["visual"])) and rb.beta.item() == beta
    rb.on_epoch_start(1, loaders)  # correction over the ensemble {audio}: beta moves, visual is not a member yet
    assert rb.members.tolist() == [True, False] and not rb.correct_opt.state
    rb.update(batch, step(1))
    assert rb.beta.item() != beta and same(visual, params_of(rb.encoders["visual"]))
    rb.on_epoch_start(2, loaders)  # stage 1 trains visual; the GA term against audio is now logged
    assert rb.position.modality == 1 and "ga" in rb.update(batch, step(2))


def test_reconboost_bb_one_optimizer_carries_momentum_and_steps_the_idle_encoder(tiny_bundle):
    """Variant bb (BB 4c1482f ReconBoost_trainer.py): one optimizer for both steps, never reset; under BB's torch 1.12.1
    zero_grad, the encoder that is not boosting takes the step of a zero gradient: buf <- 0.9 buf + wd p, p <- p - lr
    buf."""
    rb = build("reconboost", tiny_bundle, variant="bb")
    audio, visual = tiny_bundle.task.names[:2]
    assert rb.modality_opts == [rb.shared_opt, rb.shared_opt] and rb.correct_opt is rb.shared_opt
    assert isinstance(rb.head, nn.Linear) and rb.beta.item() == approx(0.01)
    loaders, batch = loaders_for(tiny_bundle), first_batch(tiny_bundle)
    rb.train()
    rb.on_epoch_start(0, loaders)   # BB epoch 0: boosting audio against F_-a = beta f_v (a member from the start)
    assert rb.members.tolist() == [True, True]
    visual0 = params_of(rb.encoders[visual])
    logs = rb.update(batch, step(0))
    assert "ga" not in logs and same(visual0, params_of(rb.encoders[visual])) and rb.beta.item() == approx(0.01)
    rb.on_epoch_start(1, loaders)   # correction: the same optimizer, its momentum kept
    state_before = {p: s["momentum_buffer"].clone() for p, s in rb.shared_opt.state.items()}
    assert rb.head.weight in state_before
    rb.update(batch, step(1))
    assert rb.beta.item() != approx(0.01), "the correction step trains beta in the one optimizer"
    rb.on_epoch_start(2, loaders)   # boosting visual: audio is idle
    assert rb.shared_opt.state, "the phase boundary must not clear the optimizer state"
    group = rb.shared_opt.param_groups[0]
    lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
    idle = {n: (p.detach().clone(), rb.shared_opt.state[p]["momentum_buffer"].clone())
            for n, p in rb.encoders[audio].named_parameters()}
    head_buf = rb.shared_opt.state[rb.head.weight]["momentum_buffer"].clone()
    head_w = rb.head.weight.detach().clone()
    grads = []
    hook = rb.head.weight.register_hook(lambda g: grads.append(g.detach().clone()))
    logs = rb.update(batch, step(2))
    hook.remove()
    assert "ga" not in logs   # BB's epoch 0 has no GA term (ReconBoost_trainer.py l.340)
    for n, p in rb.encoders[audio].named_parameters():
        p0, buf0 = idle[n]
        buf = mu * buf0 + wd * p0
        close(rb.shared_opt.state[p]["momentum_buffer"], buf)
        close(p.detach(), p0 - lr * buf)
    # The head's momentum carried over from the correction step: buf = mu buf_old + (grad + wd w).
    (grad,) = grads
    assert grad.abs().sum() > 0 and head_buf.abs().sum() > 0
    close(rb.shared_opt.state[rb.head.weight]["momentum_buffer"], mu * head_buf + grad + wd * head_w)
    close(rb.head.weight.detach(), head_w - lr * (mu * head_buf + grad + wd * head_w))
    rb.on_epoch_start(4, loaders)   # BB epoch 1: boosting audio with the GA term against visual
    assert "ga" in rb.update(batch, step(4))

    # torch >= 2.0's zero_grad (zero_grads_persist: false): the idle encoder is left alone.
    skip = build("reconboost", tiny_bundle, variant="bb", zero_grads_persist=False)
    skip.train()
    for epoch in range(2):
        skip.on_epoch_start(epoch, loaders)
        skip.update(batch, step(epoch))
    skip.on_epoch_start(2, loaders)
    before = params_of(skip.encoders[audio])
    skip.update(batch, step(2))
    assert same(before, params_of(skip.encoders[audio]))


def test_reconboost_bb_learners_share_one_linear_head_and_predict_beta_times_their_sum(tiny_bundle):
    rb = build("reconboost", tiny_bundle, variant="bb")
    rb.eval()
    batch = first_batch(tiny_bundle)
    rb.on_epoch_start(0, loaders_for(tiny_bundle))
    with torch.no_grad():
        z = {m: F.linear(rb.encoders[m](batch[m]), rb.head.weight, rb.head.bias) for m in tiny_bundle.task.names}
    pred = rb.predict(batch)
    for m, zm in z.items():
        close(pred.per_modality[m], zm)
    close(pred.fused, 0.01 * sum(z.values()))
    assert build("reconboost", tiny_bundle).head[0].out_features == 256   # the paper default keeps the MLP head


# --- G-Blending ----------------------------------------------------------------------------------------------------

def test_gblending_weights_from_given_losses():
    losses = {"audio": (2.0, 1.0, 2.0, 1.5), "visual": (2.0, 1.8, 2.0, 1.9), FUSED: (2.0, 0.5, 2.0, 1.8)}
    assert blend_weight(*losses["audio"]) == approx64(0.5 / 0.5 ** 2)
    assert blend_weight(*losses["visual"]) == approx64(0.1 / 0.1 ** 2)
    raw = {"audio": 2.0, "visual": 10.0, FUSED: 0.2 / 1.3 ** 2}
    w = blending_weights(losses)
    for k, v in raw.items():
        assert w[k] == approx64(v / sum(raw.values()))
    flat = {k: (1.0, 1.0, 1.0, 1.0) for k in losses}
    assert blending_weights(flat) == {k: approx64(1 / 3) for k in losses}


def test_gblending_estimates_on_validation_only_and_leaves_the_model_alone(tiny_bundle):
    gb = build("gblending", tiny_bundle, super_epoch=2, estimate_epochs=2)
    before = params_of(gb.model)
    gb.on_epoch_start(0, loaders_for(tiny_bundle, test=False))
    w = gb.weights()
    assert sum(w.values()) == approx(1.0) and w != {k: approx(1 / 3) for k in w}
    assert same(before, params_of(gb.model)) and not gb.scratch_optimizer.state
    assert "g_audio" in gb.on_epoch_end(0, None)
    assert "g_audio" not in gb.on_epoch_end(1, None)   # logged once, at the epoch that estimated
    gb.blend.fill_(-1.0)
    gb.on_epoch_start(1, loaders_for(tiny_bundle))  # not a super-epoch boundary: no re-estimation
    assert gb.blend.tolist() == [-1.0, -1.0, -1.0]
    with pytest.raises(ValueError, match="held_out_split='val', but dataset 'synthetic' serves no such split"):
        gb.on_epoch_start(2, loaders_for(tiny_bundle, val=False))
    # BB's choice (official_compat): the held-out losses come from the test split, the same estimate otherwise.
    bb = build("gblending", tiny_bundle, super_epoch=2, estimate_epochs=2, variant="official_compat")
    assert (bb.hp.held_out_split, bb.hp.loss_reduction, bb.hp.interval_start) == ("test", "sum", "first_epoch")
    bb.on_epoch_start(0, loaders_for(tiny_bundle, val=False))
    assert sum(bb.weights().values()) == approx(1.0)


@pytest.mark.parametrize("scratch_lr, lr", [("schedule", 0.01 * 0.1), ("base", 0.01)])
def test_gblending_scratch_copies_train_at_the_scheduled_or_bbs_base_lr(tiny_bundle, scratch_lr, lr):
    # BB (balancemm/train.py) gives its temp_optimizer no scheduler and reloads its initial state for every head: the
    # scratch copies keep train.lr (0.01 here) after the main lr decayed, where the runner rescales every optimizer.
    gb = build("gblending", tiny_bundle, super_epoch=2, estimate_epochs=2, scratch_lr=scratch_lr)
    gb.ctx.set_lr_factor(0.1)  # the runner's schedule after one decay, set before on_epoch_start
    seen, scratch_step = [], gb.scratch_optimizer.step

    def record(*args, **kwargs):
        seen.extend(g["lr"] for g in gb.scratch_optimizer.param_groups)
        return scratch_step(*args, **kwargs)

    gb.scratch_optimizer.step = record
    gb.on_epoch_start(0, loaders_for(tiny_bundle))
    assert len(seen) == 3 * 2 * 4 and all(v == approx64(lr) for v in seen)  # 3 heads x 2 epochs x 4 batches
    assert gb.optimizer.param_groups[0]["lr"] == approx64(0.01 * 0.1)  # the main optimizer keeps its schedule


def test_rebatch_recuts_in_order_and_drops_the_remainder():
    batches = [{"label": torch.arange(a, b), "audio": torch.arange(a, b).float()[:, None], "_meta": "x"}
               for a, b in ((0, 5), (5, 8), (8, 14))]
    out = list(rebatch(batches, 4, ("audio", "label")))
    assert [b["label"].tolist() for b in out] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]  # 12, 13 dropped
    assert all(set(b) == {"audio", "label"} and torch.equal(b["audio"][:, 0], b["label"].float()) for b in out)
    assert list(rebatch(batches[:1], 6, ("label",))) == []


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gblending_sum_runs_over_bbs_drop_last_batches(tiny_bundle, reduction):
    # BB's loaders (data_utils.py) serve the test split in batches of the training batch size and drop the last
    # partial batch of both; 64 training rows in batches of 12 leave 4, 16 test rows served in batches of 10 hold one.
    gb = build("gblending", tiny_bundle, super_epoch=2, estimate_epochs=2, held_out_split="test",
               loss_reduction=reduction, interval_start="first_epoch")
    seen = []
    gb._scratch[0].register_forward_pre_hook(lambda module, args: seen.append((module.training, args[0]["audio"])))
    loaders = Loaders(tiny_bundle.loader("train", batch_size=12, train=True, seed=0), None,
                      tiny_bundle.loader("test", batch_size=10, train=False, seed=0))
    gb.on_epoch_start(0, loaders)
    train_rows = [len(a) for training, a in seen if training]
    held_out = [a for training, a in seen if not training]
    if reduction == "sum":
        assert train_rows == [12] * 5 * 2 * 3  # 5 full batches x 2 epochs x 3 heads, the 4-row remainder skipped
        assert len(held_out) == 2 * 3 and all(len(a) == 12 for a in held_out)
        assert torch.equal(held_out[0], first_batch(tiny_bundle, "test", batch_size=12)["audio"])
    else:
        assert train_rows == [12, 12, 12, 12, 12, 4] * 2 * 3
        assert [len(a) for a in held_out] == [10, 6] * 2 * 3


def _mean_ce(gb, model, bundle, split, drop):
    """Fused CE of ``model`` in eval mode over every row of ``split`` with ``drop`` zeroed, averaged over rows."""
    model.eval()
    with torch.no_grad():
        return torch.cat([F.cross_entropy(model(gb.inputs(b), drop=drop)[1], b["label"], reduction="none")
                          for b in bundle.loader(split, batch_size=16, train=False, seed=0)]).mean().item()


@pytest.mark.parametrize("interval_start", ["checkpoint", "first_epoch"])
def test_gblending_measures_its_interval_from_the_checkpoint_or_from_bbs_first_epoch(tiny_bundle, monkeypatch,
                                                                                    interval_start):
    # The paper takes G and O between checkpoints N and N + n: the start losses are the unmodified model's, the
    # training loss included, and the end losses the trained copy's, measured alike. BB starts after the first scratch
    # epoch, with the training loss accumulated during it (a running loss in train mode, which no eval pass gives).
    gb = build("gblending", tiny_bundle, super_epoch=2, estimate_epochs=2, interval_start=interval_start)
    seen = {}
    monkeypatch.setattr(gblending, "blending_weights", lambda losses: seen.update(losses) or {k: 1 / 3 for k in losses})
    start = {k: (_mean_ce(gb, gb.model, tiny_bundle, "train", drop), _mean_ce(gb, gb.model, tiny_bundle, "val", drop))
             for k, drop in (("audio", ["visual"]), ("visual", ["audio"]), (FUSED, []))}
    gb.on_epoch_start(0, loaders_for(tiny_bundle))
    scratch = gb._scratch[0]   # the copy of the last head estimated, the fused one, as its scratch epochs left it
    t0, t1, v0, v1 = seen[FUSED]
    assert v1 == approx(_mean_ce(gb, scratch, tiny_bundle, "val", []))
    for k, (train_ce, val_ce) in start.items():
        if interval_start == "checkpoint":
            assert (seen[k][0], seen[k][2]) == (approx(train_ce), approx(val_ce))
        else:
            assert seen[k][0] != approx(train_ce) and seen[k][2] != approx(val_ce)
    if interval_start == "checkpoint":
        assert t1 == approx(_mean_ce(gb, scratch, tiny_bundle, "train", []))
    else:
        assert t1 != approx(_mean_ce(gb, scratch, tiny_bundle, "train", []))


def test_gblending_step_loss_is_the_weighted_sum_of_head_losses(tiny_bundle):
    gb = build("gblending", tiny_bundle)
    gb.blend.copy_(torch.tensor([0.2, 0.3, 0.5]))
    logs = gb.update(first_batch(tiny_bundle), step())
    expected = 0.2 * logs["loss_audio"] + 0.3 * logs["loss_visual"] + 0.5 * logs["loss_fused"]
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)


def test_gblending_step_gradient_is_that_of_the_blended_split_head_and_fused_losses(tiny_bundle):
    # Written out apart from the method: split-head logits z_m = W[:, slice_m] h_m + b/M. The logged-parts test above
    # passes with any per-head logits (z in place of z_m too); the gradient does not.
    gb = build("gblending", tiny_bundle)
    gb.blend.copy_(torch.tensor([0.2, 0.3, 0.5]))
    batch = first_batch(tiny_bundle)
    reference = copy.deepcopy(gb.model)
    h = {m: reference.encoders[m](batch[m]) for m in gb.modalities}
    w, b = reference.head.fc.weight, reference.head.fc.bias
    z = torch.cat([h[m] for m in gb.modalities], dim=1) @ w.t() + b
    start, per_head = 0, []
    for m in gb.modalities:
        d = h[m].shape[1]
        per_head.append(F.cross_entropy(h[m] @ w[:, start:start + d].t() + b / len(gb.modalities), batch["label"]))
        start += d
    loss = 0.2 * per_head[0] + 0.3 * per_head[1] + 0.5 * F.cross_entropy(z, batch["label"])
    loss.backward()
    logs = gb.update(batch, step())
    assert logs["loss"] == approx(loss.item())
    for (name, got), want in zip(gb.model.named_parameters(), reference.parameters()):
        # through two encoders' backward: a few ulps per layer
        close(got.grad, want.grad, rtol=1e-4, atol=1e-6, msg=name)


# --- Greedy --------------------------------------------------------------------------------------------------------

def test_greedy_speed_bdr_and_curation_decision_from_crafted_norms():
    w1, w2 = nn.Parameter(torch.tensor([3.0, 4.0])), nn.Parameter(torch.zeros(2))
    w1.grad = torch.tensor([1.0, 0.0])  # w2 has no gradient: counts as zero
    assert speed_ratio([w1, w2]).item() == approx(1 / 25)
    d = bdr_gap([1.0, 10.0], [10.0, 10.0])
    assert d == approx(math.log10(0.1) - math.log10(1.0))
    assert curation_target(d, 0.01) == 1  # BDR_0 < BDR_1: care for modality 1
    assert curation_target(0.5, 0.01) == 0
    assert curation_target(0.005, 0.01) is None
    # Curation starts only when |d| exceeds epsilon strictly (official: abs(d) > epsilon).
    assert curation_target(0.01, 0.01) is None and curation_target(-0.01, 0.01) is None
    assert bdr_gap([0.0, 1.0], [1.0, 1.0]) == 0.0


def test_greedy_measure_attributes_shared_squeeze_to_both_bypasses(tiny_bundle):
    gr = build("greedy", tiny_bundle)
    z, _ = gr.net(gr.inputs(first_batch(tiny_bundle)))
    F.cross_entropy(z, first_batch(tiny_bundle)["label"]).backward()
    squeeze = [p for b in gr.net.mmtm.values() for p in b.squeeze.parameters()]

    def ratio(params):
        return (sum(p.grad.pow(2).sum() for p in params) / sum(p.pow(2).sum() for p in params)).detach()

    expected = [ratio(squeeze + [p for b in gr.net.mmtm.values() for p in b.excite[m].parameters()])
                for m in gr.modalities]
    expected += [ratio(list(gr.net.trunks[m].parameters())) for m in gr.modalities]
    d = gr.measure()
    # speed_ratio computes in the parameters' float32 and the cumulative sums are float64: compare in float32. The
    # expected ratios sum the same float32 terms in another order, so each may differ by a few float32 ulps.
    close(gr.speeds, torch.stack(expected), dtype=torch.float32)
    # d is a difference of log10s of four such ratios: its error is absolute, about 4 x rtol / ln 10.
    e = [float(v) for v in expected]
    expected_d = math.log10(e[0] / e[2]) - math.log10(e[1] / e[3])
    assert d == pytest.approx(expected_d, rel=0, abs=4 * tol(torch.float32)["rtol"] / math.log(10))


def test_greedy_curation_mode_follows_the_official_state_machine(tiny_bundle):
    gr = build("greedy", tiny_bundle, window=2, starting_epoch=1)
    gaps = iter([-1.0, -1.0, 0.5, 0.0])
    gr.measure = lambda: next(gaps)
    gr.after_backward(epoch=0)  # before starting_epoch: measured, never curated
    assert not gr.curating
    gr.after_backward(epoch=1)  # d < -eps: care for modality 1
    assert gr.curating and gr.caring.item() == 1
    gr.after_backward(epoch=1)  # inside the window: no measurement
    assert gr.curating
    gr.after_backward(epoch=1)  # window of 2 steps done
    assert not gr.curating
    gr.after_backward(epoch=1)  # d = 0.5 > eps: care for modality 0
    assert gr.curating and gr.caring.item() == 0
    assert next(gaps) == 0.0



def test_greedy_resumes_mid_curation_with_the_steps_left_in_its_window(tiny_bundle):
    # A run killed inside a curation window resumes with the window's remaining steps, not a fresh window.
    gr = build("greedy", tiny_bundle, window=3)
    gr.measure = lambda: 1.0
    for _ in range(3):  # enter curation, then two of its three steps
        gr.after_backward(epoch=1)
    resumed = build("greedy", tiny_bundle, window=3)
    resumed.load_checkpoint_state(gr.checkpoint_state())
    assert resumed.curating and resumed.caring.item() == 0
    resumed.after_backward(epoch=1)
    assert not resumed.curating, "the third step of the window ends it"

def test_greedy_curation_starts_in_the_second_epoch_by_default(tiny_bundle):
    # The official callback's starting_epoch=2 counts epochs from 1 (src/framework.py Model.train_loop).
    gr = build("greedy", tiny_bundle)
    gr.measure = lambda: 1.0
    gr.after_backward(epoch=0)
    assert not gr.curating
    gr.after_backward(epoch=1)
    assert gr.curating and gr.caring.item() == 0



@pytest.mark.parametrize("caring, care", [(0, "audio"), (1, "visual")])
def test_greedy_update_in_curation_trains_with_the_cared_for_modalitys_running_average_gates(tiny_bundle, caring,
                                                                                             care):
    gr = build("greedy", tiny_bundle)
    gr.train()
    batch = first_batch(tiny_bundle)
    gr.update(batch, step())  # one step outside curation, so the running averages are not the initial zeros
    gr.curating.fill_(True)
    gr.caring.fill_(caring)
    twin = copy.deepcopy(gr.net)
    with torch.no_grad():
        cared = F.cross_entropy(twin(gr.inputs(batch), care)[0], batch["label"]).item()
        live = F.cross_entropy(copy.deepcopy(gr.net)(gr.inputs(batch))[0], batch["label"]).item()
    logs = gr.update(batch, step())
    assert logs["curating"] == 1.0
    assert logs["loss"] == approx(cared)
    assert abs(cared - live) > 1e-4, "the running averages must change the output here"
    gr.curating.fill_(False)
    assert gr.update(batch, step())["curating"] == 0.0

def test_greedy_speeds_and_running_averages_stay_float64():
    # A float32 cast here moved float64 parity runs by ~1e-8.
    w = nn.Parameter(torch.tensor([1 / 3, 2 / 7], dtype=torch.float64))
    w.grad = torch.tensor([1 / 11, 0.0], dtype=torch.float64)
    r = speed_ratio([w])
    assert r.dtype == torch.float64 and r.item() == (1 / 11) ** 2 / ((1 / 3) ** 2 + (2 / 7) ** 2)
    torch.manual_seed(0)
    block = MMTM({"audio": 4, "visual": 4}, ratio=4).double()
    x = {"audio": torch.randn(3, 4, dtype=torch.float64), "visual": torch.randn(3, 4, dtype=torch.float64)}
    gates = block(x)
    assert torch.equal(block.avg_visual, gates["visual"].detach().mean(0))


def test_greedy_mmtm_running_average_replaces_the_cared_for_gate():
    torch.manual_seed(0)
    block = MMTM({"audio": 4, "visual": 4}, ratio=4)
    inputs = [{"audio": torch.randn(3, 4), "visual": torch.randn(3, 4)} for _ in range(2)]
    gates = [block(x) for x in inputs]
    close(block.avg_visual, (gates[0]["visual"].mean(0) + gates[1]["visual"].mean(0)) / 2)
    block.eval()
    cared = block(inputs[0], care="visual")
    assert block.steps.item() == 2  # evaluation does not move the running averages
    close(cared["visual"], block.avg_visual.expand(3, 4))
    close(cared["audio"], gates[0]["audio"])


def test_greedy_net_pools_frames_per_clip():
    task = TaskSpec("t", 3, (ModalitySpec("audio", "spectrogram", (1, 16, 16)),
                             ModalitySpec("visual", "frames", (3, 2, 16, 16))))
    model_hp = resolve("model", MODEL_HPARAMS, None, TINY_MODEL)
    net = GreedyNet(task, model_hp, ratio=4)
    z, z_uni = net({"audio": torch.randn(5, 1, 16, 16), "visual": torch.randn(5, 3, 2, 16, 16)})
    assert z.shape == (5, 3) and z_uni["visual"].shape == (5, 3)
    close(z_uni["audio"] + z_uni["visual"], z)


# --- MSES ----------------------------------------------------------------------------------------------------------

def test_mses_smoothing_and_stopping_rule():
    assert smoothed_loss(None, 1.0, 0.6) == 1.0
    assert smoothed_loss(1.0, 0.8, 0.6) == approx64(0.92)
    assert not should_stop(82, 2, 80) and should_stop(83, 2, 80)


def test_mses_stops_a_modality_on_a_crafted_history_and_reloads_its_best_epoch(tiny_bundle):
    ms = build("mses", tiny_bundle, patience=2)
    audio = [1.0, 0.8, 0.9, 0.7, 1.2, 1.3, 1.4]  # smoothed: 1.0, .92, .84, .82, .90, 1.24, 1.34 -> best epoch 3
    visual = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    history = iter(zip(audio, visual))
    ms.modality_losses = lambda loaders: list(next(history))
    saved = None
    for epoch in range(7):
        if epoch:
            with torch.no_grad():
                next(ms.model.parameters()).add_(1.0)  # stands in for an epoch of training
        diag = ms.on_epoch_end(epoch, None)
        if epoch == 3:
            saved = params_of(ms.model)
        if epoch < 6:
            assert not ms.stopped.any(), epoch
    assert ms.best_epoch.tolist() == [3, 6] and ms.stopped.tolist() == [True, False]
    assert diag["active_modalities"] == 1.0 and set(ms.snapshots) == {6}
    assert same(saved, params_of(ms.model)), "the full model (both modalities) is rewound to epoch 3"
    seen = {}
    ms.optimizer.step = lambda: seen.update({n: p.grad.clone() for n, p in ms.model.named_parameters()
                                             if p.grad is not None})
    ms.update(first_batch(tiny_bundle), step())
    assert all(g.abs().sum() == 0 for n, g in seen.items() if ".audio" in n)
    assert any(g.abs().sum() > 0 for n, g in seen.items() if ".visual" in n)


@pytest.mark.parametrize("variant, epoch, zeroed", [("paper", 500, True), ("official_compat", 19, True),
                                                    ("official_compat", 20, False)])
def test_mses_stop_applies_inside_the_official_1_based_window(tiny_bundle, variant, epoch, zeroed):
    # AGM re-impl. run/CREMAD_main.py: multipliers only while 0 <= epoch <= 20 on its 1-based epochs (0-based <= 19).
    ms = build("mses", tiny_bundle, variant=variant)
    ms.stopped[0] = True
    seen = {}
    ms.optimizer.step = lambda: seen.update({n: p.grad.clone() for n, p in ms.model.named_parameters()
                                             if p.grad is not None})
    ms.update(first_batch(tiny_bundle), StepInfo(epoch=epoch, step=0, steps_per_epoch=4, epochs=600))
    audio = [g for n, g in seen.items() if ".audio" in n]
    assert audio and all((g.abs().sum() == 0) == zeroed for g in audio)
    assert any(g.abs().sum() > 0 for n, g in seen.items() if ".visual" in n)


@pytest.mark.parametrize("stop_mode, moves", [("zero_grad", True), ("freeze", False)])
def test_mses_stop_mode_decides_whether_weight_decay_still_moves_a_stopped_modality(tiny_bundle, stop_mode, moves):
    # zero_grad (AGM re-impl.): a zero gradient, so SGD's weight decay still shrinks the stopped parameters;
    # freeze: no gradient, so the optimizer skips them.
    ms = build("mses", tiny_bundle, stop_mode=stop_mode)
    assert ms.optimizer.param_groups[0]["weight_decay"] > 0
    ms.stopped[0] = True
    audio = {n: p.detach().clone() for n, p in ms.model.named_parameters() if n.startswith("encoders.audio.")}
    ms.update(first_batch(tiny_bundle), step())
    after = dict(ms.model.named_parameters())
    assert any(not torch.equal(after[n], p) for n, p in audio.items()) == moves


def test_mses_smoothing_is_a_knob(tiny_bundle):
    ms = build("mses", tiny_bundle, smoothing=0.3)
    history = iter([[1.0, 1.0], [0.5, 1.0]])
    ms.modality_losses = lambda loaders: next(history)
    smoothed = [ms.on_epoch_end(epoch, None)["smoothed_ce_audio"] for epoch in range(2)]
    assert smoothed == approx64([1.0, 0.3 * 1.0 + 0.7 * 0.5])


def test_mses_validation_losses_are_taken_in_eval_mode_and_leave_training_on(tiny_bundle):
    ms = build("mses", tiny_bundle)
    batch = first_batch(tiny_bundle, "val")
    reference = copy.deepcopy(ms.model).eval()
    with torch.no_grad():
        _, _, z_uni = reference(ms.inputs(batch))
    expected = [F.cross_entropy(z_uni[m], batch["label"]).item() for m in ms.modalities]
    ms.train()
    stats = {n: b.clone() for n, b in ms.model.named_buffers()}
    raw = ms.modality_losses(Loaders(train=None, val=[batch], test=None))
    assert raw == [approx(v) for v in expected]   # float32 CE, summed in float64 then divided
    assert ms.training and all(torch.equal(b, stats[n]) for n, b in ms.model.named_buffers())


def test_mses_stop_reloads_the_optimizer_state_of_the_best_epoch(tiny_bundle):
    # The full snapshot: SGD's momentum buffers rewind with the parameters.
    ms = build("mses", tiny_bundle, patience=1)
    ms.modality_losses = lambda loaders: [1.0, 1.0]   # best at epoch 0: both stop at epoch 2
    batch = first_batch(tiny_bundle)
    ms.update(batch, step())
    ms.on_epoch_end(0, None)
    saved = {k: v["momentum_buffer"].clone() for k, v in ms.optimizer.state_dict()["state"].items()}
    assert saved
    ms.update(batch, step(epoch=1))
    ms.on_epoch_end(1, None)
    ms.on_epoch_end(2, None)
    assert ms.stopped.all()
    state = ms.optimizer.state_dict()["state"]
    assert all(torch.equal(state[k]["momentum_buffer"], v) for k, v in saved.items())


def test_mses_smooths_with_the_previous_raw_loss_not_the_previous_smoothed_one(tiny_bundle):
    ms = build("mses", tiny_bundle)
    history = iter([[1.0, 1.0], [0.8, 1.0], [0.9, 1.0]])
    ms.modality_losses = lambda loaders: next(history)
    smoothed = [ms.on_epoch_end(epoch, None)["smoothed_ce_audio"] for epoch in range(3)]
    # 0.6 * 0.8 + 0.4 * 0.9 at epoch 2; chaining the smoothed 0.92 would give 0.912.
    assert smoothed == approx64([1.0, 0.92, 0.84])


def test_mses_reload_keeps_the_runs_scheduled_lr_not_the_snapshots(tiny_bundle):
    ms = build("mses", tiny_bundle, patience=1)
    ms.modality_losses = lambda loaders: [1.0, 1.0]  # never improves after epoch 0: both stop at epoch 2
    ms.on_epoch_end(0, None)  # snapshot at lr factor 1
    ms.on_epoch_end(1, None)
    ms.ctx.set_lr_factor(0.1)  # the runner's schedule has decayed since
    ms.on_epoch_end(2, None)
    assert ms.stopped.all()
    assert [g["lr"] for g in ms.optimizer.param_groups] == [g["initial_lr"] * 0.1 for g in ms.optimizer.param_groups]


def test_mses_in_float64_reports_float64_training_and_validation_losses(tiny_bundle):
    with float64_default():
        ms = build("mses", tiny_bundle)
        batch = first_batch64(tiny_bundle, "val")
        ms.eval()
        with torch.no_grad():
            _, _, z_uni = ms.model(ms.inputs(batch))
            expected = [F.cross_entropy(z_uni[m], batch["label"]).item() for m in ms.modalities]
        raw = ms.modality_losses(Loaders(train=None, val=[batch], test=None))
        with torch.no_grad():   # train mode, as in update (BatchNorm on batch statistics)
            _, z, _ = ms.model(ms.inputs(batch))
            loss = F.cross_entropy(z, batch["label"]).item()
        logs = ms.update(batch, step())
    # float32 losses would differ from the float64 ones at ~1e-8
    assert raw == pytest.approx(expected, rel=1e-14, abs=0) and logs["loss"] == loss


def test_mses_with_both_stopped_takes_no_steps_and_snapshots_survive_checkpoints(tiny_bundle):
    ms = build("mses", tiny_bundle, patience=1)
    ms.modality_losses = lambda loaders: [1.0, 1.0]
    ms.on_epoch_end(0, None)
    clone = build("mses", tiny_bundle, patience=1)
    clone.load_checkpoint_state(ms.checkpoint_state())
    assert set(clone.snapshots) == {0} and same(clone.snapshots[0]["model"], ms.snapshots[0]["model"])
    for epoch in (1, 2):
        ms.on_epoch_end(epoch, None)
    assert ms.stopped.all()
    before = params_of(ms.model)
    assert ms.update(first_batch(tiny_bundle), step()) == {}
    assert same(before, params_of(ms.model))


def test_reconboost_ga_grad_adds_alpha_times_the_ga_term_to_the_boosting_loss(tiny_bundle):
    # Stage 1 boosts the second modality with the first (stage 0's learner) as the GA partner.
    loaders, batch = loaders_for(tiny_bundle), first_batch(tiny_bundle)
    for ga_grad, alpha in ((True, 0.3), (False, 0.3)):
        rb = build("reconboost", tiny_bundle, pretrain=False, modality_epochs=1, correct_epochs=0, ga_grad=ga_grad,
                   alpha=alpha)
        rb.train()
        rb.on_epoch_start(1, loaders)
        logs = rb.update(batch, step(1))
        assert logs["ga"] > 0
        # ga_grad=false is the official detached term: logged, never added.
        expected = logs["loss_boost"] + (alpha * logs["ga"] if ga_grad else 0.0)
        assert logs["loss"] == approx(expected)


def test_reconboost_modality_and_correction_optimizers_take_m_lr_and_e_lr(tiny_bundle):
    rb = build("reconboost", tiny_bundle, m_lr=0.02, e_lr=0.005, weight_decay=1e-3)
    for opt in rb.modality_opts:
        assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(approx64(0.02), approx64(1e-3))]
    assert [(g["lr"], g["weight_decay"]) for g in rb.correct_opt.param_groups] == [(approx64(0.005), approx64(1e-3))]


def test_gblending_weights_fall_back_to_uniform_when_a_loss_is_not_finite():
    # A diverged scratch copy (nan held-out loss) must not poison the blend with nan weights.
    losses = {"audio": (2.0, 1.0, 2.0, float("nan")), "visual": (2.0, 1.8, 2.0, 1.9), FUSED: (2.0, 0.5, 2.0, 1.8)}
    assert blending_weights(losses) == {k: approx64(1 / 3) for k in losses}


def test_gblending_rebatch_cuts_one_large_batch_into_several():
    batches = [{"label": torch.arange(0, 9)}, {"label": torch.arange(9, 11)}]
    out = [b["label"].tolist() for b in rebatch(batches, 3, ("label",))]
    assert out == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]  # 9, 10 dropped


def test_gblending_mean_losses_weight_each_batch_by_its_rows(tiny_bundle):
    # 64 training rows in batches of 12 leave a 4-row batch: the mean is over rows, not over batch means.
    gb = build("gblending", tiny_bundle)
    scratch = gb._scratch[0]
    scratch.load_state_dict(gb.model.state_dict())
    for group in gb.scratch_optimizer.param_groups:
        group["lr"] = 0.0  # the copy stays put, so the losses can be recomputed
    batches = list(tiny_bundle.loader("train", batch_size=12, train=False, seed=0))
    assert [len(b["label"]) for b in batches] == [12] * 5 + [4]
    scratch.eval()  # no batch-norm statistics move: the recomputation sees the same model
    with torch.no_grad():
        per_row = torch.cat([F.cross_entropy(scratch(gb.inputs(b), drop=["visual"])[1], b["label"], reduction="none")
                             for b in batches])
    train_loss, rows = gb._train_epoch(scratch, batches, ["visual"])
    held_out = gb._eval_loss(scratch, batches, ["visual"], rows)
    assert rows == 12
    assert train_loss == approx(per_row.mean().item())
    assert held_out == approx(per_row.mean().item())


def test_reconboost_stage_0_runs_no_learner_outside_the_ensemble(tiny_bundle):
    # Official DynamicNet runs only its members: before visual joins, its batch-norm statistics stay put.
    rb = build("reconboost", tiny_bundle, pretrain=False, modality_epochs=1, correct_epochs=1)
    rb.train()
    rb.on_epoch_start(0, loaders_for(tiny_bundle))
    other = tiny_bundle.task.names[1]
    before = {k: v.clone() for k, v in rb.encoders[other].state_dict().items() if "running" in k}
    assert before
    rb.update(first_batch(tiny_bundle), step(0))
    assert all(torch.equal(v, rb.encoders[other].state_dict()[k]) for k, v in before.items())


def test_reconboost_pretrains_every_encoder_once_at_epoch_0(tiny_bundle):
    rb = build("reconboost", tiny_bundle, pretrain=True, pretrain_epochs=1)
    loaders = loaders_for(tiny_bundle)
    before = {m: params_of(rb.encoders[m]) for m in tiny_bundle.task.names}
    rb.on_epoch_start(1, loaders)   # not epoch 0: no pre-training
    assert all(same(before[m], params_of(rb.encoders[m])) for m in before)
    rb.on_epoch_start(0, loaders)
    assert not any(same(before[m], params_of(rb.encoders[m])) for m in before)
    assert not any(opt.state for opt in rb.pretrain_opts)


def test_reconboost_each_phase_starts_its_own_optimizer_fresh(tiny_bundle):
    rb = build("reconboost", tiny_bundle, pretrain=False, modality_epochs=1, correct_epochs=1)
    rb.train()
    loaders, batch = loaders_for(tiny_bundle), first_batch(tiny_bundle)
    for epoch in range(4):   # stage 0 (audio, correct), stage 1 (visual, correct): every optimizer has state
        rb.on_epoch_start(epoch, loaders)
        rb.update(batch, step(epoch))
        diag = rb.on_epoch_end(epoch, loaders)
        assert diag["stage"] == epoch // 2 and diag["modality_step"] == float(epoch % 2 == 0)
    assert all(opt.state for opt in (*rb.modality_opts, rb.correct_opt))
    rb.on_epoch_start(4, loaders)   # stage 2 boosts audio again: its optimizer starts fresh, the others keep theirs
    assert not rb.modality_opts[0].state and rb.modality_opts[1].state and rb.correct_opt.state
    rb.on_epoch_start(5, loaders)
    assert not rb.correct_opt.state and rb.modality_opts[1].state


def spy_extra_passes(loader) -> list[int]:
    """The epoch tags of the private training passes a method draws from ``loader`` (each tag is a shuffle)."""
    tags, real = [], loader.extra_pass

    def record(tag, max_steps=0):
        tags.append(tag)
        return real(tag, max_steps)

    loader.extra_pass = record
    return tags


def test_gblending_scratch_epochs_each_draw_their_own_shuffle(tiny_bundle):
    # Every scratch epoch of every head of every estimation is another pass over the data (BB's loader reshuffles each
    # epoch), never one of the runner's epochs (tags >= 0).
    gb = build("gblending", tiny_bundle, super_epoch=2, estimate_epochs=2)
    loaders = loaders_for(tiny_bundle)
    tags = spy_extra_passes(loaders.train)
    gb.on_epoch_start(0, loaders)
    gb.on_epoch_start(2, loaders)
    assert len(tags) == 2 * 3 * 2 and len(set(tags)) == len(tags) and max(tags) < 0


def test_reconboost_pretraining_epochs_each_draw_their_own_shuffle(tiny_bundle):
    rb = build("reconboost", tiny_bundle, pretrain=True, pretrain_epochs=2)
    loaders = loaders_for(tiny_bundle)
    tags = spy_extra_passes(loaders.train)
    rb.on_epoch_start(0, loaders)
    assert len(tags) == 2 * 2 and len(set(tags)) == len(tags) and max(tags) < 0
