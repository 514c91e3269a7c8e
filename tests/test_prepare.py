"""``augbench prepare`` on tiny generated trees in the real layouts: counts, label maps, cached features vs on-the-fly
ones, frame markers, idempotence and resume, every bad-input case, and the other datasets' layouts."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import datasets.audio_visual as av
import datasets.prepare as prep
from benchmarks.cli import main
from core.hparams import resolve
from datasets.audio_visual import audio_pipeline
from datasets.ave import AVE
from datasets.base import stratified_holdout
from datasets.cache import Cache, CacheError, open_cache
from datasets.cremad import CremaD
from datasets.kinetics_sounds import KineticsSounds
from datasets.media import MediaError
from datasets.media.audio import MissingExtraError, features_from_file, get_pipeline
from datasets.media.video import extract_frames
from datasets.prepare import manifest_summary, prepare
from datasets.prepared import Record
from datasets.splits import SplitRow
from datasets.tables import Dropped, PrepareError, PrepareOptions, Sample
from datasets.vggsound import VGGSound
from tests.media_fixtures import (
    EMOTIONS,
    make_ave,
    make_cremad,
    make_kinetics_sounds,
    make_vggsound,
    second_level,
    write_frame_folder,
    write_lfs_pointer,
    write_lines,
    write_video,
    write_wav,
)

FRAME = (24, 32)


def options(tree, **kw) -> PrepareOptions:
    base = {"recipe": "ogm", "splits_dir": tree.splits_dir, "frame_size": FRAME, "shard_size": 4}
    return PrepareOptions(**{**base, **kw})


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_cremad(tmp_path_factory.mktemp("cremad") / "raw")


@pytest.fixture(scope="module")
def built(pristine, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return prepare(CremaD, pristine.root, root, options(pristine), log=quiet)


@pytest.fixture
def tree(pristine, tmp_path):
    """A private copy of the pristine CREMA-D tree, free to break."""
    copy = tmp_path / "raw"
    shutil.copytree(pristine.root, copy)
    clone = type(pristine)(copy, copy / "annotations", dict(pristine.clips), dict(pristine.codes),
                           dict(pristine.frames))
    return clone


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_cremad_counts_label_map_splits_and_manifest(built, pristine):
    cache = open_cache(built)
    m = cache.manifest
    assert (built / "DONE").is_file() and built.name.startswith("ogm-")
    assert m["counts"]["rows_read"] == 18 and m["counts"]["total"] == 18 and m["dropped"]["total"] == 0
    # the documented layout: labels and split rows int64, audio float16 (N, F, T), frames uint8, ragged int64 offsets
    assert cache.labels.dtype == np.int64 and all(rows.dtype == np.int64 for rows in cache.splits.values())
    assert cache.arrays["audio"].dtype == np.float16 and cache.arrays["frames"].dtype == np.uint8
    assert cache.starts["frames"].dtype == cache.counts["frames"].dtype == np.int64
    # index.csv names each row's class as the label map does, and CREMA-D's is the EEE field of its id
    assert list(cache.index["label_name"]) == [cache.classes[label] for label in cache.labels] == \
        [clip.split("_")[2] for clip in cache.index["id"]]
    assert {s: v["n"] for s, v in m["counts"]["splits"].items()} == {"train": 12, "test": 6, "val": 6,
                                                                     "train_noval": 6}
    assert m["classes"] == ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"] and m["label_order"] == "ogm"
    assert list(cache.index["id"][cache.splits["train"]]) == pristine.ids("train")
    assert list(cache.index["id"][cache.splits["test"]]) == pristine.ids("test")
    assert (built / "splits" / "val.txt").read_text().split() == pristine.ids("val")
    assert [EMOTIONS[x] for x in cache.labels] == [i.split("_")[2] for i in cache.index["id"]]
    assert m["audio"]["pad_mode"] == "constant" and m["audio"]["res_type"] == "soxr_hq"
    # 1.3 / 2.5 / 3.2 s clips at 1 fps: 2, 3 and 4 frames; the clips under 4 frames are counted by frame count.
    assert m["counts"]["few_frame_clips"] == {"2": 6, "3": 6} and m["counts"]["frames"] == 6 * (2 + 3 + 4)
    assert "few_frame_clips (2: 6, 3: 6)" in manifest_summary(m)
    assert m["counts"]["source_frame_sizes"] == {"48x64": 18} and m["counts"]["other_aspect_clips"] == 0
    audio = cache.arrays["audio"]
    assert m["audio_shape"] == [257, 188] and audio.shape == (18, 257, 188) and audio.dtype == np.float16
    assert {"numpy", "librosa", "av", "torch", "scipy"} <= set(m["versions"]) and m["versions"]["librosa"]
    # The fixture's stat.csv is byte-identical to OGM-GE's (BOM + CRLF), so it verifies against the pin.
    assert {n: f["status"] for n, f in m["split_files"].items()} == {
        **dict.fromkeys(["my_train.csv", "test.csv", "train.csv", "val.csv"], "custom"), "stat.csv": "pinned"}
    assert "Diagnosing" in m["val_source"] and m["visual"]["source"] == "video"
    assert m["visual"]["frame_size"] == list(FRAME) and m["deviations"]
    assert sorted(p.name for p in (built / "split_files").iterdir()) == sorted(m["split_files"])
    assert read_csv(built / "dropped.csv") == []
    assert not built.with_name(built.name + ".partial").exists()


def test_cached_audio_equals_on_the_fly_features(built, pristine):
    cache = open_cache(built)
    pipeline = audio_pipeline(cache)
    for row in range(len(cache)):
        reference, duration, _ = features_from_file(pipeline, pristine.root / cache.index["audio_path"][row])
        np.testing.assert_allclose(cache.arrays["audio"][row].astype(np.float32), reference, atol=1e-2, rtol=1e-3)
        assert cache.index["duration_s"][row] == pytest.approx(duration, abs=1e-5)


def test_cached_frames_are_the_first_frame_of_each_second(built, pristine):
    cache = open_cache(built)
    assert cache.arrays["frames"].shape[1:] == (*FRAME, 3)
    for row, clip_id in enumerate(cache.index["id"]):
        start, count = cache.index["frame_start"][row], cache.index["frame_count"][row]
        assert count == pristine.frames[clip_id]
        clip = cache.arrays["frames"][start:start + count].astype(float)
        np.testing.assert_allclose(clip[..., 0].mean(axis=(1, 2)), [second_level(k) for k in range(count)], atol=5)
        np.testing.assert_allclose(clip[..., 1].mean(), pristine.codes[clip_id], atol=5)


def test_second_prepare_is_a_no_op_and_force_rebuilds_byte_identical(built, pristine, monkeypatch):
    before = {name: (built / name).read_bytes() for name in ("audio.npy", "frames.npy", "index.csv", "labels.npy")}

    def no_work(job):
        raise AssertionError("a finished cache must not be rebuilt")

    monkeypatch.setattr(prep, "run_shard", no_work)
    assert prepare(CremaD, pristine.root, built.parent.parent, options(pristine), log=quiet) == built
    monkeypatch.undo()
    assert prepare(CremaD, pristine.root, built.parent.parent, options(pristine, force=True), log=quiet) == built
    assert {name: (built / name).read_bytes() for name in before} == before


def test_a_cache_from_an_earlier_audio_pipeline_is_refused_at_training_time(built, tmp_path):
    # The pipeline's recorded text is part of the cache hash, so prepare builds a new cache when the computation
    # changes; the run must not keep serving the old cache found under the root either.
    cache = tmp_path / built.name
    shutil.copytree(built, cache)
    manifest = json.loads((cache / "manifest.json").read_text(encoding="utf-8"))
    manifest["audio"]["follows"] = "an earlier description of the computation"
    (cache / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(CacheError, match=rf"{cache}: built by an earlier version of the '\w+' audio pipeline "
                                         r"\(recorded follows: 'an earlier description.*--force"):
        CremaD.build(resolve("data", CremaD.HPARAMS, "cremad", {"cache": str(cache)}))
    CremaD.build(resolve("data", CremaD.HPARAMS, "cremad", {"cache": str(built)}))


def test_changed_media_are_not_silently_reused(built, tree):
    wav = tree.root / "AudioWAV" / f"{first(tree)}.wav"
    wav.write_bytes(wav.read_bytes()[:-2000])
    # Same path and name, different content: the (size, mtime) fingerprint of the media catches it.
    with pytest.raises(PrepareError, match="different raw media.*--force"):
        prepare(CremaD, tree.root, built.parent.parent, options(tree), log=quiet)


def killed_before_rename(partial, final, log):
    """Stands in for ``publish_cache``: the build stops after its last shard, before the rename that publishes it."""
    raise KeyboardInterrupt


def test_interrupted_prepare_resumes_where_it_stopped(built, pristine, tmp_path, monkeypatch):
    calls = []

    def interrupted(pipeline, path, window=None):
        if len(calls) == 6:
            raise KeyboardInterrupt
        calls.append(path)
        return features_from_file(pipeline, path, window)

    monkeypatch.setattr(av, "features_from_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(CremaD, pristine.root, tmp_path, options(pristine), log=quiet)
    (partial,) = (tmp_path / "cremad").glob("ogm-*.partial")
    assert sorted(p.name for p in (partial / "shards").iterdir() if (p / "DONE").is_file()) == ["00000"]
    hp = resolve("data", CremaD.HPARAMS, "cremad", {"cache_dir": str(tmp_path), "recipe": "ogm"})
    with pytest.raises(FileNotFoundError, match="augbench prepare cremad"):
        CremaD.build(hp)

    calls.clear()
    monkeypatch.setattr(av, "features_from_file", lambda pipeline, path, window=None: calls.append(path) or
                        features_from_file(pipeline, path, window))
    real_publish = prep.publish_cache
    monkeypatch.setattr(prep, "publish_cache", killed_before_rename)
    with pytest.raises(KeyboardInterrupt):
        prepare(CremaD, pristine.root, tmp_path, options(pristine), log=quiet)
    assert len(calls) == 18 - 4, "only the unfinished shards are extracted again"
    assert (partial / "DONE").is_file() and not partial.with_name(partial.name.removesuffix(".partial")).exists()

    monkeypatch.setattr(prep, "publish_cache", real_publish)
    monkeypatch.setattr(prep, "run_shard", lambda job: pytest.fail("a complete build is only renamed"))
    path = prepare(CremaD, pristine.root, tmp_path, options(pristine), log=quiet)
    assert path.name == built.name and not partial.exists() and not (path / "shards").exists()
    for name in ("audio.npy", "frames.npy", "index.csv", "labels.npy"):
        assert (path / name).read_bytes() == (built / name).read_bytes()


def test_a_complete_build_left_unrenamed_is_not_published_after_its_media_changed(tree, tmp_path, monkeypatch):
    loaded = []
    stub_extraction(monkeypatch, loaded=loaded)
    real_publish = prep.publish_cache
    monkeypatch.setattr(prep, "publish_cache", killed_before_rename)
    with pytest.raises(KeyboardInterrupt):
        prepare(CremaD, tree.root, tmp_path, options(tree), log=quiet)
    (partial,) = (tmp_path / "cremad").glob("ogm-*.partial")
    old = json.loads((partial / "manifest.json").read_text())["raw_fingerprint"]
    wav = tree.root / "AudioWAV" / f"{first(tree)}.wav"
    wav.write_bytes(wav.read_bytes() + b"\0\0")  # the clip was replaced after that build
    monkeypatch.setattr(prep, "publish_cache", real_publish)
    loaded.clear()
    path = prepare(CremaD, tree.root, tmp_path, options(tree), log=quiet)
    assert sorted(loaded) == sorted(tree.ids("train") + tree.ids("test")), "every clip is extracted again"
    assert open_cache(path).manifest["raw_fingerprint"] != old


def test_media_files_keep_their_fingerprint(built, pristine):
    # The (path, size, mtime) line per media file is what every cache built from files already recorded.
    index = open_cache(built).index
    digest = hashlib.sha256()
    for rel in sorted({*index["audio_path"], *index["visual_path"]}):
        st = (pristine.root / rel).stat()
        digest.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    assert open_cache(built).manifest["raw_fingerprint"] == digest.hexdigest()


def test_a_frame_rewritten_inside_its_folder_is_noticed(tmp_path):
    tree = make_cremad(tmp_path / "raw", train_per_class=1, test_per_class=1, visual="frames")
    path = prepare(CremaD, tree.root, tmp_path / "cache", options(tree), log=quiet)
    folder = tree.root / open_cache(path).index["visual_path"][0]
    folder_times = folder.stat()
    frame = sorted(folder.iterdir())[0]
    frame.write_bytes(frame.read_bytes())
    os.utime(frame, ns=(frame.stat().st_atime_ns, frame.stat().st_mtime_ns + 10**9))
    # Rewriting a file in place leaves its folder's mtime as it was.
    os.utime(folder, ns=(folder_times.st_atime_ns, folder_times.st_mtime_ns))
    with pytest.raises(PrepareError, match="different raw media.*--force"):
        prepare(CremaD, tree.root, tmp_path / "cache", options(tree), log=quiet)


def interrupt_after(monkeypatch, clips: int) -> None:
    """Make extraction stop with KeyboardInterrupt after ``clips`` clips, as a killed prepare does."""
    calls = []

    def interrupted(pipeline, path, window=None):
        if len(calls) == clips:
            raise KeyboardInterrupt
        calls.append(path)
        return features_from_file(pipeline, path, window)

    monkeypatch.setattr(av, "features_from_file", interrupted)


def test_resuming_with_another_shard_size_starts_over(built, pristine, tmp_path, monkeypatch):
    # Shards of 2 finished 00000 and 00001; with shards of 4 those folders would stand for samples 0-7.
    interrupt_after(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        prepare(CremaD, pristine.root, tmp_path, options(pristine, shard_size=2), log=quiet)
    monkeypatch.undo()
    lines = []
    path = prepare(CremaD, pristine.root, tmp_path, options(pristine), log=lines.append)
    assert any("discarding an unfinished build made with other inputs" in line for line in lines)
    assert open_cache(path).manifest["counts"]["total"] == 18
    for name in ("audio.npy", "frames.npy", "index.csv", "labels.npy"):
        assert (path / name).read_bytes() == (built / name).read_bytes()


def test_a_finished_shard_holding_other_samples_is_refused(pristine, tmp_path, monkeypatch):
    interrupt_after(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        prepare(CremaD, pristine.root, tmp_path, options(pristine), log=quiet)
    monkeypatch.undo()
    (shard,) = (tmp_path / "cremad").glob("ogm-*.partial/shards/00000")
    meta = json.loads((shard / "meta.json").read_text(encoding="utf-8"))
    (shard / "meta.json").write_text(json.dumps([{**entry, "pos": entry["pos"] + 4} for entry in meta]))
    where = re.escape(f"{shard / 'meta.json'}")
    with pytest.raises(PrepareError, match=where + r": holds the results of samples 4..7 \(4\), but this build's "
                                                   r"shard 00000 is samples 0..3 \(4\).*--force"):
        prepare(CremaD, pristine.root, tmp_path, options(pristine), log=quiet)


@pytest.mark.parametrize("naming", ["ogm", "mmpareto"])
def test_extracted_frame_folders_in_either_naming(tmp_path, naming):
    tree = make_cremad(tmp_path / "raw", train_per_class=2, test_per_class=1, visual="frames", naming=naming)
    path = prepare(CremaD, tree.root, tmp_path / "cache", options(tree), log=quiet)
    cache = open_cache(path)
    assert cache.manifest["visual"]["source"] == "frames"
    for row, clip_id in enumerate(cache.index["id"]):
        start, count = cache.index["frame_start"][row], cache.index["frame_count"][row]
        assert count == tree.frames[clip_id]
        reds = cache.arrays["frames"][start:start + count, ..., 0].mean(axis=(1, 2))
        np.testing.assert_allclose(reds, [second_level(k) for k in range(count)], atol=5)


def test_frame_folders_of_another_layout_make_another_cache(tmp_path):
    tree = make_cremad(tmp_path / "raw", train_per_class=1, test_per_class=1, visual="frames")
    shutil.copytree(tree.root / "Image-01-FPS", tree.root / "Image-01-FPS-SE")
    own = prepare(CremaD, tree.root, tmp_path / "cache", options(tree), log=quiet)
    other = prepare(CremaD, tree.root, tmp_path / "cache", options(tree, layout={"frames_dir": "Image-01-FPS-SE"}),
                    log=quiet)
    assert other != own and (own / "DONE").is_file()
    assert open_cache(other).index["visual_path"][0].startswith("Image-01-FPS-SE/")
    # Naming the dataset's own folder is its own layout: the same cache.
    assert prepare(CremaD, tree.root, tmp_path / "cache", options(tree, layout={"frames_dir": "Image-01-FPS"}),
                   log=quiet) == own


def test_the_default_layout_keeps_the_cache_name(built):
    # The name this tree's cache had before the layout was hashed: a change would orphan every existing cache.
    assert built.name == "ogm-34e9ac14"


def test_frames_of_another_aspect_ratio_than_the_stored_one_are_counted(tmp_path):
    # 16:9 frame folders stored at the 4:3 (24, 32): every clip's frames are squeezed, and the manifest says so.
    tree = make_cremad(tmp_path / "raw", train_per_class=2, test_per_class=1, visual="frames", size=(36, 64))
    m = open_cache(prepare(CremaD, tree.root, tmp_path / "cache", options(tree), log=quiet)).manifest
    assert m["counts"]["source_frame_sizes"] == {"36x64": 18} and m["counts"]["other_aspect_clips"] == 18
    assert "other_aspect_clips 18" in manifest_summary(m) and "2%" in m["policies"]["frame_resize"]


def test_fps_other_than_the_frame_folders_rate_is_refused_not_just_recorded(tmp_path):
    # Image-01-FPS holds 1 fps frames: --fps 2 would be written to the manifest while 1 fps frames are stored.
    tree = make_cremad(tmp_path / "raw", train_per_class=2, test_per_class=1, visual="frames")
    with pytest.raises(ValueError, match=r"--fps 2: the frames come from .*Image-01-FPS.*--visual video"):
        prepare(CremaD, tree.root, tmp_path / "cache", options(tree, frames_per_second=2), log=quiet)


def test_fps_with_frame_folders_whose_name_states_no_rate_is_refused(tmp_path):
    # Such folders are read as extracted and taken as 1 fps: --fps 2 would be recorded, not applied.
    tree = make_cremad(tmp_path / "raw", train_per_class=1, test_per_class=1, visual="frames")
    shutil.move(tree.root / "Image-01-FPS", tree.root / "frames")
    with pytest.raises(ValueError, match=r"--fps 2: the frames come from .*frames, which is taken to hold 1 frame "
                                         r"per second \(its name states no rate.*--visual video"):
        prepare(CremaD, tree.root, tmp_path / "cache",
                options(tree, frames_per_second=2, layout={"frames_dir": "frames"}), log=quiet)


def test_the_rate_may_be_stated_by_any_part_of_the_frame_folder_path_in_either_case():
    av.check_folder_rate(Path("raw/Image-02-FPS/train"), 2)
    av.check_folder_rate(Path("raw/image-02-fps"), 2)
    av.check_folder_rate(Path("raw/Image-01-FPS-SE"), 1)
    with pytest.raises(ValueError, match="holds 1 frame"):
        av.check_folder_rate(Path("raw/Image-01-FPS/train"), 2)


def test_a_dangling_link_in_a_frame_folder_is_fingerprinted_not_fatal(tmp_path):
    folder = tmp_path / "Image-01-FPS" / "clip"
    folder.mkdir(parents=True)
    (folder / "00001.jpg").write_bytes(b"x")
    (folder / "00002.jpg").symlink_to(tmp_path / "gone.jpg")
    record = Record(0, Sample("clip", "train", 0, "NEU", "train.csv:1"), {"visual": "Image-01-FPS/clip"})
    assert len(prep.media_fingerprint(tmp_path, [record])) == 64


def test_a_frame_whose_link_is_dangling_is_a_bad_item_not_a_shorter_clip(tmp_path):
    tree = make_cremad(tmp_path / "raw", train_per_class=2, test_per_class=1, visual="frames")
    victim = tree.ids("train")[0]
    frame = tree.root / "Image-01-FPS" / victim / "00010.jpg"
    frame.unlink()
    frame.symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(PrepareError, match=f"train.csv:1 \\({victim}\\).*00010.jpg.*image missing"):
        prepare(CremaD, tree.root, tmp_path / "cache", options(tree), log=quiet)
    cache = open_cache(prepare(CremaD, tree.root, tmp_path / "cache", options(tree, skip_bad=True), log=quiet))
    assert cache.manifest["dropped"]["by_reason"] == {"missing media": 1} and victim not in set(cache.index["id"])


def test_corrupt_frame_in_a_folder_is_a_bad_item(tmp_path):
    tree = make_cremad(tmp_path / "raw", train_per_class=2, test_per_class=1, visual="frames")
    victim = tree.ids("train")[0]
    (tree.root / "Image-01-FPS" / victim / "00010.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(PrepareError, match=f"train.csv:1 \\({victim}\\).*00010.jpg"):
        prepare(CremaD, tree.root, tmp_path / "cache", options(tree), log=quiet)
    cache = open_cache(prepare(CremaD, tree.root, tmp_path / "cache", options(tree, skip_bad=True), log=quiet))
    assert cache.manifest["dropped"]["by_reason"] == {"corrupt image": 1} and victim not in set(cache.index["id"])
    # The bad frame is found only by extracting, which a reuse skips: the cache built with --skip-bad is not served to
    # a prepare whose policy would have refused it.
    with pytest.raises(PrepareError, match=r"lacks 1 bad item\(s\) \(listed in .*dropped.csv\), dropped by the "
                                           r"--skip-bad build"):
        prepare(CremaD, tree.root, tmp_path / "cache", options(tree), log=quiet)
    with pytest.raises(PrepareError, match="more than --max-drop-fraction 0.05 of 18 rows"):
        prepare(CremaD, tree.root, tmp_path / "cache", options(tree, skip_bad=True, max_drop_fraction=0.05),
                log=quiet)
    assert prepare(CremaD, tree.root, tmp_path / "cache", options(tree, skip_bad=True, max_drop_fraction=0.06),
                   log=quiet) == cache.path


# --- bad input ---------------------------------------------------------------------------------------------------

def first(tree, split="train") -> str:
    """The clip the bad-input cases break: the first train clip (its class keeps another train clip)."""
    return tree.ids(split)[0]


def break_missing(tree):
    (tree.root / "AudioWAV" / f"{first(tree)}.wav").unlink()
    return "missing media", f"{first(tree)}.wav", {}


def break_corrupt_wav(tree):
    (tree.root / "AudioWAV" / f"{first(tree)}.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage" * 4)
    return "corrupt audio", f"{first(tree)}.wav", {}


def break_corrupt_flv(tree):
    (tree.root / "VideoFlash" / f"{first(tree)}.flv").write_bytes(b"FLV\x01\x05" + bytes(range(256)) * 8)
    return "corrupt video", f"{first(tree)}.flv", {}


def break_lfs_pointer(tree):
    write_lfs_pointer(tree.root / "VideoFlash" / f"{first(tree)}.flv")
    return "lfs pointer", f"{first(tree)}.flv", {}


def break_unknown_label(tree):
    rows = [f"{i},{'XYZ' if i == first(tree) else e}" for i, e in tree.clips["train"]]
    write_lines(tree.splits_dir / "train.csv", rows, crlf=True)
    return "unknown label", "train.csv:1", {}


def break_too_few_frames(tree):
    # 0.2 s at 10 fps: one frame at 1 fps, while every other clip has at least 2.
    write_video(tree.root / "VideoFlash" / f"{first(tree)}.flv", 0.2, 10, 50, (48, 64))
    return "too few frames", f"{first(tree)}.flv", {"min_frames": 2}


BREAKS = [break_missing, break_corrupt_wav, break_corrupt_flv, break_lfs_pointer, break_unknown_label,
          break_too_few_frames]


@pytest.mark.parametrize("damage", BREAKS, ids=lambda f: f.__name__.removeprefix("break_"))
def test_bad_input_stops_with_a_clear_error_or_is_skipped_and_recorded(tree, tmp_path, damage, capsys):
    kind, needle, extra = damage(tree)
    with pytest.raises(PrepareError) as err:
        prepare(CremaD, tree.root, tmp_path / "cache", options(tree, **extra), log=quiet)
    assert needle in str(err.value) and first(tree) in str(err.value) and "--skip-bad" in str(err.value)
    leftovers = (tmp_path / "cache" / "cremad").glob("ogm-*")
    assert all(p.name.endswith(".partial") and not (p / "DONE").exists() for p in leftovers), \
        "an interrupted build never looks like a finished cache"

    path = prepare(CremaD, tree.root, tmp_path / "cache", options(tree, skip_bad=True, **extra), log=print)
    cache = open_cache(path)
    dropped = read_csv(path / "dropped.csv")
    assert [(d["id"], d["split"], d["reason"]) for d in dropped] == [(first(tree), "train", kind)]
    assert cache.manifest["dropped"] == {"total": 1, "bad": 1, "by_reason": {kind: 1}}
    assert cache.manifest["counts"]["total"] + len(dropped) == cache.manifest["counts"]["rows_read"] == 18
    assert first(tree) not in set(cache.index["id"])
    assert "dropped 1" in capsys.readouterr().out


def test_too_few_frames_follows_min_frames(tree, tmp_path):
    with pytest.raises(PrepareError, match="too few frames|fewer than min_frames 3"):
        prepare(CremaD, tree.root, tmp_path / "cache", options(tree, min_frames=3), log=quiet)


def test_an_empty_class_is_always_an_error(tree, tmp_path):
    rows = [f"{i},{e}" for i, e in tree.clips["test"] if e != "ANG"]
    write_lines(tree.splits_dir / "test.csv", rows, crlf=True)
    with pytest.raises(PrepareError, match=r"\['ANG'\] have no test samples"):
        prepare(CremaD, tree.root, tmp_path / "cache", options(tree, skip_bad=True), log=quiet)


def stub_extraction(monkeypatch, fail: str = "", loaded: list | None = None) -> None:
    """CREMA-D's ``load`` stood in for by blank arrays, ``fail`` a clip that cannot be decoded, ``loaded`` collecting
    the ids extracted: for the cases where only which clips extraction sees and keeps matters."""
    def load(cls, raw, record, settings):
        if loaded is not None:
            loaded.append(record.sample.id)
        if record.sample.id == fail:
            raise MediaError(raw / record.media["audio"], "corrupt audio", "cannot be decoded")
        audio = np.zeros(get_pipeline("ogm_stft3s").output_shape(), np.float16)
        return {"audio": audio, "frames": np.zeros((1, *FRAME, 3), np.uint8)}, \
            {"duration_s": 1.0, "short": False, "frames": 1, "source_size": None}
    monkeypatch.setattr(CremaD, "load", classmethod(load))


def test_a_duplicate_dropped_by_policy_is_counted_as_dropped_not_bad(tree, tmp_path, monkeypatch, capsys):
    stub_extraction(monkeypatch)
    rows = (tree.splits_dir / "test.csv").read_text().splitlines()
    write_lines(tree.splits_dir / "test.csv", rows + rows[:1], crlf=True)
    path = prepare(CremaD, tree.root, tmp_path / "cache", options(tree), log=print)
    manifest = open_cache(path).manifest
    assert manifest["dropped"] == {"total": 1, "bad": 0, "by_reason": {"duplicate id": 1}}
    assert manifest["counts"]["total"] == 18 and manifest["counts"]["rows_read"] == 19
    assert [(d["id"], d["split"], d["reason"], d["where"]) for d in read_csv(path / "dropped.csv")] == [
        (tree.ids("test")[0], "test", "duplicate id", "test.csv:7")]
    assert "dropped 1 (duplicate id 1)" in capsys.readouterr().out


def test_a_class_emptied_by_media_dropped_at_extraction_is_an_error(tmp_path, monkeypatch):
    # The media of the only ANG test clip exist but cannot be decoded: only extraction finds it bad, after the
    # split-file and media-location checks passed, and --skip-bad must not leave ANG unscored.
    tree = make_cremad(tmp_path / "raw", train_per_class=1, test_per_class=1, visual="frames")
    victim = next(i for i, e in tree.clips["test"] if e == "ANG")

    stub_extraction(monkeypatch, fail=victim)
    with pytest.raises(PrepareError, match=r"class\(es\) \['ANG'\] have no test samples"):
        prepare(CremaD, tree.root, tmp_path / "cache", options(tree, skip_bad=True), log=quiet)
    assert not [p for p in (tmp_path / "cache" / "cremad").glob("ogm-*") if (p / "DONE").exists()]


@pytest.mark.parametrize("skip_bad", [False, True])
def test_a_raw_folder_without_the_layout_says_so_not_fix_every_item(tree, tmp_path, skip_bad):
    # An empty or wrong --raw listed one missing video per clip and advised --skip-bad, which then failed with
    # "class(es) have no train samples".
    empty = tmp_path / "empty"
    empty.mkdir()
    # A repeated row is a policy drop, not a bad item: the check must not count it as an item read.
    rows = (tree.splits_dir / "train.csv").read_text().splitlines()
    write_lines(tree.splits_dir / "train.csv", rows + rows[-1:], crlf=True)
    with pytest.raises(PrepareError, match=f"no media found for any of the split files' rows: {empty} is not a cremad "
                                           "folder") as err:
        prepare(CremaD, empty, tmp_path / "cache", options(tree, skip_bad=skip_bad), log=quiet)
    assert "docs/datasets/README.md" in str(err.value) and "--skip-bad" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="docs/datasets/README.md links each dataset's page"):
        prepare(CremaD, tmp_path / "absent", tmp_path / "cache", options(tree), log=quiet)


def test_every_item_undecodable_in_the_right_folder_is_not_called_a_wrong_folder(tree, tmp_path):
    for path in (tree.root / "VideoFlash").glob("*.flv"):
        write_lfs_pointer(path)
    with pytest.raises(PrepareError, match="git lfs pull") as err:
        prepare(CremaD, tree.root, tmp_path / "cache", options(tree), log=quiet)
    assert "is not a cremad folder" not in str(err.value)


def test_a_right_folder_with_some_media_missing_and_the_rest_undecodable_lists_the_items(tree, tmp_path):
    # Only a folder where every item is missing is the wrong folder; one missing file among LFS pointers is damage.
    for path in (tree.root / "VideoFlash").glob("*.flv"):
        write_lfs_pointer(path)
    (tree.root / "AudioWAV" / f"{first(tree)}.wav").unlink()
    with pytest.raises(PrepareError, match="18 bad item") as err:
        prepare(CremaD, tree.root, tmp_path / "cache", options(tree), log=quiet)
    assert "is not a cremad folder" not in str(err.value) and f"{first(tree)}.wav" in str(err.value)


def test_max_drop_fraction(tree, tmp_path):
    break_missing(tree)
    with pytest.raises(PrepareError, match="max-drop-fraction"):
        prepare(CremaD, tree.root, tmp_path / "cache", options(tree, skip_bad=True, max_drop_fraction=0.01),
                log=quiet)


def test_max_drop_fraction_stops_only_above_the_fraction():
    bad = [Dropped(f"c{i}", "train", "missing media", "gone", f"train.csv:{i}", bad=True) for i in range(3)]
    opts = PrepareOptions(skip_bad=True, max_drop_fraction=0.1)
    prep.check_bad("cremad", bad[:2], 20, opts)  # 2 of 20 = exactly 0.1: kept
    with pytest.raises(PrepareError, match="more than --max-drop-fraction 0.1 of 20 rows"):
        prep.check_bad("cremad", bad, 20, opts)
    with pytest.raises(PrepareError, match="pass --skip-bad"):
        prep.check_bad("cremad", bad[:1], 20, PrepareOptions())


def test_validation_partition_must_be_exact(tree, tmp_path):
    val = tree.clips["val"]
    write_lines(tree.splits_dir / "val.csv", [f"{i},{e}" for i, e in val] + ["9999_XXX_NEU_XX,NEU"], crlf=False)
    with pytest.raises(PrepareError, match="partition train.csv exactly.*9999_XXX_NEU_XX"):
        prepare(CremaD, tree.root, tmp_path / "cache", options(tree), log=quiet)


def _cremad_split_files(folder: Path, my_train: list[str]) -> dict[str, Path]:
    rows = {"train.csv": ["1001_A_NEU_XX,NEU", "1002_A_HAP_XX,HAP", "1003_A_SAD_XX,SAD"],
            "test.csv": ["1004_A_NEU_XX,NEU"], "stat.csv": list(EMOTIONS), "my_train.csv": my_train,
            "val.csv": ["1003_A_SAD_XX,SAD"]}
    for name, lines in rows.items():
        write_lines(folder / name, lines, crlf=False)
    return {name: folder / name for name in rows}


@pytest.mark.parametrize("my_train,expected", [
    (["1001_A_NEU_XX,NEU", "1002_A_HAP_XX,ANG"], "1 row(s) whose label differs from train.csv's "
                                                 "(e.g. ['my_train.csv:2 1002_A_HAP_XX ANG but train.csv:2 HAP'])"),
    (["1001_A_NEU_XX,NEU", "1002_A_HAP_XX,HAP", "1001_A_NEU_XX,NEU"],
     "1 row(s) repeating an id in my_train.csv (e.g. ['my_train.csv:3 1001_A_NEU_XX (first on line 1)'])"),
    (["1001_A_NEU_XX,NEU"], "1 id(s) in train.csv but in neither my_train.csv nor val.csv (e.g. ['1002_A_HAP_XX'])"),
])
def test_validation_partition_rows_must_match_train_csv_once(tmp_path, my_train, expected):
    files = _cremad_split_files(tmp_path, my_train)
    with pytest.raises(PrepareError, match=re.escape(expected)):
        CremaD.read_splits(files, tmp_path, PrepareOptions(label_order="ogm"), None)


def test_other_label_orders(tree, tmp_path):
    path = prepare(CremaD, tree.root, tmp_path / "cache", options(tree, label_order="sorted"), log=quiet)
    cache = open_cache(path)
    assert cache.classes == tuple(sorted(EMOTIONS))
    assert [cache.classes[x] for x in cache.labels] == [i.split("_")[2] for i in cache.index["id"]]
    write_lines(tree.splits_dir / "stat.csv", ["ZER", "ONE"], crlf=True, bom=True)
    with pytest.raises(PrepareError, match="--label-order stat"):
        prepare(CremaD, tree.root, tmp_path / "cache", options(tree), log=quiet)


# --- the command line ---------------------------------------------------------------------------------------------

def test_cli_prepare_and_its_errors(tree, tmp_path, capsys):
    args = ["prepare", "cremad", "--raw", str(tree.root), "--splits", str(tree.splits_dir), "--out",
            str(tmp_path / "cache"), "--recipe", "ogm", "--frame-size", "24", "32", "--pad-mode", "reflect"]
    assert main(args) == 0
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads((path / "manifest.json").read_text())["audio"]["pad_mode"] == "reflect"
    break_lfs_pointer(tree)
    assert main(args + ["--force"]) == 2
    assert "git lfs pull" in capsys.readouterr().err
    assert main(["prepare", "cremad", "--raw", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2


def test_fbank_without_torchaudio_fails_before_any_work(tree, tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchaudio" else real_find_spec(name, *a))
    monkeypatch.setattr(prep, "fetch_split_files", lambda *a, **k: pytest.fail("no work before the check"))
    with pytest.raises(MissingExtraError, match=r"augbench\[audio\]"):
        prepare(CremaD, tree.root, tmp_path / "cache", options(tree, recipe="fbank"), log=quiet)


def test_audio_visual_caches_written_before_the_shared_writer_still_open(built, tmp_path):
    """Such caches list no arrays in the manifest and keep the frame offsets only in index.csv."""
    legacy = tmp_path / built.name
    shutil.copytree(built, legacy)
    manifest = json.loads((legacy / "manifest.json").read_text())
    del manifest["arrays"]
    (legacy / "manifest.json").write_text(json.dumps(manifest))
    for name in ("frames_start.npy", "frames_count.npy"):
        (legacy / name).unlink()
    old, new = open_cache(legacy), open_cache(built)
    assert sorted(old.arrays) == sorted(new.arrays) == ["audio", "frames"] and list(old.starts) == ["frames"]
    for name in ("audio", "frames"):
        np.testing.assert_array_equal(old.arrays[name], new.arrays[name])
    np.testing.assert_array_equal(old.starts["frames"], new.starts["frames"])
    np.testing.assert_array_equal(old.counts["frames"], new.index["frame_count"])


def test_missing_cache_names_the_prepare_command(tmp_path):
    hp = resolve("data", CremaD.HPARAMS, "cremad", {"cache_dir": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match=r"augbench prepare cremad --raw .* --out .* --recipe aug"):
        CremaD.build(hp)


DAMAGES = {
    "manifest.json": lambda path: path.write_text('{"format": 1, "arr'),
    "index.csv": lambda path: path.write_text(path.read_text().replace("\n1,", "\nnot-a-row,", 1)),
    "audio.npy": lambda path: path.write_bytes(path.read_bytes()[:1000]),
    "labels.npy": lambda path: path.write_bytes(path.read_bytes()[:140]),
    "splits/test.npy": lambda path: path.unlink(),
}


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_a_damaged_cache_file_is_a_one_line_error_naming_it(built, tmp_path, capsys, name):
    cache = tmp_path / built.name
    shutil.copytree(built, cache)
    DAMAGES[name](cache / name)
    if name == "splits/test.npy":  # the folder opens, but there is no test split to serve
        expected = rf"{cache / name}: no 'test' split to serve \(the file is missing; prepare the cache again"
        shown = f"{cache / name}: no 'test' split to serve"
    else:
        expected = rf"{cache / name} is damaged \(.*\); prepare the cache again with --force"
        shown = f"{cache / name} is damaged"
    with pytest.raises(CacheError, match=expected):
        CremaD.build(resolve("data", CremaD.HPARAMS, "cremad", {"cache": str(cache)}))
    run = tmp_path / "run"
    assert main(["train", "--method", "joint", "--dataset", "cremad", "--set", f"data.cache={cache}",
                 "--run-dir", str(run), "--wandb", "disabled", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and shown in err, err


class _Hashed(Exception):
    pass


def cache_name_of(monkeypatch, dataset, raw: Path, opts: PrepareOptions, root: Path) -> str:
    """The options hash that names the cache ``prepare`` would build, without extracting anything."""
    real = prep.options_hash

    def stop(options):
        raise _Hashed(real(options))
    monkeypatch.setattr(prep, "options_hash", stop)
    with pytest.raises(_Hashed) as got:
        prepare(dataset, raw, root, opts, log=quiet)
    monkeypatch.setattr(prep, "options_hash", real)
    return str(got.value)


def test_every_input_that_changes_the_samples_or_splits_names_another_cache(pristine, tmp_path, monkeypatch):
    # A finished cache with the same name is reused as is: an input left out of the name would serve the old rows.
    root = tmp_path / "cache"
    base = cache_name_of(monkeypatch, CremaD, pristine.root, options(pristine), root)
    assert cache_name_of(monkeypatch, CremaD, pristine.root, options(pristine), root) == base
    assert cache_name_of(monkeypatch, CremaD, pristine.root, options(pristine, duplicates="last"), root) != base
    edited = tmp_path / "splits"
    shutil.copytree(pristine.splits_dir, edited)
    rows = (edited / "test.csv").read_bytes().splitlines(keepends=True)
    (edited / "test.csv").write_bytes(b"".join(rows[::-1]))  # same rows, other bytes: another list file
    assert cache_name_of(monkeypatch, CremaD, pristine.root, options(pristine, splits_dir=edited), root) != base
    # Without a published validation list the hold-out's fraction and seed choose the val rows.
    tree = make_vggsound(tmp_path / "raw", ("dog barking", "waterfall burbling"), seconds=0.5)
    opts = PrepareOptions(splits_dir=tree.splits_dir, frame_size=(12, 16))
    names = {cache_name_of(monkeypatch, VGGSound, tree.root, dataclasses.replace(opts, **kw), root)
             for kw in ({}, {"val_seed": 1}, {"val_fraction": 0.5})}
    assert len(names) == 3


def test_an_empty_validation_split_is_left_out_and_recorded(tmp_path):
    tree = make_vggsound(tmp_path / "raw", ("dog barking", "waterfall burbling"), seconds=1.0)
    opts = PrepareOptions(splits_dir=tree.splits_dir, frame_size=(12, 16), val_fraction=0.0)
    path = prepare(VGGSound, tree.root, tmp_path / "cache", opts, log=quiet)
    cache = open_cache(path)
    assert cache.manifest["empty_splits"] == ["val"] and "val" not in cache.splits
    assert cache.manifest["val"] == {"fraction": 0.0, "seed": 0} and "val" not in cache.manifest["counts"]["splits"]
    hp = resolve("data", VGGSound.HPARAMS, "vggsound", {"cache": str(path)})
    assert sorted(VGGSound.build(hp).splits) == ["test", "train"]
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        prepare(VGGSound, tree.root, tmp_path / "cache", dataclasses.replace(opts, val_fraction=1.0), log=quiet)


# --- the other datasets ------------------------------------------------------------------------------------------

def test_kinetics_sounds_labels_follow_ks_json_and_val_is_a_recorded_holdout(tmp_path):
    tree = make_kinetics_sounds(tmp_path / "raw", KineticsSounds.CLASSES)
    missing = tree.ids("train")[5]
    shutil.rmtree(tree.root / "Image-01-FPS" / missing)
    opts = PrepareOptions(splits_dir=tree.splits_dir, frame_size=(12, 16), audio={"seconds": 1.0},
                          val_fraction=0.5, val_seed=3, skip_bad=True, shard_size=32)
    cache = open_cache(prepare(KineticsSounds, tree.root, tmp_path / "cache", opts, log=quiet))
    m = cache.manifest
    assert m["dropped"]["by_reason"] == {"missing media": 1} and missing not in set(cache.index["id"])
    expected = dict(tree.clips["train"] + tree.clips["test"])
    assert [int(expected[i]) for i in cache.index["id"]] == cache.labels.tolist()
    assert m["classes"] == list(KineticsSounds.CLASSES) and m["val"] == {"fraction": 0.5, "seed": 3}
    val, fit = cache.splits["val"], cache.splits["train_noval"]
    assert not set(val) & set(fit) and set(val) | set(fit) == set(cache.splits["train"])
    # The hold-out is drawn from the split file's rows before media checks, so a missing download never reshuffles
    # it: one clip per class (fraction 0.5 of 2), minus the missing clip if it was drawn.
    labels = np.asarray([int(lab) for _, lab in tree.clips["train"]])
    _, held = stratified_holdout(np.arange(len(labels)), labels, 0.5, 3)
    expected_val = [tree.ids("train")[i] for i in held if tree.ids("train")[i] != missing]
    assert list(cache.index["id"][val]) == expected_val and len(held) == 31
    assert cache.arrays["audio"].shape[1:] == (257, 101) and cache.index["frame_count"].tolist() == [4] * len(cache)


def test_ave_audio_from_the_mp4_first_appearance_labels_and_duplicates(tmp_path):
    tree = make_ave(tmp_path / "raw", AVE.CLASSES)
    opts = PrepareOptions(splits_dir=tree.splits_dir, frame_size=(12, 16), audio={"seconds": 1.0}, shard_size=32)
    cache = open_cache(prepare(AVE, tree.root, tmp_path / "cache", opts, log=quiet))
    m = cache.manifest
    assert m["classes"] == list(AVE.CLASSES) and "testSet.txt" in m["info"]["label_map_source"]
    assert {s: v["n"] for s, v in m["counts"]["splits"].items()} == {"train": 28, "val": 28, "test": 28,
                                                                     "train_noval": 28}
    dropped = read_csv(cache.path / "dropped.csv")
    assert [(d["id"], d["reason"]) for d in dropped] == [(tree.ids("train")[0], "duplicate id")]
    assert m["info"]["rows"]["trainSet.txt"] == {"lines": 29, "unique_ids": 28, "repeated_ids": 1}
    # every line read is kept or dropped, the duplicate dropped by policy included; 'first' keeps the first label
    assert m["counts"]["rows_read"] == 29 + 28 + 28 and m["counts"]["total"] == 84 and m["dropped"]["total"] == 1
    train_row = int(np.flatnonzero((cache.index["id"] == tree.ids("train")[0]) & (cache.index["split"] == "train"))[0])
    assert cache.labels[train_row] == 0
    test_rows = cache.splits["test"]
    assert cache.labels[test_rows].tolist() == list(range(28))
    assert m["layout"]["audio_dir"] is None and cache.index["audio_path"][0].startswith("AVE/")
    audio = cache.arrays["audio"]
    assert np.isfinite(audio[:].astype(np.float32)).all() and audio.shape[1:] == (257, 98)


def test_ave_pmr_recipe_stores_each_rows_event_segment_and_ogm_the_whole_clip(tmp_path):
    # PMR and AMSS read Audio-1004-SE / Image-01-FPS-SE: audio of seconds [Start, End) tiled, frames of Start..End,
    # topped up to 10 from the frames of seconds [Start, End) (at the fixture's 2 fps: the second frame of each).
    tree = make_ave(tmp_path / "raw", AVE.CLASSES, seconds=6.0, train_dup=False)
    test = tree.splits_dir / "testSet.txt"
    lines = test.read_text().splitlines()
    lines[0] = lines[0].replace("&0&10", "&2&4")
    lines[1] = lines[1].replace("&0&10", "&3&3")  # Start == End: the one second at Start
    test.write_text("\n".join(lines) + "\n")
    opts = PrepareOptions(splits_dir=tree.splits_dir, frame_size=(12, 16), shard_size=32)
    event = open_cache(prepare(AVE, tree.root, tmp_path / "cache", opts, log=quiet))
    whole = open_cache(prepare(AVE, tree.root, tmp_path / "cache", dataclasses.replace(opts, recipe="ogm"),
                               log=quiet))
    assert event.manifest["policies"]["segment"].startswith("each row's annotated event")
    assert event.manifest["info"]["segments"]["testSet.txt"] == {"shorter_than_clip": 2,
                                                                 "start_equals_end_read_as_one_second": 1}
    first, second = tree.ids("test")[:2]
    rows = {clip: int(np.flatnonzero(event.index["id"] == clip)[0]) for clip in (first, second)}
    assert event.index["frame_count"][rows[first]] == 5 and event.index["frame_count"][rows[second]] == 2
    start = event.starts["frames"][rows[first]]
    reds = event.arrays["frames"][start:start + 5, :, :, 0].mean(axis=(1, 2))
    np.testing.assert_allclose(reds, [second_level(k) for k in (2, 2, 3, 3, 4)], atol=4)  # uint8 levels via a codec
    pipeline = audio_pipeline(event)
    path = tree.root / "AVE" / f"{first}.mp4"
    np.testing.assert_array_equal(event.arrays["audio"][rows[first]],
                                  features_from_file(pipeline, path, (2, 4))[0].astype(np.float16))
    assert not np.array_equal(event.arrays["audio"][rows[first]],
                              features_from_file(pipeline, path)[0].astype(np.float16))
    whole_rows = {clip: int(np.flatnonzero(whole.index["id"] == clip)[0]) for clip in (first, second)}
    assert whole.index["frame_count"][whole_rows[first]] == 6
    assert whole.manifest["policies"]["segment"] == "the whole clip"


def test_vggsound_quoted_labels_mp4_frame_folders_and_padded_names(tmp_path):
    labels = ("waterfall burbling", "people marching, parade", "dog barking")
    tree = make_vggsound(tmp_path / "raw", labels)
    clip = tree.ids("train")[1]
    ytid, start = clip.rsplit("_", 1)
    (tree.root / "audio" / f"{clip}.wav").rename(tree.root / "audio" / f"{ytid}_{int(start):06d}.wav")
    opts = PrepareOptions(splits_dir=tree.splits_dir, frame_size=(12, 16), shard_size=32)
    cache = open_cache(prepare(VGGSound, tree.root, tmp_path / "cache", opts, log=quiet))
    assert cache.classes == tuple(sorted(labels))
    assert cache.index["visual_path"][0].endswith(".mp4")
    assert cache.index["audio_path"][1] == f"audio/{ytid}_{int(start):06d}.wav"
    assert cache.manifest["served_audio_shape"] == [129, 626] and cache.arrays["audio"].shape[1:] == (129, 1251)
    hp = resolve("data", VGGSound.HPARAMS, "vggsound", {"cache": str(cache.path), "image_size": 8})
    batch = next(iter(VGGSound.build(hp).loader("test", batch_size=4, train=False, seed=0)))
    assert batch["audio"].shape == (3, 1, 129, 626) and batch["visual"].shape == (3, 3, 3, 8, 8)
    with pytest.raises(CacheError, match="holds dataset 'vggsound'"):
        CremaD.build(resolve("data", CremaD.HPARAMS, "cremad", {"cache": str(cache.path)}))


def test_vggsound_prepares_from_ogm_ges_tree_of_separate_train_and_test_folders(tmp_path):
    # OGM-GE dataset/VGGSoundDataset.py reads <split>-audios/<split>-set/<id>.wav and
    # <split>-videos/<split>-set-img/Image-01-FPS/<id>.mp4/; "{split}" in a layout folder names them.
    tree = make_vggsound(tmp_path / "raw", ("dog barking", "waterfall burbling"), seconds=1.0)
    opts = PrepareOptions(splits_dir=tree.splits_dir, frame_size=(12, 16), shard_size=32)
    flat = open_cache(prepare(VGGSound, tree.root, tmp_path / "cache", opts, log=quiet))
    for split in ("train", "test"):
        for clip in tree.ids(split):
            for old, new in ((f"audio/{clip}.wav", f"{split}-audios/{split}-set/{clip}.wav"),
                             (f"Image-01-FPS/{clip}.mp4", f"{split}-videos/{split}-set-img/Image-01-FPS/{clip}.mp4")):
                (tree.root / new).parent.mkdir(parents=True, exist_ok=True)
                (tree.root / old).rename(tree.root / new)
    layout = {"audio_dir": "{split}-audios/{split}-set", "frames_dir": "{split}-videos/{split}-set-img/Image-01-FPS"}
    split = open_cache(prepare(VGGSound, tree.root, tmp_path / "cache", dataclasses.replace(opts, layout=layout),
                               log=quiet))
    assert split.manifest["visual"]["source"] == "frames" and split.path != flat.path
    assert list(split.index["id"]) == list(flat.index["id"])
    test = int(np.flatnonzero(split.index["split"] == "test")[0])
    clip = split.index["id"][test]
    assert split.index["audio_path"][test] == f"test-audios/test-set/{clip}.wav"
    assert split.index["visual_path"][test] == f"test-videos/test-set-img/Image-01-FPS/{clip}.mp4"
    for name in ("audio", "frames"):
        assert np.array_equal(split.arrays[name], flat.arrays[name])


def test_ave_audio_dir_takes_the_extracted_wavs(tmp_path):
    tree = make_ave(tmp_path / "raw", AVE.CLASSES, train_dup=False)
    clip = tree.ids("test")[0]
    write_wav(tree.root / "Audios" / f"{clip}.wav", 1.0)
    opts = PrepareOptions(splits_dir=tree.splits_dir, layout={"audio_dir": "Audios"})
    settings = AVE.resolve_settings("pmr", {}, opts, tree.root)
    sample = Sample(clip, "test", 0, AVE.CLASSES[0], "testSet.txt:1", clip,
                    SplitRow(clip, AVE.CLASSES[0], 1, (AVE.CLASSES[0], clip, "good", "0", "10")))
    media, extra = AVE.locate(tree.root, sample, settings)
    assert media["audio"] == f"Audios/{clip}.wav" and extra == {"segment": (0, 10)}


@pytest.mark.parametrize("dataset, recipe, least", [(KineticsSounds, "aug", 4), (KineticsSounds, "fbank", 4),
                                                    (VGGSound, "ogm", 4), (CremaD, "fbank", 2), (CremaD, "ogm", 1)])
def test_recipes_keep_the_clips_their_loaders_keep(dataset, recipe, least, tmp_path, monkeypatch):
    # AMSS MyDataset.py / BalanceBenchmark KS_dataset.py / OGM-GE VGGSoundDataset.py: len(os.listdir(frames)) > 3;
    # BalanceBenchmark cremad_dataset.py: len(os.listdir(frames)) >= fps, fps 2 in its dataset_config.yaml.
    monkeypatch.setattr(av, "require_backend", lambda pipeline: None)  # fbank's torchaudio is not needed to resolve
    settings = dataset.resolve_settings(recipe, {}, PrepareOptions(visual="video"), tmp_path)
    assert settings.min_frames == least and settings.min_frames_from == "recipe"
    chosen = dataset.resolve_settings(recipe, {}, PrepareOptions(visual="video", min_frames=1), tmp_path)
    assert chosen.min_frames == 1 and chosen.min_frames_from == "--min-frames"


def test_a_cache_built_before_its_recipe_stored_event_segments_is_refused_at_training(tmp_path):
    tree = make_ave(tmp_path / "raw", AVE.CLASSES, train_dup=False)
    opts = PrepareOptions(splits_dir=tree.splits_dir, frame_size=(12, 16), audio={"seconds": 1.0}, shard_size=64)
    path = prepare(AVE, tree.root, tmp_path / "cache", opts, log=quiet)
    hp = resolve("data", AVE.HPARAMS, "ave", {"cache": str(path), "image_size": 8})
    AVE.build(hp)  # current: served
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["policies"]["segment"]  # as written before the recipe stored segments
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="built before recipe 'pmr' stored event segments; build the recipe's cache"):
        AVE.build(hp)


def test_the_event_segment_recipe_refuses_frame_folders_already_cut_to_segments(tmp_path):
    (tmp_path / "Image-01-FPS-SE").mkdir()
    opts = PrepareOptions(layout={"frames_dir": "Image-01-FPS-SE"}, visual="frames")
    with pytest.raises(ValueError, match="give the whole-clip frame folders .e.g. Image-01-FPS., not .Image-01-FPS-SE"):
        AVE.resolve_settings("pmr", {}, opts, tmp_path)
    assert AVE.resolve_settings("ogm", {}, opts, tmp_path).segment == "whole"


def test_an_old_cache_built_with_an_explicit_min_frames_is_kept(tmp_path):
    # Before the 4-frame rule the default was 1: a recorded 2 or 3 was chosen with --min-frames and stays valid.
    tree = make_kinetics_sounds(tmp_path / "raw", KineticsSounds.CLASSES, train_per_class=1)
    opts = PrepareOptions(splits_dir=tree.splits_dir, frame_size=(12, 16), audio={"seconds": 1.0}, min_frames=2,
                          shard_size=64)
    path = prepare(KineticsSounds, tree.root, tmp_path / "cache", opts, log=quiet)
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["policies"]["segment"], manifest["policies"]["min_frames_from"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    KineticsSounds.check_recipe_current(open_cache(path))
    manifest["policies"]["min_frames"] = 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="only clips of >= 4 frames"):
        KineticsSounds.check_recipe_current(open_cache(path))


def relabelled(path: Path, recipe: str, **policies) -> Cache:
    """The cache at ``path`` with its manifest's recipe and policies rewritten (a policy set to None is removed)."""
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["recipe"] = recipe
    manifest["policies"].update(policies)
    manifest["policies"] = {k: v for k, v in manifest["policies"].items() if v is not None}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return open_cache(path)


