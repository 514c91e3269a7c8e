"""Gradient/prediction-modulation baselines on crafted tensors: OGM, OGM-GE, OPM, AGM and PMR (docs/methods/ogm.md,
agm.md, pmr.md)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines import opm as opm_module
from baselines.agm import GradScale, agm_coefficients, modality_losses, shapley_outputs
from baselines.base import Loaders, StepInfo, TrainContext
from baselines.heads import SumHead
from baselines.networks import MODEL_HPARAMS
from baselines.ogm import modulate_gradients, modulated_params, ogm_coefficients
from baselines.opm import FeatureRescale, bb_ratios, drop_features, opm_drop_probabilities
from baselines.pmr import CompressRecover, prototype_logits, weaker_modality
from baselines.registry import get_method
from benchmarks.config import method_hparams
from core.data import ModalitySpec, TaskSpec
from core.hparams import resolve
from datasets.registry import get_dataset
from tests.conftest import TINY_DATA, first_batch, first_batch64, float64_default, make_context
from tests.numeric import approx, close


def build(name, bundle, **overrides):
    cls = get_method(name)
    hp = resolve(name, method_hparams(cls), bundle.task.dataset, overrides, variants=cls.VARIANTS)
    torch.manual_seed(0)
    return cls(bundle.task, hp, make_context())


def step(epoch=0, i=0):
    return StepInfo(epoch=epoch, step=i, steps_per_epoch=4, epochs=10)


def capture_grads_at_step(method):
    """Replace the optimizer step with a recorder of every parameter's gradient as the step would see it."""
    seen = {}

    def record(*args, **kwargs):
        seen.update({n: p.grad.clone() for n, p in method.model.named_parameters() if p.grad is not None})

    method.optimizer.step = record
    return seen


# --- OGM / OGM-GE --------------------------------------------------------------------------------------------------

def test_ogm_coefficient_suppresses_only_the_dominant_modality():
    k = ogm_coefficients({"audio": torch.tensor(10.0), "visual": torch.tensor(10.1)}, alpha=0.8)
    assert k["visual"].item() == pytest.approx(1 - math.tanh(0.8 * 1.01), abs=1e-6)
    assert k["visual"].item() == pytest.approx(0.331, abs=1e-3)
    assert k["audio"].item() == 1.0
    k = ogm_coefficients({"audio": torch.tensor(20.0), "visual": torch.tensor(10.0)}, alpha=0.8)
    assert k["audio"].item() == pytest.approx(1 - math.tanh(1.6), abs=1e-6) and k["visual"].item() == 1.0
    # A tie takes the official else-branch: the first modality is suppressed with argument alpha * 1.
    k = ogm_coefficients({"audio": torch.tensor(5.0), "visual": torch.tensor(5.0)}, alpha=0.8)
    assert k["audio"].item() == pytest.approx(1 - math.tanh(0.8), abs=1e-6) and k["visual"].item() == 1.0


def test_ogm_and_pmr_ratios_refuse_other_than_two_modalities():
    three = {m: torch.tensor(1.0) for m in ("audio", "visual", "text")}
    with pytest.raises(ValueError, match="OGM's ratio is defined for 2 modalities"):
        ogm_coefficients(three, alpha=0.8)
    with pytest.raises(ValueError, match="PMR's ratio is defined for 2 modalities"):
        weaker_modality(three)


def test_ogm_scales_exactly_the_encoder_conv_weights_and_adds_no_noise(tiny_bundle):
    batch = first_batch(tiny_bundle)
    plain = build("ogm", tiny_bundle, mod_start=5, mod_end=9)
    raw = capture_grads_at_step(plain)
    plain.update(batch, step(epoch=0))
    ogm = build("ogm", tiny_bundle, mod_start=0, mod_end=9)
    edited = capture_grads_at_step(ogm)
    logs = ogm.update(batch, step(epoch=0))
    k = {m: logs[f"coeff_{m}"] for m in ("audio", "visual")}
    assert min(k.values()) < 1.0 and max(k.values()) == 1.0
    n_conv = 0
    for name, g in raw.items():
        modality = name.split(".")[1] if name.startswith("encoders.") else None
        if modality is not None and g.dim() == 4:
            close(edited[name], k[modality] * g)
            n_conv += 1
        else:  # BatchNorm, biases and the fusion head are untouched
            torch.testing.assert_close(edited[name], g, rtol=0, atol=0)
    assert n_conv > 0


def test_ogm_ge_noise_on_an_all_zero_gradient_has_the_official_floor_std():
    # std(g) + 1e-8 (official main.py): a zero gradient still gets a valid, tiny Normal draw.
    torch.manual_seed(2)
    conv = nn.Conv2d(64, 64, 3)
    conv.weight.grad = torch.zeros_like(conv.weight)
    modulate_gradients([conv.weight], torch.tensor(0.5), noise=True)
    assert conv.weight.grad.std().item() == pytest.approx(1e-8, rel=0.03)


def test_ogm_ge_noise_matches_the_unscaled_gradient_std():
    torch.manual_seed(1)
    conv = nn.Conv2d(64, 64, 3)
    original = 3.0 * torch.randn_like(conv.weight)
    for k in (0.25, 1.0):
        conv.weight.grad = original.clone()
        modulate_gradients([conv.weight], torch.tensor(k), noise=True)
        noise = conv.weight.grad - k * original
        assert noise.std().item() == pytest.approx(original.std().item(), rel=0.03)
        assert abs(noise.mean().item()) < 0.05 * original.std().item()
    conv.weight.grad = original.clone()
    modulate_gradients([conv.weight], torch.tensor(0.25), noise=False)
    close(conv.weight.grad, 0.25 * original)


def test_ogm_ge_adds_noise_to_both_encoders_and_nothing_else(tiny_bundle):
    batch = first_batch(tiny_bundle)
    plain = build("ogm_ge", tiny_bundle, mod_start=5, mod_end=9)
    raw = capture_grads_at_step(plain)
    plain.update(batch, step(epoch=0))
    ge = build("ogm_ge", tiny_bundle)
    edited = capture_grads_at_step(ge)
    logs = ge.update(batch, step(epoch=0))
    for m in ("audio", "visual"):
        convs = [n for n, g in raw.items() if n.startswith(f"encoders.{m}.") and g.dim() == 4]
        assert convs
        for name in convs:
            residual = edited[name] - logs[f"coeff_{m}"] * raw[name]
            assert residual.abs().max() > 0, f"no noise on {name} (k={logs[f'coeff_{m}']})"
    for name, g in raw.items():
        if g.dim() != 4:
            torch.testing.assert_close(edited[name], g, rtol=0, atol=0)


