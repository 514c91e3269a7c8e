"""The README's commands through the CLI entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from benchmarks.cli import main
from benchmarks.config import build_config
from benchmarks.records import write_yaml


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


@pytest.fixture
def fake_train_run(monkeypatch):
    """``benchmarks.runner.train_run`` replaced by one that records what ``augbench train`` passed it."""
    from benchmarks import runner

    calls = []

    def fake(cfg, run_dir, **options):
        calls.append((cfg, run_dir, options))
        return {"protocols": {"clean": {"epoch": 2, "test": {"acc": 0.75}}, "paper": {"epoch": 1}}}

    monkeypatch.setattr(runner, "train_run", fake)
    return calls


def test_train_passes_its_options_to_the_runner(tmp_path, fake_train_run, capsys):
    assert main(["train", "--method", "joint", "--dataset", "synthetic", "--epochs", "3", "--seed", "5",
                 "--out", str(tmp_path), "--set", "train.lr=0.25"]) == 0
    cfg, run_dir, options = fake_train_run[-1]
    assert (cfg.method, cfg.dataset, cfg.train.epochs, cfg.train.seed, cfg.train.lr) == ("joint", "synthetic", 3, 5,
                                                                                          0.25)
    assert run_dir == tmp_path / cfg.run_name()
    assert options == {"resume": False, "extend_epochs": False, "wandb_mode": None, "wandb_group": None,
                       "progress": True}
    out = capsys.readouterr().out
    assert f"run directory: {run_dir}" in out
    assert json.loads(out[out.index("{"):]) == {"clean": {"epoch": 2, "test_acc": 0.75},
                                                "paper": {"epoch": 1, "test_acc": None}}

    assert main(["train", "--method", "joint", "--dataset", "synthetic", "--run-dir", str(tmp_path / "r"),
                 "--resume", "--wandb", "offline", "--wandb-group", "g", "--no-progress"]) == 0
    assert fake_train_run[-1][1:] == (tmp_path / "r", {"resume": True, "extend_epochs": False, "wandb_mode": "offline",
                                                       "wandb_group": "g", "progress": False})


def test_the_command_line_wins_over_the_config_file(tmp_path, fake_train_run):
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump({"method": "joint", "dataset": "synthetic",
                                      "train": {"lr": 0.5, "epochs": 7, "seed": 1}, "model": {"width": 4}}))
    assert main(["train", "--config", str(config), "--out", str(tmp_path)]) == 0
    cfg = fake_train_run[-1][0]
    assert (cfg.method, cfg.train.lr, cfg.train.epochs, cfg.train.seed, cfg.model.width) == ("joint", 0.5, 7, 1, 4)
    assert main(["train", "--config", str(config), "--out", str(tmp_path), "--method", "ogm_ge",
                 "--set", "train.lr=0.125", "--epochs", "2", "--seed", "3"]) == 0
    cfg = fake_train_run[-1][0]
    assert (cfg.method, cfg.train.lr, cfg.train.epochs, cfg.train.seed, cfg.model.width) == ("ogm_ge", 0.125, 2, 3, 4)


def test_an_error_in_the_config_files_settings_names_the_file(tmp_path, fake_train_run, capsys):
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump({"method": "joint", "dataset": "synthetic", "train": {"epoch": 3}}))
    assert main(["train", "--config", str(config), "--out", str(tmp_path)]) != 0
    assert f"{config}: unknown hyperparameter(s) ['train.epoch']" in capsys.readouterr().err
    config.write_text(yaml.safe_dump({"method": "joint", "dataset": "synthetic"}))
    assert main(["train", "--config", str(config), "--out", str(tmp_path), "--set", "train.epoch=3"]) != 0
    err = capsys.readouterr().err
    assert "unknown hyperparameter(s) ['train.epoch']" in err and str(config) not in err
    assert fake_train_run == []


def test_resume_with_the_run_dir_alone_reads_its_config_under_the_command_lines_settings(tmp_path, fake_train_run):
    run = tmp_path / "run"
    run.mkdir()
    recorded = build_config("joint", "synthetic", {"train": {"epochs": 4, "lr": 0.5}, "model": {"width": 4}})
    write_yaml(run / "config.yaml", recorded.as_dict())
    assert main(["train", "--run-dir", str(run), "--resume"]) == 0
    cfg, run_dir, options = fake_train_run[-1]
    assert cfg.as_dict() == recorded.as_dict() and run_dir == run and options["resume"]
    # A differing setting must reach the runner, which refuses it: the recorded one may not silently win.
    assert main(["train", "--run-dir", str(run), "--resume", "--set", "train.lr=0.125"]) == 0
    assert fake_train_run[-1][0].train.lr == 0.125
    assert main(["train", "--run-dir", str(run), "--extend-epochs", "9"]) == 0
    cfg, _, options = fake_train_run[-1]
    assert cfg.train.epochs == 9 and cfg.train.lr == 0.5 and options["resume"] and options["extend_epochs"]


def test_extend_epochs_of_a_folder_without_a_run_is_refused_before_training(tmp_path, fake_train_run, capsys):
    assert main(["train", "--run-dir", str(tmp_path / "none"), "--extend-epochs", "9"]) == 2
    assert "holds no run to resume" in capsys.readouterr().err
    assert main(["train", "--method", "joint", "--dataset", "synthetic", "--run-dir", str(tmp_path / "none"),
                 "--extend-epochs", "9"]) == 2
    assert f"--extend-epochs: {tmp_path / 'none'} holds no run to extend" in capsys.readouterr().err
    assert main(["train", "--method", "joint", "--run-dir", str(tmp_path / "none")]) == 2
    assert "give --method and --dataset" in capsys.readouterr().err
    assert not fake_train_run and not (tmp_path / "none").exists()


@pytest.mark.parametrize("block", ["methods", "datasets"])
def test_list_markdown_prints_the_block_asked_for(capsys, block):
    from benchmarks.commands.list import README_BLOCKS

    assert main(["list", "--markdown", block]) == 0
    assert capsys.readouterr().out == README_BLOCKS[block]()


def test_a_listing_summary_is_the_docstrings_whole_first_sentence():
    from benchmarks.commands.list import _summary

    assert _summary("Joint training of both\nencoders. Then more.\n\nOther paragraph.") == \
        "Joint training of both encoders."
    assert _summary("No full stop here\n\nNext. Paragraph.") == "No full stop here"
    assert _summary(None) == ""


def test_list_names_every_registered_method_and_dataset(capsys):
    from baselines.registry import list_methods
    from datasets.registry import list_datasets

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    methods, datasets = out.split("datasets:\n")
    assert {line.split()[0] for line in methods.splitlines()[1:]} == set(list_methods())
    assert {line.split()[0] for line in datasets.splitlines()} == set(list_datasets())


def test_list_verbose_shows_every_knob_with_its_default_under_its_owner(capsys):
    from baselines.networks import MODEL_HPARAMS
    from baselines.registry import list_methods
    from benchmarks.config import TRAIN_HPARAMS, method_hparams
    from datasets.registry import list_datasets

    assert main(["list", "-v"]) == 0
    owners: dict[str, list[str]] = {}
    owner = None
    for line in capsys.readouterr().out.splitlines():
        if not line.startswith(" "):
            owner = line.rstrip(":")
        elif not line.startswith("      "):
            owner = line.split()[0]
        else:
            owners.setdefault(owner, []).append(line.strip().split("  # ")[0])

    def knobs(namespace, params):
        return [f"{namespace}.{p.name} = {p.default!r}" + (f" per-dataset {dict(p.per_dataset)}" if p.per_dataset
                                                            else "") for p in params]

    expected = {name: knobs(name, method_hparams(cls)) for name, cls in list_methods().items()}
    expected |= {name: knobs("data", cls.HPARAMS) for name, cls in list_datasets().items()}
    expected["runner"] = knobs("train", TRAIN_HPARAMS) + knobs("model", MODEL_HPARAMS)
    assert owners == {name: lines for name, lines in expected.items() if lines}
    # ARL's temperature: 4 by default, 8 on CREMA-D (the paper's §4).
    assert "arl.temperature = 4.0 per-dataset {'cremad': 8.0}" in owners["arl"]


def test_a_reader_that_stops_reading_gets_no_traceback():
    # `augbench list -v | head` ended in a BrokenPipeError traceback. The command here prints 1 MB, more than a pipe
    # holds, so its writes meet the closed pipe.
    code = ("import sys; from benchmarks import cli; from benchmarks.commands import list as command; "
            "command.run = lambda args: [print('x' * 999) for _ in range(1000)] and 0; sys.exit(cli.main(['list']))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(100) == b"x" * 100
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1 and "Traceback" not in err, err
