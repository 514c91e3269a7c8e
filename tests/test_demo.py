"""``augbench demo`` end to end (smoke profile, a few rows), its report helpers and the pool launcher it trains with."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from baselines.registry import list_methods
from benchmarks import collect, sweep
from benchmarks import demo as demo_module
from benchmarks.commands import demo as demo_command
from benchmarks.config import build_config, method_hparams
from benchmarks.demo import (
    DEMO_CONFIG,
    ENSEMBLE_LABEL,
    commits_line,
    default_results,
    findings,
    identical_rows,
    load_demo_config,
    longest_first,
    machine_record,
    previous_row_seconds,
    run_commits,
    run_demo,
    run_seconds,
    sweep_document,
    unstable_rows,
)
from tests.conftest import TINY_DATA, TINY_MODEL

# Knobs that count epochs (or epochs of patience): each must fire within the demo's schedule.
EPOCH_KNOBS = {"arl": ["start_epoch"], "bss": ["t_grow"], "dimml": ["duc_start"],
               "gblending": ["super_epoch", "estimate_epochs"], "greedy": ["starting_epoch"], "inforeg": ["window"],
               "lfm": ["alpha_lr_halve_every"], "midas": ["warmup_epochs"], "mses": ["patience"],
               "opm": ["warmup_epochs"], "reconboost": ["pretrain_epochs", "modality_epochs", "correct_epochs"],
               "relearning": ["reinit_epoch"], "remix": ["warmup"], "smv": ["warmup"], "umt": ["teacher_epochs"],
               "aug": ["aca_interval_epochs"]}


def test_demo_config_covers_every_registered_method_and_profiles_merge(tmp_path):
    full, smoke = load_demo_config(), load_demo_config(profile="smoke")
    assert full["seeds"] == [0, 1, 2] and smoke["seeds"] == [0]
    assert smoke["generate"]["train_clips"] < full["generate"]["train_clips"]
    assert smoke["generate"]["classes"] == full["generate"]["classes"], "profiles override key by key"
    assert smoke["defaults"]["model"] == full["defaults"]["model"]
    doc = sweep_document(full, tmp_path / "cache")
    rows = doc["methods"]
    assert set(list_methods()) - {"unimodal"} <= set(rows)
    assert rows["unimodal_visual"]["unimodal"] == {"modality": "visual"}
    assert list(rows)[:3] == ["unimodal_audio", "unimodal_visual", "joint"] and list(rows)[-1] == "aug"
    with pytest.raises(ValueError, match="not demo rows"):
        sweep_document(full, tmp_path, methods=["nope"])


# Knobs whose names read like epoch counts but need no demo schedule, and why.
NOT_EPOCH_SCHEDULES = {
    ("agm", "mod_start"): "0: modulation from the first epoch", ("ogm", "mod_start"): "0: from the first epoch",
    ("ogm_ge", "mod_start"): "0: from the first epoch", ("pmr", "mod_start"): "0: from the first epoch",
    ("dimml", "stage2_epochs"): "capped at half the run", ("lfm", "fit_epochs"): "the fitted curve's horizon",
    ("mses", "modulation_ends"): "-1: the whole run", ("mslr", "modulation_ends"): "-1: the whole run",
    ("relearning", "reinit_num"): "a count of re-initialisations", ("greedy", "window"): "batches, not epochs"}
EPOCH_LIKE = re.compile(r"epoch|warmup|patience|window|t_grow|reinit|start|stage|interval|ends")


def test_every_epoch_like_knob_of_a_registered_method_is_scheduled_or_exempt():
    # A new method's warm-up published for 100-200 epochs would otherwise never act in the demo, unnoticed.
    found = {(name, p.name) for name, cls in list_methods().items() for p in method_hparams(cls)
             if EPOCH_LIKE.search(p.name) and isinstance(p.default, (int, float)) and not isinstance(p.default, bool)}
    listed = {(m, k) for m, knobs in EPOCH_KNOBS.items() for k in knobs} | set(NOT_EPOCH_SCHEDULES)
    assert not found - listed, (f"epoch-count knobs {sorted(found - listed)}: give each a fraction in the demo "
                                "config's schedule: and EPOCH_KNOBS, or a reason in NOT_EPOCH_SCHEDULES")


@pytest.mark.parametrize("profile", [None, "quick"])
def test_every_epoch_schedule_fires_within_the_demo(profile):
    demo = load_demo_config(profile=profile)
    epochs = demo["defaults"]["train"]["epochs"]
    rows = sweep_document(demo, Path("cache"))["methods"]
    for method, knobs in EPOCH_KNOBS.items():
        hp = build_config(method, "av_digits", rows[method]).method_hp
        for knob in knobs:
            assert 0 < hp[knob] < epochs, f"{method}.{knob}={hp[knob]} never acts in {epochs} epochs ({profile})"
    assert build_config("gblending", "av_digits", rows["gblending"]).method_hp.estimate_epochs >= 2


def test_the_pool_gets_one_thread_per_worker_whatever_the_machine(tmp_path, monkeypatch):
    seen = {}

    def fake_pool(jobs, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop after the launch")

    monkeypatch.setattr(demo_module.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(demo_module.sweep, "run_pool", fake_pool)
    with pytest.raises(RuntimeError, match="stop after the launch"):
        run_demo(results=tmp_path / "r", work=tmp_path / "w", profile="smoke", workers=2, methods=["joint"],
                 log=lambda line: None)
    assert seen["threads_per_worker"] == 1 and seen["workers"] == 2


def test_demo_data_that_differs_only_in_its_media_gets_its_own_cache(tmp_path, monkeypatch):
    """Two demo configs that differ only in the audio SNR write the same split files; each gets its own cache and run
    settings in one work folder (a shared cache folder refused the second one's media)."""
    caches = []

    def fake_pool(jobs, **kwargs):
        caches.append({(job.cfg.data.cache, job.run_dir) for job in jobs})
        raise RuntimeError("stop after the launch")

    monkeypatch.setattr(demo_module.sweep, "run_pool", fake_pool)
    doc = yaml.safe_load(DEMO_CONFIG.read_text())
    doc["generate"]["audio_snr_db"] = doc["generate"]["audio_snr_db"] + 3.0
    louder = tmp_path / "louder.yaml"
    louder.write_text(yaml.safe_dump(doc))
    for config_path in (DEMO_CONFIG, louder):
        with pytest.raises(RuntimeError, match="stop after the launch"):
            run_demo(results=tmp_path / "r", work=tmp_path / "w", profile="smoke", workers=1, methods=["joint"],
                     config_path=config_path, log=lambda line: None)
    assert len(caches) == 2 and all(len(c) == 1 for c in caches) and caches[0] != caches[1]


def test_machine_record_names_versions_cpu_and_threads():
    rec = machine_record(workers=2)
    assert {"torch", "numpy", "cpu_model", "threads_per_worker", "workers", "torch_cpu_capability",
            "kernel_env"} <= set(rec)
    assert rec["threads_per_worker"] == 1 and rec["cpu_model"]


def _record(label: str, seed: int, acc: float) -> collect.RunRecord:
    test = {"acc": acc, "macro_f1": acc, "per_modality": {"audio": {"acc": acc}}}
    return collect.RunRecord(run_dir=Path(label), label=label, title=label.title(), method=label,
                             dataset="av_digits", seed=seed, protocols={"clean": {"test": test}})


def test_identical_rows_flags_a_row_equal_to_an_earlier_one_in_every_seed():
    records = [_record("sum", s, a) for s, a in ((0, 0.5), (1, 0.6))]
    records += [_record("mses", s, a) for s, a in ((0, 0.5), (1, 0.6))]
    records += [_record("ogm", s, a) for s, a in ((0, 0.5), (1, 0.61))]
    assert identical_rows(records[::-1], ["sum", "mses", "ogm"]) == {"mses": "sum"}
    assert identical_rows(records, ["mses", "sum", "ogm"]) == {"sum": "mses"}


def test_a_row_equal_only_at_the_best_validation_epoch_has_an_effect():
    # The mechanism acts after the selected epoch: clean numbers equal, best-on-test and last ones not. Both tables
    # would title the row "no effect: = Sum" while the best-on-test table shows other numbers for it.
    records = [_record(label, s, a) for label in ("sum", "ogm") for s, a in ((0, 0.5), (1, 0.6))]
    for rec in records:
        later = {"test": {"acc": 0.7 if rec.label == "ogm" else 0.65, "macro_f1": 0.7}}
        rec.protocols.update(paper=later, last=later)
    assert identical_rows(records, ["sum", "ogm"]) == {}


def test_unstable_rows_lists_rows_whose_seeds_disagree_by_more_than_the_threshold():
    records = [_record("agm", s, a) for s, a in ((0, 0.39), (1, 0.49), (2, 0.85))]  # std 0.24
    records += [_record("ogm", s, a) for s, a in ((2, 0.87), (0, 0.66), (1, 0.80))]  # std 0.107, seeds unsorted
    records += [_record("joint", s, a) for s, a in ((0, 0.84), (1, 0.87), (2, 0.85))]  # std 0.015
    assert unstable_rows(records, ["joint", "ogm", "agm"]) == {"ogm": [0.66, 0.8, 0.87], "agm": [0.39, 0.49, 0.85]}
    assert unstable_rows(records, ["joint", "ogm", "agm"], threshold=0.2) == {"agm": [0.39, 0.49, 0.85]}
    assert unstable_rows(records[:1], ["agm"]) == {}, "one seed has no spread"


def test_neither_demo_table_bolds_the_ensemble_of_final_checkpoints(monkeypatch):
    # Its Acc (visual) 85.19 (final checkpoints) was bolded in table_clean.md above the visual-only model's 85.00
    # (best-validation epoch), the protocol the caption names.
    labels = torch.tensor([0, 1, 0, 1])
    outputs = {"unimodal_audio": torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [0.6, 0.4]]),
               "unimodal_visual": torch.eye(2)[labels]}
    monkeypatch.setattr(demo_module, "_test_outputs", lambda run_dir: (outputs[run_dir.name], labels, 2))
    tests = {"unimodal_audio": {"acc": 0.5, "per_modality": {"audio": {"acc": 0.5}}},
             "unimodal_visual": {"acc": 0.75, "per_modality": {"visual": {"acc": 0.75}}},
             "joint": {"acc": 0.6, "per_modality": {"audio": {"acc": 0.4}, "visual": {"acc": 0.3}}}}
    records = [collect.RunRecord(run_dir=Path("runs") / label, label=label, title=label, method=label,
                                 dataset="av_digits", seed=0, protocols={p: {"test": test} for p in ("clean", "paper")})
               for label, test in tests.items()]
    records += demo_module.ensemble_records(records)
    for protocol in ("clean", "paper"):
        table = collect.build_table(records, protocol=protocol, metrics=("acc",), per_modality=True)
        visual = [c.metric for c in table.columns].index("acc:visual")
        bold = [title for title, cells in table.rows if cells[visual].best]
        assert dict(table.rows)[demo_module.ENSEMBLE_TITLE][visual].mean == 100.0
        assert bold == ["unimodal_visual"], protocol


