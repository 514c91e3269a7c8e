"""The speed benchmarks' method (``augbench bench``): the order the data benchmark times its streams in, what its
tables print beside each figure, when an epoch is projected to a CREMA-D run, and the generated media's size.
Nothing here times anything."""

from __future__ import annotations

import hashlib
from collections import Counter
from itertools import permutations
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image

from benchmarks import bench, bench_data
from benchmarks.bench import (
    SHAPES,
    markdown_data,
    markdown_epoch,
    markdown_steps,
    projects_to_cremad,
    timed_ms_per_sample,
)
from benchmarks.config import build_config
from benchmarks.runner import build_method
from datasets.cremad import CremaD
from datasets.prepare import prepare
from datasets.tables import PrepareOptions
from tests.conftest import TINY_DATA, TINY_MODEL
from tests.media_fixtures import make_cremad
from tests.numeric import approx64

STREAMS = ("cache", "floor", "host", "media")


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    tree = make_cremad(tmp_path_factory.mktemp("cremad") / "raw", seconds=(1.3, 2.5, 3.2, 4.1))
    opts = PrepareOptions(recipe="ogm", splits_dir=tree.splits_dir, frame_size=(24, 32), shard_size=8)
    return prepare(CremaD, tree.root, tmp_path_factory.mktemp("cache"), opts, log=lambda s: None)


def test_every_stream_follows_every_other_equally_often(cache_path, monkeypatch):
    # Each batch pulled, in order, by name: the warm-up's skips and the timed rounds' takes.
    pulled: list[str] = []
    take, skip = bench_data._Timed.take, bench_data._Timed.skip
    monkeypatch.setattr(bench_data._Timed, "take", lambda self, n: (pulled.append(self.name), take(self, n)))
    monkeypatch.setattr(bench_data._Timed, "skip", lambda self, n: (pulled.append(self.name), skip(self, n)))
    bench_data.benchmark_data(cache_path, batch_size=2, batches=1, rounds=3, warmup=1)
    timed = pulled[len(STREAMS):]
    assert [Counter(timed[r * 4:(r + 1) * 4]) for r in range(3)] == [Counter(STREAMS)] * 3, "each round times all"
    # Every timed batch's predecessor, the warm-up's last stream before round 0's first.
    after = Counter(zip(pulled[len(STREAMS) - 1:], timed))
    assert after == Counter(permutations(STREAMS, 2)), "each stream right after each other one, once"


def data_row(train: bool, device: str = "cpu") -> dict:
    """A data benchmark row as ``benchmark_data`` returns it, with round figures."""
    stages = ({"audio gather+conversion": 0.1, "frame array lookup": 0.0,
               "frame read+crop/resize+flip+conversion+normalisation": 0.15}
              if train else {"audio gather+conversion": 0.1, "view gather+conversion+normalisation": 0.05})
    profile = {**stages, "python overhead": 0.02, "loader": 0.01}
    profile["total"] = sum(profile.values())
    return {"train": train, "device": device, "cpu_samples_per_s": {"cache": 4000.0, "media": 100.0, "floor": 8000.0,
                                                                   "host": 16000.0},
            "cache_samples_per_s": 2000.0, "cpu_speedup": 40.0, "cpu_floor_ratio": 2.0, "cpu_host_speedup": 160.0,
            "speedup": 40.0, "floor_ratio": 2.0, "host_speedup": 160.0, "resample": "pil", "resident": "auto",
            "profile_ms_per_sample": profile, "rounds": 3, "batches": 5}


def test_the_data_profile_stands_beside_the_timed_rate():
    table = markdown_data([data_row(True), data_row(False)], "caption")
    header, _, train, test = table.split("\n\n")[-1].splitlines()
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[-2:] == ["profile total", "timed ms / sample"]
    # 1000 / 4000 samples/s of CPU time; the profile's own total beside it
    assert train.endswith("| 0.280 | 0.250 |") and test.endswith("| 0.180 | 0.250 |")
    assert "The passes are separate from the timed rounds" in table and "remainders of a pass's own time" in table
    # On CUDA both are wall time: 1000 / 2000 samples/s.
    assert timed_ms_per_sample(data_row(True, "cuda:0")) == 0.5


