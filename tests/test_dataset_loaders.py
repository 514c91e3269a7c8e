"""UCF-101, NVGesture, CMU-MOSEI, Food-101 and the image-text loaders: parsing rules, label maps and reader checks
that the tests of tests/test_more_datasets.py and tests/test_video_feature_datasets.py leave open (each found by a
small change to the loader that every other test let pass)."""

from __future__ import annotations

import pickle
import shutil
import wave
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from datasets.food101 import parse_titles_csv
from datasets.media import MISSING_MEDIA, MediaError
from datasets.mosei import Mosei
from datasets.nvgesture import NVGesture, parse_nvgesture_list, read_clip, read_flow
from datasets.splits import SplitParseError, SplitRow
from datasets.tables import PrepareOptions, Sample
from datasets.ucf101 import UCF101, parse_class_index
from tests.more_fixtures import make_ucf101, write_lines


def defaults(cls) -> dict:
    return {h.name: h.default for h in (*cls.SETTINGS, *cls.HPARAMS)}


def test_video_and_feature_defaults_are_the_published_recipes():
    # Every test sets these explicitly to tiny values, so a changed default reached every real run unseen.
    ucf = defaults(UCF101)
    assert {k: ucf[k] for k in ("split", "rgb_source", "rgb_frames", "flow_max_frames", "frame_size", "rgb_file_num",
                                "flip", "mean", "std")} == {
        "split": 1, "rgb_source": "frames", "rgb_frames": 6, "flow_max_frames": 0, "frame_size": 224,
        "rgb_file_num": 6, "flip": True, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert (ucf["flow_u_dir"], ucf["flow_v_dir"]) == ("u", "v")
    nv = defaults(NVGesture)
    assert {k: nv[k] for k in ("train_list", "test_list", "frames", "frame_size", "flow_dir", "flow_channels",
                               "crop_size", "train_frames", "flip", "mean", "std")} == {
        "train_list": "nvgesture_train_correct_v2.lst", "test_list": "nvgesture_test_correct_v2.lst", "frames": 80,
        "frame_size": 256, "flow_dir": "Video_data/flow_data", "flow_channels": 2, "crop_size": 224,
        "train_frames": 64, "flip": False, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert len(NVGesture.CLASSES) == 25
    mosei = defaults(Mosei)
    assert (mosei["aligned"], mosei["acc2"], Mosei.DEFAULT_RECIPE) == (False, "zero_positive", "unaligned")


# --- UCF-101 -----------------------------------------------------------------------------------------------------


def test_ucf101_class_index_line_with_a_third_field_is_refused_not_read_as_its_first_word(tmp_path):
    # "2 Apply Eye" was read as class "Apply": a class name silently cut at its first space.
    path = write_lines(tmp_path / "classInd.txt", ["1 Archery", "2 Apply Eye"], "\r\n")
    with pytest.raises(SplitParseError, match=r"classInd.txt:2: expected '<number> <ClassName>'"):
        parse_class_index(path)


@pytest.mark.parametrize("lines, message", [
    (["1 Archery", "2 Basketball", "3 Archery"], r"class\(s\) listed twice: \['Archery'\]"),
    (["1 Archery", "2 Basketball", "2 Bowling"], r"number\(s\) listed twice: \[2\]"),
])
def test_ucf101_class_index_listing_a_class_or_number_twice_is_refused(tmp_path, lines, message):
    # A name listed twice would give two label indices to one class folder, a number twice two classes to one number.
    with pytest.raises(SplitParseError, match=message):
        parse_class_index(write_lines(tmp_path / "classInd.txt", lines, "\r\n"))


def test_ucf101_short_clip_counts_stop_exactly_at_rgb_frames_and_three_flow_frames():
    # A clip with exactly rgb_frames RGB frames or 3 flow frames is served like any other: counting it as short
    # overstated the clips that repeat frames.
    settings = SimpleNamespace(rgb_frames=6, flow_max_frames=0, rgb_source="frames", as_dict=dict)
    facts = [{"rgb_frames": 6, "flow_frames": 3}, {"rgb_frames": 5, "flow_frames": 2}, {"rgb_frames": 7,
                                                                                         "flow_frames": 4}]
    counts = UCF101.manifest_entries(settings, facts, {})["counts"]
    assert counts == {"rgb_clips_under_rgb_frames": 1, "flow_clips_under_3_frames": 1}


# --- Food-101 ----------------------------------------------------------------------------------------------------


def test_food101_headerless_first_row_titled_like_an_image_column_is_a_sample_not_a_header(tmp_path):
    # A header names an image AND a label column: a first row whose title is just "Image" was taken for a header
    # and lost (skipped as a header without a text column).
    path = write_lines(tmp_path / "train_titles.csv", ["apple_pie_1.jpg,Image,apple_pie", "pho_2.jpg,Soup,pho"])
    parsed, _ = parse_titles_csv(path)
    assert [(r.id, r.label, r.fields[0], r.line) for r in parsed.rows] == [
        ("apple_pie_1.jpg", "apple_pie", "Image", 1), ("pho_2.jpg", "pho", "Soup", 2)]
    assert parsed.skipped == []


def test_food101_a_header_repeated_below_the_first_is_a_row_as_pandas_reads_it(tmp_path):
    # pandas takes only the first line as the header; a second header line is a row whose class "text" is then a
    # named bad row, not a silent second header that remaps the columns of every row below it.
    path = write_lines(tmp_path / "train_titles.csv", ["image_path,text,label", "label,image_path,text",
                                                       "p_2.jpg,Soup,pho"])
    parsed, _ = parse_titles_csv(path)
    assert [(r.line, r.id, r.label) for r in parsed.rows] == [(2, "label", "text"), (3, "p_2.jpg", "pho")]
    assert [(n, why) for n, _, why in parsed.skipped] == [(1, "header")]


# --- NVGesture ---------------------------------------------------------------------------------------------------


def test_nvgesture_flow_that_is_a_pickle_a_torch_save_file_or_other_bytes_is_corrupt_flow_not_read(tmp_path):
    # A .npy that is a pickled dict (np.load's pickle fall-back) or torch.save's zip archive is no flow array.
    (tmp_path / "0.npy").write_bytes(pickle.dumps({"flow": np.ones((5, 5, 2, 3), np.float32)}))
    np.save(tmp_path / "1.npy", np.array({"flow": 1}, dtype=object), allow_pickle=True)
    torch.save(torch.ones(5, 5, 2, 3), tmp_path / "2.npy")
    # Any other bytes: np.load took them for a pickle and the message advised loading them unsafely.
    (tmp_path / "3.npy").write_bytes(b"garbage, not an array")
    for name, message in (("0.npy", r"not a \.npy file \(it starts with b'\\x80"), ("1.npy", "allow_pickle=False"),
                          ("2.npy", "got NpzFile"), ("3.npy", r"not a \.npy file \(it starts with b'garbag'\)$")):
        with pytest.raises(MediaError, match=message) as err:
            read_flow(tmp_path / name, 4, 5, 2)
        assert err.value.kind == "corrupt flow" and name in err.value.path


def test_nvgesture_label_zero_is_a_bad_line_not_the_last_class(tmp_path):
    # Labels are 1-based: "label:0" read as CLASSES[-1] trained a bad line as class_25.
    good = "path:./Video_data/class_01/subject1_r0 depth:sk_depth:5:85 color:sk_color:5:85 duo_left:d:1:2 label:1"
    path = write_lines(tmp_path / "nvgesture_train_correct_v2.lst", [good, good.replace("label:1", "label:0")])
    parsed = parse_nvgesture_list(path)
    assert [r.line for r in parsed.rows] == [1]
    assert [(line, reason) for line, _, reason in parsed.skipped] == [(2, "label '0' is not 1..25")]


def test_nvgesture_lists_label_order_is_by_class_number_not_first_appearance(tmp_path):
    line = "path:./Video_data/class_{n:02d}/subject{s}_r0 depth:sk_depth:1:9 color:sk_color:1:9 label:{n}"
    write_lines(tmp_path / "train.lst", [line.format(n=3, s=1), line.format(n=1, s=2)])
    write_lines(tmp_path / "test.lst", [line.format(n=7, s=3)])
    files = {"train.lst": tmp_path / "train.lst", "test.lst": tmp_path / "test.lst"}
    tables = NVGesture.read_splits(files, tmp_path, PrepareOptions(label_order="lists"),
                                   SimpleNamespace(train_list="train.lst", test_list="test.lst"))
    assert tables.classes == ("class_01", "class_03", "class_07")
    assert [s.label for s in tables.splits["train"]] == [1, 0] and tables.splits["test"][0].label == 2


def test_nvgesture_skipped_list_lines_are_counted_by_file_and_reason(tmp_path):
    line = "path:./Video_data/class_01/subject{s}_r0 depth:sk_depth:1:9 color:sk_color:1:9 label:{n}"
    write_lines(tmp_path / "train.lst", [line.format(n=1, s=1), "", line.format(n=26, s=2), line.format(n=0, s=3)])
    write_lines(tmp_path / "test.lst", [line.format(n=1, s=4)])
    files = {"train.lst": tmp_path / "train.lst", "test.lst": tmp_path / "test.lst"}
    tables = NVGesture.read_splits(files, tmp_path, PrepareOptions(label_order="declared"),
                                   SimpleNamespace(train_list="train.lst", test_list="test.lst"))
    assert tables.info["skipped_lines"] == {"train.lst": {"blank line": 1, "label '26' is not 1..25": 1,
                                                          "label '0' is not 1..25": 1}, "test.lst": {}}
    assert sorted(d.where for d in tables.dropped) == ["train.lst:3", "train.lst:4"]


def test_nvgesture_sensor_window_must_be_folder_start_end_with_whole_numbers(tmp_path):
    # A non-numeric or extra window field was accepted by the list parser and crashed prepare later, naming no line.
    good = "path:./Video_data/class_01/subject1_r0 depth:sk_depth:5:85 color:sk_color:5:85 label:1"
    path = write_lines(tmp_path / "nvgesture_test_correct_v2.lst", [
        good, good.replace("color:sk_color:5:85", "color:sk_color:x:85"),
        good.replace("depth:sk_depth:5:85", "depth:sk_depth:5:85:90")])
    parsed = parse_nvgesture_list(path)
    assert [r.line for r in parsed.rows] == [1]
    assert [(line, reason) for line, _, reason in parsed.skipped] == [
        (2, "color should be <folder>:<start>:<end>, got 'sk_color:x:85'"),
        (3, "depth should be <folder>:<start>:<end>, got 'sk_depth:5:85:90'")]


def test_nvgesture_a_sensor_file_without_a_video_stream_is_corrupt_video(tmp_path):
    # An audio file under a sensor's .avi name crashed with a bare IndexError instead of a bad item naming the file.
    with wave.open(str(tmp_path / "sk_color.avi"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(800, np.int16).tobytes())
    with pytest.raises(MediaError, match="sk_color.avi: no video stream") as err:
        read_clip(tmp_path / "sk_color.avi", 0, 4, 4, 8)
    assert err.value.kind == "corrupt video"


# --- UCF-101: media and line counts ------------------------------------------------------------------------------


@pytest.mark.parametrize("role, folder", [("visual", "ucf101-frames-1fps/video-set"), ("flow_u", "u"), ("flow_v", "v")])
def test_ucf101_a_clip_missing_one_media_folder_is_missing_media_naming_the_role(tmp_path, role, folder):
    tree = make_ucf101(tmp_path / "raw", per_class={"train": 1, "test": 1})
    name = tree.ids["train"][0].split("/")[1]
    shutil.rmtree(tree.root / folder / name)
    row = SplitRow(tree.ids["train"][0], tree.ids["train"][0].split("/")[0], 1, (f"{tree.ids['train'][0]}.avi", "1"))
    sample = Sample(row.id, "train", 0, row.label, "trainlist01.txt:1", "", row)
    settings = SimpleNamespace(rgb_source="frames", rgb_dir="ucf101-frames-1fps/video-set", video_dir="UCF-101",
                               flow_u_dir="u", flow_v_dir="v")
    with pytest.raises(MediaError, match=f"{role} of {row.id} not found") as err:
        UCF101.locate(tree.root, sample, settings)
    assert err.value.kind == MISSING_MEDIA and err.value.path.endswith(f"{folder}/{name}")


def test_ucf101_skipped_list_lines_are_counted_by_file_and_reason(tmp_path):
    lists = tmp_path / "lists"
    write_lines(lists / "classInd.txt", ["1 Archery"], "\r\n")
    write_lines(lists / "trainlist01.txt", ["Archery/v_Archery_g01_c01.avi 1", "", "Archery/v_Archery_g02_c01.avi",
                                            "v_Archery_g03_c01.avi 1"], "\r\n")
    write_lines(lists / "testlist01.txt", ["Archery/v_Archery_g04_c01.avi"], "\r\n")
    files = {name: lists / name for name in ("classInd.txt", "trainlist01.txt", "testlist01.txt")}
    tables = UCF101.read_splits(files, tmp_path, PrepareOptions(label_order="sorted"), SimpleNamespace(split=1))
    assert tables.info["skipped_lines"] == {
        "trainlist01.txt": {"blank line": 1, "expected '<Class>/<video>.avi <number>'": 2}, "testlist01.txt": {}}
    assert sorted((d.where, d.bad) for d in tables.dropped) == [("trainlist01.txt:3", True),
                                                                ("trainlist01.txt:4", True)]