def test_results_go_under_runs_unless_published():
    assert default_results(None, publish=False).parts[0] == "runs"
    assert default_results(None, publish=True) == Path("results/demo")
    assert default_results("quick", publish=True) == Path("results/demo-quick")


def test_cli_keeps_the_ci_arguments():
    parser = argparse.ArgumentParser()
    demo_command.configure(parser)
    args = parser.parse_args(["--smoke", "--work", "w", "--results", "r"])
    assert args.smoke and args.work == Path("w") and args.results == Path("r") and not args.publish


def test_pool_launcher_trains_then_skips_finished_runs(tmp_path):
    config = sweep.parse_config({"name": "pool", "seeds": [0], "datasets": {"synthetic": {}},
                                 "defaults": {"model": TINY_MODEL, "data": TINY_DATA, "train": {"epochs": 1}},
                                 "methods": {"joint": {}, "sum": {}}})
    jobs = sweep.expand(config, tmp_path, log=lambda line: None)
    report = sweep.run_pool(jobs, workers=1, out=tmp_path, config=config, log=lambda line: None)
    assert sorted(report.launched) == sorted(j.name for j in jobs) and not report.failed
    assert all(j.state() == "done" for j in jobs)
    again = sweep.run_pool(jobs, workers=1, log=lambda line: None)
    assert sorted(again.skipped) == sorted(j.name for j in jobs) and not again.launched


