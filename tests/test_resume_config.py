"""Resume continues a run under its own config only; the one sanctioned change (more epochs) is recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from benchmarks.cli import main
from benchmarks.config import ConfigMismatchError, build_config, check_resume_config, merge_overrides
from benchmarks.records import DamagedFileError, write_json, write_yaml
from benchmarks.run_folder import EXTENSIONS, recorded_config
from benchmarks.runner import train_run
from core.hparams import HParam
from tests.conftest import interrupted_run, tiny_overrides

TINY = ["--set", "model.width=4", "--set", "model.blocks=[1,1,1,1]", "--set", "data.n_train=64",
        "--set", "data.n_val=16", "--set", "data.n_test=16", "--set", "train.batch_size=16",
        "--wandb", "disabled", "--no-progress"]


def _train(run_dir, *extra: str) -> int:
    return main(["train", "--run-dir", str(run_dir), *extra])


def test_resume_with_another_method_is_refused_and_the_finished_run_is_untouched(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--method", "ogm_ge", "--dataset", "synthetic", "--epochs", "1", *TINY) == 0
    summary = (run / "summary.json").read_text()
    capsys.readouterr()
    assert _train(run, "--method", "sum", "--dataset", "synthetic", "--epochs", "1", *TINY, "--resume") == 2
    err = capsys.readouterr().err
    assert "method: 'ogm_ge' in the run, 'sum' now" in err and "Traceback" not in err
    assert (run / "summary.json").read_text() == summary


def test_resume_with_a_changed_lr_is_refused_and_config_yaml_is_not_rewritten(tmp_path):
    run = tmp_path / "run"
    cfg = interrupted_run(run)
    before = (run / "config.yaml").read_bytes(), (run / "checkpoint.pt").read_bytes()
    overrides = tiny_overrides()
    overrides["train"].update(epochs=3, lr=0.5)
    with pytest.raises(ConfigMismatchError, match=r"train\.lr: 0\.01 in the run, 0\.5 now"):
        train_run(build_config("joint", "synthetic", overrides), run, resume=True)
    assert ((run / "config.yaml").read_bytes(), (run / "checkpoint.pt").read_bytes()) == before
    assert yaml.safe_load((run / "config.yaml").read_text()) == cfg.as_dict()


def test_check_resume_config_lists_every_differing_key():
    cfg = build_config("joint", "synthetic", tiny_overrides()).as_dict()
    other = json.loads(json.dumps(cfg))
    other["train"]["lr"], other["model"]["width"], other["data"]["n_train"] = 0.5, 8, 99
    with pytest.raises(ConfigMismatchError) as err:
        check_resume_config("R", cfg, other)
    for key in ("train.lr", "model.width", "data.n_train"):
        assert key in str(err.value)
    check_resume_config("R", cfg, json.loads(json.dumps(cfg)))  # identical: no error
    other = json.loads(json.dumps(cfg))
    other["train"]["epochs"] = cfg["train"]["epochs"] + 3
    with pytest.raises(ConfigMismatchError, match="--extend-epochs"):
        check_resume_config("R", cfg, other)
    check_resume_config("R", cfg, other, extend_epochs=True)
    other["train"]["epochs"] = cfg["train"]["epochs"] - 1
    with pytest.raises(ConfigMismatchError, match="only add epochs"):
        check_resume_config("R", cfg, other, extend_epochs=True)


def test_resume_from_the_run_dir_alone_ends_like_an_uninterrupted_run(tmp_path, capsys):
    overrides = tiny_overrides()
    overrides["train"]["epochs"] = 3
    reference = train_run(build_config("joint", "synthetic", overrides), tmp_path / "reference", log=lambda _: None)
    run = tmp_path / "run"
    interrupted_run(run)
    assert _train(run, "--resume", "--wandb", "disabled", "--no-progress") == 0
    got = json.loads((run / "summary.json").read_text())
    assert got["protocols"] == json.loads(json.dumps(reference["protocols"]))
    assert got["config_hash"] == reference["config_hash"]


def test_extend_epochs_trains_a_finished_run_further_and_records_it(tmp_path, capsys):
    run = tmp_path / "run"
    base = ["--method", "joint", "--dataset", "synthetic", "--epochs", "2", *TINY]
    assert _train(run, *base) == 0
    config = (run / "config.yaml").read_bytes()
    first = json.loads((run / "summary.json").read_text())

    assert _train(run, *base, "--extend-epochs", "3") == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["protocols"]["last"]["epoch"] == 2
    assert summary["config_hash"] == first["config_hash"], "the run keeps the identity of its config.yaml"
    (ext,) = summary["extensions"]
    assert (ext["key"], ext["from_epochs"], ext["to_epochs"], ext["first_epoch"]) == ("train.epochs", 2, 3, 2)
    assert json.loads((run / "extensions.json").read_text()) == summary["extensions"]
    assert (run / "config.yaml").read_bytes() == config, "config.yaml is never rewritten by a resume"
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]

    capsys.readouterr()
    assert _train(run, "--resume", "--wandb", "disabled") == 0, "the run's own config now has 3 epochs"
    assert _train(run, *base, "--resume") == 2, "--epochs 2 is no longer the run's config"
    assert "train.epochs: 3 in the run, 2 now" in capsys.readouterr().err
    assert _train(run, *base, "--extend-epochs", "1") == 2
    assert "only add epochs" in capsys.readouterr().err
    assert len(json.loads((run / "extensions.json").read_text())) == 1


def test_extending_a_finished_run_whose_checkpoint_is_gone_is_refused_and_changes_nothing(tmp_path, capsys):
    # It used to train from epoch 0 and record the result as the 2-epoch run extended to 3.
    run = tmp_path / "run"
    base = ["--method", "joint", "--dataset", "synthetic", "--epochs", "2", *TINY]
    assert _train(run, *base) == 0
    (run / "checkpoint.pt").unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert _train(run, *base, "--extend-epochs", "3") == 2
    err = capsys.readouterr().err
    assert "holds a finished run whose checkpoint.pt is gone, so it cannot be trained further" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_run_recorded_before_data_subset_existed_keeps_its_name_and_resumes(tmp_path):
    # data.subset was added after prepared-dataset runs were recorded: their config.yaml lacks it.
    whole, smoke = build_config("joint", "cremad"), build_config("joint", "cremad", {"data": {"subset": 4}})
    recorded = whole.as_dict()
    assert "subset" not in recorded["data"], "a run at the value before the knob records what it recorded then"
    assert whole.digest() == build_config("joint", "cremad", {"data": {"subset": 0}}).digest()
    check_resume_config(tmp_path, recorded, build_config("joint", "cremad", {"data": {"subset": 0}}).as_dict())
    assert smoke.as_dict()["data"]["subset"] == 4 and smoke.digest() != whole.digest()
    with pytest.raises(ConfigMismatchError, match="data.subset: '<absent>' in the run, 4 now"):
        check_resume_config(tmp_path, recorded, smoke.as_dict())


@pytest.mark.parametrize("where, knob, record", [
    # a knob whose new default is not the behaviour before it (runs without it ran at absent_value)
    ("data", HParam("gate", True, "added later, on by default", absent_value=False), {}),
    # a knob whose per-dataset default is not the value before it
    ("data", HParam("count", 0, "added later", per_dataset={"synthetic": 3}, absent_value=0), {}),
    # a knob that a variant's preset sets, turned back to the value before it
    ("greedy", HParam("gate", False, "added later", absent_value=False), {"variant": "bb"}),
])
def test_a_record_without_a_knob_reads_back_at_its_absent_value(monkeypatch, where, knob, record):
    # A record lacks the knob when its run ran at absent_value (before the knob, or set to it since): reading the
    # record back (evaluate, resume with --run-dir alone, a sweep's job.yaml) must rebuild that value, not the
    # default or a variant's preset, or the run is evaluated or resumed under another config.
    from baselines.registry import get_method
    from benchmarks.run_folder import run_config_from_dict
    from datasets.registry import get_dataset

    owner = get_dataset("synthetic") if where == "data" else get_method("greedy")
    monkeypatch.setattr(owner, "HPARAMS", (*owner.HPARAMS, knob))
    if where == "greedy":
        monkeypatch.setattr(owner, "VARIANTS", {"bb": {**owner.VARIANTS["bb"], knob.name: True}})
    cfg = build_config("greedy", "synthetic", {where: {**record, knob.name: knob.absent_value}})
    section = cfg.as_dict()["data"] if where == "data" else cfg.as_dict()["hparams"]["greedy"]
    assert knob.name not in section
    rebuilt = run_config_from_dict(cfg.as_dict())
    hp = rebuilt.data if where == "data" else rebuilt.method_hp
    assert hp[knob.name] == knob.absent_value and rebuilt.digest() == cfg.digest()
    check_resume_config(Path("run"), cfg.as_dict(), rebuilt.as_dict())


def test_a_method_or_dataset_mismatch_is_named_alone_before_the_keys_it_changes():
    recorded = {"method": "a", "dataset": "d", "hparams": {"a": {f"k{i}": i for i in range(10)}}}
    requested = {"method": "b", "dataset": "d", "hparams": {"b": {}}}
    with pytest.raises(ConfigMismatchError, match=r"different config; method: 'a' in the run, 'b' now \(and 10 more\)"):
        check_resume_config("R", recorded, requested)


def test_values_are_compared_as_config_yaml_reads_them_back():
    # config.yaml holds lists; a config built in memory may hold a tuple of the same values: no difference.
    recorded = {"method": "a", "dataset": "d", "train": {"pair": [1, 2]}}
    check_resume_config("R", recorded, {"method": "a", "dataset": "d", "train": {"pair": (1, 2)}})


def test_the_mismatch_lists_at_most_shown_keys_and_counts_the_rest():
    recorded = {"method": "a", "dataset": "d", "train": {f"k{i}": i for i in range(5)}}
    one = json.loads(json.dumps(recorded))
    one["train"]["k0"] = 9
    with pytest.raises(ConfigMismatchError) as err:
        check_resume_config("R", recorded, one)
    assert "train.k0: 0 in the run, 9 now. Refusing" in str(err.value) and "more" not in str(err.value)
    every = {**recorded, "train": {f"k{i}": i + 1 for i in range(5)}}
    with pytest.raises(ConfigMismatchError) as err:
        check_resume_config("R", recorded, every, shown=2)
    assert "train.k1: 1 in the run, 2 now (and 3 more)" in str(err.value) and "train.k2" not in str(err.value)


def test_a_method_and_dataset_mismatch_names_the_method_first():
    with pytest.raises(ConfigMismatchError, match=r"different config; method: 'a' in the run, 'b' now; dataset: 'd'"):
        check_resume_config("R", {"method": "a", "dataset": "d"}, {"method": "b", "dataset": "e"})


def test_a_run_extended_twice_trains_under_its_last_extension(tmp_path):
    write_yaml(tmp_path / "config.yaml", build_config("joint", "synthetic", tiny_overrides()).as_dict())
    assert recorded_config(tmp_path)["train"]["epochs"] == 2
    write_json(tmp_path / EXTENSIONS, [{"key": "train.epochs", "from_epochs": 2, "to_epochs": 3, "first_epoch": 2},
                                       {"key": "train.epochs", "from_epochs": 3, "to_epochs": 5, "first_epoch": 3}])
    assert recorded_config(tmp_path)["train"]["epochs"] == 5
    assert recorded_config(tmp_path / "elsewhere") is None


@pytest.mark.parametrize("text", ['{"to_epochs": 5}', '[{"key": "train.epochs"}]',
                                  '[{"from_epochs": 2, "to_epochs": "5"}]', '[5]'])
def test_an_extensions_file_that_parses_but_lists_no_extensions_is_damaged_naming_it(tmp_path, text):
    # It ended in a bare TypeError or KeyError naming no file, in a resume, an evaluation or a table.
    write_yaml(tmp_path / "config.yaml", build_config("joint", "synthetic", tiny_overrides()).as_dict())
    (tmp_path / EXTENSIONS).write_text(text)
    with pytest.raises(DamagedFileError, match=rf"^{tmp_path / EXTENSIONS} is damaged: expected a list of extensions"):
        recorded_config(tmp_path)


def test_a_run_extended_twice_records_both_extensions_and_a_finished_resume_rewrites_nothing(tmp_path):
    run = tmp_path / "run"

    def cfg(epochs):
        return build_config("joint", "synthetic", merge_overrides(tiny_overrides(), {"train": {"epochs": epochs}}))

    train_run(cfg(1), run, log=lambda *_: None)
    train_run(cfg(2), run, resume=True, extend_epochs=True, log=lambda *_: None)
    summary = train_run(cfg(3), run, resume=True, extend_epochs=True, log=lambda *_: None)
    assert [(e["from_epochs"], e["to_epochs"], e["first_epoch"]) for e in summary["extensions"]] == \
        [(1, 2, 1), (2, 3, 2)]
    on_disk = (run / "summary.json").read_bytes()
    assert json.loads(on_disk)["extensions"] == summary["extensions"]
    lines = []
    assert train_run(cfg(3), run, resume=True, log=lines.append) == json.loads(on_disk)
    assert lines == [] and (run / "summary.json").read_bytes() == on_disk, "a finished run is handed back as is"


def test_an_unfinished_run_extended_on_resume_records_the_extension_from_its_next_epoch(tmp_path):
    # Killed after epoch 0 of 3 and resumed with 4: its config.yaml still says 3, so the run's own config (what a
    # later resume, evaluation or table reads) holds the 4 only through extensions.json.
    run = tmp_path / "run"
    interrupted_run(run, epochs=3)
    longer = build_config("joint", "synthetic", merge_overrides(tiny_overrides(), {"train": {"epochs": 4}}))
    summary = train_run(longer, run, resume=True, extend_epochs=True, log=lambda *_: None)
    assert [(e["from_epochs"], e["to_epochs"], e["first_epoch"]) for e in summary["extensions"]] == [(3, 4, 1)]
    assert summary["protocols"]["last"]["epoch"] == 3 and recorded_config(run)["train"]["epochs"] == 4