def test_a_cremad_fbank_cache_kept_by_the_old_1_frame_default_is_refused_at_training(tree, tmp_path):
    # fbank needs torchaudio, so an ogm cache stands in for it; only the manifest's recipe and policies are read.
    path = prepare(CremaD, tree.root, tmp_path / "cache", options(tree), log=quiet)
    policies = open_cache(path).manifest["policies"]
    assert (policies["min_frames"], policies["min_frames_from"]) == (1, "recipe")
    CremaD.check_recipe_current(open_cache(path))
    stale = "built before recipe 'fbank' stored only clips of >= 2 frames; build the recipe's cache"
    with pytest.raises(CacheError, match=stale):
        CremaD.check_recipe_current(relabelled(path, "fbank"))
    with pytest.raises(CacheError, match=stale + r".*keep its 1-frame minimum instead, prepare it again with "
                       r"--min-frames 1 --force"):  # a manifest from before min_frames_from, segment already recorded
        CremaD.check_recipe_current(relabelled(path, "fbank", min_frames_from=None))
    CremaD.check_recipe_current(relabelled(path, "fbank", min_frames=1, min_frames_from="--min-frames"))
    CremaD.check_recipe_current(relabelled(path, "fbank", min_frames=2, min_frames_from="recipe"))


def test_an_id_listed_in_train_and_test_is_counted_in_the_manifest_and_the_build_line(tmp_path):
    # A test clip that is also trained on inflates test accuracy; the split files allow it (AVE publishes a few), so
    # it is not an error, but it must not go unsaid.
    tree = make_cremad(tmp_path / "raw", train_per_class=1, test_per_class=1, visual="frames")
    leaked = tree.clips["train"][0]
    rows = [f"{i},{e}" for i, e in tree.clips["test"] + [leaked]]
    write_lines(tree.splits_dir / "test.csv", rows, crlf=True)
    lines = []
    cache = prepare(CremaD, tree.root, tmp_path / "cache", options(tree, val_fraction=0.0), log=lines.append)
    assert open_cache(cache).manifest["counts"]["ids_in_two_splits"] == {"train&test": 1}
    assert "ids_in_two_splits (train&test: 1)" in lines[-1]


