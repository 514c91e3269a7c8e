"""Crafted-tensor checks for uniform, MMPareto, InfoReg, MSLR, MMCosine and CML (docs/methods/unimodal.md#uniform,
mmpareto.md, inforeg.md, mses-mslr.md#mslr, mmcosine.md, balancebenchmark.md#cml): each test pins the method's
characteristic computation, then a few check the wiring inside ``update``."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import Loaders, Prediction, StepInfo, TrainContext
from baselines.cml import CML, cml_loss
from baselines.inforeg import (
    InfoReg,
    add_proximal_term,
    inforeg_betas,
    prime_window_indicator,
)
from baselines.mmcosine import MMCosine, cosine_logits
from baselines.mmpareto import MMPareto, mmpareto_encoder_grads, pareto_weights
from baselines.mslr import MSLR, mslr_multipliers, mslr_step
from baselines.networks import MODEL_HPARAMS
from baselines.uniform import Uniform, uniform_loss
from benchmarks.config import method_hparams
from core.data import ModalitySpec, TaskSpec
from core.hparams import resolve
from datasets.registry import get_dataset
from tests.conftest import (
    TINY_DATA,
    build_with,
    first_batch,
    first_batch64,
    float64_default,
    freeze_steps,
    make_context,
)
from tests.numeric import approx, approx64, assert_float32_logits, close, tol

STEP = StepInfo(epoch=0, step=0, steps_per_epoch=4, epochs=2)


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# --- uniform ------------------------------------------------------------------------------------------------------
def test_uniform_loss_is_fused_ce_plus_each_unimodal_ce():
    y = torch.tensor([0])
    z = torch.zeros(1, 3)
    z_uni = {"audio": torch.tensor([[math.log(3.0), 0.0, 0.0]]), "visual": torch.zeros(1, 3)}
    loss, parts = uniform_loss(z, z_uni, y)
    # CE of uniform logits is ln 3; audio puts p = 3/5 on the true class.
    assert loss.item() == pytest.approx(2 * math.log(3) - math.log(0.6), rel=1e-6)
    assert parts["audio"].item() == pytest.approx(-math.log(0.6), rel=1e-6)


def test_uniform_uses_separate_heads(tiny_bundle):
    method = build_with(Uniform, tiny_bundle)
    assert set(method.model.head.uni) == {"audio", "visual"}


def test_uniform_steps_on_the_gradients_of_the_fused_ce_plus_every_unimodal_ce(tiny_bundle):
    # MMPareto code/uniform_baseline.py train_epoch: loss = CE(out) + CE(out_a) + CE(out_v), one backward; every
    # head and both encoders learn from it (no term detached).
    torch.manual_seed(0)
    method = freeze_steps(build_with(Uniform, tiny_bundle))
    method.train()
    batch = first_batch(tiny_bundle)
    ref = copy.deepcopy(method.model)
    logs = method.update(batch, StepInfo(epoch=0, step=0, steps_per_epoch=4, epochs=2))
    _, z, z_uni = ref(method.inputs(batch))
    y = batch["label"]
    loss = F.cross_entropy(z, y) + sum(F.cross_entropy(v, y) for v in z_uni.values())
    loss.backward()
    assert logs["loss"] == approx(loss.item())
    assert logs["loss_fused"] == approx(F.cross_entropy(z, y).item())
    grads = {n: p.grad for n, p in method.model.named_parameters() if p.grad is not None}
    assert set(grads) == {n for n, _ in ref.named_parameters()}
    for n, p in ref.named_parameters():
        close(grads[n], p.grad, msg=n)


# --- MMPareto -----------------------------------------------------------------------------------------------------
def test_pareto_weights_are_half_half_when_gradients_agree():
    k0, k1, cos = pareto_weights([t(1.0, 2.0), t(0.5)], [t(3.0, -1.0), t(2.0)])
    assert cos.item() > 0
    # 0.5 is set by the branch, not computed: exact.
    assert (k0.item(), k1.item()) == (0.5, 0.5)


def test_pareto_weights_are_the_min_norm_point_when_gradients_conflict():
    # Two tensors per encoder: the cosine and the min-norm point use the flattened concatenation.
    g_mm, g_u = [t(1.0), t(0.0)], [t(-1.0), t(2.0)]
    k0, k1, cos = pareto_weights(g_mm, g_u)
    # dot = -1, |g_mm|^2 = 1, |g_u|^2 = 5: k0 = (5 + 1) / (1 + 5 + 2) = 3/4.
    assert k0.dtype == torch.float32
    close(cos, -1 / math.sqrt(5))
    close(k0, 0.75)
    close(k1, 0.25)
    point = k0 * t(1.0, 0.0) + k1 * t(-1.0, 2.0)
    close(torch.dot(point, t(1.0, 0.0) - t(-1.0, 2.0)), 0.0)


def official_min_norm_k0(g_mm: torch.Tensor, g_u: torch.Tensor) -> float:
    """MinNormSolver._min_norm_element_from2 (GeWu-Lab/MMPareto_ICML2024, code/min_norm_solvers.py) as written,
    on float32 dot products as the official code forms them."""
    v1v1, v1v2, v2v2 = (float(x @ y) for x, y in ((g_mm, g_mm), (g_mm, g_u), (g_u, g_u)))
    if v1v2 >= v1v1:
        return 0.999
    if v1v2 >= v2v2:
        return 0.001
    return -(v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2)


@pytest.mark.parametrize("ratio", [1e-3, 5e-3, 2e-2, 1.0, 50.0, 200.0, 1e3])
def test_pareto_weights_are_unclipped_at_extreme_norm_ratios(ratio):
    # A conflict (cos = -0.2) with |g_u| / |g_mm| = ratio. Interior k0 ~ ratio * 0.2 for small ratios: below 0.001
    # from ratio ~5e-3 down (official 2.0e-4 at 1e-3), and 1 - k0 below 0.001 from ratio ~200 up.
    c = -0.2
    g_mm = t(1.0, 0.0)
    g_u = ratio * t(c, math.sqrt(1 - c * c))
    k0, k1, cos = pareto_weights([g_mm], [g_u])
    expected = official_min_norm_k0(g_mm, g_u)
    assert cos.item() < 0 and k0.dtype == torch.float32
    close(k0, expected)
    # k1 = 1 - k0 in float32: its absolute error is float32's at 1, so compare it absolutely.
    close(k1, 1 - expected, rtol=0.0, atol=2.4e-7)
    if ratio == 1e-3:
        close(k0, 2.0092e-4, rtol=1e-4)


@pytest.mark.parametrize("g_mm, g_u, k0", [
    (t(0.0, 0.0), t(1.0, 1.0), 0.999),  # g_mm = 0: dot >= |g_mm|^2
    (t(1.0, 1.0), t(0.0, 0.0), 0.001),  # g_u = 0: dot >= |g_u|^2
    (t(0.0, 0.0), t(0.0, 0.0), 0.999),  # both 0: the first branch
])
def test_pareto_weights_keep_the_solver_boundary_values_for_a_zero_gradient(g_mm, g_u, k0):
    # A zero gradient gives cos = 0, so the solver runs; its boundary branches return 0.999 / 0.001.
    got, k1, cos = pareto_weights([g_mm], [g_u])
    assert cos.item() == 0.0
    assert official_min_norm_k0(g_mm, g_u) == k0
    close(got, k0)
    close(k1, 1 - k0)


def test_mmpareto_rescales_each_tensor_to_the_summed_norm_then_applies_gamma():
    k0, k1 = torch.tensor(0.75), torch.tensor(0.25)
    g_mm = [t(1.0, 0.0), t(4.0, 0.0)]
    g_u = [t(-1.0, 2.0), t(0.0, 4.0)]
    g_sum = [a + b for a, b in zip(g_mm, g_u)]
    out = mmpareto_encoder_grads(g_mm, g_u, g_sum, k0, k1, gamma=1.5)
    # Tensor 0: new = (1, 1), |g_sum| = 2 > sqrt(2): rescaled to norm 2 -> (sqrt 2, sqrt 2), x1.5.
    close(out[0], 1.5 * math.sqrt(2) * t(1.0, 1.0))
    # Tensor 1: new = (6, 2), |g_sum| = sqrt(32) < sqrt(40): no rescale, x1.5.
    close(out[1], 1.5 * t(6.0, 2.0))



@pytest.mark.parametrize("scale", [1e-9, 1e6])
def test_mmpareto_rule_is_scale_free_at_tiny_and_large_gradients(scale):
    # Weights, rescale and gamma are homogeneous in the gradients: a late-training bias gradient of norm ~1e-9 gets the
    # same rule as one of norm 1 (no floor on |new| but float32's smallest normal, which only guards 0 / 0).
    g_mm = [t(1.0, 0.0), t(4.0, 0.0)]
    g_u = [t(-1.0, 2.0), t(0.0, 4.0)]
    g_sum = [a + b for a, b in zip(g_mm, g_u)]
    k0, k1, cos = pareto_weights(g_mm, g_u)
    unit = mmpareto_encoder_grads(g_mm, g_u, g_sum, k0, k1, gamma=1.5)
    scaled = [[scale * g for g in gs] for gs in (g_mm, g_u, g_sum)]
    k0s, k1s, coss = pareto_weights(*scaled[:2])
    close(k0s, k0)
    # The cosine itself is F.cosine_similarity's, whose eps (as in the official code) shrinks it at tiny norms; only
    # its sign, which picks the branch, enters the rule.
    assert (coss.item() > 0) == (cos.item() > 0)
    for got, want in zip(mmpareto_encoder_grads(*scaled, k0s, k1s, gamma=1.5), unit):
        close(got, scale * want, rtol=1e-5, atol=0.0)

def check_rule_gradients(bundle):
    """``update`` leaves the rule's gradient on every encoder (from that encoder's own g_mm and g_u) and the summed
    gradient on the heads."""
    method = freeze_steps(build_with(MMPareto, bundle))
    batch = first_batch(bundle)
    logs = method.update(batch, STEP)
    _, z, z_uni = method.model(method.inputs(batch))
    y = batch["label"]
    losses = {"fused": F.cross_entropy(z, y), **{m: F.cross_entropy(v, y) for m, v in z_uni.items()}}
    head = list(method.model.head.parameters())
    for p, g in zip(head, torch.autograd.grad(sum(losses.values()), head, retain_graph=True)):
        close(p.grad, g)
    for m in bundle.task.names:
        enc = list(method.model.encoders[m].parameters())
        g_mm = torch.autograd.grad(losses["fused"], enc, retain_graph=True)
        g_u = torch.autograd.grad(losses[m], enc, retain_graph=True)
        k0, k1, cos = pareto_weights(g_mm, g_u)
        close(k0, logs[f"k_mm_{m}"])
        close(cos, logs[f"cos_{m}"])
        expected = mmpareto_encoder_grads(g_mm, g_u, [a + b for a, b in zip(g_mm, g_u)], k0, k1, 1.5)
        for p, g in zip(enc, expected):
            # Two forwards and backwards through the encoder in float32: a reordered reduction, not one op.
            close(p.grad, g, rtol=1e-4, atol=1e-7)


def test_mmpareto_update_sets_rule_gradients_on_encoders_and_summed_gradients_on_heads(tiny_bundle):
    check_rule_gradients(tiny_bundle)


def test_mmpareto_bb_degenerate_is_three_times_the_summed_ce_on_encoders(tiny_bundle):
    method = freeze_steps(build_with(MMPareto, tiny_bundle, variant="bb_degenerate"))
    assert type(method.model.head).__name__ == "ConcatHead"
    batch = first_batch(tiny_bundle)
    method.update(batch, STEP)
    _, z, z_uni = method.model(method.inputs(batch))
    y = batch["label"]
    total = F.cross_entropy(z, y) + sum(F.cross_entropy(v, y) for v in z_uni.values())
    encoders = list(method.model.encoders.parameters())
    head = list(method.model.head.parameters())
    grads = torch.autograd.grad(total, encoders + head)
    for p, g in zip(encoders, grads[:len(encoders)]):
        torch.testing.assert_close(p.grad, 3 * g, rtol=1e-4, atol=1e-5)
    for p, g in zip(head, grads[len(encoders):]):
        close(p.grad, g)


def test_mmpareto_losses_stay_float64_in_float64_runs(tiny_bundle):
    with float64_default():
        method = freeze_steps(build_with(MMPareto, tiny_bundle))
        batch = first_batch64(tiny_bundle)
        with torch.no_grad():
            _, z, z_uni = method.model(method.inputs(batch))
        logs = method.update(batch, STEP)
        prediction = method.predict(batch)
    y = batch["label"]
    assert logs["loss_fused"] == F.cross_entropy(z, y).item()   # float32 would differ at ~1e-8
    assert all(logs[f"loss_{m}"] == F.cross_entropy(v, y).item() for m, v in z_uni.items())
    # The logged loss is the summed objective L_mm + sum_m L_m whose gradients the rule combines.
    expected = F.cross_entropy(z, y) + sum(F.cross_entropy(v, y) for v in z_uni.values())
    assert logs["loss"] == approx64(expected.item())
    assert prediction.fused.dtype == torch.float64


def test_mmpareto_predicts_the_fused_head_and_each_separate_unimodal_head(tiny_bundle):
    # Test-time output is the multimodal head's logits (official AVClassifier's fusion output), not a sum with the
    # unimodal heads, which are reported per modality.
    method = build_with(MMPareto, tiny_bundle)
    method.eval()
    batch = first_batch(tiny_bundle)
    prediction = method.predict(batch)
    with torch.no_grad():
        _, z, z_uni = method.model(method.inputs(batch))
    close(prediction.fused, z)
    for m in tiny_bundle.task.names:
        close(prediction.per_modality[m], z_uni[m])
    assert not torch.allclose(z, sum(z_uni.values()), **tol(torch.float32)), "the two readings must differ here"


def test_mmpareto_applies_the_rule_per_encoder_with_three_modalities():
    cls = get_dataset("synthetic")
    bundle = cls.build(resolve("data", cls.HPARAMS, "synthetic", {**TINY_DATA, "modalities": 3}))
    assert bundle.task.names == ("audio", "visual", "text")
    check_rule_gradients(bundle)


# --- InfoReg ------------------------------------------------------------------------------------------------------
def test_inforeg_prime_window_indicator():
    assert prime_window_indicator([], 10) == 1.0
    assert prime_window_indicator([5.0], 10) == 1.0  # the shifted window is the zero padding
    # Padded history [0]*10 + [2, 4]: tr1 = 6/10, tr2 = 2/10.
    assert prime_window_indicator([2.0, 4.0], 10) == approx64((0.6 - 0.2) / 0.6)
    assert prime_window_indicator([1.0] * 11, 10) == approx64(0.0)
    assert prime_window_indicator([0.0], 10) == 0.0


def test_inforeg_beta_rule():
    scales, thr = [0.95, 0.1], 0.05
    b_a, b_v = inforeg_betas([torch.tensor(10.0), torch.tensor(4.0)], 0.5, scales, thr)
    assert b_a.item() == approx(0.95 * math.exp(math.tanh(6.0))) and b_v.item() == 0.0
    b_a, b_v = inforeg_betas([torch.tensor(3.0), torch.tensor(3.5)], 0.5, scales, thr)
    assert b_a.item() == 0.0 and b_v.item() == approx(0.1 * math.exp(math.tanh(0.5)))
    assert [b.item() for b in inforeg_betas([torch.tensor(10.0), torch.tensor(4.0)], 0.05, scales, thr)] == [0, 0]
    assert [b.item() for b in inforeg_betas([torch.tensor(2.0), torch.tensor(2.0)], 1.0, scales, thr)] == [0, 0]


def test_inforeg_proximal_term_adds_beta_times_distance_to_epoch_start():
    p = torch.nn.Parameter(t(1.0, -2.0))
    p.grad = t(0.5, 0.5)
    add_proximal_term([p], [t(0.0, 1.0)], torch.tensor(2.0))
    close(p.grad, t(0.5 + 2 * 1.0, 0.5 + 2 * -3.0))


def test_inforeg_update_adds_proximal_term_and_accumulates_fim(tiny_bundle):
    method = freeze_steps(build_with(InfoReg, tiny_bundle))
    method.on_epoch_start(0, None)
    # A zero anchor makes the proximal term beta * theta, visible against the plain gradient.
    method.anchor = {m: [torch.zeros_like(p) for p in ps] for m, ps in method.encoder_params.items()}
    batch = first_batch(tiny_bundle)
    logs = method.update(batch, STEP)
    _, z, z_uni = method.model(method.inputs(batch))
    y = batch["label"]
    loss = F.cross_entropy(z, y) + F.cross_entropy(z_uni["audio"], y) + F.cross_entropy(z_uni["visual"], y)
    assert logs["beta_audio"] > 0 or logs["beta_visual"] > 0
    for m in ("audio", "visual"):
        params = method.encoder_params[m]
        for p, g in zip(params, torch.autograd.grad(loss, params, retain_graph=True)):
            torch.testing.assert_close(p.grad, g + logs[f"beta_{m}"] * p.detach(), rtol=1e-4, atol=1e-6)
    for acc, w in zip(method.fim, method.fim_weights):
        close(acc, w.grad ** 2)
    diag = method.on_epoch_end(0, None)
    assert diag["inforeg_fim_trace"] == pytest.approx(sum(w.grad.pow(2).mean().item() for w in method.fim_weights),
                                                      rel=1e-5)
    assert method.traces == [diag["inforeg_fim_trace"]]


def test_inforeg_traces_the_first_modalitys_encoder_and_re_anchors_every_epoch(tiny_bundle):
    method = build_with(InfoReg, tiny_bundle)
    audio = [mod.weight for mod in method.model.encoders["audio"].modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    assert audio and [id(w) for w in method.fim_weights] == [id(w) for w in audio]
    with torch.no_grad():
        for p in method.encoder_params["visual"]:
            p.add_(1.0)  # stands in for an epoch of training
    method.on_epoch_start(1, None)
    for p, p0 in zip(method.encoder_params["visual"], method.anchor["visual"]):
        assert torch.equal(p0, p.detach()), "theta_0 is the encoder at the start of this epoch"


def test_inforeg_traces_the_linear_layers_of_an_mlp_encoder():
    # Feature-vector datasets have MLP encoders: their Linear weights (not biases) are the traced layers.
    task = TaskSpec("vectors", 3, (ModalitySpec("audio", "vector", (6,)), ModalitySpec("visual", "vector", (5,))))
    model_hp = resolve("model", MODEL_HPARAMS, None, {"mlp_hidden": 8, "feature_dim": 6})
    hp = resolve("inforeg", method_hparams(InfoReg), "vectors", {})
    torch.manual_seed(0)
    method = InfoReg(task, hp, TrainContext(torch.device("cpu"), 2, make_context().train_hp, model_hp))
    linears = [mod.weight for mod in method.model.encoders["audio"].modules() if isinstance(mod, nn.Linear)]
    assert len(linears) == 2 and [id(w) for w in method.fim_weights] == [id(w) for w in linears]
    method.on_epoch_start(0, None)
    batch = {"audio": torch.randn(8, 6), "visual": torch.randn(8, 5), "label": torch.arange(8) % 3}
    method.update(batch, STEP)
    for acc, w in zip(method.fim, linears):
        close(acc, w.grad ** 2)
    assert method.on_epoch_end(0, None)["inforeg_fim_trace"] > 0


def test_inforeg_step_in_float64_reports_the_float64_loss(tiny_bundle):
    with float64_default():
        method = build_with(InfoReg, tiny_bundle)
        batch = first_batch64(tiny_bundle)
        with torch.no_grad():
            _, z, z_uni = method.model(method.inputs(batch))
            y = batch["label"]
            # Summed in update's order, CE(z) + (CE(z_a) + CE(z_v)): float addition is not associative, and the other
            # order differs in the last bit for some initialisations.
            expected = (F.cross_entropy(z, y) + (F.cross_entropy(z_uni["audio"], y)
                                                 + F.cross_entropy(z_uni["visual"], y))).item()
        logs = method.update(batch, STEP)
    assert logs["loss"] == expected   # a float32 loss would differ from the float64 one at ~1e-8


def test_inforeg_each_epoch_starts_with_k_from_the_traces_so_far(tiny_bundle):
    method = build_with(InfoReg, tiny_bundle)
    method.on_epoch_start(0, None)
    assert method.k == 1.0   # no history yet: regulate from the start
    method.fim = [torch.full_like(w, 2.0) for w in method.fim_weights]
    trace = method.on_epoch_end(0, None)["inforeg_fim_trace"]
    assert trace == approx64(2.0 * len(method.fim_weights))
    method.fim = [torch.full_like(w, 4.0) for w in method.fim_weights]
    method.on_epoch_end(1, None)
    method.on_epoch_start(2, None)
    # Padded history [0]*10 + [t, 2t]: tr1 = 3t/10, tr2 = t/10, k = 2/3.
    assert method.k == approx64(2 / 3)


def test_inforeg_trace_history_survives_checkpoint(tiny_bundle):
    method = build_with(InfoReg, tiny_bundle)
    method.traces = [2.0, 4.0]
    clone = build_with(InfoReg, tiny_bundle)
    clone.load_checkpoint_state(method.checkpoint_state())
    clone.on_epoch_start(2, None)
    assert clone.traces == [2.0, 4.0] and clone.k == approx64(2 / 3)


# --- MSLR ---------------------------------------------------------------------------------------------------------
def test_mslr_multipliers_from_accuracy_histories():
    accs = {"audio": [0.5, 0.5, 0.5, 0.5, 0.5, 0.6, 0.56], "visual": [0.2, 0.3, 0.4, 0.5, 0.6, 0.3, 0.4]}
    ratios, memory, coeffs = {"audio": 1.0, "visual": 1.0}, {"audio": [], "visual": []}, []
    for e in range(7):
        for m in ("audio", "visual"):
            ratios[m], memory[m] = mslr_step(memory[m], accs[m][e], ratios[m], window=5)
        coeffs.append(mslr_multipliers([0.9, 1.1], [ratios["audio"], ratios["visual"]]))
    assert coeffs[4] == [0.9, 1.1]  # r = 1 while the 5-epoch memory fills
    assert coeffs[5] == approx64([0.9 * 0.6 / 0.5, 1.1 * 0.3 / 0.4])
    assert coeffs[6] == approx64([0.9 * 0.56 / 0.52, 1.1 * 0.4 / 0.42])
    assert memory["visual"] == [0.4, 0.5, 0.6, 0.3, 0.4]


def test_mslr_ratio_keeps_its_value_over_an_all_zero_memory():
    # A modality that never scored: r_m stays where it was (here 1.3), it is not reset to 1.
    assert mslr_step([0.0] * 5, 0.5, 1.3, window=5) == (1.3, [0.0, 0.0, 0.0, 0.0, 0.5])


def test_mslr_refuses_coeffs_of_another_length_naming_the_knob(tiny_bundle):
    with pytest.raises(ValueError, match=r"mslr.coeffs needs one value per modality"):
        build_with(MSLR, tiny_bundle, coeffs=[0.9])


def test_mslr_update_scales_each_modality_group(tiny_bundle):
    method = freeze_steps(build_with(MSLR, tiny_bundle))
    method.ratios = {"audio": 2.0, "visual": 0.5}
    batch = first_batch(tiny_bundle)
    method.update(batch, STEP)
    _, z, _ = method.model(method.inputs(batch))
    loss = F.cross_entropy(z, batch["label"])
    for m, c in (("audio", 0.9 * 2.0), ("visual", 1.1 * 0.5)):
        params = method.groups[m]
        assert any(p is q for q in method.model.head.heads[m].parameters() for p in params)
        for p, g in zip(params, torch.autograd.grad(loss, params, retain_graph=True)):
            torch.testing.assert_close(p.grad, c * g, rtol=1e-4, atol=1e-7)



def test_mslr_step_in_float64_reports_the_float64_loss(tiny_bundle):
    with float64_default():
        torch.manual_seed(0)
        method = build_with(MSLR, tiny_bundle)
        batch = first_batch64(tiny_bundle)
        with torch.no_grad():
            _, z, _ = method.model(method.inputs(batch))
            expected = F.cross_entropy(z, batch["label"]).item()
        logs = method.update(batch, STEP)
    assert logs["loss"] == expected   # a float32 loss would differ from the float64 one at ~1e-8


@pytest.mark.parametrize("epoch, factor", [(19, 0.9 * 2.0), (20, 1.0)])
def test_mslr_official_compat_stops_modulating_after_epoch_19(tiny_bundle, epoch, factor):
    method = freeze_steps(build_with(MSLR, tiny_bundle, variant="official_compat"))
    assert (method.hp.eval_split, method.hp.shared_accuracy) == ("test", True)
    method.ratios = {"audio": 2.0, "visual": 2.0}
    batch = first_batch(tiny_bundle)
    method.update(batch, StepInfo(epoch=epoch, step=0, steps_per_epoch=4, epochs=30))
    _, z, _ = method.model(method.inputs(batch))
    params = method.groups["audio"]
    grads = torch.autograd.grad(F.cross_entropy(z, batch["label"]), params)
    torch.testing.assert_close(params[0].grad, factor * grads[0], rtol=1e-4, atol=1e-7)


def test_mslr_shared_accuracy_gives_every_modality_the_last_modalitys_accuracy(tiny_bundle):
    method = build_with(MSLR, tiny_bundle, shared_accuracy=True, memory=1)
    method.unimodal_accuracy = lambda loader: {"audio": 0.25, "visual": 0.5}
    val = tiny_bundle.loader("val", batch_size=32, train=False, seed=0)
    diag = method.on_epoch_end(0, Loaders(train=val, val=val, test=None))
    assert diag["mslr_acc_audio"] == diag["mslr_acc_visual"] == 0.5 and method.memory["audio"] == [0.5]


def test_mslr_epoch_end_reads_validation_and_checkpoints_its_memory(tiny_bundle):
    method = build_with(MSLR, tiny_bundle)
    val = tiny_bundle.loader("val", batch_size=32, train=False, seed=0)
    diag = method.on_epoch_end(0, Loaders(train=val, val=val, test=None))
    assert method.memory["audio"] == [diag["mslr_acc_audio"]] and diag["mslr_coeff_visual"] == approx64(1.1)
    clone = build_with(MSLR, tiny_bundle)
    clone.load_checkpoint_state(method.checkpoint_state())
    assert clone.memory == method.memory and clone.ratios == method.ratios
    with pytest.raises(ValueError, match="eval_split"):
        method.on_epoch_end(1, Loaders(train=val, val=None, test=val))


def test_mslr_unimodal_accuracy_counts_each_modalitys_own_hits_over_all_samples(tiny_bundle):
    # Two batches of 3 and 1 samples: accuracy is hits / samples (not per batch), from z_m (not the fused logits).
    method = build_with(MSLR, tiny_bundle)
    batches = [{"label": torch.tensor([0, 1, 2])}, {"label": torch.tensor([3])}]
    outputs = iter([
        Prediction(fused=F.one_hot(torch.tensor([0, 1, 2]), 4).float(),
                   per_modality={"audio": F.one_hot(torch.tensor([0, 0, 0]), 4).float(),
                                 "visual": F.one_hot(torch.tensor([0, 1, 1]), 4).float()}),
        Prediction(fused=F.one_hot(torch.tensor([3]), 4).float(),
                   per_modality={"audio": F.one_hot(torch.tensor([3]), 4).float(),
                                 "visual": F.one_hot(torch.tensor([0]), 4).float()}),
    ])
    method.predict = lambda batch: next(outputs)
    assert method.unimodal_accuracy(batches) == {"audio": 0.5, "visual": 0.5}


def test_mslr_unimodal_accuracy_is_measured_in_eval_mode_and_leaves_training_on(tiny_bundle):
    method = build_with(MSLR, tiny_bundle)
    val = tiny_bundle.loader("val", batch_size=32, train=False, seed=0)
    method.eval()
    batch = next(iter(val))
    pred = method.predict(batch)
    labels = batch["label"]
    expected = {m: (pred.per_modality[m].argmax(1) == labels).sum().item() / len(labels) for m in ("audio", "visual")}
    method.train()
    stats = {n: b.clone() for n, b in method.named_buffers()}
    assert method.unimodal_accuracy([batch]) == expected
    assert method.training and all(torch.equal(b, stats[n]) for n, b in method.named_buffers())


def test_mslr_memory_coeffs_and_ratios_are_knobs_and_survive_checkpoints(tiny_bundle):
    method = build_with(MSLR, tiny_bundle, memory=2, coeffs=[0.5, 2.0])
    accs = iter([{"audio": 0.2, "visual": 0.4}, {"audio": 0.4, "visual": 0.4}, {"audio": 0.6, "visual": 0.2}])
    method.unimodal_accuracy = lambda loader: next(accs)
    loaders = Loaders(train=None, val=[], test=None)
    for epoch in range(3):
        diag = method.on_epoch_end(epoch, loaders)
    # r = acc(2) / mean(acc(0), acc(1)) with a 2-epoch memory; c = coeff * r.
    assert method.ratios == {"audio": approx64(2.0), "visual": approx64(0.5)}
    assert (diag["mslr_coeff_audio"], diag["mslr_coeff_visual"]) == (approx64(1.0), approx64(1.0))
    clone = build_with(MSLR, tiny_bundle, memory=2, coeffs=[0.5, 2.0])
    clone.load_checkpoint_state(method.checkpoint_state())
    assert clone.ratios == method.ratios and clone.memory == method.memory

# --- MMCosine -----------------------------------------------------------------------------------------------------
def test_mmcosine_logits_are_scaled_cosines():
    h = {"audio": t(3.0, 4.0)[None], "visual": t(1.0, 0.0)[None]}
    weight = torch.tensor([[1.0, 0.0, 0.0, 5.0], [0.0, 2.0, -1.0, 0.0]])
    z = cosine_logits(h, weight, {"audio": (0, 2), "visual": (2, 4)}, scale=10.0)
    close(z["audio"], t(6.0, 8.0)[None])
    close(z["visual"], t(0.0, -10.0)[None])


def test_mmcosine_predictions_ignore_the_bias_and_sum_the_modalities(tiny_bundle):
    method = build_with(MMCosine, tiny_bundle, variant="bb")
    assert method.hp.scale == 15.0
    method.eval()
    batch = first_batch(tiny_bundle)
    pred = method.predict(batch)
    close(pred.fused, pred.per_modality["audio"] + pred.per_modality["visual"])
    assert all(z.abs().max() <= 15.0 + 1e-4 for z in pred.per_modality.values())
    with torch.no_grad():
        method.model.head.fc.bias.fill_(3.0)
    close(method.predict(batch).fused, pred.fused)


def test_mmcosine_step_in_float64_keeps_float64_logits(tiny_bundle):
    with float64_default():
        torch.manual_seed(0)
        method = build_with(MMCosine, tiny_bundle)
        batch = first_batch64(tiny_bundle)
        with torch.no_grad():
            h = method.model.features(method.inputs(batch))
            z = cosine_logits(h, method.model.head.fc.weight, method.model.head.bounds, method.hp.scale)
            expected = F.cross_entropy(z["audio"] + z["visual"], batch["label"]).item()
        logs = method.update(batch, StepInfo(0, 0, 1, 1))
    assert abs(logs["loss"] - expected) < 1e-13   # float32 logits would differ at ~1e-8


def test_mmcosine_step_gradients_are_those_of_ce_on_the_summed_cosine_logits(tiny_bundle):
    # Both the features and the head's weight learn through the cosines; the bias takes no gradient.
    method = freeze_steps(build_with(MMCosine, tiny_bundle, scale=7.0))
    batch = first_batch(tiny_bundle)
    h = method.model.features(method.inputs(batch))
    fc = method.model.head.fc
    z = cosine_logits(h, fc.weight, method.model.head.bounds, 7.0)
    loss = F.cross_entropy(z["audio"] + z["visual"], batch["label"])
    params = [p for p in method.model.parameters() if p is not fc.bias]
    reference = torch.autograd.grad(loss, params)
    logs = method.update(batch, StepInfo(0, 0, 1, 1))
    assert logs["loss"] == approx(loss.item())
    assert fc.bias.grad is None or not fc.bias.grad.any()
    for p, g in zip(params, reference):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_mmcosine_predicts_the_scaled_cosines_per_modality(tiny_bundle):
    method = build_with(MMCosine, tiny_bundle, scale=7.0)
    method.eval()
    batch = first_batch(tiny_bundle)
    pred = method.predict(batch)
    with torch.no_grad():
        h = method.model.features(method.inputs(batch))
        z = cosine_logits(h, method.model.head.fc.weight, method.model.head.bounds, 7.0)
    for m in ("audio", "visual"):
        close(pred.per_modality[m], z[m])
    close(pred.fused, z["audio"] + z["visual"])


def test_mmcosine_official_variant_scores_the_fused_output_through_the_concat_layer(tiny_bundle):
    # The official valid takes the fused prediction from the concat layer (bias included); per modality, the cosines.
    method = build_with(MMCosine, tiny_bundle, variant="official")
    assert method.hp.eval_linear and method.hp.scale == 10.0
    method.eval()
    batch = first_batch(tiny_bundle)
    fc = method.model.head.fc
    with torch.no_grad():
        fc.bias.copy_(torch.arange(fc.bias.numel(), dtype=fc.bias.dtype))
        h = method.model.features(method.inputs(batch))
        linear = torch.cat([h["audio"], h["visual"]], dim=1) @ fc.weight.t() + fc.bias
        z = cosine_logits(h, fc.weight, method.model.head.bounds, 10.0)
    pred = method.predict(batch)
    close(pred.fused, linear)
    close(pred.per_modality["audio"], z["audio"])
    close(pred.per_modality["visual"], z["visual"])
    assert not torch.allclose(pred.fused, z["audio"] + z["visual"], atol=1e-3)
    # Training is the paper's either way: the step's loss is CE of the summed cosines.
    method.train()
    with torch.no_grad():
        expected = F.cross_entropy(method.logits(batch)[0], batch["label"]).item()
    assert method.update(batch, StepInfo(0, 0, 1, 1))["loss"] == approx(expected)


def test_mmcosine_sums_all_three_modalities(tiny_bundle):
    cls = get_dataset("synthetic")
    bundle = cls.build(resolve("data", cls.HPARAMS, "synthetic", {**TINY_DATA, "modalities": 3}))
    method = build_with(MMCosine, bundle)
    method.eval()
    batch = first_batch(bundle)
    pred = method.predict(batch)
    assert set(pred.per_modality) == {"audio", "visual", "text"}
    close(pred.fused, sum(pred.per_modality.values()))
    with torch.no_grad():
        h = method.model.features(method.inputs(batch))
        z = cosine_logits(h, method.model.head.fc.weight, method.model.head.bounds, 10.0)
    close(pred.per_modality["text"], z["text"])


def test_mmcosine_bf16_autocast_gives_float32_logits(tiny_bundle):
    method = build_with(MMCosine, tiny_bundle)
    method.ctx.amp = True   # the CPU takes the bf16 autocast branch a GPU run takes
    batch = first_batch(tiny_bundle)
    assert_float32_logits(*method.logits(batch))
    pred = method.predict(batch)
    assert_float32_logits(pred.fused, pred.per_modality)


# --- CML ----------------------------------------------------------------------------------------------------------
def test_cml_loss_and_penalty_on_crafted_logits():
    bias = t(0.4, -0.2)
    # W_a h_a = (-1, 0), W_v h_v = (3, 0); split logits carry b/2 each.
    z_uni = {"audio": t(-0.8, -0.1)[None], "visual": t(3.2, -0.1)[None]}
    z = t(2.4, -0.2)[None]
    y = torch.tensor([0])
    loss, penalty = cml_loss(z, z_uni, bias, ("audio", "visual"), y, lam=0.1)
    # Removing audio leaves z_p = W_v h_v + b = (3.4, -0.2): the confidence rises from sigmoid(2.6) to sigmoid(3.6).
    assert penalty.item() == pytest.approx(sigmoid(3.6) - sigmoid(2.6), rel=1e-5)
    ce = math.log1p(math.exp(-2.6)) + math.log1p(math.exp(-3.6))
    assert loss.item() == pytest.approx(ce / 2 + 0.1 * (sigmoid(3.6) - sigmoid(2.6)), rel=1e-5)
    # Removing visual instead leaves (-0.6, -0.2): confidence falls, so the penalty is clipped at 0.
    loss_v, penalty_v = cml_loss(z, z_uni, bias, ("visual", "audio"), y, lam=0.1)
    assert penalty_v.item() == 0.0
    assert loss_v.item() == pytest.approx((math.log1p(math.exp(-2.6)) + F.cross_entropy(t(-0.6, -0.2)[None], y).item())
                                          / 2, rel=1e-5)


def test_cml_chain_removes_m_minus_one_modalities():
    bias = t(0.3, 0.0, -0.3)
    parts = {m: torch.randn(2, 3, generator=torch.Generator().manual_seed(i)) for i, m in enumerate("abc")}
    z_uni = {m: v + bias / 3 for m, v in parts.items()}
    z = sum(parts.values()) + bias
    y = torch.tensor([0, 2])
    loss, _ = cml_loss(z, z_uni, bias, ("b", "a", "c"), y, lam=0.0)
    expected = (F.cross_entropy(z, y) + F.cross_entropy(parts["a"] + parts["c"] + bias, y)
                + F.cross_entropy(parts["c"] + bias, y)) / 3
    close(loss, expected)


def test_cml_penalty_is_differentiable_and_order_is_seeded(tiny_bundle):
    z_uni = {"audio": t(-0.8, -0.1)[None].requires_grad_(), "visual": t(3.2, -0.1)[None]}
    _, penalty = cml_loss(t(2.4, -0.2)[None], z_uni, t(0.4, -0.2), ("audio", "visual"), torch.tensor([0]), 0.1)
    penalty.backward()
    assert z_uni["audio"].grad.abs().sum() > 0
    method = build_with(CML, tiny_bundle)
    orders = [method.removal_order(e) for e in range(8)]
    assert all(sorted(o) == ["audio", "visual"] for o in orders) and len(set(orders)) == 2
    assert orders == [build_with(CML, tiny_bundle).removal_order(e) for e in range(8)]


# --- CML: the chain's penalty over a batch, and the wiring of update ----------------------------------------------
def test_cml_penalty_clamps_each_links_batch_sum_against_the_previous_chain_element():
    # Three modalities, zero bias, two classes with logits (x, 0): conf = sigmoid(|x|). Removal order a, b.
    # Sample 1: parts (1, -1, 2): z = 2, z_p1 = 1, z_p2 = 2.
    # Sample 2: parts (-2, 0.5, 1): z = -0.5, z_p1 = 1.5, z_p2 = 1.
    def logits(*xs):
        return torch.stack([t(*xs), torch.zeros(len(xs))], dim=1)
    parts = {"a": logits(1.0, -2.0), "b": logits(-1.0, 0.5), "c": logits(2.0, 1.0)}
    z = sum(parts.values()).clone().requires_grad_()
    y = torch.tensor([0, 1])
    loss, penalty = cml_loss(z, parts, torch.zeros(2), ("a", "b", "c"), y, lam=0.1)
    # Link 1 gains (s(1) - s(2), s(1.5) - s(0.5)) sum to 0.045 > 0 although sample 1's gain is negative (the batch sum
    # is clamped, not each sample); link 2 compares z_p2 with z_p1, not with z: (s(2) - s(1), s(1) - s(1.5)), sum 0.063.
    # The two links telescope to sum_b [conf(z_p2) - conf(z)] = s(1) - s(0.5).
    assert penalty.item() == approx(sigmoid(1.0) - sigmoid(0.5))
    # The batch-mean CEs averaged over the chain plus lambda times the batch-summed penalty.
    ce = sum(F.cross_entropy(logits(*xs), y).item() for xs in ((2.0, -0.5), (1.0, 1.5), (2.0, 1.0)))
    assert loss.item() == approx(ce / 3 + 0.1 * (sigmoid(1.0) - sigmoid(0.5)))
    penalty.backward()
    # Not detached anywhere: d penalty / d z = conf'(z_p2) - conf'(z), 0 for sample 1 (|x| = 2 at both ends); for
    # sample 2, d/dx [s(|x + 1.5|) - s(|x|)] at x = -0.5 is s'(1) + s'(0.5) on class 0 (the opposite on class 1).
    g = sigmoid(1.0) * (1 - sigmoid(1.0)) + sigmoid(0.5) * (1 - sigmoid(0.5))
    close(z.grad, t(0.0, 0.0, g, -g).reshape(2, 2))


def test_cml_update_trains_the_chain_of_the_epochs_order_with_the_configured_lambda(tiny_bundle):
    torch.manual_seed(0)
    method = freeze_steps(build_with(CML, tiny_bundle, lam=0.7))
    assert method.removal_order(2) != method.removal_order(0)
    for epoch in (2, 4):
        method.on_epoch_start(epoch, None)
        assert method.order == method.removal_order(epoch)
    assert method.order == ("audio", "visual")
    head = method.model.head
    with torch.no_grad():
        # Audio's part turned against visual's makes its removal raise the confidence, so the penalty (and lambda)
        # matters on this batch.
        head.fc.weight[:, slice(*head.bounds["audio"])] *= -0.3
    batch = first_batch(tiny_bundle)
    _, z, z_uni = method.model(method.inputs(batch))
    loss, penalty = cml_loss(z, z_uni, head.fc.bias, method.order, batch["label"], lam=0.7)
    assert penalty.item() > 0.05
    params = list(method.model.parameters())
    reference = dict(zip(params, torch.autograd.grad(loss, params)))
    logs = method.update(batch, STEP)
    assert logs["loss"] == approx(loss.item()) and logs["penalty"] == approx(penalty.item())
    # Every parameter, the head's bias included (its b / M re-added in each z_p carries gradient): a forward and
    # backward through the tiny network, a few float32 ulps more than TOL.
    for p in params:
        torch.testing.assert_close(p.grad, reference[p], rtol=1e-4, atol=1e-6)
    assert {p.name: p.default for p in CML.HPARAMS} == {"lam": 0.1}  # BB trainer_config CML.lam
