"""``mechanism_acted`` of the methods whose mechanism waits for a stage, a schedule or a decision: crafted epoch
histories pin True, False and None (a run logged without the keys), and short runner runs check the verdict the
method's own logs give where the gate is known to stay closed or to open."""

from __future__ import annotations

import pytest

from baselines.mses import MSES
from tests.conftest import acted, run_history
from tests.conftest import epoch_record as rec

OLD_RUN = [rec(0), rec(1)]  # a run logged before any of the keys below existed: nothing to judge


# MSES: the early stop.

def test_mses_acted_only_when_an_epoch_ends_with_a_stopped_modality():
    active = {"best_epoch_audio": 0.0, "best_epoch_visual": 1.0, "active_modalities": 2.0}
    stopped = {"best_epoch_audio": 0.0, "best_epoch_visual": 1.0, "active_modalities": 1.0}
    assert acted("mses", [rec(0, diag=active), rec(1, diag=active)]) is False
    assert acted("mses", [rec(0, diag=active), rec(1, diag=stopped)]) is True
    # Once both stopped the diag holds the count alone.
    assert acted("mses", [rec(0, diag=active), rec(1, diag={"active_modalities": 0.0})]) is True
    three = {"best_epoch_a": 0.0, "best_epoch_b": 0.0, "best_epoch_c": 0.0, "active_modalities": 3.0}
    assert acted("mses", [rec(0, diag=three)]) is False
    assert acted("mses", [rec(0, diag={**three, "active_modalities": 2.0})]) is True
    assert acted("mses", OLD_RUN) is None


def test_mses_default_patience_never_stops_a_short_run(tmp_path):
    history = run_history(tmp_path, "mses", 2)
    assert [r["diag"]["active_modalities"] for r in history] == [2.0, 2.0]
    assert MSES.mechanism_acted(history) is False