def test_ogm_edits_only_conv_kernels_by_default_and_every_matrix_with_non_1d():
    # An encoder with a Linear layer tells the official conv4d filter from BB's non_1d one (a ResNet trunk has only
    # 4-D and 1-D tensors, where the two agree).
    conv, norm, fc = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(4, 3)
    encoder = nn.Sequential(conv, norm, fc)
    assert [id(p) for p in modulated_params(encoder, "conv4d")] == [id(conv.weight)]
    assert [id(p) for p in modulated_params(encoder, "non_1d")] == [id(conv.weight), id(fc.weight)]


VECTOR_TASK = TaskSpec("vectors", 3, (ModalitySpec("audio", "vector", (6,)), ModalitySpec("visual", "vector", (5,))))


def build_vector_ogm(**hp):
    model_hp = resolve("model", MODEL_HPARAMS, None, {"mlp_hidden": 8, "feature_dim": 6})
    ogm_hp = resolve("ogm", method_hparams(get_method("ogm")), "vectors", hp)
    torch.manual_seed(0)
    return get_method("ogm")(VECTOR_TASK, ogm_hp, TrainContext(torch.device("cpu"), 2, make_context().train_hp,
                                                                model_hp))


def test_ogm_update_edits_mlp_encoder_matrices_with_non_1d():
    # Feature-vector encoders (MLPs) have no conv kernels: BB's filter edits every matrix.
    torch.manual_seed(0)
    batch = {"audio": torch.randn(8, 6), "visual": torch.randn(8, 5), "label": torch.arange(8) % 3}

    def grads(**hp):
        ogm = build_vector_ogm(grad_params="non_1d", **hp)
        seen = capture_grads_at_step(ogm)
        return seen, ogm.update(batch, step())

    raw, _ = grads(mod_start=100, mod_end=100)
    edited, logs = grads()
    matrices = [n for n, g in raw.items() if n.startswith("encoders.") and g.dim() == 2]
    assert matrices and not any(g.dim() == 4 for g in raw.values())
    for name, g in raw.items():
        k = logs[f"coeff_{name.split('.')[1]}"] if name in matrices else 1.0
        close(edited[name], k * g, msg=name)
    assert min(logs["coeff_audio"], logs["coeff_visual"]) < 1.0


def test_ogm_refuses_an_encoder_its_filter_would_never_modulate():
    # The official conv-kernel filter selects nothing in an MLP (or BERT): that run would be joint training.
    with pytest.raises(ValueError, match=r"ogm.grad_params='conv4d' selects no tensor of the audio encoder "
                                         r"\(MLPEncoder\).*set ogm.grad_params=non_1d"):
        build_vector_ogm(grad_params="conv4d")


def test_ogm_window_is_inclusive(tiny_bundle):
    ogm = build("ogm", tiny_bundle, mod_start=2, mod_end=4)
    assert [ogm.modulating(e) for e in range(6)] == [False, False, True, True, True, False]
    assert build("ogm", tiny_bundle).hp.mod_end == 50


def test_ogm_sum_head_option(tiny_bundle):
    ogm = build("ogm_ge", tiny_bundle, head="sum")
    assert isinstance(ogm.model.head, SumHead)
    assert math.isfinite(ogm.update(first_batch(tiny_bundle), step())["loss"])


def test_ogm_update_uses_the_alpha_knob_on_the_split_head_confidence_ratio(tiny_bundle):
    batch = first_batch(tiny_bundle)
    ogm = build("ogm", tiny_bundle, alpha=0.3)
    with torch.no_grad():
        _, _, z_uni = copy.deepcopy(ogm.model)(ogm.inputs(batch))
    s = {m: torch.softmax(z_uni[m], 1)[torch.arange(16), batch["label"]].sum().item() for m in ("audio", "visual")}
    rho_v = s["visual"] / s["audio"]
    logs = ogm.update(batch, step(epoch=0))
    dominant, rho = ("visual", rho_v) if rho_v > 1 else ("audio", 1 / rho_v)
    assert logs[f"coeff_{dominant}"] == approx(1 - math.tanh(0.3 * rho))   # alpha 0.8 would give another k
    assert logs[f"coeff_{'audio' if dominant == 'visual' else 'visual'}"] == 1.0


@pytest.mark.parametrize("epoch, modulated", [(1, False), (2, True), (4, True), (5, False)])
def test_ogm_update_edits_gradients_in_the_inclusive_window_only(tiny_bundle, epoch, modulated):
    # The step's epoch, not a neighbour, decides: mod_start and mod_end are modulated, the epochs beside them not.
    batch = first_batch(tiny_bundle)
    plain = build("ogm", tiny_bundle, mod_start=100, mod_end=100)
    raw = capture_grads_at_step(plain)
    plain.update(batch, step(epoch=epoch))
    ogm = build("ogm", tiny_bundle, mod_start=2, mod_end=4)
    seen = capture_grads_at_step(ogm)
    logs = ogm.update(batch, step(epoch=epoch))
    k = {m: logs[f"coeff_{m}"] for m in ("audio", "visual")}
    dominant = min(k, key=k.get)
    assert k[dominant] < 1.0
    convs = [n for n, g in raw.items() if n.startswith(f"encoders.{dominant}.") and g.dim() == 4]
    assert convs
    for name in convs:
        close(seen[name], k[dominant] * raw[name] if modulated else raw[name])


def test_ogm_edit_skips_a_kernel_without_gradient():
    # An encoder kernel the loss did not reach (an unused branch) keeps no gradient; the edit must not fail on it.
    used, unused = nn.Conv2d(1, 1, 2), nn.Conv2d(1, 1, 2)
    for noise in (False, True):
        used.weight.grad = torch.ones_like(used.weight)
        modulate_gradients([unused.weight, used.weight], torch.tensor(0.5), noise=noise)
        assert unused.weight.grad is None
        if not noise:
            close(used.weight.grad, torch.full_like(used.weight, 0.5))


# --- OPM -------------------------------------------------------------------------------------------------------------

def test_opm_drop_probability_for_given_scores():
    q = opm_drop_probabilities(torch.tensor([30.0, 20.0]), q_base=0.5, lam=0.5)
    assert q[0].item() == pytest.approx(0.5 * (1 + 0.5 * math.tanh(0.5)), abs=1e-6)
    assert q[1].item() == 0.0
    q = opm_drop_probabilities(torch.tensor([10.0, 40.0]), q_base=0.5, lam=0.5)
    assert q[0].item() == 0.0 and q[1].item() == pytest.approx(0.5 * (1 + 0.5 * math.tanh(3.0)), abs=1e-6)
    assert opm_drop_probabilities(torch.tensor([7.0, 7.0]), 0.5, 0.5).tolist() == [0.0, 0.0]
    assert opm_drop_probabilities(torch.tensor([90.0, 10.0]), q_base=0.9, lam=1.0)[0].item() == 1.0


def test_opm_rescale_is_applied_in_forward_and_backward():
    x = torch.randn(3, 4, requires_grad=True)
    y = FeatureRescale.apply(x, torch.tensor(1.25))
    close(y, 1.25 * x.detach())
    g = torch.randn(3, 4)
    y.backward(g)
    close(x.grad, 1.25 * g)


