"""Expected situations end with one clear line and a non-zero exit, never a traceback; Ctrl-C says how to resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks import records
from benchmarks.cli import INTERRUPTED, main
from benchmarks.config import build_config
from benchmarks.records import atomic_torch_save, write_json
from benchmarks.run_folder import load_run_config
from core.hparams import HParamError, parse_assignments
from tests.conftest import interrupted_run

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.width=4", "--set", "model.blocks=[1,1,1,1]", "--set", "data.n_train=64",
        "--set", "data.n_val=16", "--set", "data.n_test=16", "--set", "train.batch_size=16",
        "--wandb", "disabled", "--no-progress"]


def _train(run_dir, *extra: str, n_train: int = 64) -> list[str]:
    tiny = [a.replace("data.n_train=64", f"data.n_train={n_train}") for a in TINY]
    return ["train", "--method", "joint", "--dataset", "synthetic", "--run-dir", str(run_dir), *tiny, *extra]


def _one_line_error(capsys, *expected: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err
    return err


def test_rerunning_a_finished_run_is_one_line(tmp_path, capsys):
    assert main(_train(tmp_path / "run", "--epochs", "1")) == 0
    capsys.readouterr()
    assert main(_train(tmp_path / "run", "--epochs", "1")) == 2
    _one_line_error(capsys, "holds a finished run", "--resume")


@pytest.mark.parametrize("epochs", ["0", "-1"])
def test_epochs_below_one_are_refused_when_the_config_is_resolved(tmp_path, capsys, epochs):
    with pytest.raises(HParamError, match=f"train.epochs must be >= 1, got {epochs}"):
        build_config("joint", "synthetic", {"train": {"epochs": int(epochs)}})
    assert main(_train(tmp_path / "run", "--epochs", epochs)) == 2
    _one_line_error(capsys, "train.epochs must be >= 1")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key,value", [("batch_size", 0), ("lr", 0.0), ("checkpoint_every", 0),
                                       ("max_steps_per_epoch", -1), ("lr_milestones", [-3])])
def test_other_train_knobs_are_bounded(key, value):
    with pytest.raises(HParamError, match=rf"train.{key}(\[0\])? must be"):
        build_config("joint", "synthetic", {"train": {key: value}})


@pytest.mark.parametrize("assignment,message", [
    ("train.lr_gamma=.inf", "train.lr_gamma must be a finite number > 0, got inf"),
    ("train.lr=1e999", "train.lr must be a finite number > 0, got inf"),
    ("train.weight_decay=-.inf", "train.weight_decay must be a finite number >= 0, got -inf"),
    ("data.strong_reliability=5", "data.strong_reliability must be >= 0 and <= 1, got 5.0"),
    ("data.noise=-1", "data.noise must be >= 0, got -1.0"),
    ("data.noise=.inf", "data.noise must be a finite number >= 0, got inf"),
    ("data.num_classes=0", "data.num_classes must be >= 2, got 0"),
])
def test_bounded_knobs_refuse_infinite_and_out_of_range_values(assignment, message):
    with pytest.raises(HParamError, match=re.escape(message)):
        build_config("joint", "synthetic", parse_assignments([assignment]))


@pytest.mark.parametrize("seed", ["-1", "99999999999"])
def test_a_seed_numpy_cannot_take_is_refused_naming_the_key_and_range(tmp_path, capsys, seed):
    assert main(_train(tmp_path / "run", "--set", f"train.seed={seed}")) == 2
    _one_line_error(capsys, "train.seed must be >= 0 and <= 4294967295", seed)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("shortcut,key", [("--epochs", "epochs"), ("--seed", "seed")])
def test_a_shortcut_and_a_set_of_the_same_key_must_agree(tmp_path, capsys, shortcut, key):
    assert main(_train(tmp_path / "run", shortcut, "1", "--set", f"train.{key}=2")) == 2
    _one_line_error(capsys, f"{shortcut} 1", f"--set train.{key}=2")
    assert not (tmp_path / "run").exists()
    assert main(_train(tmp_path / "run", shortcut, "1", "--set", f"train.{key}=1", "--epochs", "1")) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line_and_writes_nothing(tmp_path, capsys):
    assert main(_train(tmp_path / "run", "--set", "train.device=cuda")) == 2
    _one_line_error(capsys, "train.device=cuda", "no CUDA device")
    assert not (tmp_path / "run").exists()


def test_a_config_with_a_yaml_syntax_error_is_one_line_naming_the_file_and_line(tmp_path, capsys):
    config = tmp_path / "experiment.yaml"
    config.write_text("method: joint\ndataset: synthetic\ntrain: {lr: 0.1\n")
    assert main(["train", "--config", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, str(config), "line 4")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("what", ["folder", "latin-1"])
def test_a_config_that_is_a_folder_or_not_utf8_is_one_line_naming_it(tmp_path, capsys, what):
    config = tmp_path / "experiment.yaml"
    if what == "folder":
        config.mkdir()
    else:
        config.write_bytes(b"method: joint\ndataset: synthetic\ntitle: caf\xe9\n")
    assert main(["train", "--config", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, str(config), "folder" if what == "folder" else "not UTF-8")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damaged", ["config.yaml", "checkpoint.pt"])
def test_resuming_a_run_with_a_damaged_file_is_one_line_naming_it(tmp_path, capsys, damaged):
    run = tmp_path / "run"
    interrupted_run(run)
    path = run / damaged
    path.write_bytes(b"train: [unclosed\n" if damaged == "config.yaml" else path.read_bytes()[:100])
    assert main(["train", "--run-dir", str(run), "--resume", "--wandb", "disabled", "--no-progress"]) == 2
    _one_line_error(capsys, f"{path} is damaged: ", "delete that run folder and train it again")


@pytest.mark.parametrize("text", ["- method: joint\n", "method: joint\ndataset: synthetic\n", "train: 5\n", ""])
@pytest.mark.parametrize("command", ["resume", "evaluate"])
def test_a_run_config_that_parses_but_is_not_a_run_config_is_damaged(tmp_path, capsys, text, command):
    # YAML that parses (a list, a file cut after two keys) used to end in a bare TypeError/KeyError naming no file.
    run = tmp_path / "run"
    interrupted_run(run)
    (run / "DONE").touch()  # evaluate reads finished runs only
    path = run / "config.yaml"
    path.write_text(text)
    argv = ["train", "--run-dir", str(run), "--resume", "--wandb", "disabled", "--no-progress"] \
        if command == "resume" else ["evaluate", str(run)]
    assert main(argv) == 2
    _one_line_error(capsys, f"{path} is damaged: ", "delete that run folder and train it again")


@pytest.mark.parametrize("edit", [{"hparams": [1]}, {"hparams": {"joint": 3}}, {"method": ["joint"]}, {"data": 3}])
@pytest.mark.parametrize("command", ["resume", "evaluate"])
def test_a_run_config_with_an_ill_typed_hparams_or_method_is_damaged(tmp_path, capsys, edit, command):
    # Every other key whole: these ended in a bare AttributeError/TypeError naming no file.
    run = tmp_path / "run"
    cfg = interrupted_run(run)
    (run / "DONE").touch()  # evaluate reads finished runs only
    path = run / "config.yaml"
    path.write_text(yaml.safe_dump({**cfg.as_dict(), **edit}))
    argv = ["train", "--run-dir", str(run), "--resume", "--wandb", "disabled", "--no-progress"] \
        if command == "resume" else ["evaluate", str(run)]
    assert main(argv) == 2
    _one_line_error(capsys, f"{path} is damaged: ", "delete that run folder and train it again")


def test_ctrl_c_inside_torch_save_says_where_and_resumes_to_the_same_summary(tmp_path, capsys, monkeypatch):
    reference = tmp_path / "reference"
    assert main(_train(reference, "--epochs", "3")) == 0
    real_save, calls = torch.save, []

    def interrupted_save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second epoch's checkpoint: half written, then Ctrl-C
            Path(path).write_bytes(b"half a checkpoint")
            raise KeyboardInterrupt
        return real_save(obj, path, *args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(torch, "save", interrupted_save)
    capsys.readouterr()
    assert main(_train(run, "--epochs", "3")) == INTERRUPTED
    err = _one_line_error(capsys, "interrupted during epoch 1 (of epochs 0-2)", "epochs 0-0 are checkpointed",
                          f"Resume at epoch 1 with: augbench train --run-dir {run} --resume")
    assert "KeyboardInterrupt" not in err
    monkeypatch.setattr(torch, "save", real_save)
    # .lock: the run folder's lock file (released with the process), not a temporary file
    assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoint.pt", "config.yaml", "data.json",
                                                     "metrics.jsonl"], \
        "no temporary file left behind"
    assert torch.load(run / "checkpoint.pt", weights_only=False)["epoch"] == 0, "the previous checkpoint is intact"

    assert main(["train", "--run-dir", str(run), "--resume", "--wandb", "disabled", "--no-progress"]) == 0
    got, ref = (json.loads((d / "summary.json").read_text()) for d in (run, reference))
    assert got["protocols"] == ref["protocols"]


def test_sigint_mid_run_exits_130_with_the_resume_command_and_resumes_to_the_same_summary(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    args = ["--epochs", "4"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(_train(reference, *args, n_train=512)) == 0
    # A shell starts background jobs with SIGINT ignored; give the child Python's default Ctrl-C handling.
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks", *_train(run, *args, n_train=512)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert not (run / "DONE").exists(), "the run finished before it could be interrupted; make it longer"
    assert proc.returncode == INTERRUPTED, err
    assert "Traceback" not in err and "augbench train: interrupted during epoch" in err, err
    assert f"with: augbench train --run-dir {run} --resume" in err
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]

    assert main(["train", "--run-dir", str(run), "--resume", "--wandb", "disabled", "--no-progress"]) == 0
    got, ref = (json.loads((d / "summary.json").read_text()) for d in (run, reference))
    assert got["protocols"] == ref["protocols"]


@pytest.mark.parametrize("where", ["fsync", "torch.save", "replace"])
def test_ctrl_c_during_an_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, where):
    path = tmp_path / ("f.pt" if where == "torch.save" else "f.json")
    atomic_torch_save(path, {"v": 1}) if where == "torch.save" else write_json(path, {"v": 1})
    before = path.read_bytes()

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    target = {"fsync": (records.os, "fsync"), "torch.save": (torch, "save"), "replace": (records.os, "replace")}
    monkeypatch.setattr(*target[where], ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save(path, {"v": 2}) if where == "torch.save" else write_json(path, {"v": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_ctrl_c_in_any_command_is_one_line_and_exit_130(monkeypatch, capsys):
    from benchmarks.commands import list as list_command

    def ctrl_c(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(list_command, "run", ctrl_c)
    assert main(["list"]) == INTERRUPTED
    _one_line_error(capsys, "augbench list: interrupted")


def test_a_folder_without_config_yaml_is_no_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(str(tmp_path))} has no config.yaml; it is not a run"):
        load_run_config(tmp_path)


@pytest.mark.parametrize("error", [KeyError("unknown method 'x'; valid methods: a, b"), ValueError("bad value"),
                                   FileNotFoundError("runs/x has no config.yaml")])
def test_an_expected_error_in_any_command_is_its_message_alone_and_exit_2(monkeypatch, capsys, error):
    # str() of a KeyError is its message in quotes (with any quote inside escaped): printed as is, it misquoted.
    from benchmarks.commands import list as list_command

    def fail(args):
        raise error

    monkeypatch.setattr(list_command, "run", fail)
    assert main(["list"]) == 2
    assert capsys.readouterr().err == f"augbench list: error: {error.args[0]}\n"


@pytest.mark.parametrize("what,flag", [("step", "--repeats"), ("epoch", "--epoch-repeats"), ("data", "--batch-size"),
                                       ("data", "--batches"), ("data", "--rounds")])
def test_a_bench_count_below_one_is_refused_naming_the_argument_before_anything_runs(monkeypatch, capsys, what, flag):
    # 0 timed steps, epochs, batches or rounds ended in a ZeroDivisionError or IndexError traceback, or in an
    # "empty data" error naming no argument, after the benchmark had been set up.
    from benchmarks.commands import bench as command

    ran: list[str] = []
    for name in ("run_data", "bench_steps", "bench_epoch"):
        monkeypatch.setattr(command, name, lambda *args, name=name, **kwargs: ran.append(name))
    with pytest.raises(SystemExit) as exit_:
        main(["bench", what, flag, "0", "--device", "cpu"])
    assert exit_.value.code == 2 and not ran
    err = capsys.readouterr().err
    assert f"argument {flag}: must be >= 1, got 0" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, refusal", [
    (["--frame-size", "0", "24"], "must be >= 1, got 0"), (["--frame-size", "24", "-3"], "must be >= 1, got -3"),
    (["--shard-size", "0"], "must be >= 1, got 0"), (["--fps", "0"], "must be >= 1, got 0"),
    (["--min-frames", "0"], "must be >= 1, got 0"), (["--workers", "-1"], "must be >= 0, got -1"),
    (["--workers", "two"], "expected a whole number, got 'two'"),
    (["--val-fraction", "1"], "must be in [0, 1), got 1.0"),
    (["--val-fraction", "-0.1"], "must be in [0, 1), got -0.1"),
    (["--val-fraction", "nan"], "expected a number, got 'nan'"),
    (["--max-drop-fraction", "-1"], "must be in [0, 1], got -1.0"),
    (["--max-drop-fraction", "1.5"], "must be in [0, 1], got 1.5")])
def test_a_prepare_count_or_fraction_out_of_range_is_refused_naming_the_argument_before_anything_runs(
        monkeypatch, capsys, argv, refusal):
    # A frame size of 0 was blamed on the first image ("cannot decode image") after the split files were read; a
    # shard size of 0 silently became the dataset's default; --workers -1 ran in this process, --max-drop-fraction -1
    # stopped at the first drop and --val-fraction 1.5 failed only once the split files had been read.
    from benchmarks.commands import prepare as command

    ran: list = []
    monkeypatch.setattr(command, "prepare", lambda *args: ran.append(args))
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "cremad", "--raw", "raw", *argv])
    assert exit_.value.code == 2 and not ran
    err = capsys.readouterr().err
    assert f"argument {argv[0]}: {refusal}" in err and "Traceback" not in err


@pytest.mark.parametrize("flag, value, field, parsed", [
    ("--workers", "0", "workers", 0), ("--val-fraction", "0", "val_fraction", 0.0),
    ("--max-drop-fraction", "0", "max_drop_fraction", 0.0), ("--max-drop-fraction", "1", "max_drop_fraction", 1.0),
    ("--fps", "1", "frames_per_second", 1), ("--min-frames", "1", "min_frames", 1)])
def test_the_bounds_of_prepare_counts_and_fractions_reach_the_preparation(monkeypatch, capsys, flag, value, field,
                                                                           parsed):
    from benchmarks.commands import prepare as command

    ran: list = []
    monkeypatch.setattr(command, "prepare", lambda *args: ran.append(args) or "cache")
    assert main(["prepare", "cremad", "--raw", "raw", flag, value]) == 0
    assert getattr(ran[0][3], field) == parsed
