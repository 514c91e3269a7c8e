"""The speed benchmarks' method (``augbench bench``): the order the data benchmark times its streams in, what its
tables print beside each figure, when an epoch is projected to a CREMA-D run, and the generated media's size.
Nothing here times anything."""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from itertools import permutations
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
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
from core.hparams import HParamError, resolve
from datasets.augment import frame_offsets
from datasets.av_digits import TreeMismatchError
from datasets.cache import open_cache
from datasets.cremad import CremaD
from datasets.media_loader import MediaDataset
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
    # Figures are named by the preset asked for: a tree of another preset would measure other data.
    with pytest.raises(TreeMismatchError, match=r"preset='tiny' \(asked 'small'\)"):
        bench_data.bench_tree(tmp_path, preset="small", recipe="ogm", log=logged.append)


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
    overrides: dict[str, dict] = {}

    def __init__(self, name: str, overrides: dict, batches: list | None, count: int) -> None:
        self.name, self.batches, self.device = name, batches if batches is not None else ["b"] * count, "cpu"
        self.method = type("Method", (), {"title": name.upper()})()
        ScriptedTimer.built.append((name, batches, count))
        ScriptedTimer.overrides[name] = overrides

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
    assert all((r["repeats"], r["warmup"], r["rounds"]) == (4, 1, 3) for r in rows)
    assert all(not left for left in ScriptedTimer.script.values())
    # joint's batches are drawn once (warm-up + timed steps of a round) and every method steps through them
    assert ScriptedTimer.built == [("joint", None, 5), ("aug", ["b"] * 5, 0)]


def test_a_methods_own_knobs_reach_its_timer_and_not_joints(monkeypatch):
    # e.g. MIDAS timed past its warm-up: joint, the reference, refused the midas namespace and nothing was timed.
    ScriptedTimer.script = {"joint": [1.0] * 3, "midas": [2.0]}
    ScriptedTimer.built, ScriptedTimer.overrides = [], {}
    monkeypatch.setattr(bench, "StepTimer", ScriptedTimer)
    overrides = {"train": {"batch_size": 4}, "midas": {"warmup_epochs": 0}}
    bench.bench_steps(overrides, ["midas"], repeats=1, warmup=0, rounds=1, log=lambda _: None)
    assert ScriptedTimer.overrides == {"joint": {"train": {"batch_size": 4}}, "midas": overrides}
    with pytest.raises(HParamError, match=r"\['midsa'\] name no method benchmarked here \(joint, midas\)"):
        bench.bench_steps({"midsa": {"warmup_epochs": 0}}, ["midas"], log=lambda _: None)


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


def test_a_step_timer_trains_with_its_runs_seed_and_determinism(monkeypatch):
    seeded: list[tuple[int, bool]] = []
    monkeypatch.setattr(bench, "seed_everything", lambda seed, deterministic: seeded.append((seed, deterministic)))
    tiny = {"model": TINY_MODEL, "data": TINY_DATA, "train": {"batch_size": 16, "seed": 3, "deterministic": False}}
    timer = bench.StepTimer("joint", tiny, None, 1)
    assert seeded == [(3, False)] and timer.method.training


@pytest.mark.parametrize("module", [bench, bench_data])
def test_a_clock_waits_for_a_cuda_device_and_only_for_one(module, monkeypatch):
    waited: list = []
    monkeypatch.setattr(torch.cuda, "synchronize", waited.append)
    module._sync(torch.device("cpu"))
    assert waited == []
    module._sync(torch.device("cuda", 0))
    assert waited == [torch.device("cuda", 0)]


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
    return bench.bench_epoch(cfg, log=lambda _: None, repeats=3), events