def test_a_build_without_shared_ids_records_none(built):
    assert open_cache(built).manifest["counts"]["ids_in_two_splits"] == {}


def test_a_misspelt_label_that_empties_its_class_is_reported_as_the_bad_row(tmp_path):
    # With one test clip per class, a misspelt label leaves its class without test rows; the error must name the
    # row and its label, not only the class that came out empty.
    tree = make_cremad(tmp_path / "raw", train_per_class=1, test_per_class=1, visual="frames")
    first, label = tree.clips["test"][0]
    rows = [f"{first},{label.lower()}"] + [f"{i},{e}" for i, e in tree.clips["test"][1:]]
    write_lines(tree.splits_dir / "test.csv", rows, crlf=True)
    with pytest.raises(PrepareError, match=rf"test\.csv:1 {first}: unknown label '{label.lower()}'"):
        prepare(CremaD, tree.root, tmp_path / "cache", options(tree, val_fraction=0.0), log=quiet)
    # Dropping it with --skip-bad still leaves the class empty, which is then the error, with the row it dropped.
    with pytest.raises(PrepareError) as err:
        prepare(CremaD, tree.root, tmp_path / "cache", options(tree, val_fraction=0.0, skip_bad=True), log=quiet)
    assert f"test.csv:1 {first}: unknown label" in str(err.value) and "(dropped by --skip-bad)" in str(err.value)
    assert f"class(es) ['{label}'] have no test samples" in str(err.value)


