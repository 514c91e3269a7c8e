"""What the audio-visual dataset classes add to the shared prepare/serve machinery, without building a cache: each
dataset's recipes and defaults against its published loaders, label maps, validation sources, and where a sample's
media are looked for (tiny generated split files and media trees, CPU only)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import datasets.audio_visual as av
from core.hparams import HParams
from datasets.ave import AVE
from datasets.cache import CacheError
from datasets.cremad import CremaD
from datasets.kinetics_sounds import KineticsSounds
from datasets.media import MediaError
from datasets.media.audio import AudioPipeline, features_from_file, get_pipeline
from datasets.prepared import Record
from datasets.splits import SplitRow
from datasets.tables import PrepareError, PrepareOptions, Sample
from datasets.vggsound import VGGSound
from tests.media_fixtures import EMOTIONS, second_level, write_frame_folder, write_lines, write_wav


def resolved(dataset, recipe: str, tmp_path: Path, monkeypatch, **opts):
    monkeypatch.setattr(av, "require_backend", lambda pipeline: None)  # fbank's torchaudio is not needed to resolve
    return dataset.resolve_settings(recipe, {}, PrepareOptions(visual="video", **opts), tmp_path)


# (dataset, recipe) -> stored audio shape, extraction rule, segment: the published loaders' inputs.
RECIPE_OUTPUTS = {
    (CremaD, "ogm"): ((257, 188), "frames_1fps", "whole"),  # OGM-GE CramedDataset: 3 s, STFT 512/353
    (CremaD, "aug"): ((257, 1250), "frames_1fps", "whole"),  # AUG dataset/CREMA.py: 20 s
    (CremaD, "pmr"): ((257, 1004), "frames_1fps_min3", "whole"),  # PMR extractWav; min_save_frame=3
    (CremaD, "fbank"): ((1024, 128), "frames_1fps", "whole"),
    (KineticsSounds, "aug"): ((257, 1003), "frames_1fps", "whole"),
    (KineticsSounds, "fbank"): ((1024, 128), "frames_1fps", "whole"),  # OGM-GE process_audio.py: (1024, 128)
    (KineticsSounds, "bml"): ((257, 1003), "frames_hdf5_mid", "whole"),  # BML KS.py via AV_preprocess_tool
    (AVE, "pmr"): ((257, 1004), "frames_1fps_min10", "event"),  # PMR Audio-1004-SE / Image-01-FPS-SE
    (AVE, "ogm"): ((257, 188), "frames_1fps", "whole"),
    (AVE, "fbank"): ((1024, 128), "frames_1fps", "whole"),
    (VGGSound, "ogm"): ((129, 1251), "frames_1fps", "whole"),  # OGM-GE VGGSoundDataset: 10 s, STFT 256/128
}


@pytest.mark.parametrize("dataset, recipe", list(RECIPE_OUTPUTS), ids=lambda x: getattr(x, "NAME", x))
def test_each_recipe_stores_the_published_audio_shape_frames_and_segment(dataset, recipe, tmp_path, monkeypatch):
    shape, extraction, segment = RECIPE_OUTPUTS[dataset, recipe]
    settings = resolved(dataset, recipe, tmp_path, monkeypatch)
    assert AudioPipeline(**settings.audio).output_shape() == shape
    assert (settings.extraction, settings.segment) == (extraction, segment)
    assert set(dataset.RECIPES) == {r for d, r in RECIPE_OUTPUTS if d is dataset}


def test_vggsound_serves_a_5_s_crop_of_its_10_s_spectrogram(tmp_path, monkeypatch):
    # OGM-GE VGGSoundDataset: a random 5 s window of the 10 s clip, STFT 256/128 -> 129x626
    settings = resolved(VGGSound, "ogm", tmp_path, monkeypatch)
    assert AudioPipeline(**settings.audio).served_shape() == (129, 626)


@pytest.mark.parametrize("dataset, recipe, frames", [
    (CremaD, "aug", 1),  # AUG use_pre_frame = 1; OGM-GE args.fps default 1
    (KineticsSounds, "aug", 3),  # "evenly pick 3 frames"
    (AVE, "pmr", 3),  # PMR --num_frame 3
    (VGGSound, "ogm", 3),  # OGM-GE VGGSoundDataset: 3 frames
])
def test_each_dataset_serves_its_published_default_recipe_and_frame_count(dataset, recipe, frames):
    defaults = {h.name: h.default for h in dataset.HPARAMS}
    assert dataset.DEFAULT_RECIPE == recipe and defaults["recipe"] == recipe and defaults["frames"] == frames
    assert defaults["image_size"] == 224 and defaults["frame_rule"] == "segments"


@pytest.mark.parametrize("dataset, audio, video, frames", [
    (CremaD, "AudioWAV/1001_DFA_ANG_XX.wav", "VideoFlash/1001_DFA_ANG_XX.flv", "Image-01-FPS/1001_DFA_ANG_XX"),
    (KineticsSounds, "audio/1001_DFA_ANG_XX.wav", "video/1001_DFA_ANG_XX.mp4", "Image-01-FPS/1001_DFA_ANG_XX"),
    # AVE is distributed as videos only: the audio track comes from the mp4
    (AVE, "AVE/1001_DFA_ANG_XX.mp4", "AVE/1001_DFA_ANG_XX.mp4", "Image-01-FPS/1001_DFA_ANG_XX"),
    (VGGSound, "audio/1001_DFA_ANG_XX.wav", "video/1001_DFA_ANG_XX.mp4", "Image-01-FPS/1001_DFA_ANG_XX.mp4"),
])
def test_each_dataset_finds_media_in_its_published_layout(dataset, audio, video, frames, tmp_path, monkeypatch):
    clip = "1001_DFA_ANG_XX"
    for path in {audio, video}:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"x")
    (tmp_path / frames).mkdir(parents=True)
    sample = Sample(clip, "train", 0, "x", "list:1", row=SplitRow(clip, "x", 1, ("x", clip, "good", "0", "10")))
    recipe = dataset.DEFAULT_RECIPE
    for visual, expected in (("video", video), ("frames", frames)):
        monkeypatch.setattr(av, "require_backend", lambda pipeline: None)
        settings = dataset.resolve_settings(recipe, {}, PrepareOptions(visual=visual), tmp_path)
        media, _ = dataset.locate(tmp_path, sample, settings)
        assert media == {"audio": audio, "visual": expected}
    settings = dataset.resolve_settings(recipe, {}, PrepareOptions(visual="auto"), tmp_path)
    assert settings.visual == "frames"


def vgg_sample(clip: str) -> Sample:
    return Sample(clip, "train", 0, "dog", "vggsound.csv:1", row=SplitRow(clip, "dog", 1, ()))


def test_vggsound_takes_a_frame_folder_named_without_mp4_and_never_a_file_of_the_folders_name(tmp_path):
    # OGM-GE names the folder <id>.mp4/; a folder without the suffix is accepted too, a stray file is not a folder
    clip = "abc_30"
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / f"{clip}.wav").write_bytes(b"x")
    (tmp_path / "Image-01-FPS" / clip).mkdir(parents=True)
    (tmp_path / "Image-01-FPS" / f"{clip}.mp4").write_bytes(b"a video put among the frame folders")
    settings = VGGSound.resolve_settings("ogm", {}, PrepareOptions(visual="frames"), tmp_path)
    media, _ = VGGSound.locate(tmp_path, vgg_sample(clip), settings)
    assert media == {"audio": f"audio/{clip}.wav", "visual": f"Image-01-FPS/{clip}"}


def test_vggsound_media_names_try_the_start_as_written_then_zero_padded_to_six_digits():
    assert VGGSound.media_names("a_b_30") == ("a_b_30", "a_b_000030")
    assert VGGSound.media_names("a_b_x") == ("a_b_x",)
    assert VGGSound.media_names("a_b_0") == ("a_b_0", "a_b_000000")


def test_vggsound_a_zero_padded_start_in_the_csv_finds_media_named_by_the_published_unpadded_start(tmp_path):
    # Copies of vggsound.csv that zero-pad the start (000030) name clips that the published file names a_b_30.
    assert VGGSound.media_names("a_b_000030") == ("a_b_000030", "a_b_30")
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "a_b_30.wav").write_bytes(b"x")
    (tmp_path / "Image-01-FPS" / "a_b_30.mp4").mkdir(parents=True)
    settings = VGGSound.resolve_settings("ogm", {}, PrepareOptions(visual="frames"), tmp_path)
    media, _ = VGGSound.locate(tmp_path, vgg_sample("a_b_000030"), settings)
    assert media == {"audio": "audio/a_b_30.wav", "visual": "Image-01-FPS/a_b_30.mp4"}


def test_a_missing_medium_names_the_path_looked_for(tmp_path):
    clip = "abc_30"
    (tmp_path / "Image-01-FPS").mkdir()
    settings = VGGSound.resolve_settings("ogm", {}, PrepareOptions(visual="frames"), tmp_path)
    with pytest.raises(MediaError) as err:
        VGGSound.locate(tmp_path, vgg_sample(clip), settings)
    assert Path(err.value.path) == tmp_path / "Image-01-FPS" / clip
    (tmp_path / "Image-01-FPS" / f"{clip}.mp4").mkdir()
    with pytest.raises(MediaError) as err:
        VGGSound.locate(tmp_path, vgg_sample(clip), settings)
    assert Path(err.value.path) == tmp_path / "audio" / f"{clip}.wav"


def test_a_minimum_of_no_frames_is_refused(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="min_frames must be >= 1"):
        resolved(CremaD, "ogm", tmp_path, monkeypatch, min_frames=0)


# --- CREMA-D ------------------------------------------------------------------------------------------------------

def cremad_files(folder: Path, *, val: bool = True, stat=EMOTIONS) -> dict[str, Path]:
    rows = {"train.csv": ["1001_A_NEU_XX,NEU", "1002_A_HAP_XX,HAP", "1003_A_SAD_XX,SAD"],
            "test.csv": ["1004_A_NEU_XX,NEU", "1001_B_HAP_XX,HAP"], "stat.csv": list(stat)}
    if val:
        rows |= {"my_train.csv": ["1001_A_NEU_XX,NEU", "1002_A_HAP_XX,HAP"], "val.csv": ["1003_A_SAD_XX,SAD"]}
    for name, lines in rows.items():
        write_lines(folder / name, lines, crlf=False)
    return {name: folder / name for name in rows}


def test_cremad_validation_is_val_csv_and_actors_are_counted_per_split(tmp_path):
    tables = CremaD.read_splits(cremad_files(tmp_path), tmp_path, PrepareOptions(label_order="ogm"), None)
    assert list(tables.val_ids) == ["1003_A_SAD_XX"] and "val.csv" in tables.val_source
    assert tables.info["actors"] == {"train": 3, "test": 2, "in_both": 1}
    assert [s.speaker for s in tables.splits["test"]] == ["1004", "1001"]


def test_cremad_without_a_validation_partition_has_no_val_ids(tmp_path):
    tables = CremaD.read_splits(cremad_files(tmp_path, val=False), tmp_path, PrepareOptions(label_order="ogm"), None)
    assert not tables.val_ids


@pytest.mark.parametrize("alone", ["my_train.csv", "val.csv"])
def test_cremad_one_validation_file_without_its_partner_is_an_error(alone, tmp_path):
    files = cremad_files(tmp_path)
    del files[({"my_train.csv", "val.csv"} - {alone}).pop()]
    with pytest.raises(PrepareError, match=f"found {alone} without its partner"):
        CremaD.read_splits(files, tmp_path, PrepareOptions(label_order="ogm"), None)


def test_cremad_validation_ids_absent_from_train_csv_are_named(tmp_path):
    files = cremad_files(tmp_path)
    write_lines(files["val.csv"], ["1003_A_SAD_XX,SAD", "1009_A_SAD_XX,SAD"], crlf=False)
    with pytest.raises(PrepareError, match=r"1 id\(s\) in my_train.csv/val.csv but not train.csv .*1009_A_SAD_XX"):
        CremaD.read_splits(files, tmp_path, PrepareOptions(label_order="ogm"), None)


def test_cremad_label_orders():
    stat = ["SAD", "NEU", "HAP", "FEA", "DIS", "ANG"]
    assert CremaD.label_map(stat, "ogm", "stat.csv") == EMOTIONS  # hard-coded, whatever stat.csv's order
    assert CremaD.label_map(stat, "stat", "stat.csv") == tuple(stat)
    assert CremaD.label_map(stat, "sorted", "stat.csv") == tuple(sorted(stat))
    with pytest.raises(PrepareError, match="the 'ogm' label map needs exactly"):
        CremaD.label_map(["ZER", "ONE", "TWO", "THR", "FOU", "FIV"], "ogm", "stat.csv")


# --- Kinetics-Sounds ----------------------------------------------------------------------------------------------

def ks_files(folder: Path, train: list[str], *, labels=KineticsSounds.CLASSES, database=None) -> dict[str, Path]:
    (folder / "KS.json").write_text(json.dumps({"labels": list(labels), "database": database or {}}))
    write_lines(folder / "my_train.txt", train, crlf=True)
    write_lines(folder / "my_test.txt", ["t1_1,10,0"], crlf=True)
    return {name: folder / name for name in ("my_train.txt", "my_test.txt", "KS.json")}


def test_kinetics_sounds_label_integers_index_ks_json_and_out_of_range_or_mismatched_rows_are_bad(tmp_path):
    database = {"b_000001_000011": {"subset": "training", "label": "bowling"},
                "c_000001_000011": {"subset": "training", "label": "tickling"}}
    files = ks_files(tmp_path, ["a_000001_000011,10,30", "b_000001_000011,10,2", "c_000001_000011,10,2",
                                "d_000001_000011,10,31"], database=database)
    tables = KineticsSounds.read_splits(files, tmp_path, PrepareOptions(), None)
    assert [(s.id, s.label_name) for s in tables.splits["train"]] == [("a_000001_000011", "tickling"),
                                                                      ("b_000001_000011", "bowling")]
    assert [(d.id, d.kind) for d in tables.dropped] == [("c_000001_000011", "label mismatch"),
                                                          ("d_000001_000011", "unknown label")]


def test_kinetics_sounds_refuses_a_ks_json_listing_the_classes_in_another_order(tmp_path):
    files = ks_files(tmp_path, ["a_000001_000011,10,0"], labels=list(reversed(KineticsSounds.CLASSES)))
    with pytest.raises(PrepareError, match="KS.json 'labels'"):
        KineticsSounds.read_splits(files, tmp_path, PrepareOptions(), None)


# --- AVE ----------------------------------------------------------------------------------------------------------

def test_ave_refuses_a_test_list_whose_first_appearance_order_is_not_the_label_map(tmp_path):
    names = list(AVE.CLASSES)
    names[0], names[1] = names[1], names[0]
    write_lines(tmp_path / "testSet.txt", [f"{c}&t{i}&good&0&10" for i, c in enumerate(names)], crlf=False)
    for name in ("trainSet.txt", "valSet.txt"):
        write_lines(tmp_path / name, [f"{AVE.CLASSES[0]}&{name}&good&0&10"], crlf=False)
    files = {n: tmp_path / n for n in ("trainSet.txt", "valSet.txt", "testSet.txt")}
    with pytest.raises(PrepareError, match="first appearance of classes in testSet.txt"):
        AVE.read_splits(files, tmp_path, PrepareOptions(), None)


def test_ave_whole_clip_recipes_store_no_segment(tmp_path):
    clip = "c---zaDCTaE"
    (tmp_path / "AVE").mkdir()
    (tmp_path / "AVE" / f"{clip}.mp4").write_bytes(b"x")
    sample = Sample(clip, "test", 0, AVE.CLASSES[0], "testSet.txt:1",
                    row=SplitRow(clip, AVE.CLASSES[0], 1, (AVE.CLASSES[0], clip, "good", "2", "4")))
    for recipe, extra in (("pmr", {"segment": (2, 4)}), ("ogm", {})):
        settings = AVE.resolve_settings(recipe, {}, PrepareOptions(visual="video"), tmp_path)
        assert AVE.locate(tmp_path, sample, settings)[1] == extra


# --- VGGSound -----------------------------------------------------------------------------------------------------

def test_vggsound_label_map_is_the_sorted_labels_of_every_row_test_only_labels_included(tmp_path):
    write_lines(tmp_path / "vggsound.csv", ["a,1,waterfall burbling,train", 'b,2,"people marching, parade",train',
                                            "c,3,dog barking,test", "d,4,waterfall burbling,test"], crlf=False)
    tables = VGGSound.read_splits({"vggsound.csv": tmp_path / "vggsound.csv"}, tmp_path, PrepareOptions(), None)
    assert tables.classes == ("dog barking", "people marching, parade", "waterfall burbling")
    assert [s.label for s in tables.splits["test"]] == [0, 2]


def test_vggsound_without_test_rows_is_an_error(tmp_path):
    write_lines(tmp_path / "vggsound.csv", ["a,1,dog barking,train"], crlf=False)
    with pytest.raises(PrepareError, match=r"no rows for split\(s\) \['test'\]"):
        VGGSound.read_splits({"vggsound.csv": tmp_path / "vggsound.csv"}, tmp_path, PrepareOptions(), None)


# --- loading an event segment ---------------------------------------------------------------------------------------

def ave_record(segment: list[int], folder: str) -> Record:
    return Record(0, Sample("clip", "test", 0, AVE.CLASSES[0], "testSet.txt:1"),
                  {"audio": "AVE/clip.wav", "visual": f"{folder}/clip"}, {"segment": segment})


def test_an_event_segment_of_a_2_fps_frame_folder_keeps_both_frames_of_each_second(tmp_path):
    write_frame_folder(tmp_path / "Image-02-FPS" / "clip", 12, 90, size=(12, 16))
    write_wav(tmp_path / "AVE" / "clip.wav", 6.0)
    opts = PrepareOptions(visual="frames", frame_size=(12, 16), frames_per_second=2,
                          layout={"frames_dir": "Image-02-FPS"})
    settings = AVE.resolve_settings("pmr", {}, opts, tmp_path)
    arrays, fact = AVE.load(tmp_path, ave_record([2, 3], "Image-02-FPS"), settings)
    # files 4..7 hold seconds 2 and 3 (the fixture's file k has red second_level(k))
    np.testing.assert_allclose(arrays["frames"][..., 0].mean(axis=(1, 2)), [second_level(k) for k in range(4, 8)],
                               atol=4)
    assert fact["frames"] == 4


def test_an_event_whose_start_equals_its_end_takes_the_audio_of_that_one_second(tmp_path):
    write_frame_folder(tmp_path / "Image-01-FPS" / "clip", 6, 90, size=(12, 16))
    write_wav(tmp_path / "AVE" / "clip.wav", 6.0)
    settings = AVE.resolve_settings("pmr", {}, PrepareOptions(visual="frames", frame_size=(12, 16)), tmp_path)
    arrays, fact = AVE.load(tmp_path, ave_record([3, 3], "Image-01-FPS"), settings)
    pipeline = AudioPipeline(**settings.audio)
    expected = features_from_file(pipeline, tmp_path / "AVE" / "clip.wav", (3, 4))[0].astype(np.float16)
    np.testing.assert_array_equal(arrays["audio"], expected)
    assert fact["frames"] == 1


def test_event_segments_and_whole_clips_make_different_caches(tmp_path):
    (tmp_path / "Image-01-FPS").mkdir()
    event = AVE.resolve_settings("pmr", {}, PrepareOptions(visual="frames"), tmp_path)
    assert AVE.cache_options(event, ())["segment"] == "event"
    whole = AVE.resolve_settings("ogm", {}, PrepareOptions(visual="frames"), tmp_path)
    assert "segment" not in AVE.cache_options(whole, ())


# --- caches built by earlier code -----------------------------------------------------------------------------------

@pytest.mark.parametrize("policies, wanted, stale", [
    ({"min_frames": 1}, 4, True),  # before min_frames_from, 1 was the old default
    ({"min_frames": 2}, 4, False),  # another value was chosen with --min-frames
    ({"min_frames": 1}, 1, False),
    ({"min_frames": 1, "min_frames_from": "--min-frames"}, 4, False),
    ({"min_frames": 2, "min_frames_from": "recipe"}, 4, True),
    ({"min_frames": 4, "min_frames_from": "recipe"}, 4, False),
])
def test_a_recorded_min_frames_is_stale_only_when_the_recipe_chose_another(policies, wanted, stale):
    assert av.min_frames_stale(policies, wanted) is stale


@pytest.mark.parametrize("visual, name", [
    ({}, "none"),
    ({"source": "frames"}, "none"),
    ({"source": "video"}, "frames_1fps"),  # built before rules were recorded
    ({"source": "video", "extraction": {"name": "frames_1fps_min3"}}, "frames_1fps_min3"),
])
def test_the_extraction_rule_a_cache_was_built_by(visual, name):
    assert av.recorded_extraction({"visual": visual}) == name


class FakeCache:
    def __init__(self, manifest=None):
        self.path = Path("cache")
        self.manifest = manifest or {}


def test_random_k_refuses_only_clips_of_fewer_frames_than_it_draws():
    hp = {"frames": 3, "frame_rule": "random_k"}
    av.check_distinct_frames(FakeCache(), np.array([3, 5]), HParams("data", hp))
    with pytest.raises(CacheError, match="1 clip.s. have fewer"):
        av.check_distinct_frames(FakeCache(), np.array([2, 3, 5]), HParams("data", hp))
    av.check_distinct_frames(FakeCache(), np.array([1, 2]), HParams("data", {**hp, "frame_rule": "segments"}))


@pytest.mark.parametrize("key", ["follows", "deviation"])
def test_a_cache_of_an_earlier_audio_pipeline_version_is_refused(key):
    recorded = get_pipeline("ogm_stft3s").params()
    assert av.audio_pipeline(FakeCache({"audio": recorded})).name == "ogm_stft3s"
    with pytest.raises(CacheError, match=f"recorded {key}"):
        av.audio_pipeline(FakeCache({"audio": {**recorded, key: "an earlier text"}}))


def test_the_manifest_counts_short_audio_clips_and_tops_up_only_videos(tmp_path):
    (tmp_path / "Image-01-FPS").mkdir()
    facts = [{"short": True, "frames": 2, "source_size": [360, 480]},
             {"short": False, "frames": 5, "source_size": None}]
    for visual, top_up in (("video", "clips with fewer than 3 kept frames are topped up to 3"),
                           ("frames", "none at prepare time")):
        settings = CremaD.resolve_settings("pmr", {}, PrepareOptions(visual=visual), tmp_path)
        entries = CremaD.manifest_entries(settings, facts, {"frames": 7})
        assert entries["counts"]["short_audio_clips"] == 1 and entries["counts"]["few_frame_clips"] == {"2": 1}
        assert entries["policies"]["frame_top_up"].startswith(top_up)


def test_cremad_a_third_row_of_an_id_names_the_first_line_of_that_id(tmp_path):
    files = cremad_files(tmp_path)
    write_lines(files["my_train.csv"], ["1001_A_NEU_XX,NEU", "1002_A_HAP_XX,HAP", "1001_A_NEU_XX,NEU",
                                        "1001_A_NEU_XX,NEU"], crlf=False)
    with pytest.raises(PrepareError, match=re.escape("my_train.csv:4 1001_A_NEU_XX (first on line 1)")):
        CremaD.read_splits(files, tmp_path, PrepareOptions(label_order="ogm"), None)
