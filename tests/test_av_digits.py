"""AV-Digits generator (docs/datasets/av_digits.md): CREMA-D byte layout, speaker/image disjointness, markers,
determinism."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.hparams import HParamError
from datasets import av_digits, espeak

av = pytest.importorskip("av")
soundfile = pytest.importorskip("soundfile")
pytest.importorskip("espeakng_loader")
pytest.importorskip("sklearn")

SPLITS = Path(__file__).resolve().parents[2] / "shared" / "splits" / "cremad"
ID_RE = re.compile(r"^(\d{4})_([0-9A-Z]{3})_([A-Z]{3})_XX$")
OGM_MAP = {"NEU": 0, "HAP": 1, "SAD": 2, "FEA": 3, "DIS": 4, "ANG": 5}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return av_digits.generate(tmp_path_factory.mktemp("avd"), preset="tiny", seed=0)


def _meta(root: Path) -> list[dict[str, str]]:
    with open(root / "meta.csv", newline="") as f:
        return list(csv.DictReader(f))


def _rows(path: Path, newline: str) -> list[list[str]]:
    text = path.read_bytes().decode("utf-8")
    assert text.endswith(newline)
    return [line.split(",") for line in text[:-len(newline)].split(newline)]


# --- file layout and formats ------------------------------------------------------------------------------------------

def test_layout_and_wav_format(tiny):
    meta = _meta(tiny)
    assert len(meta) == 48 + 24
    for row in meta:
        info = soundfile.info(tiny / "AudioWAV" / f"{row['id']}.wav")
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        assert abs(info.frames / 16000 - float(row["duration_s"])) < 1e-3
        assert 1.3 - 1 / 60 <= float(row["duration_s"]) <= 3.0  # every clip >= 1 s (see docs/datasets/pitfalls.md)
        onset, utterance = float(row["onset_s"]), float(row["utterance_s"])
        assert onset >= 0 and onset + utterance <= float(row["duration_s"]) + 1e-4
    samples, _ = soundfile.read(tiny / "AudioWAV" / f"{meta[0]['id']}.wav", dtype="int16")
    start = round(float(meta[0]["onset_s"]) * 16000)
    speech = np.abs(samples[start:start + round(float(meta[0]["utterance_s"]) * 16000)].astype(int))
    assert speech.max() > 1000 and np.abs(samples[:start].astype(int)).max() == 0  # clean preset: silence around


def test_manifest_records_the_libraries_and_the_c_library_speech_depends_on(tiny):
    versions = json.loads((tiny / "manifest.json").read_text())["library_versions"]
    assert versions["numpy"] == np.__version__ and versions["av"] == av.__version__
    libc, libc_version = platform.libc_ver()
    assert versions["libc"] == (f"{libc} {libc_version}" if libc else "unknown")


def test_flv_is_flv1_160x120_with_one_frame_per_30th_second(tiny):
    for row in _meta(tiny)[:6]:
        with av.open(str(tiny / "VideoFlash" / f"{row['id']}.flv")) as container:
            assert container.format.name == "flv"
            video, audio = container.streams.video[0], container.streams.audio[0]
            assert video.codec_context.codec.canonical_name == "flv1"
            assert (video.codec_context.width, video.codec_context.height) == (160, 120)
            assert video.codec_context.pix_fmt == "yuv420p" and video.average_rate == 30
            assert audio.codec_context.codec.canonical_name == "mp3" and audio.sample_rate == 22050
            frames = list(container.decode(video=0))
        assert len(frames) == round(float(row["duration_s"]) * 30)
        assert frames[0].time == 0.0  # the MP3 priming delay must not shift the video


def test_stat_file_and_summary_header_equal_the_published_ones(tiny):
    if not ((SPLITS / "stat.csv").exists() and (SPLITS / "summaryTable.csv").exists()):
        pytest.skip("../shared/splits not present")
    assert (tiny / "annotations" / "stat.csv").read_bytes() == (SPLITS / "stat.csv").read_bytes()
    header = (tiny / "processedResults" / "summaryTable.csv").read_text().splitlines()[0]
    assert header == (SPLITS / "summaryTable.csv").read_text().splitlines()[0]


def test_split_file_bytes_match_ogm_ge_and_diagnosing_conventions(tiny):
    ann = tiny / "annotations"
    for name in ("train.csv", "test.csv"):
        data = (ann / name).read_bytes()
        assert not data.startswith(b"\xef\xbb\xbf") and data.endswith(b"\r\n")
        assert data.count(b"\n") == data.count(b"\r\n")  # CRLF only
        rows = _rows(ann / name, "\r\n")
        assert all(ID_RE.match(r[0]) and r[1] == r[0].split("_")[2] for r in rows)  # no header row
    stat = (ann / "stat.csv").read_bytes()
    assert stat == "\ufeffNEU\r\nHAP\r\nSAD\r\nFEA\r\nDIS\r\nANG\r\n".encode()
    for name in ("my_train.csv", "val.csv"):
        data = (ann / name).read_bytes()
        assert b"\r" not in data and not data.startswith(b"\xef\xbb\xbf") and data.endswith(b"\n")
        assert all(ID_RE.match(r[0]) for r in _rows(ann / name, "\n"))
    table = (tiny / "processedResults" / "summaryTable.csv").read_bytes()
    assert b"\r" not in table
    header, *rows = table.decode().splitlines()
    assert header == av_digits.SUMMARY_HEADER
    parsed = list(csv.reader(io.StringIO("\n".join(rows))))
    assert [r[1] for r in parsed] == sorted(r["id"] for r in _meta(tiny))
    assert all(r[0] == str(i + 1) and r[2:] == [""] * 6 for i, r in enumerate(parsed))


# --- disjointness, ids, labels ----------------------------------------------------------------------------------------

def test_speakers_and_voices_are_disjoint_across_splits(tiny):
    ann = tiny / "annotations"
    ids = {name: [r[0] for r in _rows(ann / f"{name}.csv", "\r\n" if name in ("train", "test") else "\n")]
           for name in ("train", "test", "my_train", "val")}
    speaker = {name: {i[:4] for i in rows} for name, rows in ids.items()}
    assert speaker["train"].isdisjoint(speaker["test"]) and speaker["my_train"].isdisjoint(speaker["val"])
    assert sorted(ids["my_train"] + ids["val"]) == sorted(ids["train"])  # an exact partition
    assert len(set(ids["train"])) == len(ids["train"]) == 48 and len(ids["test"]) == 24
    with open(tiny / "speakers.csv", newline="") as f:
        speakers = list(csv.DictReader(f))
    pairs = {s: {(r["voice"], r["variant"]) for r in speakers if r["split"] == s} for s in ("train", "test")}
    assert pairs["train"].isdisjoint(pairs["test"])
    assert {r["speaker"] for r in speakers if r["clean_split"] == "val"} == speaker["val"]


def test_image_pools_are_disjoint(tiny):
    meta = _meta(tiny)
    pools = {s: {int(r["image_index"]) for r in meta if r["split"] == s} for s in ("train", "test")}
    assert pools["train"].isdisjoint(pools["test"])
    from sklearn.datasets import load_digits
    target = load_digits().target
    assert all(target[int(r["image_index"])] == int(r["digit"]) for r in meta)
    counts = json.loads((tiny / "manifest.json").read_text())["image_pools"]
    assert counts == {"train_images": 1797 - 359, "test_images": 359}  # round(0.2 * n) per digit


def test_ids_follow_cremad_grammar_and_label_equals_digit(tiny):
    meta = _meta(tiny)
    keys = set()
    for row in meta:
        match = ID_RE.match(row["id"])
        assert match, row["id"]
        speaker, take, code = match.groups()
        assert int(speaker) >= 2001 and speaker == row["speaker"] and code == row["code"]
        assert OGM_MAP[code] == int(row["digit"])  # OGM-GE's hard-coded map gives label == digit
        keys.add((speaker, take, code))
    assert len(keys) == len(meta)


# --- markers ----------------------------------------------------------------------------------------------------------

def test_marker_grey_level_encodes_the_second(tiny):
    seen = set()
    for row in _meta(tiny)[:8]:
        with av.open(str(tiny / "VideoFlash" / f"{row['id']}.flv")) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        for start in range(0, len(frames), 30):
            k = start // 30
            for index in (start, min(start + 29, len(frames) - 1)):
                block = frames[index][:6, :6].astype(int)
                assert np.abs(block - 40 * (k + 1)).max() <= 10, (row["id"], index)
            seen.add(k)
    assert seen == {0, 1, 2}


def test_each_clips_video_shows_its_own_planned_image(tiny):
    # The first frame's tile, read back to the 0-16 scale, is the (noisy) image the plan drew for that clip, the
    # clip meta.csv names by id (a clip rendered with another clip's image shows another digit in most clips).
    plan = _plan(preset="tiny", seed=0)
    image_of = dict(zip(plan["id"], plan["image"]))
    tile = av_digits.TILE
    for row in _meta(tiny):
        with av.open(str(tiny / "VideoFlash" / f"{row['id']}.flv")) as container:
            frame = next(container.decode(video=0)).to_ndarray(format="gray").astype(np.float64)
        x, y = int(row["offset_x"]), int(row["offset_y"])
        blocks = frame[y:y + tile, x:x + tile].reshape(8, av_digits.SCALE, 8, av_digits.SCALE).mean(axis=(1, 3))
        assert np.abs(blocks * 16 / 255 - image_of[row["id"]]).max() < 1.0, row["id"]


def test_each_clip_draws_its_own_noise(noisy):
    # The noise before each utterance: clips rendered with one shared noise seed would be perfectly correlated.
    leads = []
    for row in _meta(noisy):
        samples, _ = soundfile.read(noisy / "AudioWAV" / f"{row['id']}.wav", dtype="float64")
        leads.append(samples[:round(float(row["onset_s"]) * 16000)])
    n = min(len(lead) for lead in leads)
    assert n >= 200, "every clip needs a stretch of noise before its utterance"
    correlation = np.corrcoef(np.stack([lead[:n] for lead in leads]))
    assert np.abs(correlation[~np.eye(len(leads), dtype=bool)]).max() < 0.5


# --- reusing a generated tree -----------------------------------------------------------------------------------------

def test_check_tree_accepts_the_tree_its_knobs_generate_and_refuses_others(tiny):
    av_digits.check_tree(tiny, preset="tiny", seed=0, workers=3)  # the worker count cannot change the files
    with pytest.raises(av_digits.TreeMismatchError, match=rf"{re.escape(str(tiny))} was generated with seed=0 "
                                                          r"\(asked 1\): not the tree asked for; delete"):
        av_digits.check_tree(tiny, preset="tiny", seed=1)
    with pytest.raises(av_digits.TreeMismatchError, match=r"preset='tiny' \(asked 'small'\)"):
        av_digits.check_tree(tiny, preset="small", seed=0)


def test_generation_refuses_a_file_changed_on_disk_before_the_tree_is_published(tmp_path, monkeypatch):
    # As a worker of a killed earlier run would, writing into the same partial folder after this run's worker.
    write_manifest = av_digits._write_manifest

    def overwritten(root, *args):
        wav = sorted((root / "AudioWAV").iterdir())[0]
        wav.write_bytes(wav.read_bytes()[:1000])
        write_manifest(root, *args)

    monkeypatch.setattr(av_digits, "_write_manifest", overwritten)
    with pytest.raises(OSError, match=r"1 file\(s\) \(AudioWAV/.*\.wav\) changed on disk while generating"):
        av_digits.generate(tmp_path, preset="tiny", seed=0, train_speakers=2, test_speakers=1, train_clips=6,
                           test_clips=6)
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "neither a tree nor its partial folder is left"


def test_check_tree_names_changed_and_missing_files_and_another_generator(tiny, tmp_path):
    copy = tmp_path / "AV-Digits"
    shutil.copytree(tiny, copy)
    meta = _meta(copy)
    wav = copy / "AudioWAV" / f"{meta[0]['id']}.wav"
    wav.write_bytes(wav.read_bytes()[:1000])
    (copy / "VideoFlash" / f"{meta[1]['id']}.flv").unlink()
    with pytest.raises(av_digits.TreeMismatchError,
                       match=rf"2 file\(s\) \(AudioWAV/{meta[0]['id']}.wav, VideoFlash/{meta[1]['id']}.flv "
                             r"\(missing\)\) differ"):
        av_digits.check_tree(copy, preset="tiny", seed=0)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "generator_version": "0.9"}))
    with pytest.raises(av_digits.TreeMismatchError, match=r"generator_version='0.9'"):
        av_digits.check_tree(copy, preset="tiny", seed=0)
    (copy / "manifest.json").unlink()
    with pytest.raises(av_digits.TreeMismatchError, match="no readable manifest.json"):
        av_digits.check_tree(copy, preset="tiny", seed=0)


def test_second_frames_place_marker_and_move_digit():
    image = np.zeros((8, 8))
    image[0, 0] = 16.0
    frames = av_digits._second_frames(image, 61, offset_x=20, offset_y=3, motion=(4, 2))
    assert frames.shape == (3, 120, 160)
    assert [int(f[0, 0]) for f in frames] == [40, 80, 120]
    for k, frame in enumerate(frames):
        ys, xs = np.nonzero(frame == 255)
        assert (ys.min(), xs.min(), ys.max(), xs.max()) == (3 + 2 * k, 20 + 4 * k, 3 + 2 * k + 11, 20 + 4 * k + 11)
        assert (frame[6:, :] == 128).sum() > 0 and int(frame[3 + 2 * k + 12, 20 + 4 * k]) == 0  # black tile body


# --- audio rendering and plan on crafted inputs -----------------------------------------------------------------------

def test_render_audio_applies_gain_onset_and_snr():
    utterance = np.full(1000, 0.5)
    pcm, onset = av_digits._render_audio(utterance, 4000, onset_u=1.0, gain_db=-6.0, snr_db=None, noise_seed=0)
    assert onset == 3000 and not pcm[:3000].any()
    assert abs(pcm[3000] / 32767 - 0.5 * 10 ** (-6 / 20)) < 1e-4
    pcm, onset = av_digits._render_audio(utterance, 200_000, onset_u=0.0, gain_db=0.0, snr_db=10.0, noise_seed=1)
    noise_power = np.mean((pcm[1000:] / 32767.0) ** 2)
    assert onset == 0 and abs(10 * np.log10(0.25 / noise_power) - 10.0) < 0.1


def test_class_counts_and_cumcount():
    v = av_digits.resolve_params(preset="cremad")
    assert av_digits._class_counts(v, "train").tolist() == [973, 1148, 1131, 1138, 1142, 1166]
    assert av_digits._class_counts(v, "test").tolist() == [114, 123, 140, 133, 129, 105]
    scaled = av_digits._class_counts(av_digits.resolve_params(preset="cremad", train_clips=1000), "train")
    assert scaled.sum() == 1000 and scaled.argmin() == 0  # NEU is the rarest class, as in CREMA-D
    assert av_digits._class_counts(av_digits.resolve_params(train_clips=50), "train").tolist() == [9, 9, 8, 8, 8, 8]
    assert av_digits._cumcount(np.array([3, 1, 3, 3, 1])).tolist() == [0, 0, 1, 2, 1]


def test_presets_then_explicit_knobs():
    v = av_digits.resolve_params(preset="small", dominance="visual-dominant", classes=6, audio_snr_db=3)
    assert (v["train_speakers"], v["train_clips"], v["classes"]) == (160, 1600, 6)
    assert (v["image_noise_sigma"], v["audio_snr_db"]) == (0.0, 3.0)
    assert av_digits.resolve_params()["audio_snr_db"] is None and av_digits.resolve_params()["image_noise_sigma"] == 8
    with pytest.raises(HParamError, match="colour"):
        av_digits.resolve_params(colour=1)
    with pytest.raises(HParamError, match="class_balance"):
        av_digits.resolve_params(classes=10, class_balance="cremad")
    with pytest.raises(HParamError, match="train_clips"):
        av_digits.resolve_params(train_clips=4)


def test_val_only_speakers_add_validation_clips_and_change_no_other_file(tiny, tmp_path):
    # A larger validation set without another draw of training speakers: every file of the tree without them, media
    # and split files, is byte-identical, and the new clips join train.csv only to be val.csv's.
    wider = av_digits.generate(tmp_path, preset="tiny", seed=0, val_only_speakers=2, val_only_clips=13)
    before, after = (json.loads((root / "manifest.json").read_text())["files"] for root in (tiny, wider))
    changed = {"annotations/train.csv", "annotations/val.csv", "speakers.csv", "meta.csv",
               "processedResults/summaryTable.csv"}
    assert {name: h for name, h in after.items() if name in before and name not in changed} == \
           {name: h for name, h in before.items() if name not in changed}
    assert len(after) == len(before) + 2 * 13
    # the val-only clips' order comes from a stream of its own ("val_only_order"), pinned for this seed
    assert {name: after[name][:16] for name in ("annotations/train.csv", "annotations/val.csv", "speakers.csv")} == {
        "annotations/train.csv": "de01a017e6dac8df", "annotations/val.csv": "7a0befb8f3eb5436",
        "speakers.csv": "7ccf8e478e3419d4"}
    ann = {root: {name: _rows(root / "annotations" / f"{name}.csv", "\r\n" if name == "train" else "\n")
                  for name in ("train", "val")} for root in (tiny, wider)}
    extra = ann[wider]["train"][len(ann[tiny]["train"]):]
    assert ann[wider]["train"][:len(ann[tiny]["train"])] == ann[tiny]["train"] and len(extra) == 13
    assert ann[wider]["val"] == ann[tiny]["val"] + extra, "val.csv keeps train.csv's order"
    extra_labels = [OGM_MAP[label] for _, label in extra]
    assert extra_labels != sorted(extra_labels), "the val-only clips are shuffled among themselves too"
    counts = np.bincount([OGM_MAP[label] for _, label in extra], minlength=6)
    assert counts.tolist() == [3, 2, 2, 2, 2, 2], "as many of each class as divides, the remainder first"
    with open(wider / "speakers.csv", newline="") as f:
        speakers = list(csv.DictReader(f))
    new = [r for r in speakers if r["speaker"] in {clip[:4] for clip, _ in extra}]
    assert [(r["speaker"], r["split"], r["clean_split"]) for r in new] == [("2013", "train", "val"),
                                                                          ("2014", "train", "val")]
    test_pairs = {(r["voice"], r["variant"]) for r in speakers if r["split"] == "test"}
    assert test_pairs.isdisjoint((r["voice"], r["variant"]) for r in new), "timbres of the training side"
    meta = {r["id"]: r for r in _meta(wider)}
    test_images = {int(r["image_index"]) for r in meta.values() if r["split"] == "test"}
    assert test_images.isdisjoint(int(meta[clip]["image_index"]) for clip, _ in extra)


def test_val_only_clips_need_val_only_speakers_and_one_each():
    with pytest.raises(HParamError, match="val_only_clips"):
        av_digits.resolve_params(val_only_clips=4)
    with pytest.raises(HParamError, match="val_only_clips"):
        av_digits.resolve_params(val_only_speakers=3, val_only_clips=2)
    with pytest.raises(HParamError, match="val_only_speakers"):
        av_digits.resolve_params(val_only_speakers=-1)


def test_val_only_knob_messages_name_the_problem():
    # Each message says what is wrong with the value given, not a catch-all of the rules.
    with pytest.raises(HParamError, match=r"val_only_clips=-1: must be >= 0"):
        av_digits.resolve_params(val_only_clips=-1)
    with pytest.raises(HParamError, match=r"val_only_clips=4: val-only clips need val_only_speakers >= 1"):
        av_digits.resolve_params(val_only_clips=4)
    with pytest.raises(HParamError, match=r"val_only_clips=2: fewer clips than val_only_speakers=3"):
        av_digits.resolve_params(val_only_speakers=3, val_only_clips=2)


def test_too_many_val_only_takes_name_the_val_only_speakers():
    # The take limit is per speaker and digit; for val-only clips the fix is more val-only speakers.
    v = av_digits.resolve_params(preset="tiny", val_only_speakers=1, val_only_clips=6 * av_digits._MAX_TAKES + 1)
    with pytest.raises(HParamError, match="add val_only_speakers"):
        av_digits._plan(v)


# --- determinism and failures -----------------------------------------------------------------------------------------

def test_same_seed_gives_identical_files_whatever_the_worker_count(tiny, tmp_path):
    again = av_digits.generate(tmp_path, preset="tiny", seed=0, workers=1)
    first = json.loads((tiny / "manifest.json").read_text())
    second = json.loads((again / "manifest.json").read_text())
    assert first["files"] == second["files"] and len(first["files"]) == 2 * 72 + 8
    assert first["params"] == second["params"] and first["params"]["seed"] == 0


def test_invalid_voice_or_variant_fails_cleanly(tmp_path):
    with pytest.raises(espeak.UnknownVoiceError, match="'en-gb'"):
        av_digits.generate(tmp_path, preset="tiny", voices=["en-gb", "en"])
    with pytest.raises(espeak.UnknownVoiceError, match="'nosuchvariant'"):
        av_digits.generate(tmp_path, preset="tiny", variants=["f1", "nosuchvariant"])
    assert not list(tmp_path.iterdir())


def test_missing_espeak_names_the_demo_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    with pytest.raises(ImportError, match=r"\[demo\]"):
        av_digits.generate(tmp_path, preset="tiny")


def test_cli_rejects_a_bad_knob_before_generating(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        av_digits.main(["--out", str(tmp_path), "--classes", "7"])
    assert exit_info.value.code == 2 and "classes" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.fixture
def broken_espeak_data(tmp_path, monkeypatch) -> Path:
    """An eSpeak NG data folder with the variant names but no phoneme tables, as a damaged install leaves it."""
    import espeakng_loader

    data = tmp_path / "espeak-ng-data"
    (data / "voices" / "!v").mkdir(parents=True)
    for name in espeak.variant_names():
        (data / "voices" / "!v" / name).touch()
    monkeypatch.setattr(espeakng_loader, "get_data_path", lambda: str(data))
    return data


@pytest.fixture
def deadline():
    """Fail a test that hangs (a generator waiting on a dead worker) instead of blocking the suite."""
    seconds = 120

    def expire(signum, frame):
        raise TimeoutError(f"still waiting after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _construct_espeak() -> None:
    try:
        espeak.Espeak()
    except espeak.EspeakError as err:
        assert "could not load its voice data" in str(err), err
        return
    raise AssertionError("Espeak() started without its voice data")


def test_espeak_without_its_data_raises_instead_of_exiting(broken_espeak_data):
    # In a child process: loading eSpeak here would taint this test process for later generate() calls. Without
    # espeakINITIALIZE_DONT_EXIT the library calls exit(1) there, so the child's exit code tells the two apart.
    child = multiprocessing.get_context("fork").Process(target=_construct_espeak)
    child.start()
    child.join()
    assert child.exitcode == 0


def test_generate_without_espeak_data_fails_cleanly(tmp_path, broken_espeak_data, deadline):
    with pytest.raises(espeak.EspeakError, match=re.escape(str(broken_espeak_data))):
        av_digits.generate(tmp_path / "out", preset="tiny")
    assert not (tmp_path / "out").exists()


def test_demo_cli_reports_missing_espeak_data_in_one_line(tmp_path, broken_espeak_data, deadline, capsys):
    from benchmarks.cli import main

    assert main(["demo", "--smoke", "--work", str(tmp_path / "work"), "--results", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and str(broken_espeak_data) in err, err


def _square_unless_negative(x: int) -> int:
    if x < 0:
        if x == -1:
            raise ValueError("negative")
        os._exit(-x)
    return x * x


def test_fresh_process_map_keeps_order_and_raises_on_a_failed_or_dead_worker():
    context = multiprocessing.get_context("fork")
    assert av_digits._map_in_fresh_processes(context, _square_unless_negative, [3, 1, 2, 4], 2) == [9, 1, 4, 16]
    with pytest.raises(ValueError, match="negative"):
        av_digits._map_in_fresh_processes(context, _square_unless_negative, [1, -1, 2], 2)
    with pytest.raises(av_digits.WorkerDiedError, match="shard 1 died .*exit code 3"):
        av_digits._map_in_fresh_processes(context, _square_unless_negative, [1, -3, 2], 2)


def _load_twice() -> str:
    espeak.Espeak()
    try:
        espeak.Espeak()
    except espeak.EspeakError as err:
        return str(err)
    return "no error"


def test_espeak_refuses_a_second_instance_in_one_process():
    # In a child process: loading eSpeak here would taint this test process for later generate() calls.
    with multiprocessing.get_context("fork").Pool(1, maxtasksperchild=1) as pool:
        message = pool.apply(_load_twice)
    assert "already loaded by this process" in message


# --- dominance --------------------------------------------------------------------------------------------------------

def _probe_features(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import librosa

    meta = _meta(root)
    audio, image = [], []
    for row in meta:
        samples, rate = soundfile.read(root / "AudioWAV" / f"{row['id']}.wav", dtype="float32")
        logmel = np.log(librosa.feature.melspectrogram(y=samples, sr=rate, n_fft=512, hop_length=160, n_mels=40)
                        + 1e-6)
        energy = logmel.max(axis=0)
        voiced = np.flatnonzero(energy > energy.max() - 6)
        segments = np.array_split(logmel[:, voiced[0]:voiced[-1] + 1], 3, axis=1)
        audio.append(np.concatenate([s.mean(axis=1) for s in segments] + [logmel[:, voiced].std(axis=1)]))
        with av.open(str(root / "VideoFlash" / f"{row['id']}.flv")) as container:
            frame = next(container.decode(video=0)).to_ndarray(format="gray").astype(np.float64)
        x, y = int(row["offset_x"]), int(row["offset_y"])
        image.append(frame[y:y + 96, x:x + 96].reshape(8, 12, 8, 12).mean(axis=(1, 3)).ravel())
    labels = np.array([int(r["digit"]) for r in meta])
    test = np.array([r["split"] == "test" for r in meta])
    return np.array(audio), np.array(image), labels, test


def _probe_accuracy(x: np.ndarray, y: np.ndarray, test: np.ndarray) -> float:
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=np.logspace(-2, 3, 11)))
    model.fit(x[~test], y[~test])
    return float((model.predict(x[test]) == y[test]).mean())


@pytest.mark.slow
@pytest.mark.parametrize("dominance, stronger", [("audio-dominant", "audio"), ("visual-dominant", "image")])
def test_dominance_presets_order_linear_probes(tmp_path, dominance, stronger):
    root = av_digits.generate(tmp_path, preset="small", dominance=dominance, train_speakers=60, test_speakers=20,
                              train_clips=600, test_clips=200, mp3_track=False)
    audio, image, labels, test = _probe_features(root)
    accuracy = {"audio": _probe_accuracy(audio, labels, test), "image": _probe_accuracy(image, labels, test)}
    weaker = "image" if stronger == "audio" else "audio"
    assert accuracy[stronger] - accuracy[weaker] >= 0.20, accuracy


def test_the_generator_help_lists_every_knob(capsys):
    # A knob's help with a literal % ("about 66%") once made argparse fail to format --help.
    with pytest.raises(SystemExit) as stop:
        av_digits.main(["--help"])
    assert stop.value.code == 0 and "--image-noise-sigma" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--train-speakers", "--train_speakers"])
def test_the_generator_takes_a_knob_hyphenated_like_augbench_or_by_its_name(flag, monkeypatch):
    class Generated(Exception):
        """Stops main() at the generator, carrying the knobs it was given."""

    def generate(out, overwrite, **knobs):
        raise Generated(knobs)

    monkeypatch.setattr(av_digits, "generate", generate)
    with pytest.raises(Generated) as stop:
        av_digits.main(["--out", "x", flag, "5"])
    assert stop.value.args[0] == {"train_speakers": 5}


# --- the plan: each knob does what docs/datasets/av_digits.md says ----------------------------------------------------

def _plan(**knobs) -> dict:
    return av_digits._plan(av_digits.resolve_params(**knobs))


def _speaker_pairs(plan: dict, split: str) -> set:
    return set(plan["spk_pair"][:len(plan["spk_split"])][plan["spk_split"] == split].tolist())


@pytest.mark.parametrize("variants, train, test, pairs", [
    (["f1", "f2", "f3", "f4"], 6, 2, (3, 1)),  # pairs partitioned in proportion to the speakers
    (["f1", "f2", "f3"], 9, 1, (2, 1)),        # a test share that rounds to no pair still gets one
    (["f1", "f2"], 2, 6, (1, 1)),              # ... and so does a train share that rounds to none
])
def test_voice_variant_pairs_are_partitioned_between_splits_in_proportion(variants, train, test, pairs):
    plan = _plan(voices=["en"], variants=variants, train_speakers=train, test_speakers=test, train_clips=2 * train,
                 test_clips=2 * test)
    used = {s: _speaker_pairs(plan, s) for s in ("train", "test")}
    assert used["train"].isdisjoint(used["test"])
    assert (len(used["train"]), len(used["test"])) == pairs, "speakers cycle over every pair of their split"


def test_speaker_ranges_and_per_clip_jitter():
    plan = _plan(rate_range=[150, 150], pitch_range=[40, 40], rate_jitter=10, pitch_jitter=5)
    assert set(plan["spk_rate"].tolist()) == {150} and set(plan["spk_pitch"].tolist()) == {40}, "ranges are inclusive"
    assert plan["rate"].min() == 140 and plan["rate"].max() == 160, "jitter goes both ways, +/- rate_jitter"
    assert plan["pitch"].min() == 35 and plan["pitch"].max() == 45
    wide = _plan(preset="small")
    assert (wide["spk_rate"].min(), wide["spk_rate"].max()) == (120, 200)
    assert (wide["spk_pitch"].min(), wide["spk_pitch"].max()) == (20, 80)


def test_speaker_ids_carry_no_split_information():
    # Ids are a seeded permutation: the test speakers are not simply the last ids, for some seed at least.
    plans = [_plan(seed=seed) for seed in range(3)]
    assert not all(set(p["spk_id"][p["spk_split"] == "test"].tolist()) == set(range(2009, 2013)) for p in plans)


def test_val_speakers_default_to_about_the_test_set_size():
    for knobs, expected in (({}, 4), ({"train_clips": 96}, 2), ({"test_clips": 200}, 7), ({"val_speakers": 1}, 1)):
        plan = _plan(**knobs)
        clean = plan["spk_clean"]
        assert (clean == "val").sum() == expected, knobs
        assert set(clean[plan["spk_split"] == "test"]) == {"test"}


def test_each_split_draws_its_images_from_its_own_pool_without_repeats():
    plan = _plan(val_only_speakers=2, val_only_clips=12)
    in_test = plan["in_test_pool"][plan["image_index"]]
    assert in_test[plan["split"] == "test"].all() and not in_test[plan["split"] == "train"].any()
    n = len(plan["id"])
    for rows in (np.arange(48), np.arange(48, 72), np.arange(72, n)):  # train, test, val-only clips
        for d in range(6):
            chosen = plan["image_index"][rows][plan["digit"][rows] == d]
            assert len(set(chosen.tolist())) == len(chosen), "each (split, digit) walks through its shuffled pool"


def test_pixel_noise_has_the_knobs_sigma_and_zero_noise_keeps_the_digit():
    from sklearn.datasets import load_digits

    images = load_digits().images
    clean = _plan(image_noise_sigma=0.0)
    assert np.array_equal(clean["image"], images[clean["image_index"]]), "sigma 0: the 0-16 digit unchanged"
    noisy = _plan(image_noise_sigma=1.0)
    original = images[noisy["image_index"]]
    mid = (original >= 4) & (original <= 12)  # far from the clipping at 0 and 16
    residual = (noisy["image"] - original)[mid]
    assert abs(residual.std() - 1.0) < 0.08 and abs(residual.mean()) < 0.08
    assert noisy["image"].min() == 0.0 and noisy["image"].max() == 16.0, "clipped to the 0-16 scale"


def test_per_clip_gain_duration_placement_and_noise_seeds_span_their_ranges():
    plan = _plan(preset="small")
    assert -6.0 <= plan["gain_db"].min() < -5.5 and -0.5 < plan["gain_db"].max() <= 0.0
    assert (plan["n_frames"].min(), plan["n_frames"].max()) == (39, 90), "uniform 1.3-3.0 s, both ends reachable"
    assert 0 <= plan["onset_u"].min() < 0.01 and 0.99 < plan["onset_u"].max() < 1
    seconds = -(-plan["n_frames"] // 30)
    dx, dy = 4, 2
    assert plan["offset_x"].min() == 16 and plan["offset_y"].min() == 0, "the digit stays off the marker"
    for s in np.unique(seconds):
        x, y = plan["offset_x"][seconds == s], plan["offset_y"][seconds == s]
        assert x.max() == 160 - 96 - (s - 1) * dx and y.max() == 120 - 96 - (s - 1) * dy, "in the frame, to its edge"
    assert len(set(plan["noise_seed"].tolist())) == len(plan["noise_seed"])


def test_val_only_speakers_take_training_side_pairs_no_training_speaker_uses():
    plan = _plan(val_only_speakers=2, val_only_clips=6)
    n_tr, others = 8, 12
    extra = set(plan["spk_pair"][others:].tolist())
    assert extra.isdisjoint(plan["spk_pair"][:n_tr].tolist()) and extra.isdisjoint(_speaker_pairs(plan, "test"))
    # Exactly as many unused training-side pairs as val-only speakers: they are the ones taken.
    for seed in range(3):
        few = _plan(voices=["en"], variants=["f1", "f2", "f3", "f4"], train_speakers=2, test_speakers=1,
                    train_clips=6, test_clips=3, val_only_speakers=1, val_only_clips=6, seed=seed)
        train_side = set(range(4)) - _speaker_pairs(few, "test")
        assert few["spk_pair"][3] in train_side - set(few["spk_pair"][:2].tolist()), seed


# --- audio rendering: trimming, full scale, reproducible noise -------------------------------------------------------

def test_trim_cuts_only_the_quiet_padding_at_either_end():
    samples = np.array([0, 16, -16, 17, 0, 3, -400, 16, 0], np.int16)
    assert av_digits._trim(samples).tolist() == [17, 0, 3, -400]
    assert len(av_digits._trim(np.array([16, -16, 0], np.int16))) == 0


def test_render_audio_is_full_scale_and_its_noise_follows_the_seed():
    pcm, _ = av_digits._render_audio(np.array([1.0, -1.0, 2.0]), 3, 0.0, 0.0, None, 0)
    assert pcm.tolist() == [32767, -32767, 32767], "full scale saturates, never wraps"
    noisy = [av_digits._render_audio(np.full(100, 0.1), 400, 0.5, 0.0, 10.0, seed)[0] for seed in (7, 7, 8)]
    assert np.array_equal(noisy[0], noisy[1]) and not np.array_equal(noisy[0], noisy[2])


# --- a noisy tree: the SNR knob end to end, meta, media details -------------------------------------------------------

@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> Path:
    return av_digits.generate(tmp_path_factory.mktemp("avd-noisy"), preset="tiny", seed=1, train_speakers=2,
                              test_speakers=1, train_clips=6, test_clips=6, audio_snr_db=10.0, image_noise_sigma=2.5)


def test_measured_snr_of_a_generated_clip_matches_the_knob(noisy):
    meta = _meta(noisy)
    assert {(r["audio_snr_db"], r["image_noise_sigma"]) for r in meta} == {("10", "2.5")}
    for row in meta:
        samples, _ = soundfile.read(noisy / "AudioWAV" / f"{row['id']}.wav", dtype="float64")
        start = round(float(row["onset_s"]) * 16000)
        stop = start + round(float(row["utterance_s"]) * 16000)
        noise = np.mean(np.r_[samples[:start], samples[stop:]] ** 2)
        speech = np.mean(samples[start:stop] ** 2) - noise
        assert abs(10 * np.log10(speech / noise) - 10.0) < 0.5, row["id"]


def test_wav_length_is_exactly_the_clips_frames_and_nothing_saturates(tiny):
    for row in _meta(tiny):
        samples, _ = soundfile.read(tiny / "AudioWAV" / f"{row['id']}.wav", dtype="int16")
        assert len(samples) == round(float(row["duration_s"]) * 16000)
        assert np.abs(samples.astype(int)).max() < 32767, "the gain is -6..0 dB: eSpeak's peak stays below full scale"


def test_flv_keyframe_every_second_and_mp3_track_as_long_as_the_wav(tiny):
    for row in _meta(tiny)[:4]:
        with av.open(str(tiny / "VideoFlash" / f"{row['id']}.flv")) as container:
            packets = [p for p in container.demux(video=0) if p.size]
        assert [i for i, p in enumerate(packets) if p.is_keyframe] == list(range(0, len(packets), 30))
        with av.open(str(tiny / "VideoFlash" / f"{row['id']}.flv")) as container:
            mp3_s = sum(f.samples for f in container.decode(audio=0)) / 22050
        assert 0 <= mp3_s - float(row["duration_s"]) < 0.1, "the MP3 mirrors the WAV (plus encoder padding)"


def test_split_files_list_clips_in_a_shuffled_order(tiny):
    for name in ("train", "test"):
        labels = [OGM_MAP[label] for _, label in _rows(tiny / "annotations" / f"{name}.csv", "\r\n")]
        assert labels != sorted(labels), f"{name}.csv is shuffled, as OGM-GE's are, not in class blocks"


def test_the_av_digits_entry_prepares_the_tree_with_its_documented_defaults(noisy, tmp_path):
    # docs/datasets/av_digits.md#layout: the tree's own split files, frames at the native 120x160, the ogm (3 s)
    # recipe, stat.csv label order (label == digit). The served defaults are pinned in tests/test_av_digits_cache.py,
    # which runs without the media extras this file needs.
    from datasets.prepare import prepare
    from datasets.registry import get_dataset
    from datasets.tables import PrepareOptions

    entry = get_dataset("av_digits")
    cache = prepare(entry, noisy, tmp_path, PrepareOptions(workers=1), log=lambda line: None)
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["recipe"] == "ogm" and manifest["label_order"] == "stat"
    assert manifest["visual"]["frame_size"] == [120, 160]
    assert manifest["counts"]["source_frame_sizes"] == {"120x160": 12}
    assert all(record["status"] == "custom" and record["origin"].startswith(str(noisy / "annotations"))
               for record in manifest["split_files"].values())
    with open(cache / "index.csv", newline="") as f:
        index = list(csv.DictReader(f))
    digit = {row["id"]: row["digit"] for row in _meta(noisy)}
    assert len(index) == 12 and all(row["label"] == digit[row["id"]] for row in index)


def _long_utterance_espeak(seconds: float):
    class FakeEspeak:
        """Stands in for eSpeak NG in the forked workers: every word lasts ``seconds``."""

        sample_rate = 22050

        def __init__(self, seed: int = 0) -> None:
            pass

        def set_voice(self, voice: str, variant: str | None = None) -> None:
            pass

        def synthesize(self, text: str, rate: int, pitch: int) -> np.ndarray:
            return np.full(round(seconds * self.sample_rate), 8000, np.int16)

    return FakeEspeak


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fake reaches the workers through fork")
def test_an_utterance_longer_than_its_clip_lengthens_it_within_its_second_or_fails(tmp_path, monkeypatch):
    knobs = {"preset": "tiny", "train_speakers": 2, "test_speakers": 1, "train_clips": 4, "test_clips": 2,
             "min_duration_s": 1.05, "max_duration_s": 1.5, "mp3_track": False}
    monkeypatch.setattr(espeak, "Espeak", _long_utterance_espeak(1.41))  # 42.3 frames: a partial frame to round up
    root = av_digits.generate(tmp_path / "ok", **knobs)
    meta = _meta(root)
    assert all(float(r["duration_s"]) >= float(r["utterance_s"]) == pytest.approx(1.41, abs=1e-3) for r in meta)
    assert min(float(r["duration_s"]) for r in meta) == pytest.approx(43 / 30, abs=1e-4), "lengthened just enough"
    monkeypatch.setattr(espeak, "Espeak", _long_utterance_espeak(2.5))
    with pytest.raises(ValueError, match="does not fit its"):
        av_digits.generate(tmp_path / "fail", **knobs)
    assert not (tmp_path / "fail").exists() or not list((tmp_path / "fail").iterdir())


# --- eSpeak NG wrapper: every argument reaches the library ------------------------------------------------------------

def _f0(samples: np.ndarray, rate: int) -> float:
    """Fundamental frequency (Hz) of the loudest 0.1 s, by autocorrelation over 60-400 Hz."""
    x = samples.astype(np.float64)
    loudest = int(np.argmax(np.convolve(x ** 2, np.ones(rate // 20), "same")))
    segment = x[max(0, loudest - rate // 20):loudest + rate // 20]
    segment = segment - segment.mean()
    corr = np.correlate(segment, segment, "full")[len(segment) - 1:]
    lo, hi = rate // 400, rate // 60
    return rate / (lo + int(np.argmax(corr[lo:hi])))


def _espeak_observations() -> dict:
    engine = espeak.Espeak()
    out = {}
    try:
        engine.synthesize("one", 150, 50)
    except espeak.EspeakError as err:
        out["before_voice"] = str(err)
    try:
        engine.set_voice("en", "nosuchvariant")
    except espeak.UnknownVoiceError as err:
        out["bad_variant"] = str(err)
    engine.set_voice("en")
    out["plain_voice"] = engine.voice
    engine.set_voice("en", "f1")
    out["limits_ok"] = [len(engine.synthesize("one", r, p)) > 0 for r, p in ((80, 0), (450, 99))]
    out["limits_refused"] = []
    for r, p in ((79, 50), (451, 50), (150, -1), (150, 100)):
        try:
            engine.synthesize("one", r, p)
        except ValueError:
            out["limits_refused"].append((r, p))
    out["f0_by_pitch"] = [_f0(engine.synthesize("zero", 150, p), engine.sample_rate) for p in (10, 90)]
    out["length_by_rate"] = [len(engine.synthesize("seven", r, 50)) for r in (100, 300, 300)]
    engine.set_voice("en", "m1")
    out["f0_male"] = _f0(engine.synthesize("zero", 150, 50), engine.sample_rate)
    engine.set_voice("en", "f1")
    out["f0_female"] = _f0(engine.synthesize("zero", 150, 50), engine.sample_rate)
    return out


def test_espeak_applies_voice_variant_rate_and_pitch_and_checks_them():
    # In a child process: loading eSpeak here would taint this test process for later generate() calls.
    with multiprocessing.get_context("fork").Pool(1, maxtasksperchild=1) as pool:
        seen = pool.apply(_espeak_observations)
    assert "call set_voice before synthesize" in seen["before_voice"]
    assert "'nosuchvariant'" in seen["bad_variant"]
    assert seen["plain_voice"] == "en", "no variant: the voice name alone"
    assert seen["limits_ok"] == [True, True] and seen["limits_refused"] == [(79, 50), (451, 50), (150, -1), (150, 100)]
    low, high = seen["f0_by_pitch"]
    assert high > 1.8 * low, seen["f0_by_pitch"]
    slow, fast, again = seen["length_by_rate"]
    assert slow > 2 * fast and abs(again - fast) < 0.1 * fast, "each call returns its own utterance only"
    assert seen["f0_female"] > 1.5 * seen["f0_male"], "the variant reaches eSpeak"


def test_variant_names_of_a_missing_data_folder_name_the_folder(tmp_path):
    with pytest.raises(espeak.EspeakError, match=re.escape(str(tmp_path / "voices" / "!v"))):
        espeak.variant_names(tmp_path)
    (tmp_path / "voices" / "!v" / "sub").mkdir(parents=True)
    (tmp_path / "voices" / "!v" / "f9").touch()
    assert espeak.variant_names(tmp_path) == ("f9",)


# --- knob validation: each rule rejects just past its boundary and accepts the boundary itself ------------------------

@pytest.mark.parametrize("knobs, message", [
    ({"train_speakers": 1}, r"train_speakers=1: needs at least two speakers: one or more to train on, one or more "
                            r"moved to val.csv"),
    ({"test_speakers": 0}, r"test_speakers=0: needs at least one speaker"),
    ({"train_clips": 7}, r"train_clips=7: fewer clips than train_speakers=8"),
    ({"test_clips": 3}, r"test_clips=3: fewer clips than test_speakers=4"),
    ({"val_speakers": 0}, r"val_speakers=0: must be between 1 and train_speakers - 1 = 7"),
    ({"val_speakers": 8}, r"val_speakers=8: must be between 1"),
    ({"min_duration_s": 0.9}, r"max_duration_s=3.0: need 1.0 <= min_duration_s \(0.9\)"),
    ({"max_duration_s": 6.5}, r"max_duration_s=6.5: need 1.0 <= min_duration_s"),
    ({"min_duration_s": 2.0, "max_duration_s": 1.5}, r"max_duration_s=1.5"),
    ({"rate_range": [89, 200]}, r"rate_range=\[89, 200\]: need \[low, high\] within \[90, 440\]"),
    ({"rate_range": [120, 441]}, r"rate_range"),
    ({"rate_range": [200, 120]}, r"rate_range"),
    ({"rate_range": [120]}, r"rate_range"),
    ({"pitch_range": [4, 80]}, r"pitch_range=\[4, 80\]: need \[low, high\] within \[5, 94\]"),
    ({"pitch_range": [20, 95]}, r"pitch_range"),
    ({"gain_db_range": [-6.0, 0.5]}, r"gain_db_range=\[-6.0, 0.5\]: need \[low, high\] with low <= high <= 0 dB"),
    ({"gain_db_range": [-3.0, -6.0]}, r"gain_db_range"),
    ({"image_noise_sigma": -0.5}, r"image_noise_sigma=-0.5: must be >= 0"),
    ({"image_test_fraction": 0.0}, r"image_test_fraction=0.0: must be strictly between 0 and 1"),
    ({"image_test_fraction": 1.0}, r"image_test_fraction=1.0"),
    ({"voices": ["en"], "variants": ["f1"]}, r"voices=\['en'\]: need at least two \(voice, variant\) pairs"),
    ({"motion_px": [25, 2]}, r"motion_px=\[25, 2\]: the digit must stay inside the 160x120 frame for 3 s"),
    ({"motion_px": [4, 13]}, r"motion_px=\[4, 13\]"),
    ({"motion_px": [-1, 2]}, r"motion_px=\[-1, 2\]"),
    ({"motion_px": [25, 2], "max_duration_s": 2.5}, r"motion_px=\[25, 2\]: .* for 3 s"),  # a started second counts
    ({"video_qscale": 0}, r"video_qscale=0: FLV1 quantisers run from 1 to 31"),
    ({"video_qscale": 32}, r"video_qscale=32"),
    ({"workers": -1}, r"workers=-1: must be >= 0"),
    ({"audio_snr_db": True}, r"audio_snr_db expects a number or None, got True"),
    ({"audio_snr_db": "10"}, r"audio_snr_db expects a number or None"),
    ({"val_speakers": "2"}, r"val_speakers expects a number or None"),
])
def test_each_knob_rule_rejects_a_value_past_its_bound_and_names_it(knobs, message):
    with pytest.raises(HParamError, match=message):
        av_digits.resolve_params(**knobs)


@pytest.mark.parametrize("knobs", [
    {"train_clips": 8}, {"test_clips": 4}, {"val_speakers": 1}, {"val_speakers": 7},
    {"train_speakers": 2, "val_speakers": 1}, {"test_speakers": 1},
    {"min_duration_s": 1.0}, {"max_duration_s": 6.0}, {"min_duration_s": 2.0, "max_duration_s": 2.0},
    {"rate_range": [90, 440]}, {"pitch_range": [5, 94]}, {"rate_range": [80, 450], "rate_jitter": 0},
    {"gain_db_range": [0.0, 0.0]}, {"image_noise_sigma": 0.0}, {"voices": ["en"], "variants": ["f1", "f2"]},
    {"motion_px": [24, 12]}, {"motion_px": [0, 0]}, {"motion_px": [48, 24], "max_duration_s": 2.0},
    {"video_qscale": 1}, {"video_qscale": 31}, {"workers": 0},
])
def test_each_knob_rule_accepts_its_boundary(knobs):
    v = av_digits.resolve_params(**knobs)
    assert all(v[name] == value for name, value in knobs.items())


def test_an_integer_snr_is_stored_as_a_float():
    # The manifest records the knob; 3 and 3.0 are one setting and must write the same bytes.
    v = av_digits.resolve_params(audio_snr_db=3)
    assert v["audio_snr_db"] == 3.0 and isinstance(v["audio_snr_db"], float)


@pytest.mark.parametrize("knobs, message", [
    # numpy refused these deep in the plan ("expected a sequence of integers", "not enough values to unpack")
    ({"val_speakers": 2.5}, r"val_speakers expects an integer or None, got 2.5"),
    ({"motion_px": [4]}, r"motion_px=\[4\]: need \[x, y\]"),
    ({"motion_px": [4, 2, 1]}, r"motion_px=\[4, 2, 1\]: need \[x, y\]"),
    # NaN would pass every comparison and write NaN noise as arbitrary int16 samples
    ({"audio_snr_db": float("nan")}, r"av_digits.audio_snr_db must be a finite number, got nan"),
    ({"audio_snr_db": float("-inf")}, r"av_digits.audio_snr_db must be a finite number, got -inf"),
])
def test_ill_formed_knobs_are_refused_with_their_name(knobs, message):
    with pytest.raises(HParamError, match=message):
        av_digits.resolve_params(**knobs)


def test_a_whole_number_val_speakers_is_an_integer():
    # YAML and the CLI may give 2.0; rng.choice refused it as a count.
    v = av_digits.resolve_params(val_speakers=2.0)
    assert v["val_speakers"] == 2 and isinstance(v["val_speakers"], int)
    assert (av_digits._plan(v)["spk_clean"] == "val").sum() == 2


@pytest.mark.parametrize("knobs", [{"voices": ["en", "en"], "variants": ["f1"]},
                                   {"voices": ["en"], "variants": ["f1", "f2", "f1"]}])
def test_repeated_voices_or_variants_are_refused(knobs):
    # A repeated name made two equal (voice, variant) pairs, one of which could land in train and the other in test:
    # both splits then spoke with the same timbre, against the speaker-disjoint promise.
    with pytest.raises(HParamError, match=r"(voices|variants)=.*: .*more than once"):
        av_digits.resolve_params(**knobs)


@pytest.mark.parametrize("fraction, pool", [(0.001, "test"), (0.999, "training")])
def test_an_image_fraction_that_empties_a_pool_is_refused(fraction, pool):
    # The image walk indexed an empty pool: an IndexError that named no knob.
    with pytest.raises(HParamError, match=rf"image_test_fraction={fraction}: .*no {pool} image of digit 0"):
        _plan(image_test_fraction=fraction)


# --- determinism: every random stream pinned for one seed -------------------------------------------------------------

def _digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    return hashlib.sha256(f"{array.dtype.str}{array.shape}".encode() + array.tobytes()).hexdigest()[:16]


# Every draw of the tiny plan with val-only speakers (seed 0). The published demo's bytes follow from these: a change
# here (a reordered draw, a stream seeded for another purpose, a new numpy stream) changes every tree generated before.
PLAN_DIGESTS = {
    "digit": "b281d9dec84b0a37", "gain_db": "7394593b146da70d", "id": "b9a34ab92748a7d0", "image": "e7ac905483949ae5",
    "image_index": "e06aa5f0f883b01c", "in_test_pool": "5739ab46cb735383", "n_frames": "f83fa4dcf65c2b11",
    "noise_seed": "e1c613de368fa9aa", "offset_x": "17a6113e524a3a2c", "offset_y": "f76d5c1175111808",
    "onset_u": "835a03ad746f898c", "pitch": "64d738beee5265a9", "rate": "b3c14655d5a8c521",
    "speaker": "fe35d5589bece050", "spk_clean": "04264f5b91f67a22", "spk_id": "9d610b9c2f6fd4b8",
    "spk_pair": "64ad7fb79091fae9", "spk_pitch": "b188c2816ba1b5bb", "spk_rate": "ac1692775d120e92",
    "spk_split": "2b5b8f1b459f6c0d", "split": "13cda7f53fc0e181",
}


def test_every_draw_of_the_plan_is_pinned_for_a_seed():
    plan = _plan(preset="tiny", seed=0, val_only_speakers=2, val_only_clips=13)
    assert {name: _digest(plan[name]) for name in PLAN_DIGESTS} == PLAN_DIGESTS
    assert set(plan) - set(PLAN_DIGESTS) == {"codes", "pairs"}, "a new plan entry needs a digest here"


def test_the_split_files_of_a_seed_are_pinned(tiny):
    # These files depend on the plan and the "order" stream only, not on eSpeak or the encoders.
    files = json.loads((tiny / "manifest.json").read_text())["files"]
    assert {name: files[name][:16] for name in (
        "annotations/my_train.csv", "annotations/stat.csv", "annotations/test.csv", "annotations/train.csv",
        "annotations/val.csv", "processedResults/summaryTable.csv", "speakers.csv")} == {
        "annotations/my_train.csv": "fa2230ff732588f1", "annotations/stat.csv": "827044c2e7dae878",
        "annotations/test.csv": "da135713cc3e555c", "annotations/train.csv": "30b98a2dec57d07a",
        "annotations/val.csv": "f4575de81e80472e", "processedResults/summaryTable.csv": "abbae228e3f253c1",
        "speakers.csv": "2c34def2e99c21e8"}


def test_each_speaker_gets_a_near_equal_share_of_its_splits_clips():
    plan = _plan(train_clips=50, test_clips=22)
    counts = np.bincount(plan["speaker"], minlength=12)
    for members, total in ((slice(0, 8), 50), (slice(8, 12), 22)):
        assert counts[members].sum() == total and counts[members].max() - counts[members].min() <= 1, counts


def test_ten_class_mode_uses_the_zer_to_nin_codes():
    assert av_digits.class_codes(10) == ("ZER", "ONE", "TWO", "THR", "FOU", "FIV", "SIX", "SEV", "EIG", "NIN")
    with pytest.raises(ValueError, match="6 or 10 classes, not 7"):
        av_digits.class_codes(7)
    plan = _plan(classes=10, train_clips=20, test_clips=10)
    assert sorted(set(plan["digit"].tolist())) == list(range(10))
    assert all(clip.split("_")[2] == av_digits.CODES_10[d] for clip, d in zip(plan["id"], plan["digit"]))


def test_takes_are_three_base36_characters():
    assert av_digits._base36(np.array([0, 35, 36, 46655])) == ["000", "00Z", "010", "ZZZ"]


# --- shards: fixed groups of speakers, each with its own eSpeak seed --------------------------------------------------

def _shard_knobs(**more) -> dict:
    return {"preset": "tiny", "train_speakers": 5, "test_speakers": 2, "train_clips": 10, "test_clips": 4, **more}


def test_shards_group_four_speakers_by_id_and_keep_val_only_speakers_apart(tmp_path):
    # 7 speakers fill one shard and part of another; the val-only speakers must not join that one, or its eSpeak
    # call sequence (and so every training clip in it) would change when they are added.
    v = av_digits.resolve_params(**_shard_knobs(val_only_speakers=2, val_only_clips=4))
    plan = av_digits._plan(v)
    tasks = av_digits._shards(plan, v, tmp_path)
    speaker_ids = plan["spk_id"][plan["speaker"]]
    assert [sorted(set(speaker_ids[t["rows"]].tolist())) for t in tasks] == [
        [2001, 2002, 2003, 2004], [2005, 2006, 2007], [2008, 2009]]
    assert sorted(np.concatenate([t["rows"] for t in tasks]).tolist()) == list(range(len(plan["id"])))
    for task in tasks:
        assert task["id"] == sorted(task["id"]) == plan["id"][task["rows"]].tolist(), "clips in id order"
    seeds = [t["espeak_seed"] for t in tasks]
    assert len(set(seeds)) == 3 and all(0 <= s < 2 ** 31 for s in seeds)
    v0 = av_digits.resolve_params(**_shard_knobs())
    without = av_digits._shards(av_digits._plan(v0), v0, tmp_path)
    assert [(t["id"], t["espeak_seed"]) for t in without] == [(t["id"], t["espeak_seed"]) for t in tasks[:2]]
    v1 = av_digits.resolve_params(**_shard_knobs(seed=1))
    assert not {t["espeak_seed"] for t in av_digits._shards(av_digits._plan(v1), v1, tmp_path)} & set(seeds)


# --- rendering through a recording stand-in for eSpeak NG -------------------------------------------------------------

def _recording_espeak(log: Path, value: int):
    class RecordingEspeak:
        """Stands in for eSpeak NG in the forked workers: logs every call, every word lasts 0.5 s at ``value``."""

        sample_rate = 22050

        def __init__(self, seed: int = 0) -> None:
            self.seed, self.voice = seed, None

        def set_voice(self, voice: str, variant: str | None = None) -> None:
            self.voice = f"{voice}+{variant}"

        def synthesize(self, text: str, rate: int, pitch: int) -> np.ndarray:
            with open(log, "a") as f:
                f.write(f"{os.getpid()} {self.seed} {self.voice} {text} {rate} {pitch}\n")
            return np.full(self.sample_rate // 2, value, np.int16)

    return RecordingEspeak


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fake reaches the workers through fork")
def test_each_clip_is_spoken_as_planned_in_one_fresh_engine_per_shard(tmp_path, monkeypatch):
    log = tmp_path / "calls.log"
    monkeypatch.setattr(espeak, "Espeak", _recording_espeak(log, 32767))
    root = av_digits.generate(tmp_path / "out", workers=2, mp3_track=False, gain_db_range=[0.0, 0.0],
                              **_shard_knobs(val_only_speakers=2, val_only_clips=4))
    meta = _meta(root)
    with open(root / "speakers.csv", newline="") as f:
        voice = {r["speaker"]: f"{r['voice']}+{r['variant']}" for r in csv.DictReader(f)}
    shard_of = {s: (int(s) - 2001) // 4 if int(s) <= 2007 else 2 for s in voice}  # val-only 2008-2009 apart
    expected: dict[int, list] = {}
    for row in sorted(meta, key=lambda r: r["id"]):
        expected.setdefault(shard_of[row["speaker"]], []).append(
            (voice[row["speaker"]], av_digits.DIGIT_WORDS[int(row["digit"])], row["rate"], row["pitch"]))
    calls: dict[str, list] = {}
    seeds: dict[str, set] = {}
    for pid, seed, *call in (line.split() for line in log.read_text().splitlines()):
        calls.setdefault(pid, []).append(tuple(call))
        seeds.setdefault(pid, set()).add(seed)
    assert sorted(calls.values()) == sorted(expected.values()), "voice, word, rate and pitch per clip, in id order"
    assert all(len(s) == 1 for s in seeds.values()) and len(set.union(*seeds.values())) == 3, "a seed per shard"
    for row in meta:
        samples, _ = soundfile.read(root / "AudioWAV" / f"{row['id']}.wav", dtype="int16")
        start = round(float(row["onset_s"]) * 16000)
        assert float(row["utterance_s"]) == pytest.approx(0.5, abs=1e-4)
        # eSpeak's int16 full scale is 32768, so a steady 32767 reads 32767/32768 and is written back as 32766
        assert np.median(samples[start:start + 8000]) == 32766, row["id"]
        with av.open(str(root / "VideoFlash" / f"{row['id']}.flv")) as container:
            assert not container.streams.audio, "mp3_track=False writes no audio track"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fake reaches the workers through fork")
def test_an_existing_tree_is_kept_unless_overwritten_and_a_stale_partial_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(espeak, "Espeak", _long_utterance_espeak(0.5))
    knobs = _shard_knobs(mp3_track=False)
    (tmp_path / "AV-Digits").mkdir()
    (tmp_path / "AV-Digits" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match=r"AV-Digits already exists; pass overwrite=True"):
        av_digits.generate(tmp_path, **knobs)
    assert (tmp_path / "AV-Digits" / "mine.txt").read_text() == "keep"
    stale = tmp_path / ".AV-Digits.partial" / "AudioWAV"  # left by an interrupted run
    stale.mkdir(parents=True)
    (stale / "old.wav").write_bytes(b"old")
    root = av_digits.generate(tmp_path, overwrite=True, **knobs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["AV-Digits"]
    on_disk = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
    files = json.loads((root / "manifest.json").read_text())["files"]
    assert set(files) == set(on_disk) - {"manifest.json"}, "nothing stale or foreign in the tree"
    _assert_manifest_counts_match_the_split_files(root)  # uneven: 3 my_train / 2 val speakers, classes 2 or 1 clips
    assert all(hashlib.sha256(on_disk[name].read_bytes()).hexdigest() == h for name, h in files.items())


def _assert_manifest_counts_match_the_split_files(root: Path) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    for name in ("train", "test", "my_train", "val"):
        rows = _rows(root / "annotations" / f"{name}.csv", "\r\n" if name in ("train", "test") else "\n")
        assert manifest["counts"][name] == {
            "clips": len(rows), "speakers": len({clip[:4] for clip, _ in rows}),
            "per_class": {code: sum(label == code for _, label in rows) for code in av_digits.CODES_6}}, name


def test_manifest_counts_speakers_and_meta_agree_with_the_plan(tiny):
    _assert_manifest_counts_match_the_split_files(tiny)
    plan = _plan(preset="tiny", seed=0)
    with open(tiny / "speakers.csv", newline="") as f:
        speakers = list(csv.DictReader(f))
    assert [int(r["speaker"]) for r in speakers] == sorted(plan["spk_id"].tolist())
    for r in speakers:
        s = int(np.flatnonzero(plan["spk_id"] == int(r["speaker"]))[0])
        assert (r["voice"], r["variant"]) == plan["pairs"][plan["spk_pair"][s]]
        assert (int(r["base_rate"]), int(r["base_pitch"])) == (plan["spk_rate"][s], plan["spk_pitch"][s])
        assert (r["split"], r["clean_split"]) == (plan["spk_split"][s], plan["spk_clean"][s])
    meta = _meta(tiny)
    assert [r["id"] for r in meta] == sorted(plan["id"].tolist())
    for r in meta:
        i = int(np.flatnonzero(plan["id"] == r["id"])[0])
        assert (r["split"], int(r["digit"]), int(r["image_index"]), int(r["rate"]), int(r["pitch"])) == (
            plan["split"][i], plan["digit"][i], plan["image_index"][i], plan["rate"][i], plan["pitch"][i])
        assert (int(r["offset_x"]), int(r["offset_y"]), r["gain_db"]) == (
            plan["offset_x"][i], plan["offset_y"][i], f"{plan['gain_db'][i]:.4f}")
        assert r["clean_split"] == plan["spk_clean"][plan["speaker"][i]]


# --- rendering details: rounding, trimming, the quantiser -------------------------------------------------------------

def test_samples_and_pixels_round_to_the_nearest_level_and_trim_keeps_a_full_scale_edge():
    pcm, _ = av_digits._render_audio(np.array([0.5, -0.5, 0.25]), 3, 0.0, 0.0, None, 0)
    assert pcm.tolist() == [16384, -16384, 8192]
    frame = av_digits._second_frames(np.full((8, 8), 1.0), 1, 16, 0, (0, 0))[0]
    assert int(frame[0, 16]) == 16, "1/16 of 255 is 15.94"
    # abs() of int16 -32768 wraps to -32768, so a full-scale negative sample looked quiet
    assert av_digits._trim(np.array([0, -32768, 5, 0], np.int16)).tolist() == [-32768]


def test_video_qscale_reaches_the_encoder():
    image = np.random.default_rng(0).uniform(0, 16, (8, 8))
    frames = av_digits._second_frames(image, 30, 40, 10, (0, 0))
    fine, coarse = (av_digits._encode_flv(frames, 30, None, q) for q in (1, 31))
    assert len(coarse) < len(fine) / 2
    with av.open(io.BytesIO(fine)) as container:
        decoded = next(container.decode(video=0)).to_ndarray(format="gray").astype(int)
    assert np.abs(decoded[:6, :6] - 40).max() <= 2, "qscale 1 keeps the marker within 2 grey levels"


# --- eSpeak NG: the seed reaches the library; a forked child names its parent -----------------------------------------

def _speak_six(seed: int) -> bytes:
    engine = espeak.Espeak(seed=seed)
    engine.set_voice("en", "f5")  # a breathy default variant: its noise source follows the seed
    return engine.synthesize("six", 150, 50).tobytes()


def test_espeak_seed_reaches_the_library():
    # One fresh process per call: the library's output depends on what it synthesised before.
    context = multiprocessing.get_context("fork")
    takes = []
    for seed in (1, 1, 2):
        with context.Pool(1, maxtasksperchild=1) as pool:
            takes.append(pool.apply(_speak_six, (seed,)))
    assert takes[0] == takes[1] and takes[0] != takes[2]


def _load_then_fork(conn) -> None:
    espeak.Espeak()
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            espeak.Espeak()
            message = "no error"
        except espeak.EspeakError as err:
            message = str(err)
        os.write(writer, message.encode())
        os._exit(0)
    os.close(writer)
    os.waitpid(child, 0)
    conn.send((os.getpid(), os.read(reader, 4096).decode()))


def test_espeak_in_a_fork_of_a_process_that_loaded_it_names_the_parent():
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_load_then_fork, args=(writer,))
    process.start()
    parent, message = reader.recv()
    process.join()
    assert f"already loaded by parent process {parent}" in message


@pytest.mark.parametrize("text, value", [("None", None), ("none", None), ("10", 10), ("2.5", 2.5),
                                         ("[4, 2]", [4, 2]), ("en-us", "en-us")])
def test_the_generator_cli_parses_values_as_yaml_with_none(text, value, monkeypatch):
    class Generated(Exception):
        """Stops main() at the generator, carrying the knobs it was given."""

    def generate(out, overwrite, **knobs):
        raise Generated(knobs)

    monkeypatch.setattr(av_digits, "generate", generate)
    with pytest.raises(Generated) as stop:
        av_digits.main(["--out", "x", "--audio-snr-db", text])
    assert stop.value.args[0] == {"audio_snr_db": value}


@pytest.mark.parametrize("module, package", [("av", "av"), ("sklearn", "scikit-learn")])
def test_a_missing_demo_package_is_named_with_the_extra(tmp_path, monkeypatch, module, package):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=rf"needs the '{package}' package, which is missing; .*\[demo\]"):
        av_digits.generate(tmp_path, preset="tiny")
    assert not list(tmp_path.iterdir())


def test_cli_refuses_to_replace_a_tree_without_force(tmp_path, capsys):
    (tmp_path / "AV-Digits").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        av_digits.main(["--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "already exists; pass overwrite=True (CLI: --force)" in capsys.readouterr().err


def _fail_or_sleep(seconds: float) -> float:
    if seconds < 0:
        raise ValueError("failed at once")
    time.sleep(seconds)
    return seconds


def test_a_failed_worker_stops_its_running_siblings():
    context = multiprocessing.get_context("fork")
    start = time.monotonic()
    with pytest.raises(ValueError, match="failed at once"):
        av_digits._map_in_fresh_processes(context, _fail_or_sleep, [30.0, -1.0], 2)
    assert time.monotonic() - start < 10 and not multiprocessing.active_children(), "the 30 s sibling was stopped"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fake reaches the workers through fork")
def test_a_voice_that_says_nothing_names_the_clip(tmp_path, monkeypatch):
    monkeypatch.setattr(espeak, "Espeak", _recording_espeak(tmp_path / "calls.log", 16))  # all at the trim level
    with pytest.raises(espeak.EspeakError, match=r"voice '[^']+\+[^']+' produced no audio for '\w+' \(clip 20\d\d_"):
        av_digits.generate(tmp_path / "out", mp3_track=False, **_shard_knobs())
    assert not (tmp_path / "out" / "AV-Digits").exists()


_FORK = multiprocessing.get_context("fork")
# Inherited by the forked workers: how many run now, the most that ever ran at once, and a meeting point for two.
_RUNNING, _PEAK, _PAIR = _FORK.Value("i", 0), _FORK.Value("i", 0), _FORK.Barrier(2)


def _count_while_paired(_: object) -> None:
    with _RUNNING.get_lock():
        _RUNNING.value += 1
        _PEAK.value = max(_PEAK.value, _RUNNING.value)
    _PAIR.wait(timeout=120)  # passes only when two workers run at once (a serial map breaks the barrier)
    with _RUNNING.get_lock():
        _RUNNING.value -= 1


def test_fresh_process_map_runs_at_most_workers_at_a_time():
    # Counted, not timed: overlapping sleeps depended on how busy the machine was.
    av_digits._map_in_fresh_processes(_FORK, _count_while_paired, [None] * 4, 2)
    assert _PEAK.value == 2


def test_speaker_ids_stay_four_digits():
    # Ids are SSSS_TTT_CCC_XX from speaker 2001 on; an 8000th speaker would get the five-digit id 10000.
    v = av_digits.resolve_params(train_speakers=7990, train_clips=7990, test_speakers=4, val_only_speakers=5,
                                 val_only_clips=5)
    assert v["train_speakers"] + v["test_speakers"] + v["val_only_speakers"] == 9999 - 2001 + 1
    with pytest.raises(HParamError, match=r"train_speakers=7991: .* = 8000 speakers; at most 7999 keep"):
        av_digits.resolve_params(train_speakers=7991, train_clips=7991, test_speakers=4, val_only_speakers=5,
                                 val_only_clips=5)


@pytest.mark.parametrize("argv, overwrite", [([], False), (["--force"], True)])
def test_the_generator_cli_passes_force_as_overwrite(argv, overwrite, monkeypatch):
    class Generated(Exception):
        """Stops main() at the generator, carrying its out folder and overwrite flag."""

    def generate(out, overwrite, **knobs):
        raise Generated(out, overwrite, knobs)

    monkeypatch.setattr(av_digits, "generate", generate)
    with pytest.raises(Generated) as stop:
        av_digits.main(["--out", "x", *argv])
    assert stop.value.args == (Path("x"), overwrite, {})


def test_val_only_speakers_without_enough_unused_pairs_stay_on_the_training_side():
    # 4 pairs, 2 of them test-side; both training-side pairs are taken by the training speakers, so 3 val-only
    # speakers must share training-side pairs: never a test speaker's voice, which would join val to test.
    for seed in range(3):
        plan = _plan(voices=["en"], variants=["f1", "f2", "f3", "f4"], train_speakers=4, test_speakers=4,
                     train_clips=8, test_clips=8, val_only_speakers=3, val_only_clips=6, seed=seed)
        test_side = _speaker_pairs(plan, "test")
        assert len(test_side) == 2, seed
        assert set(plan["spk_pair"][8:].tolist()) <= set(range(4)) - test_side, seed


def test_the_dominance_presets_set_the_documented_pixel_noise_and_snr():
    # docs/datasets/av_digits.md#dominance: image sigma and audio SNR (None = clean) of each preset.
    documented = {"audio-dominant": (8.0, None), "balanced": (8.0, 5.0), "visual-dominant": (0.0, 0.0),
                  "clean": (0.0, None)}
    for dominance, knobs in documented.items():
        v = av_digits.resolve_params(dominance=dominance)
        assert (v["image_noise_sigma"], v["audio_snr_db"]) == knobs, dominance


def test_a_digits_pixel_levels_map_linearly_onto_0_to_255():
    # 15/16 of 255 is 239.06: the 0-16 scale maps to 0-255, not 16 grey levels a step.
    frame = av_digits._second_frames(np.full((8, 8), 15.0), 1, 16, 0, (0, 0))[0]
    assert int(frame[0, 16]) == 239 and int(frame[95, 111]) == 239


def test_no_clip_is_planned_longer_than_max_duration():
    # 1.02 s is 30.6 frames: a drawn length of 1.019 s rounds to 31 frames, past the longest clip allowed.
    plan = _plan(min_duration_s=1.0, max_duration_s=1.02, seed=1)
    assert plan["n_frames"].min() >= 30 and plan["n_frames"].max() == 30