def test_event_segment_at_two_frames_per_second_keeps_the_kept_frames_of_those_seconds(tmp_path):
    # 2 fps: the kept frames of the whole seconds Start..End (2, 3, 4), two per second, topped up to 10 with 4
    # frames of seconds [2, 4) (23, 28, 33, 38 at 10 fps), and audio [2, 4) s (under 1 s of it in a 4.5 s clip cut at
    # (4, 9) is reported short; its one kept frame, 40, gets the 4 frames after it, all the segment has).
    clip = "v0000000001"
    write_video(tmp_path / "AVE" / f"{clip}.mp4", 6.0, 10, 90, (24, 32), codec="mpeg4", audio_sr=16000)
    write_video(tmp_path / "AVE" / "short.mp4", 4.5, 10, 90, (24, 32), codec="mpeg4", audio_sr=16000)
    opts = PrepareOptions(frames_per_second=2, visual="video", frame_size=(12, 16))
    settings = AVE.resolve_settings("pmr", {}, opts, tmp_path)
    facts = []
    for name, (start, end), frames in ((clip, (2, 4), 10), ("short", (4, 9), 5)):
        row = SplitRow(name, AVE.CLASSES[0], 1, (AVE.CLASSES[0], name, "good", str(start), str(end)))
        sample = Sample(name, "test", 0, AVE.CLASSES[0], "testSet.txt:1", "", row)
        media, extra = AVE.locate(tmp_path, sample, settings)
        arrays, fact = AVE.load(tmp_path, Record(0, sample, media, extra), settings)
        assert len(arrays["frames"]) == fact["frames"] == frames
        facts.append(fact)
        if name == clip:
            reds = arrays["frames"][..., 0].mean(axis=(1, 2))
            np.testing.assert_allclose(reds, [second_level(k) for k in (2, 2, 2, 2, 3, 3, 3, 3, 4, 4)], atol=4)
    assert [f["short"] for f in facts] == [False, True]
    entries = AVE.manifest_entries(settings, facts, {"frames": 7})
    assert entries["counts"]["short_audio_clips"] == 1


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_audio_features_beyond_float16_are_a_bad_item_not_stored_as_inf(tmp_path, monkeypatch):
    settings = CremaD.resolve_settings("ogm", {}, PrepareOptions(visual="video"), tmp_path)
    monkeypatch.setattr(av, "features_from_file",
                        lambda pipeline, path, window: (np.full((257, 188), 7e4, np.float32), 3.0, False))
    record = Record(0, Sample("clip", "train", 0, "NEU", "train.csv:1"),
                    {"audio": "AudioWAV/clip.wav", "visual": "VideoFlash/clip.flv"})
    with pytest.raises(MediaError, match="features overflow float16") as err:
        CremaD.load(tmp_path, record, settings)
    assert err.value.kind == "corrupt audio"


