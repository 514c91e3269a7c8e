"""``mechanism_acted`` of the gradient-modulation, loss-gating and resampling methods: crafted histories pin each
verdict, and a short real run shows the verdict its own logs give with the gate held closed (or left open)."""

from __future__ import annotations

import pytest

from tests.conftest import acted, run_history
from tests.conftest import epoch_record as rec

OLD_RECORDS = [rec(0), rec(1, diag={"other": 2.0})]


# --- crafted histories ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ogm", "ogm_ge", "agm", "pmr", "mslr", "inforeg", "mmpareto", "mnl", "amco",
                                  "greedy", "smv"])
def test_history_without_the_judged_keys_is_not_judged(name):
    assert acted(name, OLD_RECORDS) is None
    assert acted(name, []) is None


def test_ogm_acts_only_where_a_window_epoch_has_a_coefficient_below_one():
    idle = {"coeff_a": 1.0, "coeff_v": 1.0}
    slowed = {"coeff_a": 1.0, "coeff_v": 0.999}
    assert acted("ogm", [rec(0, idle, {"ogm_window": 1.0}), rec(1, slowed, {"ogm_window": 1.0})]) is True
    # k below 1 outside the window was computed but not applied; k = 1 inside it changes nothing.
    assert acted("ogm", [rec(0, slowed, {"ogm_window": 0.0}), rec(1, idle, {"ogm_window": 1.0})]) is False
    assert acted("ogm", [rec(0, slowed, {"ogm_window": 0.0})]) is False


def test_ogm_ge_acts_in_any_window_epoch_whatever_its_coefficients():
    idle = {"coeff_a": 1.0, "coeff_v": 1.0}
    assert acted("ogm_ge", [rec(0, idle, {"ogm_window": 0.0}), rec(1, idle, {"ogm_window": 1.0})]) is True
    assert acted("ogm_ge", [rec(0, {"coeff_a": 0.3}, {"ogm_window": 0.0}),
                            rec(1, idle, {"ogm_window": 0.0})]) is False


def test_agm_acts_only_where_a_window_epoch_has_a_coefficient_other_than_one():
    assert acted("agm", [rec(0, {"k_a": 1.0, "k_v": 1.0}, {"agm_window": 1.0}),
                         rec(1, {"k_a": 1.0, "k_v": 1.2}, {"agm_window": 1.0})]) is True
    assert acted("agm", [rec(0, {"k_a": 0.8, "k_v": 1.0}, {"agm_window": 1.0})]) is True
    assert acted("agm", [rec(0, {"k_a": 0.8, "k_v": 1.2}, {"agm_window": 0.0}),
                         rec(1, {"k_a": 1.0, "k_v": 1.0}, {"agm_window": 1.0})]) is False


def test_pmr_acts_where_some_step_added_the_prototypical_term():
    assert acted("pmr", [rec(0, {"proto_applied": 0.0}), rec(1, {"proto_applied": 0.25})]) is True
    assert acted("pmr", [rec(0, {"proto_applied": 0.0}), rec(1, {"proto_applied": 0.0})]) is False


def test_mslr_acts_where_an_applied_multiplier_differs_from_one():
    assert acted("mslr", [rec(0, diag={"mslr_applied_a": 1.0, "mslr_applied_v": 1.0}),
                          rec(1, diag={"mslr_applied_a": 1.0, "mslr_applied_v": 1.02})]) is True
    assert acted("mslr", [rec(0, diag={"mslr_applied_a": 0.9, "mslr_applied_v": 1.1})]) is True
    # mslr_coeff_* are the next epoch's multipliers, not evidence of this one's.
    assert acted("mslr", [rec(0, diag={"mslr_applied_a": 1.0, "mslr_applied_v": 1.0, "mslr_coeff_a": 0.9})]) is False


def test_inforeg_acts_where_some_beta_is_positive():
    assert acted("inforeg", [rec(0, {"beta_a": 0.0, "beta_v": 0.0}), rec(1, {"beta_a": 1.3, "beta_v": 0.0})]) is True
    assert acted("inforeg", [rec(0, {"beta_a": 0.0, "beta_v": 0.0}), rec(1, {"beta_a": 0.0, "beta_v": 0.0})]) is False


