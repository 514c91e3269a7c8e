"""The demo's design-target checks and its comparison with an earlier run, on crafted summaries and curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.demo_checks import (
    compare_runs,
    design_targets,
    last_quarter_trend,
    load_reference,
    reproduction_markdown,
    targets_markdown,
)
from tests.numeric import approx64

TARGETS = {"trend": 0.02, "imbalance": 0.10, "headroom": 0.05, "reference_std": 0.02}


def _run(root: Path, name: str, label: str, seed: int, vals: list[float]) -> None:
    run = root / name
    run.mkdir(parents=True)
    (run / "job.json").write_text(json.dumps({"label": label, "seed": seed}))
    lines = [{"epoch": e, "val": {"acc": v}} for e, v in enumerate(vals)] + [{"final": True}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_last_quarter_trend_fits_a_line_over_the_last_quarter(tmp_path):
    # 8 epochs: the last quarter is epochs 6-7, fitted from epoch 5 (its start) on: 3 points.
    _run(tmp_path, "a0", "joint", 0, [0.1, 0.2, 0.3, 0.4, 0.5, 0.60, 0.62, 0.64])  # +0.02 per epoch -> +0.04
    _run(tmp_path, "a1", "joint", 1, [0.1, 0.2, 0.3, 0.4, 0.5, 0.70, 0.80, 0.70])  # jitter, no trend -> 0
    _run(tmp_path, "b0", "sum", 0, [0.1] * 8)                                      # not asked for
    _run(tmp_path, "c0", "unimodal_audio", 0, [0.1, 0.2, 0.3])                     # too short to judge
    _run(tmp_path, "a9", "joint", 0, [0.1] * 7 + [0.9])                             # another setting's run
    runs = [tmp_path / name for name in ("a0", "a1", "b0", "c0")]
    trend = last_quarter_trend(runs, ["joint", "unimodal_audio"])
    assert set(trend) == {"joint"}
    _run(tmp_path, "zz", "unimodal_audio", 1, [0.5] * 8)  # listed first; the order asked for wins
    assert list(last_quarter_trend([tmp_path / "zz", *runs], ["unimodal_audio", "joint"])) == ["unimodal_audio",
                                                                                                "joint"]
    assert trend["joint"][0] == pytest.approx(0.04, abs=1e-4)
    assert trend["joint"][1] == pytest.approx(0.0, abs=1e-4)


def _summary(**rows) -> dict:
    out = {"protocol": "clean", "rows": {}, "profile": "full", "seeds": [0, 1, 2], "epochs": 16, "design": "abc",
           "commit": "c0ffee",
           "machine": {"cpu_model": "CPU X", "torch_cpu_capability": "AVX2", "torch": "2.14.1", "numpy": "2.4"}}
    for label, acc in rows.items():
        out["rows"][label] = {k: list(v) for k, v in acc.items()}
    return out


def test_design_targets_report_each_target_met_or_missed():
    summary = _summary(unimodal_audio={"acc": (0.77, 0.034, 3)}, unimodal_visual={"acc": (0.75, 0.022, 3)},
                       joint={"acc": (0.85, 0.015, 3), "acc:visual": (0.38, 0.04, 3)},
                       ensemble={"acc": (0.90, 0.008, 3)})
    summary["convergence_trend"] = {"joint": {0: 0.0, 1: 0.01}, "unimodal_visual": {0: 0.05, 1: 0.0, 2: 0.02}}
    # the ensemble fuses final checkpoints: headroom compares final epochs, not joint's best-validation epoch
    summary["rows_final"] = {"joint": {"acc": [0.85, 0.01, 3]}, "ensemble": {"acc": [0.90, 0.008, 3]},
                             "unimodal_audio": {"acc": [0.76, 0.012, 3]}}
    summary["rows"]["joint"]["acc"] = [0.84, 0.015, 3]
    checks = {c["target"]: c for c in design_targets(summary, TARGETS)}
    assert checks["converged"]["measured"] == pytest.approx({"joint": 0.005, "unimodal_visual": 0.07 / 3})
    assert not checks["converged"]["met"], "visual's mean trend 2.3 points exceeds 2"
    assert checks["imbalance"]["met"] and checks["imbalance"]["measured"]["gap"] == approx64(0.37)
    assert checks["headroom"]["met"] and checks["headroom"]["measured"]["headroom"] == approx64(0.05)
    assert "(both at the final epoch)" in checks["headroom"]["text"]
    assert checks["seed spread"]["measured"] == {"unimodal_audio": 0.034, "unimodal_visual": 0.022, "ensemble": 0.008,
                                                 "joint": 0.015}
    assert not checks["seed spread"]["met"]
    # The final epoch's spread is shown beside the judged one (the rows that have a final-epoch record), never judged;
    # the ensemble fuses final checkpoints, so its final-epoch spread would repeat the judged one.
    assert checks["seed spread"]["other_epoch"] == {"epoch": "final epoch", "std": {"unimodal_audio": 0.012,
                                                                                    "joint": 0.01}}
    assert "(sample std, at the epoch the table reports: the best-validation epoch)" in checks["seed spread"]["text"]
    lines = "\n".join(targets_markdown(list(checks.values()), {"unimodal_audio": "Unimodal (audio)"}, 3))
    assert "this run's 3 seed(s)" in lines and "| **no** |" in lines
    assert "a std over 3 seeds by about 50% of itself" in lines, "1 / sqrt(2 (3 - 1)) = 0.5"
    assert "Unimodal (audio) 3.4" in lines and "+37.0" in lines
    assert "joint 1.5 (final epoch, not judged: Unimodal (audio) 1.2, joint 1.0) | **no** |" in lines


def test_a_table_at_the_final_epoch_judges_its_spread_there_and_shows_the_best_validation_one_beside():
    summary = _summary(unimodal_audio={"acc": (0.64, 0.014, 3)}, unimodal_visual={"acc": (0.86, 0.002, 3)},
                       ensemble={"acc": (0.90, 0.014, 3)}, joint={"acc": (0.69, 0.017, 3)})
    summary["protocol"] = "last"
    summary["rows_final"] = {k: {"acc": list(v["acc"])} for k, v in summary["rows"].items()}
    # The best-validation epochs vary more; they are shown, not judged. The final rows are not read here.
    summary["rows_best_val"] = {"unimodal_audio": {"acc": [0.63, 0.014, 3]}, "joint": {"acc": [0.70, 0.034, 3]}}
    summary["rows_final"]["joint"]["acc"][1] = 0.5
    spread = {c["target"]: c for c in design_targets(summary, TARGETS)}["seed spread"]
    assert spread["met"] and spread["measured"]["joint"] == 0.017
    assert "at the epoch the table reports: the final epoch)" in spread["text"]
    assert spread["other_epoch"] == {"epoch": "best-validation epoch", "std": {"unimodal_audio": 0.014, "joint": 0.034}}
    lines = "\n".join(targets_markdown([spread], {"joint": "Concat"}, 3))
    assert "Concat 1.7 (best-validation epoch, not judged: unimodal_audio 1.4, Concat 3.4) | yes |" in lines


def test_the_seed_spread_target_judges_the_ensemble_row_too():
    # References and joint steady; the ensemble of the unimodal models, a reference row of the table, is not.
    summary = _summary(unimodal_audio={"acc": (0.64, 0.007, 3)}, unimodal_visual={"acc": (0.86, 0.007, 3)},
                       ensemble={"acc": (0.77, 0.026, 3)}, joint={"acc": (0.70, 0.011, 3)})
    spread = {c["target"]: c for c in design_targets(summary, TARGETS)}["seed spread"]
    assert spread["measured"]["ensemble"] == 0.026 and not spread["met"]
    assert "ensemble" in spread["text"]
    summary["rows"]["ensemble"]["acc"] = [0.77, 0.02, 3]
    assert {c["target"]: c for c in design_targets(summary, TARGETS)}["seed spread"]["met"]


def test_converged_is_the_mean_size_of_the_seeds_trends_so_opposite_trends_do_not_cancel():
    summary = _summary(joint={"acc": (0.85, 0.0, 1)})
    summary["convergence_trend"] = {"joint": {0: 0.10, 1: -0.10}, "unimodal_audio": {0: -0.01, 1: 0.01}}
    [converged] = design_targets(summary, TARGETS)
    assert converged["measured"] == pytest.approx({"joint": 0.10, "unimodal_audio": 0.01})
    assert not converged["met"], "seeds moving +10 and -10 points have not converged"
    lines = "\n".join(targets_markdown([converged], {"joint": "Concat"}, 2))
    assert "size of the least-squares trend, mean over seeds" in lines and "Concat 10.0" in lines
    assert "a std over 2 seeds by about 71% of itself" in lines
    assert "of itself" not in "\n".join(targets_markdown([converged], {}, 1)), "one seed has no std to qualify"


def test_design_targets_skip_what_the_run_cannot_show():
    one_seed = _summary(joint={"acc": (0.5, 0.0, 1)}, unimodal_audio={"acc": (0.6, 0.0, 1)})
    assert design_targets(one_seed, TARGETS) == [], "no ensemble, no visual row, no curves, no spread over one seed"


def test_compare_runs_counts_identical_rows_and_names_those_outside_the_std():
    reference = _summary(joint={"acc": (0.85, 0.02, 3)}, sum={"acc": (0.80, 0.01, 3)}, agm={"acc": (0.5, 0.2, 3)})
    same = compare_runs(reference, json.loads(json.dumps(reference)), "results/demo/summary.json")
    assert same["comparable"] and same["identical"] == same["within_std"] == same["rows"] == 3
    assert same["max_abs_delta"] == 0.0 and same["unchecked"] == []
    rerun = _summary(joint={"acc": (0.86, 0.02, 3)}, sum={"acc": (0.82, 0.01, 3)}, agm={"acc": (0.5, 0.2, 3)},
                     new={"acc": (0.1, 0.0, 3)})
    out = compare_runs(reference, rerun, "ref.json")
    assert (out["rows"], out["identical"], out["within_std"]) == (3, 1, 2)
    assert out["outside_std"] == {"sum": [0.80, 0.01, 0.82]} and out["max_abs_delta"] == approx64(0.02)
    text = "\n".join(reproduction_markdown(out, {"sum": "Sum"}))
    assert "1 of 3 rows identical" in text and "Sum 82.0% (was 80.0 ± 1.0)" in text and "CPU X" in text
    assert out["only_here"] == ["new"] and out["only_there"] == [] and "Rows not compared: new in this run: New" in (
        "\n".join(reproduction_markdown(out, {"new": "New"})))
    assert out["machine_differs"] == [] and "differ in" not in text
    rerun["machine"] = {**rerun["machine"], "torch_cpu_capability": "AVX512"}
    out = compare_runs(reference, rerun, "ref.json")
    assert out["machine_differs"] == ["torch_cpu_capability"]
    assert "differ in torch_cpu_capability" in "\n".join(reproduction_markdown(out, {}))


def test_a_comparison_of_reused_runs_says_it_is_not_an_independent_reproduction():
    reference = _summary(joint={"acc": (0.85, 0.02, 3)})
    rerun = {**json.loads(json.dumps(reference)), "runs_trained": 0, "runs_reused": 3, "runs_dir": "runs/full"}
    text = "\n".join(reproduction_markdown(compare_runs(reference, rerun, "ref.json"), {}))
    assert "reused 3 finished runs from the work folder's `runs/full`: not an independent reproduction" in text
    assert "1 of 1 rows identical" in text
    partly = {**rerun, "runs_trained": 1, "runs_reused": 2}
    text = "\n".join(reproduction_markdown(compare_runs(reference, partly, "ref.json"), {}))
    assert "trained 1 run and reused 2 finished runs from the work folder's `runs/full`" in text
    assert "not independently" in text
    fresh = {**rerun, "runs_trained": 3, "runs_reused": 0}
    assert "reused" not in "\n".join(reproduction_markdown(compare_runs(reference, fresh, "ref.json"), {}))


def test_compare_runs_refuses_other_settings_and_says_what_it_could_not_check():
    reference = _summary(joint={"acc": (0.85, 0.02, 3)})
    other = _summary(joint={"acc": (0.85, 0.02, 3)})
    other["seeds"], other["design"] = [0], "xyz"
    out = compare_runs(reference, other, "ref.json")
    assert not out["comparable"] and out["differs"] == ["seeds", "design"]
    assert "it differs in seeds, design" in "\n".join(reproduction_markdown(out, {}))
    del reference["design"]
    out = compare_runs(reference, _summary(joint={"acc": (0.85, 0.02, 3)}), "ref.json")
    assert out["comparable"] and out["unchecked"] == ["design"]
    assert "does not record its design" in "\n".join(reproduction_markdown(out, {}))


def test_load_reference_reports_unreadable_summaries_and_skips_them(tmp_path):
    notes = []
    assert load_reference(tmp_path / "absent.json", notes.append) is None and notes == []
    (tmp_path / "bad.json").write_text("{not json")
    assert load_reference(tmp_path / "bad.json", notes.append) is None
    (tmp_path / "list.json").write_text("[1, 2]")
    assert load_reference(tmp_path / "list.json", notes.append) is None
    assert len(notes) == 2 and "bad.json" in notes[0] and "JSONDecodeError" in notes[0] and "list.json" in notes[1]
    (tmp_path / "norows.json").write_text(json.dumps({"runs": 3}))
    assert load_reference(tmp_path / "norows.json", notes.append) is None
    assert len(notes) == 3 and "no 'rows' mapping" in notes[2]
    (tmp_path / "ok.json").write_text(json.dumps({"rows": {}}))
    assert load_reference(tmp_path / "ok.json", notes.append) == {"rows": {}} and len(notes) == 3


def test_last_quarter_of_few_epochs_is_one_epoch_fitted_from_the_one_before(tmp_path):
    # 4 epochs: the last quarter is epoch 3, fitted from epoch 2: a rise before that is no trend.
    _run(tmp_path, "a0", "joint", 0, [0.1, 0.5, 0.6, 0.6])
    assert last_quarter_trend([tmp_path / "a0"], ["joint"]) == {"joint": {0: 0.0}}


def test_design_targets_met_exactly_at_their_limits():
    # Values exact in binary, so each measure equals its limit: every target is "at most" / "at least", inclusive.
    limits = {"trend": 0.25, "imbalance": 0.125, "headroom": 0.25, "reference_std": 0.25}
    summary = _summary(unimodal_visual={"acc": (0.75, 0.25, 3)}, joint={"acc": (0.5, 0.25, 3),
                                                                        "acc:visual": (0.625, 0.0, 3)})
    summary["convergence_trend"] = {"joint": {0: 0.25, 1: -0.25}}
    summary["rows_final"] = {"joint": {"acc": [0.5, 0.0, 1]}, "ensemble": {"acc": [0.75, 0.0, 1]}}
    checks = {c["target"]: c for c in design_targets(summary, limits)}
    assert checks["converged"]["measured"] == {"joint": 0.25} and checks["converged"]["met"]
    assert checks["imbalance"]["measured"] == {"gap": 0.125} and checks["imbalance"]["met"]
    assert checks["headroom"]["measured"] == {"headroom": 0.25} and checks["headroom"]["met"]
    spread = checks["seed spread"]
    assert spread["measured"] == {"unimodal_visual": 0.25, "joint": 0.25} and spread["met"]
    assert "other_epoch" not in spread, "a final-epoch row of one seed has no spread to show"
    lines = "\n".join(targets_markdown([checks["headroom"], checks["imbalance"]], {}, 3))
    assert "| +25.0 | yes |" in lines and "| +12.5 | yes |" in lines, "gap and headroom are shown bare and signed"


def test_compare_runs_counts_a_row_at_exactly_the_std_within_and_identical_only_in_every_number():
    reference = _summary(joint={"acc": (0.5, 0.25, 3)}, sum={"acc": (0.5, 0.125, 3)})
    rerun = _summary(joint={"acc": (0.75, 0.25, 3)}, sum={"acc": (0.5, 0.25, 3)})
    out = compare_runs(reference, rerun, "ref.json")
    assert out["within_std"] == 2 and out["outside_std"] == {}
    assert out["identical"] == 0, "the same mean with another std is not an identical row"


def test_reproduction_text_names_rows_only_in_the_reference_and_a_single_reused_run():
    reference = _summary(joint={"acc": (0.85, 0.02, 3)}, sum={"acc": (0.8, 0.01, 3)})
    rerun = {**_summary(joint={"acc": (0.85, 0.02, 3)}), "runs_trained": 2, "runs_reused": 1, "runs_dir": "runs/full"}
    text = "\n".join(reproduction_markdown(compare_runs(reference, rerun, "ref.json"), {"sum": "Sum"}))
    assert "Rows not compared: only in that run: Sum." in text
    assert "trained 2 runs and reused 1 finished run from the work folder's `runs/full`" in text


def test_last_quarter_trend_skips_runs_without_files_and_keeps_four_decimals_in_seed_order(tmp_path):
    # A job the pool never started has no folder files; seeds come back ascending whatever the folders' order.
    _run(tmp_path, "s2", "joint", 2, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6123, 0.6246])  # +0.0123 per epoch
    _run(tmp_path, "s0", "joint", 0, [0.5] * 8)
    (tmp_path / "metrics-only").mkdir()
    (tmp_path / "metrics-only" / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "val": {"acc": 0.5}}) + "\n")
    runs = [tmp_path / "never-started", tmp_path / "metrics-only", tmp_path / "s2", tmp_path / "s0"]
    trend = last_quarter_trend(runs, ["joint"])
    assert list(trend["joint"]) == [0, 2]
    assert trend["joint"][2] == 0.0246 and trend["joint"][0] == 0.0


def test_design_targets_leave_out_the_imbalance_of_a_joint_row_without_a_visual_head():
    summary = _summary(unimodal_visual={"acc": (0.75, 0.0, 1)}, joint={"acc": (0.85, 0.0, 1)})
    assert design_targets(summary, TARGETS) == []


def test_load_reference_skips_a_summary_it_cannot_compare_with_and_says_which_rows(tmp_path):
    # compare_runs reads each common row's acc[:2] after the whole demo has trained: a row without [mean, std] there
    # raised a bare TypeError or KeyError and the report was lost.
    notes = []
    for name, doc in (("scalar.json", {"rows": {"joint": {"acc": 0.85}, "sum": {"acc": [0.8, 0.01, 3]}}}),
                      ("no-acc.json", {"rows": {"joint": {"macro_f1": [0.8, 0.01, 3]}}}),
                      ("short.json", {"rows": {"joint": {"acc": [0.8]}}}),
                      ("text.json", {"rows": {"joint": {"acc": ["0.8", "0.01", 3]}}}),
                      ("row-list.json", {"rows": {"joint": [0.8, 0.01, 3]}}),
                      ("machine.json", {"rows": {"joint": {"acc": [0.8, 0.01, 3]}}, "machine": "CPU X"})):
        (tmp_path / name).write_text(json.dumps(doc))
        assert load_reference(tmp_path / name, notes.append) is None, name
    assert len(notes) == 6 and all(str(tmp_path) in note for note in notes)
    assert "['joint']" in notes[0] and "'acc' [mean, std, n]" in notes[0] and "machine" in notes[5]
    (tmp_path / "list-rows.json").write_text(json.dumps({"rows": [1, 2]}))
    assert load_reference(tmp_path / "list-rows.json", notes.append) is None and "no 'rows' mapping" in notes[-1]
    (tmp_path / "latin1.json").write_bytes(b'{"rows": {"caf\xe9": 1}}')
    assert load_reference(tmp_path / "latin1.json", notes.append) is None and "UnicodeDecodeError" in notes[-1]
    good = {"rows": {"joint": {"acc": [0.8, 0, 3], "acc:visual": [0.5, 0.1, 3]}}, "machine": {"cpu_model": "X"}}
    (tmp_path / "good.json").write_text(json.dumps(good))
    assert load_reference(tmp_path / "good.json", notes.append) == good and len(notes) == 8


def test_compare_runs_flags_a_row_below_the_reference_and_refuses_another_profile():
    reference = _summary(joint={"acc": (0.85, 0.02, 3)}, sum={"acc": (0.80, 0.01, 3)})
    rerun = _summary(joint={"acc": (0.85, 0.02, 3)}, sum={"acc": (0.7777, 0.01, 3)})
    rerun["commit"] = "fade"
    out = compare_runs(reference, rerun, "ref.json")
    assert out["outside_std"] == {"sum": [0.80, 0.01, 0.7777]}, "a fall counts as much as a rise"
    assert out["max_abs_delta"] == 0.0223 and out["reference_commit"] == "c0ffee"
    text = "\n".join(reproduction_markdown(out, {}))
    assert "`ref.json` (commit `c0ffee`, CPU X" in text and "difference of a row's mean accuracy is 2.23 points" in text
    disjoint = compare_runs(reference, _summary(new={"acc": (0.5, 0.0, 3)}), "ref.json")
    assert (disjoint["rows"], disjoint["max_abs_delta"]) == (0, 0.0)
    quick = {**_summary(joint={"acc": (0.85, 0.02, 3)}), "profile": "quick"}
    out = compare_runs(reference, quick, "ref.json")
    assert not out["comparable"] and out["differs"] == ["profile"]


def test_the_readme_has_no_target_or_comparison_section_when_there_is_none():
    assert targets_markdown([], {}, 3) == [] and reproduction_markdown(None, {}) == []


def test_imbalance_is_judged_by_the_configs_target_and_identical_means_every_number_of_a_row():
    summary = _summary(unimodal_visual={"acc": (0.75, 0.0, 1)},
                       joint={"acc": (0.8, 0.0, 1), "acc:visual": (0.63, 0.0, 1)})
    [imbalance] = design_targets(summary, {**TARGETS, "imbalance": 0.15})
    assert imbalance["measured"]["gap"] == approx64(0.12) and not imbalance["met"]
    reference = _summary(joint={"acc": (0.5, 0.25, 3), "acc:visual": (0.4, 0.1, 3)})
    rerun = _summary(joint={"acc": (0.5, 0.25, 3), "acc:visual": (0.41, 0.1, 3)})
    out = compare_runs(reference, rerun, "ref.json")
    assert (out["identical"], out["within_std"]) == (0, 1), "a head's accuracy differs"


def test_the_trend_reads_the_last_epoch_of_a_curve_written_as_the_runner_writes_it(tmp_path):
    # The runner writes one line per finished epoch and nothing after: the last line is the last epoch. 8 epochs, a
    # rise only at the last: the fit through epochs 5-7 (0.5, 0.5, 0.9) has slope 0.2 per epoch, times 2 epochs.
    run = tmp_path / "run"
    run.mkdir()
    (run / "job.json").write_text(json.dumps({"label": "joint", "seed": 0}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "val": {"acc": v}}) + "\n"
                                               for e, v in enumerate([0.5] * 7 + [0.9])))
    assert last_quarter_trend([run], ["joint"])["joint"][0] == pytest.approx(0.4, abs=1e-4)


def test_a_reference_without_a_design_digest_is_not_compared_across_epoch_counts():
    # Older summaries record no digest; the epoch count is then what tells a 16-epoch run from a 4-epoch one.
    reference = _summary(joint={"acc": (0.85, 0.02, 3)})
    del reference["design"]
    shorter = {**_summary(joint={"acc": (0.85, 0.02, 3)}), "epochs": 4}
    out = compare_runs(reference, shorter, "ref.json")
    assert not out["comparable"] and out["differs"] == ["epochs"]
