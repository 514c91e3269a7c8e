"""Crafted-tensor checks of LFM, SMV, DI-MML, Diagnosing & Re-learning, UMT, MBSD and AMCo (docs/methods/lfm.md, smv.md,
dimml.md, relearning.md, balancebenchmark.md)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines import dimml, relearning, umt
from baselines.amco import class_mask, dependence_flags, mask_ratio
from baselines.base import Loaders, StepInfo
from baselines.dimml import certainty_fusion, duc_loss, effective_dims
from baselines.lfm import (
    alignment,
    first_block_hvp,
    fitted_alpha_cls,
    learnable_alpha_step,
)
from baselines.mbsd import mbsd_terms
from baselines.registry import get_method
from baselines.relearning import cluster_purity, interpolate_, purity, reinit_strength
from baselines.smv import (
    copy_counts,
    modality_level_rows,
    sample_level_rows,
    shapley_contributions,
)
from baselines.umt import umt_loss
from benchmarks.config import method_hparams
from core.data import seed_for
from core.hparams import resolve
from datasets.registry import get_dataset
from tests.conftest import TINY_DATA, first_batch, first_batch64, float64_default, freeze_steps, make_context
from tests.numeric import approx, approx64, close, tol


def build(name: str, bundle, epochs: int = 2, **overrides):
    # A fixed init keeps data-dependent checks (KMeans purities, copy counts) independent of test order.
    torch.manual_seed(0)
    cls = get_method(name)
    hp = resolve(name, method_hparams(cls), bundle.task.dataset, overrides, variants=cls.VARIANTS)
    return cls(bundle.task, hp, make_context(epochs=epochs))


def loaders_for(bundle) -> Loaders:
    return Loaders(bundle.loader("train", batch_size=16, train=True, seed=0),
                   bundle.loader("val", batch_size=32, train=False, seed=0),
                   bundle.loader("test", batch_size=32, train=False, seed=0))


def probs_as_logits(rows: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is exactly ``rows``."""
    return torch.tensor(rows, dtype=torch.float64).log()


# --- LFM --------------------------------------------------------------------------------------------------------------

def test_lfm_fitted_schedule_matches_the_code_values():
    assert [round(fitted_alpha_cls(e), 3) for e in (0, 50, 100)] == [0.205, 0.437, 0.539]
    assert fitted_alpha_cls(175) == pytest.approx(0.993, abs=1e-3)


def test_lfm_fitted_schedule_rescales_epochs_to_the_fitted_length(tiny_bundle):
    method = build("lfm", tiny_bundle, epochs=100)
    cls, align = method.coefficients(50)
    assert cls == approx64(fitted_alpha_cls(100)) and cls + align == approx64(1.0)


def test_lfm_step_in_float64_keeps_float64_logits(tiny_bundle):
    with float64_default():
        method = build("lfm", tiny_bundle)
        batch = first_batch64(tiny_bundle)
        with torch.no_grad():
            _, _, z = method.model(method.inputs(batch))
            expected = F.cross_entropy(0.5 * z["audio"] + 0.5 * z["visual"], batch["label"]).item()
        logs = method.update(batch, StepInfo(0, 0, 1, 1))
    assert abs(logs["ce"] - expected) < 1e-13   # float32 logits would differ at ~1e-8


def test_lfm_alignment_is_kl_from_the_mixture_not_js():
    p, q = np.array([[0.7, 0.2, 0.1]]), np.array([[0.1, 0.3, 0.6]])
    m = 0.5 * (p + q)
    code_form = 0.5 * ((m * np.log(m / p)).sum() + (m * np.log(m / q)).sum())
    js = 0.5 * ((p * np.log(p / m)).sum() + (q * np.log(q / m)).sum())
    value = alignment(torch.tensor(np.log(p)), torch.tensor(np.log(q))).item()
    assert value == pytest.approx(code_form, rel=1e-9)
    assert abs(value - js) > 1e-2
    same = torch.tensor([[1.0, -2.0, 0.5]])
    assert alignment(same, same).item() == pytest.approx(0.0, abs=1e-7)


def test_lfm_hessian_vector_product_first_block():
    # total = u * |w|^2, direction = sum(w) + u^2: (H v)_w = 2u * 1 + 2w * (2u) = (18, 30) at w=(1,2), u=3.
    w = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    u = nn.Parameter(torch.tensor([3.0], dtype=torch.float64))
    hvp = first_block_hvp((u * (w ** 2).sum()).sum(), w.sum() + (u ** 2).sum(), [w, u])
    close(hvp, torch.tensor([18.0, 30.0], dtype=torch.float64))


def test_lfm_learnable_alpha_step_halves_lr_and_clips():
    assert learnable_alpha_step(0.95, 100.0, 20, 1e-4, 20, [0.05, 0.95]) == approx64(0.945)
    assert learnable_alpha_step(0.95, 100.0, 19, 1e-4, 20, [0.05, 0.95]) == approx64(0.94)
    assert learnable_alpha_step(0.06, 1e4, 0, 1e-4, 20, [0.05, 0.95]) == 0.05
    assert learnable_alpha_step(0.94, -1e4, 0, 1e-4, 20, [0.05, 0.95]) == 0.95


def test_lfm_learnable_removes_the_holdout_and_predicts_the_half_sum(tiny_bundle):
    method = build("lfm", tiny_bundle, schedule="learnable")
    loaders = loaders_for(tiny_bundle)
    method.train()
    method.on_epoch_start(0, loaders)
    _, held = method.holdout_rows(loaders.train)
    selection = method.select_rows(0, loaders)
    assert len(selection.rows) == 64 - 16 and selection.shuffle and not selection.extras
    assert not np.isin(held, selection.rows).any()
    assert 0.05 <= float(method.alpha_align) <= 0.95 and float(method.alpha_align) != 0.95
    method.eval()
    batch = first_batch(tiny_bundle)
    pred = method.predict(batch)
    close(pred.fused, 0.5 * (pred.per_modality["audio"] + pred.per_modality["visual"]))
    assert method.checkpoint_state()["model"]["alpha_align"] == method.alpha_align



def test_lfm_learnable_serves_the_first_hvp_rows_of_the_holdout_with_evaluation_transforms(tiny_bundle):
    method = build("lfm", tiny_bundle, schedule="learnable")
    loaders = loaders_for(tiny_bundle)
    _, held = method.holdout_rows(loaders.train)
    seen = []
    augment = loaders.train.augment

    def record(batch, generator, train):
        seen.append((batch["label"].tolist(), train))
        return augment(batch, generator, train)

    loaders.train.augment = record
    method.train()
    method.on_epoch_start(0, loaders)
    assert seen == [(loaders.train.labels[held[:8]].tolist(), False)]
    assert method.training, "the model is back in train mode for the epoch's steps"


def test_lfm_holdout_of_the_whole_train_split_is_refused(tiny_bundle):
    method = build("lfm", tiny_bundle, schedule="learnable", holdout=64)
    with pytest.raises(ValueError, match=r"lfm.holdout=64 leaves no training rows \(train split has 64\)"):
        method.select_rows(0, loaders_for(tiny_bundle))


@pytest.mark.parametrize("schedule", ["fitted", "learnable"])
def test_lfm_epoch_end_reports_the_classification_weight(tiny_bundle, schedule):
    method = build("lfm", tiny_bundle, epochs=100, schedule=schedule)
    method.alpha_align.fill_(0.8)
    expected = fitted_alpha_cls(2 * 30) if schedule == "fitted" else 1 - 0.8
    assert method.on_epoch_end(30, None)["lfm_alpha_cls"] == approx(expected)

# --- SMV --------------------------------------------------------------------------------------------------------------

