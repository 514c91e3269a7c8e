"""Split-file parsers on synthetic byte variants and, when ../shared/splits is present, on the real published files;
pinned sources (SHA-256 table, download through a file:// URL, tampering)."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from datasets import sources
from datasets.ave import AVE
from datasets.cremad import CremaD
from datasets.kinetics_sounds import KineticsSounds
from datasets.nvgesture import parse_nvgesture_list
from datasets.prepare import validation_split
from datasets.sources import PINNED, SplitFileError, fetch_split_files, pinned_files, sha256_file
from datasets.splits import (
    ParsedList,
    SplitParseError,
    SplitRow,
    ave_segment,
    csv_line_fields,
    duplicate_ids,
    first_appearance,
    is_whole_number,
    natural_key,
    parse_ave_list,
    parse_class_list,
    parse_ks_json,
    parse_ks_list,
    parse_label_csv,
    parse_vggsound_csv,
    resolve_duplicates,
)
from datasets.tables import PrepareError, PrepareOptions, SplitTables, indexed_label, malformed_rows
from datasets.ucf101 import parse_class_index, parse_video_list
from datasets.vggsound import VGGSound

SHARED = Path(__file__).resolve().parents[2] / "shared" / "splits"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/splits not present")

ROWS = ["1088_IOM_NEU_XX,NEU", "1017_IWW_HAP_XX,HAP", "1033_ITS_HAP_XX,HAP"]


@pytest.mark.parametrize("data", [
    "\n".join(ROWS) + "\n",                            # PMR/MMCosine/Diagnosing my_train: LF
    "\r\n".join(ROWS) + "\r\n",                        # OGM-GE: CRLF
    "\ufeff" + "\r\n".join(ROWS) + "\r\n",             # with a BOM
    "\n".join(ROWS),                                   # no final newline
    "name,label\r\n" + "\r\n".join(ROWS) + "\r\n",     # Diagnosing's own train.csv header
])
def test_cremad_list_variants_yield_the_same_rows(tmp_path, data):
    path = tmp_path / "train.csv"
    path.write_bytes(data.encode())
    parsed = parse_label_csv(path)
    assert [(r.id, r.label) for r in parsed.rows] == [tuple(r.split(",")) for r in ROWS]
    assert [r.line for r in parsed.rows][0] == (2 if data.startswith("name") else 1)
    assert len(parsed.rows) + len(parsed.skipped) == len(data.replace("\ufeff", "").splitlines())


def test_header_is_only_accepted_on_the_first_line(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("1088_IOM_NEU_XX,NEU\nname,label\n")
    rows = parse_label_csv(path).rows
    assert [r.id for r in rows] == ["1088_IOM_NEU_XX", "name"], "a later 'name,label' is a data row (bad label)"


def test_malformed_row_names_file_and_line_or_is_reported(tmp_path):
    path = tmp_path / "test.csv"
    path.write_bytes(b"1088_IOM_NEU_XX,NEU\r\n1017_IWW_HAP_XX\r\n\r\n")
    with pytest.raises(SplitParseError, match=r"test.csv:2"):
        parse_label_csv(path)
    parsed = parse_label_csv(path, strict=False)
    assert [r.id for r in parsed.rows] == ["1088_IOM_NEU_XX"]
    assert [(line, reason.split(",")[0]) for line, _, reason in parsed.skipped] == [
        (2, "expected '<id>"), (3, "blank line")]


@pytest.mark.parametrize("line", ["1017_IWW_HAP_XX,HAP,NEU", "1017_IWW_HAP_XX,,HAP", "1017_IWW_HAP_XX.flv HAP"])
def test_a_row_with_other_than_two_fields_is_malformed_not_read_by_position(tmp_path, line):
    # A third field (or MLA's space-separated "<id>.flv Sad") is another format: never take field 2 as the label.
    path = tmp_path / "train.csv"
    path.write_bytes(f"1088_IOM_NEU_XX,NEU\r\n{line}\r\n".encode())
    with pytest.raises(SplitParseError, match=r"train.csv:2: expected '<id>,<label>'"):
        parse_label_csv(path)


@pytest.mark.parametrize("line", ["Church bell&c---zaDCTaE&good&0&10&3", "Church bell&c---zaDCTaE&good&0"])
def test_an_ave_row_with_other_than_five_fields_is_malformed(tmp_path, line):
    path = tmp_path / "trainSet.txt"
    path.write_text(f"Bark&abc&good&0&10\n{line}\n")
    with pytest.raises(SplitParseError, match=r"trainSet.txt:2: expected 5 '&'-separated fields"):
        parse_ave_list(path)


def test_ave_label_order_is_first_appearance_in_the_test_list_only(tmp_path):
    # PMR/AMSS: classes in order of first appearance in testSet.txt; trainSet.txt and valSet.txt may list them in any
    # order.
    classes = list(AVE.CLASSES)
    for name, order in (("trainSet.txt", classes[::-1]), ("valSet.txt", classes[1:] + classes[:1]),
                        ("testSet.txt", classes)):
        (tmp_path / name).write_text("".join(f"{c}&{name[:2]}{i:04d}&good&0&10\n" for i, c in enumerate(order)))
    tables = AVE.read_splits({n: tmp_path / n for n in AVE.SPLIT_FILES}, tmp_path, PrepareOptions(), None)
    assert tables.classes == AVE.CLASSES
    assert [s.label for s in tables.splits["train"]] == list(range(27, -1, -1))
    (tmp_path / "testSet.txt").write_text("".join(f"{c}&te{i:04d}&good&0&10\n" for i, c in enumerate(classes[::-1])))
    with pytest.raises(PrepareError, match="first appearance of classes in testSet.txt"):
        AVE.read_splits({n: tmp_path / n for n in AVE.SPLIT_FILES}, tmp_path, PrepareOptions(), None)


def test_the_ogm_label_map_needs_exactly_the_six_cremad_codes():
    assert CremaD.label_map(["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"], "ogm", "stat.csv") == CremaD.CLASSES
    with pytest.raises(PrepareError, match="--label-order stat"):
        CremaD.label_map(["NEU", "HAP", "SAD", "FEA", "DIS", "CAL"], "ogm", "stat.csv")


def test_stat_csv_with_bom_and_crlf(tmp_path):
    path = tmp_path / "stat.csv"
    path.write_bytes("\ufeffNEU\r\nHAP\r\nSAD\r\nFEA\r\nDIS\r\nANG\r\n".encode())
    assert len(path.read_bytes()) == 33
    assert parse_class_list(path) == ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]


def test_stat_csv_listing_a_class_twice_or_none_is_refused_naming_it(tmp_path):
    # A repeated code would add a seventh output class under --label-order stat/sorted.
    path = tmp_path / "stat.csv"
    path.write_bytes(b"NEU\r\nHAP\r\nNEU \r\nSAD\r\n")
    with pytest.raises(SplitParseError, match=r"stat\.csv: class\(es\) listed twice: \['NEU'\]"):
        parse_class_list(path)
    path.write_bytes(b"\xef\xbb\xbf\r\n \r\n")
    with pytest.raises(SplitParseError, match="no class names"):
        parse_class_list(path)


@pytest.mark.parametrize("line", ["--4-0ihtnBU_000058_000068,10,4", "--4-0ihtnBU_000058_000068 10 4",
                                  "--4-0ihtnBU_000058_000068,4", "--4-0ihtnBU_000058_000068 4"])
def test_ks_rows_comma_or_space_with_or_without_middle_field(tmp_path, line):
    path = tmp_path / "my_train.txt"
    path.write_bytes((line + "\r\n").encode())
    (row,) = parse_ks_list(path).rows
    assert (row.id, row.label) == ("--4-0ihtnBU_000058_000068", "4")


@pytest.mark.parametrize("line", ["abc_000001_000011,10,", ",10,4", "abc_000001_000011,,4"])
def test_ks_row_with_an_empty_field_is_an_error_not_a_shifted_row(tmp_path, line):
    # "<id>,10," has lost its label: merging the empty field away read the middle field 10 as the label.
    path = tmp_path / "my_train.txt"
    path.write_bytes((line + "\r\n").encode())
    with pytest.raises(SplitParseError, match="my_train.txt:1.*empty"):
        parse_ks_list(path)


def test_ks_non_integer_label_is_an_error(tmp_path):
    path = tmp_path / "my_test.txt"
    path.write_text("abc_1,10,four\n")
    with pytest.raises(SplitParseError, match="my_test.txt:1.*'four'"):
        parse_ks_list(path)


def test_ks_labels_index_ks_json_and_rows_it_contradicts_or_exceeds_are_bad_rows(tmp_path):
    # Integer label i is KS.json["labels"][i]; a row whose id KS.json lists under another class, or whose label is
    # past the 31 classes, is a bad row naming the line (never another class, never an IndexError).
    classes = list(KineticsSounds.CLASSES)
    database = {"aaaaaaaaaaa_000001_000011": {"subset": "training", "label": classes[4]},
                "bbbbbbbbbbb_000002_000012": {"subset": "training", "label": classes[7]},
                "ccccccccccc_1": {"subset": "training", "label": classes[30]}}
    (tmp_path / "KS.json").write_text(json.dumps({"labels": classes, "database": database}))
    (tmp_path / "my_train.txt").write_bytes(b"aaaaaaaaaaa_000001_000011,10,4\r\nbbbbbbbbbbb_000002_000012,10,8\r\n"
                                            b"ddddddddddd_000003_000013,10,31\r\n")
    (tmp_path / "my_test.txt").write_bytes(b"ccccccccccc_1,10,30\r\n")
    tables = KineticsSounds.read_splits({n: tmp_path / n for n in KineticsSounds.SPLIT_FILES}, tmp_path,
                                        PrepareOptions(), None)
    assert [(s.id, s.label, s.label_name) for s in tables.splits["train"]] == [
        ("aaaaaaaaaaa_000001_000011", 4, "dribbling_basketball")]
    assert [(s.id, s.label) for s in tables.splits["test"]] == [("ccccccccccc_1", 30)]
    assert [(d.id, d.kind, d.where, d.bad) for d in tables.dropped] == [
        ("bbbbbbbbbbb_000002_000012", "label mismatch", "my_train.txt:2", True),
        ("ddddddddddd_000003_000013", "unknown label", "my_train.txt:3", True)]


def test_ks_json_database_entry_that_is_not_an_object_is_named(tmp_path):
    path = tmp_path / "KS.json"
    path.write_text(json.dumps({"labels": ["a"], "database": {"abc_1": {"subset": "training", "label": "a"},
                                                              "abc_2": "training"}}))
    with pytest.raises(SplitParseError, match=f"{re.escape(str(path))}: database entry 'abc_2' is str"):
        parse_ks_json(path)


def test_ave_splits_on_ampersand_only_and_duplicate_policies(tmp_path):
    path = tmp_path / "trainSet.txt"
    path.write_text("Male speech, man speaking&id1&good&0&10\nBanjo&id2&good&0&10\n"
                    "Female speech, woman speaking&id1&good&0&10\nMandolin&id3&good&2&8\n")
    parsed = parse_ave_list(path)
    assert [(r.label, r.id) for r in parsed.rows][0] == ("Male speech, man speaking", "id1")
    assert duplicate_ids(parsed.rows) == {"id1": 2}
    first, dropped = resolve_duplicates(parsed.rows, "first")
    assert [(r.id, r.label) for r in first] == [("id1", "Male speech, man speaking"), ("id2", "Banjo"),
                                                ("id3", "Mandolin")]
    assert len(dropped) == 1 and "policy 'first'" in dropped[0][1]
    last, _ = resolve_duplicates(parsed.rows, "last")
    assert [(r.id, r.label) for r in last][1:] == [("id2", "Banjo"), ("id1", "Female speech, woman speaking"),
                                                   ("id3", "Mandolin")][1:]
    drop, dropped = resolve_duplicates(parsed.rows, "drop")
    assert [r.id for r in drop] == ["id2", "id3"] and len(dropped) == 2
    assert first_appearance(r.label for r in parsed.rows)[0] == "Male speech, man speaking"


def test_csv_line_fields_refuse_only_a_quote_left_open():
    assert csv_line_fields('a,"b,d') is None and csv_line_fields('a,"x""y,z') is None
    # Loose but closed quoting reads as the csv module's default reader reads it (as before this check).
    assert csv_line_fields('a,"b"c,d') == ["a", "bc", "d"] and csv_line_fields('a,b"c,d') == ["a", 'b"c', "d"]
    assert csv_line_fields('a,"x""y",z') == ["a", 'x"y', "z"] and csv_line_fields("") == []


def test_vggsound_row_with_an_unclosed_quote_is_named_not_merged_with_the_next(tmp_path):
    path = tmp_path / "vggsound.csv"
    path.write_text('aaa,10,"dog barking,train\nbbb,20,"cat, meowing",train\n', encoding="utf-8")
    with pytest.raises(SplitParseError, match=r"vggsound.csv:1: expected"):
        parse_vggsound_csv(path)
    lenient = parse_vggsound_csv(path, strict=False)
    assert [r.id for r in lenient["train"].rows] == ["bbb_20"] and [n for n, _, _ in lenient["train"].skipped] == [1]


def test_vggsound_label_map_is_the_sorted_labels_of_every_row_whatever_the_split(tmp_path):
    # Not OGM-GE's first appearance among downloaded rows: every row of the CSV, train and test, sorted.
    (tmp_path / "vggsound.csv").write_text('yt0,30,"people marching, parade",test\nyt1,0,dog barking,train\n'
                                           'yt2,10,airplane,test\nyt3,20,"people marching, parade",train\n')
    tables = VGGSound.read_splits({"vggsound.csv": tmp_path / "vggsound.csv"}, tmp_path, PrepareOptions(), None)
    assert tables.classes == ("airplane", "dog barking", "people marching, parade")
    assert [(s.id, s.label) for s in tables.splits["test"]] == [("yt0_30", 2), ("yt2_10", 0)]
    assert [(s.id, s.label) for s in tables.splits["train"]] == [("yt1_0", 1), ("yt3_20", 2)]
    assert not tables.dropped


def test_vggsound_csv_keeps_quoted_commas(tmp_path):
    path = tmp_path / "vggsound.csv"
    path.write_text('---g-f_I2yQ,1,"people marching, parade",test\n--0PQM4-hqg,30,waterfall burbling,train\n')
    parsed = parse_vggsound_csv(path)
    assert [(r.id, r.label) for r in parsed["test"].rows] == [("---g-f_I2yQ_1", "people marching, parade")]
    assert [r.id for r in parsed["train"].rows] == ["--0PQM4-hqg_30"]


@pytest.mark.parametrize("start", ["", "abc", " ", "-30", "30.0", "²"])
def test_vggsound_row_whose_start_is_not_whole_seconds_is_refused_at_parse_time(tmp_path, start):
    # The start is part of the clip name: such a row used to pass and surface only as "missing media" in prepare.
    path = tmp_path / "vggsound.csv"
    path.write_text(f"aaa,10,dog barking,train\nbbb,{start},cat meowing,train\n", encoding="utf-8")
    with pytest.raises(SplitParseError, match=rf"vggsound.csv:2: start_seconds \(field 2\) {re.escape(repr(start))} "):
        parse_vggsound_csv(path)
    lenient = parse_vggsound_csv(path, strict=False)
    assert [r.id for r in lenient["train"].rows] == ["aaa_10"] and [n for n, _, _ in lenient["train"].skipped] == [2]


@pytest.mark.parametrize("split", ["val", "Train", "training", ""])
def test_vggsound_row_of_a_split_other_than_train_or_test_is_refused_not_left_out(tmp_path, split):
    # prepare reads only the train and test lists: a row of another split value would vanish without a count.
    path = tmp_path / "vggsound.csv"
    path.write_text(f"aaa,10,dog barking,train\nbbb,30,cat meowing,{split}\nccc,5,dog barking,test\n")
    with pytest.raises(SplitParseError, match=r"vggsound.csv:2: expected 'ytid,start,label,train\|test'"):
        parse_vggsound_csv(path)
    lenient = parse_vggsound_csv(path, strict=False)
    assert sorted(lenient) == ["test", "train"] and [n for n, _, _ in lenient["test"].skipped] == [2]


@pytest.mark.parametrize("row", ["  ,30,cat meowing,train", 'bbb,30," ",train'])
def test_vggsound_row_with_a_blank_ytid_or_label_is_refused(tmp_path, row):
    # The fields are stripped when read: a blank ytid passed as clip "_30", a blank label as a class "".
    path = tmp_path / "vggsound.csv"
    path.write_text(f"aaa,10,dog barking,train\n{row}\n", encoding="utf-8")
    with pytest.raises(SplitParseError, match=r"vggsound.csv:2: expected 'ytid,start,label,train\|test'"):
        parse_vggsound_csv(path)


def test_vggsound_start_as_published_or_zero_padded_is_kept_as_written(tmp_path):
    path = tmp_path / "vggsound.csv"
    path.write_text("---g-f_I2yQ,1,people marching,test\n--0PQM4-hqg,000030,waterfall burbling,train\n"
                    "--56QUhyDQM,0,playing tennis,train\n", encoding="utf-8")
    parsed = parse_vggsound_csv(path)
    assert parsed["train"].ids == ["--0PQM4-hqg_000030", "--56QUhyDQM_0"] and parsed["test"].ids == ["---g-f_I2yQ_1"]


def test_natural_key_orders_numbers_and_breaks_ties_by_name():
    names = ["frame_000010.jpg", "frame_00009.jpg", "frame_1.jpg", "00030.jpg", "00000.jpg", "1.jpg", "01.jpg"]
    assert sorted(names, key=natural_key) == ["00000.jpg", "01.jpg", "1.jpg", "00030.jpg", "frame_1.jpg",
                                              "frame_00009.jpg", "frame_000010.jpg"]
    assert sorted(["a1x", "a1x2"], key=natural_key) == ["a1x", "a1x2"]


# --- pinned sources -----------------------------------------------------------------------------------------------

def test_pinned_table_covers_datasets_md_section_8():
    assert len(PINNED) == 13
    assert {p.dataset for p in PINNED} == {"cremad", "kinetics_sounds", "ave"}
    train = pinned_files("cremad")["train.csv"]
    assert train.url() == ("https://raw.githubusercontent.com/GeWu-Lab/OGM-GE_CVPR2022/"
                           "343dc1d95c9bda88f105c0da8d24f185e0e98b54/data/CREMAD/train.csv")


@needs_shared
@pytest.mark.parametrize("pin", PINNED, ids=lambda p: f"{p.dataset}/{p.name}")
def test_shared_copies_match_the_pinned_sha256_and_size(pin):
    path = SHARED / pin.dataset / pin.name
    assert path.stat().st_size == pin.size
    assert sha256_file(path) == pin.sha256


@needs_shared
def test_download_through_file_url_verifies_and_copies(tmp_path):
    mirror = tmp_path / "mirror"
    for pin in pinned_files("cremad").values():
        target = mirror / pin.repo / pin.commit / pin.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED / "cremad" / pin.name, target)
    got = fetch_split_files("cremad", ["train.csv", "stat.csv"], tmp_path / "dest", base_url=mirror.as_uri())
    assert {n: f.status for n, f in got.items()} == {"train.csv": "pinned", "stat.csv": "pinned"}
    assert (tmp_path / "dest" / "train.csv").read_bytes() == (SHARED / "cremad" / "train.csv").read_bytes()
    tampered = mirror / pinned_files("cremad")["test.csv"].repo / pinned_files("cremad")["test.csv"].commit / \
        "data/CREMAD/test.csv"
    tampered.write_bytes(tampered.read_bytes().replace(b"\r\n", b"\n"))
    with pytest.raises(SplitFileError, match=r"test.csv: SHA-256 .* does not match the pinned"):
        fetch_split_files("cremad", ["test.csv"], tmp_path / "dest", base_url=mirror.as_uri())


def test_local_split_files_that_differ_are_recorded_or_refused(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    (local / "stat.csv").write_text("NEU\nHAP\n")
    notes = []
    got = fetch_split_files("cremad", ["stat.csv", "val.csv"], tmp_path / "dest", local_dir=local,
                            optional=["val.csv"], log=notes.append)
    assert got["stat.csv"].status == "custom" and "val.csv" not in got and "differs from the pinned" in notes[0]
    with pytest.raises(SplitFileError, match="stat.csv: SHA-256"):
        fetch_split_files("cremad", ["stat.csv"], tmp_path / "dest", local_dir=local, strict=True)
    with pytest.raises(SplitFileError, match="train.csv not found"):
        fetch_split_files("cremad", ["train.csv"], tmp_path / "dest", local_dir=local)


def _synthetic_pin(monkeypatch, tmp_path, data: bytes, sha256: str | None = None):
    """Replace the pinned table by one CREMA-D ``test.csv`` whose raw URL is served from a ``file://`` mirror."""
    pin = sources.PinnedFile("cremad", "test.csv", "GeWu-Lab/OGM-GE_CVPR2022", "data/CREMAD/test.csv",
                             sha256 or sources.sha256_bytes(data), 1, len(data))
    monkeypatch.setattr(sources, "PINNED", (pin,))
    mirror = tmp_path / "mirror"
    served = mirror / pin.repo / pin.commit / pin.path
    served.parent.mkdir(parents=True)
    served.write_bytes(data)
    return pin, mirror.as_uri(), served


