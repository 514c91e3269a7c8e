"""Tables (golden files for md/csv/tex), published numbers, and plots, from fixture run folders."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml

from baselines.registry import list_methods
from benchmarks.cli import main
from benchmarks.collect import (
    PROTOCOL_CAPTIONS,
    RENDERERS,
    TEST_SPLIT_MARK,
    Column,
    MixedRunsError,
    PaperFileError,
    RunRecord,
    StaleResultError,
    _tex_escape,
    build_table,
    check_one_config_per_row,
    commit_counts,
    config_order,
    csv_header,
    idle_mechanisms,
    load_paper,
    load_runs,
    render,
    table_values,
    trained_by,
    unfinished_row,
    unfinished_runs,
)
from benchmarks.plots import _sweep_curves, plot_demo, plot_demo_bars, plot_run, plot_sweep, run_series, seed_mean
from benchmarks.records import DamagedFileError, read_json
from benchmarks.run_folder import MISSING_RESULT
from tests.numeric import approx64

GOLDEN = Path(__file__).resolve().parent / "golden"
PAPER = GOLDEN / "paper_fixture.csv"

# (method, dataset, seed) -> best-on-test fused (acc, macro_f1, map); "clean" is 5 points lower, "last" 10.
RUNS = {
    ("joint", "cremad", 0): (0.60, 0.55, 0.70), ("joint", "cremad", 1): (0.62, 0.57, 0.72),
    ("joint", "cremad", 2): (0.64, 0.59, 0.74), ("aug", "cremad", 0): (0.80, 0.78, 0.90),
    ("aug", "cremad", 1): (0.86, 0.84, 0.92), ("aug", "kinetics_sounds", 0): (0.70, 0.69, 0.75),
    ("joint", "kinetics_sounds", 0): (0.65, 0.64, 0.70),
}


def _test_metrics(acc: float, f1: float, mean_ap: float) -> dict:
    return {"acc": acc, "macro_f1": f1, "map": mean_ap, "n": 100,
            "per_modality": {"audio": {"acc": acc - 0.1, "macro_f1": f1 - 0.1, "map": mean_ap - 0.1},
                             "visual": {"acc": acc - 0.2, "macro_f1": f1 - 0.2, "map": mean_ap - 0.2}}}


def write_run(root: Path, method: str, dataset: str, seed: int, values: tuple, done: bool = True,
              job: dict | None = None) -> Path:
    run = root / f"{dataset}-{method}-seed{seed}-fixture"
    run.mkdir(parents=True)
    protocols = {name: {"epoch": 2, "test": _test_metrics(*(v - shift for v in values))}
                 for name, shift in (("paper", 0.0), ("clean", 0.05), ("last", 0.10))}
    (run / "summary.json").write_text(json.dumps({"method": method, "dataset": dataset, "seed": seed,
                                                  "protocols": protocols}))
    (run / "config.yaml").write_text(yaml.safe_dump({"method": method, "dataset": dataset, "train": {"seed": seed}}))
    history = [{"epoch": e, "train": {"loss": 2.0 - e}, "test": _test_metrics(*(v - 0.1 * (2 - e) for v in values)),
                "val": _test_metrics(*values), "diag": {"ratio": 1.0 + e, "learners_visual": e, "note": "text"}}
               for e in range(3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    if job is not None:
        (run / "job.json").write_text(json.dumps(job))
    if done:
        (run / "DONE").write_text("")
    return run


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    for (method, dataset, seed), values in RUNS.items():
        write_run(tmp_path, method, dataset, seed, values)
    write_run(tmp_path, "aug", "cremad", 9, (0.1, 0.1, 0.1), done=False)
    return tmp_path


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; rerun with UPDATE_GOLDEN=1 if the change is intended"


@pytest.mark.parametrize("fmt", ["md", "csv", "tex"])
def test_table_renders_the_golden_file(runs_dir, fmt):
    text = render(load_runs(runs_dir), fmt, paper=load_paper(PAPER, "table1"), protocol="paper",
                  title="Fixture table")
    check_golden(f"table.{fmt}", text)


def test_cells_are_mean_and_sample_std_over_seeds_with_paper_and_best(runs_dir):
    records = load_runs(runs_dir)
    assert len(records) == 7, "the unfinished run (no DONE) is left out"
    table = build_table(records, protocol="paper", paper=load_paper(PAPER, "table1"))
    rows = dict(table.rows)
    assert [t for t, _ in table.rows] == ["AUG", "Concat"], "row labels are the registered titles"
    acc = [c.metric for c in table.columns].index("acc")
    joint, aug = rows["Concat"][acc], rows["AUG"][acc]
    assert joint.mean == approx64(62.0) and joint.std == approx64(2.0) and joint.n == 3
    assert aug.mean == approx64(83.0) and aug.std == approx64(4.242640687) and aug.seeds == (0, 1)
    assert aug.best and not joint.best
    assert joint.paper.value == 65.07 and joint.paper.verified and joint.diff == approx64(-3.07)
    assert not aug.paper.verified
    ks = [i for i, c in enumerate(table.columns) if c.dataset == "kinetics_sounds" and c.metric == "acc"][0]
    assert rows["AUG"][ks].std is None and rows["AUG"][ks].n == 1
    clean = dict(build_table(records, protocol="clean").rows)["Concat"][acc]
    assert clean.mean == approx64(57.0), "the protocol picks which epoch's test metrics enter the table"


def _log_aca(run: Path, added: tuple[float, ...]) -> None:
    """Replace a run's log with one whose epochs record AUG's ``added/audio`` flags."""
    epochs = [{"epoch": e, "train": {"loss": 1.0}, "diag": {"added/audio": a, "added/visual": 0.0}}
              for e, a in enumerate(added)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in epochs))


def test_each_runs_mechanism_is_judged_from_its_log_and_idle_ones_are_named_in_the_caption(tmp_path):
    runs = [write_run(tmp_path, "aug", "cremad", seed, (0.8, 0.8, 0.8)) for seed in range(4)]
    _log_aca(runs[0], (1.0, 0.0, 0.0))   # a learner added after epoch 0 trained two epochs
    _log_aca(runs[1], (0.0, 0.0, 0.0))
    _log_aca(runs[2], (0.0, 0.0, 1.0))   # added after the last epoch: it trained no step
    write_run(tmp_path, "joint", "cremad", 0, (0.6, 0.6, 0.6))
    records = load_runs(tmp_path)
    judged = {(r.method, r.seed): r.mechanism_acted for r in records}
    # Seed 3 kept a log without ACA's keys (older code): not judged. Joint training has nothing to judge.
    assert judged == {("aug", 0): True, ("aug", 1): False, ("aug", 2): False, ("aug", 3): None, ("joint", 0): None}
    assert idle_mechanisms(records) == {"aug": {"acted": [0], "idle": [1, 2]}}
    note = ("Runs in which the method's own mechanism never acted, judged from their logs (each trained as its base "
            "model under the method's name): AUG on cremad (seeds 1, 2 of 3).")
    assert build_table(records).caption.endswith(note)
    every = [r for r in records if r.seed in (1, 2) or r.method == "joint"]
    assert build_table(every).caption.endswith("AUG on cremad (every seed).")
    assert build_table(records[:1] + records[-1:]).caption.endswith("in bold. Protocol: " + PROTOCOL_CAPTIONS["paper"]
                                                                     + ".")
    (runs[1] / "metrics.jsonl").write_text('{"epoch": 0}\nnot json\n')
    with pytest.raises(DamagedFileError, match=r"metrics\.jsonl.*line 2 is not valid JSON"):
        load_runs(tmp_path)


def _records(accs: dict[str, tuple[float, ...]], root: Path) -> list[RunRecord]:
    """Config-less runs of one dataset: row label -> its seeds' test accuracies (fractions)."""
    return [RunRecord(run_dir=root / f"{label}{seed}", label=label, title=label.upper(), method=label,
                      dataset="cremad", seed=seed, protocols={"paper": {"test": {"acc": acc}}})
            for label, values in accs.items() for seed, acc in enumerate(values)]


def test_a_cell_is_the_arithmetic_mean_of_skewed_seeds_not_their_median(tmp_path):
    # 60, 61 and 68: mean 63, median 61; sample std sqrt(((-3)^2 + (-2)^2 + 5^2) / 2) = sqrt(19).
    cell = dict(build_table(_records({"a": (0.60, 0.61, 0.68)}, tmp_path)).rows)["A"][0]
    assert cell.mean == approx64(63.0) and cell.std == approx64(math.sqrt(19.0)) and cell.n == 3


def test_means_equal_at_the_shown_two_decimals_share_the_bold(tmp_path):
    # 70.001 and 70.004 both show as 70.00: the bold marks both; 69.99, the first row, shows lower and is not bold.
    table = build_table(_records({"a": (0.6999,), "b": (0.70001,), "c": (0.70004,)}, tmp_path))
    assert [(title, cells[0].best) for title, cells in table.rows] == [("A", False), ("B", True), ("C", True)]


def test_the_caption_states_how_tied_epochs_are_selected(runs_dir):
    # benchmarks.runner.select_protocols takes the earliest of tied epochs, on validation as on test accuracy.
    records = load_runs(runs_dir)
    for protocol in ("paper", "clean"):
        assert "(tied epochs: the earliest)" in build_table(records, protocol=protocol).caption


def write_missing(run: Path, checkpoint_epoch: int = 2, split: str = "test", seed: int = 0,
                  rates: tuple[float, ...] = (0.0, 0.2), batch_size: int = 256) -> None:
    metrics = {0.0: {"acc": 0.5, "macro_f1": 0.4, "map": 0.6}, 0.2: {"acc": 0.3, "macro_f1": 0.2, "map": 0.4},
               0.5: {"acc": 0.2, "macro_f1": 0.1, "map": 0.3}}
    (run / "missing_modality.json").write_text(json.dumps({"split": split, "seed": seed, "batch_size": batch_size,
                                                           "checkpoint_epoch": checkpoint_epoch,
                                                           "rates": [{"rate": r, "metrics": metrics[r]}
                                                                     for r in rates]}))


def test_a_row_of_missing_modality_results_from_different_evaluations_is_refused(runs_dir):
    write_missing(runs_dir / "cremad-joint-seed0-fixture")
    write_missing(runs_dir / "cremad-joint-seed1-fixture", seed=7)
    with pytest.raises(StaleResultError, match=r"row 'joint' on cremad would average missing-modality results of "
                                               r"different evaluations: seed 0, rates \[0.0, 0.2\].*seed 7"):
        build_table(load_runs(runs_dir), missing=True)
    write_missing(runs_dir / "cremad-joint-seed1-fixture", rates=(0.0, 0.2, 0.5))
    with pytest.raises(StaleResultError, match=r"rates \[0.0, 0.2, 0.5\]"):
        build_table(load_runs(runs_dir), missing=True)
    # MLA's per-batch entropy gate scores otherwise in other batches: one row, one batch size.
    write_missing(runs_dir / "cremad-joint-seed1-fixture", batch_size=64)
    with pytest.raises(StaleResultError, match=r"seed 0, rates \[0.0, 0.2\], batch size 256 .*batch size 64 .*one "
                                               r"--batch-size"):
        build_table(load_runs(runs_dir), missing=True)
    write_missing(runs_dir / "cremad-joint-seed1-fixture")
    assert build_table(load_runs(runs_dir), missing=True, methods=["joint"], datasets=["cremad"]).rows[0][1][0].n == 2


def test_a_published_value_goes_to_its_row_label_only(tmp_path):
    # Another row of the same method (a variant, labelled by a sweep) is not the row the paper published.
    write_run(tmp_path, "joint", "cremad", 0, (0.6, 0.6, 0.6), job={"label": "joint_variant", "title": "Variant"})
    write_run(tmp_path, "joint", "cremad", 1, (0.6, 0.6, 0.6), job={"label": "joint", "title": "Concat"})
    table = build_table(load_runs(tmp_path), paper=load_paper(PAPER, "table1"), metrics=["acc"])
    assert {title: cells[0].paper and cells[0].paper.value for title, cells in table.rows} == {
        "Variant": None, "Concat": 65.07}
    # nor by its title, even one that spells the published row's method key
    (tmp_path / "cremad-joint-seed0-fixture" / "job.json").write_text(json.dumps({"label": "joint_variant",
                                                                               "title": "joint"}))
    table = build_table(load_runs(tmp_path), paper=load_paper(PAPER, "table1"), metrics=["acc"])
    assert {title: cells[0].paper and cells[0].paper.value for title, cells in table.rows} == {
        "joint": None, "Concat": 65.07}