def test_smv_contributions_and_copies_from_crafted_predictions():
    labels = np.array([0, 1, 2, 0, 1])
    full = np.array([[5, 0, 0], [0, 5, 0], [5, 0, 0], [0, 5, 0], [0, 5, 0]])    # correct: T T F F T
    audio = np.array([[5, 0, 0], [0, 5, 0], [0, 5, 0], [0, 5, 0], [5, 0, 0]])   # correct: T T F F F
    visual = np.array([[5, 0, 0], [5, 0, 0], [0, 0, 5], [0, 5, 0], [5, 0, 0]])  # correct: T F T F F
    phi_a, phi_v = shapley_contributions(*((x.argmax(1) == labels) for x in (full, audio, visual)))
    # Halves of small integers: exact.
    np.testing.assert_array_equal(phi_a, [1.0, 1.5, -0.5, 0.0, 1.0])
    np.testing.assert_array_equal(phi_v, [1.0, 0.5, 0.5, 0.0, 1.0])
    np.testing.assert_array_equal(copy_counts(phi_a), [0, 0, 3, 2, 0])
    np.testing.assert_array_equal(copy_counts(phi_v), [0, 1, 1, 2, 0])
    rows, codes = sample_level_rows(np.arange(10, 15), phi_a, phi_v)
    assert len(rows) == 5 + 5 + 4
    # Copies for a low audio contribution zero the visual features (code 2), and vice versa (code 1).
    assert sorted(rows[codes == 2].tolist()) == [12, 12, 12, 13, 13]
    assert sorted(rows[codes == 1].tolist()) == [11, 12, 13, 13]
    assert rows[codes == 0].tolist() == [10, 11, 12, 13, 14]


def test_smv_modality_level_resamples_towards_the_smaller_contribution():
    rows, codes = modality_level_rows(np.arange(10), 0.2, 0.8, 1.0, "linear", np.random.default_rng(0))
    # gap_a = 0.8, gap_v = 0.2: d = 0.6 * 2/3 = 0.4 -> 4 extra rows that train audio alone (zero visual, code 2).
    assert len(rows) == 14 and codes.tolist() == [0] * 10 + [2] * 4
    _, codes = modality_level_rows(np.arange(10), 0.9, 0.3, 1.0, "linear", np.random.default_rng(0))
    assert set(codes[10:].tolist()) == {1}


@pytest.mark.parametrize("func, extra", [("tanh", 66), ("square", 50)])
def test_smv_modality_level_tanh_and_square_maps_truncate_the_row_count(func, extra):
    # AV_KS_Dataset_modality_level: base = |gap_a - gap_v| * 2/3 = 0.4 here, alpha = 2; tanh: d = tanh(alpha * base)
    # = 0.664..., square: d = base^1.5 * alpha = 0.506...; int(d * N) rows, truncated (50.6 -> 50).
    rows, codes = modality_level_rows(np.arange(100), 0.2, 0.8, 2.0, func, np.random.default_rng(0))
    assert len(rows) == 100 + extra and codes.tolist() == [0] * 100 + [2] * extra


def test_smv_modality_level_bb_form_doubles_the_fraction_and_adds_whole_copies():
    rows, codes = modality_level_rows(np.arange(130), 0.2, 0.8, 1.0, "linear", np.random.default_rng(0), bb=True)
    # BB: |gap difference| over both ordered pairs, d = 2 * 0.6 * 2/3 = 0.8 of the first 128 rows (130 - 130 mod 64)
    # -> 102 drawn rows, each once zeroing visual (code 2) and once whole (code 0).
    extra, extra_codes = rows[130:], codes[130:]
    assert len(extra) == 2 * 102 and extra_codes.tolist() == [2, 0] * 102
    np.testing.assert_array_equal(extra[0::2], extra[1::2])
    assert extra.max() < 128


def test_smv_bb_form_refuses_the_functions_bb_cannot_run(tiny_bundle):
    with pytest.raises(ValueError, match="modality_form=bb runs only modality_func=linear"):
        build("smv", tiny_bundle, level="modality", modality_form="bb", modality_func="tanh")
    method = build("smv", tiny_bundle, level="modality", modality_form="bb", warmup=0)
    loaders = loaders_for(tiny_bundle)
    few = Loaders(loaders.train.derived(loaders.train.base_rows[:40], train=True, seed=0))
    with pytest.raises(ValueError, match="first n - n mod 64 training rows, and this split has 40"):
        method.select_rows(0, few)


def test_smv_bb_form_values_the_first_batch_with_inputs_zeroed(monkeypatch):
    cls = get_dataset("synthetic")
    bundle = cls.build(resolve("data", cls.HPARAMS, "synthetic", {**TINY_DATA, "n_train": 190}))
    method = build("smv", bundle, level="modality", modality_form="bb", warmup=0)
    loaders = loaders_for(bundle)
    rows = loaders.train.base_rows
    assert len(rows) == 190
    valued = []
    real = method.valuate
    monkeypatch.setattr(method, "valuate", lambda loader, r: valued.append(r) or real(loader, r))
    selection = method.select_rows(0, loaders)
    # BB's prediction cache keeps the first batch: the draws from the first 128 rows (190 - 190 mod 64) are valued
    # as the rows at their positions mod 64.
    drawn = np.random.default_rng(seed_for(method.ctx.train_hp.seed, 0, "smv_modality")).choice(128, int(128 * 0.2))
    assert valued[0].tolist() == rows[np.unique(drawn % 64)].tolist()
    assert set(selection.rows[len(rows):].tolist()) <= set(rows[:len(rows) - len(rows) % 64].tolist())
    # The valuation drops a modality at its input: the encoders see zeros, and the values follow from three passes.
    few = valued[0][:8]
    batch = next(iter(loaders.train.derived(few, batch_size=8)))
    seen = []
    features = method.model.features
    monkeypatch.setattr(method.model, "features", lambda inputs: seen.append(inputs) or features(inputs))
    got = real(loaders.train, few)
    assert any(not s["visual"].any() and s["audio"].any() for s in seen)
    assert any(not s["audio"].any() and s["visual"].any() for s in seen)
    method.model.eval()
    with torch.no_grad():
        x = method.inputs(batch)

        def correct(inputs: dict) -> np.ndarray:
            return (method.model.head(features(inputs))[0].argmax(1) == batch["label"]).numpy()

        zeros = {m: torch.zeros_like(v) for m, v in x.items()}
        want = shapley_contributions(correct(x), correct({"audio": x["audio"], "visual": zeros["visual"]}),
                                     correct({"audio": zeros["audio"], "visual": x["visual"]}))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_smv_bb_form_trains_copies_with_the_flagged_input_zeroed(tiny_bundle):
    method = build("smv", tiny_bundle, level="modality", modality_form="bb", warmup=0)
    method.train()
    batch = first_batch(tiny_bundle)
    n = len(batch["label"])
    flagged = torch.arange(n) < n // 2
    batch["zero_modality"] = flagged.long()  # zero audio on the first half of the rows
    x = method.inputs(batch)
    keep = (~flagged).float()
    with torch.no_grad():
        z_input, _ = method.model.head(method.model.features({"audio": x["audio"] * keep.view(-1, 1, 1, 1),
                                                              "visual": x["visual"]}))
        h = method.model.features(x)
        z_feature, _ = method.model.head({"audio": h["audio"] * keep[:, None], "visual": h["visual"]})
    want = F.cross_entropy(z_input, batch["label"]).item()
    # With the other rows in the batch, zeroed inputs do not give zero features: the two forms differ here.
    assert abs(want - F.cross_entropy(z_feature, batch["label"]).item()) > 1e-4
    assert method.update(batch, StepInfo(0, 0, 1, 2))["loss"] == want


