"""The README's commands through the CLI entry point."""

from __future__ import annotations

import json

from benchmarks.cli import main


def test_list_names_methods_and_datasets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "joint" in out and "Concat" in out and "synthetic" in out


def test_train_writes_a_run_directory(tmp_path, capsys):
    args = ["train", "--method", "joint", "--dataset", "synthetic", "--epochs", "1", "--seed", "0",
            "--out", str(tmp_path), "--wandb", "disabled", "--no-progress",
            "--set", "model.width=4", "--set", "model.blocks=[1,1,1,1]", "--set", "data.n_train=32"]
    assert main(args) == 0
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.startswith("synthetic-joint-seed0-")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["protocols"]["clean"]["test"]["per_modality"]


def test_bad_override_is_an_error_not_a_traceback(tmp_path, capsys):
    args = ["train", "--method", "joint", "--dataset", "synthetic", "--out", str(tmp_path),
            "--set", "joint.alpha=1", "--wandb", "disabled"]
    assert main(args) == 2
    assert "unknown hyperparameter(s) ['joint.alpha']" in capsys.readouterr().err
    assert main(["train", "--method", "nope", "--dataset", "synthetic", "--out", str(tmp_path)]) == 2
    assert "valid methods" in capsys.readouterr().err