def test_a_paper_table_that_matches_nothing_says_so(runs_dir):
    paper = load_paper(PAPER, "table1")
    matched = build_table(load_runs(runs_dir), paper=paper)
    assert "No published value" not in matched.caption
    unmatched = build_table(load_runs(runs_dir), paper=paper, metrics=["map"], datasets=["kinetics_sounds"])
    assert all(cell.paper is None for _, cells in unmatched.rows for cell in cells)
    assert "No published value of" in unmatched.caption


def test_a_runs_values_are_each_metric_per_modality_and_at_each_missing_rate(tmp_path):
    # demo.row_stats and identical_rows read every key of values(); the tables show only the per-modality accuracy, so
    # a per-modality macro-F1 read from its accuracy, or the missing-modality results left out, passed them.
    test = {"acc": 0.6, "macro_f1": 0.5, "map": 0.7,
            "per_modality": {"audio": {"acc": 0.4, "macro_f1": 0.3, "map": 0.2}}}
    record = RunRecord(run_dir=tmp_path, label="a", title="A", method="a", dataset="cremad", seed=0,
                       protocols={"clean": {"test": test}},
                       missing={0.0: {"acc": 0.6, "macro_f1": 0.5, "map": 0.7},
                                0.005: {"acc": 0.1, "macro_f1": 0.05, "map": 0.15}})
    assert record.values("clean") == {
        "acc": 0.6, "macro_f1": 0.5, "map": 0.7, "acc:audio": 0.4, "macro_f1:audio": 0.3, "map:audio": 0.2,
        "acc@missing=0": 0.6, "macro_f1@missing=0": 0.5, "map@missing=0": 0.7,
        "acc@missing=0.005": 0.1, "macro_f1@missing=0.005": 0.05, "map@missing=0.005": 0.15}


def test_missing_rate_headers_tell_distinct_rates_apart():
    # The headers were f"{rate:.0%}": 0.005 read "0%" like 0, and 0.125 read "12%" like 0.12.
    headers = [Column("cremad", f"acc@missing={rate:g}").header for rate in (0, 0.005, 0.12, 0.125, 0.2)]
    assert headers == ["Acc missing 0%", "Acc missing 0.5%", "Acc missing 12%", "Acc missing 12.5%", "Acc missing 20%"]


def test_missing_rate_columns_go_in_numeric_order(tmp_path):
    # Sorted as text, the key of 0.00005 ("acc@missing=5e-05") came after that of 0.2.
    rates = {0.2: 0.3, 0.0: 0.5, 0.00005: 0.4}
    record = RunRecord(run_dir=tmp_path, label="a", title="A", method="a", dataset="cremad", seed=0, protocols={},
                       missing={rate: {"acc": acc, "macro_f1": acc, "map": acc} for rate, acc in rates.items()})
    table = build_table([record], missing=True)
    assert [c.metric for c in table.columns] == ["acc@missing=0", "acc@missing=5e-05", "acc@missing=0.2"]
    assert [c.mean for c in table.rows[0][1]] == approx64([50.0, 40.0, 30.0])


def test_per_modality_and_missing_columns(runs_dir):
    run = runs_dir / "cremad-joint-seed0-fixture"
    write_missing(run)
    table = build_table(load_runs(runs_dir), per_modality=True, datasets=["cremad"], methods=["joint"])
    assert [c.header for c in table.columns] == ["Acc", "Macro-F1", "MAP", "Acc (audio)", "Acc (visual)"]
    assert table.rows[0][1][3].mean == approx64(52.0)
    missing = build_table(load_runs(runs_dir), missing=True, datasets=["cremad"], methods=["joint"])
    assert [c.header for c in missing.columns] == ["Acc missing 0%", "Acc missing 20%"]
    assert [c.mean for c in missing.rows[0][1]] == approx64([50.0, 30.0])
    assert missing.rows[0][1][0].n == 1
    assert "Protocol: each run's final checkpoint" in missing.caption, "not the protocol's epoch"
    assert "0% column" not in missing.caption, "no published values to compare"
    compared = build_table(load_runs(runs_dir), missing=True, datasets=["cremad"], methods=["joint"],
                           paper=load_paper(PAPER, "table1"))
    assert "Δ includes that selection" in compared.caption
    with pytest.raises(ValueError, match="drop --per-modality or --missing"):
        build_table(load_runs(runs_dir), missing=True, per_modality=True)


def test_sweep_labels_from_job_json_and_config_order(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path, "unimodal", "cremad", seed, (0.5, 0.5, 0.5),
                  job={"label": "unimodal_v", "title": "Unimodal (visual)"})
    write_run(tmp_path, "joint", "cremad", 0, (0.6, 0.6, 0.6))
    table = build_table(load_runs(tmp_path), methods=["unimodal_v", "joint"])
    assert [t for t, _ in table.rows] == ["Unimodal (visual)", "Concat"]


@pytest.mark.parametrize("metric, message", [
    ("acc@missing=0.50", r"writes its missing rate as '0.50'; write acc@missing=0.5, as runs key it"),
    ("Acc", r"is none of \['acc', 'macro_f1', 'map'\]"),
    ("accuracy:audio", r"is none of"),
    ("acc@missing=half", r"has a missing rate 'half' that is not a number"),
])
def test_a_published_metric_no_run_keys_is_refused_naming_the_row(tmp_path, metric, message):
    # Such a value was left out of every table without a word (the cell showed "–").
    header = ",".join(("paper", "table", "page", "dataset", "method", "row", "metric", "value", "verified", "source"))
    path = tmp_path / "p.csv"
    path.write_text(f"{header}\np,t,1,cremad,mla,MLA,acc,70,true,s\np,t,1,cremad,mla,MLA,{metric},30,true,s\n")
    with pytest.raises(PaperFileError, match=rf"p.csv:3: metric '{re.escape(metric)}' {message}"):
        load_paper(path)
    path.write_text(f"{header}\np,t,1,cremad,mla,MLA,acc:audio,70,true,s\np,t,1,cremad,mla,MLA,map@missing=0.2,30,"
                    "true,s\n")
    assert load_paper(path).lookup("cremad", ["mla"], "map@missing=0.2").value == 30.0


def test_paper_files_are_checked(tmp_path):
    merged = load_paper(PAPER)
    assert merged.lookup("cremad", ["joint"], "acc").verified, "equal values across tables merge, verified wins"
    later = tmp_path / "later.csv"
    header = ",".join(("paper", "table", "page", "dataset", "method", "row", "metric", "value", "verified", "source"))
    later.write_text(f"{header}\np,t1,1,cremad,aug,AUG,acc,85.15,false,s\np,t2,2,cremad,aug,AUG,acc,85.150,true,s\n")
    value = load_paper(later).lookup("cremad", ["aug"], "acc")
    assert value.verified and value.table == "t2", "a verified value wins over an unverified one listed before it"
    bad = tmp_path / "bad.csv"
    bad.write_text(PAPER.read_text().replace("65.07,false", "64.00,false"))
    with pytest.raises(PaperFileError, match="--paper-table"):
        load_paper(bad)
    assert load_paper(bad, "table2").lookup("cremad", ["joint"], "acc").value == 64.0
    bad.write_text(PAPER.read_text().replace("85.15,false", "85.15,maybe"))
    with pytest.raises(PaperFileError, match=r"bad.csv:3: verified must be true or false"):
        load_paper(bad)
    with pytest.raises(PaperFileError, match="no published numbers for 'nope'"):
        load_paper("nope")
    bad.write_text(PAPER.read_text().replace("85.15,false", "85.15,"))
    with pytest.raises(PaperFileError, match=r"bad.csv:3: verified must be true or false, got ''"):
        load_paper(bad)
    # a path that exists is read as given, whatever its suffix
    other = tmp_path / "numbers.txt"
    other.write_text(PAPER.read_text())
    assert load_paper(other, "table1").lookup("cremad", ["joint"], "acc").value == 65.07


def test_shipped_paper_files_load():
    for name in ("aug_neurips25", "balancebenchmark"):
        paper = load_paper(name)
        assert paper.values and all(0 < v.value <= 100 for v in paper.values.values())
    aug = load_paper("aug_neurips25", "table1")
    assert not aug.lookup("cremad", ["aug"], "acc").verified, \
        "AUG Table 1 is unverified (docs/methods/aug.md#published-numbers)"
    assert load_paper("aug_neurips25", "figure1").lookup("cremad", ["joint"], "acc").verified


def test_table_command_defaults_to_best_on_test_when_comparing_with_a_paper(runs_dir, capsys, tmp_path):
    shutil.rmtree(runs_dir / "cremad-aug-seed9-fixture")  # unfinished: the command's caption would say so
    assert main(["table", str(runs_dir), "--paper", str(PAPER), "--paper-table", "table1"]) == 0
    out = capsys.readouterr().out
    assert out == render(load_runs(runs_dir), "md", paper=load_paper(PAPER, "table1"), protocol="paper")
    assert main(["table", str(runs_dir), "--format", "csv", "--out", str(tmp_path / "t.csv")]) == 0
    assert (tmp_path / "t.csv").read_text() == render(load_runs(runs_dir), "csv", protocol="clean")
    # The CSV has no caption, so the command says it (the protocol above all) where the user sees it.
    caption = build_table(load_runs(runs_dir), protocol="clean").caption.strip()
    assert f"note: the CSV has no caption; the table's caption: {caption}" in capsys.readouterr().err
    assert main(["table", str(runs_dir / "nope")]) == 2


def test_a_missing_table_with_no_evaluated_run_is_refused_not_empty(runs_dir, capsys):
    assert main(["table", str(runs_dir), "--missing", "--format", "tex"]) == 2
    err = capsys.readouterr().err
    assert "--missing: none of the" in err and "has a missing-modality result" in err and "augbench evaluate" in err


def test_the_missing_table_says_which_finished_runs_have_no_result(runs_dir, capsys):
    write_missing(runs_dir / "cremad-joint-seed0-fixture")
    assert main(["table", str(runs_dir), "--missing"]) == 0
    assert "finished run(s) of the rows shown have no missing-modality result" in capsys.readouterr().err


def test_a_table_logged_to_wandb_keeps_its_files_with_the_runs_and_its_console_quiet(runs_dir, tmp_path, monkeypatch,
                                                                                     capsys):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["table", str(runs_dir), "--wandb", "offline"]) == 0
    assert (runs_dir / "wandb").is_dir() and not (cwd / "wandb").exists()
    # wandb's console stays quiet; the one line is where the run is and how to upload it (nothing said so before).
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "wandb" in line.replace(str(runs_dir), "")]
    assert line.startswith(f"W&B table run: {runs_dir / 'wandb'}") and "(upload it with: wandb sync " in line


def test_a_wandb_table_holds_numbers_and_a_wandb_mode_that_is_none_is_refused(runs_dir, monkeypatch, capsys):
    # The cells were strings ("37.5000", ""), which W&B sorts as text and cannot plot; WANDB_MODE=dryrun was taken
    # as offline here while train refuses it.
    table = build_table(load_runs(runs_dir), protocol="paper", paper=load_paper(PAPER, "table1"))
    values = {row[0]: row[1:] for row in table_values(table)}
    csv_cells = {row[0]: row[1:] for row in list(csv.reader(io.StringIO(RENDERERS["csv"](table))))[1:]}
    fields = ("mean", "std", "n", "per_seed", "paper", "paper_verified", "diff")
    assert csv_header(table)[1:8] == [f"cremad/acc/{f}" for f in fields]
    for title, row in values.items():
        mean, std, n, per_seed, paper, verified, diff = row[:7]
        assert isinstance(mean, float) and isinstance(std, float) and type(n) is int and isinstance(verified, bool)
        assert csv_cells[title][:7] == [f"{mean:.4f}", f"{std:.4f}", str(n), per_seed, f"{paper:.2f}",
                                        str(verified).lower(), f"{diff:.4f}"]
        seeds, seed_values = zip(*(pair.split(":") for pair in per_seed.split()))
        assert list(seeds) == sorted(seeds, key=int) and len(seeds) == n
        assert statistics.fmean(map(float, seed_values)) == pytest.approx(mean, abs=1e-4)
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert main(["table", str(runs_dir)]) == 2
    assert "WANDB_MODE 'dryrun' is not one of" in capsys.readouterr().err