def test_few_frame_clips_counts_every_clip_under_four_frames_one_frame_clips_included():
    assert av.few_frame_clips([1, 4, 2, 1, 9, 3, 2]) == {"1": 2, "2": 2, "3": 1}
    assert av.few_frame_clips([4, 5]) == {}


def test_validation_rows_come_from_train_only_even_when_an_id_is_also_a_test_id(tmp_path):
    # A custom split file may list a clip in train and test; holding it out of train must not put its test row in val.
    ids, split_of = ["a", "b", "a", "c"], np.asarray(["train", "train", "test", "test"])
    splits, empty = prep.write_split_records(tmp_path, ids, split_of, ("train", "test"), {"a"}, [], [])
    assert {name: rows.tolist() for name, rows in splits.items()} == {
        "train": [0, 1], "test": [2, 3], "val": [0], "train_noval": [1]}
    assert empty == [] and (tmp_path / "splits" / "val.txt").read_text() == "a\n"


def test_auto_visual_source_finds_split_frame_folders_of_either_split(tmp_path):
    # AMSS keeps test_img/Image-01-FPS apart from train_img/...: frames of one split present means frame folders.
    (tmp_path / "test_img" / "Image-01-FPS").mkdir(parents=True)
    opts = PrepareOptions(layout={"frames_dir": "{split}_img/Image-01-FPS"})
    assert KineticsSounds.resolve_settings("aug", {}, opts, tmp_path).visual == "frames"
    assert KineticsSounds.resolve_settings("aug", {}, PrepareOptions(), tmp_path).visual == "video"