def test_epoch_figures_take_the_best_timed_epoch_after_an_untimed_one(cache_path, monkeypatch):
    # The best of each in the middle: neither the first nor the last timing passes for it.
    times = {"loader_only": [0.5, 0.25, 0.75], "full_epoch": [3.0, 2.0, 4.0], "model_only": [1.5, 1.0, 2.5]}
    row, events = scripted_epoch(cache_path, monkeypatch, times)
    assert (row["batches"], row["samples"]) == (2, 6)  # 6 training clips in batches of 4
    assert set(row["data"]) == {"resident", "resample", "prefetch"}, "the serving knobs measured"
    # One epoch through the loader and one on the resident batches untimed first, then the two interleaved.
    assert events == [("loader_only", 3, 1), *["update"] * 4, *[("full_epoch", 1, 0), ("model_only", 1, 0)] * 3]
    assert (row["loader_only_s"], row["epoch_s"], row["model_only_s"], row["repeats"]) == (0.25, 2.0, 1.0, 3)
    assert row["epoch_over_model"] == 2.0 and row["step_s"] == 1.0 and row["samples_per_s"] == 3.0
    assert row["projected_cremad_run_s"] == approx64(200 * 6698 * 2.0 / 6)
    table = markdown_epoch([row], "caption").splitlines()[-1]
    assert "| 2.00 | 1.00 | 0.25 | 2.00 | 1000.0 | 3 | " in table, "epoch, model-only, loader-only, ratio, ms, rate"


def test_model_only_time_trains_in_train_mode_on_the_batches_drawn_once(cache_path, monkeypatch):
    # Model-only time is the updates alone: a pass drawing its batches from the loader would time the loader too.
    passes: dict[str, list] = {"full_epoch": [], "model_only": []}

    def run_twice(fn, device, repeats, warmup):
        fn()
        return [1.0] * repeats

    def noted(*args, **kwargs):
        method = build_method(*args, **kwargs)
        update = method.update

        def note(batch, info):
            caller = sys._getframe(1).f_code.co_name
            passes[caller].append((batch, method.training))
            return update(batch, info)

        method.update = note
        return method

    monkeypatch.setattr(bench, "time_calls", run_twice)
    monkeypatch.setattr(bench, "build_method", noted)
    cfg = build_config("joint", "cremad", {"data": {"cache": str(cache_path), "image_size": 16, "frames": 1},
                                           "model": TINY_MODEL, "train": {"batch_size": 4}})
    bench.bench_epoch(cfg, log=lambda _: None, repeats=2)
    model_only = passes["model_only"]
    assert len(model_only) == 6 and all(training for _, training in model_only + passes["full_epoch"])
    first = [batch for batch, _ in model_only[:2]]
    assert all(batch is first[i % 2] for i, (batch, _) in enumerate(model_only)), "the same batches every pass"
    assert not any(batch is b for batch in first for b, _ in passes["full_epoch"])


def test_an_epoch_that_drops_its_partial_batch_is_rated_on_the_samples_it_trained_on(cache_path, monkeypatch):
    # The rate and the projection divided by the split's 6 rows while the epoch trained on one batch of 4.
    times = {"loader_only": [1.0] * 3, "full_epoch": [2.0] * 3, "model_only": [1.0] * 3}
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


def test_the_data_table_puts_each_cpu_and_wall_figure_in_its_own_column():
    # CPU-time and wall-time ratios differ here, as they do on a loaded machine.
    rows = [{**data_row(train), "speedup": 20.0, "floor_ratio": 1.5, "host_speedup": 90.0} for train in (True, False)]
    table = markdown_data(rows, "caption").splitlines()
    assert table[6:8] == [
        "| train (random crop + flip) | 4000 | 100.0 | 40.0 | 8000 | 2.00 | 16000 | 160 | 20.0, 1.50, 90 | pil "
        "| auto |",
        "| test (Resize, views kept) | 4000 | 100.0 | 40.0 | 8000 | 2.00 | 16000 | 160 | 20.0, 1.50, 90 | – | auto |"]
    profile = "\n".join(table)
    assert "(3 extra passes of the cache loader" in profile and "each of 5 batches" in profile
    assert [line.split(" | ")[0] for line in table[-2:]] == ["| train", "| test"]