def test_smv_resamples_the_loader_and_zeroes_flagged_features(tiny_bundle):
    method = build("smv", tiny_bundle, warmup=0)
    loaders = loaders_for(tiny_bundle)
    method.train()
    method.on_epoch_start(0, loaders)
    selection = method.select_rows(0, loaders)
    assert method.model.training  # the eval-mode valuation pass hands the model back in train mode
    codes = selection.extras["zero_modality"]
    assert len(selection.rows) == len(codes) > 64 and (codes[:64] == 0).all()
    assert method.on_epoch_end(0, loaders)["smv_samples"] == len(selection.rows)
    batch = first_batch(tiny_bundle)
    batch["zero_modality"] = torch.ones(len(batch["label"]), dtype=torch.long)  # zero audio on every row
    method.update(batch, StepInfo(0, 0, 1, 2))
    assert all(p.grad is None or not p.grad.any() for p in method.model.encoders["audio"].parameters())
    assert any(p.grad is not None and p.grad.any() for p in method.model.encoders["visual"].parameters())



def test_smv_select_rows_resamples_from_the_valuation_and_logs_each_modalitys_mean_value(tiny_bundle, monkeypatch):
    method = build("smv", tiny_bundle, warmup=1)
    loaders = loaders_for(tiny_bundle)
    rows = loaders.train.base_rows
    assert method.select_rows(0, loaders) is None
    assert method.on_epoch_end(0, loaders) == {"smv_samples": float(len(rows))}
    n = len(rows)
    phi_a = np.where(np.arange(n) % 2 == 0, -0.5, 1.0)  # even rows: 3 audio-alone copies
    phi_v = np.where(np.arange(n) % 4 == 0, 0.5, 1.5)   # every fourth row: 1 visual-alone copy
    monkeypatch.setattr(method, "valuate", lambda loader, r: (phi_a, phi_v))
    selection = method.select_rows(1, loaders)
    want_rows, want_codes = sample_level_rows(rows, phi_a, phi_v)
    np.testing.assert_array_equal(selection.rows, want_rows)
    np.testing.assert_array_equal(selection.extras["zero_modality"], want_codes)
    assert method.on_epoch_end(1, loaders) == {"smv_samples": float(len(want_rows)),
                                               "smv_phi_audio": approx64(phi_a.mean()),
                                               "smv_phi_visual": approx64(phi_v.mean())}



def test_smv_modality_level_averages_values_over_the_draw_with_its_repeats(tiny_bundle, monkeypatch):
    # modality_level.py draws the valued subset with replacement and averages over the draw: a row drawn twice
    # counts twice in mean(phi_m), though it is valued once.
    method = build("smv", tiny_bundle, warmup=0, level="modality", part_ratio=1.0)
    loaders = loaders_for(tiny_bundle)
    rows = loaders.train.base_rows
    monkeypatch.setattr(method, "valuate", lambda loader, r: ((r % 3 == 0) * 1.0, (r % 2 == 0) * 0.5))
    method.select_rows(0, loaders)
    rng = np.random.default_rng(seed_for(method.ctx.train_hp.seed, 0, "smv_modality"))
    drawn = rows[rng.choice(len(rows), len(rows))]
    assert len(np.unique(drawn)) < len(drawn)
    diag = method.on_epoch_end(0, loaders)
    assert diag["smv_phi_audio"] == approx64((drawn % 3 == 0).mean())
    assert diag["smv_phi_visual"] == approx64(0.5 * (drawn % 2 == 0).mean())


def test_smv_defaults_are_the_official_scripts():
    # sample_level.py / modality_level.py: --warmup 5, --part_ratio 0.2, --alpha 1; the dataset class's 'linear'.
    params = {p.name: p.default for p in get_method("smv").HPARAMS}
    assert params == {"level": "sample", "warmup": 5, "part_ratio": 0.2, "modality_alpha": 1.0,
                      "modality_func": "linear", "modality_form": "official"}


def test_smv_step_in_float64_reports_the_float64_loss(tiny_bundle):
    with float64_default():
        method = build("smv", tiny_bundle)
        batch = first_batch64(tiny_bundle)
        with torch.no_grad():
            _, z, _ = method.model(method.inputs(batch))
            expected = F.cross_entropy(z, batch["label"]).item()
        logs = method.update(batch, StepInfo(0, 0, 1, 2))
    assert logs["loss"] == expected   # a float32 loss would differ from the float64 one at ~1e-8


# --- DI-MML -----------------------------------------------------------------------------------------------------------

def test_dimml_effective_dims_from_per_dimension_nearest_class_mean():
    labels = torch.tensor([0, 0, 1, 1])
    # dim 0 separates the classes, dim 1 is noise around equal means, dim 2 separates them too.
    feats = torch.tensor([[0.0, 1.0, 0.0], [0.2, -1.0, 0.1], [1.0, 1.0, 1.0], [0.8, -1.0, 0.9]])
    assert effective_dims(feats, labels, 2, chunk=3).tolist() == [True, False, True]


def test_dimml_effective_dims_are_strictly_above_the_mean_rate():
    labels = torch.tensor([0, 0, 1, 1])
    # Per-dimension hit rates 1, 1/2 (equal class means: every row goes to class 0) and 3/4 (row 3's 0.3 is nearer
    # class 0's mean 0.2 than class 1's 0.65). The mean rate is exactly 3/4: dim 2 sits on it and is not effective.
    feats = torch.tensor([[0.0, 1.0, 0.0], [0.2, -1.0, 0.4], [1.0, 1.0, 1.0], [0.8, -1.0, 0.3]])
    assert effective_dims(feats, labels, 2).tolist() == [True, False, False]


def test_dimml_effective_dims_use_each_class_mean_over_its_own_rows():
    labels = torch.tensor([0, 0, 0, 1])
    # Dim 0: class means 0 and 4 (three rows and one), every row nearest its own: rate 1. Sums divided by all four
    # rows (0 and 1) would send the row at 1 to class 1: rate 3/4. Dim 1: equal means, rate 3/4 (ties to class 0).
    feats = torch.tensor([[-1.0, 1.0], [0.0, -1.0], [1.0, 0.0], [4.0, 0.0]])
    assert effective_dims(feats, labels, 2).tolist() == [True, False]


def test_dimml_a_class_absent_from_the_rows_is_never_the_nearest_mean():
    labels = torch.tensor([0, 0, 1, 1])  # K = 3: class 2 has no rows
    # Dim 0: row 0's -0.1 is nearer 0 (what an absent class's mean would be) than its class mean -0.3, yet scores a
    # hit; rates 1, 1, 1/2 (dim 2: equal means, every row to class 0).
    feats = torch.tensor([[-0.1, 0.0, 1.0], [-0.5, 0.0, -1.0], [1.0, 1.0, 1.0], [1.0, 1.0, -1.0]])
    assert effective_dims(feats, labels, 3).tolist() == [True, True, False]


def test_dimml_duc_loss_matches_the_per_sample_ratio_and_is_unidirectional():
    gen = torch.Generator().manual_seed(0)
    h_a = torch.randn(4, 6, generator=gen, requires_grad=True)
    h_v = torch.randn(4, 6, generator=gen, requires_grad=True)
    dims_a = torch.tensor([True, True, False, False, False, False])
    dims_v = torch.tensor([False, False, False, True, False, True])
    tau = 2.0
    ref = 0.0
    for i in range(4):
        sv = h_v[i, dims_a] @ h_a[:, dims_a].t() / tau
        sa = h_a[i, dims_v] @ h_v[:, dims_v].t() / tau
        ref += -torch.log(sv[i].exp() / sv.exp().sum()) - torch.log(sa[i].exp() / sa.exp().sum())
    loss = duc_loss(h_a, h_v, dims_a, dims_v, tau)
    assert loss.item() == pytest.approx(ref.item() / 4, rel=1e-6)
    loss.backward()
    # Audio learns only on visual-only dims, visual only on audio-only dims (the other side is detached).
    assert not h_a.grad[:, dims_a].any() and h_a.grad[:, dims_v].any()
    assert not h_v.grad[:, dims_v].any() and h_v.grad[:, dims_a].any()