# --- recipes with their own frame extraction ----------------------------------------------------------------------

def test_cremad_pmr_tops_up_the_videos_of_2_frames_to_3(tmp_path):
    # PMR extracts with video2frame_update(min_save_frame=3) and trains on 3 frames; a 1.3 s clip at 10 fps keeps
    # frames 0 and 10 at 1 fps and gets frame 6, the middle of the 11 frames not kept, which shows second 0.
    tree = make_cremad(tmp_path / "raw")
    path = prepare(CremaD, tree.root, tmp_path / "cache", options(tree, recipe="pmr"), log=quiet)
    cache = open_cache(path)
    topped = 0
    for row, clip_id in enumerate(cache.index["id"]):
        start, count = cache.index["frame_start"][row], cache.index["frame_count"][row]
        seconds = [0, 0, 1] if tree.frames[clip_id] == 2 else list(range(tree.frames[clip_id]))
        topped += tree.frames[clip_id] == 2
        assert count == len(seconds) >= 3
        clip = cache.arrays["frames"][start:start + count].astype(float)
        np.testing.assert_allclose(clip[..., 0].mean(axis=(1, 2)), [second_level(k) for k in seconds], atol=5)
    assert topped == 6, "the fixture must hold 2-frame clips"
    m = cache.manifest
    assert m["visual"]["extraction"]["name"] == "frames_1fps_min3" and "min_save_frame=3" in \
        m["visual"]["extraction"]["follows"]
    assert "topped up to 3 at extraction with evenly spaced frames" in m["policies"]["frame_top_up"]
    assert m["visual"]["second_boundaries"].startswith("int(average frame rate)")
    assert any("unseeded np.random.randint" in d for d in m["deviations"])
    CremaD.build(resolve("data", CremaD.HPARAMS, "cremad", {"cache": str(path), "frames": 3}))