def test_opm_drop_features_masks_rescales_and_flags_empty_samples():
    torch.manual_seed(0)
    h = {"audio": torch.randn(400, 4, requires_grad=True), "visual": torch.randn(400, 6, requires_grad=True)}
    out, keep, theta = drop_features(h, torch.tensor([0.5, 0.0]))
    assert theta.item() == approx(4 * 0.5 / 10)
    scale = 1 / (1 - 0.2)
    close(out["visual"], scale * h["visual"].detach())  # q_v = 0: never dropped
    dropped = out["audio"].abs().sum(1) == 0
    close(out["audio"][~dropped], scale * h["audio"].detach()[~dropped])
    assert 0.4 < dropped.float().mean().item() < 0.6
    assert keep.all()
    (out["audio"].sum() + out["visual"].sum()).backward()
    close(h["audio"].grad, scale * (~dropped).float()[:, None].expand(-1, 4))
    close(h["visual"].grad, torch.full((400, 6), scale))
    out, keep, _ = drop_features({m: v.detach() for m, v in h.items()}, torch.tensor([0.8, 0.8]))
    both_gone = (out["audio"].abs().sum(1) == 0) & (out["visual"].abs().sum(1) == 0)
    assert both_gone.any() and torch.equal(keep, ~both_gone)
    # theta = 1 (every feature dropped for sure) has no finite 1/(1 - theta) rescale: refused, not inf features.
    with pytest.raises(ValueError, match="theta=1.000"):
        drop_features({m: v.detach() for m, v in h.items()}, torch.tensor([1.0, 1.0]))


def test_opm_step_in_float64_keeps_float64_theta_and_loss(tiny_bundle):
    h = {"audio": torch.ones(2, 4, dtype=torch.float64), "visual": torch.ones(2, 6, dtype=torch.float64)}
    _, _, theta = drop_features(h, torch.tensor([1 / 3, 0.0], dtype=torch.float64))
    assert theta.dtype == torch.float64 and theta.item() == 4 / 3 / 10   # float32 would round at ~1e-8
    with float64_default():
        opm = build("opm", tiny_bundle, p_exe=0.0)
        batch = first_batch64(tiny_bundle)
        with torch.no_grad():
            _, z, _ = opm.model(opm.inputs(batch))
            expected = F.cross_entropy(z, batch["label"]).item()
        logs = opm.update(batch, step(epoch=6))
    assert abs(logs["loss"] - expected) < 1e-13


def test_opm_drops_only_after_warmup_and_never_at_test(tiny_bundle):
    batch = first_batch(tiny_bundle)
    opm = build("opm", tiny_bundle, p_exe=1.0)
    assert "kept" not in opm.update(batch, step(epoch=5))
    logs = opm.update(batch, step(epoch=6))
    assert "kept" in logs and math.isfinite(logs.get("loss", 0.0))
    opm.eval()
    _, z, _ = opm.model(opm.inputs(batch))
    close(opm.predict(batch).fused, z)


@pytest.mark.parametrize("rescale", ["official", "bb"])
def test_opm_logs_the_fraction_of_the_batch_it_kept(tiny_bundle, monkeypatch, rescale):
    # A drop that leaves 5 of the 16 samples (the others lost both modalities): "kept" is 5/16, and the loss is over
    # those 5.
    keep = torch.zeros(16, dtype=torch.bool)
    keep[[0, 3, 4, 9, 15]] = True
    for name in ("drop_features", "bb_drop_features"):
        monkeypatch.setattr(opm_module, name, lambda h, q, *args: (h, keep, None))
    batch = first_batch(tiny_bundle)
    opm = build("opm", tiny_bundle, p_exe=1.0, rescale=rescale)
    opm.optimizer.step = lambda *args, **kwargs: None
    logs = opm.update(batch, step(epoch=6))
    assert logs["kept"] == approx(5 / 16)
    with torch.no_grad():   # train mode, as in the step: batch statistics over all 16, before the drop
        _, z, _ = opm.model(opm.inputs(batch))
    assert logs["loss"] == approx(F.cross_entropy(z[keep], batch["label"][keep]).item())
    assert build("opm", tiny_bundle, p_exe=0.0).update(batch, step(epoch=6))["kept"] == 1.0


@pytest.mark.parametrize("theta_gradient", [True, False])
def test_opm_theta_gradient_adds_the_official_theta_term_to_the_encoder_gradients(tiny_bundle, theta_gradient):
    # Official custom_autograd.backward returns theta as theta's gradient, so the official parameter gradient is that
    # of L(constant 1/(1 - theta) rescale) + theta^2 / 2 (d/dp theta^2/2 = theta dtheta/dp), theta built from the
    # non-detached confidence sums (official Classifier.forward / calcu_q / Modality_drop.execute_drop).
    with float64_default():
        variant = "official_compat" if theta_gradient else "paper"
        opm = build("opm", tiny_bundle, p_exe=1.0, variant=variant)
        assert opm.hp.theta_gradient is theta_gradient
        batch = first_batch64(tiny_bundle)
        ref = copy.deepcopy(opm.model)
        seen = capture_grads_at_step(opm)
        torch.manual_seed(3)
        opm.update(batch, step(epoch=6))
        torch.manual_seed(3)
        torch.rand(())  # the execution draw
        h = ref.features(opm.inputs(batch))
        w, b, y = ref.head.fc.weight.detach(), ref.head.fc.bias.detach(), batch["label"]
        names, dims = list(h), [h[m].shape[1] for m in h]
        bounds = [0, dims[0], sum(dims)]
        s = [torch.softmax(h[m] @ w[:, bounds[i]:bounds[i + 1]].t() + b / 2, 1)[torch.arange(len(y)), y].sum()
             for i, m in enumerate(names)]
        r = [torch.tanh(torch.relu(s[0] / s[1] - 1)), torch.tanh(torch.relu(s[1] / s[0] - 1))]
        q = [0.5 * (1 + 0.5 * ri) if ri > 0 else torch.zeros(()) for ri in r]
        theta = (dims[0] * q[0] + dims[1] * q[1]) / sum(dims)
        mask = torch.rand(len(y), 2) < torch.stack([1 - q[0], 1 - q[1]]).detach()
        keep = mask.any(1)
        out = torch.cat([h[m] * mask[:, i:i + 1] / (1 - theta.detach()) for i, m in enumerate(names)], 1)
        loss = F.cross_entropy(ref.head.fc(out[keep]), y[keep])
        params = dict(ref.named_parameters())
        plain = torch.autograd.grad(loss, list(params.values()), retain_graph=True, allow_unused=True)
        official = torch.autograd.grad(loss + theta ** 2 / 2, list(params.values()), allow_unused=True)
    assert theta.item() > 0 and not mask.all()  # a dropping step that drops features
    expected = official if theta_gradient else plain
    for (name, _), g in zip(params.items(), expected):
        close(seen[name], g if g is not None else torch.zeros_like(seen[name]), msg=name)
    extra = max((o - p).abs().max().item() for o, p in zip(official, plain) if o is not None)
    assert extra > 1e-6  # the theta term is visible in the encoder gradients