def test_dimml_certainty_weighting():
    z1, z2 = probs_as_logits([[0.9, 0.1]]), probs_as_logits([[0.6, 0.4]])
    w = torch.softmax(torch.tensor([0.9, 0.6], dtype=torch.float64), dim=0)
    close(certainty_fusion([z1, z2], 1.0), w[0] * z1 + w[1] * z2)
    # The temperature divides the certainties (AVE's 3 flattens the weights towards 1/2).
    w = torch.softmax(torch.tensor([0.9, 0.6], dtype=torch.float64) / 3.0, dim=0)
    close(certainty_fusion([z1, z2], 3.0), w[0] * z1 + w[1] * z2)


def test_dimml_predicts_the_unimodal_heads_and_adds_the_fusion_head_only_in_stage_2(tiny_bundle):
    method = build("dimml", tiny_bundle)
    method.eval()
    batch = first_batch(tiny_bundle)
    with torch.no_grad():
        h = method.features(batch)
        z_uni = [method.heads[m](h[m]) for m in method.modalities]
        z_fusion = method.fusion(h)[0]
        stage1 = method.predict(batch).fused
        method.stage2.fill_(True)
        stage2 = method.predict(batch).fused
    t = method.hp.fusion_temperature
    close(stage1, certainty_fusion(z_uni, t))
    close(stage2, certainty_fusion([*z_uni, z_fusion], t))


def test_dimml_duc_dims_are_each_modalitys_effective_dims_minus_the_others(tiny_bundle, monkeypatch):
    method = build("dimml", tiny_bundle)
    d = method.duc_dims.shape[1]
    audio = torch.arange(d) % 2 == 0  # even dims
    visual = torch.arange(d) % 3 == 0  # multiples of 3: dims 0, 6, ... are effective for both
    masks = iter([audio, visual])
    monkeypatch.setattr(dimml, "effective_dims", lambda features, labels, num_classes: next(masks))
    method.compute_duc_dims(loaders_for(tiny_bundle).train)
    assert method.duc_dims[0].tolist() == (audio & ~visual).tolist()
    assert method.duc_dims[1].tolist() == (visual & ~audio).tolist()
    assert not method.duc_dims[0][0] and not method.duc_dims[1][0]


def test_dimml_stages_train_disjoint_parameters(tiny_bundle):
    method = build("dimml", tiny_bundle, duc_start=0)
    loaders = loaders_for(tiny_bundle)
    method.train()
    method.on_epoch_start(0, loaders)
    assert bool(method.duc_ready) and not bool(method.stage2)
    batch = first_batch(tiny_bundle)
    fusion_before = [p.clone() for p in method.fusion.parameters()]
    assert "duc" in method.update(batch, StepInfo(0, 0, 1, 2))
    assert all(torch.equal(a, b) for a, b in zip(fusion_before, method.fusion.parameters()))
    method.on_epoch_start(1, loaders)
    # Stage 2 leaves everything but the fusion head bit-identical: encoders, BN running stats, unimodal and shared
    # heads (the encoders run in eval mode, as main_CFT_stage2.py's).
    frozen = {k: v.clone() for k, v in method.state_dict().items() if not k.startswith("fusion.")}
    assert any("running_mean" in k for k in frozen)
    method.update(batch, StepInfo(1, 0, 1, 2))
    assert bool(method.stage2)
    assert all(torch.equal(v, method.state_dict()[k]) for k, v in frozen.items())
    assert not all(torch.equal(a, b) for a, b in zip(fusion_before, method.fusion.parameters()))
    method.ctx.epochs = 10  # --extend-epochs: the split moves to epoch 5, but the run already reached stage 2
    method.on_epoch_start(2, loaders)
    frozen = {k: v.clone() for k, v in method.state_dict().items() if not k.startswith("fusion.")}
    method.update(batch, StepInfo(2, 0, 1, 10))
    assert bool(method.stage2), "extended epochs stay in the fusion stage"
    assert all(torch.equal(v, method.state_dict()[k]) for k, v in frozen.items()), "encoders trained again"


def test_dimml_stage1_loss_weights_the_shared_head_terms_by_align_weight(tiny_bundle):
    method = build("dimml", tiny_bundle, align_weight=0.25)
    method.train()
    logs = method.update(first_batch(tiny_bundle), StepInfo(0, 0, 1, 2))
    assert "duc" not in logs
    assert logs["loss"] == approx(logs["ce_unimodal"] + 0.25 * logs["ce_shared"])


def test_dimml_duc_dims_pass_runs_in_eval_mode_and_returns_to_training(tiny_bundle):
    # main_CFT.py get_indices runs model.eval(): the pass must not move batch-norm statistics.
    method = build("dimml", tiny_bundle, duc_start=0)
    method.train()
    before = {k: v.clone() for k, v in method.state_dict().items() if "running" in k}
    assert before
    method.on_epoch_start(0, loaders_for(tiny_bundle))
    assert bool(method.duc_ready) and method.training and all(m.training for m in method.modules())
    assert all(torch.equal(v, method.state_dict()[k]) for k, v in before.items())


def test_dimml_fusion_stage_trains_at_the_runs_lr(tiny_bundle):
    # docs/methods/dimml.md: stage 2 keeps the run's lr schedule rather than main_CFT_stage2.py's restart at 1e-3.
    method = build("dimml", tiny_bundle)
    assert [g["lr"] for g in method.fusion_optimizer.param_groups] == [g["lr"] for g in method.optimizer.param_groups]


def test_dimml_stage2_loss_is_the_concat_heads_ce_on_frozen_features(tiny_bundle):
    method = build("dimml", tiny_bundle)
    method.train()
    method.stage2.fill_(True)
    batch = first_batch(tiny_bundle)
    method.encoders.eval()
    with torch.no_grad():
        expected = F.cross_entropy(method.fusion(method.features(batch))[0], batch["label"]).item()
    assert method.update(batch, StepInfo(1, 0, 1, 2))["loss"] == approx(expected)


def test_dimml_steps_in_float64_without_rounding_to_float32(tiny_bundle):
    with float64_default():
        method = build("dimml", tiny_bundle)
        method.train()
        batch = first_batch64(tiny_bundle)
        with torch.no_grad():
            h = method.features(batch)
            expected = sum(F.cross_entropy(method.heads[m](h[m]), batch["label"]).item() for m in method.modalities)
        logs = method.update(batch, StepInfo(0, 0, 1, 2))
        fused = method.predict(batch).fused
    assert logs["ce_unimodal"] == pytest.approx(expected, rel=1e-13, abs=0)   # float32 would differ at ~1e-8
    assert fused.dtype == torch.float64


# --- Diagnosing & Re-learning -----------------------------------------------------------------------------------------

def test_relearning_purity_and_alpha_from_crafted_purities():
    assert purity(np.array([0, 0, 1, 1, 1, 2]), np.array([0, 0, 0, 1, 1, 1])) == approx64(4 / 6)
    assert reinit_strength(0.8, 0.6, 3.0) == approx64(math.tanh(0.6))
    assert reinit_strength(0.5, 0.9, 3.0) == approx64(math.tanh(1.2))
    assert reinit_strength(0.7, 0.7, 3.0) == 0.0


def test_relearning_interpolates_towards_the_initial_parameters():
    p = nn.Parameter(torch.tensor([4.0, -2.0]))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(2)
    opt.step()
    current = p.detach().clone()
    interpolate_([p], [torch.tensor([0.0, 2.0])], 0.25)
    close(p.detach(), 0.25 * torch.tensor([0.0, 2.0]) + 0.75 * current)
    assert "momentum_buffer" in opt.state[p]