def test_mses_stop_through_the_runner_is_judged_acted(tmp_path, monkeypatch):
    # Held-out losses that only rise: with patience 0 both modalities stop after epoch 1 (best epoch 0).
    rising = iter([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    monkeypatch.setattr(MSES, "modality_losses", lambda self, loaders: next(rising))
    history = run_history(tmp_path, "mses", 3, patience=0)
    assert [r["diag"]["active_modalities"] for r in history] == [2.0, 0.0, 0.0]
    assert MSES.mechanism_acted(history) is True


# Diagnosing & Re-learning: a re-initialisation.

def test_relearning_acted_only_when_a_diagnosis_moved_an_encoder():
    none_due = [rec(0, {"relearn_diagnoses": 0.0}), rec(1, {"relearn_diagnoses": 0.0})]
    assert acted("relearning", none_due) is False
    zero = {"relearn_alpha_audio": 0.0, "relearn_alpha_visual": 0.0}
    assert acted("relearning", [rec(0, {"relearn_diagnoses": 0.0}, zero)]) is False
    assert acted("relearning", [rec(0, diag=zero)]) is False  # an older run that diagnosed with alpha 0
    moved = {"relearn_alpha_audio": 0.0, "relearn_alpha_visual": 0.05}
    assert acted("relearning", [rec(0, {"relearn_diagnoses": 0.0}), rec(1, {"relearn_diagnoses": 0.0}, moved)]) \
        is True
    assert acted("relearning", OLD_RUN) is None


def test_relearning_run_before_its_first_diagnosis_did_not_act_and_after_it_did(tmp_path):
    history = run_history(tmp_path / "closed", "relearning", 2)
    assert [r["train"]["relearn_diagnoses"] for r in history] == [0.0, 0.0]
    assert all(r["diag"] == {} for r in history)
    assert acted("relearning", history) is False
    # reinit_epoch 1: the diagnosis after epoch 1 interpolates with alpha > 0 unless the purities tie exactly.
    history = run_history(tmp_path / "open", "relearning", 3, reinit_epoch=1, reinit_num=1)
    assert [r["train"]["relearn_diagnoses"] for r in history] == [0.0, 0.0, 1.0]
    alphas = [v for k, v in history[1]["diag"].items() if k.startswith("relearn_alpha_")]
    assert len(alphas) == 2 and max(alphas) > 0
    assert acted("relearning", history) is True


# DI-MML: the DUC term.

def test_dimml_acted_only_when_duc_trained_with_an_effective_dimension():
    before = {"dimml_stage": 1.0, "dimml_duc_dims_first": 0.0, "dimml_duc_dims_second": 0.0}
    ready = {"dimml_stage": 1.0, "dimml_duc_dims_first": 0.0, "dimml_duc_dims_second": 3.0}
    assert acted("dimml", [rec(0, {"ce_unimodal": 1.0}, before), rec(1, {"ce_unimodal": 1.0}, before)]) is False
    assert acted("dimml", [rec(0, {"duc": 4.1}, before)]) is False  # both dimension sets empty: no gradient
    # The sets are filled but stage 2 came before any DUC step.
    assert acted("dimml", [rec(0, {}, ready), rec(1, {}, {**ready, "dimml_stage": 2.0})]) is False
    assert acted("dimml", [rec(0, {}, before), rec(1, {"duc": 4.1}, ready)]) is True
    assert acted("dimml", OLD_RUN) is None


def test_dimml_run_ending_before_duc_start_did_not_act(tmp_path):
    history = run_history(tmp_path, "dimml", 2)
    assert all("duc" not in r["train"] for r in history)
    assert acted("dimml", history) is False


def test_dimml_run_past_duc_start_acted(tmp_path):
    history = run_history(tmp_path, "dimml", 4, duc_start=0)
    assert "duc" in history[0]["train"]
    dims = history[0]["diag"]["dimml_duc_dims_first"] + history[0]["diag"]["dimml_duc_dims_second"]
    assert dims > 0
    assert acted("dimml", history) is True


# ReconBoost: the reconcilement against the other ensemble members.

def test_reconboost_acted_only_when_a_modality_step_saw_other_members():
    assert acted("reconboost", [rec(0, {"reconciled": 0.0}), rec(1, {"beta": 1.0})]) is False
    assert acted("reconboost", [rec(0, {"reconciled": 0.0}), rec(1, {"reconciled": 0.25})]) is True
    assert acted("reconboost", OLD_RUN) is None


def test_reconboost_first_stage_without_pretraining_did_not_act(tmp_path):
    # Stage 0 boosts the first learner while F holds no other member: q_y = 1 at every step.
    history = run_history(tmp_path, "reconboost", 2, pretrain=False, modality_epochs=2)
    assert [r["train"]["reconciled"] for r in history] == [0.0, 0.0]
    assert acted("reconboost", history) is False


def test_reconboost_with_pretraining_acted_from_the_first_step(tmp_path):
    history = run_history(tmp_path, "reconboost", 2, pretrain_epochs=1, modality_epochs=2)
    assert [r["train"]["reconciled"] for r in history] == [1.0, 1.0]
    assert acted("reconboost", history) is True


# BSS: the curriculum prefix or the weighted sequence.

def test_bss_acted_only_when_the_sampler_departed_from_a_plain_shuffle():
    assert acted("bss", [rec(0, diag={"bss_fraction": 1.0, "bss_samples": 64.0})]) is False
    assert acted("bss", [rec(0, diag={"bss_fraction": 0.999, "bss_samples": 63.0})]) is True
    uniform = {"bss_samples": 64.0, "bss_similarity": 0.5, "bss_p_max": 1 / 64 * (1 + 1e-15)}
    assert acted("bss", [rec(0, diag=uniform)]) is False
    assert acted("bss", [rec(0, diag=uniform), rec(1, diag={**uniform, "bss_p_max": 0.02})]) is True
    assert acted("bss", OLD_RUN) is None


def test_bss_heuristic_pacing_acts_below_the_whole_set_only(tmp_path):
    history = run_history(tmp_path / "full", "bss", 2, scheduler="heuristic", lambda_0=1.0)
    assert [r["diag"]["bss_fraction"] for r in history] == [1.0, 1.0]
    assert acted("bss", history) is False
    history = run_history(tmp_path / "prefix", "bss", 2, scheduler="heuristic", t_grow=40)
    assert history[0]["diag"]["bss_fraction"] < 1
    assert acted("bss", history) is True


# Remix: training past the warm-up.

def test_remix_acted_only_past_its_warmup():
    assert acted("remix", [rec(0, {"remixed": 0.0}), rec(1, {"remixed": 0.0})]) is False
    assert acted("remix", [rec(0, {"remixed": 0.0}), rec(1, {"remixed": 1.0})]) is True
    # An older run: its decoupling diag shows the remixed epoch.
    assert acted("remix", [rec(0), rec(1, diag={"remix_rows_audio": 60.0, "remix_rows_visual": 4.0})]) is True
    assert acted("remix", OLD_RUN) is None


def test_remix_run_inside_and_past_its_warmup(tmp_path):
    history = run_history(tmp_path / "warm", "remix", 2, warmup=2)
    assert [r["train"]["remixed"] for r in history] == [0.0, 0.0]
    assert acted("remix", history) is False
    history = run_history(tmp_path / "past", "remix", 2, warmup=1)
    assert [r["train"]["remixed"] for r in history] == [0.0, 1.0]
    assert acted("remix", history) is True


# MIDAS: misaligned samples.

def test_midas_acted_only_when_misaligned_rows_were_kept():
    assert acted("midas", [rec(0, {"misaligned_kept": 0.0}), rec(1, {"misaligned_kept": 0.0})]) is False
    assert acted("midas", [rec(0, {"misaligned_kept": 0.0}), rec(1, {"misaligned_kept": 0.7})]) is True
    assert acted("midas", OLD_RUN) is None


def test_midas_run_inside_and_past_its_warmup(tmp_path):
    history = run_history(tmp_path / "warm", "midas", 2, warmup_epochs=2)
    assert [r["train"]["misaligned_kept"] for r in history] == [0.0, 0.0]
    assert acted("midas", history) is False
    history = run_history(tmp_path / "past", "midas", 2, warmup_epochs=1)
    assert history[1]["train"]["misaligned_kept"] > 0
    assert acted("midas", history) is True


# OPM: an executed drop with theta > 0.

def test_opm_acted_only_when_a_drop_ran_with_nonzero_probabilities():
    assert acted("opm", [rec(0, {"drop_executed": 0.0}), rec(1, {"drop_executed": 0.0, "q_audio": 0.3})]) is False
    assert acted("opm", [rec(0, {"drop_executed": 0.0}), rec(1, {"drop_executed": 0.25})]) is True
    assert acted("opm", OLD_RUN) is None


def test_opm_run_inside_and_past_its_warmup(tmp_path):
    history = run_history(tmp_path / "warm", "opm", 2)
    assert [r["train"]["drop_executed"] for r in history] == [0.0, 0.0]
    assert acted("opm", history) is False
    # p_exe 0: every drop draw fails, so no step is modulated although q > 0.
    history = run_history(tmp_path / "never", "opm", 1, warmup_epochs=0, p_exe=0.0)
    train = history[0]["train"]
    assert train["drop_executed"] == 0.0 and train["q_audio"] + train["q_visual"] > 0
    assert acted("opm", history) is False
    history = run_history(tmp_path / "past", "opm", 1, warmup_epochs=0, p_exe=1.0)
    assert history[0]["train"]["drop_executed"] == 1.0
    assert acted("opm", history) is True


# ARL: training past the warm-up.

def test_arl_acted_only_past_its_warmup():
    assert acted("arl", [rec(0, {"arl_active": 0.0}), rec(1, {"arl_active": 0.0})]) is False
    assert acted("arl", [rec(0, {"arl_active": 0.0}), rec(1, {"arl_active": 1.0})]) is True
    assert acted("arl", [rec(0), rec(1, {"w_audio": 0.4, "w_visual": 0.6})]) is True  # an older run
    assert acted("arl", OLD_RUN) is None


def test_arl_run_inside_and_past_its_warmup(tmp_path):
    history = run_history(tmp_path / "warm", "arl", 2)
    assert [r["train"]["arl_active"] for r in history] == [0.0, 0.0]
    assert acted("arl", history) is False
    history = run_history(tmp_path / "past", "arl", 2, start_epoch=0)
    assert [r["train"]["arl_active"] for r in history] == [0.0, 1.0]
    assert acted("arl", history) is True


@pytest.mark.parametrize("name", ["gblending", "iprm", "umt"])
def test_methods_acting_at_every_step_leave_nothing_to_judge(name):
    assert acted(name, [rec(0), rec(1)]) is None