def test_the_table_command_counts_the_unfinished_runs_it_leaves_out(runs_dir, capsys):
    assert main(["table", str(runs_dir)]) == 0
    captured = capsys.readouterr()
    assert "| 9" not in captured.out and "(3)" in captured.out, "the unfinished seed 9 is not tabulated"
    note = ("1 unfinished run folder(s) of the rows shown (without DONE or summary.json: training, stopped or failed) "
            "are not counted, such as ")
    assert captured.err == f"note: {note}{runs_dir / 'cremad-aug-seed9-fixture'}\n"
    assert f"{note}cremad-aug-seed9-fixture." in captured.out, "a table file read later says so too"


def test_the_table_counts_only_the_unfinished_runs_of_its_own_rows(runs_dir, tmp_path, capsys):
    # With --config the caption counted every unfinished folder under the runs folder, of rows the table leaves out
    # too, and stderr said they were "left out of the table".
    config = tmp_path / "joint.yaml"
    config.write_text(yaml.safe_dump({"name": "fixture", "seeds": [0, 1, 2], "datasets": {"cremad": {}},
                                      "methods": {"joint": {}}}))
    write_run(runs_dir, "joint", "kinetics_sounds", 1, (0.1, 0.1, 0.1), done=False)  # a column the config leaves out
    assert main(["table", str(runs_dir), "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert "Concat" in captured.out and "AUG" not in captured.out
    assert "unfinished" not in captured.out, "the unfinished aug and kinetics_sounds runs are not in this table"
    assert ("note: 2 unfinished run folder(s) of rows or datasets not in the table, such as "
            f"{runs_dir / 'cremad-aug-seed9-fixture'}\n") in captured.err
    assert "of the rows shown" not in captured.err
    write_run(runs_dir, "joint", "cremad", 7, (0.1, 0.1, 0.1), done=False)
    assert main(["table", str(runs_dir), "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert "1 unfinished run folder(s) of the rows shown" in captured.out
    assert f"1 unfinished run folder(s) of the rows shown (without DONE or summary.json: training, stopped or " \
           f"failed) are not counted, such as {runs_dir / 'cremad-joint-seed7-fixture'}\n" in captured.err


def test_a_config_that_lists_none_of_the_finished_runs_is_refused_not_an_empty_table(runs_dir, tmp_path, capsys):
    # The rows' names and no cells came out with exit status 0: a wrong --config / runs folder pair passed a script.
    config = tmp_path / "other.yaml"
    config.write_text(yaml.safe_dump({"name": "other", "seeds": [0], "datasets": {"vggsound": {}},
                                      "methods": {"joint": {}}}))
    out = tmp_path / "table.csv"
    assert main(["table", str(runs_dir), "--config", str(config), "--format", "csv", "--out", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert f"none of the 7 finished runs in {runs_dir} is of a row and dataset that {config} lists, such as " in err
    assert "give the runs folder of that config, or no --config" in err


def test_an_unfinished_sweep_run_is_filed_under_its_sweep_row_not_its_method(tmp_path):
    run = write_run(tmp_path, "joint", "cremad", 0, (0.5, 0.5, 0.5), done=False,
                    job={"label": "joint_v", "dataset": "kinetics_sounds"})
    assert unfinished_row(run) == ("joint_v", "kinetics_sounds")
    (run / "job.json").unlink()
    assert unfinished_row(run) == ("joint", "cremad")


def test_an_unfinished_run_whose_files_do_not_parse_counts_as_the_tables(runs_dir, capsys):
    # The table reads no other file of an unfinished run; its row unknown, it is counted rather than dropped.
    (runs_dir / "cremad-aug-seed9-fixture" / "config.yaml").write_text("method: [aug\n")
    assert main(["table", str(runs_dir)]) == 0
    assert "1 unfinished run folder(s) of the rows shown" in capsys.readouterr().out


def test_an_unfinished_run_whose_row_is_not_a_name_counts_as_the_tables(runs_dir, capsys):
    # A config.yaml that parses but names no method (a list): the table failed with "unhashable type".
    (runs_dir / "cremad-aug-seed9-fixture" / "config.yaml").write_text("method: [aug]\ndataset: {cremad: 1}\n")
    assert main(["table", str(runs_dir)]) == 0
    assert "1 unfinished run folder(s) of the rows shown" in capsys.readouterr().out


def test_a_sweep_run_that_never_started_counts_as_unfinished(runs_dir, capsys):
    never = runs_dir / "cremad-aug-seed0-never"
    never.mkdir()
    (never / "job.yaml").write_text("method: aug\n")
    assert main(["table", str(runs_dir)]) == 0
    assert "note: 2 unfinished run folder(s) of the rows shown" in capsys.readouterr().err


def test_a_run_with_done_but_no_summary_counts_as_unfinished(runs_dir, capsys):
    # It was neither tabulated nor counted: its row was a seed short without a word. The runner resumes such a run.
    (runs_dir / "cremad-joint-seed2-fixture" / "summary.json").unlink()
    assert main(["table", str(runs_dir)]) == 0
    err = capsys.readouterr().err
    assert "note: 2 unfinished run folder(s) of the rows shown" in err
    assert str(runs_dir / "cremad-aug-seed9-fixture") in err


@pytest.mark.parametrize("damage", ["not json", "no keys"])
def test_a_damaged_summary_is_an_error_naming_the_file(runs_dir, capsys, damage):
    summary = runs_dir / "cremad-aug-seed1-fixture" / "summary.json"
    summary.write_text('{"method": "aug", "proto' if damage == "not json" else '{"method": "aug", "seed": 1}')
    assert main(["table", str(runs_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{summary} is damaged: " in err and "delete that run folder and train it again" in err
    assert ("not valid JSON" if damage == "not json" else "it has no dataset, protocols") in err


def test_a_row_whose_runs_come_from_several_commits_or_a_dirty_tree_is_noted(runs_dir, capsys):
    # Runs of different code were averaged into one row without a word.
    for seed, (commit, dirty) in enumerate([("aaaa111", False), ("bbbb222", False), ("cccc333", True)]):
        _edit_json(runs_dir / f"cremad-joint-seed{seed}-fixture" / "summary.json",
                   lambda s: s.update(env={"git_commit": commit, "git_dirty": dirty}))
    for seed in (0, 1):
        _edit_json(runs_dir / f"cremad-aug-seed{seed}-fixture" / "summary.json",
                   lambda s: s.update(env={"git_commit": "aaaa111", "git_dirty": False}))
    note = "row Concat/cremad: 3 runs from 3 commits, 1 with uncommitted changes"
    assert main(["table", str(runs_dir)]) == 0
    captured = capsys.readouterr()
    assert f"note: {note}\n" in captured.err
    assert f"where not one commit: {note}." in captured.out.splitlines()[0]
    assert "row AUG" not in captured.err + captured.out, "AUG's runs come from one clean commit"


def test_one_commit_partly_dirty_is_noted_per_row_even_for_a_single_run(runs_dir):
    # One commit behind every run, changes in some: a note per row with changes (a one-run row too), not "all".
    for run in sorted(runs_dir.glob("*/summary.json")):
        dirty = run.parent.name in ("cremad-joint-seed1-fixture", "kinetics_sounds-aug-seed0-fixture")
        _edit_json(run, lambda s: s.update(env={"git_commit": "aaaa111", "git_dirty": dirty}))
    assert build_table(load_runs(runs_dir)).code_notes == [
        "row AUG/kinetics_sounds: 1 run from 1 commit, 1 with uncommitted changes",
        "row Concat/cremad: 3 runs from 1 commit, 1 with uncommitted changes"]


def test_a_run_resumed_on_other_code_counts_for_every_commit_that_trained_it(runs_dir):
    # The table read only the final env: a run trained for its first epochs by another commit (or a dirty tree) and
    # resumed at the row's commit passed as that commit's.
    clean = {"git_commit": "aaaa111", "git_dirty": False}
    for run in sorted(runs_dir.glob("*/summary.json")):
        _edit_json(run, lambda s: s.update(env=clean, segments=[{"first_epoch": 0, **clean}]))
    assert build_table(load_runs(runs_dir)).code_notes == []
    resumed = runs_dir / "cremad-joint-seed1-fixture" / "summary.json"
    _edit_json(resumed, lambda s: s.update(segments=[{"first_epoch": 0, "git_commit": "bbbb222", "git_dirty": True},
                                                     {"first_epoch": 3, **clean}]))
    assert build_table(load_runs(runs_dir)).code_notes == [
        "row Concat/cremad: 3 runs from 2 commits, 1 with uncommitted changes"]
    joint_runs = sorted(runs_dir.glob("cremad-joint-*/summary.json"))
    assert commit_counts(trained_by(read_json(path)) for path in joint_runs) == {"aaaa111": 3, "bbbb222": 1}


def test_a_run_resumed_at_a_commit_after_training_outside_git_is_not_that_commits(runs_dir):
    # Its first epochs ran outside a git checkout (no commit recorded): counting only the recorded commits passed it
    # as the commit that finished it, in the table's note and in the demo's code line.
    clean = {"git_commit": "aaaa111", "git_dirty": False}
    for run in sorted(runs_dir.glob("*/summary.json")):
        _edit_json(run, lambda s: s.update(env=clean, segments=[{"first_epoch": 0, **clean}]))
    resumed = runs_dir / "cremad-joint-seed1-fixture" / "summary.json"
    _edit_json(resumed, lambda s: s.update(segments=[{"first_epoch": 0, "git_commit": None, "git_dirty": None},
                                                     {"first_epoch": 3, **clean}]))
    assert build_table(load_runs(runs_dir)).code_notes == [
        "row Concat/cremad: 3 runs from 1 commit, 1 without a recorded commit"]
    assert commit_counts([trained_by(read_json(resumed))]) == {"aaaa111": 1, "unknown": 1}


def test_one_dirty_commit_behind_every_run_is_one_note_and_a_partly_recorded_row_is_named(runs_dir):
    # Every row of a table trained from one dirty tree gave one note per row; a run without a recorded commit (from
    # before the record) was counted as a commit of its own.
    for run in sorted(runs_dir.glob("*/summary.json")):
        _edit_json(run, lambda s: s.update(env={"git_commit": "aaaa111", "git_dirty": True}))
    records = load_runs(runs_dir)
    # A row computed from other runs (no config, as the demo's ensemble) is their code, not more runs.
    derived = dataclasses.replace(records[0], label="ensemble", config={}, envs=())
    assert build_table([*records, derived]).code_notes == [
        f"all {len(records)} runs: commit aaaa111 with uncommitted changes"]
    _edit_json(runs_dir / "cremad-joint-seed0-fixture" / "summary.json", lambda s: s.update(env={}))
    notes = build_table(load_runs(runs_dir)).code_notes
    assert "row Concat/cremad: 3 runs from 1 commit, 1 without a recorded commit, 2 with uncommitted changes" in notes
    # A run without a commit but with changes made the whole-table note name a commit it never had.
    for run in sorted(runs_dir.glob("*/summary.json")):
        _edit_json(run, lambda s: s.update(env={"git_commit": "aaaa111", "git_dirty": True}))
    _edit_json(runs_dir / "cremad-joint-seed0-fixture" / "summary.json", lambda s: s.update(env={"git_dirty": True}))
    notes = build_table(load_runs(runs_dir)).code_notes
    assert notes and not any(note.startswith("all ") for note in notes)
    assert len(notes) == len({(r.label, r.dataset) for r in records})
    # A tree with no commit yet records changes without a commit.
    for run in sorted(runs_dir.glob("*/summary.json")):
        _edit_json(run, lambda s: s.update(env={"git_commit": None, "git_dirty": True}))
    assert "row Concat/cremad: 3 runs without a recorded commit, 3 with uncommitted changes" in build_table(
        load_runs(runs_dir)).code_notes


@pytest.mark.parametrize("method, knob", [("mses", "eval_split"), ("gblending", "held_out_split"),
                                          ("relearning", "diagnose_split"), ("umt", "teacher_select")])
def test_rows_that_select_or_tune_on_test_are_marked_unless_the_protocol_is_best_on_test(tmp_path, method, knob):
    # Under the clean protocol such rows were presented as clean.
    for seed in (0, 1):
        run = write_run(tmp_path, method, "cremad", seed, (0.6, 0.5, 0.7))
        config = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump({**config, "hparams": {method: {knob: "test"}}}))
    write_run(tmp_path, "joint", "cremad", 0, (0.6, 0.5, 0.7))
    records = load_runs(tmp_path)
    for protocol, marked in (("clean", True), ("last", True), ("paper", False)):
        table = build_table(records, protocol=protocol)
        marks = {title.removesuffix(" ‡"): title.endswith(" ‡") for title, _ in table.rows}
        assert marks == {list_methods()[method].title: marked, "Concat": False}, protocol
        assert ("‡ = the method selects or tunes on the test split" in table.caption) == marked
    assert r"$^\ddagger$" in render(records, "tex", protocol="clean")


def test_the_caption_names_the_datasets_whose_runs_read_the_test_split(tmp_path):
    # The mark covers a whole row; its clean datasets' cells read as tuned on test too unless the caption says which.
    for method, knob, dataset, split in (("mses", "eval_split", "cremad", "test"),
                                         ("mses", "eval_split", "kinetics_sounds", "val"),
                                         ("umt", "teacher_select", "cremad", "test"),
                                         ("umt", "teacher_select", "kinetics_sounds", "test")):
        run = write_run(tmp_path, method, dataset, 0, (0.6, 0.5, 0.7))
        config = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump({**config, "hparams": {method: {knob: split}}}))
    caption = build_table(load_runs(tmp_path), protocol="clean").caption
    titles = {name: list_methods()[name].title for name in ("mses", "umt")}
    assert (f"held-out split knob is test: {titles['mses']} on cremad; {titles['umt']} on cremad and kinetics_sounds)"
            in caption)


def test_a_knob_that_names_no_split_is_not_marked_as_reading_test(tmp_path):
    # UMT's teacher_select=final distils the final checkpoints: no split is read, so the row is clean.
    for seed in (0, 1):
        run = write_run(tmp_path, "umt", "cremad", seed, (0.6, 0.5, 0.7))
        _set_config(run, hparams={"umt": {"teacher_select": "final"}})
    write_run(tmp_path, "joint", "kinetics_sounds", 0, (0.6, 0.5, 0.7))  # a dataset without UMT runs
    table = build_table(load_runs(tmp_path), protocol="clean")
    assert [title for title, _ in table.rows] == ["Concat", list_methods()["umt"].title]
    assert TEST_SPLIT_MARK not in table.caption


def test_the_missing_table_marks_rows_that_read_the_test_split_under_any_protocol(runs_dir):
    # Its cells are the final checkpoint's, not the best-on-test epoch's that the paper protocol's caption owns up to.
    for seed in (0, 1):
        run = write_run(runs_dir / "umt", "umt", "cremad", seed, (0.6, 0.5, 0.7))
        _set_config(run, hparams={"umt": {"teacher_select": "test"}})
        write_missing(run)
    table = build_table(load_runs(runs_dir), protocol="paper", missing=True)
    assert dict(table.rows).keys() >= {f"{list_methods()['umt'].title} {TEST_SPLIT_MARK}", "Concat"}
    assert f"{TEST_SPLIT_MARK} = the method selects or tunes on the test split" in table.caption


def test_a_finished_run_without_its_config_is_damaged_not_averaged_with_its_seeds_twin(tmp_path, capsys):
    # Only runs with a config were checked for a repeated seed: this one and its copy made a cell of n=2 from one seed.
    write_run(tmp_path, "joint", "cremad", 0, (0.60, 0.5, 0.7))
    copy = write_run(tmp_path / "copy", "joint", "cremad", 0, (0.70, 0.5, 0.7))
    (copy / "config.yaml").unlink()
    assert main(["table", str(tmp_path)]) == 2
    assert (f"{copy / 'config.yaml'} is damaged: a finished run (DONE and summary.json) has no config.yaml"
            in capsys.readouterr().err)


def test_a_repeated_seed_is_refused_in_rows_without_a_config(runs_dir):
    # Rows computed from other runs (the demo's ensemble) carry no config; their seeds were never compared.
    twins = [RunRecord(run_dir=runs_dir / name, label="ensemble", title="Ensemble", method="ensemble",
                       dataset="cremad", seed=0, protocols={"paper": {"test": {"acc": 0.5}}}) for name in "ab"]
    with pytest.raises(MixedRunsError, match="row 'ensemble' on cremad has seed 0 twice"):
        build_table(load_runs(runs_dir) + twins)


def test_a_reference_row_is_shown_but_never_bold(runs_dir):
    # A row computed from other runs (the demo's late fusion of final checkpoints) took the bold from the methods
    # selected under the caption's protocol.
    references = [RunRecord(run_dir=runs_dir, label="ensemble", title="Ensemble", method="ensemble",
                            dataset="cremad", seed=seed, protocols={"paper": {"test": {"acc": 0.99}}}, reference=True)
                  for seed in (0, 1)]
    table = build_table(load_runs(runs_dir) + references, protocol="paper")
    acc = [(c.dataset, c.metric) for c in table.columns].index(("cremad", "acc"))
    rows = dict(table.rows)
    assert rows["Ensemble"][acc].mean == approx64(99.0) and not rows["Ensemble"][acc].best
    assert rows["AUG"][acc].best, "the best method takes the bold"
    assert ("Reference rows, computed from other runs rather than selected under this protocol, are not ranked: "
            "Ensemble.") in table.caption
    assert "Reference rows" not in build_table(load_runs(runs_dir), protocol="paper").caption


def test_rows_trained_on_a_per_class_subset_are_named_in_the_caption(runs_dir):
    records = load_runs(runs_dir)
    assert "subset" not in build_table(records, protocol="paper").caption
    smoke = [dataclasses.replace(r, config={**r.config, "data": {**r.config.get("data", {}), "subset": 4}})
             if r.label == "aug" else r for r in records]
    assert "Trained and tested on a per-class subset of the data (data.subset: smoke runs, not results): AUG on " \
           "cremad; AUG on kinetics_sounds." in build_table(smoke, protocol="paper").caption
    # data.subset 0 (every run's config.yaml records it) serves the whole dataset; one smoke row is named too.
    one = [dataclasses.replace(r, config={**r.config, "data": {"subset": 0 if r.label == "joint" else 4}})
           if r.label == "joint" or r.dataset == "kinetics_sounds" else r for r in records]
    assert "(data.subset: smoke runs, not results): AUG on kinetics_sounds." in build_table(one).caption


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("edit, problem", [
    # NaN: the column's best mean depended on the order of its rows
    (lambda s: s["protocols"]["paper"]["test"].update(map=float("nan")), "protocols.paper.test.map is NaN, not a "
                                                                         "number in [0, 1]"),
    (lambda s: s["protocols"]["clean"]["test"].update(acc=float("inf")), "protocols.clean.test.acc is Infinity"),
    (lambda s: s["protocols"]["paper"]["test"].update(acc=None), "protocols.paper.test.acc is null"),  # TypeError
    (lambda s: s["protocols"]["paper"]["test"].update(acc=60.0), "protocols.paper.test.acc is 60.0"),  # 6000.00
    # the slack above 1 is for float rounding only: 100.1% is no accuracy
    (lambda s: s["protocols"]["paper"]["test"].update(acc=1.001), "protocols.paper.test.acc is 1.001, not a number"),
    (lambda s: s["protocols"]["paper"]["test"]["per_modality"]["audio"].update(acc="0.5"),
     'protocols.paper.test.per_modality.audio.acc is "0.5"'),
    (lambda s: s["protocols"]["paper"]["test"].pop("acc"), "protocols.paper.test has no acc"),
    (lambda s: s.update(seed="zero"), 'seed is "zero", not an integer'),  # was a bare ValueError
    (lambda s: s.update(seed=0.7), "seed is 0.7, not an integer"),  # was silently seed 0
    # JSON's true is no seed 1 and no accuracy of 100%
    (lambda s: s.update(seed=True), "seed is true, not an integer"),
    (lambda s: s["protocols"]["paper"]["test"].update(acc=True), "protocols.paper.test.acc is true, not a number"),
    (lambda s: s.update(protocols=[]), "protocols is [], not a mapping"),
    # the run added nothing to any cell: its row was a seed short without a word
    (lambda s: s["protocols"]["paper"].update(test=None), "protocols.paper.test is null, not the test metrics"),
    (lambda s: s["protocols"]["paper"].pop("test"), "protocols.paper.test is null, not the test metrics"),
    (lambda s: s["protocols"]["paper"].update(test=[0.6]), "protocols.paper.test is [0.6], not the test metrics"),
    (lambda s: s["protocols"].update(paper=[]), "protocols.paper is [], not a mapping"),
    # each of these was a bare TypeError or AttributeError naming no file
    (lambda s: s.update(method=["aug"]), 'method is ["aug"], not a name'),
    (lambda s: s.update(dataset={"name": "cremad"}), 'dataset is {"name": "cremad"}, not a name'),
    (lambda s: s["protocols"]["paper"]["test"].update(per_modality=["audio"]),
     'protocols.paper.test.per_modality is ["audio"], not a mapping of modalities'),
    (lambda s: s.update(env=["abc"]), 'env is ["abc"], not a mapping'),
    (lambda s: s.update(split_files=["train.csv"]), 'split_files is ["train.csv"], not a mapping'),
    (lambda s: s.update(segments=[3]), "segments is [3], not a list of invocations"),
    (lambda s: s.update(segments={"first_epoch": 0}), 'segments is {"first_epoch": 0}, not a list of invocations'),
    (lambda s: s.update(world_size=[1, 2]), "world_size is [1, 2], not an integer"),
    (lambda s: s.update(segments=[{"first_epoch": 0, "world_size": "2"}]), 'segments[0].world_size is "2", not an'),
])
def test_a_summary_with_a_bad_value_is_an_error_naming_the_file_and_key(runs_dir, capsys, edit, problem):
    summary = runs_dir / "cremad-aug-seed1-fixture" / "summary.json"
    _edit_json(summary, edit)
    assert main(["table", str(runs_dir), "--protocol", "paper"]) == 2
    err = capsys.readouterr().err
    assert f"{summary} is damaged: {problem}" in err


@pytest.mark.parametrize("name, text, problem", [
    ("summary.json", "null", "it is null, not the run's summary mapping"),
    ("summary.json", "5", "it is 5, not the run's summary mapping"),
    ("summary.json", '[{"method": "aug"}]', "it is [{\"method\": \"aug\"}], not the run's summary mapping"),
    ("job.json", "[]", "it is [], not the mapping of a sweep's job"),
    ("job.json", '{"label": ["aug"]}', 'label is ["aug"], not a name'),
    ("job.json", '{"title": {"en": "AUG"}}', 'title is {"en": "AUG"}, not a name'),
    (MISSING_RESULT, '["rates"]', 'it is ["rates"], not the mapping of an evaluation'),
])
def test_a_run_file_of_another_shape_is_an_error_naming_the_file(runs_dir, capsys, name, text, problem):
    # Each was a bare TypeError or AttributeError (an unhashable row label, .get of a list) naming no file.
    run = runs_dir / "cremad-aug-seed1-fixture"
    write_missing(run)
    (run / name).write_text(text)
    assert main(["table", str(runs_dir), "--missing"]) == 2
    assert f"{run / name} is damaged: {problem}" in capsys.readouterr().err


def test_an_average_precision_rounded_above_one_is_read(runs_dir, capsys):
    # average_precision sums recall steps in floating point: a perfect ranking can record 1.0000000000000002, which
    # the range check refused as damage (retraining gives the same number).
    summary = runs_dir / "cremad-aug-seed1-fixture" / "summary.json"
    _edit_json(summary, lambda s: s["protocols"]["paper"]["test"].update(map=1.0000000000000002))
    assert main(["table", str(runs_dir), "--protocol", "paper"]) == 0
    record = next(r for r in load_runs(runs_dir) if r.run_dir == summary.parent)
    assert record.values("paper")["map"] == 1.0000000000000002


def test_a_prepared_cache_beside_the_runs_is_not_an_unfinished_run(runs_dir):
    # A cache's DONE file marked a run folder, so the demo's --work folder counted its caches as unfinished runs.
    cache = runs_dir / "data-1" / "cache" / "av_digits" / "ogm-1"
    cache.mkdir(parents=True)
    (cache / "DONE").write_text("")
    assert cache not in unfinished_runs(runs_dir)


@pytest.mark.parametrize("edit, damaged, problem", [
    (lambda r: r["rates"][1]["metrics"].pop("macro_f1"), MISSING_RESULT, "rates[1].metrics has no macro_f1"),
    (lambda r: r["rates"][0].pop("rate"), MISSING_RESULT, "rates[0] has no rate"),
    (lambda r: r["rates"][1].update(rate=20), MISSING_RESULT, "rates[1].rate is 20, not a number in [0, 1]"),
    (lambda r: r.pop("rates"), MISSING_RESULT, "rates is null, not a list"),
    (None, "summary.json", "protocols.last.epoch is missing"),
    ("no epoch", "summary.json", "protocols.last.epoch is missing"),
])
def test_a_bad_missing_modality_result_is_an_error_naming_the_file_and_key(runs_dir, capsys, edit, damaged,
                                                                           problem):
    # Each was a bare KeyError naming neither file nor key.
    run = runs_dir / "cremad-joint-seed0-fixture"
    write_missing(run)
    if edit is None:
        _edit_json(run / "summary.json", lambda s: s["protocols"].pop("last"))
    elif edit == "no epoch":
        _edit_json(run / "summary.json", lambda s: s["protocols"]["last"].pop("epoch"))
    else:
        _edit_json(run / MISSING_RESULT, edit)
    assert main(["table", str(runs_dir), "--missing"]) == 2
    assert f"{run / damaged} is damaged: {problem}" in capsys.readouterr().err


def test_a_damaged_metrics_line_is_an_error_naming_the_file_and_line(runs_dir, capsys):
    metrics = runs_dir / "cremad-aug-seed1-fixture" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"epoch": 3, "te\n')
    assert main(["plot", str(runs_dir)]) == 2
    assert f"{metrics} is damaged: line 4 is not valid JSON" in capsys.readouterr().err


def _set_config(run: Path, **sections) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    (run / "config.yaml").write_text(yaml.safe_dump(config))


def test_one_row_label_over_two_methods_is_refused_naming_the_method(tmp_path):
    # config.yaml's top-level keys are settings under their own names ("method", not "method.").
    write_run(tmp_path, "joint", "cremad", 0, (0.6, 0.5, 0.7), job={"label": "base"})
    write_run(tmp_path, "unimodal", "cremad", 1, (0.6, 0.5, 0.7), job={"label": "base"})
    with pytest.raises(MixedRunsError, match="differ in method 'joint' vs 'unimodal'. A row averages"):
        build_table(load_runs(tmp_path))


def test_a_row_of_runs_with_different_settings_is_refused_naming_them(runs_dir):
    for seed in range(3):
        _set_config(runs_dir / f"cremad-joint-seed{seed}-fixture", train={"lr": 0.01, "seed": seed})
    _set_config(runs_dir / "cremad-joint-seed2-fixture", train={"lr": 0.1})
    with pytest.raises(MixedRunsError, match=r"row 'joint' on cremad would average runs of different configs: "
                                             r".*seed0-fixture and .*seed2-fixture differ in train.lr 0.01 vs 0.1"):
        build_table(load_runs(runs_dir))
    with pytest.raises(MixedRunsError, match="differ in train.lr 0.01 vs 0.1"):
        plot_sweep(runs_dir, runs_dir / "sweep.png")


def test_a_refused_row_names_four_differing_settings_and_counts_the_rest(runs_dir):
    _set_config(runs_dir / "cremad-joint-seed2-fixture", train={"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6})
    with pytest.raises(MixedRunsError, match=r"differ in train.a None vs 1, train.b None vs 2, train.c None vs 3, "
                                             r"train.d None vs 4 and 2 more\. A row"):
        build_table(load_runs(runs_dir))


def test_runs_that_differ_only_in_where_they_ran_share_a_row(runs_dir):
    for seed in range(3):
        _set_config(runs_dir / f"cremad-joint-seed{seed}-fixture",
                    train={"lr": 0.01, "seed": seed, "device": ["cpu", "cuda", "auto"][seed],
                           "checkpoint_every": seed + 1},
                    data={"cache": f"/somewhere/{seed}/ogm-1234abcd", "resident": "auto" if seed else "memory",
                          "cache_dir": f"/caches/{seed}", "prefetch": seed, "eval_cache_mb": 100 * seed,
                          "compile_views": bool(seed), "eval_batch_size": 64})
    table = build_table(load_runs(runs_dir), protocol="clean")
    (cells,) = [cells for title, cells in table.rows if title == "Concat"]
    assert cells[0].n == 3 and cells[0].seeds == (0, 1, 2)
    # a cell's seeds in numeric order, whatever the folders' order (seed10 sorts before seed9)
    for seed in (10, 9):
        write_run(runs_dir, "unimodal", "cremad", seed, (0.5, 0.5, 0.5))
    (cells,) = [cells for title, cells in build_table(load_runs(runs_dir)).rows if title == "Unimodal"]
    assert cells[0].seeds == (9, 10)
    # The eval batch size is a setting (MLA's official entropy gate is computed per batch); so is the training split.
    for data, differ in (({"eval_batch_size": 32}, "data.eval_batch_size 64 vs 32"),
                         ({"eval_batch_size": 64, "train_split": "full"}, "data.train_split None vs 'full'")):
        _set_config(runs_dir / "cremad-joint-seed2-fixture", data=data)
        with pytest.raises(MixedRunsError, match=f"differ in {differ}"):
            build_table(load_runs(runs_dir))


def _set_world_size(run: Path, world_size: int, segments: list[int] | None = None) -> None:
    summary = json.loads((run / "summary.json").read_text())
    summary["world_size"] = world_size
    if segments:
        summary["segments"] = [{"first_epoch": i, "world_size": w} for i, w in enumerate(segments)]
    (run / "summary.json").write_text(json.dumps(summary))


def test_seeds_trained_on_another_number_of_ranks_are_not_one_row(runs_dir):
    # seed 0's summary predates world_size (one process); seed 1 records it.
    _set_world_size(runs_dir / "cremad-joint-seed1-fixture", 1)
    _set_world_size(runs_dir / "cremad-joint-seed2-fixture", 2)
    with pytest.raises(MixedRunsError, match=r"row 'joint' on cremad would average runs trained on different "
                                             r"numbers of data-parallel ranks: world_size 1 \(.*\) vs 2 "
                                             r"\(.*seed2-fixture\)"):
        build_table(load_runs(runs_dir))
    _set_world_size(runs_dir / "cremad-joint-seed2-fixture", 1, segments=[2, 1])
    with pytest.raises(MixedRunsError, match=r"world_size 1 \(.*\) vs \[1, 2\] \(.*seed2-fixture\)"):
        build_table(load_runs(runs_dir))
    _set_world_size(runs_dir / "cremad-joint-seed2-fixture", 1, segments=[1, 1])
    build_table(load_runs(runs_dir))


def test_a_summary_from_before_ranks_were_recorded_is_one_process(runs_dir):
    # Seeds 0 and 1 predate world_size; seed 2 trained on 2 ranks. Reading the old ones as "unknown" averaged them.
    _set_world_size(runs_dir / "cremad-joint-seed2-fixture", 2)
    with pytest.raises(MixedRunsError, match=r"world_size 1 \(.*\) vs 2 \(.*seed2-fixture\)"):
        build_table(load_runs(runs_dir))


def test_a_run_still_in_its_first_invocation_is_not_taken_for_one_process(runs_dir):
    # A plot of a running 2-rank sweep: seed 2 has no summary.json yet, so its world size is unknown, not 1.
    for seed in (0, 1):
        _set_world_size(runs_dir / f"cremad-joint-seed{seed}-fixture", 2)
    (runs_dir / "cremad-joint-seed2-fixture" / "summary.json").unlink()
    check_one_config_per_row(("joint", "cremad", seed, runs_dir / f"cremad-joint-seed{seed}-fixture",
                              yaml.safe_load((runs_dir / f"cremad-joint-seed{seed}-fixture" / "config.yaml")
                                             .read_text())) for seed in (2, 0, 1))
    _set_world_size(runs_dir / "cremad-joint-seed1-fixture", 1)
    with pytest.raises(MixedRunsError, match="world_size 1"):
        check_one_config_per_row(("joint", "cremad", seed, runs_dir / f"cremad-joint-seed{seed}-fixture",
                                  yaml.safe_load((runs_dir / f"cremad-joint-seed{seed}-fixture" / "config.yaml")
                                                 .read_text())) for seed in (2, 0, 1))


def test_an_extended_seed_is_another_config(runs_dir):
    for seed in range(3):
        _set_config(runs_dir / f"cremad-joint-seed{seed}-fixture", train={"epochs": 10, "seed": seed})
    (runs_dir / "cremad-joint-seed1-fixture" / "extensions.json").write_text(json.dumps(
        [{"key": "train.epochs", "from_epochs": 10, "to_epochs": 20, "first_epoch": 10}]))
    with pytest.raises(MixedRunsError, match="differ in train.epochs 10 vs 20"):
        build_table(load_runs(runs_dir))


def test_an_extended_run_and_a_fresh_run_of_the_same_length_are_not_seeds_of_one_config(runs_dir):
    # Extended from 10 to 20 epochs, the run continued a 10-epoch schedule; the fresh runs trained 20 from the start.
    for seed in range(3):
        _set_config(runs_dir / f"cremad-joint-seed{seed}-fixture", train={"epochs": 20, "seed": seed})
    (runs_dir / "cremad-joint-seed1-fixture" / "extensions.json").write_text(json.dumps(
        [{"key": "train.epochs", "from_epochs": 10, "to_epochs": 20, "first_epoch": 10}]))
    with pytest.raises(MixedRunsError, match=r"differ in train.extended_from None vs \[10\]"):
        build_table(load_runs(runs_dir))


def test_seeds_read_from_caches_of_other_options_are_not_one_row(runs_dir):
    # data.cache may differ (a path); the options the cache was built with (recipe, frame size...) may not.
    for seed in range(3):
        run = runs_dir / f"cremad-joint-seed{seed}-fixture"
        _set_config(run, train={"seed": seed}, data={"cache": f"/caches/{seed}"})
        identity = {"cache_options_hash": "aaaa1111" if seed < 2 else "bbbb2222", "raw_fingerprint": "f"}
        (run / "data.json").write_text(json.dumps(identity))
    with pytest.raises(MixedRunsError, match="differ in data.cache_options_hash 'aaaa1111' vs 'bbbb2222'"):
        build_table(load_runs(runs_dir))


@pytest.mark.parametrize("checkpoint_epoch, split, why", [
    (1, "test", "evaluated the checkpoint of epoch 1, but the run's final epoch is 2"),
    (2, "val", "evaluated the 'val' split, not 'test'")])
def test_a_missing_modality_result_of_another_checkpoint_or_split_is_refused(runs_dir, checkpoint_epoch, split, why):
    run = runs_dir / "cremad-joint-seed0-fixture"
    write_missing(run, checkpoint_epoch, split)
    with pytest.raises(StaleResultError, match=rf"{run / 'missing_modality.json'}: it {why}.*--split test"):
        build_table(load_runs(runs_dir), missing=True)
    assert build_table(load_runs(runs_dir)).rows, "the other columns do not read it"


def test_stale_missing_modality_results_are_counted_beside_the_first(runs_dir):
    for name in ("cremad-joint-seed0-fixture", "cremad-joint-seed1-fixture", "cremad-aug-seed0-fixture"):
        write_missing(runs_dir / name, checkpoint_epoch=1)
    with pytest.raises(StaleResultError, match=r"cremad-aug-seed0-fixture/missing_modality.json: it evaluated the "
                                               r"checkpoint of epoch 1, .* \(2 more run\(s\) like it\)\. Evaluate"):
        build_table(load_runs(runs_dir), missing=True)


def test_a_seed_twice_in_a_row_is_refused(runs_dir):
    copy = runs_dir / "elsewhere" / "cremad-joint-seed1-fixture"
    shutil.copytree(runs_dir / "cremad-joint-seed1-fixture", copy)
    with pytest.raises(MixedRunsError, match=rf"row 'joint' on cremad has seed 1 twice: .*seed1-fixture and {copy}"):
        build_table(load_runs(runs_dir))


def test_run_series_and_plots(runs_dir):
    run = runs_dir / "cremad-aug-seed0-fixture"
    history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    series = run_series(history)
    assert set(series) == {"accuracy", "loss", "diag/ratio", "diag/learners_visual"}, "non-numeric diag is skipped"
    assert series["accuracy"]["test"] == approx64([0.6, 0.7, 0.8])
    assert series["accuracy"]["val/visual"] == approx64([0.6] * 3)
    assert series["diag/ratio"]["ratio"] == [1.0, 2.0, 3.0]
    png = plot_run(run)
    assert png == run / "plots" / "curves.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sweep_png = plot_sweep(runs_dir, runs_dir / "sweep.png")
    assert sweep_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and sweep_png.stat().st_size > 10_000
    # update()'s non-loss logs (OGM-GE's coefficients) get their own panel, not the loss axis.
    coeffs = run_series([{"epoch": 0, "train": {"loss": 2.0, "loss_audio": 1.0, "coeff_audio": 0.3}}])
    assert set(coeffs["loss"]) == {"loss", "loss_audio"} and coeffs["train"] == {"coeff_audio": [0.3]}


def test_sweep_curves_average_the_seeds_that_reached_each_epoch():
    # An unfinished seed no longer cuts its row to its own length (a 1-epoch seed hid a 3-epoch one).
    assert seed_mean([[0.2, 0.4, 0.6], [0.4]]) == approx64([0.3, 0.4, 0.6])
    assert np.isnan(seed_mean([[0.2, math.nan], [0.4]])[1])


def test_a_sweep_plot_keeps_two_rows_of_one_method_apart(runs_dir):
    # Two sweep rows of one method (labels aug and aug_tau) are two rows, not one row of mixed configs.
    base = runs_dir / "cremad-aug-seed0-fixture"
    other = runs_dir / "cremad-aug-seed0-tau"
    shutil.copytree(base, other)
    _set_config(other, aug={"tau": 0.1})
    for run, label in ((base, "aug"), (other, "aug_tau"), (runs_dir / "cremad-aug-seed1-fixture", "aug")):
        (run / "job.json").write_text(json.dumps({"label": label, "title": "AUG"}))
    curves = _sweep_curves(runs_dir)[0]["cremad"]["fused"]
    # seeds 0 and 1, and the unfinished seed 9 (plots show runs in progress)
    assert {k: len(v) for k, v in curves.items() if k.startswith("AUG")} == {"AUG (aug)": 3, "AUG (aug_tau)": 1}
    assert plot_sweep(runs_dir, runs_dir / "two.png").exists()


def test_a_sweep_plot_counts_the_runs_it_has_nothing_to_draw_for(runs_dir):
    # A run killed before its first epoch ended (an empty metrics.jsonl) left its row's n one short without a word.
    started = runs_dir / "cremad-joint-seed3-started"
    shutil.copytree(runs_dir / "cremad-joint-seed2-fixture", started)
    (started / "metrics.jsonl").write_text("")
    notes: list[str] = []
    assert plot_sweep(runs_dir, runs_dir / "sweep.png", log=notes.append).exists()
    assert notes == [f"note: 1 run folder(s) with no finished epoch or no config.yaml are not drawn, such as {started}"]


def test_two_rows_under_one_title_are_told_apart_by_their_labels(runs_dir):
    # runs of two sweeps tabulated from one folder: rows 'aug' and 'aug_tau', both titled AUG
    other = runs_dir / "cremad-aug-seed0-tau"
    shutil.copytree(runs_dir / "cremad-aug-seed0-fixture", other)
    _set_config(other, aug={"tau": 0.1})
    for run, label in ((runs_dir / "cremad-aug-seed0-fixture", "aug"), (other, "aug_tau"),
                       (runs_dir / "cremad-aug-seed1-fixture", "aug")):
        (run / "job.json").write_text(json.dumps({"label": label, "title": "AUG"}))
    titles = [t for t, _ in build_table(load_runs(runs_dir), metrics=("acc",)).rows]
    assert titles == ["AUG (aug)", "AUG (aug_tau)", "Concat"]


def test_a_config_row_takes_its_grid_rows_sorted_and_no_label_that_only_starts_like_it(tmp_path):
    labels = ("aug [aug.tau=0.3]", "aug [aug.tau=0.1]", "aug_v", "aug [aug.tau=0.5]", "augx", "aug [aug.tau=0.2]",
              "aug [aug.tau=0.4]")
    for i, label in enumerate(labels):
        write_run(tmp_path / str(i), "aug", "cremad", 0, (0.5, 0.5, 0.5), job={"label": label, "title": label})
    rows = [title for title, _ in build_table(load_runs(tmp_path), methods=["aug"], metrics=("acc",)).rows]
    assert rows == [f"aug [aug.tau=0.{i}]" for i in range(1, 6)]


def test_a_markdown_row_title_keeps_its_bar_out_of_the_columns(tmp_path):
    text = render(_records({"a|b": (0.5,)}, tmp_path), "md")
    assert text.splitlines()[-1] == r"| A\|B | **50.00 (1)** |"


def test_an_unknown_format_or_protocol_is_refused_naming_the_choices(tmp_path):
    records = _records({"a": (0.5,)}, tmp_path)
    with pytest.raises(ValueError, match=r"format 'html' is not one of \['md', 'csv', 'tex'\]"):
        render(records, "html")
    with pytest.raises(ValueError, match=r"protocol 'best' is not one of \['paper', 'clean', 'last'\]"):
        build_table(records, protocol="best")


def test_the_difference_to_the_paper_is_of_the_unrounded_mean(tmp_path):
    # 62.004 shows as 62.00; the CSV's diff (4 decimals) is 62.004 - 65.07, not 62.00 - 65.07.
    records = [dataclasses.replace(r, label="joint") for r in _records({"joint": (0.62004,)}, tmp_path)]
    cell = build_table(records, paper=load_paper(PAPER, "table1")).rows[0][1][0]
    assert cell.paper.value == 65.07 and cell.diff == approx64(62.004 - 65.07)


def test_an_experiment_configs_title_goes_before_its_name(tmp_path):
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump({"name": "short", "title": "Long title", "methods": ["joint"],
                                      "datasets": ["cremad"], "protocol": "clean"}))
    assert config_order(config) == {"methods": ["joint"], "datasets": ["cremad"], "protocol": "clean",
                                    "paper": None, "table": None, "title": "Long title"}
    config.write_text(yaml.safe_dump({"name": "short", "methods": ["joint"], "datasets": ["cremad"]}))
    assert config_order(config)["title"] == "short"


def test_tex_escapes_every_special_character_once():
    assert _tex_escape(r"a\b {c} x^2 ~y 5% Δ") == (r"a\textbackslash{}b \{c\} x\textasciicircum{}2 \textasciitilde{}y "
                                                    r"5\% $\Delta$")


def test_demo_curves_average_the_seeds_that_reached_each_epoch_numbered_as_recorded(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *args, **kwargs: figures.append(self))
    for seed, accs in ((0, (0.6, 0.6, 0.6)), (1, (0.4, 0.4, 0.4))):  # test acc 0.4, 0.5, 0.6 and 0.2
        run = write_run(tmp_path, "joint", "cremad", seed, accs, job={"label": "joint", "title": "Concat"})
    # seed 1 is still training: one epoch written
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    (run / "DONE").unlink()
    plot_demo(tmp_path, tmp_path / "curves.png")
    [fused] = [line for ax in figures[0].axes for line in ax.lines if line.get_color() == "black"]
    assert list(fused.get_xdata()) == [0, 1, 2], "0-based, as metrics.jsonl and the run plot number epochs"
    assert list(fused.get_ydata()) == approx64([30.0, 50.0, 60.0]), "epochs 1-2 from the seed that reached them"


def test_a_paper_table_says_which_runs_trained_on_split_files_other_than_the_published_ones(runs_dir):
    run = runs_dir / "cremad-joint-seed0-fixture"
    summary = json.loads((run / "summary.json").read_text())
    # train.csv was a local file other than the pinned OGM-GE one; vggsound.csv has no pinned version at all
    summary["split_files"] = {"train.csv": "custom", "test.csv": "pinned", "vggsound.csv": "custom"}
    (run / "summary.json").write_text(json.dumps(summary))
    records = load_runs(runs_dir)
    assert next(r for r in records if r.run_dir == run).custom_splits == ("train.csv",)
    caption = build_table(records, paper=load_paper(PAPER, "table1")).caption
    assert "1 of the 7 runs trained on a cache prepared from split files other than the published ones (train.csv)" \
        in caption
    assert "split files other" not in build_table(records).caption, "no paper, nothing to compare with"
    # A table of some datasets counts and names the custom runs among the runs it shows, not among all it read.
    ks = runs_dir / "kinetics_sounds-aug-seed0-fixture"
    _edit_json(ks / "summary.json", lambda s: s.update(split_files={"my_train.txt": "custom"}))
    caption = build_table(load_runs(runs_dir), paper=load_paper(PAPER, "table1"), datasets=["kinetics_sounds"]).caption
    assert ("1 of the 2 runs trained on a cache prepared from split files other than the published ones "
            "(my_train.txt), such as kinetics_sounds-aug-seed0-fixture:") in caption


@pytest.mark.parametrize("text", ["", '{"epoch": 0}\n'])
def test_plotting_a_run_with_no_epoch_metrics_names_the_file(tmp_path, capsys, text):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(text)
    assert main(["plot", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and str(run / "metrics.jsonl") in err and "no epoch" in err
    assert not (run / "plots").exists()


def test_the_missing_table_of_runs_without_a_validation_split_needs_no_protocol(tmp_path, capsys):
    # Runs trained with data.train_split=full have no 'clean' protocol; missing-modality columns read only the final
    # checkpoint's missing_modality.json, yet the default protocol (clean) made the table fail on "summary has no
    # protocol 'clean'".
    for seed in (0, 1):
        run = write_run(tmp_path, "joint", "cremad", seed, (0.6, 0.5, 0.7))
        summary = json.loads((run / "summary.json").read_text())
        del summary["protocols"]["clean"]
        (run / "summary.json").write_text(json.dumps(summary))
        write_missing(run)
    assert main(["table", str(tmp_path), "--missing", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "cremad/acc@missing=0/mean" in out
    assert "Concat,50.0000,0.0000,2,0:50.0000 1:50.0000,30.0000,0.0000,2,0:30.0000 1:30.0000" in out
    table = build_table(load_runs(tmp_path), protocol="clean", missing=True)
    assert [c.mean for c in table.rows[0][1]] == approx64([50.0, 30.0])
    # Its accuracy columns under that protocol are refused naming the run and why, not a bare KeyError 'clean'.
    assert main(["table", str(tmp_path), "--protocol", "clean"]) == 2
    err = capsys.readouterr().err
    assert (f"{tmp_path / 'cremad-joint-seed0-fixture'}: summary has no protocol 'clean'; it has ['last', 'paper'] "
            "(a run with no validation split") in err


def test_the_missing_table_file_says_which_runs_its_cells_leave_out(runs_dir, tmp_path, capsys):
    # Concat on cremad has 3 finished seeds, one evaluated: its cells are n=1. The note went to stderr only and said
    # those runs "show '–'", while the table file showed a bare (1) that a reader could not tell from a 1-seed row.
    write_missing(runs_dir / "cremad-joint-seed0-fixture")
    out = tmp_path / "missing.md"
    assert main(["table", str(runs_dir), "--missing", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    caption = out.read_text().splitlines()[0]
    assert "| **50.00 (1)** |" in out.read_text()
    for text in (err, caption):
        assert "6 finished run(s) of the rows shown have no missing-modality result and are not counted" in text
    assert "show '–'" not in err


def _captured_figures(monkeypatch) -> list:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figures = []

    def capture(self, *args, **kwargs):
        FigureCanvasAgg(self).draw()  # lays the figure out as savefig would
        figures.append(self)

    monkeypatch.setattr(Figure, "savefig", capture)
    return figures


def test_every_sweep_row_has_its_own_line_style_the_same_in_every_panel_and_a_visible_legend(tmp_path,
                                                                                               monkeypatch):
    # AUG's Table 1 sweep has 22 rows: matplotlib's 10-colour cycle drew rows 1, 11 and 21 alike, and each panel
    # restarted the cycle, so a row missing from one panel (a unimodal row has no head of the other modality)
    # shifted every later row's colour there; the 22-entry legends ran off the figure.
    from matplotlib.colors import to_hex

    figures = _captured_figures(monkeypatch)
    for i in range(22):
        run = write_run(tmp_path / f"r{i:02d}", "joint", "cremad", 0, (0.3 + 0.02 * i,) * 3,
                        job={"label": f"row{i:02d}", "title": f"Row {i:02d}"})
        if i == 0:  # an audio-only row
            history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            for record in history:
                for split in ("val", "test"):
                    del record[split]["per_modality"]["visual"]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    plot_sweep(tmp_path, tmp_path / "sweep.png")
    [fig] = figures
    styles: dict[str, set] = {}
    for ax in fig.axes:
        drawn = [(line.get_label().split(" (n=")[0], (to_hex(line.get_color()), line.get_linestyle()))
                 for line in ax.lines]
        assert len({style for _, style in drawn}) == len(drawn), f"{ax.get_title()}: two rows drawn alike"
        for label, style in drawn:
            styles.setdefault(label, set()).add(style)
    assert len(styles) == 22 and all(len(s) == 1 for s in styles.values()), "a row changes style between panels"
    for ax in fig.axes:
        assert (ax.get_ylim(), ax.get_ylabel(), ax.get_xlabel()) == ((0, 1), "test accuracy", "epoch"), ax.get_title()
    legends = [ax.get_legend() for ax in fig.axes] + fig.legends
    for legend in filter(None, legends):
        box, page = legend.get_window_extent(), fig.bbox
        assert page.x0 <= box.x0 and box.x1 <= page.x1 + 1 and page.y0 <= box.y0 and box.y1 <= page.y1 + 1
    shown = {text.get_text().split(" (n=")[0] for legend in filter(None, legends) for text in legend.get_texts()}
    assert shown == set(styles), "every line has a legend entry"


def test_a_one_epoch_run_has_whole_epoch_ticks(runs_dir, monkeypatch):
    # With one epoch the x range is [-0.05, 0.05]: MaxNLocator(integer=True) found fewer than 2 integers there and
    # fell back to ticks at -0.045, -0.03, ..., fractional epochs (a smoke run, or any run after its first epoch).
    figures = _captured_figures(monkeypatch)
    for run in runs_dir.glob("*-fixture"):
        (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    plot_run(runs_dir / "cremad-aug-seed0-fixture")
    plot_sweep(runs_dir, runs_dir / "sweep.png")
    assert len(figures) == 2
    for fig in figures:
        for ax in fig.axes:
            low, high = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if low <= t <= high]
            assert ticks == [0.0], f"{ax.get_title()}: epoch ticks {ticks}"


def test_the_run_plot_draws_the_modalities_confidence_and_its_ratio(tmp_path, monkeypatch):
    # docs/methods/README.md#metrics: "the ratio of two modalities' conf is the imbalance diagnostic plotted by
    # augbench plot"; the run plot drew accuracies, losses and diagnostics only.
    def split(a: float, v: float) -> dict:
        return {"acc": 0.5, "conf": (a + v) / 2, "per_modality": {"audio": {"acc": 0.5, "conf": a},
                                                                  "visual": {"acc": 0.4, "conf": v}}}

    history = [{"epoch": e, "train": {"loss": 1.0}, "val": split(0.2 * (e + 1), 0.1), "test": split(0.3, 0.2)}
               for e in range(2)]
    series = run_series(history)
    assert series["confidence"]["val/audio"] == approx64([0.2, 0.4])
    assert series["confidence"]["test/visual"] == [0.2] * 2
    assert series["confidence ratio"] == {"val audio/visual": approx64([2.0, 4.0]),
                                          "test audio/visual": approx64([1.5, 1.5])}
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    figures = _captured_figures(monkeypatch)
    plot_run(run)
    axes = {ax.get_title(): ax for ax in figures[0].axes}
    assert axes["confidence ratio"].get_ylabel() and axes["confidence"].get_ylabel() == "mean true-class probability"
    assert {t.get_text() for t in axes["confidence ratio"].get_legend().get_texts()} == {"val audio/visual",
                                                                                         "test audio/visual"}
    # three modalities: per-modality confidence, no single ratio
    three = [{"epoch": 0, "test": {"acc": 0.5, "per_modality": {m: {"acc": 0.5, "conf": 0.3} for m in "abc"}}}]
    assert "confidence ratio" not in run_series(three) and len(run_series(three)["confidence"]) == 3


def test_demo_curves_name_every_line_label_every_axis_and_share_one_linear_scale(tmp_path, monkeypatch):
    # Eight rows in six columns: columns 3-6 end on the first row, whose x tick labels the shared axis hides. The
    # epoch label and ticks went to the hidden panels of the second row, so four panels had no epoch axis at all.
    from matplotlib.colors import to_hex

    figures = _captured_figures(monkeypatch)
    for i in range(8):
        for seed, acc in ((0, 0.6), (1, 0.5), (2, 0.3)) if i == 0 else ((0, 0.5),):
            write_run(tmp_path / f"r{i}", "joint", "cremad", seed, (acc,) * 3, job={"label": f"row{i}"})
    order = ["row7"] + [f"row{i}" for i in range(7)]
    plot_demo(tmp_path, tmp_path / "curves.png", order=order, titles={f"row{i}": f"Row {i}" for i in range(8)},
              references={"audio": 0.55, "visual": 0.45})
    [fig] = figures
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == [f"Row {i}" for i in (7, *range(7))], "titles, in the given order"
    for ax in panels:
        assert ax.get_ylim() == (0, 100) and ax.get_yscale() == ax.get_xscale() == "linear"
        assert ax.get_xlim() == panels[0].get_xlim()
        refs = sorted(line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "--")
        assert refs == approx64([45.0, 55.0]), "the unimodal models' accuracy in %, dashed"
    # Row 0: seeds' test accuracy at epochs 0-2 is (40, 50, 60), (30, 40, 50) and (10, 20, 30); the band is min-max.
    fused_band = panels[1].collections[0].get_paths()[0].vertices[:, 1]
    assert {10.0, 20.0, 30.0, 40.0, 50.0, 60.0} <= set(np.round(fused_band, 9))
    assert (fused_band.min(), fused_band.max()) == approx64((10.0, 60.0))
    for ax in (panels[0], panels[6]):
        assert ax.get_ylabel() == "test accuracy (%)"
    # The lowest panel of each column: Row 5 and Row 6 on the second row, Row 1-Row 4 (columns 3-6) on the first.
    for ax in (panels[6], panels[7], *panels[2:6]):
        assert ax.get_xlabel() == "epoch", ax.get_title()
        assert [t.get_text() for t in ax.get_xticklabels() if t.get_visible() and t.get_text()], ax.get_title()
    [legend] = fig.legends
    colours = {text.get_text(): to_hex(handle.get_color()) for text, handle in zip(legend.get_texts(),
                                                                                     legend.legend_handles)}
    assert colours == {"fused output": "#000000", "audio head": to_hex("tab:blue"), "visual head": to_hex("tab:orange"),
                       "audio-only model": to_hex("tab:blue"), "visual-only model": to_hex("tab:orange")}


def test_demo_curves_of_two_rows_keep_the_legend_and_its_title_inside_the_figure(tmp_path, monkeypatch):
    # With two panels (augbench demo --methods joint aug) the one-line legend and its title were cut at both sides.
    figures = _captured_figures(monkeypatch)
    for label in ("joint", "aug"):
        write_run(tmp_path / label, "joint", "cremad", 0, (0.5,) * 3, job={"label": label})
    plot_demo(tmp_path, tmp_path / "curves.png", references={"audio": 0.55, "visual": 0.45})
    [fig] = figures
    fig.canvas.draw()
    [legend] = fig.legends
    box, frame = legend.get_window_extent(), fig.bbox
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and box.y1 <= frame.y1
    title = legend.get_title().get_window_extent()
    assert frame.x0 <= title.x0 and title.x1 <= frame.x1


def test_demo_bars_show_fused_and_head_accuracy_with_the_seeds_std_under_display_names(tmp_path, monkeypatch):
    from matplotlib.colors import to_hex

    figures = _captured_figures(monkeypatch)
    stats = {"unimodal_audio": {"acc": (0.6, 0.02), "acc:audio": (0.6, 0.02)},
             "ensemble": {"acc": (0.9, 0.01), "acc:audio": (0.6, 0.02), "acc:visual": (0.8, 0.03)},
             "joint": {"acc": (0.7, 0.05), "acc:audio": (0.55, 0.04), "acc:visual": (0.4, 0.1)}}
    plot_demo_bars(stats, tmp_path / "bars.png", titles={"unimodal_audio": "Unimodal (audio)", "joint": "Concat"},
                   references={"ensemble": "unimodal ensemble", "joint": "joint training"})
    [fig] = figures
    [ax] = fig.axes
    ticks = sorted(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels())), reverse=True)
    assert [name for _, name in ticks] == ["Unimodal (audio)", "ensemble", "Concat"], "titles, top to bottom"
    assert ax.get_xlim() == (0, 100) and ax.get_xscale() == "linear" and "mean ± std over seeds" in ax.get_xlabel()
    row_y = {name: y for y, name in ticks}
    bars = {}
    for container in ax.containers:
        if not hasattr(container, "patches"):
            continue
        colour = {"fused output": "black", "audio head": "tab:blue", "visual head": "tab:orange"}[container.get_label()]
        assert {to_hex(p.get_facecolor()) for p in container.patches} == {to_hex(colour)}
        [errors] = container.errorbar.lines[2]
        bars[container.get_label()] = [(p.get_width(), p.get_y() + p.get_height() / 2, seg.reshape(-1, 2)[:, 0])
                                       for p, seg in zip(container.patches, errors.get_segments())]
    assert set(bars) == {"fused output", "audio head", "visual head"}
    expected = {"fused output": [(60, 2), (90, 1), (70, 5)], "audio head": [None, (60, 2), (55, 4)],
                "visual head": [None, (80, 3), (40, 10)]}
    for output, rows in expected.items():
        for (width, y, ends), title, want in zip(bars[output], row_y, rows):
            assert abs(y - row_y[title]) < 0.5, f"{output} of {title} drawn beside another row"
            if want is None:  # a one-modality row's head is its fused output, drawn once
                assert np.isnan(width) and not len(ends), f"{output} of {title}"
            else:
                mean, std = want
                assert width == approx64(mean), f"{output} of {title}"
                assert sorted(ends) == approx64([mean - std, mean + std]), "error bar: mean ± std"
    refs = {line.get_label(): line.get_xdata()[0] for line in ax.lines if not line.get_label().startswith("_")}
    assert refs == approx64({"unimodal ensemble": 90.0, "joint training": 70.0})
    [legend] = fig.legends
    assert {t.get_text() for t in legend.get_texts()} == {"fused output", "audio head", "visual head",
                                                          "unimodal ensemble", "joint training"}


def test_the_demo_curves_draw_only_the_runs_they_are_given(tmp_path, monkeypatch):
    # The demo passes the runs of its own rows: a stale row left in the work folder is no panel of the figure.
    figures = _captured_figures(monkeypatch)
    kept = write_run(tmp_path / "kept", "joint", "cremad", 0, (0.5,) * 3, job={"label": "joint"})
    write_run(tmp_path / "stale", "sum", "cremad", 0, (0.5,) * 3, job={"label": "sum"})
    plot_demo(tmp_path, tmp_path / "curves.png", runs=[kept])
    assert [ax.get_title() for ax in figures[0].axes if ax.get_visible()] == ["joint"]


def test_a_sweep_plot_draws_each_rows_mean_over_its_seeds(tmp_path, monkeypatch):
    figures = _captured_figures(monkeypatch)
    for seed, acc in ((0, 0.6), (1, 0.4)):
        write_run(tmp_path, "joint", "cremad", seed, (acc,) * 3, job={"label": "joint", "title": "Concat"})
    plot_sweep(tmp_path, tmp_path / "sweep.png")
    [fused] = [line for ax in figures[0].axes if ax.get_title() == "cremad: fused test acc" for line in ax.lines]
    assert fused.get_label() == "Concat (n=2)" and list(fused.get_ydata()) == approx64([0.3, 0.4, 0.5])


def test_the_demo_curves_share_both_axes_across_panels(tmp_path, monkeypatch):
    # A row whose runs stopped after one epoch keeps the others' epoch range, so panels compare at a glance.
    figures = _captured_figures(monkeypatch)
    write_run(tmp_path / "a", "joint", "cremad", 0, (0.5,) * 3, job={"label": "joint"})
    short = write_run(tmp_path / "b", "sum", "cremad", 0, (0.5,) * 3, job={"label": "sum"})
    (short / "metrics.jsonl").write_text((short / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    plot_demo(tmp_path, tmp_path / "curves.png")
    first, second = figures[0].axes
    assert first.get_shared_x_axes().joined(first, second) and first.get_shared_y_axes().joined(first, second)
    assert first.get_xlim() == second.get_xlim() and first.get_ylim() == second.get_ylim() == (0, 100)


def test_table_refuses_a_paper_table_without_a_paper(runs_dir, capsys, tmp_path):
    # Ignored before: the table came out without the published numbers it was asked for, and exit 0.
    assert main(["table", str(runs_dir), "--paper-table", "table1", "--out", str(tmp_path / "t.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("augbench table: error: --paper-table table1 names a table of the paper file: give --paper (or a "
                   "--config that names a paper)")
    assert not (tmp_path / "t.md").exists()


def test_table_command_passes_its_options_and_follows_the_protocol_every_run_records(runs_dir, monkeypatch, capsys):
    from benchmarks.collect import build_table
    from benchmarks.commands import table as command

    calls = []

    def recording_build_table(records, **options):
        calls.append(options)
        return build_table(records, **options)

    monkeypatch.setattr(command, "build_table", recording_build_table)
    monkeypatch.setattr(command, "log_wandb_table", lambda table, mode, where, group=None: calls.append((mode, group)))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    shutil.rmtree(runs_dir / "cremad-aug-seed9-fixture")
    finished = sorted(p for p in runs_dir.iterdir() if (p / "DONE").exists())
    (finished[0] / "job.json").write_text(json.dumps({"protocol": "paper"}))
    # One run's job.json is not every run's: the table stays on the default protocol.
    assert main(["table", str(runs_dir), "--per-modality", "--wandb-group", "g", "--wandb", "offline"]) == 0
    options, logged = calls[-2:]
    assert (options["protocol"], options["per_modality"], options["missing"]) == ("clean", True, False)
    assert logged == ("offline", "g")
    for run in finished:
        (run / "job.json").write_text(json.dumps({"protocol": "paper"}))
    assert main(["table", str(runs_dir)]) == 0
    options, logged = calls[-2:]
    assert (options["protocol"], options["per_modality"], logged) == ("paper", False, ("disabled", None))
    assert main(["table", str(runs_dir), "--protocol", "clean"]) == 0
    assert calls[-2]["protocol"] == "clean"
    # A --config's protocol wins over the one the runs record, and --protocol over both.
    config = runs_dir.parent / "experiment.yaml"
    experiment = {"name": "fixture", "methods": {"aug": {}, "joint": {}}, "datasets": {"cremad": {}}}
    config.write_text(yaml.safe_dump({**experiment, "protocol": "clean"}))
    assert main(["table", str(runs_dir), "--config", str(config)]) == 0
    assert calls[-2]["protocol"] == "clean"
    for run in finished:
        (run / "job.json").write_text(json.dumps({"protocol": "clean"}))
    config.write_text(yaml.safe_dump({**experiment, "protocol": "paper"}))
    assert main(["table", str(runs_dir), "--config", str(config), "--protocol", "clean"]) == 0
    assert calls[-2]["protocol"] == "clean"
    assert main(["table", str(runs_dir), "--config", str(config)]) == 0
    assert calls[-2]["protocol"] == "paper"
    capsys.readouterr()


def test_plot_command_plots_a_run_or_a_sweep_into_out(tmp_path, monkeypatch, capsys):
    import benchmarks.plots

    calls = []
    monkeypatch.setattr(benchmarks.plots, "plot_run", lambda path, out: calls.append(("run", path, out)) or "r.png")
    monkeypatch.setattr(benchmarks.plots, "plot_sweep", lambda path, out: calls.append(("sweep", path, out)) or "s.png")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    assert main(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 0
    assert main(["plot", str(tmp_path)]) == 0
    assert calls == [("run", run, tmp_path / "c.png"), ("sweep", tmp_path, None)]
    assert capsys.readouterr().out == "wrote r.png\nwrote s.png\n"
    assert main(["plot", str(run / "metrics.jsonl")]) == 2
    assert f"{run / 'metrics.jsonl'} is not a folder" in capsys.readouterr().err and len(calls) == 2


def test_run_series_leaves_a_gap_where_an_epoch_lacks_a_value_and_skips_flags():
    # An epoch without a value is a gap in the line (NaN), not a drop to 0; a true/false flag is no curve.
    history = [{"epoch": 0, "test": {"acc": 0.5}, "diag": {"frozen": True}},
               {"epoch": 1, "test": {"acc": 0.6}, "diag": {"frozen": False, "ratio": 2.0}}]
    series = run_series(history)
    assert "diag/frozen" not in series
    assert math.isnan(series["diag/ratio"]["ratio"][0]) and series["diag/ratio"]["ratio"][1] == 2.0


def test_a_modality_with_zero_confidence_leaves_the_ratio_undefined_at_that_epoch():
    def split(v: float) -> dict:
        return {"acc": 0.5, "per_modality": {"audio": {"acc": 0.5, "conf": 0.4}, "visual": {"acc": 0.1, "conf": v}}}

    series = run_series([{"epoch": e, "test": split(v)} for e, v in enumerate((0.0, 0.2))])
    [ratio] = series["confidence ratio"].values()
    assert math.isnan(ratio[0]) and ratio[1] == approx64(2.0)
    # one modality without a conf (a metrics.jsonl of an older run): its confidence is drawn, no ratio
    record = {"epoch": 0, "test": {"acc": 0.5, "per_modality": {"audio": {"acc": 0.5}, "visual": {"conf": 0.2}}}}
    assert "confidence ratio" not in run_series([record]) and run_series([record])["confidence"] == {
        "test/visual": [0.2]}


def test_the_run_plot_labels_every_panel_and_names_the_run_by_its_display_title(runs_dir, monkeypatch):
    figures = _captured_figures(monkeypatch)
    plot_run(runs_dir / "cremad-aug-seed1-fixture")
    [fig] = figures
    title = list_methods()["aug"].title
    assert title != "aug" and fig.get_suptitle() == f"{title} on cremad, seed 1: cremad-aug-seed1-fixture"
    for ax in fig.axes:
        assert (ax.get_xlabel(), ax.get_xscale(), ax.get_yscale()) == ("epoch", "linear", "linear"), ax.get_title()
    accuracy = next(ax for ax in fig.axes if ax.get_title() == "accuracy")
    styles = {line.get_label(): line.get_linestyle() for line in accuracy.lines}
    assert styles == {"val": "--", "val/audio": "--", "val/visual": "--", "test": "-", "test/audio": "-",
                      "test/visual": "-"}, "validation dashed, test solid"


def test_a_sweep_plot_puts_each_datasets_fused_output_first_and_colours_rows_in_label_order(tmp_path, monkeypatch):
    from matplotlib.colors import to_hex

    figures = _captured_figures(monkeypatch)
    for i in (11, 3, 0, 10, 7):
        write_run(tmp_path / str(i), "joint", "cremad", 0, (0.5,) * 3, job={"label": f"r{i:02d}", "title": f"R{i:02d}"})
    plot_sweep(tmp_path, tmp_path / "sweep.png")
    [fig] = figures
    assert [ax.get_title() for ax in fig.axes] == ["cremad: fused test acc", "cremad: audio test acc",
                                                   "cremad: visual test acc"]
    # colours follow the sorted labels, so a row keeps its colour from one plot of the sweep to the next
    styles = {line.get_label(): (to_hex(line.get_color()), line.get_linestyle()) for line in fig.axes[0].lines}
    assert styles == {f"R{i:02d} (n=1)": (to_hex(f"C{k}"), "-") for k, i in enumerate((0, 3, 7, 10, 11))}


def test_the_demo_curves_draw_the_rows_runs_beside_one_with_no_epoch_yet(tmp_path, monkeypatch):
    figures = _captured_figures(monkeypatch)
    write_run(tmp_path / "a", "joint", "cremad", 0, (0.6,) * 3, job={"label": "joint"})
    started = write_run(tmp_path / "b", "joint", "cremad", 1, (0.6,) * 3, job={"label": "joint"})
    (started / "metrics.jsonl").write_text("")
    plot_demo(tmp_path, tmp_path / "curves.png")
    [fused] = [line for line in figures[0].axes[0].lines if line.get_color() == "black"]
    assert list(fused.get_ydata()) == approx64([40.0, 50.0, 60.0])


def test_demo_bars_of_a_row_sit_side_by_side_on_its_tick_fused_on_top_with_three_reference_lines(tmp_path,
                                                                                                monkeypatch):
    figures = _captured_figures(monkeypatch)
    stats = {row: {"acc": (acc, 0.01), "acc:audio": (0.5, 0.01), "acc:visual": (0.4, 0.01)}
             for row, acc in (("a", 0.6), ("b", 0.7), ("c", 0.8))}
    plot_demo_bars(stats, tmp_path / "bars.png", references={"a": "ref a", "b": "ref b", "c": "ref c"})
    [ax] = figures[0].axes
    ticks = dict(zip((t.get_text() for t in ax.get_yticklabels()), ax.get_yticks()))
    bars = [c for c in ax.containers if hasattr(c, "patches")]
    assert [c.get_label() for c in bars] == ["fused output", "audio head", "visual head"]
    for i, row in enumerate(stats):
        patches = [c.patches[i] for c in bars]
        lows, highs = [p.get_y() for p in patches], [p.get_y() + p.get_height() for p in patches]
        assert (min(lows) + max(highs)) / 2 == approx64(ticks[row]), f"{row}'s bars are centred on its tick"
        assert highs[0] == approx64(ticks[row] + 0.4) and lows == approx64(sorted(lows, reverse=True)), row
    refs = {line.get_label(): line.get_xdata()[0] for line in ax.lines if not line.get_label().startswith("_")}
    assert refs == approx64({"ref a": 60.0, "ref b": 70.0, "ref c": 80.0})
    # A fourth reference has no line style: refused, not dropped from the chart without a word.
    with pytest.raises(ValueError, match=r"at most 3 reference lines have a style; got \['a', 'b', 'c', 'd'\]"):
        plot_demo_bars({**stats, "d": stats["a"]}, tmp_path / "bars4.png",
                       references={"a": "ref a", "b": "ref b", "c": "ref c", "d": "ref d"})


def test_a_sweep_plot_counts_the_runs_without_config_or_test_accuracy(runs_dir, capsys):
    # Records without test accuracy failed the whole plot with "augbench plot: error: accuracy" (naming neither the
    # file nor the problem), or with a validation accuracy left the run out of its row's n without a word.
    no_config = runs_dir / "cremad-aug-seed0-fixture"
    (no_config / "config.yaml").unlink()
    (runs_dir / "cremad-joint-seed0-fixture" / "metrics.jsonl").write_text('{"epoch": 0, "val": {"acc": 0.5}}\n')
    (runs_dir / "cremad-joint-seed1-fixture" / "metrics.jsonl").write_text('{"epoch": 0, "train": {"loss": 1.0}}\n')
    assert main(["plot", str(runs_dir)]) == 0
    assert (f"note: 3 run folder(s) with no finished epoch or no config.yaml are not drawn, such as {no_config}"
            in capsys.readouterr().err)
    assert len(_sweep_curves(runs_dir)[0]["cremad"]["fused"]["Concat"]) == 1, "seed 2 alone"


def test_every_line_of_a_run_plot_is_named_by_its_panels_legend_or_title(tmp_path, monkeypatch):
    # A run without a validation split drew one unnamed line in a panel: "confidence ratio" showed the test split's
    # ratio and "train" a method's only coefficient with no legend, so neither the split nor the key was named.
    history = [{"epoch": e, "train": {"loss": 1.0, "coeff_audio": 0.5}, "diag": {"ratio": 1.0},
                "test": {"acc": 0.5, "per_modality": {m: {"acc": 0.5, "conf": 0.4} for m in ("audio", "visual")}}}
               for e in range(2)]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    figures = _captured_figures(monkeypatch)
    plot_run(run)
    titles = {ax.get_title() for ax in figures[0].axes}
    assert {"confidence ratio", "train", "diag/ratio"} <= titles
    for ax in figures[0].axes:
        named = {t.get_text() for t in ax.get_legend().get_texts()} if ax.get_legend() else set()
        for line in ax.lines:
            assert line.get_label() in named or ax.get_title() == f"diag/{line.get_label()}", ax.get_title()


def test_a_sweep_plot_of_datasets_with_different_modalities_draws_each_datasets_outputs(tmp_path, monkeypatch):
    figures = _captured_figures(monkeypatch)
    write_run(tmp_path, "joint", "cremad", 0, (0.5,) * 3)
    audio_only = write_run(tmp_path, "joint", "esc50", 0, (0.5,) * 3)
    history = [json.loads(x) for x in (audio_only / "metrics.jsonl").read_text().splitlines()]
    for record in history:
        for split in ("val", "test"):
            del record[split]["per_modality"]["visual"]
    (audio_only / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    plot_sweep(tmp_path, tmp_path / "sweep.png")
    assert [ax.get_title() for ax in figures[0].axes] == [f"{ds}: {out} test acc" for ds, outs in
                                                          (("cremad", ("fused", "audio", "visual")),
                                                           ("esc50", ("fused", "audio"))) for out in outs]
    # a dataset per row of panels, as wide as the dataset with the most outputs: no panel drawn over another
    assert [ax.get_subplotspec().get_geometry() for ax in figures[0].axes] == [(2, 3, k, k) for k in (0, 1, 2, 3, 4)]


def test_plotting_a_folder_without_metrics_says_it_is_no_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path} has no metrics.jsonl (not a run folder")):
        plot_run(tmp_path)