def test_demo_smoke_end_to_end(tmp_path):
    out = run_demo(results=tmp_path / "results", work=tmp_path / "work", profile="smoke", workers=1,
                   methods=["unimodal_audio", "unimodal_visual", "joint", "aug"], log=lambda line: None)
    results = tmp_path / "results"
    for name in ("table_clean.md", "table_clean.csv", "table_paper.md", "table_paper.csv", "curves.png", "bars.png",
                 "README.md", "summary.json"):
        assert (results / name).stat().st_size > 0, name
    table = (results / "table_clean.md").read_text()
    for title in ("Concat", "Unimodal (visual)", "AUG", "Ensemble of the unimodal models"):
        assert title in table
    summary = json.loads((results / "summary.json").read_text())
    assert summary["runs"] == summary["runs_trained"] == 4 and summary["runs_reused"] == 0 and not summary["failed"]
    assert summary["run_commits"] == {summary["commit"] or "unknown": 4}
    assert {"acc", "acc:audio", "acc:visual"} <= set(summary["rows"]["joint"])
    assert {"acc", "acc:audio", "acc:visual"} <= set(summary["rows"][ENSEMBLE_LABEL])
    assert "acc:visual" in summary["rows"]["unimodal_visual"] and "acc:audio" not in summary["rows"]["unimodal_visual"]
    assert summary["machine"]["threads_per_worker"] == 1
    assert {"extra_learners", "score_ratio", "fusion_weights", "equal_fusion_acc"} <= set(summary["aug"])
    assert set(summary["row_run_s"]) == {"unimodal_audio", "unimodal_visual", "joint", "aug"}
    assert all(s > 0 for s in summary["row_run_s"].values())
    readme = (results / "README.md").read_text()
    assert "## Findings" in readme and "AUG reaches" in readme and "visual-only model" in readme
    assert "- code: every run was trained at this commit" in readme
    assert [c["target"] for c in summary["targets"]] == ["imbalance", "headroom"], "one seed, one epoch: no more"
    assert "## Design targets" in readme and "reproduction" not in summary
    assert out["table"] == table