def test_a_timed_stream_sums_the_wall_and_cpu_time_of_its_batches_and_restarts_at_its_end(monkeypatch):
    wall, cpu = [0.0], [0.0]
    monkeypatch.setattr(bench_data, "time", SimpleNamespace(perf_counter=lambda: wall[0], process_time=lambda: cpu[0]))
    starts: list[int] = []

    def start():
        starts.append(len(starts))
        for size in (2, 3):
            wall[0], cpu[0] = wall[0] + 1.0, cpu[0] + 0.25  # a batch: 1 s of wall time, 0.25 s of CPU time
            yield {"label": [0] * size}

    stream = bench_data._Timed("s", start)
    stream.skip(1)  # untimed
    stream.take(3)  # 3 samples, then the stream restarts: 2, 3
    assert (stream.samples, stream.seconds, stream.cpu_seconds, len(starts)) == (8, 3.0, 0.75, 2)
    assert (stream.rate, stream.cpu_rate) == (8 / 3.0, 8 / 0.75)


def test_a_stream_on_cuda_is_timed_until_the_device_has_done_its_batches(monkeypatch):
    wall = [0.0]
    monkeypatch.setattr(bench_data, "time", SimpleNamespace(perf_counter=lambda: wall[0], process_time=lambda: 0.0))
    synced: list[str] = []

    def sync(device):  # the device finishing the work queued so far: 5 s
        synced.append(device.type)
        wall[0] += 5.0

    def start():
        while True:
            wall[0] += 1.0
            yield {"label": [0, 0]}

    monkeypatch.setattr(bench_data, "_sync", sync)
    stream = bench_data._Timed("cache", start, torch.device("cuda"))
    stream.take(2)
    # What was queued before the take is not its time; what its two batches queued is.
    assert (stream.seconds, stream.samples, synced) == (7.0, 4, ["cuda", "cuda"])


class ScriptedLoader:
    """Batches of 4 samples, each 1 s of the loader's own work and 3 s in ``augment``, 2 s of them in the stage
    ``crop`` (CPU time; the wall clock runs twice as fast)."""

    def __init__(self, clock: dict[str, float], stages: SimpleNamespace, batches: int) -> None:
        self.clock, self.stages, self.batches = clock, stages, batches
        self.augment = self.inner

    def tick(self, seconds: float) -> None:
        self.clock["cpu"] += seconds
        self.clock["wall"] += 2 * seconds

    def inner(self, batch: dict, generator: Any, train: bool) -> dict:
        self.tick(3.0)
        self.stages.times.seconds["crop"] = self.stages.times.seconds.get("crop", 0.0) + 2.0
        return batch

    def __iter__(self):
        for _ in range(self.batches):
            self.tick(1.0)
            yield self.augment({"label": [0] * 4}, None, True)


@pytest.mark.parametrize("device, scale", [("cpu", 1), ("cuda", 2)])
def test_the_serving_profile_splits_a_pass_into_stages_and_remainders_per_sample(monkeypatch, device, scale):
    clock = {"cpu": 0.0, "wall": 0.0}
    monkeypatch.setattr(bench_data, "time", SimpleNamespace(perf_counter=lambda: clock["wall"],
                                                            process_time=lambda: clock["cpu"]))
    stages = SimpleNamespace(times=None)
    loader = ScriptedLoader(clock, stages, batches=2)
    # 3 batches asked, 2 served: 8 samples, ms per sample. CPU time on a CPU, wall time on CUDA; the stage's own
    # clock (StageTimes) is the same in both.
    profile = bench_data._profile(loader, stages, 3, torch.device(device))
    assert profile == {"crop": 500.0, "python overhead": (6 * scale - 4) * 125.0, "loader": 2 * scale * 125.0,
                       "total": 8 * scale * 125.0}
    assert loader.augment == loader.inner and stages.times is None, "the loader is left as it was"


