"""Fusion heads: shapes for 2 and 3 modalities, the split-head identity, and the plain-CE step of the Concat, Sum
and Weight rows built on them."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from baselines.base import StepInfo
from baselines.heads import build_head
from baselines.registry import get_method
from benchmarks.config import method_hparams
from core.hparams import resolve
from tests.conftest import first_batch, make_context
from tests.numeric import close, tol

K = 5


def features(dims):
    torch.manual_seed(0)
    return {n: torch.randn(4, d) for n, d in dims.items()}


@pytest.mark.parametrize("dims", [{"audio": 8, "visual": 6}, {"audio": 8, "visual": 6, "text": 3}])
@pytest.mark.parametrize("kind", ["concat", "sum", "weight", "film", "gated", "separate"])
def test_head_shapes(kind, dims):
    head = build_head(kind, dims, K)
    z, z_uni = head(features(dims))
    assert z.shape == (4, K)
    if head.has_unimodal:
        assert set(z_uni) == set(dims) and all(v.shape == (4, K) for v in z_uni.values())
    else:
        assert z_uni is None


@pytest.mark.parametrize("dims", [{"audio": 8, "visual": 6}, {"audio": 8, "visual": 6, "text": 3}])
def test_concat_split_head_logits_sum_to_fused(dims):
    head = build_head("concat", dims, K)
    h = features(dims)
    z, z_uni = head(h)
    close(sum(z_uni.values()), z)
    w, b = head.fc.weight, head.fc.bias
    close(z_uni["audio"], h["audio"] @ w[:, :8].t() + b / len(dims))
    close(z_uni["visual"], h["visual"] @ w[:, 8:14].t() + b / len(dims))


def test_sum_and_weight_heads_combine_unimodal_logits():
    dims = {"audio": 8, "visual": 6}
    h = features(dims)
    z, z_uni = build_head("sum", dims, K)(h)
    close(z, z_uni["audio"] + z_uni["visual"])
    head = build_head("weight", dims, K)
    with torch.no_grad():
        head.mix.copy_(torch.tensor([0.0, torch.log(torch.tensor(3.0))]))
    z, z_uni = head(h)
    close(z, 0.25 * z_uni["audio"] + 0.75 * z_uni["visual"])


def test_film_conditions_visual_on_audio():
    dims = {"audio": 8, "visual": 6}
    head = build_head("film", dims, K)
    h = features(dims)
    gamma, beta = head.film(h["audio"]).chunk(2, dim=1)
    close(head(h)[0], head.out(gamma * h["visual"] + beta))


def test_gated_head_gates_the_last_modality_by_a_sigmoid_of_the_others():
    dims = {"audio": 8, "visual": 6}
    head = build_head("gated", dims, K)
    h = features(dims)
    expected = head.out(torch.sigmoid(head.fc_x(h["audio"])) * head.fc_y(h["visual"]))
    close(head(h)[0], expected)
    tanh_gate = head.out(torch.tanh(head.fc_x(h["audio"])) * head.fc_y(h["visual"]))
    assert not torch.allclose(expected, tanh_gate, **tol()), "the crafted features tell sigmoid from tanh"


@pytest.mark.parametrize("name, head", [("joint", "concat"), ("sum", "sum"), ("weight", "weight"), ("film", "film"),
                                        ("gated", "gated")])
def test_fusion_rows_step_on_the_plain_cross_entropy_of_their_heads_fused_logits(name, head, tiny_bundle):
    cls = get_method(name)
    torch.manual_seed(0)
    method = cls(tiny_bundle.task, resolve(name, method_hparams(cls), tiny_bundle.task.dataset, {}), make_context())
    assert method.HEAD == head
    method.train()
    batch = first_batch(tiny_bundle)
    ref = copy.deepcopy(method.model)
    seen = {}
    method.optimizer.step = lambda *a, **k: seen.update(
        {n: p.grad.clone() for n, p in method.model.named_parameters() if p.grad is not None})
    logs = method.update(batch, StepInfo(epoch=0, step=0, steps_per_epoch=4, epochs=2))
    _, z, _ = ref(method.inputs(batch))
    loss = F.cross_entropy(z, batch["label"])
    loss.backward()
    expected = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    # Every parameter learns, the weight head's mixing vector included.
    assert set(seen) == set(expected) == {n for n, _ in ref.named_parameters()}
    assert logs["loss"] == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
    for n, g in expected.items():
        close(seen[n], g, msg=n)


def test_film_and_gated_heads_condition_the_last_modality_on_all_the_others():
    dims = {"audio": 8, "visual": 6, "text": 3}
    h = features(dims)
    for kind in ("film", "gated"):
        head = build_head(kind, dims, K)
        changed = {**h, "visual": h["visual"] + 1.0}
        assert not torch.allclose(head(changed)[0], head(h)[0], **tol()), f"{kind}: the middle modality conditions too"
    # OGM-GE fusion_modules.GatedFusion: dim=512 between the gate and the output layer.
    assert build_head("gated", {"audio": 8, "visual": 6}, K).fc_x.out_features == 512


@pytest.mark.parametrize("kind, unimodal_layers", [("sum", "heads"), ("separate", "uni")])
def test_unimodal_logits_carry_gradients_to_their_own_features(kind, unimodal_layers):
    # OGM-GE SumFusion returns x_out, y_out, out undetached: a loss on a summand trains its encoder (and the
    # separate heads' unimodal logits train theirs).
    dims = {"audio": 8, "visual": 6}
    head = build_head(kind, dims, K)
    h = {n: v.clone().requires_grad_() for n, v in features(dims).items()}
    _, z_uni = head(h)
    z_uni["audio"].sum().backward()
    close(h["audio"].grad, getattr(head, unimodal_layers)["audio"].weight.sum(0).expand(4, -1))
    assert h["visual"].grad is None


@pytest.mark.parametrize("name", ["joint", "film", "gated"])
def test_predict_reports_the_heads_own_unimodal_logits_or_the_others_zeroed(name, tiny_bundle):
    cls = get_method(name)
    torch.manual_seed(0)
    method = cls(tiny_bundle.task, resolve(name, method_hparams(cls), tiny_bundle.task.dataset, {}), make_context())
    method.eval()
    with torch.no_grad():
        for module in method.model.head.modules():
            if isinstance(module, torch.nn.Linear):
                module.bias.uniform_(-1.0, 1.0)   # OGM-GE's init zeroes them, so b / M would equal b
    batch = first_batch(tiny_bundle)
    pred = method.predict(batch)
    with torch.no_grad():
        h = method.model.features(method.inputs(batch))
        head = method.model.head
        close(pred.fused, head(h)[0])
        for m in h:
            if head.has_unimodal:
                expected = head.split_logits(h)[m]   # the concat head's W_m h_m + b / M, not its full bias
            else:
                expected = head({n: (v if n == m else torch.zeros_like(v)) for n, v in h.items()})[0]
            close(pred.per_modality[m], expected, msg=m)
        assert not torch.allclose(pred.per_modality["audio"], pred.per_modality["visual"], **tol())


def test_fusion_model_zeroes_only_the_dropped_inputs_and_starts_from_ogm_ges_init(tiny_bundle):
    torch.manual_seed(0)
    method = get_method("joint")(tiny_bundle.task, resolve("joint", method_hparams(get_method("joint")),
                                                           tiny_bundle.task.dataset, {}), make_context())
    model = method.model.eval()
    x = method.inputs(first_batch(tiny_bundle))
    with torch.no_grad():
        h = model.features(x, drop=["audio"])
        close(h["audio"], model.encoders["audio"](torch.zeros_like(x["audio"])))
        close(h["visual"], model.encoders["visual"](x["visual"]))
    assert torch.count_nonzero(model.head.fc.bias) == 0, "weight_init zeroes the head's bias"


# --- the separate heads' fused logits, each step's own gradients, predict under autocast ------------------------------
def test_separate_heads_fuse_the_concatenation_in_the_declared_order():
    # MMPareto code/models/models.py AVClassifier: fusion over torch.cat((a, v), 1), audio first.
    dims = {"audio": 8, "visual": 6, "text": 3}
    head = build_head("separate", dims, K)
    h = features(dims)
    z, z_uni = head(h)
    w, b = head.fused.weight, head.fused.bias
    close(z, h["audio"] @ w[:, :8].t() + h["visual"] @ w[:, 8:14].t() + h["text"] @ w[:, 14:].t() + b)
    for n in dims:
        close(z_uni[n], head.uni[n](h[n]), msg=n)


@pytest.mark.parametrize("name", ["joint", "sum", "weight", "film", "gated", "uniform", "unimodal"])
def test_each_update_steps_on_its_own_batchs_gradients_not_an_accumulation(name, tiny_bundle):
    # zero_grad before every backward: with the step frozen (the parameters stay), the same batch twice gives the same
    # gradients twice, not twice the gradient.
    cls = get_method(name)
    torch.manual_seed(0)
    method = cls(tiny_bundle.task, resolve(name, method_hparams(cls), tiny_bundle.task.dataset, {}), make_context())
    method.train()
    batch = first_batch(tiny_bundle)
    seen = []
    method.optimizer.step = lambda *a, **k: seen.append(
        {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None})
    for step in range(2):
        method.update(batch, StepInfo(epoch=0, step=step, steps_per_epoch=4, epochs=2))
    assert len(seen) == 2 and set(seen[0]) == set(seen[1]) and seen[0]
    for n, g in seen[0].items():
        close(seen[1][n], g, msg=n)


@pytest.mark.parametrize("name", ["joint", "gated", "unimodal"])
def test_predict_runs_under_the_runs_autocast(name, tiny_bundle):
    # train.amp: evaluation takes the bf16 autocast path that training takes (TrainContext.autocast), not float32.
    cls = get_method(name)
    torch.manual_seed(0)
    ctx = make_context()
    ctx.amp = True
    method = cls(tiny_bundle.task, resolve(name, method_hparams(cls), tiny_bundle.task.dataset, {}), ctx)
    method.eval()
    batch = first_batch(tiny_bundle)
    pred = method.predict(batch)
    again = method.predict(batch).fused
    ctx.amp = False
    full = method.predict(batch).fused
    assert pred.fused.dtype == torch.float32
    assert torch.equal(pred.fused, again), "deterministic"
    assert not torch.allclose(pred.fused, full, **tol(torch.float32)), "bf16 autocast, not a float32 forward"
    # The same outputs up to bf16 rounding compounded through the tiny network's layers.
    close(pred.fused, full, rtol=5e-2, atol=5e-2)


def test_a_dropped_modality_is_a_zero_input_not_zero_features(tiny_bundle):
    # FusionModel's drop (P1, AGM, G-Blending's unimodal passes): the encoder sees zeros; its features of a zero input
    # are not zero once BatchNorm has a shift (at OGM-GE's init they happen to be, which hides the difference).
    torch.manual_seed(0)
    method = get_method("joint")(tiny_bundle.task, resolve("joint", method_hparams(get_method("joint")),
                                                           tiny_bundle.task.dataset, {}), make_context())
    model = method.model.eval()
    with torch.no_grad():
        for module in model.encoders["audio"].modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.bias.uniform_(0.1, 0.5)
        x = method.inputs(first_batch(tiny_bundle))
        expected = model.encoders["audio"](torch.zeros_like(x["audio"]))
        assert bool(expected.abs().sum() > 0)
        h = model.features(x, drop=["audio"])
        close(h["audio"], expected)
        close(h["visual"], model.encoders["visual"](x["visual"]))
        _, z, _ = model(x, drop=["audio"])
        close(z, model.head(h)[0])