# BB's OPM (trainer_config.yaml: q_base 0.4, alpha 0.5, modulation_starts 0), dropping executed on every step.
BB_OPM = {"q_base": 0.4, "lam": 0.5, "p_exe": 1.0, "warmup_epochs": 0, "rescale": "bb", "ratio_form": "bb"}


def bb_training_step(h, fc, label, q_base, alpha, draw_mask):
    """BB's OPMTrainer.training_step (GeWu-Lab/BalanceBenchmark @4909c17, balancemm/trainer/OPM_trainer.py) with
    Unimodality_Calculate's concat branch and Modality_drop.execute_drop, line for line on given features; only the
    Bernoulli mask comes from ``draw_mask(q)`` (B, M). Returns (loss, theta, mask)."""
    softmax, relu, tanh = nn.Softmax(dim=1), nn.ReLU(inplace=True), nn.Tanh()
    modality_list = list(h)
    uni_res, now_size = {}, 0
    for modality in modality_list:
        size = h[modality].shape[1]
        uni_res[modality] = (torch.mm(h[modality], torch.transpose(fc.weight[:, now_size:now_size + size], 0, 1))
                             + fc.bias / len(modality_list))
        now_size += size
    scores, ratios, coeffs = {}, {}, {}
    for modality in modality_list:
        scores[modality] = sum([softmax(uni_res[modality])[i][label[i]] for i in range(uni_res[modality].shape[0])])
    for modality in modality_list:
        ratios[modality] = scores[modality]
        for modality_another in modality_list:
            if modality_another == modality:
                continue
            ratios[modality] /= (scores[modality_another] + 1e-5)
            ratios[modality] = tanh(relu(ratios[modality] - 1))

    def clip(a, b, c):
        return a if b < a else c if c < b else b

    for modality in modality_list:
        coeffs[modality] = q_base * (1 + alpha * ratios[modality]) if ratios[modality] > 0 else 0
        coeffs[modality] = clip(coeffs[modality], 0.0, 1.0)
    d_sum = sum(h[m].shape[1] for m in modality_list)
    theta = sum(h[m].shape[1] * coeffs[m] for m in modality_list) / d_sum
    mask = draw_mask([coeffs[m] for m in modality_list])
    cleaned = {}
    for idx, modality in enumerate(modality_list):
        cleaned_fea = torch.mul(h[modality], mask[:, idx:idx + 1].expand(-1, h[modality].shape[1]))
        cleaned[modality] = cleaned_fea / (1 - theta + 1e-5)
    update_flag = torch.sum(mask, dim=1) > 0
    out = fc(torch.cat([cleaned[m][update_flag] for m in modality_list], 1))
    return nn.CrossEntropyLoss()(out, label[update_flag]), theta, mask


def test_opm_bb_ratios_divide_the_second_score_by_the_first_ratio():
    # BB: ratios[m] = scores[m]; ratios[m] /= ... divides scores[m] in place, which the second modality then reads.
    r = bb_ratios(torch.tensor([20.0, 10.0], dtype=torch.float64))
    first = 20 / (10 + 1e-5)
    assert r.tolist() == [approx(first), approx(10 / (first + 1e-5))]
    q = opm_drop_probabilities(torch.tensor([20.0, 10.0]), q_base=0.4, lam=0.5, bb_ratio=True)
    assert q.tolist() == [approx(0.4 * (1 + 0.5 * math.tanh(first - 1))),
                          approx(0.4 * (1 + 0.5 * math.tanh(10 / first - 1)))]  # both dropped
    assert opm_drop_probabilities(torch.tensor([20.0, 10.0]), 0.4, 0.5)[1].item() == 0.0  # official: dominant only
    assert opm_drop_probabilities(torch.tensor([20.0, 3.0]), 0.4, 0.5, bb_ratio=True)[1].item() == 0.0  # 9 < 20


def test_opm_bb_form_matches_a_literal_port_of_bbs_training_step(tiny_bundle):
    # Gradients on the features, W and b (and so every parameter) of one executed dropping step, against BB's code.
    with float64_default():
        opm = build("opm", tiny_bundle, **BB_OPM)
        batch = first_batch64(tiny_bundle)
        ref = copy.deepcopy(opm.model)
        seen, features, h_seen = capture_grads_at_step(opm), opm.model.features, {}

        def keep_feature_grads(inputs):
            h = features(inputs)
            for m, v in h.items():
                v.retain_grad()
                h_seen[m] = v
            return h

        opm.model.features = keep_feature_grads
        torch.manual_seed(3)
        opm.update(batch, step(epoch=0))
        torch.manual_seed(3)
        torch.rand(())  # the execution draw
        h = ref.features(opm.inputs(batch))
        loss, theta, mask = bb_training_step(
            h, ref.head.fc, batch["label"], 0.4, 0.5,
            lambda q: (torch.rand(len(batch["label"]), 2) < 1 - torch.tensor([torch.as_tensor(v).item() for v in q])
                       ).double())
        params = dict(ref.named_parameters())
        grads = torch.autograd.grad(loss, [*h.values(), *params.values()], allow_unused=True)
    assert torch.as_tensor(theta).item() > 0 and not mask.bool().all()  # an executed step that drops features
    for m, g in zip(h, grads):
        close(h_seen[m].grad, g, msg=m)
    for (name, p), g in zip(params.items(), grads[len(h):]):
        close(seen[name], g if g is not None else torch.zeros_like(p), msg=name)
    # The theta path is visible: the official constant rescale, same q and draws, gives other gradients.
    with float64_default():
        custom = build("opm", tiny_bundle, **{**BB_OPM, "rescale": "official"})
        constant = capture_grads_at_step(custom)
        torch.manual_seed(3)
        custom.update(batch, step(epoch=0))
    for name in ("head.fc.weight", "head.fc.bias", "encoders.visual.trunk.stages.3.0.conv2.weight"):
        assert (constant[name] - seen[name]).abs().max().item() > 1e-6, name


def test_opm_bb_rescale_excludes_the_official_theta_gradient(tiny_bundle):
    with pytest.raises(ValueError, match="excludes the official theta_gradient=true"):
        build("opm", tiny_bundle, rescale="bb", theta_gradient=True)


# --- AGM -------------------------------------------------------------------------------------------------------------