def test_rejected_download_leaves_nothing_and_names_the_url(tmp_path, monkeypatch):
    good = b"1088_IOM_NEU_XX,NEU\r\n"
    pin, base, served = _synthetic_pin(monkeypatch, tmp_path, good)
    served.write_bytes(good.replace(b"\r\n", b"\n"))
    dest = tmp_path / "dest"
    with pytest.raises(SplitFileError, match="does not match the pinned") as err:
        fetch_split_files("cremad", ["test.csv"], dest, base_url=base)
    assert pin.url(base) in str(err.value)
    assert not (dest / "test.csv").exists(), "a file that failed its checksum must not be left where prepare reads"


def test_download_compares_the_whole_sha256_not_a_prefix(tmp_path, monkeypatch):
    data = b"1088_IOM_NEU_XX,NEU\r\n"
    digest = sources.sha256_bytes(data)
    near = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    _, base, _ = _synthetic_pin(monkeypatch, tmp_path, data, sha256=near)
    with pytest.raises(SplitFileError, match="does not match the pinned"):
        fetch_split_files("cremad", ["test.csv"], tmp_path / "dest", base_url=base)


def test_stale_copy_in_dest_is_rehashed_and_replaced(tmp_path, monkeypatch):
    data = b"1088_IOM_NEU_XX,NEU\r\n"
    pin, base, _ = _synthetic_pin(monkeypatch, tmp_path, data)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "test.csv").write_bytes(b"1088_IOM_NEU_XX,HAP\r\n")  # a partial or edited copy from an earlier run
    got = fetch_split_files("cremad", ["test.csv"], dest, base_url=base)["test.csv"]
    assert (dest / "test.csv").read_bytes() == data
    assert got.record() == {"sha256": pin.sha256, "origin": pin.url(base), "status": "pinned"}
    again = fetch_split_files("cremad", ["test.csv"], dest, base_url=tmp_path.as_uri() + "/nowhere")["test.csv"]
    assert again.record() == {"sha256": pin.sha256, "origin": pin.url(tmp_path.as_uri() + "/nowhere"),
                              "status": "pinned"}, "a verified copy already in dest is reused without downloading"