def test_relearning_reinitialises_on_schedule_only(tiny_bundle):
    method = build("relearning", tiny_bundle, reinit_epoch=2, reinit_num=1)
    assert [method.due(e) for e in range(6)] == [False, False, True, False, False, False]
    loaders = loaders_for(tiny_bundle)
    with torch.no_grad():
        for p in method.model.encoders.parameters():
            p.add_(0.5)
    before = {m: [p.clone() for p in method.model.encoders[m].parameters()] for m in method.modalities}
    assert method.on_epoch_end(1, loaders) == {}
    diag = method.on_epoch_end(2, loaders)
    for m in method.modalities:
        alpha = diag[f"relearn_alpha_{m}"]
        assert alpha > 0
        assert alpha == approx64(reinit_strength(diag[f"relearn_purity_train_{m}"],
                                                      diag[f"relearn_purity_held_out_{m}"], 3.0))
        for p, old, init in zip(method.model.encoders[m].parameters(), before[m], method.theta_init[m].parameters()):
            close(p.detach(), alpha * init + (1 - alpha) * old)


def test_relearning_diagnoses_float64_features_in_a_float64_run(tiny_bundle):
    class Split:   # a loader stand-in serving the float64 batches
        def __init__(self, batches):
            self.batches = batches

        def derived(self, *args, **kwargs):
            return self.batches

    with float64_default():
        method = build("relearning", tiny_bundle)
        batch = first_batch64(tiny_bundle)
        feats, labels = method.split_features(Split([batch]))
        method.model.eval()   # the diagnosis pass runs in eval mode
        with torch.no_grad():
            expected = method.model.features(method.inputs(batch))
    for m in method.modalities:   # KMeans keeps float32 input in float32, which would move the purities
        assert feats[m].dtype == np.float64 and np.array_equal(feats[m], expected[m].numpy())
    assert np.array_equal(labels, batch["label"].numpy())


def test_relearning_clusters_minmax_scaled_features():
    # Label = the sign of a narrow feature; a second feature of 1000x the range is noise. Scaled to [-1, 1], two
    # clusters split along the label (purity 1); unscaled, along the noise (about 1/2).
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 40)
    features = np.stack([rng.uniform(0, 1000, 80), np.where(labels == 1, 0.01, -0.01)], axis=1)
    assert cluster_purity(features, labels, 2, 10) == 1.0


def test_relearning_kmeans_takes_k_the_fixed_seed_and_the_restart_knob(monkeypatch):
    import sklearn.cluster

    seen = []
    real = sklearn.cluster.KMeans

    def spy(**kwargs):
        seen.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(sklearn.cluster, "KMeans", spy)
    cluster_purity(np.arange(12.0).reshape(6, 2), np.array([0, 1, 2, 0, 1, 2]), 3, 4)
    assert seen == [{"n_clusters": 3, "random_state": 0, "n_init": 4}]


def test_relearning_diagnosis_per_modality(tiny_bundle, monkeypatch):
    # Stubbed purities (train, val) per modality, in the order the diagnosis asks: each encoder moves towards its own
    # initial copy by tanh(lambda |gap|), the head is left alone, and the logs name the splits.
    method = build("relearning", tiny_bundle, reinit_epoch=1, reinit_num=1, move_lambda=2.0)
    init = {m: [p.clone() for p in method.model.encoders[m].parameters()] for m in method.modalities}
    purities = iter([0.9, 0.5, 0.8, 0.75])   # audio train, audio val, visual train, visual val
    monkeypatch.setattr(relearning, "cluster_purity", lambda *args: next(purities))
    seen_modes = []
    features = method.model.features
    monkeypatch.setattr(method.model, "features", lambda *a, **k: seen_modes.append(method.model.training)
                        or features(*a, **k))
    with torch.no_grad():
        for p in method.model.parameters():
            p.add_(0.5)
    before = {k: v.clone() for k, v in method.model.state_dict().items()}
    diag = method.on_epoch_end(1, loaders_for(tiny_bundle))
    expected = {"audio": (0.9, 0.5, math.tanh(2.0 * 0.4)), "visual": (0.8, 0.75, math.tanh(2.0 * 0.05))}
    for m, (p_train, p_val, alpha) in expected.items():
        assert diag[f"relearn_purity_train_{m}"] == p_train and diag[f"relearn_purity_held_out_{m}"] == p_val
        assert diag[f"relearn_alpha_{m}"] == approx64(alpha)
        for (name, p), p0, in zip(method.model.encoders[m].named_parameters(), init[m]):
            close(p.detach(), alpha * p0 + (1 - alpha) * before[f"encoders.{m}.{name}"])
    for name, v in method.model.head.state_dict().items():
        assert torch.equal(v, before[f"head.{name}"])
    assert seen_modes and not any(seen_modes), "the diagnosis reads features in eval mode"
    assert method.model.training, "training resumes in train mode"


def test_relearning_reads_every_training_row_once_in_order(tiny_bundle):
    method = build("relearning", tiny_bundle)
    train = loaders_for(tiny_bundle).train
    feats, labels = method.split_features(train)
    assert np.array_equal(labels, train.labels[train.base_rows])
    assert all(len(v) == len(train.base_rows) for v in feats.values())


@pytest.mark.parametrize("split", ["val", "test"])
def test_relearning_diagnoses_on_the_split_its_knob_names(tiny_bundle, split):
    method = build("relearning", tiny_bundle, reinit_epoch=1, reinit_num=1, diagnose_split=split)
    loaders = loaders_for(tiny_bundle)
    read = []
    split_features = method.split_features
    method.split_features = lambda loader: read.append(loader) or split_features(loader)
    method.on_epoch_end(1, loaders)
    assert read == [loaders.train, getattr(loaders, split)]


def test_relearning_initial_copy_is_taken_at_construction_and_restored_from_a_checkpoint(tiny_bundle):
    method = build("relearning", tiny_bundle, reinit_epoch=1, reinit_num=2)
    init = {k: v.clone() for k, v in method.model.encoders.state_dict().items()}
    with torch.no_grad():
        for p in method.model.encoders.parameters():
            p.add_(0.5)
    method.on_epoch_end(1, loaders_for(tiny_bundle))
    assert all(torch.equal(v, init[k]) for k, v in method.theta_init.state_dict().items())
    torch.manual_seed(1)   # another initialisation, whose own copy the checkpoint must replace
    hp = resolve("relearning", method_hparams(get_method("relearning")), "synthetic", {})
    clone = get_method("relearning")(tiny_bundle.task, hp, make_context())
    assert not all(torch.equal(v, init[k]) for k, v in clone.theta_init.state_dict().items())
    clone.load_checkpoint_state(method.checkpoint_state())
    assert all(torch.equal(v, init[k]) for k, v in clone.theta_init.state_dict().items())


def test_relearning_bf16_autocast_diagnosis_features_are_float32(tiny_bundle):
    method = build("relearning", tiny_bundle)
    method.ctx.amp = True   # the CPU takes the bf16 autocast branch a GPU run takes
    feats, _ = method.split_features(loaders_for(tiny_bundle).val)
    assert all(v.dtype == np.float32 for v in feats.values())


# --- UMT --------------------------------------------------------------------------------------------------------------

def test_umt_loss_on_crafted_features():
    z, y = torch.zeros(2, 4), torch.tensor([0, 3])
    h = {"audio": torch.ones(2, 3), "visual": torch.full((2, 3), 2.0)}
    teacher = {"audio": torch.zeros(2, 3), "visual": torch.zeros(2, 3)}
    assert umt_loss(z, y, h, teacher, 10.0).item() == approx(math.log(4) + 10 * (1 + 4))