def test_agm_coefficient_direction_and_cap():
    s = torch.tensor([0.5, 1.0])  # audio's loss is currently lower than its running mean: it is racing ahead
    s_bar = torch.tensor([1.0, 1.0])
    k = agm_coefficients(s, s_bar, alpha=1.5)
    assert k[0].item() == pytest.approx(math.exp(1.5 * (1 - math.exp(0.5))), rel=1e-5) and k[0] < 1
    assert k[1].item() == pytest.approx(math.exp(1.5 * (1 - math.exp(-0.5))), rel=1e-5) and k[1] > 1
    k = agm_coefficients(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 5.0]), alpha=0.1)
    assert k[0].item() == pytest.approx(math.exp(0.1 * 10.0), rel=1e-5)  # r_bar - r = e^5 - 1, capped at 10
    k3 = agm_coefficients(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 2.0]), alpha=1.0)
    r = [math.exp(1.5 * (2 - s)) for s in (1.0, 2.0, 3.0)]
    assert k3.tolist() == pytest.approx([math.exp(1 - v) for v in r], rel=1e-5)


def test_agm_exponent_is_capped_above_only():
    # min(r_bar - r, 10): a modality far ahead of its running mean gets k -> 0, not exp(-10 alpha).
    k = agm_coefficients(torch.tensor([0.0, 10.0]), torch.tensor([1.0, 1.0]), alpha=1.0)
    assert k[0].item() == 0.0   # r_a = e^10: exp(1 - e^10) underflows to 0
    assert k[1].item() == approx(math.exp(1 - math.exp(-10.0)))


def test_agm_modality_loss_floors_the_true_class_probability_at_1e_8():
    # s_m = mean_i -log max(p_i[y_i], 1e-8) (official CREMAD_main.py): a sample whose true class has probability
    # e^-100 counts -log 1e-8 = 18.42..., not 100.
    phi = {"audio": torch.tensor([[100.0, 0.0], [0.0, 0.0]]), "visual": torch.tensor([[0.0, 3.0], [0.0, 0.0]])}
    s = modality_losses(phi, torch.tensor([1, 0]))
    floor = -math.log(1e-8)
    expected = torch.tensor([(floor + math.log(2)) / 2, (math.log(1 + math.exp(-3)) + math.log(2)) / 2])
    close(s, expected)


def test_agm_hooks_route_scaled_gradients_to_each_pass():
    torch.manual_seed(0)
    z_full, z_ao, z_vo = (torch.randn(4, 3, requires_grad=True) for _ in range(3))
    names = ("audio", "visual")
    outputs = {frozenset(names): z_full, frozenset({"audio"}): z_ao, frozenset({"visual"}): z_vo}
    phi = shapley_outputs(outputs, names)
    close(phi["audio"], 0.5 * (z_full - z_vo + z_ao))
    close(phi["audio"] + phi["visual"], z_full)
    k_a, k_v = 0.6, 1.7
    scalers = {"audio": GradScale(), "visual": GradScale()}
    scalers["audio"].scale.fill_(k_a)
    scalers["visual"].scale.fill_(k_v)
    g = torch.randn(4, 3)
    (sum(scalers[m](phi[m]) for m in names) * g).sum().backward()
    close(z_full.grad, 0.5 * (k_a + k_v) * g)
    close(z_ao.grad, 0.5 * (k_a - k_v) * g)
    close(z_vo.grad, 0.5 * (k_v - k_a) * g)


def test_agm_three_modality_shapley_is_efficient():
    names = ("a", "b", "c")
    torch.manual_seed(0)
    outputs = {frozenset(s): torch.randn(2, 3) for s in (("a",), ("b",), ("c",), ("a", "b"), ("a", "c"), ("b", "c"),
                                                        ("a", "b", "c"))}
    phi = shapley_outputs(outputs, names)
    close(sum(phi.values()), outputs[frozenset(names)])
    expected_a = (outputs[frozenset("a")] / 3 + (outputs[frozenset("ab")] - outputs[frozenset("b")]) / 6
                  + (outputs[frozenset("ac")] - outputs[frozenset("c")]) / 6
                  + (outputs[frozenset("abc")] - outputs[frozenset("bc")]) / 3)
    close(phi["a"], expected_a)


def test_agm_scores_the_full_set_in_the_current_mode_and_the_subsets_in_eval_mode(tiny_bundle):
    # The official GradMod runs the modality-dropped passes under eval(); in train mode they would move BatchNorm.
    agm = build("agm", tiny_bundle)
    agm.train()
    calls = []
    forward = agm.model.forward
    agm.model.forward = lambda x, drop=(): (calls.append((agm.model.training, tuple(drop))), forward(x, drop=drop))[1]
    agm.subset_outputs(agm.inputs(first_batch(tiny_bundle)))
    assert calls == [(True, ()), (False, ("visual",)), (False, ("audio",))] and agm.model.training


def test_agm_trains_three_modalities_with_seven_subsets():
    cls = get_dataset("synthetic")
    bundle = cls.build(resolve("data", cls.HPARAMS, "synthetic", {**TINY_DATA, "modalities": 3}))
    agm = build("agm", bundle)
    batch = first_batch(bundle)
    assert len(agm.subset_outputs(agm.inputs(batch))) == 7
    logs = agm.update(batch, step())
    assert {"k_audio", "k_visual", "k_text"} <= set(logs) and math.isfinite(logs["loss"])
    agm.eval()
    pred = agm.predict(batch)
    close(sum(pred.per_modality.values()), pred.fused)


def test_agm_running_mean_is_updated_after_k_and_checkpointed(tiny_bundle):
    batch = first_batch(tiny_bundle)
    agm = build("agm", tiny_bundle)
    agm.train()
    shadow = copy.deepcopy(agm)
    s1 = modality_losses(shapley_outputs(shadow.subset_outputs(agm.inputs(batch)), agm.modalities), batch["label"])
    logs = agm.update(batch, step())
    expected_k = agm_coefficients(s1, torch.zeros(2), agm.hp.alpha)  # running means are 0 before the first step
    assert [logs["k_audio"], logs["k_visual"]] == pytest.approx(expected_k.tolist(), rel=1e-5)
    close(agm.loss_mean, s1)
    assert agm.scalers["audio"].scale.item() == pytest.approx(logs["k_audio"], rel=1e-6)
    clone = build("agm", tiny_bundle)
    clone.load_checkpoint_state(agm.checkpoint_state())
    close(clone.loss_mean, agm.loss_mean)
    assert int(clone.iterations) == 1 and clone.scalers["visual"].scale.item() == approx(logs["k_visual"])


def agm_grads(bundle, shrink_features=False, **hp):
    """The gradients one AGM step hands to the optimizer (after any clipping), on the first batch."""
    agm = build("agm", bundle, **hp)
    if shrink_features:  # small features make the head's weight gradient small beside its bias gradient
        for encoder in agm.model.encoders.values():
            encoder.register_forward_hook(lambda module, args, out: 0.01 * out)
    seen = capture_grads_at_step(agm)
    agm.update(first_batch(bundle), step())
    return seen


