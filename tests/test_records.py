"""Run records: atomic writes, W&B mode resolution, and a real offline W&B run (no network)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from benchmarks import records
from benchmarks.config import build_config
from benchmarks.records import (
    DamagedFileError,
    atomic_write_text,
    flatten,
    read_checkpoint,
    read_config_yaml,
    read_json,
    read_jsonl,
    read_yaml,
    resolve_wandb_mode,
    runs_phrase,
    write_json,
    write_jsonl,
    write_yaml,
    yaml_problem,
)
from benchmarks.runner import train_run
from tests.conftest import interrupted_run, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_text(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    assert (tmp_path / "a.txt").stat().st_mode & 0o044, "readable by others like any file open() creates"


def test_wandb_mode_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_wandb_mode(None) == "offline", "no credentials: log offline, sync later"
    monkeypatch.setenv("WANDB_API_KEY", "x")
    assert resolve_wandb_mode(None) == "online"
    assert resolve_wandb_mode("disabled") == "disabled"
    with pytest.raises(ValueError, match=r"W&B mode 'sometimes' is not one of"):
        resolve_wandb_mode("sometimes")


def test_offline_wandb_run_is_written_and_resumed_with_the_same_id(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = build_config("joint", "synthetic", tiny_overrides())
    train_run(cfg, tmp_path / "run", wandb_mode="offline")
    run_id = (tmp_path / "run" / "wandb_id.txt").read_text()
    offline = list((tmp_path / "run" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert offline and list(offline[0].glob("*.wandb")), "an offline W&B run that `wandb sync` can upload"


def test_offline_wandb_run_prints_one_line_not_wandbs_console_output(tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    cfg = build_config("joint", "synthetic", tiny_overrides())
    lines: list[str] = []
    train_run(cfg, tmp_path / "run", wandb_mode="offline", log=lines.append)
    captured = capfd.readouterr()
    printed = (captured.out + captured.err).splitlines()
    assert not [line for line in printed if line.startswith("wandb")], printed
    (hint,) = [line for line in lines if "W&B" in line]
    assert "wandb sync" in hint and str(tmp_path / "run" / "wandb") in hint
    assert len(lines) == 3, "two epoch lines and the W&B line"


def recording_sink(steps: list, codes: list) -> type:
    """The runner's WandbSink over a stand-in W&B run that records the steps logged and the exit code it is closed
    with."""
    from types import SimpleNamespace

    from benchmarks.records import WandbSink

    class Run:
        summary: dict = {}
        settings = SimpleNamespace(sync_dir="wandb/offline-run")

        def log(self, data, step, commit):
            steps.append(step)

        def finish(self, exit_code=None):
            codes.append(exit_code)

    class Recorder(WandbSink):
        def __init__(self, mode, run_dir, config, name, group=None, tags=None, log=print):
            super().__init__("disabled", run_dir, config, name, log=log)
            self.mode, self.run = "offline", Run()

    return Recorder


def test_a_resumed_run_sends_its_checkpointed_epochs_to_wandb_again(tmp_path, monkeypatch):
    # A kill can lose epochs W&B had not flushed, though the checkpoint holds them: the resumed run logs them again
    # (W&B drops steps it already has), so W&B's history ends with every epoch of metrics.jsonl.
    import benchmarks.runner as runner

    steps: list[int] = []
    Recorder = recording_sink(steps, [])

    cfg = interrupted_run(tmp_path / "run", epochs=3)
    monkeypatch.setattr(runner, "WandbSink", Recorder)
    train_run(cfg, tmp_path / "run", resume=True, log=lambda line: None)
    logged = [r["epoch"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())]
    assert steps == logged == [0, 1, 2]


def test_the_wandb_summary_keeps_lists_as_json_and_history_keeps_scalars():
    summary = {"protocols": {"last": {"epoch": 3}}, "extensions": [{"from_epochs": 2, "to_epochs": 4}]}
    assert flatten(summary, lists=True) == {"protocols/last/epoch": 3,
                                            "extensions": '[{"from_epochs": 2, "to_epochs": 4}]'}
    assert flatten(summary) == {"protocols/last/epoch": 3}


def test_lists_inside_a_nested_summary_section_are_kept_as_json_too():
    summary = {"run": {"segments": [{"first_epoch": 0}], "seed": 1}}
    assert flatten(summary, lists=True) == {"run/segments": '[{"first_epoch": 0}]', "run/seed": 1}
    assert flatten(summary) == {"run/seed": 1}


def test_blank_lines_of_a_metrics_file_are_no_records(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0}\n\n{"epoch": 1}\n  \n')
    assert read_jsonl(path) == [{"epoch": 0}, {"epoch": 1}]


def test_an_unreachable_wandb_server_falls_back_to_offline_logging(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from benchmarks.records import WandbSink

    modes, real_init, real_teardown = [], wandb.init, wandb.teardown

    def init(**kwargs):
        modes.append(kwargs["mode"])
        if kwargs["mode"] == "online":
            raise wandb.errors.CommError("Network error (ConnectionError), entering retry loop.")
        return real_init(**kwargs)

    def teardown(*args, **kwargs):
        # The failed online start still held the run id in wandb's service: the offline start was refused with
        # "run ID is in use" (a mocked init never showed it).
        modes.append("teardown")
        return real_teardown(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(wandb, "teardown", teardown)
    lines = []
    sink = WandbSink("online", tmp_path, {"train": {"lr": 0.1}}, "run-x", log=lines.append)
    sink.log_epoch({"epoch": 0, "test": {"acc": 0.5}})
    sink.finish()
    assert modes == ["online", "teardown", "offline"] and sink.mode == "offline"
    assert "logging offline instead" in lines[0] and "wandb sync" in lines[-1]


class BrokenRun:
    """A W&B run whose service has died."""

    def log(self, *args, **kwargs):
        raise ConnectionResetError("Connection lost")

    def finish(self, *args, **kwargs):
        raise ConnectionResetError("Connection lost")


def test_a_wandb_failure_mid_run_stops_wandb_logging_not_the_training(tmp_path, monkeypatch):
    # W&B's service dying at epoch 123 of a 300-epoch run raised out of the epoch loop: the run died unrecorded.
    import benchmarks.runner as runner
    from benchmarks.records import WandbSink

    class Broken(WandbSink):
        def __init__(self, mode, run_dir, config, name, group=None, tags=None, log=print):
            super().__init__("disabled", run_dir, config, name, log=log)
            self.mode, self.run = "offline", BrokenRun()

    monkeypatch.setattr(runner, "WandbSink", Broken)
    lines: list[str] = []
    summary = train_run(build_config("joint", "synthetic", tiny_overrides()), tmp_path / "run", log=lines.append)
    assert (tmp_path / "run" / "DONE").exists() and summary["epochs"] == 2
    (stopped,) = [line for line in lines if "W&B" in line]
    assert stopped.startswith("W&B logging stopped (epoch 0: ConnectionResetError: Connection lost)")


def test_a_run_that_stops_with_an_error_is_closed_in_wandb_as_failed(tmp_path, monkeypatch):
    # W&B closed an interrupted or diverged run at process exit with exit code 0: it showed as finished.
    import benchmarks.runner as runner
    from baselines.registry import get_method
    from benchmarks.runner import TrainingDiverged

    codes: list[int | None] = []
    Recorder = recording_sink([], codes)

    joint = get_method("joint")
    real = joint.update
    monkeypatch.setattr(joint, "update", lambda self, batch, step: {**real(self, batch, step), "loss": float("nan")})
    monkeypatch.setattr(runner, "WandbSink", Recorder)
    with pytest.raises(TrainingDiverged):
        train_run(build_config("joint", "synthetic", tiny_overrides()), tmp_path / "run", log=lambda line: None)
    assert codes == [1]


@pytest.mark.parametrize("error, text, shown", [
    # No API key under WANDB_MODE=online ended in wandb's traceback.
    ("UsageError", "No API key configured. Use `wandb login` to log in.",
     "UsageError: No API key configured. Use `wandb login` to log in."),
    # AuthenticationError is a CommError: a bad key fell back to offline logging as if the server were unreachable.
    ("AuthenticationError", "WANDB_API_KEY invalid:\nAPI key must have 40+ characters, has 3.",
     "AuthenticationError: WANDB_API_KEY invalid: API key must have 40+ characters, has 3."),
])
def test_wandb_that_cannot_start_is_one_line_naming_the_way_out(tmp_path, monkeypatch, error, text, shown):
    wandb = pytest.importorskip("wandb")
    from benchmarks.errors import UsageError
    from benchmarks.records import WandbSink

    def init(**kwargs):
        raise getattr(wandb.errors, error)(text)

    monkeypatch.setattr(wandb, "init", init)
    with pytest.raises(UsageError) as err:
        WandbSink("online", tmp_path, {}, "run-x", log=lambda line: None)
    assert str(err.value) == (f"W&B could not start its online run ({shown}); fix that, or train with --wandb offline "
                              "(upload later with wandb sync) or --wandb disabled; --resume continues the run folder "
                              "it left")


def test_a_bad_wandb_mode_is_refused_before_the_run_has_a_folder(tmp_path):
    # It was refused after config.yaml was written, and the rerun then met "holds an unfinished run".
    with pytest.raises(ValueError, match="W&B mode 'dryrun' is not one of"):
        train_run(build_config("joint", "synthetic", tiny_overrides()), tmp_path / "run", wandb_mode="dryrun")
    assert not (tmp_path / "run").exists()


def test_an_error_in_the_suites_own_data_is_not_taken_for_a_wandb_failure(tmp_path):
    # The summary was flattened inside the W&B guard, so a TypeError of the suite's own passed for W&B stopping.
    import numpy as np

    from benchmarks.records import WandbSink

    class Run:
        summary: dict = {}

    sink = WandbSink("disabled", tmp_path, {}, "run-x", log=lambda line: None)
    sink.run = Run()
    with pytest.raises(TypeError, match="not JSON serializable"):
        sink.log_summary({"segments": [{"threads": np.int64(4)}]})


def test_a_table_whose_wandb_run_cannot_start_says_how_to_tabulate(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from benchmarks.collect import Table
    from benchmarks.commands.table import log_wandb_table
    from benchmarks.errors import UsageError

    def init(**kwargs):
        raise wandb.errors.UsageError("No API key configured.")

    monkeypatch.setattr(wandb, "init", init)
    with pytest.raises(UsageError, match="or tabulate with --wandb offline or --wandb disabled"):
        log_wandb_table(Table("caption", [], [], False), "online", tmp_path)


def test_a_sweep_run_is_tagged_with_its_row_and_keeps_its_sweep_group_when_resumed_by_hand(tmp_path, monkeypatch):
    # Rows of one method (the two unimodal references) were told apart only by a config key in W&B, and a resume by
    # hand (no --wandb-group) dropped the sweep's group.
    import benchmarks.runner as runner
    from benchmarks.records import WandbSink

    seen = []

    class Seen(WandbSink):
        def __init__(self, mode, run_dir, config, name, group=None, tags=None, log=print):
            seen.append((group, tags))
            super().__init__("disabled", run_dir, config, name, log=log)

    monkeypatch.setattr(runner, "WandbSink", Seen)
    for run, group in (("a", None), ("b", "given")):
        (tmp_path / run).mkdir()
        (tmp_path / run / "job.json").write_text(json.dumps({"label": "unimodal_audio", "sweep": "demo/av_digits"}))
        train_run(build_config("joint", "synthetic", tiny_overrides()), tmp_path / run, wandb_group=group,
                  log=lambda line: None)
    assert seen == [("demo/av_digits", ["unimodal_audio"]), ("given", ["unimodal_audio"])]


def test_the_wandb_project_is_wandb_project_when_set(tmp_path, monkeypatch):
    # The project was hard-coded to augbench, silently overriding a user's WANDB_PROJECT.
    wandb = pytest.importorskip("wandb")
    from benchmarks.records import WandbSink

    seen = {}
    monkeypatch.setattr(wandb, "init", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    WandbSink("offline", tmp_path, {}, "run-x", log=lambda line: None)
    assert seen["project"] == "mine"
    monkeypatch.delenv("WANDB_PROJECT")
    WandbSink("offline", tmp_path, {}, "run-x", log=lambda line: None)
    assert seen["project"] == "augbench"


def test_a_failing_offline_retry_names_the_way_out_of_offline(tmp_path, monkeypatch):
    # The retry's error advised --wandb offline, the mode that had just failed.
    wandb = pytest.importorskip("wandb")
    from benchmarks.errors import UsageError
    from benchmarks.records import WandbSink

    def init(**kwargs):
        raise (wandb.errors.CommError("no route") if kwargs["mode"] == "online" else wandb.errors.Error("disk full"))

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(wandb, "teardown", lambda *args, **kwargs: None)
    with pytest.raises(UsageError, match=r"its offline run \(Error: disk full\); fix that, or train with --wandb "
                                         r"disabled;"):
        WandbSink("online", tmp_path, {}, "run-x", log=lambda line: None)


def test_the_wandb_flag_wins_over_wandb_mode_and_a_bad_wandb_mode_is_named_as_such(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")
    assert resolve_wandb_mode("disabled") == "disabled", "--wandb wins over WANDB_MODE"
    assert resolve_wandb_mode(None) == "online", "WANDB_MODE wins over the credentials check"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    with pytest.raises(ValueError, match=r"^WANDB_MODE 'dryrun' is not one of"):
        resolve_wandb_mode(None)
    assert resolve_wandb_mode("offline") == "offline", "a bad WANDB_MODE is not looked at under --wandb"


def test_wandb_credentials_in_netrc_mean_online_and_other_hosts_do_not(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / ".netrc").write_text("machine github.com\n  login me\n  password secret\n")
    assert resolve_wandb_mode(None) == "offline", "another host's credentials are not W&B's"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password key\n")
    assert resolve_wandb_mode(None) == "online"


def test_a_sink_starts_wandb_with_the_runs_settings_and_keeps_its_id_for_resume(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from benchmarks.records import WandbSink

    seen: list[dict] = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: seen.append(kwargs))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    WandbSink("offline", tmp_path, {"train": {"lr": 0.1}}, "run-x", group="g", tags=["t"], log=lambda line: None)
    run_id = (tmp_path / "wandb_id.txt").read_text()
    assert len(run_id) == 12 and int(run_id, 16) >= 0
    WandbSink("offline", tmp_path, {}, "run-x", log=lambda line: None)  # --resume: the same W&B run
    first, again = seen
    assert first["id"] == again["id"] == run_id and (tmp_path / "wandb_id.txt").read_text() == run_id
    assert (first["mode"], first["resume"], first["reinit"]) == ("offline", "allow", "finish_previous")
    assert (first["project"], first["dir"], first["name"], first["group"], first["tags"], first["config"]) == (
        "augbench", str(tmp_path), "run-x", "g", ["t"], {"train": {"lr": 0.1}})
    assert first["settings"].silent and first["settings"].console == "off"


def test_a_grid_rows_long_label_becomes_a_tag_wandb_takes_and_rows_stay_apart(tmp_path, monkeypatch):
    # A grid row's label lists its point: 81 characters failed every run of the row under the default offline mode.
    wandb = pytest.importorskip("wandb")
    from benchmarks.records import WandbSink, wandb_tag

    seen: list[dict] = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: seen.append(kwargs))
    labels = [f"ogm_ge [ogm_ge.alpha=0.8,train.lr_milestones=[69, 139],train.weight_decay={wd}]" for wd in (5e-4, 1e-3)]
    for i, label in enumerate(labels):
        WandbSink("offline", tmp_path / str(i), {}, "run", tags=[label], log=lambda line: None)
    tags = [kwargs["tags"][0] for kwargs in seen]
    assert all(len(t) == 64 and t.startswith("ogm_ge [ogm_ge.alpha=0.8,train.lr_milestones=") for t in tags)
    assert tags[0] != tags[1] and tags == [wandb_tag(label) for label in labels]
    wandb.Settings(run_tags=tuple(tags))  # W&B's own check of each tag (a ValidationError over 64 characters)
    assert wandb_tag("joint") == "joint" and wandb_tag("x" * 64) == "x" * 64


def test_a_disabled_sink_starts_nothing_and_writes_nothing(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from benchmarks.records import WandbSink

    monkeypatch.setattr(wandb, "init", lambda **kwargs: pytest.fail("wandb.init under --wandb disabled"))
    lines: list[str] = []
    with WandbSink("disabled", tmp_path, {}, "run-x", log=lines.append) as sink:
        sink.log_epoch({"epoch": 0, "loss": 1.0})
        sink.log_summary({"epochs": 1})
    assert sink.run is None and list(tmp_path.iterdir()) == [] and lines == []


def test_an_offline_start_that_cannot_reach_wandbs_service_is_a_usage_error_not_a_second_fallback(tmp_path,
                                                                                                   monkeypatch):
    wandb = pytest.importorskip("wandb")
    from benchmarks.errors import UsageError
    from benchmarks.records import WandbSink

    modes = []

    def init(**kwargs):
        modes.append(kwargs["mode"])
        raise wandb.errors.CommError("socket closed")

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(wandb, "teardown", lambda *args, **kwargs: modes.append("teardown"))
    with pytest.raises(UsageError, match=r"its offline run \(CommError: socket closed\); fix that, or train with "
                                         r"--wandb disabled;"):
        WandbSink("offline", tmp_path, {}, "run-x", log=lambda line: None)
    assert modes == ["offline"]


class RecordingRun:
    """A stand-in W&B run that keeps what the sink sends it."""

    settings = SimpleNamespace(sync_dir="wandb/offline-run-x")

    def __init__(self):
        self.logged, self.summary, self.finished = [], {}, []

    def log(self, data, step, commit):
        self.logged.append((data, step, commit))

    def finish(self, exit_code=None):
        self.finished.append(exit_code)


def sink_over(run, tmp_path, lines):
    from benchmarks.records import WandbSink

    sink = WandbSink("disabled", tmp_path, {}, "run-x", log=lines.append)
    sink.mode, sink.run = "offline", run
    return sink


def test_the_sink_logs_each_epoch_flattened_at_its_step_and_the_summary_with_lists_as_json(tmp_path):
    run, lines = RecordingRun(), []
    sink = sink_over(run, tmp_path, lines)
    sink.log_epoch({"epoch": 3, "test": {"acc": 0.5, "loss": None}, "lr": 0.1, "tags": ["x"]})
    sink.log_history([{"epoch": 0, "lr": 1.0}, {"epoch": 1, "lr": 2.0}])
    sink.log_summary({"best": {"acc": 0.6, "at": None}, "extensions": [1, 2], "shape": (3, 4)})
    # commit=True: each row goes out at once, not held back until the next step arrives.
    assert run.logged == [({"epoch": 3, "test/acc": 0.5, "test/loss": None, "lr": 0.1}, 3, True),
                          ({"epoch": 0, "lr": 1.0}, 0, True), ({"epoch": 1, "lr": 2.0}, 1, True)]
    assert run.summary == {"best/acc": 0.6, "best/at": None, "extensions": "[1, 2]", "shape": "[3, 4]"}
    sink.finish()
    sink.finish()
    assert run.finished == [None], "closed once"
    assert lines == ["W&B run saved offline; upload it with: wandb sync wandb/offline-run-x"]


def test_a_failing_wandb_call_closes_the_run_as_failed_once_and_gives_no_upload_hint(tmp_path):
    class LogFails(RecordingRun):
        def log(self, data, step, commit):
            raise ConnectionResetError("Connection lost")

    class FinishFails(RecordingRun):
        def finish(self, exit_code=None):
            super().finish(exit_code)
            raise OSError("disk full")

    run, lines = LogFails(), []
    sink = sink_over(run, tmp_path, lines)
    sink.log_epoch({"epoch": 0})
    sink.log_epoch({"epoch": 1})
    sink.finish()
    assert run.finished == [1] and sink.run is None
    assert len(lines) == 1 and lines[0].startswith("W&B logging stopped (epoch 0: ConnectionResetError")
    run, lines = FinishFails(), []
    sink_over(run, tmp_path, lines).finish()
    assert run.finished == [None, 1]
    assert len(lines) == 1 and lines[0].startswith("W&B logging stopped (finish: OSError: disk full)")


def test_a_training_run_sends_each_epoch_and_its_summary_to_wandb(tmp_path, monkeypatch):
    import benchmarks.runner as runner
    from benchmarks.records import WandbSink

    runs: list[RecordingRun] = []

    class Recorder(WandbSink):
        def __init__(self, mode, run_dir, config, name, group=None, tags=None, log=print):
            super().__init__("disabled", run_dir, config, name, log=log)
            self.mode, self.run = "offline", RecordingRun()
            runs.append(self.run)

    monkeypatch.setattr(runner, "WandbSink", Recorder)
    summary = train_run(build_config("joint", "synthetic", tiny_overrides()), tmp_path / "run", log=lambda line: None)
    (run,) = runs
    assert [step for _, step, _ in run.logged] == [0, 1] and run.finished == [None]
    assert run.summary == flatten(summary, lists=True) and run.summary["epochs"] == 2


def test_an_atomic_write_stopped_by_ctrl_c_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write_text(path, "old")

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(records.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new")
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    assert path.read_text() == "old"


def test_the_run_lock_clears_what_an_atomic_write_killed_by_sigkill_left(tmp_path):
    # SIGKILL skips the write's own cleanup; a run killed while checkpointing left a checkpoint-sized temporary.
    import signal
    import subprocess
    import sys

    from benchmarks.run_folder import run_lock

    code = ("import os, signal, sys; from pathlib import Path; from benchmarks.records import _atomic_write; "
            "_atomic_write(Path(sys.argv[1]), lambda tmp: (tmp.write_text('half'), os.kill(os.getpid(), "
            "signal.SIGKILL)))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "checkpoint.pt")], cwd=ROOT)
    assert done.returncode == -signal.SIGKILL
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".checkpoint.pt.") and left.name.endswith(".tmp")
    (tmp_path / "notes.tmp").write_text("a user's file")
    with run_lock(tmp_path):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "notes.tmp"]


def test_json_files_are_written_with_sorted_keys_so_reruns_diff_clean(tmp_path):
    write_json(tmp_path / "a.json", {"b": 1, "a": {"d": 2, "c": 3}})
    assert (tmp_path / "a.json").read_text() == '{\n  "a": {\n    "c": 3,\n    "d": 2\n  },\n  "b": 1\n}\n'


def test_an_optional_json_file_that_is_a_folder_reads_as_absent(tmp_path):
    (tmp_path / "job.json").mkdir()
    assert read_json(tmp_path / "job.json", default={}) == {}


@pytest.mark.parametrize("read", [read_json, read_yaml])
def test_a_run_file_that_is_not_utf8_is_damaged_naming_it(tmp_path, read):
    path = tmp_path / "summary.json"
    path.write_bytes(b'{"seed": "caf\xe9"}\n')
    with pytest.raises(DamagedFileError, match=f"^{re.escape(str(path))} is damaged: not valid (JSON|YAML)"):
        read(path)


def test_a_config_with_a_list_for_a_key_is_yamls_own_error_with_its_line(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("name: x\n? [a, b]\n: 1\n")
    with pytest.raises(yaml.YAMLError, match="found unhashable key") as caught:
        read_config_yaml(path)
    assert yaml_problem(caught.value) == "line 2: found unhashable key"


@pytest.mark.parametrize("data", [b"", b"version https://git-lfs.github.com/spec/v1\nsize 12\n", b"g\xa3\n",
                                  b"\x82\x05", b"\x95" + b"\xff" * 8])
def test_an_empty_checkpoint_or_one_that_is_no_pickle_is_damaged_naming_it(tmp_path, data):
    # Cut to nothing (EOFError), replaced by a git-lfs pointer (UnpicklingError) or by bytes whose first pickle
    # opcodes fail otherwise (UnicodeDecodeError, ValueError, OverflowError); torch names no file.
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(data)
    with pytest.raises(DamagedFileError, match=f"^{re.escape(str(path))} is damaged: torch cannot load it"):
        read_checkpoint(path, "cpu")


def test_an_atomic_write_reaches_the_disk_before_it_replaces_the_old_file(tmp_path, monkeypatch):
    # Without the fsync a power cut after the rename can leave an empty file where the old one was.
    calls, fsync, replace = [], records.os.fsync, records.os.replace
    monkeypatch.setattr(records.os, "fsync", lambda fd: (calls.append("fsync"), fsync(fd))[1])
    monkeypatch.setattr(records.os, "replace", lambda *a: (calls.append("replace"), replace(*a))[1])
    atomic_write_text(tmp_path / "a.txt", "one")
    assert calls == ["fsync", "replace"]


def test_json_records_hold_paths_numpy_scalars_and_tensors_as_plain_values(tmp_path):
    record = {"run_dir": tmp_path, "loss": np.float32(0.5), "epoch": np.int64(3), "rates": torch.tensor([0.0, 0.5])}
    plain = {"run_dir": str(tmp_path), "loss": 0.5, "epoch": 3, "rates": [0.0, 0.5]}
    write_json(tmp_path / "a.json", record)
    write_jsonl(tmp_path / "a.jsonl", [record])
    assert read_json(tmp_path / "a.json") == plain and read_jsonl(tmp_path / "a.jsonl") == [plain]


def test_yaml_run_files_are_written_with_sorted_keys(tmp_path):
    write_yaml(tmp_path / "a.yaml", {"train": {"lr": 0.1, "epochs": 3}, "method": "joint"})
    assert (tmp_path / "a.yaml").read_text() == "method: joint\ntrain:\n  epochs: 3\n  lr: 0.1\n"


def test_runs_are_counted_in_the_plural_but_for_one():
    assert [runs_phrase(n) for n in (0, 1, 2)] == ["0 runs", "1 run", "2 runs"]


def test_a_metrics_file_that_is_not_utf8_is_damaged_naming_the_line(tmp_path):
    # It ended in a bare UnicodeDecodeError naming neither the file nor the line.
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"epoch": 0}\n{"epoch": 1, "note": "caf\xe9"}\n')
    with pytest.raises(DamagedFileError, match=f"^{re.escape(str(path))} is damaged: line 2 is not UTF-8 text"):
        read_jsonl(path)


@pytest.mark.parametrize("line", ["3", "[0, 1]", '"epoch"', "null"])
def test_a_metrics_line_that_is_json_but_no_record_is_damaged_naming_it(tmp_path, line):
    # It was returned as a record, and the reader then failed with a bare TypeError ('int' object is not
    # subscriptable) naming no file.
    path = tmp_path / "metrics.jsonl"
    path.write_text(f'{{"epoch": 0}}\n{line}\n')
    with pytest.raises(DamagedFileError, match=f"^{re.escape(str(path))} is damaged: line 2 is not a JSON object"):
        read_jsonl(path)



def test_an_atomic_write_creates_the_missing_folders_of_its_path(tmp_path):
    atomic_write_text(tmp_path / "runs" / "a" / "summary.json", "{}")
    assert (tmp_path / "runs" / "a" / "summary.json").read_text() == "{}"


def test_atomic_writes_take_their_permissions_from_the_umask_and_leave_it_as_it_was(tmp_path):
    # A umask of 027 (a shared machine's "group may read, others nothing") must give rw-r-----, as open() does.
    before = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "one")
        records.atomic_torch_save(tmp_path / "b.pt", {"v": 1})
        assert os.umask(0o027) == 0o027, "the process umask is left as it was"
        atomic_write_text(tmp_path / "c.txt", "two")
    finally:
        os.umask(before)
    assert [(tmp_path / name).stat().st_mode & 0o777 for name in ("a.txt", "b.pt", "c.txt")] == [0o640] * 3


def test_text_files_are_written_as_utf8(tmp_path):
    atomic_write_text(tmp_path / "README.md", "café: ✓")
    assert (tmp_path / "README.md").read_bytes() == "café: ✓".encode("utf-8")


def test_a_required_json_file_that_is_absent_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "summary.json"))):
        read_json(tmp_path / "summary.json")


def test_a_checkpoint_is_read_onto_the_device_asked_for(tmp_path):
    records.atomic_torch_save(tmp_path / "checkpoint.pt", {"epoch": 3, "w": torch.ones(2)})
    state = read_checkpoint(tmp_path / "checkpoint.pt", map_location="meta")
    assert state["epoch"] == 3 and state["w"].device.type == "meta"


def test_the_environment_records_this_machine_and_this_process_settings(monkeypatch):
    from core.provenance import cpu_model, git_commit, git_dirty

    threads = torch.get_num_threads()
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    seen = {}
    try:
        torch.set_num_threads(3)
        for enabled, warn_only in ((False, False), (True, True), (True, False)):
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
            seen[(enabled, warn_only)] = records.environment(torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    assert [env["deterministic_algorithms"] for env in seen.values()] == ["off", "warn_only", "strict"]
    env = seen[(False, False)]
    assert env["torch_threads"] == 3 and env["cpu_count"] == os.cpu_count() and env["device"] == "cpu"
    assert (env["cpu_model"], env["git_commit"], env["git_dirty"]) == (cpu_model(), git_commit(), git_dirty())
    assert "gpu" not in env and "cudnn" not in env


def test_the_environment_of_a_cuda_run_names_the_gpu_and_cudnn(monkeypatch):
    # A CPU-only test: torch's CUDA queries are stood in for; the record must name the GPU the run used.
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"Test GPU {device.index}")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    env = records.environment(torch.device("cuda", 1))
    assert (env["device"], env["gpu"], env["cudnn"]) == ("cuda:1", "Test GPU 1", 90100)
    assert "gpu" not in records.environment(torch.device("mps")), "an Apple GPU is no CUDA device to query"


def test_a_table_whose_wandb_server_is_unreachable_is_one_line_naming_the_way_out(tmp_path, monkeypatch):
    # Only a training run falls back to offline logging; a table's run that cannot reach the server is an error.
    wandb = pytest.importorskip("wandb")
    from benchmarks.collect import Table
    from benchmarks.commands.table import log_wandb_table
    from benchmarks.errors import UsageError

    def init(**kwargs):
        raise wandb.errors.CommError("Network error (ConnectionError)")

    monkeypatch.setattr(wandb, "init", init)
    with pytest.raises(UsageError, match=r"its online run \(CommError: Network error \(ConnectionError\)\)"):
        log_wandb_table(Table("caption", [], [], False), "online", tmp_path)


def test_a_bad_wandb_setting_is_one_line_naming_the_way_out(tmp_path, monkeypatch):
    # wandb checks its WANDB_* settings with pydantic, which raises a ValueError, not one of wandb's errors.
    wandb = pytest.importorskip("wandb")
    from benchmarks.errors import UsageError
    from benchmarks.records import WandbSink

    def init(**kwargs):
        raise ValueError("1 validation error for Settings\nx_stats_sampling_interval\n  Input should be a number")

    monkeypatch.setattr(wandb, "init", init)
    with pytest.raises(UsageError, match=r"its offline run \(ValueError: 1 validation error for Settings "
                                         r"x_stats_sampling_interval Input should be a number\); fix that"):
        WandbSink("offline", tmp_path, {}, "run-x", log=lambda line: None)


def test_a_hand_edited_wandb_id_file_resumes_the_same_run(tmp_path, monkeypatch):
    # An editor's final newline must not make it another W&B run.
    wandb = pytest.importorskip("wandb")
    from benchmarks.records import WandbSink

    seen: list[dict] = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: seen.append(kwargs))
    (tmp_path / "wandb_id.txt").write_text("0123456789ab\n")
    WandbSink("offline", tmp_path, {}, "run-x", log=lambda line: None)
    assert seen[0]["id"] == "0123456789ab"


def test_an_online_run_names_its_url_when_it_closes(tmp_path):
    run, lines = RecordingRun(), []
    run.url = "https://wandb.ai/me/augbench/runs/0123456789ab"
    sink = sink_over(run, tmp_path, lines)
    sink.mode = "online"
    sink.finish()
    assert lines == ["W&B run: https://wandb.ai/me/augbench/runs/0123456789ab"]


def test_a_config_that_is_not_utf8_names_the_byte_to_fix(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_bytes(b"name: x\ntitle: caf\xe9\n")
    with pytest.raises(records.UsageError, match=rf"^{re.escape(str(path))} is not UTF-8 text \(invalid continuation "
                                                 r"byte at byte 18\); save it as UTF-8$"):
        read_config_yaml(path)


def test_a_checkpoint_save_cut_short_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    # torch.save writes as it pickles: a kill half-way must leave the previous epoch's checkpoint, not half of one.
    path = tmp_path / "checkpoint.pt"
    records.atomic_torch_save(path, {"epoch": 1})
    real_save = torch.save

    def cut_short(obj, f):
        real_save(obj, f)
        with open(f, "r+b") as out:
            out.truncate(10)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", cut_short)
    with pytest.raises(KeyboardInterrupt):
        records.atomic_torch_save(path, {"epoch": 2})
    monkeypatch.undo()
    assert read_checkpoint(path, "cpu") == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