def epoch_row(projected: float | None) -> dict:
    return {"method": "aug", "dataset": "synthetic", "model": "width 8, blocks [2, 2, 2, 2]", "batches": 8,
            "batch_size": 16, "data": {}, "epoch_s": 1.0, "model_only_s": 1.0, "loader_only_s": 0.0,
            "epoch_over_model": 1.0, "step_s": 0.125, "samples_per_s": 128.0, "projected_cremad_run_s": projected}


def test_only_an_epoch_on_cremad_inputs_is_projected_to_a_cremad_run():
    assert not projects_to_cremad(build_config("aug", "synthetic", SHAPES["small"])), "toy shapes say nothing"
    assert projects_to_cremad(build_config("aug", "synthetic", SHAPES["cremad"]))
    assert projects_to_cremad(build_config("aug", "cremad", {})), "a CREMA-D cache"
    assert not projects_to_cremad(build_config("aug", "av_digits", {}))
    table = markdown_epoch([epoch_row(None), epoch_row(1200.0)], "caption")
    header, _, toy, cremad = table.splitlines()[2:]
    assert "CREMA-D epochs, min (training steps only, evaluation excluded" in header
    assert toy.endswith("| 128 | – |") and cremad.endswith("| 128 | 20.0 |")


def test_the_step_table_shows_the_joint_time_each_ratio_divides_by():
    rows = [{"method": "joint", "title": "Joint", "step_s": 0.010, "joint_step_s": 0.010, "ratio_to_joint": 1.0},
            {"method": "aug", "title": "AUG", "step_s": 0.030, "joint_step_s": 0.012, "ratio_to_joint": 2.5}]
    table = markdown_steps(rows, "caption").splitlines()
    assert table[2] == "| method | ms / step | joint ms / step, same rounds | × joint |"
    assert table[4:] == ["| Joint (`joint`) | 10.0 | 10.0 | 1.00 |", "| AUG (`aug`) | 30.0 | 12.0 | 2.50 |"]


def jpeg_sizes(folder: Path) -> set[tuple[int, int]]:
    """(W, H) of every JPEG in a clip folder."""
    sizes = set()
    for path in folder.glob("*.jpg"):
        with Image.open(path) as image:
            sizes.add(image.size)
    return sizes


def test_the_bench_tree_has_cremad_sized_frames_and_extracts_an_older_tree_again(tmp_path):
    logged: list[str] = []
    cache = bench_data.bench_tree(tmp_path, preset="tiny", recipe="ogm", log=logged.append)
    clips = sorted((tmp_path / "data" / "AV-Digits" / "Image-01-FPS").iterdir())
    assert {size for clip in clips for size in jpeg_sizes(clip)} == {(480, 360)}, "CREMA-D's video size"
    # A clip extracted at AV-Digits' own 160x120, as before the frames were made CREMA-D's size.
    for path in clips[0].glob("*.jpg"):
        with Image.open(path) as image:
            image.resize((160, 120)).save(path)
    logged.clear()
    assert bench_data.bench_tree(tmp_path, preset="tiny", recipe="ogm", log=logged.append) == cache
    assert jpeg_sizes(clips[0]) == {(480, 360)}
    assert "JPEG frames of 1 clips" in logged[0] and "1 of them again" in logged[0]
    assert any(line.startswith(f"{cache}: built") for line in logged), "the cache of the old frames is rebuilt"
    logged.clear()
    bench_data.bench_tree(tmp_path, preset="tiny", recipe="ogm", log=logged.append)
    assert "JPEG frames of 0 clips" in logged[0] and f"{cache}: up to date" in logged[-1]
    # A run that extracted frames again and stopped before preparing: the next one still rebuilds the stale cache.
    for path in clips[1].glob("*.jpg"):
        with Image.open(path) as image:
            image.resize((160, 120)).save(path)
    bench_data.extract_jpeg_frames(tmp_path / "data" / "AV-Digits", log=lambda _: None)
    logged.clear()
    assert bench_data.bench_tree(tmp_path, preset="tiny", recipe="ogm", log=logged.append) == cache
    assert any(line.startswith("rebuilding the bench cache") for line in logged)
    assert any(line.startswith(f"{cache}: built") for line in logged)


def test_a_figure_measured_with_uncommitted_changes_says_so():
    # The tables named only the commit, while the demo and result tables flag a dirty tree.
    from benchmarks.commands.bench import code_of

    assert code_of({"git_commit": "abc", "git_dirty": True}) == "abc with uncommitted changes"
    assert code_of({"git_commit": "abc", "git_dirty": False}) == "abc"