def test_failed_download_is_a_split_file_error_naming_the_url(tmp_path, monkeypatch):
    pin, base, served = _synthetic_pin(monkeypatch, tmp_path, b"x\n")
    served.unlink()
    with pytest.raises(SplitFileError, match="cannot download") as err:
        fetch_split_files("cremad", ["test.csv"], tmp_path / "dest", base_url=base)
    assert pin.url(base) in str(err.value) and "--splits DIR" in str(err.value)


def test_unpinned_names_without_splits_dir_are_refused_or_skipped_if_optional(tmp_path):
    with pytest.raises(SplitFileError, match="cremad: extra.csv has no pinned download"):
        fetch_split_files("cremad", ["extra.csv"], tmp_path / "dest", base_url=tmp_path.as_uri())
    assert fetch_split_files("cremad", ["extra.csv"], tmp_path / "dest", base_url=tmp_path.as_uri(),
                             optional=["extra.csv"]) == {}


def test_local_custom_file_records_its_own_sha256_and_path(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    (local / "stat.csv").write_text("NEU\nHAP\n")
    (local / "mine.csv").write_text("a,b\n")
    got = fetch_split_files("cremad", ["stat.csv", "mine.csv"], tmp_path / "dest", local_dir=local, log=lambda _: None)
    for name in ("stat.csv", "mine.csv"):
        assert got[name].record() == {"sha256": sha256_file(local / name), "origin": str(local / name),
                                      "status": "custom"}
        assert got[name].path == tmp_path / "dest" / name and got[name].path.read_bytes() == (local / name).read_bytes()
    with pytest.raises(SplitFileError) as err:
        fetch_split_files("cremad", ["stat.csv"], tmp_path / "dest", local_dir=local, strict=True)
    assert str(err.value).startswith(f"{local / 'stat.csv'}: SHA-256 {sha256_file(local / 'stat.csv')}")
    with pytest.raises(SplitFileError) as err:
        fetch_split_files("cremad", ["train.csv"], tmp_path / "dest", local_dir=local)
    assert str(local / "train.csv") in str(err.value)


def test_local_copy_matching_its_pin_is_pinned_even_when_strict(tmp_path, monkeypatch):
    data = b"1088_IOM_NEU_XX,NEU\r\n"
    pin, _, _ = _synthetic_pin(monkeypatch, tmp_path, data)
    local = tmp_path / "local"
    local.mkdir()
    (local / "test.csv").write_bytes(data)
    notes = []
    got = fetch_split_files("cremad", ["test.csv"], tmp_path / "dest", local_dir=local, strict=True, log=notes.append)
    assert got["test.csv"].record() == {"sha256": pin.sha256, "origin": str(local / "test.csv"), "status": "pinned"}
    assert not notes
    in_place = fetch_split_files("cremad", ["test.csv"], local, local_dir=local, strict=True)["test.csv"]
    assert in_place.path == local / "test.csv" and in_place.path.read_bytes() == data
    digest = sources.sha256_bytes(data)
    _synthetic_pin(monkeypatch, tmp_path / "near", data, sha256=digest[:-1] + ("0" if digest[-1] != "0" else "1"))
    near = fetch_split_files("cremad", ["test.csv"], tmp_path / "dest", local_dir=local, log=notes.append)
    assert near["test.csv"].status == "custom" and "differs from the pinned" in notes[0]


# --- the real published files ----------------------------------------------------------------------------------

@needs_shared
def test_real_cremad_lists():
    folder = SHARED / "cremad"
    train, test = parse_label_csv(folder / "train.csv"), parse_label_csv(folder / "test.csv")
    assert (len(train.rows), len(test.rows)) == (6698, 744)
    assert train.line_endings == "CRLF" and not train.bom and not train.skipped
    assert Counter(r.label for r in train.rows) == {"ANG": 1166, "DIS": 1142, "FEA": 1138, "HAP": 1148, "NEU": 973,
                                                    "SAD": 1131}
    assert Counter(r.label for r in test.rows) == {"ANG": 105, "DIS": 129, "FEA": 133, "HAP": 123, "NEU": 114,
                                                   "SAD": 140}
    stat_lines = parse_class_list(folder / "stat.csv")
    assert stat_lines == list(CremaD.CLASSES)
    assert all(r.label == r.id.split("_")[2] for r in train.rows + test.rows)
    actors_train, actors_test = {r.id[:4] for r in train.rows}, {r.id[:4] for r in test.rows}
    assert len(actors_train & actors_test) == 91, "the published split is per clip, not per speaker"
    my_train, val = parse_label_csv(folder / "my_train.csv"), parse_label_csv(folder / "val.csv")
    assert (len(my_train.rows), len(val.rows)) == (5954, 744) and my_train.line_endings == "LF"
    assert Counter(r.label for r in val.rows) == Counter(r.label for r in test.rows)
    assert Counter(r.label for r in my_train.rows) == {"ANG": 1061, "DIS": 1013, "FEA": 1005, "HAP": 1025,
                                                       "NEU": 859, "SAD": 991}


@needs_shared
def test_real_cremad_read_splits_gives_the_clean_partition():
    names = ("train.csv", "test.csv", "stat.csv", "my_train.csv", "val.csv")
    opts = PrepareOptions(label_order="ogm")
    tables = CremaD.read_splits({n: SHARED / "cremad" / n for n in names}, SHARED / "cremad", opts, None)
    assert tables.classes == ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
    assert {s: len(v) for s, v in tables.splits.items()} == {"train": 6698, "test": 744} and not tables.dropped
    val_ids, source, _ = validation_split(tables, opts)
    assert len(val_ids) == 744 and "Diagnosing" in source
    assert tables.info["actors"]["in_both"] == 91
    by_label = {s.label_name: s.label for s in tables.splits["train"]}
    assert by_label == {"NEU": 0, "HAP": 1, "SAD": 2, "FEA": 3, "DIS": 4, "ANG": 5}
    sorted_map = CremaD.read_splits({n: SHARED / "cremad" / n for n in names}, SHARED / "cremad",
                                    PrepareOptions(label_order="sorted"), None).classes
    assert sorted_map == ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")


@needs_shared
def test_real_kinetics_sounds_lists():
    folder = SHARED / "kinetics_sounds"
    train, test = parse_ks_list(folder / "my_train.txt"), parse_ks_list(folder / "my_test.txt")
    assert (len(train.rows), len(test.rows)) == (14799, 2597) and train.line_endings == "CRLF"
    assert all(re.fullmatch(r".{11}_\d{6}_\d{6}", r.id) for r in train.rows)
    assert all(re.fullmatch(r".{11}_\d+", r.id) for r in test.rows)
    assert {r.fields[1] for r in train.rows + test.rows} == {"10"}
    labels, database = parse_ks_json(folder / "KS.json")
    assert tuple(labels) == KineticsSounds.CLASSES and len(database) == 18716
    assert all(int(r.label) == labels.index(database[r.id]["label"]) for r in train.rows + test.rows)
    tables = KineticsSounds.read_splits({n: folder / n for n in KineticsSounds.SPLIT_FILES}, folder, PrepareOptions(),
                                         None)
    assert (len(tables.splits["train"]), len(tables.splits["test"])) == (14799, 2597) and not tables.dropped
    counts = np.bincount([s.label for s in tables.splits["train"]], minlength=31)
    assert counts.min() == counts[26] == 197 and counts.max() == counts[1] == 690


@needs_shared
def test_real_ave_lists_duplicates_and_label_order():
    folder = SHARED / "ave"
    parsed = {n: parse_ave_list(folder / n) for n in ("trainSet.txt", "valSet.txt", "testSet.txt")}
    assert [len(p.rows) for p in parsed.values()] == [3339, 402, 402]
    assert [len(set(p.ids)) for p in parsed.values()] == [3312, 401, 402]
    assert [len(duplicate_ids(p.rows)) for p in parsed.values()] == [27, 1, 0]
    ids = {n: set(p.ids) for n, p in parsed.items()}
    assert len(ids["trainSet.txt"] & ids["testSet.txt"]) == 8 and len(ids["trainSet.txt"] & ids["valSet.txt"]) == 10
    assert tuple(first_appearance(r.label for r in parsed["testSet.txt"].rows)) == AVE.CLASSES
    train = parsed["trainSet.txt"].rows
    assert [len(resolve_duplicates(train, p)[0]) for p in ("first", "last", "drop")] == [3312, 3312, 3285]
    first, last = resolve_duplicates(train, "first")[0], resolve_duplicates(train, "last")[0]
    assert sum(a.label != b.label for a, b in zip(sorted(first, key=lambda r: r.id),
                                                  sorted(last, key=lambda r: r.id))) == 27
    tables = AVE.read_splits({n: folder / n for n in AVE.SPLIT_FILES}, folder, PrepareOptions(duplicates="drop"), None)
    assert {s: len(v) for s, v in tables.splits.items()} == {"train": 3285, "val": 400, "test": 402}
    assert Counter(d.kind for d in tables.dropped) == {"duplicate id": 56}
    assert tables.info["ids_in_two_splits"] == {"train&val": 10, "train&test": 8, "val&test": 0}


@pytest.mark.parametrize("text, ok", [("12", True), ("0", True), ("", False), ("²", False), ("١", False),
                                      ("-1", False), ("1.0", False)])
def test_whole_numbers_are_ascii_digits_only(text, ok):
    assert is_whole_number(text) is ok


def test_superscript_and_other_script_digits_are_malformed_rows_not_bare_errors(tmp_path):
    # "²".isdigit() is True but int("²") raises a bare ValueError; "١" (Arabic-Indic one) was silently read as 1.
    ks = tmp_path / "my_train.txt"
    ks.write_text("abc_1,10,²\n")
    with pytest.raises(SplitParseError, match="my_train.txt:1.*'²'"):
        parse_ks_list(ks)
    with pytest.raises(SplitParseError, match="Start&End"):
        ave_segment(SplitRow("v", "Church bell", 1, ("Church bell", "v", "good", "0", "١")))
    index = tmp_path / "classInd.txt"
    index.write_text("1 ApplyEyeMakeup\n² ApplyLipstick\n")
    with pytest.raises(SplitParseError, match=r"classInd.txt:2: expected '<number> <ClassName>'"):
        parse_class_index(index)
    videos = tmp_path / "trainlist01.txt"
    videos.write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi ١\n")
    assert [(line, reason) for line, _, reason in parse_video_list(videos, labelled=True).skipped] == [
        (1, "expected '<Class>/<video>.avi <number>'")]
    gestures = tmp_path / "nvgesture_train_correct_v2.lst"
    good = "path:./Video_data/class_01/subject1_r0 depth:sk_depth:5:85 color:sk_color:5:85 duo_left:d:1:2 label:1"
    gestures.write_text("\n".join([good.replace("label:1", "label:²"), good.replace("5:85", "5:8⁵", 1)]) + "\n")
    reasons = [reason for _, _, reason in parse_nvgesture_list(gestures).skipped]
    assert "label '²' is not 1..25" in reasons[0] and "depth should be <folder>:<start>:<end>" in reasons[1]
    # labels are 1-based: 0 and 26 are refused (0 - 1 would silently index the last class)
    gestures.write_text("\n".join([good.replace("label:1", "label:0"), good.replace("label:1", "label:26"), good]))
    parsed = parse_nvgesture_list(gestures)
    assert [(line, reason) for line, _, reason in parsed.skipped] == [(1, "label '0' is not 1..25"),
                                                                      (2, "label '26' is not 1..25")]
    assert [(r.label, r.fields[0]) for r in parsed.rows] == [("1", "2")]
    name = indexed_label(("negative", "neutral", "positive"))
    assert name(SplitRow("1", "²", 1, ())) == "²" and name(SplitRow("1", "2", 1, ())) == "positive"


def test_split_tables_append_every_list_of_a_split_and_an_unknown_label_lists_at_most_ten_classes(tmp_path):
    classes = tuple(f"c{i}" for i in range(11))
    tables = SplitTables(classes)
    first = ParsedList(tmp_path / "a.txt", [SplitRow("x1", "c0", 1, ("x1", "c0")), SplitRow("x2", "c10", 2, ())])
    second = ParsedList(tmp_path / "b.txt", [SplitRow("x3", "c11", 1, ()), SplitRow("x4", "c1", 2, ())])
    for parsed in (first, second):
        tables.add(parsed, "train", label_name=lambda r: r.label, duplicates="first")
    assert [(s.id, s.label, s.where) for s in tables.splits["train"]] == [
        ("x1", 0, "a.txt:1"), ("x2", 10, "a.txt:2"), ("x4", 1, "b.txt:2")], "the second list adds to the first"
    [bad] = tables.dropped
    assert (bad.id, bad.kind, bad.where, bad.bad) == ("x3", "unknown label", "b.txt:1", True)
    assert bad.detail == "unknown label 'c11'; valid: ['c0', 'c1', 'c2', 'c3', 'c4', 'c5', 'c6', 'c7', 'c8', 'c9'] ..."


def test_malformed_rows_are_the_format_errors_only_and_an_index_of_k_is_an_unknown_label(tmp_path):
    parsed = ParsedList(tmp_path / "train.tsv", skipped=[(1, "id\tlabel", "header"), (3, "", "blank line"),
                                                         (4, "x", "expected 2 fields")])
    assert [(d.id, d.split, d.kind, d.where, d.bad) for d in malformed_rows(parsed, "train")] == [
        ("L4", "train", "malformed row", "train.tsv:4", True)]
    # An index one past the last class is a bad row naming it, not an IndexError halfway through prepare.
    tables = SplitTables(("negative", "neutral", "positive"))
    rows = ParsedList(tmp_path / "test.tsv", [SplitRow("a", "2", 1, ()), SplitRow("b", "3", 2, ())])
    tables.add(rows, "test", label_name=indexed_label(tables.classes), duplicates="first")
    assert [(s.id, s.label) for s in tables.splits["test"]] == [("a", 2)]
    assert [(d.id, d.kind, d.where) for d in tables.dropped] == [("b", "unknown label", "test.tsv:2")]
