"""``augbench demo`` end to end (smoke profile, a few rows), its report helpers and the pool launcher it trains with."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from baselines.registry import list_methods
from benchmarks import collect, sweep
from benchmarks import demo as demo_module
from benchmarks.cli import main
from benchmarks.commands import demo as demo_command
from benchmarks.config import build_config, method_hparams
from benchmarks.demo import (
    DEMO_CONFIG,
    ENSEMBLE_LABEL,
    aug_diagnostics,
    commits_line,
    default_results,
    degraded_runs,
    findings,
    identical_rows,
    load_demo_config,
    longest_first,
    machine_record,
    mechanism_verdicts,
    never_acted,
    previous_row_seconds,
    row_stats,
    run_commits,
    run_demo,
    run_seconds,
    scaled_schedule,
    sweep_document,
    unstable_rows,
)
from benchmarks.demo_checks import AUDIO, VISUAL
from benchmarks.metrics import classification_metrics
from benchmarks.runner import train_run
from datasets import av_digits
from datasets.av_digits import TreeMismatchError
from tests.conftest import TINY_DATA, TINY_MODEL, tiny_overrides
from tests.numeric import approx, approx64

# Knobs that count epochs (or epochs of patience): each must fire within the demo's schedule.
EPOCH_KNOBS = {"arl": ["start_epoch"], "bss": ["t_grow"], "dimml": ["duc_start"],
               "gblending": ["super_epoch", "estimate_epochs"], "greedy": ["starting_epoch"], "inforeg": ["window"],
               "lfm": ["alpha_lr_halve_every"], "midas": ["warmup_epochs"], "mses": ["patience"],
               "opm": ["warmup_epochs"], "reconboost": ["pretrain_epochs", "modality_epochs", "correct_epochs"],
               "relearning": ["reinit_epoch"], "remix": ["warmup"], "smv": ["warmup"], "umt": ["teacher_epochs"],
               "aug": ["aca_interval_epochs"]}


@pytest.mark.parametrize("edit, message", [
    (lambda text: text.replace("\nschedule:\n  arl:", "\nschedule:\n  alr:"),
     r"schedule names \['alr'\], which are not registered methods"),
    (lambda text: text + "seed: [4]\n", r"unknown key\(s\) \['seed'\]"),
    (lambda text: text.replace("\n  quick:\n    seeds: [0]", "\n  quick:\n    seed: [0]"),
     r"profiles.quick: unknown key\(s\) \['seed'\]"),
    (lambda text: text + "seeds: [5]\n", r"key 'seeds' is given twice"),
])
def test_demo_config_refuses_what_it_would_ignore(tmp_path, edit, message):
    # A misspelt schedule entry left that method's epoch counts unscaled; an unknown or repeated key was dropped.
    path = tmp_path / "demo.yaml"
    text = DEMO_CONFIG.read_text()
    path.write_text(edit(text))
    assert path.read_text() != text
    with pytest.raises(ValueError, match=message) as err:
        load_demo_config(path)
    assert str(path) in str(err.value)


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


def test_a_misspelt_row_is_refused_before_the_data_is_generated(tmp_path, monkeypatch):
    import datasets.av_digits

    monkeypatch.setattr(datasets.av_digits, "generate", lambda *a, **k: pytest.fail("generated before the check"))
    with pytest.raises(ValueError, match=r"--methods \['jiont'\] are not demo rows"):
        run_demo(results=tmp_path / "r", work=tmp_path / "w", profile="smoke", methods=["joint", "jiont"],
                 log=lambda line: None)
    assert not (tmp_path / "w").exists()


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


def test_a_reused_demo_tree_whose_media_changed_is_refused_naming_the_file(tmp_path, monkeypatch):
    def fake_pool(jobs, **kwargs):
        raise RuntimeError("stop after the launch")

    monkeypatch.setattr(demo_module.sweep, "run_pool", fake_pool)
    options = dict(results=tmp_path / "r", work=tmp_path / "w", profile="smoke", workers=1, methods=["joint"],
                   log=lambda line: None)
    with pytest.raises(RuntimeError, match="stop after the launch"):
        run_demo(**options)
    wav = sorted((tmp_path / "w").glob("data-*/AV-Digits/AudioWAV/*.wav"))[0]
    wav.write_bytes(wav.read_bytes()[:1000])  # a truncated copy
    with pytest.raises(TreeMismatchError, match=rf"1 file\(s\) \(AudioWAV/{wav.name}\) differ"):
        run_demo(**options)


def test_machine_record_names_versions_cpu_and_threads():
    rec = machine_record(workers=2)
    assert {"torch", "numpy", "cpu_model", "threads_per_worker", "workers", "torch_cpu_capability",
            "kernel_env"} <= set(rec)
    assert rec["threads_per_worker"] == 1 and rec["cpu_model"]
    # The values, not only the keys: the summary publishes them as what the numbers depend on.
    assert (rec["torch"], rec["numpy"], rec["cpus"]) == (torch.__version__, np.__version__, os.cpu_count())
    assert rec["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability() and rec["workers"] == 2


def _record(label: str, seed: int, acc: float) -> collect.RunRecord:
    test = {"acc": acc, "macro_f1": acc, "per_modality": {"audio": {"acc": acc}}}
    return collect.RunRecord(run_dir=Path(label), label=label, title=label.title(), method=_method(label),
                             dataset="av_digits", seed=seed, protocols={"clean": {"test": test}},
                             reference=label == ENSEMBLE_LABEL)


def _method(label: str) -> str:
    """The registered method of a demo row: the unimodal references are rows of ``unimodal``."""
    return "unimodal" if label in (AUDIO, VISUAL) else label


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


def _judged(label: str, seed: int, acted: bool | None) -> collect.RunRecord:
    rec = _record(label, seed, 0.5)
    rec.mechanism_acted = acted
    return rec


def test_mechanism_verdicts_list_each_rows_judged_seeds_in_the_demos_row_order():
    # Seed 1's logs could not be judged (older code); joint training has no gate; the ensemble is no method's run.
    records = [_judged("aug", 2, True), _judged("aug", 0, False), _judged("aug", 1, None), _judged("mses", 0, False),
               _judged("joint", 0, None), _judged(ENSEMBLE_LABEL, 0, False)]
    verdicts = mechanism_verdicts(records, ["joint", "mses", "aug", ENSEMBLE_LABEL])
    assert verdicts == {"mses": {"acted": [], "idle": [0]}, "aug": {"acted": [2], "idle": [0]}}
    assert list(verdicts) == ["mses", "aug"] and never_acted(verdicts) == ["mses"]
    assert mechanism_verdicts(records, ["joint"]) == {}, "rows not shown are not judged"


def test_a_row_whose_mechanism_never_acted_is_titled_so_and_not_named_the_highest_mean(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_module.plots, "plot_demo", lambda runs_dir, path, **kw: path)
    monkeypatch.setattr(demo_module.plots, "plot_demo_bars", lambda rows, path, **kw: path)
    records = [_judged("aug", s, False) for s in (0, 1)]
    records += [_record("joint", s, 0.4) for s in (0, 1)]
    for rec in records:
        rec.protocols["clean"]["test"]["acc"] = 0.9 if rec.method == "aug" else 0.4
        rec.protocols.update(paper=rec.protocols["clean"], last=rec.protocols["clean"])
    shown = demo_module.write_report(records, ["joint", "aug"], tmp_path, tmp_path / "results", "Demo")
    assert shown.mechanism == {"aug": {"acted": [], "idle": [0, 1]}}
    assert shown.titles["aug"] == "Aug [mechanism never acted]" and shown.titles["joint"] == "Joint"
    assert "Aug [mechanism never acted]" in (tmp_path / "results" / "table_clean.md").read_text()
    summary = {**_findings_summary(0.95), "mechanism": {"aug": {"acted": [], "idle": [0, 1, 2]}}}
    summary["rows"]["aug"]["acc"][0] = 0.99
    lines = findings(summary, {"sum": "Sum", "aug": "AUG"}, load_demo_config()["targets"])
    assert "the highest method mean here is Sum's 86.0" in lines[1]


def test_unstable_rows_lists_rows_whose_seeds_disagree_by_more_than_the_threshold():
    records = [_record("agm", s, a) for s, a in ((0, 0.39), (1, 0.49), (2, 0.85))]  # std 0.24
    records += [_record("ogm", s, a) for s, a in ((2, 0.87), (0, 0.66), (1, 0.80))]  # std 0.107, seeds unsorted
    records += [_record("joint", s, a) for s, a in ((0, 0.84), (1, 0.87), (2, 0.85))]  # std 0.015
    assert unstable_rows(records, ["joint", "ogm", "agm"]) == {"ogm": [0.66, 0.8, 0.87], "agm": [0.39, 0.49, 0.85]}
    assert unstable_rows(records, ["joint", "ogm", "agm"], threshold=0.2) == {"agm": [0.39, 0.49, 0.85]}
    assert unstable_rows(records[:1], ["agm"]) == {}, "one seed has no spread"


def _run(label: str, seed: int, epoch: int, reported: float, final: float) -> collect.RunRecord:
    rec = _record(label, seed, reported)
    rec.protocols["clean"]["epoch"] = epoch
    rec.protocols["last"] = {"epoch": 31, "test": {"acc": final, "macro_f1": final}}
    return rec


def test_degraded_runs_names_the_runs_that_ended_far_below_their_reported_epoch():
    # A Data Remixing seed reported 65.6% from epoch 5 and ended at chance (16.7%): the table hid the collapse.
    records = [_run("remix", seed, epoch, reported, final)
               for seed, epoch, reported, final in ((2, 30, 0.683, 0.675), (1, 5, 0.656, 0.167), (0, 23, 0.831, 0.803))]
    records += [_run("joint", 0, 12, 0.75, 0.6499), _run("joint", 1, 12, 0.75, 0.65)]  # 10.01 points: named; 10.0: not
    records += [_run("agm", 0, 3, 0.5, 0.1)]  # a row not shown
    ensemble = _run("ensemble", 0, 31, 0.9, 0.5)
    ensemble.reference = True
    assert degraded_runs([*records, ensemble], ["ensemble", "joint", "remix"]) == {
        "joint": [{"seed": 0, "epoch": 12, "reported": 0.75, "final": 0.6499}],
        "remix": [{"seed": 1, "epoch": 5, "reported": 0.656, "final": 0.167}]}
    assert degraded_runs(records, ["remix"], threshold=0.5) == {}


def test_neither_demo_table_bolds_the_ensemble_of_final_checkpoints(monkeypatch):
    # Its Acc (visual) 85.19 (final checkpoints) was bolded in table_clean.md above the visual-only model's 85.00
    # (best-validation epoch), the protocol the caption names.
    labels = torch.tensor([0, 1, 0, 1])
    outputs = {"unimodal_audio": torch.tensor([[0.4, 0.0], [0.4, 0.0], [0.4, 0.0], [0.4, 0.0]], dtype=torch.float64),
               "unimodal_visual": 5.0 * torch.eye(2, dtype=torch.float64)[labels]}
    monkeypatch.setattr(demo_module, "_final_outputs", lambda run_dir, splits: {
        split: (outputs[run_dir.name], labels, 2) for split in splits})
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
    for name in ("table_last.md", "table_last.csv", "table_clean.md", "table_clean.csv", "table_paper.md",
                 "table_paper.csv", "curves.png", "bars.png", "README.md", "summary.json"):
        assert (results / name).stat().st_size > 0, name
    # The config's protocol: the tables, findings and targets report each run's final epoch.
    table = (results / "table_last.md").read_text()
    assert "Protocol: last epoch" in table
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
    # The ensemble recomputes each unimodal model's final checkpoint on test: its heads score what those models scored
    # at their last epoch, and its row follows theirs.
    ensemble = summary["rows"][ENSEMBLE_LABEL]
    assert ensemble["acc:audio"] == summary["rows_final"]["unimodal_audio"]["acc"]
    assert ensemble["acc:visual"] == summary["rows_final"]["unimodal_visual"]["acc"]
    shown = [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()[4:] if line.startswith("| ")]
    # One epoch: ACA's first check comes after it, so no learner AUG could add trained a step.
    assert shown == ["Unimodal (audio)", "Unimodal (visual)", demo_module.ENSEMBLE_TITLE, "Concat",
                     "AUG [mechanism never acted]"]
    assert summary["mechanism"] == {"aug": {"acted": [], "idle": [0]}}
    assert "## Rows whose mechanism did not act" in readme


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
    lines = findings({"protocol": "clean", "rows": rows, "rows_final": final, "identical_rows": {}}, {},
                     load_demo_config()["targets"])
    assert "gives 90.0%, +3.0 points against joint training (both at the final epoch; joint 87.0%)" in lines[1]
    calibrated = {"protocol": "clean", "rows": rows, "rows_final": final, "identical_rows": {},
                  "ensemble_temperatures": {"audio": 2.4449, "visual": 0.7263}}
    assert findings(calibrated, {}, load_demo_config()["targets"])[1].startswith(
        "Averaging the two separately trained unimodal models (each calibrated on the validation split; mean "
        "temperature audio 2.44, visual 0.73) gives 90.0%")


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



def test_scaled_schedule_rounds_the_fraction_of_the_run_with_a_floor():
    knobs = {"warmup": 0.25, "start": [0.01, 2], "tiny": 0.01}
    assert scaled_schedule(knobs, "m", 30) == {"m": {"warmup": 8, "start": 2, "tiny": 1}}, "7.5 rounds to 8; 0.3 to 1"
    assert scaled_schedule({"start": [0.5, 2]}, "m", 30) == {"m": {"start": 15}}
    assert scaled_schedule({}, "m", 30) == {}


def test_machine_record_keeps_the_worker_count_it_is_given():
    rec = machine_record(workers=3)
    assert rec["workers"] == 3 and rec["threads_per_worker"] == 1 and rec["deterministic_algorithms"] is True


def test_a_row_whose_seed_std_equals_the_threshold_is_not_unstable():
    # "varies by more than" the threshold; 0.25, 0.5, 0.75 have a sample std of exactly 0.25.
    records = [_record("agm", s, a) for s, a in ((0, 0.25), (1, 0.5), (2, 0.75))]
    assert unstable_rows(records, ["agm"], threshold=0.25) == {}
    assert unstable_rows(records, ["agm"], threshold=0.2499) == {"agm": [0.25, 0.5, 0.75]}


def test_row_stats_are_the_mean_sample_std_and_count_over_seeds_of_the_protocol_asked_for():
    records = [_record("joint", s, a) for s, a in ((0, 0.5), (1, 0.6), (2, 0.9))]
    records += [_record("sum", 0, 0.7)]
    for rec in records:
        rec.protocols["last"] = {"test": {"acc": 0.1, "macro_f1": 0.1}}
    stats = row_stats(records)
    mean, std, n = stats["joint"]["acc"]
    assert (mean, std, n) == (approx64(2.0 / 3), approx64(0.2081665999466133), 3), "sample std (ddof 1), not median"
    assert stats["joint"]["acc:audio"] == (approx64(2.0 / 3), approx64(0.2081665999466133), 3)
    assert stats["sum"]["acc"] == (approx64(0.7), 0.0, 1), "one seed: no spread, not NaN"
    assert row_stats(records, protocol="last")["joint"]["acc"] == (approx64(0.1), approx64(0.0), 3)


def test_aug_diagnostics_read_the_last_epoch_and_the_reported_epochs_accuracy_mean_over_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_module, "load_run_config",
                        lambda run_dir: SimpleNamespace(method_hp=SimpleNamespace(fusion_weights=[0.3, 0.7])))
    records = []
    for seed, (audio, visual, ratio, acc, equal) in enumerate(((0, 4, 1.2, 0.8, 0.75), (0, 6, 1.5, 0.7, 0.6),
                                                                (3, 11, 2.1, 0.96, 0.66))):
        run = tmp_path / f"aug-{seed}"
        run.mkdir()
        history = [{"epoch": 0, "diag": {"extra_learners/audio": 50, "extra_learners/visual": 50, "score_ratio": 9.0}},
                   {"epoch": 1, "diag": {"extra_learners/audio": audio, "extra_learners/visual": visual,
                                         "score_ratio": ratio}}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
        clean = {"acc": acc, "alternatives": {"equal_fusion": {"acc": equal}}}
        paper = {"acc": 0.99, "alternatives": {"equal_fusion": {"acc": 0.99}}}
        records.append(collect.RunRecord(run_dir=run, label="aug", title="AUG", method="aug", dataset="av_digits",
                                         seed=seed, protocols={"clean": {"test": clean}, "paper": {"test": paper}}))
    records.append(_record("joint", 0, 0.5))
    diag = aug_diagnostics(records)
    assert diag == {"extra_learners": {"audio": approx64(1.0), "visual": approx64(7.0)}, "score_ratio": approx64(1.6),
                    "fusion_weights": [0.3, 0.7], "weighted_acc": approx64(0.82), "equal_fusion_acc": approx64(0.67)}
    at_paper = aug_diagnostics(records, "paper")  # the accuracies of the epoch the table reports
    assert (at_paper["weighted_acc"], at_paper["equal_fusion_acc"]) == (approx64(0.99), approx64(0.99))
    assert aug_diagnostics(records[-1:]) is None


def _findings_summary(ensemble_final: float) -> dict:
    rows = {"unimodal_audio": {"acc": [0.8, 0.01, 3]}, "unimodal_visual": {"acc": [0.92, 0.01, 3]},
            # MSES equals Sum in every seed and comes first; the ensemble and the visual-only model beat every method.
            "mses": {"acc": [0.86, 0.02, 3]}, "aug": {"acc": [0.83, 0.02, 3]},
            "joint": {"acc": [0.85, 0.03, 3], "acc:visual": [0.6, 0.05, 3], "acc:audio": [0.78, 0.04, 3]},
            "sum": {"acc": [0.86, 0.02, 3]}, "ensemble": {"acc": [0.95, 0.01, 3]}}
    final = {"joint": {"acc": [0.87, 0.01, 3]}, "ensemble": {"acc": [ensemble_final, 0.01, 3]}}
    aug = {"extra_learners": {"audio": 1 / 3, "visual": 29 / 3}, "score_ratio": 1.2783, "fusion_weights": [0.4, 0.6],
           "weighted_acc": 0.83, "equal_fusion_acc": 0.8}
    return {"protocol": "clean", "rows": rows, "rows_final": final, "identical_rows": {"mses": "sum"}, "aug": aug}


def test_the_findings_sentences_carry_each_number_from_its_own_row():
    titles = {"mses": "MSES", "sum": "Sum", "aug": "AUG"}
    lines = findings(_findings_summary(0.95), titles, load_demo_config()["targets"])
    assert lines == [
        "Joint training (Concat, 85.0%) leans on audio: its visual head reaches 60.0% where a visual-only model "
        "reaches 92.0%, its audio head 78.0% where an audio-only model reaches 80.0%.",
        "Averaging the two separately trained unimodal models gives 95.0%, +8.0 points against joint training (both "
        "at the final epoch; joint 87.0%): that is the headroom balancing methods compete for; the highest method "
        "mean here is Sum's 86.0 ± 2.0% (best-validation epoch).",
        "AUG reaches 83.0%, below joint training: it added 0.3 audio, 9.7 visual learner(s) on average (final "
        "train-score ratio audio/visual 1.28), and its fixed 0.4/0.6 audio/visual test-time weights, chosen for "
        "CREMA-D, give 83.0% where equal weights give 80.0%."]
    for ens, points in ((0.86, "-1.0"), (0.87, "+0.0")):
        headroom = findings(_findings_summary(ens), titles, load_demo_config()["targets"])[1]
        assert f"{points} points" in headroom and "so this run shows no headroom for balancing" in headroom
    summary = _findings_summary(0.95)
    summary["rows"]["aug"]["acc"][0] = 0.9
    assert "AUG reaches 90.0%, above joint training" in findings(summary, titles, load_demo_config()["targets"])[2]


def test_the_commits_line_counts_uncommitted_runs_when_several_commits_trained_them():
    line = commits_line({"commit": "b" * 40, "run_commits": {"b" * 40: 3, "a" * 40: 1}, "runs_dirty": 2})
    assert line.startswith(f"- code: runs trained at `{'b' * 12}` (3 runs), `{'a' * 12}` (1 run)")
    assert line.endswith("; 2 of the runs with uncommitted changes")


def test_previous_row_seconds_skips_a_summary_with_no_row_times(tmp_path):
    empty, good = tmp_path / "empty.json", tmp_path / "good.json"
    empty.write_text(json.dumps({"row_run_s": {}}))
    good.write_text(json.dumps({"row_run_s": {"joint": 14.2}}))
    assert previous_row_seconds([empty, good], lambda line: None) == ({"joint": 14.2}, good)


def test_the_temperature_minimises_the_cross_entropy_it_is_fitted_on():
    # Two classes, every logit pair (m, -m) and a share q of labels 0: the cross-entropy of softmax(z / T) is least
    # where sigmoid(2m / T) = q, that is T = 2m / logit(q).
    for margin, zeros, ones in ((1.0, 3, 1), (4.0, 3, 1), (0.5, 9, 1), (3.0, 1, 3)):
        logits = torch.tensor([[margin, -margin]] * (zeros + ones), dtype=torch.float64)
        labels = torch.tensor([0] * zeros + [1] * ones)
        expected = 2 * margin / math.log(zeros / ones)
        if expected < 0:  # the logits point the wrong way more often than not: no positive temperature fits
            assert demo_module.fit_temperature(logits, labels) == approx(1e3, rel=1e-9)
        else:
            assert demo_module.fit_temperature(logits, labels) == approx(expected, rel=1e-9)
    # A split the logits separate perfectly has no finite optimum: the search stops at its bound.
    separated = torch.tensor([[2.0, -2.0], [-2.0, 2.0]], dtype=torch.float64)
    assert demo_module.fit_temperature(separated, torch.tensor([0, 1])) == approx(1e-3, rel=1e-9)


def test_the_ensemble_averages_softmax_outputs_calibrated_on_validation_of_each_seeds_final_unimodal_models(
        monkeypatch):
    # Validation: the audio model says (4, 0) and is right 3 times in 4, so its temperature is 4 / ln 3; the visual
    # model says (1, -1), right 3 times in 4, temperature 2 / ln 3. On the test sample (label 1) audio says (4, 0) and
    # visual (0, 3): the plain mean of softmax outputs picks class 0 (0.514), the calibrated mean class 1, with
    # probability (0.25 + 3^1.5 / (1 + 3^1.5)) / 2.
    val_labels, test_labels = torch.tensor([0, 0, 0, 1]), torch.tensor([1])
    outputs = {("unimodal_audio", "val"): torch.tensor([[4.0, 0.0]] * 4, dtype=torch.float64),
               ("unimodal_visual", "val"): torch.tensor([[1.0, -1.0]] * 4, dtype=torch.float64),
               ("unimodal_audio", "test"): torch.tensor([[4.0, 0.0]], dtype=torch.float64),
               ("unimodal_visual", "test"): torch.tensor([[0.0, 3.0]], dtype=torch.float64)}
    monkeypatch.setattr(demo_module, "_final_outputs", lambda run_dir, splits: {
        split: (outputs[run_dir.parent.name, split], val_labels if split == "val" else test_labels, 2)
        for split in splits})
    records = [collect.RunRecord(run_dir=Path("runs") / label / str(seed), label=label, title=label, method="unimodal",
                                 dataset="av_digits", seed=seed, protocols={})
               for label, seed in (("unimodal_audio", 2), ("unimodal_visual", 2), ("unimodal_audio", 1),
                                   ("joint", 1), ("unimodal_visual", 0), ("unimodal_audio", 0))]
    ensembles = demo_module.ensemble_records(records)
    assert [r.seed for r in ensembles] == [0, 2], "seed 1 has no visual-only model"
    # Audio first whatever order the runs come in (seed 0 lists visual first): the findings name them in this order.
    assert [list(r.protocols["last"]["temperatures"]) for r in ensembles] == [["audio", "visual"]] * 2
    for rec in ensembles:
        assert (rec.label, rec.reference, sorted(rec.protocols)) == (ENSEMBLE_LABEL, True, ["clean", "last", "paper"])
        assert rec.protocols["clean"] is rec.protocols["paper"] is rec.protocols["last"]
        assert rec.protocols["last"]["temperatures"] == {"audio": approx(4 / math.log(3), rel=1e-9),
                                                         "visual": approx(2 / math.log(3), rel=1e-9)}
        test = rec.values("last")
        assert test["acc"] == 1.0 and test["acc:audio"] == 0.0 and test["acc:visual"] == 1.0
        assert rec.protocols["last"]["test"]["conf"] == approx((0.25 + 3 ** 1.5 / (1 + 3 ** 1.5)) / 2, rel=1e-9)
    assert demo_module.ensemble_temperatures(ensembles) == approx({"audio": 4 / math.log(3),
                                                                   "visual": 2 / math.log(3)}, rel=1e-9)
    assert demo_module.ensemble_temperatures([]) == {}


def test_the_summarys_temperatures_are_each_modalitys_mean_over_the_ensembles_seeds():
    def row(label, seed, temperatures):
        return collect.RunRecord(run_dir=Path("runs"), label=label, title=label, method=label, dataset="av_digits",
                                 seed=seed, protocols={"last": {"temperatures": temperatures}}, reference=True)

    records = [row(ENSEMBLE_LABEL, 0, {"audio": 2.0, "visual": 0.5}), row("joint", 0, {"audio": 9.0, "visual": 9.0}),
               row(ENSEMBLE_LABEL, 1, {"audio": 3.0, "visual": 0.75}),
               row(ENSEMBLE_LABEL, 2, {"audio": 2.5, "visual": 1.0})]
    assert demo_module.ensemble_temperatures(records) == {"audio": 2.5, "visual": 0.75}


@pytest.mark.parametrize("split", ["val", "test"])
def test_an_ensemble_of_runs_evaluated_on_other_rows_is_refused_naming_them(monkeypatch, split):
    # Same shapes, other labels: the mean (or a temperature fitted on validation) would fuse unrelated samples into a
    # number that looks like a result.
    labels = {("unimodal_audio", "val"): [0, 1], ("unimodal_audio", "test"): [0, 1],
              ("unimodal_visual", "val"): [0, 1], ("unimodal_visual", "test"): [0, 1]}
    labels["unimodal_visual", split] = [1, 0]
    monkeypatch.setattr(demo_module, "_final_outputs", lambda run_dir, splits: {
        part: (torch.zeros(2, 3, dtype=torch.float64), torch.tensor(labels[run_dir.parent.name, part]), 3)
        for part in splits})
    records = [collect.RunRecord(run_dir=Path("runs") / label / "0", label=label, title=label, method="unimodal",
                                 dataset="av_digits", seed=0, protocols={})
               for label in ("unimodal_audio", "unimodal_visual")]
    with pytest.raises(ValueError, match=rf"seed 0: the unimodal runs .*runs/unimodal_visual/0.* same {split} rows"):
        demo_module.ensemble_records(records)
    labels["unimodal_visual", split] = [0, 1]
    assert [rec.seed for rec in demo_module.ensemble_records(records)] == [0]


def test_a_runs_final_outputs_are_its_final_models_logits_in_row_order(tmp_path, monkeypatch):
    # The ensemble's inputs, read back from a finished run's final checkpoint, score what the run recorded for its
    # last epoch: the true class's mean probability pins the logits, accuracy the label order.
    run = tmp_path / "run"
    train_run(build_config("joint", "synthetic", tiny_overrides()), run, log=lambda *_: None)
    outputs = demo_module._final_outputs(run, ("test", "val"))
    logits, labels, classes = outputs["test"]
    recorded = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["test"]
    assert logits.dtype == torch.float64 and len(labels) == recorded["n"]
    again = classification_metrics(logits, labels, classes)
    assert again["acc"] == recorded["acc"]
    assert again["conf"] == pytest.approx(recorded["conf"], abs=1e-6)
    val_logits, val_labels, _ = outputs["val"]
    # One build serves both splits: reading validation first leaves the test logits as they are alone.
    assert torch.equal(demo_module._final_outputs(run, ("val", "test"))["test"][0], logits)
    assert len(val_labels) == json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["val"]["n"]
    # Rows come back in index order whatever order the loader yields them in: the ensemble averages two models'
    # outputs row by row.
    build = demo_module.build_data

    def reversed_test_split(cfg):
        bundle = build(cfg)
        bundle.splits = {**bundle.splits, "test": bundle.splits["test"][::-1].copy()}
        return bundle

    monkeypatch.setattr(demo_module, "build_data", reversed_test_split)
    logits_again, labels_again, _ = demo_module._final_outputs(run, ("test",))["test"]
    assert torch.equal(labels_again, labels) and logits_again == approx(logits)


def test_an_ensemble_input_without_validation_rows_is_refused_naming_the_run(tmp_path, monkeypatch):
    # The temperatures are fitted on validation; a run whose data has none cannot be calibrated.
    run = tmp_path / "run"
    train_run(build_config("joint", "synthetic", tiny_overrides()), run, log=lambda *_: None)
    build = demo_module.build_data

    def no_validation(cfg):
        bundle = build(cfg)
        bundle.splits = {k: v for k, v in bundle.splits.items() if k != "val"}
        return bundle

    monkeypatch.setattr(demo_module, "build_data", no_validation)
    with pytest.raises(ValueError, match=rf"{re.escape(str(run))}: its data has no 'val' rows"):
        demo_module._final_outputs(run, ("test", "val"))


def _readme_summary() -> dict:
    machine = {"cpu_model": "Test CPU", "cpus": 2, "torch_cpu_capability": "AVX2",
               "kernel_env": {"ATEN_CPU_CAPABILITY": "avx2"}, "torch": "9.9", "numpy": "8.8", "workers": 2,
               "threads_per_worker": 1}
    return {**_findings_summary(0.95), "commit": "c" * 40, "run_commits": {"c" * 40: 6}, "runs_dirty": 0,
            "runs_reused": 2, "runs_dir": "runs/full", "runs": 6, "failed": ["agm-seed0"], "runs_trained": 4,
            "epochs": 30, "seeds": [0, 1], "run_time_s": 1234.4, "rows_not_run": ["ogm", "pmr"],
            "timings_s": {"total_s": 1500.2, "generate_s": 11.0, "prepare_s": 22.0, "train_s": 1400.0,
                          "report_s": 33.0},
            "machine": machine, "unstable_rows": {"agm": [0.39, 0.49, 0.85]}, "targets": [],
            "degraded_runs": {"agm": [{"seed": 1, "epoch": 5, "reported": 0.656, "final": 0.1667},
                                      {"seed": 2, "epoch": 7, "reported": 0.6, "final": 0.4}]}}


def test_the_demo_readme_states_each_number_where_it_belongs():
    demo = {**load_demo_config(), "title": "Demo title", "defaults": {"train": {"lr": 0.05, "epochs": 30}}}
    titles = {"mses": "MSES", "sum": "Sum", "agm": "AGM"}
    text = demo_module._readme(demo, _readme_summary(), None, titles)
    assert text.startswith("# Demo title\n") and "(Profile" not in text and "`augbench demo`;" in text
    assert ("- 6 runs (1 failed; this invocation trained 4 and reused 2 finished in the work folder's `runs/full`), "
            "30 epochs, seeds [0, 1]; the runs took 1234 s of training summed over runs (whichever invocations trained "
            "them); this invocation 1500 s (generate 11 s, prepare 22 s, train 1400 s, report 33 s)\n") in text
    assert "\n- **partial**: only some rows were run (`--methods`); not run: ogm, pmr\n" in text
    assert ("\n- machine: Test CPU (2 CPUs, kernels AVX2 (set by ATEN_CPU_CAPABILITY)), torch 9.9, numpy 8.8, 2 worker "
            "process(es) x 1 thread, deterministic algorithms\n") in text
    assert "so they are not results of their own: MSES = Sum.\n" in text
    assert ("varies by more than 10 points (sample std) between seeds at the demo's shared settings (SGD, lr 0.05 for "
            "every method, 30 epochs), so their means do not rank them (accuracy per seed): AGM 39.0/49.0/85.0%.\n"
            in text)
    assert ("these runs ended training more than 10 points of test accuracy below it, so the method's final model is "
            "worse than its row says (test accuracy at the reported epoch, then at the final epoch): AGM seed 1 65.6% "
            "(epoch 5), 16.7%; AGM seed 2 60.0% (epoch 7), 40.0%.\n") in text
    quick = demo_module._readme(demo, {**_readme_summary(), "rows_not_run": [], "identical_rows": {},
                                       "unstable_rows": {}, "degraded_runs": {}}, "quick", titles)
    assert "(Profile `quick`: a shortened run" in quick and "`augbench demo --quick`;" in quick
    assert "partial" not in quick and "## Rows without an effect" not in quick and "vary between seeds" not in quick
    assert "## Runs that ended far below" not in quick and "## Rows whose mechanism" not in quick
    judged = demo_module._readme(demo, {**_readme_summary(), "mechanism": {
        "mses": {"acted": [], "idle": [0, 1]}, "agm": {"acted": [0], "idle": [1, 2]},
        "sum": {"acted": [0, 1], "idle": []}}}, None, titles)
    assert ("In no seed did the mechanism of these rows change training, so each is its base model under the "
            "method's name, not a result of the method: MSES. It acted in some seeds only (seeds without it): AGM "
            "1, 2.\n") in judged


def test_the_demo_sweep_has_the_configs_seeds_and_one_row_per_method_and_unimodal_reference(tmp_path):
    demo = load_demo_config()
    doc = sweep_document(demo, tmp_path / "cache")
    assert set(doc["methods"]) == (set(list_methods()) - {"unimodal"}) | {"unimodal_audio", "unimodal_visual"}
    assert doc["seeds"] == demo["seeds"] == [0, 1, 2] and doc["defaults"]["data"]["cache"] == str(tmp_path / "cache")
    picked = sweep_document(demo, tmp_path, methods=["aug", "joint", "unimodal_visual"])["methods"]
    assert list(picked) == ["unimodal_visual", "joint", "aug"], "the demo's row order, not the order asked for"


def test_machine_record_names_the_kernel_choice_set_in_the_environment(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert machine_record(workers=1)["kernel_env"] == {"ATEN_CPU_CAPABILITY": "avx2"}


def test_findings_need_both_unimodal_references():
    # `--methods joint unimodal_audio` runs no visual-only model: no finding can be stated, rather than a KeyError.
    rows = {"unimodal_audio": {"acc": [0.8, 0.0, 1]}, "joint": {"acc": [0.85, 0.0, 1]}}
    assert findings({"rows": rows, "identical_rows": {}}, {}, load_demo_config()["targets"]) == []


def test_the_report_shows_best_validation_rows_and_final_epoch_references_in_the_demos_order(tmp_path, monkeypatch):
    # Every row scores 0.1 lower at its final epoch than at its best-validation epoch, so a statistic taken from
    # the wrong protocol shows; "mses" equals "sum" in every number and is marked as having no effect.
    def record(label: str, seed: int, acc: float) -> collect.RunRecord:
        # Runs without logs: no method can judge its mechanism from them.
        (tmp_path / f"{label}-{seed}").mkdir()
        (tmp_path / f"{label}-{seed}" / "metrics.jsonl").write_text("")

        def test(a: float) -> dict:
            heads = {m: {"acc": a, "macro_f1": a} for m in ("audio", "visual")}
            return {"test": {"acc": a, "macro_f1": a, "per_modality": heads}}
        return collect.RunRecord(run_dir=tmp_path / f"{label}-{seed}", label=label, title=label.title(),
                                 method=_method(label), dataset="av_digits", seed=seed,
                                 protocols={"clean": test(acc), "paper": test(acc), "last": test(acc - 0.1)},
                                 reference=label == ENSEMBLE_LABEL)

    accs = {"unimodal_audio": 0.6, "unimodal_visual": 0.8, "joint": 0.7, "sum": 0.5, "mses": 0.5,
            ENSEMBLE_LABEL: 0.9}
    records = [record(label, seed, acc + 0.02 * seed) for label, acc in accs.items() for seed in (0, 1)]
    drawn = {}

    def curves(runs_dir: Path, path: Path, **kw) -> Path:
        drawn["curves"] = kw
        return path

    def bars(rows: dict, path: Path, **kw) -> Path:
        drawn["bars"] = rows
        return path

    monkeypatch.setattr(demo_module.plots, "plot_demo", curves)
    monkeypatch.setattr(demo_module.plots, "plot_demo_bars", bars)
    shown = demo_module.write_report(records, ["unimodal_audio", "unimodal_visual", "joint", "sum", "mses"],
                                     tmp_path, tmp_path / "results", "Demo")

    assert shown.order == ["unimodal_audio", "unimodal_visual", ENSEMBLE_LABEL, "joint", "sum", "mses"]
    assert shown.identical == {"mses": "sum"}
    assert shown.titles["mses"] == "Mses [no effect: = Sum]" and shown.names["mses"] == "Mses"
    assert "Mses [no effect: = Sum]" in (tmp_path / "results" / "table_clean.md").read_text()
    assert shown.stats["joint"]["acc"][0] == approx64(0.71) and shown.final["joint"]["acc"][0] == approx64(0.61)
    assert set(shown.final) == {"unimodal_audio", "unimodal_visual", "joint", ENSEMBLE_LABEL}
    assert drawn["curves"]["references"] == {"audio": approx64(0.51), "visual": approx64(0.71)}, "final epoch"
    assert [p.name for p in drawn["curves"]["runs"]] == [f"{label}-{s}" for label in accs if label != ENSEMBLE_LABEL
                                                         for s in (0, 1)]
    assert list(drawn["bars"]) == shown.order
    assert drawn["bars"]["joint"]["acc"] == (approx64(0.71), approx64(0.01414213562373095)), "best-validation epoch"
    assert [p.name for p in shown.written] == ["table_clean.md", "table_clean.csv", "table_paper.md",
                                               "table_paper.csv", "curves.png", "bars.png"]


def test_summary_rows_keep_mean_std_and_count_rounded_and_each_rows_mean_run_seconds():
    assert demo_module.rounded_rows({"joint": {"acc": (0.123456, 0.0212345, 3)}}) == {"joint": {"acc": [0.1235,
                                                                                                       0.0212, 3]}}
    assert demo_module.mean_row_seconds({"joint": [1.0, 2.0, 6.0], "sum": [0.0123]}) == {"joint": 3.0, "sum": 0.012}


def test_the_aug_finding_calls_an_aug_row_equal_to_joint_training_level_with_it():
    # AUG at joint training's mean read "AUG reaches 85.0%, below joint training" beside a Concat of 85.0%.
    summary = _findings_summary(0.95)
    summary["rows"]["aug"]["acc"][0] = summary["rows"]["joint"]["acc"][0]
    aug = findings(summary, {}, load_demo_config()["targets"])[2]
    assert aug.startswith("AUG reaches 85.0%, level with joint training: it added")


def test_an_unknown_demo_profile_is_refused_with_the_profiles_there_are():
    with pytest.raises(ValueError, match=r"no demo profile 'fast'; it has \['quick', 'smoke'\]"):
        load_demo_config(profile="fast")


def test_the_design_digest_follows_every_design_setting_and_nothing_else():
    demo = load_demo_config()
    digest = demo_module.design_digest(demo)
    assert re.fullmatch(r"[0-9a-f]{8}", digest)
    # The protocol too: it decides which epoch's numbers the rows hold.
    for key in ("generate", "prepare", "defaults", "rows", "schedule", "seeds", "protocol"):
        assert demo_module.design_digest({**demo, key: "other"}) != digest, key
    # The title, the targets and the command do not change a number: two such runs are comparable.
    same = {**demo, "title": "another title", "targets": {}, "command": "augbench demo --x", "name": "other"}
    assert demo_module.design_digest(same) == digest


def test_scaled_schedule_takes_a_fraction_and_floor_given_as_a_tuple():
    assert scaled_schedule({"start": (0.01, 3)}, "m", 30) == {"m": {"start": 3}}


def test_machine_record_counts_this_machines_cpus(monkeypatch):
    monkeypatch.setattr(demo_module.os, "cpu_count", lambda: 64)
    assert machine_record(workers=1)["cpus"] == 64


def test_identical_rows_do_not_depend_on_the_order_a_record_lists_its_protocols():
    first = _record("sum", 0, 0.5)
    second = _record("mses", 0, 0.5)
    later = {"test": {"acc": 0.7, "macro_f1": 0.7}}
    first.protocols = {"clean": first.protocols["clean"], "last": later}
    second.protocols = {"last": later, "clean": second.protocols["clean"]}
    assert identical_rows([first, second], ["sum", "mses"]) == {"mses": "sum"}


def test_unstable_rows_keep_each_seeds_accuracy_to_four_decimals():
    records = [_record("agm", s, a) for s, a in ((0, 0.39128), (1, 0.85871))]
    assert unstable_rows(records, ["agm"]) == {"agm": [0.3913, 0.8587]}


def test_aug_diagnostics_name_the_published_weights_and_leave_unrecorded_numbers_nan(tmp_path, monkeypatch):
    # An empty aug.fusion_weights runs the code's 0.4/0.6; a run that logged no score ratio or equal-weight fusion
    # has none to average (NaN, not 0).
    from aug.method import PUBLISHED_FUSION

    monkeypatch.setattr(demo_module, "load_run_config",
                        lambda run_dir: SimpleNamespace(method_hp=SimpleNamespace(fusion_weights=[])))
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "diag": {"extra_learners/audio": 2}}) + "\n")
    rec = collect.RunRecord(run_dir=tmp_path, label="aug", title="AUG", method="aug", dataset="av_digits", seed=0,
                            protocols={"clean": {"test": {"acc": 0.8}}})
    diag = aug_diagnostics([rec])
    assert diag["fusion_weights"] == PUBLISHED_FUSION[2] == [0.4, 0.6]
    assert diag["extra_learners"] == {"audio": 2.0} and diag["weighted_acc"] == approx64(0.8)
    assert math.isnan(diag["score_ratio"]) and math.isnan(diag["equal_fusion_acc"])


def test_run_summaries_read_every_run_but_the_ensemble(monkeypatch):
    # The ensemble row has no summary.json of its own (its run_dir is the runs folder): the run times and commits
    # count the runs that trained.
    seen = []
    monkeypatch.setattr(demo_module, "read_json", lambda path: seen.append(path) or {"wall_time_s": 1.0})
    records = [_record("joint", 0, 0.5), _record(ENSEMBLE_LABEL, 0, 0.9)]
    assert demo_module.run_summaries(records) == [("joint", {"wall_time_s": 1.0})]
    assert seen == [Path("joint") / "summary.json"]


def test_the_ensemble_record_sits_in_the_runs_folder_with_its_inputs_dataset_and_per_modality_softmax(monkeypatch):
    labels = torch.tensor([0, 1])
    outputs = {"unimodal_audio": torch.log(torch.tensor([[0.9, 0.1], [0.6, 0.4]], dtype=torch.float64)),
               "unimodal_visual": torch.log(torch.tensor([[0.05, 0.95], [0.55, 0.45]], dtype=torch.float64))}
    monkeypatch.setattr(demo_module, "_final_outputs", lambda run_dir, splits: {
        split: (outputs[run_dir.name[:-6]], labels, 2) for split in splits})
    records = [collect.RunRecord(run_dir=Path("runs") / f"{label}-seed0", label=label, title=label,
                                 method="unimodal", dataset="av_digits_v2", seed=0, protocols={})
               for label in ("unimodal_audio", "unimodal_visual")]
    [ensemble] = demo_module.ensemble_records(records)
    assert (ensemble.run_dir, ensemble.dataset) == (Path("runs"), "av_digits_v2")
    heads = ensemble.protocols["last"]["test"]["per_modality"]
    # Each model's own softmax outputs, scored as they are (uncalibrated): the true class's mean probability.
    assert heads["audio"]["conf"] == approx((0.9 + 0.4) / 2) and heads["visual"]["conf"] == approx((0.05 + 0.45) / 2)


def test_the_report_of_a_run_without_both_references_has_no_ensemble_row(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(demo_module.plots, "plot_demo", lambda runs_dir, path, **kw: path)
    monkeypatch.setattr(demo_module.plots, "plot_demo_bars",
                        lambda rows, path, **kw: drawn.update(rows=rows, **kw) or path)
    records = [_record(label, s, a + 0.1 * s) for label, a in (("unimodal_visual", 0.6), ("joint", 0.5))
               for s in (0, 1)]
    for rec in records:
        rec.protocols.update(paper=rec.protocols["clean"], last=rec.protocols["clean"])
    shown = demo_module.write_report(records, ["unimodal_audio", "unimodal_visual", "joint"], tmp_path,
                                     tmp_path / "results", "Demo")
    assert shown.order == ["unimodal_visual", "joint"] and list(drawn["rows"]) == shown.order
    # Bars show accuracies only (fused and per head); the tables carry macro-F1 too.
    assert set(drawn["rows"]["joint"]) == {"acc", "acc:audio"}
    header = (tmp_path / "results" / "table_clean.csv").read_text().splitlines()[0].split(",")
    assert "av_digits/macro_f1/mean" in header and "av_digits/acc:audio/mean" in header
    assert drawn["references"] == {ENSEMBLE_LABEL: "unimodal ensemble", "joint": "Joint",
                                   "unimodal_visual": "visual-only model"}
    assert drawn["rows"]["joint"]["acc"] == approx((0.55, statistics.stdev([0.5, 0.6])))
    # One seed has no spread to draw: no error bar, not one of zero length (summary.json keeps std 0 with n = 1).
    demo_module.write_report(records[::2], ["unimodal_visual", "joint"], tmp_path, tmp_path / "one", "Demo")
    mean, std = drawn["rows"]["joint"]["acc"]
    assert mean == approx(0.5) and math.isnan(std)


def test_the_aug_finding_prints_the_fusion_weights_as_given():
    summary = _findings_summary(0.95)
    summary["aug"]["fusion_weights"] = [0.25, 0.75]
    aug = findings(summary, {}, load_demo_config()["targets"])[2]
    assert "its fixed 0.25/0.75 audio/visual test-time weights" in aug


def test_the_commits_line_of_runs_without_a_recorded_commit_at_a_checkout_without_one():
    assert commits_line({"commit": None, "run_commits": {"unknown": 4}}) == \
        "- code: every run was trained at this commit"


def test_the_readme_names_no_kernel_override_that_was_not_set():
    demo = {**load_demo_config(), "defaults": {"train": {"lr": 0.05, "epochs": 30}}}
    summary = _readme_summary()
    summary["machine"] = {**summary["machine"], "kernel_env": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}
    text = demo_module._readme(demo, summary, None, {})
    assert "\n- machine: Test CPU (2 CPUs, kernels AVX2), torch 9.9" in text


def _stubbed_demo(tmp_path: Path, monkeypatch, unfinished: frozenset = frozenset()) -> tuple:
    """run_demo from stubbed stages (no data, no training) over rows joint and unimodal_audio, seeds 0 and 1; the
    runs in ``unfinished`` (label, seed) leave a curve but no finished record. Returns (run_demo's result, the demo
    config, the jobs the pool got, the log lines, the results folder)."""
    monkeypatch.chdir(tmp_path)
    doc = yaml.safe_load(DEMO_CONFIG.read_text())
    doc["profiles"]["smoke"]["seeds"] = [0, 1]
    config_path = tmp_path / "demo.yaml"
    config_path.write_text(yaml.safe_dump(doc))
    demo = load_demo_config(config_path, "smoke")
    work, results = tmp_path / "work", tmp_path / "r"
    raw = work / f"data-{demo_module._digest(demo['generate'])}" / "AV-Digits"
    raw.mkdir(parents=True)
    (raw / "manifest.json").write_text("{}")  # generated by an earlier invocation
    monkeypatch.setattr(av_digits, "check_tree", lambda *args, **kwargs: None)  # (a stub tree: no files to check)
    monkeypatch.setattr(demo_module, "prepare", lambda *args, **kwargs: tmp_path / "cache")
    # Each stage's clock reads 0.3 s apart: timings to a tenth of a second, each stage's own interval.
    ticks = iter(range(100))
    monkeypatch.setattr(demo_module, "time", SimpleNamespace(perf_counter=lambda: 0.3 * next(ticks)))
    # This results folder's row times order the runs, before the published ones (here the other way round).
    results.mkdir()
    (results / "summary.json").write_text(json.dumps({"row_run_s": {"joint": 5.0, "unimodal_audio": 1.0}}))
    published = Path("results/demo-smoke")
    published.mkdir(parents=True)
    reference = {"profile": "smoke", "seeds": [0, 1], "epochs": 1, "design": demo_module.design_digest(demo),
                 "row_run_s": {"joint": 1.0, "unimodal_audio": 5.0},
                 "rows": {"joint": {"acc": [0.6, 0.1, 2]}, "unimodal_audio": {"acc": [0.5, 0.0, 2]}}}
    (published / "summary.json").write_text(json.dumps(reference))

    accs = {("unimodal_audio", 0): 0.5, ("unimodal_audio", 1): 0.52, ("joint", 0): 0.5, ("joint", 1): 0.9}
    wall = {("unimodal_audio", 0): 1.2, ("unimodal_audio", 1): 2.4, ("joint", 0): 3.1, ("joint", 1): 4.3}
    pooled = []

    def write_run(run_dir: Path, label: str, seed: int, dirty: bool = False) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "job.json").write_text(json.dumps({"label": label, "seed": seed}))
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "val": {"acc": 0.5}}) + "\n"
                                                       for e in range(4)))
        (run_dir / "summary.json").write_text(json.dumps({"wall_time_s": wall.get((label, seed), 99.0),
                                                          "env": {"git_commit": "c" * 40, "git_dirty": dirty}}))

    def pool(jobs, **kwargs):
        pooled.extend(jobs)
        for job in jobs:
            write_run(job.run_dir, job.label, job.cfg.train.seed, dirty=job.label == "joint" and job.cfg.train.seed)
        return sweep.launchers.LaunchReport(skipped=[j.name for j in jobs if j.cfg.train.seed == 1],
                                            launched=[j.name for j in jobs if j.cfg.train.seed == 0],
                                            failed={"run-b": 1, "run-a": 2})

    def record(run_dir: Path, label: str, seed: int, acc: float) -> collect.RunRecord:
        clean, last = ({"test": {"acc": a, "macro_f1": a}} for a in (acc, acc - 0.1))
        return collect.RunRecord(run_dir=run_dir, label=label, title=label.title(), method=_method(label),
                                 dataset="av_digits", seed=seed,
                                 protocols={"clean": clean, "paper": clean, "last": last})

    # A run of earlier settings in the same runs folder: neither a row's seed nor a curve of this demo.
    stray = work / "runs" / "smoke" / "joint-old-settings"
    write_run(stray, "joint", 7)
    monkeypatch.setattr(demo_module.sweep, "run_pool", pool)
    monkeypatch.setattr(demo_module.collect, "load_runs", lambda runs_dir: [
        record(job.run_dir, job.label, job.cfg.train.seed, accs[job.label, job.cfg.train.seed]) for job in pooled
        if (job.label, job.cfg.train.seed) not in unfinished
    ] + [record(stray, "joint", 7, 0.1)])
    monkeypatch.setattr(demo_module, "ensemble_records", lambda records: [])
    monkeypatch.setattr(demo_module.plots, "plot_demo", lambda runs_dir, path, **kw: path)
    monkeypatch.setattr(demo_module.plots, "plot_demo_bars", lambda rows, path, **kw: path)
    notes = []
    out = run_demo(results=results, work=work, profile="smoke", workers=1, methods=["joint", "unimodal_audio"],
                   config_path=config_path, log=notes.append)
    return out, demo, pooled, notes, results


def test_the_demo_summary_records_what_this_invocation_ran_reused_and_measured(tmp_path, monkeypatch):
    # The smoke end-to-end runs have one seed, one epoch, no failure and nothing reused: they cannot tell most of
    # these fields from a wrong one.
    out, demo, pooled, notes, results = _stubbed_demo(tmp_path, monkeypatch)

    summary = out["summary"]
    assert json.loads((results / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert [(j.label, j.cfg.train.seed) for j in pooled] == [("joint", 0), ("joint", 1), ("unimodal_audio", 0),
                                                            ("unimodal_audio", 1)], "this folder's row times first"
    assert any(f"longest first by the run times in {results / 'summary.json'}" in note for note in notes)
    assert (summary["runs"], summary["runs_trained"], summary["runs_reused"]) == (4, 2, 2)
    assert summary["failed"] == ["run-a", "run-b"] and summary["runs_dir"] == "runs/smoke"
    every = sweep_document(demo, tmp_path / "cache")["methods"]
    assert summary["rows_not_run"] == [r for r in every if r not in ("unimodal_audio", "joint")]
    assert summary["timings_s"] == {"generate_s": 0.3, "prepare_s": 0.3, "train_s": 0.3, "report_s": 0.3,
                                    "total_s": 2.7}
    assert summary["run_time_s"] == 11.0 and summary["row_run_s"] == {"unimodal_audio": 1.8, "joint": 3.7}
    # The config's protocol is the final epoch (the stub's runs ended 0.1 below their best-validation epoch).
    assert summary["protocol"] == demo["protocol"] == "last"
    assert summary["rows"]["joint"]["acc"] == [0.6, approx64(0.2828), 2], "the stray run's seed 7 is not a seed"
    assert summary["rows_best_val"]["joint"]["acc"] == [0.7, approx64(0.2828), 2]
    assert summary["rows_final"]["joint"]["acc"][0] == approx64(0.6), "final rows are the last epoch's"
    assert summary["unstable_rows"] == {"joint": [0.4, 0.8]}, "at the epoch the table reports"
    assert summary["convergence_trend"] == {"unimodal_audio": {0: 0.0, 1: 0.0}, "joint": {0: 0.0, 1: 0.0}}
    assert summary["runs_dirty"] == 1 and summary["run_commits"] == {"c" * 40: 4}
    assert (summary["profile"], summary["seeds"], summary["epochs"]) == ("smoke", [0, 1], 1)
    assert summary["design"] == demo_module.design_digest(demo)
    rep = summary["reproduction"]
    assert rep["source"] == "results/demo-smoke/summary.json" and rep["comparable"]
    assert (rep["rows"], rep["outside_std"]) == (2, {"unimodal_audio": [0.5, 0.0, 0.41]})


def test_the_best_method_finding_quotes_its_best_validation_mean_even_for_joint_training():
    summary = _findings_summary(0.95)
    summary["rows"]["joint"]["acc"][0] = 0.88  # above every method; its final epoch is 0.87
    headroom = findings(summary, {"joint": "Concat"}, load_demo_config()["targets"])[1]
    assert headroom.endswith("the highest method mean here is Concat's 88.0 ± 3.0% (best-validation epoch).")
    summary["rows"]["joint"]["acc"] = [0.88, 0.0, 1]  # one seed: no spread to state
    headroom = findings(summary, {"joint": "Concat"}, load_demo_config()["targets"])[1]
    assert headroom.endswith("the highest method mean here is Concat's 88.0% (best-validation epoch).")
    summary["protocol"] = "last"
    headroom = findings(summary, {"joint": "Concat"}, load_demo_config()["targets"])[1]
    assert headroom.endswith("the highest method mean here is Concat's 88.0% (final epoch)."), "the table's epoch"


def test_the_demo_readme_carries_the_targets_over_its_seeds_the_comparison_and_the_thread_count():
    demo = {**load_demo_config(), "defaults": {"train": {"lr": 0.05, "epochs": 30}}}
    summary = _readme_summary()
    summary["machine"] = {**summary["machine"], "threads_per_worker": 2}
    summary["targets"] = [{"target": "headroom", "text": "ensemble above joint", "measured": {"headroom": 0.05},
                           "met": True}]
    summary["reproduction"] = {"source": "ref.json", "reference_commit": "abc", "comparable": False,
                               "differs": ["seeds"], "reference_machine": {k: "?" for k in
                                                                           ("cpu_model", "torch_cpu_capability",
                                                                            "torch", "numpy")}}
    text = demo_module._readme(demo, summary, None, {})
    assert "2 worker process(es) x 2 thread" in text and "measured on this run's 2 seed(s)" in text
    assert "| headroom: ensemble above joint | +5.0 | yes |" in text
    assert "## Against an earlier run\n\nNot compared with `ref.json` (commit `abc`" in text
    few = demo_module._readme(demo, {**summary, "rows": {"joint": {"acc": [0.5, 0.0, 1]}}}, None, {})
    assert "## Findings\n\n(too few rows for findings)\n" in few


def test_the_convergence_target_reads_only_the_curves_of_finished_runs(tmp_path, monkeypatch):
    # A run that failed part-way leaves a curve of its first epochs, no row of the table: its "last quarter" is
    # mid-training, and it read as this demo's rows not converging.
    summary = _stubbed_demo(tmp_path, monkeypatch, unfinished=frozenset({("joint", 1)}))[0]["summary"]
    assert summary["rows"]["joint"]["acc"][2] == 1
    assert summary["convergence_trend"] == {"unimodal_audio": {0: 0.0, 1: 0.0}, "joint": {0: 0.0}}


def test_previous_row_seconds_skip_a_summary_whose_row_times_are_not_numbers(tmp_path):
    # longest_first negates each time: a null there stopped the demo with "bad operand type for unary -".
    odd, good = tmp_path / "odd.json", tmp_path / "good.json"
    odd.write_text(json.dumps({"row_run_s": {"joint": None, "sum": 3.0}}))
    good.write_text(json.dumps({"row_run_s": {"joint": 14.2, "sum": 3}}))
    assert previous_row_seconds([odd, good], lambda line: None) == ({"joint": 14.2, "sum": 3}, good)


@pytest.fixture
def fake_run_demo(monkeypatch):
    """``run_demo`` as ``augbench demo`` calls it, replaced by one that records its arguments (``calls``) and
    reports the runs in ``failed`` as failed."""
    fake = SimpleNamespace(calls=[], failed=[])

    def run_demo(**options):
        fake.calls.append(options)
        return {"table": "TABLE", "written": [Path("a.md"), Path("b.png")], "summary": {"failed": list(fake.failed)}}

    monkeypatch.setattr(demo_command, "run_demo", run_demo)
    return fake


def test_cli_passes_its_options_to_run_demo_and_exits_1_when_a_run_failed(fake_run_demo, capsys):
    assert main(["demo"]) == 0
    assert fake_run_demo.calls[-1] == {"results": Path("runs/demo/results"), "work": Path("runs/demo-work"),
                                 "profile": None, "workers": 2, "methods": None}
    assert capsys.readouterr().out == "TABLE\nwrote a.md, b.png\n"
    assert main(["demo", "--quick", "--publish", "--work", "w", "--workers", "3", "--methods", "joint", "aug"]) == 0
    assert fake_run_demo.calls[-1] == {"results": Path("results/demo-quick"), "work": Path("w"), "profile": "quick",
                                 "workers": 3, "methods": ["joint", "aug"]}
    assert main(["demo", "--smoke", "--results", "r"]) == 0
    assert fake_run_demo.calls[-1]["results"] == Path("r") and fake_run_demo.calls[-1]["profile"] == "smoke"
    fake_run_demo.failed.append("one-run")
    assert main(["demo", "--smoke"]) == 1


def test_cli_help_describes_each_profile_from_the_demo_config(tmp_path):
    # The --quick help said 16 epochs for a day after the profile went to 12.
    assert demo_command.profile_help("quick") == "1 seed, 240 training / 180 test clips, 12 epochs"
    assert demo_command.profile_help("smoke") == "1 seed, 48 training / 24 test clips, 1 epoch"
    doc = yaml.safe_load(demo_module.DEMO_CONFIG.read_text())
    doc["profiles"]["quick"]["seeds"], doc["profiles"]["quick"]["defaults"]["train"]["epochs"] = [0, 1], 1
    edited = tmp_path / "demo.yaml"
    edited.write_text(yaml.safe_dump(doc))
    assert demo_command.profile_help("quick", edited) == "2 seeds, 240 training / 180 test clips, 1 epoch"


def test_cli_refuses_publish_with_results_and_no_workers_before_any_work(fake_run_demo, capsys):
    # --publish with --results ended in SystemExit(1) out of main(), not the usage exit 2 of every other command.
    assert main(["demo", "--publish", "--results", "r"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "augbench demo: error: --publish writes results/demo; drop --results or --publish"
    # --workers 0 was refused by the training pool only after the data were generated and prepared.
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--smoke", "--workers", "0"])
    assert exit_.value.code == 2 and "argument --workers: must be >= 1, got 0" in capsys.readouterr().err
    assert not fake_run_demo.calls


def test_cli_refuses_publish_outside_the_repository_root(fake_run_demo, capsys, tmp_path, monkeypatch):
    # It wrote a stray results/demo there, and compared the run with no earlier one.
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quick", "--publish"]) == 2
    assert "run it from the repository root (no results/paper under" in capsys.readouterr().err
    assert not fake_run_demo.calls and not (tmp_path / "results").exists()


def test_the_commits_line_names_a_single_commit_other_than_this_checkouts():
    # Every run reused from an earlier commit: one commit, not this one, so not "trained at this commit".
    line = commits_line({"commit": "b" * 40, "run_commits": {"a" * 40: 4}, "runs_reused": 4, "runs_dir": "runs/full"})
    assert line.startswith(f"- code: runs trained at `{'a' * 12}` (4 runs);") and "every run was" not in line