# --- the clocks and the arithmetic of the figures, on scripted clocks -----------------------------------------

def test_time_calls_times_each_call_after_the_warm_up_on_the_wall_clock(monkeypatch):
    wall = [0.0]
    calls: list[int] = []

    def fn():
        calls.append(len(calls))
        wall[0] += len(calls)  # the n-th call takes n seconds

    # The process's CPU time stands still: a step's time is the wall time a training run waits for it.
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: wall[0], process_time=lambda: 0.0))
    assert bench.time_calls(fn, torch.device("cpu"), repeats=3, warmup=2) == [3.0, 4.0, 5.0]
    assert len(calls) == 5


class ScriptedTimer:
    """A ``StepTimer`` stand-in whose medians are scripted per method, in the order they are asked for."""

    script: dict[str, list[float]] = {}
    built: list[tuple[str, Any, int]] = []

    def __init__(self, name: str, overrides: dict, batches: list | None, count: int) -> None:
        self.name, self.batches, self.device = name, batches if batches is not None else ["b"] * count, "cpu"
        self.method = type("Method", (), {"title": name.upper()})()
        ScriptedTimer.built.append((name, batches, count))

    def median(self, repeats: int, warmup: int) -> float:
        return self.script[self.name].pop(0)


def test_step_ratios_divide_the_fastest_round_by_the_fastest_joint_round_of_the_same_rounds(monkeypatch):
    # joint's first median is the process's warm-up (fastest here, so counting it would show); then three rounds
    # for joint's own row, three for aug's.
    ScriptedTimer.script = {"joint": [0.5, 4.0, 3.0, 5.0, 6.0, 2.0, 7.0], "aug": [10.0, 8.0, 9.0]}
    ScriptedTimer.built = []
    monkeypatch.setattr(bench, "StepTimer", ScriptedTimer)
    rows = bench.bench_steps({}, ["aug", "joint"], repeats=4, warmup=1, rounds=3, log=lambda _: None)
    assert [(r["method"], r["title"], r["step_s"], r["joint_step_s"], r["ratio_to_joint"]) for r in rows] == [
        ("joint", "JOINT", 3.0, 3.0, 1.0), ("aug", "AUG", 8.0, 2.0, 4.0)]
    assert all(not left for left in ScriptedTimer.script.values())
    # joint's batches are drawn once (warm-up + timed steps of a round) and every method steps through them
    assert ScriptedTimer.built == [("joint", None, 5), ("aug", ["b"] * 5, 0)]


def test_a_step_timer_cycles_through_its_batches_at_the_step_of_the_epoch_they_stand_for():
    tiny = {"model": TINY_MODEL, "data": TINY_DATA, "train": {"batch_size": 16}}
    timer = bench.StepTimer("joint", tiny, None, 3)
    assert len(timer.batches) == 3 and timer.steps_per_epoch == 4  # 64 rows in batches of 16
    seen: list[tuple[int, int]] = []
    timer.method.update = lambda batch, info: seen.append((next(i for i, b in enumerate(timer.batches) if b is batch),
                                                           info.step))
    for _ in range(6):
        timer.one()
    assert seen == [(0, 0), (1, 1), (2, 2), (0, 3), (1, 0), (2, 1)]


def test_an_epoch_is_projected_only_when_both_inputs_have_cremads_shapes():
    cremad = SHAPES["cremad"]["data"]
    for changed in ({"audio_shape": [1, 64, 128]}, {"visual_shape": [3, 1, 64, 64]}):
        cfg = build_config("aug", "synthetic", {"data": {**cremad, **changed}})
        assert not projects_to_cremad(cfg), changed


def scripted_epoch(cache_path, monkeypatch, times: dict[str, list[float]], **train) -> tuple[dict, list]:
    """``bench_epoch`` of ``joint`` on the CREMA-D cache with ``time_calls`` answering from ``times`` (nothing
    timed) and every ``update`` noted: the row, and the timings and updates in the order they happened."""
    events: list = []

    def scripted(fn, device, repeats, warmup):
        events.append((fn.__name__, repeats, warmup))
        return [times[fn.__name__].pop(0) for _ in range(repeats)]

    def counted(*args, **kwargs):
        method = build_method(*args, **kwargs)
        update = method.update
        method.update = lambda batch, info: (events.append("update"), update(batch, info))
        return method

    monkeypatch.setattr(bench, "time_calls", scripted)
    monkeypatch.setattr(bench, "build_method", counted)
    cfg = build_config("joint", "cremad", {"data": {"cache": str(cache_path), "image_size": 16, "frames": 1},
                                           "model": TINY_MODEL, "train": {"batch_size": 4, **train}})
    return bench.bench_epoch(cfg, log=lambda _: None, repeats=2), events


