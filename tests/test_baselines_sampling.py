"""Crafted-tensor checks of the sample-selection methods: Data Remixing (remix) and BSS (bss).

``select_rows`` is tested directly (the runner applies its ``RowSelection``); ``update`` separately, on batches that
carry the per-row extras a selection would add.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from baselines.base import Loaders, StepInfo
from baselines.bss import (
    curriculum_order,
    pacing,
    pairwise_similarity,
    sample_losses,
    sampling_probabilities,
    weighted_permutation,
)
from baselines.registry import get_method
from baselines.remix import (
    EXTRA_KEY,
    decouple,
    kl_to_uniform,
    remix_loss,
    remix_sequence,
)
from benchmarks.config import build_config, load_config_file, method_hparams
from benchmarks.runner import apply_selection
from core.data import seed_for
from core.hparams import resolve
from tests.conftest import first_batch, first_batch64, float64_default, make_context

CONFIGS = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"


def build(name: str, bundle, epochs: int = 2, dataset: str | None = None, **overrides):
    torch.manual_seed(0)
    cls = get_method(name)
    hp = resolve(name, method_hparams(cls), dataset or bundle.task.dataset, overrides, variants=cls.VARIANTS)
    return cls(bundle.task, hp, make_context(epochs=epochs))


def loaders_for(bundle) -> Loaders:
    return Loaders(bundle.loader("train", batch_size=16, train=True, seed=0),
                   bundle.loader("val", batch_size=32, train=False, seed=0),
                   bundle.loader("test", batch_size=32, train=False, seed=0))


def step_at(epoch: int) -> StepInfo:
    return StepInfo(epoch=epoch, step=0, steps_per_epoch=4, epochs=epoch + 2)


# --- Data Remixing ----------------------------------------------------------------------------------------------------

def test_remix_kl_to_uniform_in_bits_with_clipped_zeros():
    probs = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    clipped_term = 1e-9 * math.log2(4e-9)  # each zero becomes 1e-9 and still contributes
    expected = np.array([0.0, 2.0 + 3 * clipped_term, 1.0 + 2 * clipped_term])
    np.testing.assert_allclose(kl_to_uniform(probs), expected, rtol=0, atol=1e-15)


def test_remix_decouple_sends_rows_to_the_less_confident_modality_ties_to_the_second():
    kl_first = np.array([0.1, 0.9, 0.5, 0.0])
    kl_second = np.array([0.4, 0.2, 0.5, 0.0])
    np.testing.assert_array_equal(decouple(kl_first, kl_second), [0, 1, 1, 1])


def test_remix_sequence_serves_the_second_subset_first_each_row_once():
    rows = np.array([10, 11, 12, 13, 14, 15])
    assigned = np.array([0, 1, 0, 1, 1, 0])
    sequence, codes = remix_sequence(rows, assigned, np.random.default_rng(0))
    np.testing.assert_array_equal(codes, [1, 1, 1, 0, 0, 0])
    assert sorted(sequence[:3]) == [11, 13, 14] and sorted(sequence[3:]) == [10, 12, 15]


def test_remix_loss_weights_only_the_rows_own_modality():
    # Row 0 trains audio (gamma 2), row 1 video (gamma 0.5); the 100s are the other modality's logits and must not
    # count. CE(z) = ln 2 for both rows, each own unimodal CE = ln(4/3).
    z = torch.zeros(2, 2)
    z_uni = {"audio": torch.tensor([[math.log(3.0), 0.0], [100.0, 0.0]]),
             "visual": torch.tensor([[0.0, 100.0], [0.0, math.log(3.0)]])}
    labels, codes = torch.tensor([0, 1]), torch.tensor([0, 1])
    loss = remix_loss(z, z_uni, labels, codes, [2.0, 0.5])
    expected = torch.tensor(math.log(2.0) + (2.0 + 0.5) * math.log(4.0 / 3.0) / 2)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)


def test_remix_assign_uses_the_unimodal_heads_of_an_eval_pass(tiny_bundle):
    method = build("remix", tiny_bundle, warmup=0)
    loaders = loaders_for(tiny_bundle)
    batch = next(iter(loaders.train.derived(batch_size=len(loaders.train.base_rows))))
    audio_head = method.model.head.uni["audio"]
    for _ in range(12):  # sharpen the audio head until the rows split between the modalities
        method.eval()
        with torch.no_grad():
            _, _, z_uni = method.model(method.inputs(batch))
        kl = {m: kl_to_uniform(torch.softmax(z, dim=1).numpy()) for m, z in z_uni.items()}
        expected = np.where(kl["audio"] < kl["visual"], 0, 1)
        if 0 < expected.sum() < len(expected):
            break
        with torch.no_grad():
            audio_head.weight.mul_(2.0)
            audio_head.bias.mul_(2.0)
    assert 0 < expected.sum() < len(expected), "a one-sided split would not test the comparison"
    method.train()
    np.testing.assert_array_equal(method.assign(loaders), expected)
    assert method.model.training, "the pass must hand the model back in training mode"


def test_remix_select_rows_none_in_warmup_then_one_ordered_epoch(tiny_bundle, monkeypatch):
    method = build("remix", tiny_bundle, warmup=2)
    loaders = loaders_for(tiny_bundle)
    rows = loaders.train.base_rows
    assert method.select_rows(1, loaders) is None
    assigned = (np.arange(len(rows)) % 3 == 0).astype(np.int64) ^ 1  # every third row to audio (0), rest to visual
    monkeypatch.setattr(method, "assign", lambda _loaders: assigned)
    selection = method.select_rows(2, loaders)
    assert selection.shuffle is False
    codes = selection.extras[EXTRA_KEY]
    n_visual = int((assigned == 1).sum())
    np.testing.assert_array_equal(codes, [1] * n_visual + [0] * (len(rows) - n_visual))
    np.testing.assert_array_equal(np.sort(selection.rows), np.sort(rows))
    np.testing.assert_array_equal(np.sort(selection.rows[n_visual:]), np.sort(rows[assigned == 0]))
    again = method.select_rows(2, loaders)
    np.testing.assert_array_equal(again.rows, selection.rows)  # seeded by (seed, epoch): a resume redraws it
    # The official code reshuffles each subset every epoch: the next epoch serves the same subsets in a new order.
    later = method.select_rows(3, loaders)
    np.testing.assert_array_equal(later.extras[EXTRA_KEY], codes)
    assert not np.array_equal(later.rows, selection.rows)
    assert method.on_epoch_end(2, loaders) == {"remix_rows_audio": float(len(rows) - n_visual),
                                               "remix_rows_visual": float(n_visual)}



def test_remix_defaults_are_the_official_run_script():
    # scripts/run_train.sh: --warmup 10, --alpha 0.5 --beta 0.5 (warm-up unimodal CE), --gamma1/--gamma2 1.
    params = {p.name: p.default for p in get_method("remix").HPARAMS}
    assert params == {"warmup": 10, "warmup_weights": [0.5, 0.5], "remix_weights": [1.0, 1.0]}


def test_remix_update_trains_only_the_assigned_modality(tiny_bundle):
    method = build("remix", tiny_bundle, warmup=1)
    batch = first_batch(tiny_bundle)
    batch[EXTRA_KEY] = torch.zeros(len(batch["label"]), dtype=torch.int64)  # every row trains audio
    visual_head = {n: p.detach().clone() for n, p in method.model.head.uni["visual"].named_parameters()}
    method.update(batch, step_at(1))
    # The zeroed encoder's gradients are zeros (official: forward(mode=...) zeroes its features in place) ...
    assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0
               for p in method.model.encoders["visual"].parameters())
    # ... while its unimodal head, left out of the official loss, has none: no weight decay, no momentum step.
    for name, p in method.model.head.uni["visual"].named_parameters():
        assert p.grad is None and torch.equal(p, visual_head[name])
    audio = [p.grad for p in method.model.encoders["audio"].parameters() if p.grad is not None]
    assert audio and any(torch.count_nonzero(g) > 0 for g in audio)


def test_remix_weights_apply_to_the_modalities_in_the_dataset_order(tiny_bundle, monkeypatch):
    # warmup_weights / remix_weights list the first (audio) then the second modality's weight; the defaults are
    # symmetric, so asymmetric ones are needed to see the order.
    from baselines import remix as remix_module

    method = build("remix", tiny_bundle, warmup=1, warmup_weights=[0.25, 1.5], remix_weights=[2.0, 0.5])
    method.train()
    batch = first_batch(tiny_bundle)
    y = batch["label"]
    with torch.no_grad():  # the same train-mode forward the step takes (batch statistics; running ones unused)
        _, z, z_uni = method.model(method.inputs(batch))
    expected = (F.cross_entropy(z, y) + 0.25 * F.cross_entropy(z_uni["audio"], y)
                + 1.5 * F.cross_entropy(z_uni["visual"], y))
    assert method.update(batch, step_at(0))["loss"] == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    seen = []
    original = remix_module.remix_loss

    def record(z, z_uni, labels, codes, gammas):
        seen.append(list(gammas))
        return original(z, z_uni, labels, codes, gammas)

    monkeypatch.setattr(remix_module, "remix_loss", record)
    batch[EXTRA_KEY] = torch.arange(len(y)) % 2
    method.update(batch, step_at(1))
    assert seen == [[2.0, 0.5]]


def test_remix_update_on_a_mixed_batch_trains_both_unimodal_heads(tiny_bundle):
    method = build("remix", tiny_bundle, warmup=1)
    batch = first_batch(tiny_bundle)
    batch[EXTRA_KEY] = torch.arange(len(batch["label"])) % 2
    method.update(batch, step_at(1))
    for m in ("audio", "visual"):
        assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0
                   for p in method.model.head.uni[m].parameters())


@pytest.mark.parametrize("epoch", [0, 1])
def test_remix_steps_in_float64_report_the_float64_loss(tiny_bundle, epoch):
    with float64_default():
        method = build("remix", tiny_bundle, warmup=1)
        batch = first_batch64(tiny_bundle)
        codes = torch.arange(len(batch["label"])) % 2
        batch[EXTRA_KEY] = codes
        y = batch["label"]
        with torch.no_grad():
            if epoch == 0:
                _, z, z_uni = method.model(method.inputs(batch))
                expected = F.cross_entropy(z, y) + 0.5 * (F.cross_entropy(z_uni["audio"], y)
                                                          + F.cross_entropy(z_uni["visual"], y))
            else:
                h = method.model.features(method.inputs(batch))
                z, z_uni = method.model.head({"audio": h["audio"] * (codes == 0)[:, None],
                                              "visual": h["visual"] * (codes == 1)[:, None]})
                own = torch.where(codes == 0, F.cross_entropy(z_uni["audio"], y, reduction="none"),
                                  F.cross_entropy(z_uni["visual"], y, reduction="none"))
                expected = F.cross_entropy(z, y) + own.mean()
        logs = method.update(batch, step_at(epoch))
    # A float32 loss would differ from the float64 one at ~1e-8.
    assert logs["loss"] == pytest.approx(expected.item(), rel=1e-14, abs=0)


def test_remix_assign_scores_float64_logits_in_float64(tiny_bundle, monkeypatch):
    from baselines import remix

    seen = []
    monkeypatch.setattr(remix, "kl_to_uniform", lambda probs: seen.append(probs.dtype) or np.zeros(len(probs)))
    with float64_default():
        method = build("remix", tiny_bundle, warmup=0)
        loaders = loaders_for(tiny_bundle)
        loaders.train.gather = lambda rows, gather=loaders.train.gather: {
            k: v.double() for k, v in gather(rows).items()}
        method.assign(loaders)
    assert seen and all(d == np.float64 for d in seen)


def test_remix_update_past_warmup_without_the_selection_is_an_error(tiny_bundle):
    method = build("remix", tiny_bundle, warmup=1)
    with pytest.raises(KeyError, match="remix_modality"):
        method.update(first_batch(tiny_bundle), step_at(1))


def test_remix_rejects_weights_for_the_wrong_number_of_modalities(tiny_bundle):
    with pytest.raises(ValueError, match="remix.warmup_weights"):
        build("remix", tiny_bundle, warmup_weights=[0.5])


# --- BSS --------------------------------------------------------------------------------------------------------------

def test_bss_similarity_of_softmaxed_unimodal_predictions():
    def logits(rows):
        return torch.tensor(rows).log()  # softmax(log p) == p
    a = logits([[1.0, 0.0], [0.5, 0.5], [0.25, 0.75]])
    v = logits([[0.0, 1.0], [1.0, 0.0], [0.25, 0.75]])
    sim = pairwise_similarity({"audio": a, "visual": v})
    torch.testing.assert_close(sim, torch.tensor([0.0, math.sqrt(0.5), 1.0]), rtol=1e-6, atol=1e-6)
    # Three modalities: the mean over the three pairs, here (0 + 1 + 0) / 3.
    three = pairwise_similarity({"a": a[:1], "b": v[:1], "c": v[:1]})
    torch.testing.assert_close(three, torch.tensor([1.0 / 3.0]), rtol=1e-6, atol=1e-6)


def test_bss_sample_loss_weights_fused_and_unimodal_terms():
    z = torch.zeros(1, 2)                                            # CE ln 2
    z_uni = {"audio": torch.tensor([[math.log(3.0), 0.0]]),          # CE ln(4/3)
             "visual": torch.tensor([[0.0, math.log(3.0)]])}         # CE ln 4
    loss = sample_losses(z, z_uni, torch.tensor([0]), 0.1, 0.9)
    expected = torch.tensor([0.1 * math.log(2.0) + 0.9 * (math.log(4.0 / 3.0) + math.log(4.0))])
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)


SIM = np.array([0.2, 1.0, 0.6, 0.2])
LOSS = np.array([1.0, 0.0, 0.5, 3.0])  # normalised: sim (0, 1, .5, 0), loss (1/3, 0, 1/6, 1)


def test_bss_curriculum_orders_balanced_low_loss_first():
    # d = (1 - sim_n) + loss_n = (4/3, 0, 2/3, 2).
    np.testing.assert_array_equal(curriculum_order(SIM, LOSS), [1, 2, 0, 3])


def test_bss_root_pacing_function():
    assert pacing(0, 0.1, 40) == pytest.approx(math.sqrt(0.99 / 40 + 0.01), rel=1e-12)
    assert pacing(19, 0.1, 40) == pytest.approx(math.sqrt(0.505), rel=1e-12)
    assert pacing(39, 0.1, 40) == 1.0 and pacing(100, 0.1, 40) == 1.0


def test_bss_sampling_probabilities_hand_values():
    # s = loss_n - sim_n = (1/3, -1, -1/3, 1); w = 1 - s + 0.01.
    w = np.array([2.0 / 3.0 + 0.01, 2.01, 4.0 / 3.0 + 0.01, 0.01])
    np.testing.assert_allclose(sampling_probabilities(SIM, LOSS, 0.01), w / w.sum(), rtol=1e-12, atol=0)
    constant = sampling_probabilities(np.ones(3), np.ones(3), 0.01)  # no information: uniform, not NaN
    np.testing.assert_allclose(constant, np.full(3, 1.0 / 3.0), rtol=1e-12, atol=0)
    # A constant similarity column normalises to 0 (not 1): w = 1 - loss_n + 0.01 = (1.01, 0.51, 0.01).
    w = np.array([1.01, 0.51, 0.01])
    np.testing.assert_allclose(sampling_probabilities(np.full(3, 0.7), np.array([0.0, 0.5, 1.0]), 0.01), w / w.sum(),
                               rtol=1e-12, atol=0)


def test_bss_weighted_permutation_draws_first_rows_by_probability():
    probs = sampling_probabilities(SIM, LOSS, 0.01)
    generator = torch.Generator().manual_seed(0)
    firsts = np.zeros(4)
    for _ in range(4000):
        order = weighted_permutation(probs, generator)
        assert sorted(order) == [0, 1, 2, 3]
        firsts[order[0]] += 1
    np.testing.assert_allclose(firsts / 4000, probs, rtol=0, atol=0.03)


def crafted_measure(method, n: int, calls: list):
    rng = np.random.default_rng(1)
    sim, loss = rng.random(n), rng.random(n)

    def measure(_loaders):
        calls.append(1)
        return sim, loss
    method.measure = measure
    return sim, loss


def test_bss_heuristic_measures_once_and_grows_the_easy_prefix(tiny_bundle):
    method = build("bss", tiny_bundle, scheduler="heuristic")
    loaders = loaders_for(tiny_bundle)
    rows = loaders.train.base_rows
    calls: list = []
    sim, loss = crafted_measure(method, len(rows), calls)
    order = rows[curriculum_order(sim, loss)]
    first = method.select_rows(0, loaders)
    assert first.shuffle is True
    np.testing.assert_array_equal(first.rows, order[:int(len(rows) * pacing(0, 0.1, 40))])
    assert len(first.rows) == 11  # int(64 * 0.1864)
    last = method.select_rows(39, loaders)
    np.testing.assert_array_equal(last.rows, order)
    assert len(calls) == 1
    # The order is part of the checkpoint: a resumed run continues the same curriculum without re-measuring.
    clone = build("bss", tiny_bundle, scheduler="heuristic")
    clone.load_checkpoint_state(method.checkpoint_state())
    np.testing.assert_array_equal(clone.select_rows(5, loaders).rows, method.select_rows(5, loaders).rows)


def test_bss_learning_serves_a_seeded_weighted_permutation_in_order(tiny_bundle):
    method = build("bss", tiny_bundle)
    loaders = loaders_for(tiny_bundle)
    rows = loaders.train.base_rows
    calls: list = []
    crafted_measure(method, len(rows), calls)
    first = method.select_rows(3, loaders)
    assert first.shuffle is False and not first.extras
    np.testing.assert_array_equal(np.sort(first.rows), np.sort(rows))
    np.testing.assert_array_equal(method.select_rows(3, loaders).rows, first.rows)
    assert not np.array_equal(method.select_rows(4, loaders).rows, first.rows)
    assert len(calls) == 3  # re-measured every epoch


def test_bss_measure_mode_train_updates_batchnorm_statistics_eval_does_not(tiny_bundle):
    def running_means(method):
        return [m.running_mean.clone() for m in method.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    loaders = loaders_for(tiny_bundle)
    for variant, changes in (("paper", False), ("official_compat", True)):
        method = build("bss", tiny_bundle, variant=variant)
        before = running_means(method)
        sim, loss = method.measure(loaders)
        assert sim.shape == loss.shape == (len(loaders.train.base_rows),)
        moved = any(not torch.equal(a, b) for a, b in zip(before, running_means(method)))
        assert moved is changes, variant
        assert method.model.training


def test_bss_official_compat_measures_in_training_size_batches(tiny_bundle):
    # The scripts' measurer reads the training rows in batches of args.batch_size in train mode: the batch statistics
    # and the number of running-statistics updates follow the training batch (16 here), not the evaluation batch.
    loaders = loaders_for(tiny_bundle)
    method = build("bss", tiny_bundle, variant="official_compat")
    bn = next(m for m in method.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = int(bn.num_batches_tracked)
    method.measure(loaders)
    assert int(bn.num_batches_tracked) - before == math.ceil(len(loaders.train.base_rows) / 16)


def test_bss_scores_and_loss_of_float64_logits_stay_float64(tiny_bundle):
    gen = torch.Generator().manual_seed(0)
    z, a, v = (torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    y = torch.tensor([0, 1, 2, 1, 0])
    sim = pairwise_similarity({"audio": a, "visual": v})
    loss = sample_losses(z, {"audio": a, "visual": v}, y, 0.1, 0.9)
    assert sim.dtype == loss.dtype == torch.float64   # a float32 cast would round at ~1e-8
    torch.testing.assert_close(sim, torch.cosine_similarity(a.softmax(1), v.softmax(1), dim=1), rtol=1e-15, atol=0)
    def ce(logits):
        return torch.nn.functional.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(loss, 0.1 * ce(z) + 0.9 * (ce(a) + ce(v)), rtol=1e-15, atol=0)
    with float64_default():
        method = build("bss", tiny_bundle)
        batch = {k: (t.double() if t.is_floating_point() else t) for k, t in first_batch(tiny_bundle).items()}
        with torch.no_grad():
            _, zf, zu = method.model(method.inputs(batch))
            expected = sample_losses(zf, zu, batch["label"], 1.0, 1.0).mean().item()
        logs = method.update(batch, StepInfo(0, 0, 1, 1))
    assert logs["loss"] == expected


def test_bss_per_dataset_defaults_and_fused_output(tiny_bundle):
    cls = get_method("bss")
    cremad = resolve("bss", method_hparams(cls), "cremad", {}, variants=cls.VARIANTS)
    assert (cremad.fused_weight, cremad.unimodal_weight, cremad.fused_output) == (0.1, 0.9, "unimodal_sum")
    batch = first_batch(tiny_bundle)
    outputs = {}
    for kind in ("head", "unimodal_sum", "sum_all"):
        method = build("bss", tiny_bundle, fused_output=kind)
        method.eval()
        outputs[kind] = method.predict(batch)
    uni = outputs["head"].per_modality
    torch.testing.assert_close(outputs["unimodal_sum"].fused, uni["audio"] + uni["visual"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(outputs["sum_all"].fused, outputs["head"].fused + uni["audio"] + uni["visual"],
                               rtol=1e-6, atol=1e-6)



# --- BSS: selections in the loader's rows, the knobs select_rows reads, the logged diagnostics, the measurer --------

def reversed_loaders(bundle) -> Loaders:
    """Loaders whose training split lists its rows in reverse, so positions and dataset rows differ."""
    train = bundle.loader("train", batch_size=16, train=True, seed=0)
    return Loaders(train.derived(train.base_rows[::-1].copy(), train=True), None, None)


def test_bss_curriculum_keeps_tied_rows_in_row_order():
    # 64 rows of two difficulty levels: numpy's default (introsort) argsort reorders the ties beyond 16 elements.
    loss = np.tile([1.0, 0.0], 32)
    order = curriculum_order(np.zeros(64), loss)
    np.testing.assert_array_equal(order, np.concatenate([np.arange(1, 64, 2), np.arange(0, 64, 2)]))


def test_bss_heuristic_selects_loader_rows_with_its_pacing_knobs_and_logs_them(tiny_bundle):
    method = build("bss", tiny_bundle, scheduler="heuristic", lambda_0=0.5, t_grow=10)
    loaders = reversed_loaders(tiny_bundle)
    rows = loaders.train.base_rows
    sim, loss = crafted_measure(method, len(rows), [])
    selection = method.select_rows(2, loaders)
    fraction = math.sqrt(0.75 / 10 * 3 + 0.25)  # lambda_0 = 0.5, T_grow = 10, epoch 2
    assert fraction == pytest.approx(pacing(2, 0.5, 10), rel=1e-12)
    expected = rows[curriculum_order(sim, loss)][:int(64 * fraction)]
    np.testing.assert_array_equal(selection.rows, expected)
    assert method.on_epoch_end(2, loaders) == {"bss_fraction": pytest.approx(fraction, rel=1e-12),
                                               "bss_samples": float(len(expected))}


def test_bss_learning_permutes_loader_rows_with_its_weight_floor_and_logs_the_scores(tiny_bundle):
    method = build("bss", tiny_bundle, weight_floor=0.5)
    loaders = reversed_loaders(tiny_bundle)
    rows = loaders.train.base_rows
    sim, loss = crafted_measure(method, len(rows), [])
    selection = method.select_rows(3, loaders)
    probs = sampling_probabilities(sim, loss, 0.5)
    generator = torch.Generator().manual_seed(seed_for(method.ctx.train_hp.seed, 3, "bss_sequence"))
    np.testing.assert_array_equal(selection.rows, rows[weighted_permutation(probs, generator)])
    logs = method.on_epoch_end(3, loaders)
    assert logs == {"bss_samples": 64.0, "bss_similarity": pytest.approx(sim.mean(), rel=1e-12),
                    "bss_p_max": pytest.approx(probs.max(), rel=1e-12)}
    assert probs.max() != pytest.approx(sampling_probabilities(sim, loss, 0.01).max(), rel=1e-3)
    floor = next(p for p in get_method("bss").HPARAMS if p.name == "weight_floor")
    assert floor.default_for("nvgesture") == 0.0 and floor.default_for("cremad") == 0.01  # NVGesture: no +0.01


def test_bss_measure_scores_each_loader_row_in_order_with_the_loss_weights(tiny_bundle):
    method = build("bss", tiny_bundle, fused_weight=0.3, unimodal_weight=0.6)
    loaders = reversed_loaders(tiny_bundle)
    rows = loaders.train.base_rows
    sim, loss = method.measure(loaders)
    assert method.model.training
    method.eval()  # eval-mode BatchNorm: one batch of every row gives the same per-row values
    batch = next(iter(loaders.train.derived(rows, batch_size=len(rows))))
    np.testing.assert_array_equal(batch["index"].numpy(), rows)
    with torch.no_grad():
        _, z, z_uni = method.model(method.inputs(batch))
    # The network's forward in batches of 32 against one of 64: float32 ulps of the logits.
    np.testing.assert_allclose(sim, pairwise_similarity(z_uni).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, sample_losses(z, z_uni, batch["label"], 0.3, 0.6).numpy(), rtol=1e-5, atol=1e-6)

# --- published recipes --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, knobs", [
    ("remix", {"warmup": 10, "warmup_weights": [0.5, 0.5], "remix_weights": [1.0, 1.0]}),
    ("bss", {"scheduler": "learning", "fused_weight": 0.1, "unimodal_weight": 0.9, "fused_output": "unimodal_sum"}),
])
def test_recipe_configs_resolve_to_the_official_settings(method, knobs):
    head, sections = load_config_file(CONFIGS / method / "cremad.yaml")
    assert (head["method"], head["dataset"]) == (method, "cremad")
    config = build_config(method, "cremad", sections)
    resolved = config.method_hp
    assert {k: resolved[k] for k in knobs} == knobs


# --- a selection served the way the runner serves it --------------------------------------------------------------

@pytest.mark.parametrize("name, epoch, overrides", [("remix", 1, {"warmup": 1}), ("bss", 0, {})])
def test_an_epoch_on_the_served_selection_trains(name, epoch, overrides, tiny_bundle):
    method = build(name, tiny_bundle, **overrides)
    loaders = loaders_for(tiny_bundle)
    selection = method.select_rows(epoch, loaders)
    # Served as the runner serves it: the selected rows in order (RowSelection.shuffle is False for both), with extras.
    assert selection.shuffle is False
    served = tiny_bundle.loader("train", batch_size=16, train=False, seed=0)
    apply_selection(served, selection)
    seen = []
    for step, batch in enumerate(served):
        seen.append(batch["index"].numpy())
        logs = method.update(batch, StepInfo(epoch=epoch, step=step, steps_per_epoch=len(served), epochs=epoch + 2))
        assert math.isfinite(logs["loss"])
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.sort(loaders.train.base_rows))