def test_a_cremad_pmr_cache_of_videos_extracted_before_the_top_up_is_renamed_and_refused(tree, tmp_path):
    opts = PrepareOptions(visual="video")
    pmr = CremaD.resolve_settings("pmr", {}, opts, tree.root)
    ogm = CremaD.resolve_settings("ogm", {}, opts, tree.root)
    # The rule is part of the cache options, so prepare builds a new folder rather than reusing the old cache...
    assert CremaD.cache_options(pmr, ())["visual"] == {**CremaD.cache_options(ogm, ())["visual"],
                                                       "extraction": "frames_1fps_min3"}
    # ...and frame folders, which no rule re-extracts, keep the name they had.
    folders = CremaD.resolve_settings("pmr", {}, PrepareOptions(visual="frames"), tree.root)
    assert "extraction" not in CremaD.cache_options(folders, ())["visual"]
    # An old cache still found under the root is refused at training instead of served.
    path = prepare(CremaD, tree.root, tmp_path / "cache", options(tree, recipe="pmr"), log=quiet)
    CremaD.check_recipe_current(open_cache(path))
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["visual"]["extraction"]  # as written before extraction rules were recorded
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match=r"its frames were chosen by 'frames_1fps', but recipe 'pmr' now extracts "
                                         r"'frames_1fps_min3'; build the recipe's cache again"):
        CremaD.build(resolve("data", CremaD.HPARAMS, "cremad", {"cache": str(path)}))
    manifest["visual"]["source"] = "frames"  # frame folders are read as extracted, whatever the recipe's rule
    (path / "manifest.json").write_text(json.dumps(manifest))
    CremaD.check_recipe_current(open_cache(path))


def test_ave_pmr_records_its_10_frame_top_up_and_refuses_a_cache_extracted_before_it(tmp_path):
    # 6 s at 2 fps, segment 0..10: frames 0, 2, ..., 10 kept, then 4 of the 6 others of the video's seconds 0-5.
    tree = make_ave(tmp_path / "raw", AVE.CLASSES, seconds=6.0, train_dup=False)
    opts = PrepareOptions(splits_dir=tree.splits_dir, frame_size=(12, 16), audio={"seconds": 1.0}, shard_size=64)
    pmr = AVE.resolve_settings("pmr", {}, dataclasses.replace(opts, visual="video"), tree.root)
    ogm = AVE.resolve_settings("ogm", {}, dataclasses.replace(opts, visual="video"), tree.root)
    assert AVE.cache_options(pmr, ())["visual"] == {**AVE.cache_options(ogm, ())["visual"],
                                                    "extraction": "frames_1fps_min10"}
    path = prepare(AVE, tree.root, tmp_path / "cache", opts, log=quiet)
    cache = open_cache(path)
    assert cache.index["frame_count"].tolist() == [10] * len(cache)
    m = cache.manifest
    assert m["visual"]["extraction"]["name"] == "frames_1fps_min10"
    assert "data/AVE/video_preprocessing.py, video2frame_update_SE(min_save_frame=10)" in \
        m["visual"]["extraction"]["follows"]
    assert m["policies"]["frame_top_up"].startswith("clips with fewer than 10 kept frames are topped up to 10 at "
                                                    "extraction with evenly spaced frames of the event segment's "
                                                    "seconds [Start, End) (PMR: random ones)")
    assert any("unseeded np.random.randint" in d and "Start == End" in d for d in m["deviations"])
    hp = resolve("data", AVE.HPARAMS, "ave", {"cache": str(path), "image_size": 8})
    AVE.build(hp)
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["visual"]["extraction"]  # as written before the recipe topped segments up
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match=r"its frames were chosen by 'frames_1fps', but recipe 'pmr' now extracts "
                                         r"'frames_1fps_min10'; build the recipe's cache again"):
        AVE.build(hp)