def test_every_data_rate_and_ratio_comes_from_its_own_streams_clock(cache_path, monkeypatch):
    wall = {"cache": 1000.0, "media": 10.0, "floor": 3000.0, "host": 7000.0}
    cpu = {"cache": 2000.0, "media": 40.0, "floor": 5000.0, "host": 9000.0}
    monkeypatch.setattr(bench_data._Timed, "rate", property(lambda stream: wall[stream.name]))
    monkeypatch.setattr(bench_data._Timed, "cpu_rate", property(lambda stream: cpu[stream.name]))
    row = bench_data.benchmark_data(cache_path, batch_size=2, batches=1, rounds=1)
    assert row["cpu_samples_per_s"] == cpu and {name: row[f"{name}_samples_per_s"] for name in wall} == wall
    assert (row["cpu_speedup"], row["cpu_floor_ratio"], row["cpu_host_speedup"]) == (50.0, 2.5, 225.0)
    assert (row["speedup"], row["floor_ratio"], row["host_speedup"]) == (100.0, 3.0, 700.0)


@pytest.mark.parametrize("train", [True, False])
def test_the_data_streams_are_timed_on_one_thread_after_a_warm_epoch_in_the_view_asked_for(cache_path, monkeypatch,
                                                                                           train):
    from core.data import BatchLoader

    served, seen, media = [0], [], []
    batches = BatchLoader.__iter__

    def counted(self):
        for batch in batches(self):
            served[0] += 1
            yield batch

    take = bench_data._Timed.take
    monkeypatch.setattr(BatchLoader, "__iter__", counted)
    monkeypatch.setattr(bench_data._Timed, "take",
                        lambda self, n: (seen.append((self.name, served[0], torch.get_num_threads())), take(self, n)))
    monkeypatch.setattr(bench_data, "MediaDataset",
                        lambda *args, **kw: media.append(kw["train"]) or MediaDataset(*args, **kw))
    split = "train" if train else "test"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the suite runs on one thread: two, so that the benchmark's own setting shows
    try:
        row = bench_data.benchmark_data(cache_path, split=split, train=train, batch_size=2, batches=1, rounds=1,
                                        warmup=0)
        assert torch.get_num_threads() == 2, "restored"
    finally:
        torch.set_num_threads(threads)
    first = next(count for name, count, _ in seen if name == "cache")
    assert first == -(-len(CremaD.build(resolve("data", CremaD.HPARAMS, "cremad", {"cache": str(cache_path)}))
                             .splits[split]) // 2), "a whole untimed epoch of the cache loader first"
    assert {threads for *_, threads in seen} == {1} and row["threads"] == 1
    assert media == [train], "the media loader serves the same view"


@pytest.mark.parametrize("train", [True, False])
def test_the_host_share_gathers_what_a_cuda_batch_of_the_view_needs(cache_path, monkeypatch, train):
    data = CremaD.build(resolve("data", CremaD.HPARAMS, "cremad", {"cache": str(cache_path), "frames": 2,
                                                                    "image_size": 16}))
    augment, cache = data.augment, open_cache(cache_path)
    starts, counts = cache.starts["frames"], cache.counts["frames"]
    loader = data.loader("train", batch_size=4, train=train, seed=0)
    taken: list[tuple[str, np.ndarray]] = []
    monkeypatch.setattr(augment.arrays, "take", lambda name, index, *rest: taken.append((name, np.asarray(index))))
    monkeypatch.setattr(augment.eval_views, "take", lambda index, out=None: taken.append(("views", index)))
    batches = list(bench_data._host_batches(loader, augment, starts, counts, 2, train, seed=0))
    assert [name for name, _ in taken] == ["audio", "frames" if train else "views"] * len(batches)
    for batch, (_, rows), (_, index) in zip(batches, taken[::2], taken[1::2]):
        assert np.array_equal(rows, batch["label"]) and np.array_equal(rows, np.sort(rows))
        if train:  # the distinct frames of the clips' draws, each inside its clip
            assert np.array_equal(index, np.unique(index))
            assert all(((starts[rows] <= i) & (i < starts[rows] + counts[rows])).any() for i in index)
        else:  # the test view's fixed frames
            offsets = frame_offsets(torch.from_numpy(counts[rows]), 2, augment.frame_rule, False, None).numpy()
            assert np.array_equal(index, (starts[rows][:, None] + offsets).reshape(-1))


def test_the_data_files_and_caption_name_the_settings_of_the_rounds_measured(cache_path, tmp_path, monkeypatch):
    from benchmarks.cli import main
    from benchmarks.commands import bench as command

    calls: list[dict] = []

    def measured(cache, **kwargs):
        calls.append(kwargs)
        return {**data_row(kwargs["train"]), "dataset": "cremad", "recipe": "ogm", "audio_shape": [1, 8, 9],
                "stored_frame": [24, 32], "visual_source": "video", "image_size": 16, "frames": 2,
                "load_average": [float(len(calls))] * 3}

    monkeypatch.setattr(command, "benchmark_data", measured)
    out = tmp_path / "bench"
    assert main(["bench", "data", "--cache", str(cache_path), "--out", str(out), "--rounds", "6", "--batches", "2",
                 "--batch-size", "3", "--device", "cpu", "--set", "data.cache_dir=/elsewhere",
                 "--set", "data.resident=memory"]) == 0
    assert [(c["split"], c["train"], c["rounds"], c["batches"], c["batch_size"], c["data"]) for c in calls] == [
        ("train", True, 6, 2, 3, {"resident": "memory"}), ("test", False, 6, 2, 3, {"resident": "memory"})]
    # Named by the batch size and the serving setting, not by where the caches lie or how many rounds were timed.
    assert sorted(p.name for p in out.iterdir()) == ["data-cremad-ogm-cpu-batch-3-resident-memory.json",
                                                      "data-cremad-ogm-cpu-batch-3-resident-memory.md"]
    caption = (out / "data-cremad-ogm-cpu-batch-3-resident-memory.md").read_text().splitlines()[0]
    assert "batch 3, data.resident=memory)" in caption and "6 interleaved rounds of 2 batches" in caption
    assert "load average [2.0, 2.0, 2.0] at the end" in caption, "measured after the second view, the last"


def scripted_command(monkeypatch, measured: Path) -> list:
    """``augbench bench`` with every benchmark scripted (the data benchmark "measures" ``measured``) on a CUDA
    machine's record: each benchmark's call, in order."""
    from benchmarks.commands import bench as command

    calls: list = []
    monkeypatch.setattr(command, "run_data", lambda args, env, tag: calls.append(("data", tag)) or (
        [{"dataset": "cremad"}], measured))
    monkeypatch.setattr(command, "bench_steps", lambda base, methods, repeats: calls.append(
        ("step", base["train"], methods, repeats)) or [{"load_average": None, "repeats": repeats, "warmup": 2,
                                                         "rounds": 3}])
    monkeypatch.setattr(command, "bench_epoch", lambda cfg, repeats: calls.append(
        ("epoch", cfg.dataset, cfg.data.cache, cfg.train.amp, repeats)) or {"load_average": None, "recipe": "aug",
                                                                            "repeats": repeats})
    monkeypatch.setattr(command, "markdown_steps", lambda rows, caption: calls.append(("caption", caption)) or "")
    monkeypatch.setattr(command, "markdown_epoch", lambda rows, caption: calls.append(("caption", caption)) or "")
    monkeypatch.setattr(command, "_machine", lambda device: {"device": "cuda:0", "gpu": "GPU", "processor": "x",
                                                             "torch": "2", "torch_threads": 1, "git_commit": "abc"})
    return calls


@pytest.mark.parametrize("argv, message", [
    (["--methods", "joint", "jiont"], "unknown method 'jiont'"),
    (["--epoch-method", "agn"], "unknown method 'agn'"),
    (["--device", "cuda"], "train.device=cuda but torch sees no CUDA device"),
    (["--methods", "midas", "--set", "midsa.warmup_epochs=0"], "['midsa'] name no method benchmarked here"),
    (["--device", "cpu", "--set", "train.device=cuda"], "takes its device from --device"),
])
def test_bench_refuses_a_misspelt_method_or_a_missing_device_before_measuring(tmp_path, monkeypatch, capsys, argv,
                                                                              message):
    from benchmarks.cli import main

    calls = scripted_command(monkeypatch, tmp_path / "cache")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "all", "--out", str(tmp_path / "out"), *argv]) != 0
    assert calls == [] and message in capsys.readouterr().err