def test_agm_clips_every_gradient_to_clip_norm_when_a_head_weight_gradient_exceeds_the_trigger(tiny_bundle):
    raw = agm_grads(tiny_bundle, clip_trigger=1e9)
    assert raw["head.fc.weight"].abs().max() > 0.1
    clipped = agm_grads(tiny_bundle, clip_trigger=0.1, clip_norm=1e-3)
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in raw.values())).item()
    assert norm > 1.0   # so neither the default bound 1.0 nor no clipping gives the 1e-3 one
    for name, g in raw.items():   # clip_grad_norm_: g * max_norm / (total norm + 1e-6), over all parameters
        close(clipped[name], g * (1e-3 / (norm + 1e-6)), msg=name)


def test_agm_clip_trigger_reads_the_head_weight_gradient_not_the_bias(tiny_bundle):
    raw = agm_grads(tiny_bundle, shrink_features=True, clip_trigger=1e9)
    assert raw["head.fc.bias"].abs().max() > 0.02 > raw["head.fc.weight"].abs().max()
    kept = agm_grads(tiny_bundle, shrink_features=True, clip_trigger=0.02, clip_norm=1e-3)
    for name, g in raw.items():
        torch.testing.assert_close(kept[name], g, rtol=0, atol=0, msg=name)


def test_agm_clip_triggers_only_above_the_threshold_not_at_it(tiny_bundle):
    # "exceeds": a head weight gradient entry exactly equal to clip_trigger leaves every gradient as it is.
    raw = agm_grads(tiny_bundle, clip_trigger=1e9)
    largest = raw["head.fc.weight"].abs().max().item()
    kept = agm_grads(tiny_bundle, clip_trigger=largest, clip_norm=1e-3)
    for name, g in raw.items():
        torch.testing.assert_close(kept[name], g, rtol=0, atol=0, msg=name)
    below = torch.nextafter(torch.tensor(largest), torch.tensor(0.0)).item()   # the next float32 down
    clipped = agm_grads(tiny_bundle, clip_trigger=below, clip_norm=1e-3)
    assert not torch.equal(clipped["head.fc.weight"], raw["head.fc.weight"]), "just below the largest entry clips"


def test_agm_next_step_trains_batchnorm_after_the_eval_mode_subset_passes(tiny_bundle):
    # The unimodal passes run in eval mode; the model must be back in train mode for the next step's full pass.
    batch = first_batch(tiny_bundle)
    agm = build("agm", tiny_bundle)
    agm.train()
    agm.update(batch, step())
    assert agm.model.training
    stats = {n: b.clone() for n, b in agm.model.named_buffers() if n.endswith("running_mean")}
    agm.update(batch, step(i=1))
    assert all(not torch.equal(b, stats[n]) for n, b in agm.model.named_buffers() if n in stats)


def test_agm_hooks_keep_the_last_coefficients_after_the_window(tiny_bundle):
    # Official update_scale runs only inside the window; after it the hooks keep the last k, not 1.
    batch = first_batch(tiny_bundle)
    agm = build("agm", tiny_bundle, mod_start=0, mod_end=0)
    last = agm.update(batch, step(epoch=0))
    after = agm.update(batch, step(epoch=1, i=1))
    for m in ("audio", "visual"):
        assert agm.scalers[m].scale.item() == approx(last[f"k_{m}"]) and last[f"k_{m}"] != 1.0
        assert after[f"k_{m}"] != last[f"k_{m}"]