def test_umt_step_gradient_is_that_of_the_fused_ce_plus_scaled_feature_mses_to_eval_mode_teachers(tiny_bundle):
    # Written out apart from the method: CE(z) + scale * sum_m MSE(h_m, teacher_m(x_m)), teachers in eval mode. The
    # tests above pin umt_loss alone and the teachers' modes; a step distilling towards anything else (the student's
    # own detached features: no distillation at all) passed them.
    method = build("umt", tiny_bundle, teacher_epochs=1)
    method.teachers_ready.fill_(True)
    method.train()
    batch = first_batch(tiny_bundle)
    teachers, reference = copy.deepcopy(method.teachers).eval(), copy.deepcopy(method.model)
    with torch.no_grad():
        targets = {m: teachers[m](batch[m])[0] for m in method.modalities}
    h = {m: reference.encoders[m](batch[m]) for m in method.modalities}
    z, _ = reference.head(h)
    loss = F.cross_entropy(z, batch["label"]) + method.hp.scale * sum(
        F.mse_loss(h[m], targets[m]) for m in method.modalities)
    loss.backward()
    logs = method.update(batch, StepInfo(0, 0, 1, 2))
    assert method.hp.scale > 0 and logs["loss"] == approx(loss.item())
    for (name, got), want in zip(method.model.named_parameters(), reference.parameters()):
        # through two encoders' backward: a few ulps per layer
        close(got.grad, want.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_umt_trains_teachers_once_and_freezes_them(tiny_bundle):
    method = build("umt", tiny_bundle, teacher_epochs=1)
    loaders = loaders_for(tiny_bundle)
    initial = [p.clone() for p in method.teachers.parameters()]
    method.train()
    method.on_epoch_start(0, loaders)
    trained = [p.clone() for p in method.teachers.parameters()]
    assert bool(method.teachers_ready) and not all(torch.equal(a, b) for a, b in zip(initial, trained))
    method.on_epoch_start(0, loaders)
    method.update(first_batch(tiny_bundle), StepInfo(0, 0, 1, 2))
    assert all(torch.equal(a, b) for a, b in zip(trained, method.teachers.parameters()))
    assert all(g["lr"] == g["initial_lr"] for opt in method.ctx.optimizers for g in opt.param_groups)


def test_umt_teachers_follow_the_runs_lr_milestones(tiny_bundle):
    # Each teacher epoch e trains at lr * gamma^(number of milestones <= e), as the run itself would.
    cls = get_method("umt")
    hp = resolve("umt", method_hparams(cls), tiny_bundle.task.dataset, {"teacher_epochs": 3}, variants=cls.VARIANTS)
    torch.manual_seed(0)
    method = cls(tiny_bundle.task, hp, make_context(epochs=3, lr_milestones=[1, 2], lr_gamma=0.1))
    lr = method.ctx.train_hp.lr
    seen = {m: [] for m in method.modalities}
    for m, opt in method.teacher_optimizers.items():
        original = opt.step

        def record(*args, _m=m, _opt=opt, _step=original, **kwargs):
            seen[_m].append(_opt.param_groups[0]["lr"])
            return _step(*args, **kwargs)

        opt.step = record
    method.on_epoch_start(0, loaders_for(tiny_bundle))
    steps = len(seen["audio"]) // 3
    assert steps > 0
    for m in method.modalities:
        assert seen[m] == [approx64(lr)] * steps + [approx64(0.1 * lr)] * steps + [approx64(0.01 * lr)] * steps, m
    # The run's own schedule is restored afterwards.
    assert all(g["lr"] == g["initial_lr"] for opt in method.ctx.optimizers for g in opt.param_groups)



@pytest.mark.parametrize("teacher_epochs, max_steps, epochs_run, steps_run", [(0, 0, 3, None), (2, 1, 2, 1)])
def test_umt_teachers_train_the_runs_epochs_by_default_and_its_step_cap(tiny_bundle, teacher_epochs, max_steps,
                                                                        epochs_run, steps_run):
    # teacher_epochs 0 means the run's own epoch count (BB trains its unimodal runs with the main recipe), and each
    # teacher epoch stops at the run's max_steps_per_epoch like a run's epoch does.
    cls = get_method("umt")
    hp = resolve("umt", method_hparams(cls), tiny_bundle.task.dataset, {"teacher_epochs": teacher_epochs},
                 variants=cls.VARIANTS)
    torch.manual_seed(0)
    method = cls(tiny_bundle.task, hp, make_context(epochs=3, max_steps_per_epoch=max_steps))
    loaders = loaders_for(tiny_bundle)
    steps_run = steps_run or len(loaders.train)
    assert steps_run < len(loaders.train) or max_steps == 0
    counts = dict.fromkeys(method.modalities, 0)
    for m, opt in method.teacher_optimizers.items():
        original = opt.step

        def count(*args, _m=m, _step=original, **kwargs):
            counts[_m] += 1
            return _step(*args, **kwargs)

        opt.step = count
    method.on_epoch_start(0, loaders)
    assert counts == dict.fromkeys(method.modalities, epochs_run * steps_run)
    # The logged teacher loss is the last epoch's mean CE per step, not the sum over its steps.
    diag = method.on_epoch_end(0, loaders)
    for m in method.modalities:
        assert 0 < diag[f"umt_teacher_loss_{m}"] < 1.5 * math.log(tiny_bundle.task.num_classes), (m, diag)


@pytest.mark.parametrize("mode, teacher_training", [({}, False), ({"variant": "bb_compat"}, True)])
def test_umt_distils_features_of_teachers_in_the_chosen_mode(tiny_bundle, mode, teacher_training):
    # Default: frozen teachers in eval mode (running BN statistics); bb_compat: BB never calls eval() on them.
    method = build("umt", tiny_bundle, teacher_epochs=1, **mode)
    method.teachers_ready.fill_(True)
    method.train()
    modes = []
    for teacher in method.teachers.values():
        teacher.register_forward_hook(lambda mod, args, out: modes.append(mod.training))
    method.update(first_batch(tiny_bundle), StepInfo(0, 0, 1, 2))
    assert modes == [teacher_training] * len(method.teachers)
    # Teachers are frozen: the distillation loss leaves no gradient on them.
    assert all(p.grad is None for p in method.teachers.parameters())


def test_umt_teachers_train_in_train_mode_even_after_an_eval_pass(tiny_bundle):
    method = build("umt", tiny_bundle, teacher_epochs=1)
    method.eval()
    modes = set()
    for teacher in method.teachers.values():
        teacher.register_forward_hook(lambda mod, args, out: modes.add(mod.training))
    method.on_epoch_start(0, loaders_for(tiny_bundle))
    assert modes == {True}


@pytest.mark.parametrize("split", ["val", "test"])
def test_umt_teacher_select_scores_the_named_split(tiny_bundle, monkeypatch, split):
    method = build("umt", tiny_bundle, teacher_epochs=1, teacher_select=split)
    loaders = loaders_for(tiny_bundle)
    seen = []

    def accuracy(teacher, loader, modality, ctx):
        seen.append(loader)
        return 0.5

    monkeypatch.setattr(umt, "teacher_accuracy", accuracy)
    method.on_epoch_start(0, loaders)
    assert seen and all(loader is getattr(loaders, split) for loader in seen)



def test_umt_defaults_follow_balancebenchmark():
    # BB: scaling 10, unimodal teacher runs with the main recipe (teacher_epochs 0 = the run's epochs).
    params = {p.name: p.default for p in get_method("umt").HPARAMS}
    assert params == {"scale": 10.0, "teacher_epochs": 0, "teacher_mode": "eval", "teacher_select": "final"}


def test_umt_bb_compat_distils_each_teachers_best_test_epoch(tiny_bundle, monkeypatch):
    method = build("umt", tiny_bundle, teacher_epochs=3, variant="bb_compat")
    assert method.hp.teacher_select == "test"
    loaders = loaders_for(tiny_bundle)
    scores = {"audio": iter([0.5, 0.75, 0.75]), "visual": iter([0.25, 0.25, 0.5])}
    kept = {}

    def accuracy(teacher, loader, modality, ctx):
        assert loader is loaders.test
        kept.setdefault(modality, []).append({k: v.clone() for k, v in teacher.state_dict().items()})
        return next(scores[modality])

    monkeypatch.setattr(umt, "teacher_accuracy", accuracy)
    method.on_epoch_start(0, loaders)
    # Audio peaks at epoch 1 (the tie at epoch 2 keeps the first), visual at its last epoch 2.
    diag = method.on_epoch_end(0, loaders)
    assert diag["umt_teacher_epoch_audio"] == 1.0 and diag["umt_teacher_epoch_visual"] == 2.0
    for m, epoch in (("audio", 1), ("visual", 2)):
        for k, v in method.teachers[m].state_dict().items():
            assert torch.equal(v, kept[m][epoch][k]), (m, k)
    assert any(not torch.equal(v, kept["audio"][2][k]) for k, v in method.teachers["audio"].state_dict().items())


def test_umt_teacher_accuracy_scores_the_teacher_in_eval_mode_and_trains_it_on(tiny_bundle):
    method = build("umt", tiny_bundle)
    teacher = method.teachers["audio"]
    teacher.train()
    batches = list(loaders_for(tiny_bundle).test)
    with torch.no_grad():
        teacher.eval()
        want = sum(int((teacher(b["audio"])[1].argmax(1) == b["label"]).sum()) for b in batches)
        teacher.train()
    n = sum(len(b["label"]) for b in batches)
    assert umt.teacher_accuracy(teacher, batches, "audio", method.ctx) == want / n and teacher.training


# --- MBSD -------------------------------------------------------------------------------------------------------------

def test_mbsd_weights_and_kl_on_crafted_probabilities():
    z_a = probs_as_logits([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    z_v = probs_as_logits([[0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.1, 0.8, 0.1]])
    y = torch.tensor([0, 0, 1])
    w, rs, kl = mbsd_terms(z_a, z_v, y)
    # Sample 0: audio correct; sample 1: neither correct; sample 2: visual correct.
    close(w, torch.tensor([0.5, 0.0, 0.4], dtype=torch.float64))
    close(rs, ((z_a - z_v) ** 2).sum(1) / 3)
    ps, pw = torch.tensor([0.7, 0.3, 0.8], dtype=torch.float64), torch.tensor([0.2, 0.1, 0.4], dtype=torch.float64)
    close(kl, pw * (pw.log() - ps))
    _, _, kl_log = mbsd_terms(z_a, z_v, y, "log_prob")
    close(kl_log, pw * (pw.log() - ps.log()))


def test_mbsd_weight_is_not_detached():
    z_a = probs_as_logits([[0.7, 0.3]]).requires_grad_(True)
    z_v = probs_as_logits([[0.4, 0.6]])
    w, _, _ = mbsd_terms(z_a, z_v, torch.tensor([0]))
    w.sum().backward()
    assert z_a.grad.abs().sum() > 0


def test_mbsd_mechanism_acted_when_some_epoch_weighed_a_sample():
    mbsd = get_method("mbsd")
    epochs = [{"epoch": e, "train": {"loss": 1.0, "ce": 1.0, "w_mean": w}, "diag": {}}
              for e, w in enumerate((0.0, 0.02))]
    assert mbsd.mechanism_acted(epochs) is True
    assert mbsd.mechanism_acted(epochs[:1]) is False
    assert mbsd.mechanism_acted([{"epoch": 0, "train": {"loss": 1.0}, "diag": {}}]) is None


def test_mbsd_under_bf16_autocast_computes_every_loss_term_in_float32(tiny_bundle):
    # The autocast forward returns bf16 logits; each cross-entropy and the MBSD terms must see them as float32.
    method = build("mbsd", tiny_bundle)
    method.ctx.amp = True   # the CPU takes the bf16 autocast branch a GPU run takes
    method.optimizer.step = lambda *args, **kwargs: None
    seen = []
    method.model.register_forward_hook(lambda module, args, out: seen.append(out))
    batch = first_batch(tiny_bundle)
    logs = method.update(batch, StepInfo(epoch=0, step=0, steps_per_epoch=1, epochs=2))
    _, z, z_uni = seen[-1]
    assert z.dtype == torch.bfloat16, "the step ran under autocast"
    y = batch["label"]
    z, z_a, z_v = z.float(), z_uni["audio"].float(), z_uni["visual"].float()
    w, rs, kl = mbsd_terms(z_a, z_v, y)
    ce = F.cross_entropy(z, y) + F.cross_entropy(z_a, y) + F.cross_entropy(z_v, y)
    assert logs["ce"] == pytest.approx(ce.item(), rel=1e-6)
    assert logs["loss"] == pytest.approx((ce + (w * rs).mean() + (w * kl).mean()).item(), rel=1e-6)


# --- AMCo -------------------------------------------------------------------------------------------------------------

def test_amco_mask_ratio_schedule():
    assert [mask_ratio(0, s, 0.3) for s in (0, 5, 100)] == [0.0, 0.0, 0.0]
    assert mask_ratio(1, 1, 0.3) == approx64(0.5)
    assert mask_ratio(2, 1, 0.3) == approx64(math.sin(math.pi / 3))
    assert mask_ratio(1, 3, 0.3) == approx64(1.0) and mask_ratio(5, 9, 0.3) == approx64(1.0)
    mask = class_mask(6, 0.5, torch.Generator().manual_seed(0))
    assert int((mask == 0).sum()) == 3 and int((mask == 1).sum()) == 3
    assert int((class_mask(6, 0.99, torch.Generator().manual_seed(0)) == 0).sum()) == 5


def test_amco_dependence_flag_on_crafted_logits():
    z_a = torch.full((2, 2), math.log(3.0))
    z_v = torch.zeros(2, 2)
    # Block masses 6/8 and 2/8: only audio exceeds sigma = 0.5.
    assert dependence_flags([z_a, z_v], 0.5).tolist() == [True, False]
    assert dependence_flags([z_a, z_v], 0.8).tolist() == [False, False]


def test_amco_masks_only_the_dependent_modality_and_bb_compat_drops_linear_star(tiny_bundle):
    method = build("amco", tiny_bundle)
    batch = first_batch(tiny_bundle)
    method.train()
    method.dependent.copy_(torch.tensor([True, False]))
    logs = method.update(batch, StepInfo(epoch=3, step=5, steps_per_epoch=8, epochs=4))
    # Ratio 1 masks every class of the dependent audio logits, so no loss term reaches the audio encoder.
    assert logs["mask_ratio"] == approx64(1.0)
    assert all(p.grad is None or not p.grad.any() for p in method.model.encoders["audio"].parameters())
    assert any(p.grad is not None and p.grad.any() for p in method.model.encoders["visual"].parameters())
    assert any(p.grad is not None and p.grad.any() for p in method.linear_star.parameters())
    compat = build("amco", tiny_bundle, variant="bb_compat")
    compat.eval()
    pred = compat.predict(batch)
    close(pred.fused, sum(pred.per_modality.values()))


def test_amco_dependence_flags_restart_false_every_epoch(tiny_bundle):
    method = build("amco", tiny_bundle)
    method.dependent.copy_(torch.tensor([True, True]))
    method.on_epoch_start(1, loaders_for(tiny_bundle))
    assert method.dependent.tolist() == [False, False]



def test_amco_class_mask_zeroes_the_generators_first_positions():
    positions = torch.randperm(8, generator=torch.Generator().manual_seed(3))[:4]
    mask = class_mask(8, 0.5, torch.Generator().manual_seed(3))
    assert sorted(torch.nonzero(mask == 0).flatten().tolist()) == sorted(positions.tolist())
    # Random positions: other draws zero other classes.
    assert len({tuple(class_mask(8, 0.5, torch.Generator().manual_seed(s)).tolist()) for s in range(6)}) > 1


def test_amco_flag_needs_the_reduced_mass_strictly_above_sigma():
    equal = [torch.zeros(2, 2), torch.zeros(2, 2)]  # block masses exactly 1/2
    assert dependence_flags(equal, 0.5).tolist() == [False, False]
    assert dependence_flags(equal, 0.49).tolist() == [True, True]
    # The threshold reads the reduced (all-ranks mean) mass, not this rank's.
    assert dependence_flags(equal, 0.5, reduce=lambda mass: mass + torch.tensor([0.1, 0.0])).tolist() == [True, False]


@pytest.mark.parametrize("dependent, sigma, flags", [
    ("visual", 0.6, [True, False]),   # masking visual lifts audio's block mass above sigma (0.56 unmasked)
    ("audio", 0.54, [False, False]),  # masking audio drops its mass below sigma (0.56 unmasked; above 0.5)
])
def test_amco_update_trains_on_the_steps_seeded_mask_and_flags_from_the_masked_logits(tiny_bundle, dependent, sigma,
                                                                                        flags):
    method = freeze_steps(build("amco", tiny_bundle, eps=0.6, sigma=sigma))
    batch, y = first_batch(tiny_bundle), first_batch(tiny_bundle)["label"]
    method.train()
    method.dependent.copy_(torch.tensor([dependent == "audio", dependent == "visual"]))
    with torch.no_grad():
        _, _, z = method.model(method.inputs(batch))
    # Epoch 1, step 1: l = 0.1, ratio sin(pi/2 * 0.1 / 0.6) with eps = 0.6 (0.5 with the default eps); one class of 4.
    ratio = math.sin(math.pi / 12)
    mask = class_mask(4, ratio, torch.Generator().manual_seed(seed_for(method.ctx.train_hp.seed, 1, 1, "amco_mask")))
    assert int((mask == 0).sum()) == 1
    masked = {m: z[m] * mask if m == dependent else z[m] for m in ("audio", "visual")}  # only the dependent one
    with torch.no_grad():
        expected = (F.cross_entropy(method.linear_star(masked["audio"] + masked["visual"]), y)
                    + sum(F.cross_entropy(v, y) for v in masked.values())).item()
    assert dependence_flags(list(masked.values()), sigma).tolist() == flags
    assert dependence_flags([z["audio"], z["visual"]], sigma).tolist() != flags  # unmasked logits flag otherwise
    logs = method.update(batch, StepInfo(epoch=1, step=1, steps_per_epoch=8, epochs=4))
    assert logs["mask_ratio"] == approx64(ratio)
    assert logs["loss"] == approx(expected)
    assert method.dependent.tolist() == flags
    assert [logs["dependent_audio"], logs["dependent_visual"]] == [float(f) for f in flags]


def test_amco_default_trains_and_predicts_through_linear_star(tiny_bundle):
    method = build("amco", tiny_bundle)
    assert (method.hp.sigma, method.hp.eps, method.hp.linear_star) == (0.5, 0.3, True)  # BB trainer_config
    assert not method.linear_star.bias.any(), "the project's init (ogm: zero bias), not torch's default"
    batch = first_batch(tiny_bundle)
    method.eval()
    pred = method.predict(batch)
    with torch.no_grad():
        close(pred.fused, method.linear_star(sum(pred.per_modality.values())))
    before = method.linear_star.weight.detach().clone()
    method.train()
    method.update(batch, StepInfo(epoch=0, step=0, steps_per_epoch=8, epochs=4))
    assert not torch.equal(method.linear_star.weight, before), "linear_star is trained by the optimizer"


def test_amco_bb_4c1482f_trains_through_linear_star_but_scores_the_plain_sum(tiny_bundle):
    method = build("amco", tiny_bundle, variant="bb_4c1482f")
    assert (method.hp.linear_star, method.hp.eval_linear_star) == (True, False)
    batch, y = first_batch(tiny_bundle), first_batch(tiny_bundle)["label"]
    method.eval()
    pred = method.predict(batch)
    close(pred.fused, sum(pred.per_modality.values()))
    with torch.no_grad():
        assert not torch.allclose(pred.fused, method.linear_star(pred.fused), **tol()), \
            "the crafted check must tell them apart"
    # Training still goes through linear_star: the loss of a step is CE(linear_star(sum z)) + sum CE(z_m) (epoch 0:
    # mask ratio 0, nothing masked).
    method = freeze_steps(method)
    method.train()
    with torch.no_grad():
        _, _, z = method.model(method.inputs(batch))
        expected = (F.cross_entropy(method.linear_star(z["audio"] + z["visual"]), y)
                    + sum(F.cross_entropy(v, y) for v in z.values())).item()
    logs = method.update(batch, StepInfo(epoch=0, step=0, steps_per_epoch=8, epochs=4))
    assert logs["loss"] == approx(expected)

# --- Unimodal reference -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("modality", ["audio", "visual"])
def test_unimodal_reads_and_reports_only_its_modality(tiny_bundle, modality):
    method = build("unimodal", tiny_bundle, modality=modality)
    method.eval()
    batch = first_batch(tiny_bundle)
    other = next(m for m in ("audio", "visual") if m != modality)
    with torch.no_grad():
        before = method.predict(batch)
        changed = method.predict({**batch, other: torch.randn_like(batch[other])})
        moved = method.predict({**batch, modality: torch.randn_like(batch[modality])})
    assert set(before.per_modality) == {modality}
    assert torch.equal(before.fused, changed.fused), f"the {other} input must not matter"
    assert not torch.allclose(before.fused, moved.fused, **tol()), f"the {modality} input must"


def test_unimodal_defaults_to_the_datasets_first_modality(tiny_bundle):
    method = build("unimodal", tiny_bundle)
    assert tiny_bundle.task.names[0] == "audio" and method.modality == "audio"
    method.eval()
    assert set(method.predict(first_batch(tiny_bundle)).per_modality) == {"audio"}


@pytest.mark.parametrize("modality", ["audio", "visual"])
def test_unimodal_steps_on_the_ce_of_its_head_over_its_own_encoder(tiny_bundle, modality):
    method = build("unimodal", tiny_bundle, modality=modality)
    method.optimizer.step = lambda *a, **k: None
    method.train()
    batch = first_batch(tiny_bundle)
    encoder, head = copy.deepcopy(method.encoder), copy.deepcopy(method.head)
    logs = method.update(batch, StepInfo(0, 0, 4, 2))
    loss = F.cross_entropy(head(encoder(batch[modality])), batch["label"])
    loss.backward()
    assert logs["loss"] == approx(loss.item())
    ref = dict([*(("encoder." + n, p) for n, p in encoder.named_parameters()),
                *(("head." + n, p) for n, p in head.named_parameters())])
    grads = {n: p.grad for n, p in method.named_parameters() if p.grad is not None}
    assert set(grads) == set(ref), "the encoder learns with the head"
    for n, p in ref.items():
        close(grads[n], p.grad, msg=n)


def test_unimodal_head_gets_the_projects_weight_init(tiny_bundle):
    # model.init = ogm (OGM-GE weight_init): Xavier-normal Linear weights with zero bias, applied after the build, so
    # the head does not keep torch's uniform default (whose bias is never all zero).
    method = build("unimodal", tiny_bundle)
    assert method.ctx.model_hp.init == "ogm"
    assert not method.head.bias.any()