def test_the_bench_environment_records_the_determinism_the_timers_run_with(tmp_path, monkeypatch):
    from benchmarks.cli import main
    from benchmarks.commands import bench as command

    recorded: list[bool] = []
    scripted_command(monkeypatch, tmp_path / "cache")
    monkeypatch.setattr(command, "_machine", lambda device: recorded.append(
        torch.are_deterministic_algorithms_enabled()) or {"device": "cpu", "processor": "x", "torch": "2",
                                                           "torch_threads": 1, "git_commit": "abc"})
    before = torch.are_deterministic_algorithms_enabled()
    try:
        for deterministic in ("true", "false"):
            torch.use_deterministic_algorithms(deterministic == "false")  # the other state beforehand
            assert main(["bench", "step", "--device", "cpu", "--methods", "joint", "--out", str(tmp_path / "out"),
                         "--set", f"train.deterministic={deterministic}"]) == 0
    finally:
        torch.use_deterministic_algorithms(before)
    assert recorded == [True, False]


def test_bench_all_hands_each_benchmark_its_options(tmp_path, monkeypatch):
    from benchmarks.cli import main

    measured = tmp_path / "cache" / "cremad" / "aug-1234"
    calls = scripted_command(monkeypatch, measured)
    assert main(["bench", "all", "--shape", "cremad", "--device", "cpu", "--amp", "--methods", "aug", "--repeats", "3",
                 "--epoch-repeats", "4", "--out", str(tmp_path / "out")]) == 0
    captions = [c[1] for c in calls if c[0] == "caption"]
    assert [c for c in calls if c[0] != "caption"] == [
        ("data", "cuda"), ("step", {"batch_size": 64, "device": "cpu", "amp": True}, ["aug"], 3),
        ("epoch", "cremad", str(measured), True, 4)]
    # How often each figure was timed, in the table's caption (the ratios' noise depends on it).
    assert "fastest of 3 interleaved rounds, each the median of 3 steps after 2 warm-up" in captions[0]
    assert "best of 4 interleaved epochs" in captions[-1]
    # The device the machine record names, in each file's name; a subset of methods beside the every-method table.
    subset = f"methods-{hashlib.sha256(b'aug').hexdigest()[:6]}"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "epoch-aug-cremad-aug-cuda-amp.json", "epoch-aug-cremad-aug-cuda-amp.md", f"step-cremad-cuda-amp-{subset}.json",
        f"step-cremad-cuda-amp-{subset}.md"]
    assert main(["bench", "step", "--shape", "cremad", "--device", "cpu", "--amp", "--methods", "pmr", "aug",
                 "--out", str(tmp_path / "out")]) == 0
    assert main(["bench", "step", "--shape", "cremad", "--device", "cpu", "--amp", "--out", str(tmp_path / "out")]) == 0
    steps = sorted(p.name for p in (tmp_path / "out").glob("step-*.md"))
    pair = f"methods-{hashlib.sha256(b'aug pmr').hexdigest()[:6]}"
    assert steps == sorted(["step-cremad-cuda-amp.md", f"step-cremad-cuda-amp-{subset}.md",
                            f"step-cremad-cuda-amp-{pair}.md"]), "in any order, two methods are one subset"