def test_kinetics_sounds_bml_stores_the_bml_spectrogram_and_the_middle_frame_of_each_second(tmp_path):
    # 2.5 s at 10 fps: round(2.5) = 2 seconds, frames 4 and 14 (frames_1fps would keep 0, 10 and 20).
    tree = make_kinetics_sounds(tmp_path / "raw", KineticsSounds.CLASSES, train_per_class=1, visual="video",
                                seconds=2.5)
    opts = PrepareOptions(recipe="bml", splits_dir=tree.splits_dir, frame_size=(12, 16), shard_size=64)
    path = prepare(KineticsSounds, tree.root, tmp_path / "cache", opts, log=quiet)
    cache = open_cache(path)
    assert cache.arrays["audio"].shape[1:] == (257, 1003) and cache.index["frame_count"].tolist() == [2] * len(cache)
    pipeline = get_pipeline("bml_stft10s_44k")
    for row in (0, len(cache) - 1):
        reference, _, _ = features_from_file(pipeline, tree.root / cache.index["audio_path"][row])
        np.testing.assert_allclose(cache.arrays["audio"][row].astype(np.float32), reference, rtol=1e-3, atol=1e-2)
        start = cache.index["frame_start"][row]
        frames, _ = extract_frames(tree.root / cache.index["visual_path"][row], (12, 16), extraction="frames_hdf5_mid")
        np.testing.assert_array_equal(cache.arrays["frames"][start:start + 2], frames)
    m = cache.manifest
    assert m["audio"]["name"] == "bml_stft10s_44k" and m["audio"]["repeat"] == "last_second"
    assert m["visual"]["extraction"]["name"] == "frames_hdf5_mid" and "int(duration * fps) + 1" in " ".join(
        m["deviations"])
    assert "round((i + 0.5) * fps) - 1" in m["visual"]["second_boundaries"]
    data = KineticsSounds.build(resolve("data", KineticsSounds.HPARAMS, "kinetics_sounds", {"cache": str(path)}))
    assert data.task.modalities[0].shape == (1, 257, 1003)


def test_the_bml_recipe_refuses_another_frame_rate_and_records_frame_folders_as_read(tmp_path):
    with pytest.raises(ValueError, match=r"recipe 'bml' stores the middle frame of each second .*--fps 2"):
        KineticsSounds.resolve_settings("bml", {}, PrepareOptions(visual="video", frames_per_second=2), tmp_path)
    folders = KineticsSounds.resolve_settings("bml", {}, PrepareOptions(visual="frames"), tmp_path)
    entries = KineticsSounds.manifest_entries(folders, [], {"frames": 0})
    assert entries["visual"]["extraction"]["name"] == "none" and "(--visual video)" in \
        entries["visual"]["extraction"]["follows"]
    assert not any("moviepy" in d for d in KineticsSounds.deviations(folders))


def test_frame_folders_read_as_extracted_get_no_rules_top_up_or_boundaries_in_the_manifest(tmp_path):
    # A rule applies to videos only: a pmr CREMA-D cache of frame folders is not topped up, and a bml one's seconds
    # are the folders' files, not AV_preprocess_tool's middle frames.
    pmr = CremaD.resolve_settings("pmr", {}, PrepareOptions(visual="frames"), tmp_path)
    assert CremaD.manifest_entries(pmr, [], {"frames": 0})["policies"]["frame_top_up"].startswith(
        "none at prepare time")
    bml = KineticsSounds.resolve_settings("bml", {}, PrepareOptions(visual="frames"), tmp_path)
    assert KineticsSounds.manifest_entries(bml, [], {"frames": 0})["visual"]["second_boundaries"].startswith(
        "int(average frame rate)")


def test_a_video_cache_of_a_recipe_without_a_rule_is_current(tmp_path):
    # A recipe naming no extraction extracts frames_1fps: its video caches, recorded or from before rules were
    # recorded, are served; only another recorded rule is refused.
    policies = {"segment": "the whole clip", "min_frames": 1, "min_frames_from": "--min-frames"}

    def cache(manifest):
        return Cache(tmp_path, manifest, {}, np.zeros(0), {}, {}, {}, {})

    for visual in ({"source": "video", "extraction": {"name": "frames_1fps"}}, {"source": "video"}):
        CremaD.check_recipe_current(cache({"recipe": "ogm", "visual": visual, "policies": policies}))
    with pytest.raises(CacheError, match="chosen by 'frames_1fps_min3', but recipe 'ogm' now extracts 'frames_1fps'"):
        CremaD.check_recipe_current(cache({"recipe": "ogm", "policies": policies, "visual": {
            "source": "video", "extraction": {"name": "frames_1fps_min3"}}}))


def test_an_event_segment_of_a_frame_folder_keeps_the_files_of_seconds_start_to_end(tmp_path):
    # Whole-clip Image-01-FPS folders cut at load: files of seconds 2 and 3 of a 6-file folder (Start..End included).
    write_frame_folder(tmp_path / "Image-01-FPS" / "clip", 6, 90, size=(12, 16))
    write_wav(tmp_path / "AVE" / "clip.wav", 6.0)
    settings = AVE.resolve_settings("pmr", {}, PrepareOptions(visual="frames", frame_size=(12, 16)), tmp_path)
    record = Record(0, Sample("clip", "test", 0, AVE.CLASSES[0], "testSet.txt:1"),
                    {"audio": "AVE/clip.wav", "visual": "Image-01-FPS/clip"}, {"segment": [2, 3]})
    arrays, fact = AVE.load(tmp_path, record, settings)
    np.testing.assert_allclose(arrays["frames"][..., 0].mean(axis=(1, 2)), [second_level(2), second_level(3)], atol=4)
    assert fact["frames"] == 2


@pytest.fixture
def fake_prepare(monkeypatch):
    """``prepare`` as ``augbench prepare`` calls it, replaced by one that records its arguments."""
    from benchmarks.commands import prepare as command

    calls = []

    def fake(dataset, raw, out, opts, settings):
        calls.append((dataset, raw, out, opts, settings))
        return out

    monkeypatch.setattr(command, "prepare", fake)
    return calls


def test_cli_prepare_passes_every_option(tmp_path, fake_prepare, capsys, monkeypatch):
    monkeypatch.delenv("AUG_BENCH_DATA", raising=False)
    assert main(["prepare", "cremad", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "cache"),
                 "--recipe", "ogm", "--splits", str(tmp_path / "splits"), "--splits-url", "https://mirror",
                 "--strict-splits", "--audio", "seconds=5", "--audio", "n_mels=[64]", "--audio", "note=",
                 "--pad-mode", "reflect", "--frame-size", "24", "32", "--fps", "2", "--visual", "frames",
                 "--audio-dir", "A/{split}", "--frames-dir", "F", "--min-frames", "3", "--label-order", "stat",
                 "--duplicates", "drop", "--val-fraction", "0.25", "--val-seed", "7", "--skip-bad",
                 "--max-drop-fraction", "0.5", "--force", "--workers", "2", "--shard-size", "9",
                 "--option", "tokenizer=bert", "--option", "max_len=16"]) == 0
    dataset, raw, out, opts, settings = fake_prepare[-1]
    assert dataset is CremaD and raw == tmp_path / "raw" and out == tmp_path / "cache"
    assert opts == PrepareOptions(
        recipe="ogm", audio={"seconds": 5, "n_mels": [64], "note": "", "pad_mode": "reflect"},
        layout={"audio_dir": "A/{split}", "frames_dir": "F"}, frame_size=(24, 32), frames_per_second=2,
        visual="frames", min_frames=3, label_order="stat", duplicates="drop", val_fraction=0.25, val_seed=7,
        skip_bad=True, max_drop_fraction=0.5, force=True, workers=2, shard_size=9,
        splits_dir=tmp_path / "splits", splits_url="https://mirror", strict_splits=True)
    assert settings == {"tokenizer": "bert", "max_len": 16}
    assert capsys.readouterr().out.strip() == str(tmp_path / "cache")

    monkeypatch.setenv("AUG_BENCH_DATA", str(tmp_path / "data"))
    assert main(["prepare", "cremad"]) == 0
    _, raw, out, opts, settings = fake_prepare[-1]
    assert raw == tmp_path / "data" / "cremad" and out is None and settings == {}
    assert opts == PrepareOptions(splits_url=opts.splits_url) and opts.splits_url.startswith("https://")


def test_cli_prepare_without_raw_or_aug_bench_data_names_both(tmp_path, fake_prepare, capsys, monkeypatch):
    monkeypatch.delenv("AUG_BENCH_DATA", raising=False)
    assert main(["prepare", "cremad"]) == 2
    assert "give --raw DIR (or set AUG_BENCH_DATA" in capsys.readouterr().err and not fake_prepare


@pytest.mark.parametrize("flag", ["--audio", "--option"])
@pytest.mark.parametrize("value", ["seconds", "=5", "seconds=[1"])
def test_cli_prepare_refuses_a_bad_assignment_naming_the_option_and_text(fake_prepare, capsys, flag, value):
    # A value that is not YAML ended in yaml's own message about "<unicode string>", naming neither.
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "cremad", "--raw", "raw", flag, value])
    assert exit_.value.code == 2 and not fake_prepare
    err = capsys.readouterr().err
    assert f"argument {flag}: " in err and repr(value) in err and "<unicode string>" not in err