def test_mmpareto_acts_where_a_pareto_weight_left_one_half():
    assert acted("mmpareto", [rec(0, {"k_mm_a": 0.5, "k_mm_v": 0.5}), rec(1, {"k_mm_a": 0.5, "k_mm_v": 0.49})]) is True
    assert acted("mmpareto", [rec(0, {"k_mm_a": 0.5, "k_mm_v": 0.5, "cos_a": -0.1})]) is False


def test_mnl_acts_where_some_sample_was_guided():
    none = {"guided_a": 0.0, "guided_v": 0.0}
    assert acted("mnl", [rec(0, none), rec(1, {"guided_a": 0.0, "guided_v": 0.1})]) is True
    assert acted("mnl", [rec(0, none)]) is False


def test_amco_acts_where_some_step_masked():
    assert acted("amco", [rec(0, {"masked": 0.0, "dependent_a": 1.0}), rec(1, {"masked": 0.5})]) is True
    # A dependent modality under a mask ratio of 0 (epoch 0) is not masked.
    assert acted("amco", [rec(0, {"masked": 0.0, "dependent_a": 1.0, "mask_ratio": 0.0})]) is False


def test_greedy_acts_where_some_step_curated():
    assert acted("greedy", [rec(0, {"curating": 0.0}), rec(1, {"curating": 0.2})]) is True
    assert acted("greedy", [rec(0, {"curating": 0.0, "d_bdr": 0.5}), rec(1, {"curating": 0.0})]) is False


def test_smv_acts_where_some_epoch_added_rows():
    assert acted("smv", [rec(0, {"smv_extra": 0.0}, {"smv_samples": 64.0}),
                         rec(1, {"smv_extra": 12.0}, {"smv_samples": 76.0})]) is True
    assert acted("smv", [rec(0, {"smv_extra": 0.0}, {"smv_samples": 64.0}),
                         rec(1, {"smv_extra": 0.0}, {"smv_samples": 64.0, "smv_phi_a": 1.0})]) is False


def test_cml_has_no_gate():
    # Its chain CE terms enter every step's loss: nothing to judge.
    assert acted("cml", [rec(0, {"penalty": 0.0})]) is None


# --- real runs ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, closed, open_", [
    ("ogm", {"mod_start": 2}, {}),
    ("ogm_ge", {"mod_start": 2}, {}),
    ("agm", {"mod_start": 2}, {}),
    ("pmr", {"mod_start": 2}, {}),
    ("inforeg", {"k_threshold": 1.0}, {}),
    ("greedy", {"starting_epoch": 2}, {}),
    ("smv", {"warmup": 2}, {"warmup": 1}),
    ("mslr", {"coeffs": [1.0, 1.0]}, {}),
    ("mmpareto", {"variant": "bb_degenerate"}, {}),
])
def test_real_run_is_judged_not_acted_with_the_gate_held_closed_and_acted_with_it_open(name, closed, open_, tmp_path):
    assert acted(name, run_history(tmp_path / "closed", name, 2, **closed)) is False
    assert acted(name, run_history(tmp_path / "open", name, 2, **open_)) is True


def test_ogm_and_agm_with_alpha_zero_log_exactly_one_and_are_judged_not_acted(tmp_path):
    for name in ("ogm", "agm"):
        history = run_history(tmp_path, name, 1, alpha=0.0)
        assert all(v == 1.0 for k, v in history[0]["train"].items() if k != "loss"), history[0]["train"]
        assert acted(name, history) is False


def test_amco_is_not_masked_in_epoch_zero_and_is_masked_later(tmp_path):
    history = run_history(tmp_path, "amco", 2)
    assert history[0]["train"]["mask_ratio"] == 0.0 and history[0]["train"]["masked"] == 0.0
    assert acted("amco", history[:1]) is False
    assert history[1]["train"]["masked"] > 0.0
    assert acted("amco", history) is True


def test_mnl_guides_some_sample_in_a_real_run(tmp_path):
    history = run_history(tmp_path, "mnl", 1)
    assert acted("mnl", history) is True