def test_the_cremad_shape_epoch_trains_on_the_cache_the_data_benchmark_measured(tmp_path, monkeypatch):
    # --cache is what the data benchmark measures, but a --set data.cache replaced it for the epoch, which then
    # timed another cache than the data table beside it.
    from benchmarks.cli import main

    measured = tmp_path / "cache" / "cremad" / "aug-1234"
    calls = scripted_command(monkeypatch, measured)
    assert main(["bench", "all", "--shape", "cremad", "--cache", str(measured), "--set", "data.cache=/elsewhere",
                 "--out", str(tmp_path / "out")]) == 0
    assert [c for c in calls if c[0] == "epoch"][-1][:3] == ("epoch", "cremad", str(measured))


def test_time_calls_starts_each_clock_after_the_queued_work_and_stops_it_after_the_calls_own(monkeypatch):
    # Each call takes 1 s of host time and queues 5 s of device work, which a synchronisation waits for.
    wall, queued = [0.0], [0.0]

    def fn():
        wall[0] += 1.0
        queued[0] += 5.0

    def sync(device):
        wall[0] += queued[0]
        queued[0] = 0.0

    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: wall[0], process_time=lambda: 0.0))
    monkeypatch.setattr(bench, "_sync", sync)
    # Neither the warm-up's queued 10 s nor an unfinished call's device time may land in (or leave) a timing.
    assert bench.time_calls(fn, torch.device("cuda"), repeats=2, warmup=2) == [6.0, 6.0]