def test_agm_running_mean_averages_every_iteration_since_training_began(tiny_bundle, monkeypatch):
    losses = [torch.tensor([1.0 + 0.1 * i, 2.0 - 0.05 * i]) for i in range(13)]
    feed = iter(losses)
    monkeypatch.setattr("baselines.agm.modality_losses", lambda phi, labels: next(feed))
    batch = first_batch(tiny_bundle)
    agm = build("agm", tiny_bundle)
    for i, s in enumerate(losses):
        logs = agm.update(batch, step(epoch=i // 4, i=i % 4))
        previous = torch.stack(losses[:i]).mean(0) if i else torch.zeros(2)
        expected = agm_coefficients(s, previous, agm.hp.alpha)
        assert [logs["k_audio"], logs["k_visual"]] == [approx(v) for v in expected.tolist()], i
    close(agm.loss_mean, torch.stack(losses).mean(0))
    assert int(agm.iterations) == 13


def test_agm_step_in_float64_keeps_float64_outputs_and_losses(tiny_bundle):
    with float64_default():
        agm = build("agm", tiny_bundle)
        batch = first_batch64(tiny_bundle)
        outputs = copy.deepcopy(agm).subset_outputs(agm.inputs(batch))   # a copy: the pass moves BatchNorm stats
        s = modality_losses(shapley_outputs(outputs, agm.modalities), batch["label"])
        logs = agm.update(batch, step())
    assert {z.dtype for z in outputs.values()} == {torch.float64} and s.dtype == torch.float64
    assert agm.loss_mean.dtype == torch.float64   # a float32 cast of the logits rounded s_m, k_m and the loss
    assert [logs["k_audio"], logs["k_visual"]] == agm_coefficients(s, torch.zeros(2), agm.hp.alpha).tolist()


def official_agm_window(epoch0: int, starts: int, ends: int) -> bool:
    """The AGM scripts' test ``modulation_starts <= epoch <= modulation_ends`` on their 1-based epoch of our epoch0."""
    return starts <= epoch0 + 1 <= ends


@pytest.mark.parametrize("epoch, inside", [(0, True), (1499, True), (1500, False)])
def test_agm_default_window_is_the_authors_1_based_window_0_to_1500(tiny_bundle, epoch, inside):
    # Official run/CREMAD_main.py counts epochs from 1; the author's window is 0-1500 (lihongcs/AGM issue #10).
    assert official_agm_window(epoch, 0, 1500) == inside
    batch = first_batch(tiny_bundle)
    agm = build("agm", tiny_bundle)
    logs = agm.update(batch, step(epoch=epoch))
    scale = agm.scalers["audio"].scale.item()
    if inside:
        assert scale == pytest.approx(logs["k_audio"], rel=1e-6) and scale != 1.0
    else:
        assert scale == 1.0  # never set: the hooks keep their initial 1


# --- PMR -------------------------------------------------------------------------------------------------------------

def test_pmr_prototype_logits_are_negative_euclidean_distances():
    h = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    c = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    close(prototype_logits(h, c), -torch.tensor([[0.0, 3.0, 4.0], [5.0, 4.0, 3.0]]))


def test_pmr_prototype_logits_are_exact_for_a_feature_on_its_prototype():
    # More than 25 rows would make cdist's default take the |x|^2 + |c|^2 - 2 x.c shortcut, whose float32 rounding
    # at |x| ~ 1e3 leaves a distance of order 1 where the feature sits on the prototype.
    torch.manual_seed(0)
    c = 100.0 * torch.randn(4, 64)
    h = c[torch.arange(32) % 4]
    close(prototype_logits(h, c)[torch.arange(32), torch.arange(32) % 4], torch.zeros(32), rtol=0, atol=0)

def test_pmr_extra_term_goes_to_the_weaker_modality():
    assert weaker_modality({"audio": torch.tensor(6.0), "visual": torch.tensor(3.0)}) == "visual"
    assert weaker_modality({"audio": torch.tensor(2.0), "visual": torch.tensor(3.0)}) == "audio"
    assert weaker_modality({"audio": torch.tensor(3.0), "visual": torch.tensor(3.0)}) is None


def test_pmr_step_loss_is_ce_plus_alpha_prototype_ce_of_the_weaker_modality(tiny_bundle):
    batch = first_batch(tiny_bundle)
    pmr = build("pmr", tiny_bundle, alpha=2.0)
    labels = batch["label"]
    # Audio prototypes sit on the audio features' class means (confident); visual prototypes are all equal (chance).
    pmr.train()
    with torch.no_grad():
        h = copy.deepcopy(pmr).model.features(pmr.inputs(batch))
        onehot = F.one_hot(labels, 4).float()
        pmr.prototypes("audio").copy_((onehot.t() @ h["audio"]) / onehot.sum(0).clamp_min(1)[:, None])
        pmr.prototypes("visual").zero_()
    shadow = copy.deepcopy(pmr)
    h, z, _ = shadow.model(shadow.inputs(batch))
    pi_v = prototype_logits(h["visual"], pmr.prototypes("visual"))
    expected = F.cross_entropy(z, labels) + 2.0 * F.cross_entropy(pi_v, labels)
    logs = pmr.update(batch, step(epoch=0))
    assert logs["proto_ratio"] > 1
    assert logs["loss"] == pytest.approx(expected.item(), rel=1e-5)
    outside = build("pmr", tiny_bundle, mod_end=-1)
    assert "proto_ratio" not in outside.update(batch, step(epoch=0))


@pytest.mark.parametrize("epoch, inside", [(1, False), (2, True), (4, True), (5, False)])
def test_pmr_prototype_term_applies_in_the_inclusive_window_only(tiny_bundle, epoch, inside):
    batch = first_batch(tiny_bundle)
    pmr = build("pmr", tiny_bundle, mod_start=2, mod_end=4)
    pmr.on_epoch_start(0, Loaders(train=[batch]))
    logs = pmr.update(batch, step(epoch=epoch))
    assert ("proto_ratio" in logs) == inside

def test_pmr_prototypes_use_the_first_tenth_of_batches_then_ema(tiny_bundle):
    pmr = build("pmr", tiny_bundle, mu=0.2)
    pmr.model.features = lambda x: dict(x)  # the batch carries the features themselves
    d = pmr.prototypes("audio").shape[1]

    def batch(value, labels):
        n = len(labels)
        feats = value * torch.ones(n, d) + torch.arange(n, dtype=torch.float32)[:, None]
        return {"audio": feats, "visual": -feats, "label": torch.tensor(labels)}

    # 10 batches -> only the first one counts; class 3 is absent and keeps its prototype (zero at first).
    first = [batch(1.0, [0, 0, 1, 2])] + [batch(100.0, [3, 3, 3, 3])] * 9
    loaders = Loaders(train=first)
    pmr.on_epoch_start(0, loaders)
    c0 = pmr.prototypes("audio").clone()
    close(c0[0], torch.full((d,), 1.5))
    close(c0[1], torch.full((d,), 3.0))
    close(c0[3], torch.zeros(d))
    close(pmr.prototypes("visual")[2], torch.full((d,), -4.0))
    pmr.on_epoch_start(1, Loaders(train=[batch(50.0, [0, 1, 2, 3])]))  # already computed: no second pass
    close(pmr.prototypes("audio"), c0)
    later = Loaders(train=[batch(10.0, [0, 1, 2, 3])])
    pmr.on_epoch_end(0, later)  # after epoch 0: replaced, no EMA (official `epoch <= 0`)
    c1 = pmr.prototypes("audio").clone()
    close(c1[:, 0], torch.tensor([10.0, 11.0, 12.0, 13.0]))
    pmr.on_epoch_end(1, Loaders(train=[batch(20.0, [0, 1, 2, 3])]))
    close(pmr.prototypes("audio")[:, 0], 0.8 * torch.tensor([20.0, 21.0, 22.0, 23.0])
                               + 0.2 * c1[:, 0])
    clone = build("pmr", tiny_bundle)
    clone.load_checkpoint_state(pmr.checkpoint_state())
    close(clone.prototypes("audio"), pmr.prototypes("audio"))
    assert bool(clone.prototypes_ready)


def test_pmr_prototypes_use_floor_of_a_tenth_of_the_batches(tiny_bundle):
    # 19 batches: floor(19 / 10) = 1 batch counts, so class 3 (only in the second batch) is never seen.
    pmr = build("pmr", tiny_bundle)
    pmr.model.features = lambda x: dict(x)
    d = pmr.prototypes("audio").shape[1]

    def batch(value, labels):
        feats = value * torch.ones(len(labels), d)
        return {"audio": feats, "visual": -feats, "label": torch.tensor(labels)}

    pmr.on_epoch_start(0, Loaders(train=[batch(1.0, [0, 1, 2])] + [batch(7.0, [3, 3, 3])] * 18))
    close(pmr.prototypes("audio")[:, 0], torch.tensor([1.0, 1.0, 1.0, 0.0]))

def test_pmr_prototype_split_val_uses_every_validation_batch_as_the_official_ave_run(tiny_bundle):
    # Official AVE: calculate_prototype over the whole val_dataloader (no 10% cut); the training batches are unread.
    pmr = build("pmr", tiny_bundle, prototype_split="val")
    pmr.model.features = lambda x: dict(x)
    d = pmr.prototypes("audio").shape[1]

    def batch(value, labels):
        feats = value * torch.ones(len(labels), d)
        return {"audio": feats, "visual": -feats, "label": torch.tensor(labels)}

    val = [batch(1.0, [0, 1, 2])] + [batch(7.0, [3, 3, 3])] * 18
    pmr.on_epoch_start(0, Loaders(train=[batch(50.0, [0, 1, 2, 3])] * 20, val=val))
    close(pmr.prototypes("audio")[:, 0], torch.tensor([1.0, 1.0, 1.0, 7.0]))
    with pytest.raises(ValueError, match="pmr.prototype_split='val'.*serves no such split"):
        pmr.on_epoch_end(0, Loaders(train=val))


def test_pmr_ave_defaults_are_the_official_ave_concat_run():
    # bash.sh: main_Prototype_grad.py --dataset AVE --fusion_method concat --alpha 2.0 --momentum_coef 0.0
    # --modulation_ends 70; the prototypes stay on the training set unless asked (the paper's class means).
    cls = get_method("pmr")
    hp = resolve("pmr", method_hparams(cls), "ave", {}, variants=cls.VARIANTS)
    assert (hp.alpha, hp.mu, hp.mod_end, hp.prototype_split) == (2.0, 0.0, 70, "train")


def test_pmr_prototype_pass_runs_in_eval_mode_and_restores_training_mode(tiny_bundle):
    # Train-mode features would move BatchNorm's running statistics and differ from the official eval-mode pass.
    pmr = build("pmr", tiny_bundle)
    pmr.train()
    modes = []
    features = pmr.model.features
    pmr.model.features = lambda x: (modes.append(pmr.model.training), features(x))[1]
    pmr.on_epoch_start(0, Loaders(train=[first_batch(tiny_bundle)]))
    assert modes == [False] and pmr.model.training


def test_pmr_class_absent_from_the_prototype_batches_keeps_its_previous_prototype(tiny_bundle):
    # A class with no sample in the first tenth of the batches keeps its prototype, smoothed or not: the EMA blends
    # the old prototype with itself, never with a zero class mean.
    pmr = build("pmr", tiny_bundle, mu=0.2)
    pmr.model.features = lambda x: dict(x)
    d = pmr.prototypes("audio").shape[1]

    def loaders(value, labels):
        feats = value * torch.ones(len(labels), d)
        return Loaders(train=[{"audio": feats, "visual": -feats, "label": torch.tensor(labels)}])

    pmr.on_epoch_start(0, loaders(3.0, [0, 1, 2, 3]))
    pmr.on_epoch_end(0, loaders(5.0, [0, 1, 2]))  # replaced (no EMA after epoch 0); class 3 absent
    close(pmr.prototypes("audio")[:, 0], torch.tensor([5.0, 5.0, 5.0, 3.0]))
    pmr.on_epoch_end(1, loaders(10.0, [0, 1, 2]))  # EMA: 0.8 * 10 + 0.2 * 5 for the seen classes
    close(pmr.prototypes("audio")[:, 0], torch.tensor([9.0, 9.0, 9.0, 3.0]))
    close(pmr.prototypes("visual")[3], torch.full((d,), -3.0))


def test_pmr_bb_smooths_the_prototypes_after_epoch_0_already(tiny_bundle):
    pmr = build("pmr", tiny_bundle, mu=0.5, ema_from=0)
    pmr.model.features = lambda x: dict(x)
    d = pmr.prototypes("audio").shape[1]

    def loaders(value):
        feats = value * torch.ones(4, d)
        return Loaders(train=[{"audio": feats, "visual": -feats, "label": torch.tensor([0, 1, 2, 3])}])

    pmr.on_epoch_start(0, loaders(1.0))  # the untrained model's prototypes: 1
    pmr.on_epoch_end(0, loaders(10.0))
    # BB's prototypes for epoch 1 = 0.5 * 10 + 0.5 * 1 (the official code keeps 10 until after epoch 1).
    close(pmr.prototypes("audio"), torch.full((4, d), 5.5))


def test_pmr_prototypes_logits_and_loss_stay_float64_in_float64_runs(tiny_bundle):
    with float64_default():
        pmr = build("pmr", tiny_bundle)
        batch = first_batch64(tiny_bundle)
        pmr.on_epoch_start(0, Loaders(train=[batch]))
        assert pmr.prototypes("audio").dtype == torch.float64
        with torch.no_grad():
            h, z, _ = pmr.model(pmr.inputs(batch))
            pi = {m: prototype_logits(h[m], pmr.prototypes(m)) for m in ("audio", "visual")}
        assert pi["audio"].dtype == torch.float64
        logs = pmr.update(batch, step(epoch=0))
    weak = "visual" if logs["proto_ratio"] > 1 else "audio"
    expected = F.cross_entropy(z, batch["label"]) + pmr.hp.alpha * F.cross_entropy(pi[weak], batch["label"])
    assert logs["loss"] == expected.item()   # a float32 loss would differ from the float64 one at ~1e-8


@pytest.mark.parametrize("kind, layer2, recovered", [("visual", (28, 28), (28, 28)), ("audio", (33, 38), (33, 38)),
                                                     ("audio", (33, 157), (33, 102))])
def test_pmr_compress_recover_has_the_official_shapes(kind, layer2, recovered):
    # Official models/backbone.py: visual 224x224 frames and the 257x299 CREMA-D spectrogram give these layer2 maps;
    # the bottleneck squeezes them to 1 x 1 (width 512 = 4 x 128) and recovers the layer2 size. A longer
    # spectrogram (AUG's 1250 frames) keeps a wider bottleneck and recovers a wider map.
    block = CompressRecover(8, kind)
    x = torch.randn(2, 8, *layer2)
    squeezed = block.compress(x)
    assert squeezed.shape[:2] == (2, 32) and squeezed.shape[2] == 1
    assert tuple(block(x).shape) == (2, 8, *recovered)
    assert [type(m).__name__ for m in block.compress] == ["Conv2d", "Conv2d", "ReLU", "Conv2d", "Conv2d", "ReLU"]
    assert all(isinstance(m, nn.ConvTranspose2d) for m in block.recover) and len(block.recover) == 4
    with pytest.raises(ValueError, match="at least 25"):
        block(torch.randn(1, 8, 24, 40))


def test_pmr_official_compat_builds_the_compress_backbone_and_trains_it():
    cls = get_dataset("synthetic")
    big = cls.build(resolve("data", cls.HPARAMS, "synthetic",
                            {**TINY_DATA, "n_train": 8, "audio_shape": [1, 200, 208],
                             "visual_shape": [3, 1, 200, 200]}))
    plain = build("pmr", big)
    pmr = build("pmr", big, variant="official_compat")
    assert pmr.hp.backbone == "compress" and plain.hp.backbone == "resnet18"
    for m in ("audio", "visual"):
        stages = pmr.model.encoders[m].trunk.stages
        assert len(stages) == 5 and isinstance(stages[2], CompressRecover)
        assert not any(isinstance(s, CompressRecover) for s in plain.model.encoders[m].trunk.stages)
    # Every parameter, the bottleneck's included, is in the optimizer and moves in a step.
    optimized = {id(p) for g in pmr.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for p in pmr.parameters()}
    before = {n: p.detach().clone() for n, p in pmr.model.named_parameters()}
    pmr.on_epoch_start(0, Loaders(train=big.loader("train", batch_size=4, train=False, seed=0)))
    pmr.update(first_batch(big, batch_size=4), step(epoch=0))
    moved = [n for n, p in pmr.model.named_parameters() if not torch.equal(p, before[n])]
    assert any("stages.2.compress" in n for n in moved) and any("stages.2.recover" in n for n in moved)
    pred = pmr.predict(first_batch(big, split="test", batch_size=4))
    assert pred.fused.shape == (4, big.task.num_classes)