def test_the_readme_names_the_commits_that_trained_reused_runs():
    runs = [(label, {"env": {"git_commit": commit}, "wall_time_s": 2.0})
            for label, commit in (("joint", "a" * 40), ("joint", "b" * 40), ("sum", "b" * 40), ("aug", None))]
    commits = run_commits(runs)
    assert commits == {"b" * 40: 2, "a" * 40: 1, "unknown": 1}
    assert run_seconds(runs) == {"joint": [2.0, 2.0], "sum": [2.0], "aug": [2.0]}
    line = commits_line({"commit": "b" * 40, "run_commits": commits})
    assert f"`{'b' * 12}` (2 runs), `{'a' * 12}` (1 run), `unknown` (1 run)" in line and "reuses" in line
    assert commits_line({"commit": "b" * 40, "run_commits": {"b" * 40: 4}}) == \
        "- code: every run was trained at this commit"
    assert "every run" in commits_line({"commit": None, "run_commits": {"unknown": 4}})
    reused = {"commit": "b" * 40, "run_commits": {"b" * 40: 4}, "runs_reused": 4, "runs_dir": "runs/full"}
    assert commits_line(reused) == ("- code: every run was trained at this commit (4 of them by an earlier invocation, "
                                     "reused from the work folder's `runs/full`)")
    # A run trained from a tree with uncommitted changes is not the commit's code; the line said every run was.
    assert commits_line({"commit": "b" * 40, "run_commits": {"b" * 40: 4}, "runs_dirty": 3}) == \
        "- code: every run was trained at this commit; 3 of the runs with uncommitted changes"


def test_a_rerun_that_reuses_every_run_says_it_reproduced_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    published = default_results("smoke", publish=True)
    for _ in range(2):
        run_demo(results=published, work=tmp_path / "work", profile="smoke", workers=1, methods=["joint"],
                 log=lambda line: None)
    summary = json.loads((published / "summary.json").read_text())
    assert (summary["runs_trained"], summary["runs_reused"], summary["runs_dir"]) == (0, 1, "runs/smoke")
    assert summary["reproduction"]["identical"] == 1
    readme = (published / "README.md").read_text()
    assert "reused 1 finished run from the work folder's `runs/smoke`: not an independent reproduction" in readme
    assert "this invocation trained 0 and reused 1 finished in the work folder's `runs/smoke`" in readme
    assert str(tmp_path) not in readme + json.dumps(summary), "the published report names no folder of this machine"
    assert "reused from" in readme.split("- code:")[1].splitlines()[0]