def test_a_step_time_is_the_median_of_the_timed_steps(monkeypatch):
    asked: list[tuple[int, int]] = []

    def scripted(fn, device, repeats, warmup):
        asked.append((repeats, warmup))
        return [1.0, 9.0, 2.0]  # one slow outlier: the mean would be 4

    monkeypatch.setattr(bench, "time_calls", scripted)
    timer = bench.StepTimer.__new__(bench.StepTimer)
    timer.device = torch.device("cpu")
    assert timer.median(3, 2) == 2.0 and asked == [(3, 2)]


def test_the_serving_profile_is_the_median_of_one_pass_per_round(cache_path, monkeypatch):
    passes = [{"crop": 1.0, "total": 3.0}, {"crop": 10.0, "total": 30.0}, {"crop": 2.0, "total": 6.0}]
    asked: list[int] = []

    def scripted(loader, augment, batches, device):
        asked.append(batches)
        return passes[len(asked) - 1]

    monkeypatch.setattr(bench_data, "_profile", scripted)
    row = bench_data.benchmark_data(cache_path, batch_size=2, batches=1, rounds=3)
    assert asked == [1, 1, 1], "one pass of the timed rounds' batch count per round"
    assert row["profile_ms_per_sample"] == {"crop": 2.0, "total": 6.0}


def test_figures_go_to_runs_bench_unless_published(tmp_path, monkeypatch):
    from benchmarks.cli import main

    scripted_command(monkeypatch, tmp_path / "unused")
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "step", "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "bench").iterdir()) == ["step-small-cuda.json",
                                                                                "step-small-cuda.md"]
    assert not (tmp_path / "results").exists(), "a plain run never writes the committed figures"
    assert main(["bench", "step", "--device", "cpu", "--publish"]) == 0
    assert sorted(p.name for p in (tmp_path / "results" / "bench").iterdir()) == ["step-small-cuda.json",
                                                                                   "step-small-cuda.md"]


def test_the_data_benchmark_refuses_a_prefetch_thread_before_measuring(cache_path, tmp_path, monkeypatch, capsys):
    from benchmarks.cli import main
    from benchmarks.commands import bench as command

    measured: list = []
    monkeypatch.setattr(command, "benchmark_data", lambda *args, **kwargs: measured.append(kwargs))
    assert main(["bench", "data", "--cache", str(cache_path), "--set", "data.prefetch=2",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "data.prefetch" in err and "Traceback" not in err
    assert not measured and not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("device, cuda, recorded", [("auto", True, "cuda"), ("auto", False, "cpu"),
                                                     ("cpu", True, "cpu"), ("cuda", False, "cuda")])
def test_the_machine_record_names_the_device_the_figures_run_on(monkeypatch, device, cuda, recorded):
    from benchmarks.commands import bench as command

    monkeypatch.setattr(command.torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(command, "environment", lambda where: {"device": str(where)})
    assert command._machine(device)["device"] == recorded