def test_epoch_figures_take_the_best_timed_epoch_after_an_untimed_one(cache_path, monkeypatch):
    times = {"loader_only": [0.5, 0.25], "full_epoch": [3.0, 2.0], "model_only": [1.0, 1.5]}
    row, events = scripted_epoch(cache_path, monkeypatch, times)
    assert (row["batches"], row["samples"]) == (2, 6)  # 6 training clips in batches of 4
    # One epoch through the loader and one on the resident batches untimed first, then the two interleaved.
    assert events == [("loader_only", 2, 1), *["update"] * 4, ("full_epoch", 1, 0), ("model_only", 1, 0),
                      ("full_epoch", 1, 0), ("model_only", 1, 0)]
    assert (row["loader_only_s"], row["epoch_s"], row["model_only_s"]) == (0.25, 2.0, 1.0)
    assert row["epoch_over_model"] == 2.0 and row["step_s"] == 1.0 and row["samples_per_s"] == 3.0
    assert row["projected_cremad_run_s"] == approx64(200 * 6698 * 2.0 / 6)
    table = markdown_epoch([row], "caption").splitlines()[-1]
    assert "| 2.00 | 1.00 | 0.25 | 2.00 | 1000.0 | 3 | " in table, "epoch, model-only, loader-only, ratio, ms, rate"


def test_an_epoch_that_drops_its_partial_batch_is_rated_on_the_samples_it_trained_on(cache_path, monkeypatch):
    # The rate and the projection divided by the split's 6 rows while the epoch trained on one batch of 4.
    times = {"loader_only": [1.0, 1.0], "full_epoch": [2.0, 2.0], "model_only": [1.0, 1.0]}
    row, _ = scripted_epoch(cache_path, monkeypatch, times, drop_last=True)
    assert (row["batches"], row["samples"], row["samples_per_s"]) == (1, 4, 2.0)
    assert row["projected_cremad_run_s"] == approx64(200 * 6698 * 2.0 / 4)


def settings_tag(*argv: str) -> tuple[str, str]:
    from benchmarks.cli import build_parser
    from benchmarks.commands.bench import _settings_tag

    return _settings_tag(build_parser("bench").parse_args(["bench", *argv]))


def test_figures_of_other_settings_are_named_and_captioned_by_them():
    digest = hashlib.sha256(b"data.resample=exact\nmodel.width=4").hexdigest()[:6]
    assert settings_tag("--compile", "--amp", "--set", "model.width=4", "--set", "data.resample=exact") == (
        f"-amp-compile-set-{digest}", "; amp, compile, data.resample=exact, model.width=4")
    assert settings_tag("--channels-last") == ("-channels_last", "; channels_last")
    assert settings_tag("--set", "a.b=1", "--set", "c.d=2") == settings_tag("--set", "c.d=2", "--set", "a.b=1")
    # Where the cache lies is no setting of the figures: the defaults' names.
    assert settings_tag("--set", "data.cache_dir=/x", "--set", "data.cache=/y/z") == ("", "")


def test_the_execution_flags_reach_the_run_configuration():
    from benchmarks.cli import build_parser
    from benchmarks.commands.bench import _execution

    parse = build_parser("bench").parse_args
    assert _execution(parse(["bench", "--device", "cpu"])) == {"train": {"device": "cpu"}}
    assert _execution(parse(["bench", "--amp", "--compile", "--channels-last"])) == {
        "train": {"device": "auto", "amp": True, "compile": True}, "model": {"channels_last": True}}


def test_a_key_set_twice_is_named_by_the_value_in_force():
    # The last --set of a key wins; both values went into a sorted name, so 4-then-8 and 8-then-4 (widths 8 and 4)
    # wrote the same files and captions.
    wide, narrow = (settings_tag("--set", f"model.width={a}", "--set", f"model.width={b}") for a, b in ((4, 8), (8, 4)))
    assert wide == settings_tag("--set", "model.width=8") and narrow == settings_tag("--set", "model.width=4")
    assert wide[0] != narrow[0]