@pytest.mark.parametrize("visual_head,audio_head,verdict", [(0.68, 0.78, "uses both modalities"),
                                                             (0.64, 0.78, "leans on audio"),
                                                             (0.64, 0.69, "under-trains both heads"),
                                                             (0.74, 0.50, "leans on visual")])
def test_findings_call_joint_training_audio_leaning_by_the_configs_imbalance_target(visual_head, audio_head, verdict):
    rows = {"unimodal_audio": {"acc": [0.8, 0.0, 1]}, "unimodal_visual": {"acc": [0.75, 0.0, 1]},
            "joint": {"acc": [0.85, 0.0, 1], "acc:visual": [visual_head, 0.0, 1], "acc:audio": [audio_head, 0.0, 1]}}
    targets = load_demo_config()["targets"]
    [first] = findings({"rows": rows, "identical_rows": {}}, {}, targets)
    assert f"Joint training (Concat, 85.0%) {verdict}:" in first, f"target {targets['imbalance']}"


def test_the_headroom_finding_compares_the_ensemble_with_joint_trainings_final_epoch():
    rows = {"unimodal_audio": {"acc": [0.8, 0.0, 1]}, "unimodal_visual": {"acc": [0.75, 0.0, 1]},
            "joint": {"acc": [0.85, 0.0, 1], "acc:visual": [0.6, 0.0, 1], "acc:audio": [0.8, 0.0, 1]},
            "ensemble": {"acc": [0.9, 0.0, 1]}}
    final = {"joint": {"acc": [0.87, 0.0, 1]}, "ensemble": {"acc": [0.9, 0.0, 1]}}
    lines = findings({"rows": rows, "rows_final": final, "identical_rows": {}}, {}, load_demo_config()["targets"])
    assert "gives 90.0%, +3.0 points against joint training (both at the final epoch; joint 87.0%)" in lines[1]


def test_runs_start_longest_first_by_the_previous_summary(tmp_path):
    jobs = [SimpleNamespace(label=label, seed=seed) for label in ("joint", "agm", "new", "unimodal_audio")
            for seed in (0, 1)]
    ordered = longest_first(jobs, {"joint": 14.2, "agm": 38.0, "unimodal_audio": 8.1})
    assert [(j.label, j.seed) for j in ordered] == [("new", 0), ("new", 1), ("agm", 0), ("agm", 1), ("joint", 0),
                                                    ("joint", 1), ("unimodal_audio", 0), ("unimodal_audio", 1)]
    assert longest_first(jobs, {}) == jobs
    broken, old, good = tmp_path / "broken.json", tmp_path / "old.json", tmp_path / "good.json"
    broken.write_text("{not json")
    old.write_text(json.dumps({"runs": 3, "row_run_s": [1, 2]}))
    good.write_text(json.dumps({"row_run_s": {"joint": 14.2}}))
    notes = []
    assert previous_row_seconds([tmp_path / "absent.json", broken, old, good], notes.append) == ({"joint": 14.2}, good)
    assert len(notes) == 1 and str(broken) in notes[0] and "JSONDecodeError" in notes[0]
    assert previous_row_seconds([old], notes.append) == ({}, None)


def test_demo_numbers_do_not_depend_on_the_worker_count_or_run_order(tmp_path, monkeypatch):
    """Two demos from scratch (data generated anew), one and two worker processes: identical test metrics; the second
    compares itself with the first, published one and says so."""
    monkeypatch.chdir(tmp_path)
    published = default_results("smoke", publish=True)
    for workers, methods, results in ((1, ["joint", "unimodal_visual"], published),
                                      (2, ["unimodal_visual", "joint"], tmp_path / "r2")):
        run_demo(results=results, work=tmp_path / f"w{workers}", profile="smoke", workers=workers, methods=methods,
                 log=lambda line: None)
    first, second = (json.loads((r / "summary.json").read_text()) for r in (published, tmp_path / "r2"))
    assert first["rows"] == second["rows"]
    assert "reproduction" not in first
    rep = second["reproduction"]
    assert rep["comparable"] and rep["rows"] == rep["identical"] == 2 and rep["outside_std"] == {}
    assert "2 of 2 rows identical" in (tmp_path / "r2" / "README.md").read_text()

