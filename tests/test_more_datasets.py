"""Twitter-2015, Sarcasm, Food-101, CMU-MOSEI, NVGesture and UCF-101 on tiny generated trees in their real layouts:
parsing (bad rows named by file and line, ``--skip-bad`` counts), prepare -> cache -> batches, and a ``joint`` and an
``aug`` run on each."""

from __future__ import annotations

import csv
import json
import math
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmarks.cli import main
from benchmarks.config import build_config
from benchmarks.runner import train_run
from core.hparams import HParamError, resolve
from datasets.cache import open_cache
from datasets.food101 import CLASSES as FOOD_CLASSES
from datasets.food101 import Food101, parse_titles_csv
from datasets.image_text import (
    ImageAugment,
    clean_text,
    find_image,
    load_tokenizer,
    parse_amss_tsv,
    parse_tombert_tsv,
    rotate_nearest,
    token_ids,
    tsv_format,
    unquote,
)
from datasets.media import MediaError
from datasets.mosei import Mosei
from datasets.nvgesture import NVGesture, crop_clips, parse_nvgesture_list
from datasets.prepare import prepare, validation_split
from datasets.prepared import Record
from datasets.registry import get_dataset
from datasets.sarcasm import Sarcasm
from datasets.sources import sha256_file
from datasets.splits import SplitParseError, SplitRow
from datasets.tables import PrepareError, PrepareOptions, Sample
from datasets.twitter2015 import Twitter2015
from datasets.ucf101 import UCF101, bb_offsets, clip_group, parse_class_index
from tests.conftest import TINY_TRAIN
from tests.more_fixtures import (
    CLASS_COLOURS,
    TINY_TEXT_MODEL,
    UCF_CLASSES,
    class_text,
    frame_level,
    make_food101,
    make_image_text,
    make_mosei,
    make_nvgesture,
    make_ucf101,
    write_image,
    write_lines,
    write_vocab,
)
from tests.more_fixtures import FOOD_CLASSES as FIXTURE_FOOD

pytest.importorskip("transformers")

TEXT = {"image_size": 16, "max_len": 12}
OPTS = {"val_fraction": 0.25}
SETTINGS = {"twitter2015": TEXT, "sarcasm": TEXT, "food101": TEXT, "mosei": {},
            "nvgesture": {"frames": 8, "frame_size": 20}, "ucf101": {"frame_size": 16}}
LABEL_ORDER = {"food101": "csv", "nvgesture": "lists"}
TINY_SEQ = {"width": 4, "blocks": [1, 1, 1, 1], "seq_dim": 8, "seq_hidden": 8, "seq_heads": 2, "seq_layers": 1}
MODEL = {"twitter2015": TINY_TEXT_MODEL, "sarcasm": TINY_TEXT_MODEL, "food101": TINY_TEXT_MODEL, "mosei": TINY_SEQ,
         "nvgesture": {"width": 4, "blocks": [1, 1, 1, 1]}, "ucf101": {"width": 4, "blocks": [1, 1, 1, 1]}}
DATA = {"nvgesture": {"crop_size": 16, "train_frames": 4}}


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> Path:
    return write_vocab(tmp_path_factory.mktemp("tokenizer"))


def make_tree(name: str, root: Path):
    if name == "twitter2015":
        return make_image_text(root, image_dir="twitter2015_images", classes=3, per_class={"train": 4, "test": 2})
    if name == "sarcasm":
        return make_image_text(root, image_dir="images", classes=2, per_class={"train": 4, "dev": 2, "test": 2})
    makers = {"food101": make_food101, "mosei": make_mosei, "nvgesture": make_nvgesture, "ucf101": make_ucf101}
    return makers[name](root)


def build(name: str, raw: Path, out: Path, vocab: Path, settings: dict | None = None, **opts) -> Path:
    merged = {**SETTINGS[name], **(settings or {})}
    if name in ("twitter2015", "sarcasm", "food101"):
        merged.setdefault("tokenizer", str(vocab))
    options = PrepareOptions(**{**OPTS, "label_order": LABEL_ORDER.get(name, ""), **opts})
    return prepare(get_dataset(name), raw, out, options, merged, log=quiet)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, vocab):
    """name -> (tree, cache folder), built once per module on first use."""
    made: dict = {}

    def get(name: str):
        if name not in made:
            root = tmp_path_factory.mktemp(name)
            tree = make_tree(name, root / "raw")
            made[name] = (tree, build(name, tree.root, root / "cache", vocab))
        return made[name]
    return get


def data_hp(name: str, cache: Path, **extra):
    cls = get_dataset(name)
    return resolve("data", cls.HPARAMS, name, {"cache": str(cache), **DATA.get(name, {}), **extra})


def batch_of(name: str, cache: Path, split: str = "test", train: bool = False, seed: int = 0, **extra):
    bundle = get_dataset(name).build(data_hp(name, cache, **extra))
    return bundle, next(iter(bundle.loader(split, batch_size=64, train=train, seed=seed)))


# --- image-text --------------------------------------------------------------------------------------------------


def test_amss_tsv_reads_index_column_with_bom_and_crlf(tmp_path):
    path = write_lines(tmp_path / "train.tsv", ["\tLabel\tString\tImageID", '7\t2\t"a ""quoted"" tweet"\t9.jpg',
                                                "8\t0\tplain text\t10.jpg"], "\r\n", bom=True)
    parsed = parse_amss_tsv(path)
    assert parsed.bom and parsed.line_endings == "CRLF" and parsed.skipped == [(1, "\tLabel\tString\tImageID",
                                                                                 "header")]
    assert [(r.id, r.label, r.line, r.fields) for r in parsed.rows] == [
        ("7", "2", 2, ('a "quoted" tweet', "9.jpg")), ("8", "0", 3, ("plain text", "10.jpg"))]
    write_lines(path, ["Label\tString\tImageID", "1\tno image"])
    with pytest.raises(SplitParseError, match=r"train.tsv:2: expected 3 tab-separated fields"):
        parse_amss_tsv(path)


def test_a_repeated_pandas_index_is_not_an_id_and_every_row_is_kept(tmp_path):
    # A frame written after pd.concat without reset_index repeats its index; pd.read_csv still reads every row.
    rows = ["\tLabel\tString\tImageID", "0\t0\tfirst\t1.jpg", "1\t1\tsecond\t2.jpg", "0\t1\tthird\t3.jpg",
            "1\t0\tfourth\t4.jpg"]
    files = {n: write_lines(tmp_path / n, rows) for n in ("train.tsv", "test.tsv")}
    assert [r.id for r in parse_amss_tsv(files["test.tsv"]).rows] == ["L2", "L3", "L4", "L5"]
    tables = Sarcasm.read_splits(files, tmp_path, PrepareOptions(), None)
    assert len(tables.splits["test"]) == 4 and not tables.dropped


def test_the_tombert_test_file_whose_header_omits_the_label_column_is_read_by_position(tmp_path):
    # jefferyYu/TomBERT @31bc79f absa_data/twitter2015/test.tsv: four header names over five-field rows.
    rows = ["1\t1\t74960.jpg\tPractice one , follow $T$ !\tOklahoma", "2\t2\t1739565.jpg\t$T$ is a contender\tLydia"]
    full, short = "index\t#1 Label\t#2 ImageID\t#3 String\t#3 String", "index\t#1 ImageID\t#2 String\t#2 String"
    files = {name: write_lines(tmp_path / name, [header, *rows])
             for name, header in (("train.tsv", full), ("dev.tsv", full), ("test.tsv", short))}
    assert tsv_format(files["test.tsv"]) == "tombert"
    tables = Twitter2015.read_splits(files, tmp_path, PrepareOptions(), twitter_settings(tmp_path))
    test = tables.splits["test"]
    assert [(s.label, s.row.fields) for s in test] == [
        (1, ("Practice one , follow $T$ ! [SEP] Oklahoma", "74960.jpg")),
        (2, ("$T$ is a contender [SEP] Lydia", "1739565.jpg"))]
    write_lines(files["test.tsv"], ["index\t#1 ImageID\t#2 String", *rows])
    with pytest.raises(SplitParseError, match="is not a TomBERT one"):
        parse_tombert_tsv(files["test.tsv"])


@pytest.mark.parametrize("inside", ["\u2028", "\x85", "\x0c", "\x1e"])
def test_a_unicode_line_separator_inside_a_field_keeps_the_row_whole(tmp_path, inside):
    # Only CR/LF end rows (as pandas and csv read them); str.splitlines would cut the tweet in two.
    path = tmp_path / "train.tsv"
    path.write_text(f"Label\tString\tImageID\n1\tgreat day{inside}see you\t1.jpg\n0\tplain\t2.jpg\n", encoding="utf-8")
    parsed = parse_amss_tsv(path)
    assert [(r.label, r.line, r.fields) for r in parsed.rows] == [
        ("1", 2, (f"great day{inside}see you", "1.jpg")), ("0", 3, ("plain", "2.jpg"))]


def test_tombert_rows_keep_their_target_as_tombert_feeds_it_or_write_it_into_the_sentence(tmp_path):
    header = "index\t#1 Label\t#2 ImageID\t#3 String\t#3 String"
    path = write_lines(tmp_path / "dev.tsv", [header, "12\t2\t55.jpg\t$T$ wins the cup\tRT Madrid",
                                              "13\t1\t56.jpg\tno placeholder\tX"])
    parsed = parse_tombert_tsv(path, strict=False)
    assert [(r.id, r.label, r.fields) for r in parsed.rows] == [("12", "2", ("$T$ wins the cup [SEP] RT Madrid",
                                                                              "55.jpg"))]
    assert [r.fields for r in parse_tombert_tsv(path, strict=False, text="substituted").rows] == [
        ("RT Madrid wins the cup", "55.jpg")]
    assert parsed.skipped[-1][0] == 3 and "$T$" in parsed.skipped[-1][2]
    with pytest.raises(SplitParseError, match="dev.tsv:3"):
        parse_tombert_tsv(path)


def twitter_settings(raw: Path, **overrides):
    return Twitter2015.resolve_settings("amss", overrides, PrepareOptions(), raw)


def test_tombert_rows_of_one_tweet_with_other_labels_share_one_input_only_when_the_target_is_dropped(tmp_path):
    # Twitter-2015 has one row per target of a tweet; written into the sentence and dropped, the targets of the
    # released train.tsv's lines 2-3 ("RT @ ltsChuckBass : Chuck Bass is everything # MCM", labels 2 and 1) became
    # one input with two labels: 24% of the test rows. The manifest counts such rows either way.
    header = "index\t#1 Label\t#2 ImageID\t#3 String\t#3 String"
    rows = ["1\t2\t1.jpg\tRT @ ltsChuckBass : $T$ is everything # MCM\tChuck Bass",
            "2\t1\t1.jpg\tRT @ ltsChuckBass : Chuck Bass is everything # $T$\tMCM",
            "3\t1\t2.jpg\t$T$ again\tX"]
    files = {name: write_lines(tmp_path / name, [header, *rows]) for name in ("train.tsv", "test.tsv")}
    pair = Twitter2015.read_splits(files, tmp_path, PrepareOptions(), twitter_settings(tmp_path))
    assert pair.info["rows_sharing_input_with_another_label"] == {"train": 0, "test": 0}
    dropped = Twitter2015.read_splits(files, tmp_path, PrepareOptions(),
                                      twitter_settings(tmp_path, tombert_text="substituted"))
    assert dropped.info["rows_sharing_input_with_another_label"] == {"train": 2, "test": 2}
    assert len({s.row.fields for s in dropped.splits["test"][:2]}) == 1
    with pytest.raises(HParamError, match="tombert_text='target' is not one of"):
        twitter_settings(tmp_path, tombert_text="target")


def test_long_texts_keep_their_first_tokens(vocab):
    # AMSS get_tokenized: tokenize(text)[:max_seq_len]; BalanceBenchmark: truncation=True keeps [CLS] + the first
    # max_len - 2 tokens + [SEP].
    tokenizer = load_tokenizer(str(vocab))
    words = "sad bad awful plain okay fine happy great love the a cat dog is was today"
    ids = tokenizer.convert_tokens_to_ids(words.split())
    np.testing.assert_array_equal(token_ids(tokenizer, words, 5, False), ids[:5])
    np.testing.assert_array_equal(token_ids(tokenizer, "sad bad", 5, False), ids[:2] + [0, 0, 0])
    np.testing.assert_array_equal(token_ids(tokenizer, words, 5, True),
                                  [tokenizer.cls_token_id, *ids[:3], tokenizer.sep_token_id])


@pytest.mark.parametrize("fmt", ["amss", "tombert"])
def test_twitter_cache_holds_amss_token_ids_and_resized_images(tmp_path, vocab, fmt):
    tree = make_image_text(tmp_path / "raw", image_dir="twitter2015_images", classes=3,
                           per_class={"train": 4, "dev": 1, "test": 2}, fmt=fmt)
    cache = open_cache(build("twitter2015", tree.root, tmp_path / "cache", vocab))
    m = cache.manifest
    assert m["val_source"] == "published dev.tsv" and m["info"]["formats"]["train.tsv"] == fmt
    # Row numbers repeat between the TSVs ("0" in train and test, amss); they are not one sample in two splits.
    assert "ids_in_two_splits" not in m["counts"]
    assert {s: v["n"] for s, v in m["counts"]["splits"].items()} == {"train": 12, "val": 3, "test": 6,
                                                                     "train_noval": 12}
    assert cache.arrays["text"].dtype == np.int32 and cache.arrays["text"].shape == (21, 12)
    tokenizer = load_tokenizer(str(vocab))
    first = cache.splits["train"][0]
    text = class_text(0, 0)
    if fmt == "tombert":  # the sentence with its placeholder, [SEP], the target (TomBERT's input pair)
        target = text.split()[2]
        text = f"{text.replace(target, '$T$', 1)} [SEP] {target}"
    expected = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))
    assert list(cache.arrays["text"][first][:len(expected)]) == expected, "AMSS: no [CLS]/[SEP]"
    assert 2 not in cache.arrays["text"][first] and cache.arrays["text"][first][len(expected):].sum() == 0
    assert list(cache.labels[cache.splits["train"]]) == tree.labels["train"]
    assert list(cache.index["id"][cache.splits["train"]]) == tree.ids["train"]
    image = cache.arrays["visual"][first]
    assert image.shape == (16, 16, 3) and abs(int(image[-1, -1, 0]) - CLASS_COLOURS[0][0]) <= 12  # JPEG


def held_out_groups(cache_dir: Path, key) -> tuple[set, set]:
    """(groups of the validation rows, groups of the rows trained on) of a cache, by ``key`` of a row id."""
    cache = open_cache(cache_dir)
    return tuple({key(str(cache.index["id"][i])) for i in cache.splits[name]} for name in ("val", "train_noval"))


def test_twitter_without_dev_tsv_holds_out_whole_images(tmp_path, vocab):
    # One tweet is one row per target, sharing its image: rows 2j and 2j+1 of train.tsv share image j (and differ in
    # label). Held out by rows, half of a tweet would be validated on after training on the other half.
    tree = make_image_text(tmp_path / "raw", image_dir="twitter2015_images", classes=3,
                           per_class={"train": 8, "test": 2})
    tsv = tree.root / "annotations" / "train.tsv"
    lines = tsv.read_text().splitlines()
    rows = [line.split("\t") for line in lines[1:]]
    image_of = {row[0]: rows[int(row[0]) // 2 * 2][3] for row in rows}
    tsv.write_text("\n".join([lines[0], *("\t".join([*row[:3], image_of[row[0]]]) for row in rows)]) + "\n")
    cache_dir = build("twitter2015", tree.root, tmp_path / "cache", vocab)
    val, trained = held_out_groups(cache_dir, image_of.get)
    assert len(val) == 3 and val.isdisjoint(trained), "a quarter of 12 images, each wholly on one side"
    manifest = open_cache(cache_dir).manifest
    assert manifest["val"]["groups"] == "images"
    assert manifest["val_source"] == "hold-out of train by whole images (fraction 0.25, seed 0)", "not stratified"


def test_nvgesture_holds_out_whole_subjects(tmp_path, vocab):
    # The published lists split the subjects; held out by clips, validation would score subjects trained on.
    tree = make_nvgesture(tmp_path / "raw", per_class={"train": 4, "test": 1}, subjects=4)
    cache_dir = build("nvgesture", tree.root, tmp_path / "cache", vocab)
    val, trained = held_out_groups(cache_dir, lambda clip: Path(clip).name.split("_")[0])
    assert len(val) == 1 and len(trained) == 3, "a quarter of 4 subjects, each performing every class"
    assert open_cache(cache_dir).manifest["val"]["groups"] == "subjects"
    assert len(open_cache(cache_dir).splits["val"]) == 3


def test_image_text_batches_are_normalised_with_the_dataset_statistics(prepared):
    _, cache = prepared("twitter2015")
    bundle, batch = batch_of("twitter2015", cache)
    assert bundle.task.names == ("text", "visual") and [m.kind for m in bundle.task.modalities] == ["tokens", "frames"]
    assert batch["text"].dtype == torch.int64 and batch["text"].shape == (6, 12)
    assert batch["visual"].shape == (6, 3, 1, 16, 16) and bundle.task.modality("visual").shape == (3, 1, 16, 16)
    mean, std = Twitter2015.HPARAMS[-2].default, Twitter2015.HPARAMS[-1].default
    assert (mean[0], std[0]) == (0.42455, 0.24485), "AMSS MyHelper.py Twitter15 statistics"
    stored = open_cache(cache).arrays["visual"][int(batch["index"][0])]
    expected = (stored[-1, -1, 0] / 255 - mean[0]) / std[0]
    assert float(batch["visual"][0, 0, 0, -1, -1]) == pytest.approx(expected, abs=1e-5)
    _, again = batch_of("twitter2015", cache, train=True, split="train")
    _, same = batch_of("twitter2015", cache, train=True, split="train")
    torch.testing.assert_close(again["visual"], same["visual"], rtol=0, atol=0)  # same seed: the same bytes


def test_bad_rows_missing_images_and_lfs_pointers_stop_prepare_or_are_counted(tmp_path, vocab):
    tree = make_image_text(tmp_path / "raw", image_dir="images", classes=2, per_class={"train": 4, "test": 2})
    tsv = tree.root / "annotations" / "train.tsv"
    lines = tsv.read_text().splitlines()
    write_lines(tsv, lines + ["99\t1\tmissing its image id"])
    (tree.root / "images" / "1001.jpg").unlink()
    (tree.root / "images" / "1002.jpg").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    with pytest.raises(PrepareError) as err:
        build("sarcasm", tree.root, tmp_path / "cache", vocab)
    message = str(err.value)
    assert "3 bad item(s) in sarcasm" in message and "train.tsv:10" in message and "train.tsv:3" in message
    assert "--skip-bad" in message
    path = build("sarcasm", tree.root, tmp_path / "cache", vocab, skip_bad=True)
    m = open_cache(path).manifest
    assert m["dropped"]["by_reason"] == {"malformed row": 1, "missing media": 1, "lfs pointer": 1}
    assert m["counts"]["rows_read"] == 13 and m["counts"]["total"] == 10
    with (path / "dropped.csv").open() as f:
        assert {r["where"] for r in csv.DictReader(f)} == {"train.tsv:10", "train.tsv:3", "train.tsv:4"}
    with pytest.raises(PrepareError, match="more than --max-drop-fraction"):
        build("sarcasm", tree.root, tmp_path / "cache2", vocab, skip_bad=True, max_drop_fraction=0.1)


def test_prepare_reuses_a_finished_cache_and_force_rebuilds(prepared, vocab):
    tree, cache = prepared("sarcasm")
    logs: list[str] = []
    again = prepare(Sarcasm, tree.root, cache.parent.parent, PrepareOptions(**OPTS),
                           {**TEXT, "tokenizer": str(vocab)}, log=logs.append)
    assert again == cache and "up to date" in logs[-1]
    before = np.load(cache / "text.npy")
    rebuilt = prepare(Sarcasm, tree.root, cache.parent.parent, PrepareOptions(**OPTS, force=True),
                             {**TEXT, "tokenizer": str(vocab)}, log=quiet)
    assert rebuilt == cache and np.array_equal(np.load(cache / "text.npy"), before)


def test_an_interrupted_prepare_resumes_at_the_first_unfinished_shard(tmp_path, vocab, monkeypatch):
    tree = make_image_text(tmp_path / "raw", image_dir="images", classes=2, per_class={"train": 3, "test": 2})
    real = Sarcasm.load.__func__

    def crash_on_fifth(cls, raw, record, settings):
        if record.pos == 4:
            raise RuntimeError("killed")
        return real(cls, raw, record, settings)

    monkeypatch.setattr(Sarcasm, "load", classmethod(crash_on_fifth))
    with pytest.raises(RuntimeError, match="killed"):
        build("sarcasm", tree.root, tmp_path / "cache", vocab, shard_size=2)
    monkeypatch.undo()
    logs: list[str] = []
    path = prepare(Sarcasm, tree.root, tmp_path / "cache", PrepareOptions(**OPTS, shard_size=2),
                          {**TEXT, "tokenizer": str(vocab)}, log=logs.append)
    assert "sarcasm: resuming, 2 of 5 shards already done" in logs
    fresh = build("sarcasm", tree.root, tmp_path / "fresh", vocab, shard_size=2)
    for name in ("text", "visual", "labels"):
        np.testing.assert_array_equal(np.load(path / f"{name}.npy"), np.load(fresh / f"{name}.npy"))


def test_an_epoch_over_the_caches_opens_no_media(prepared, monkeypatch):
    import av
    from PIL import Image

    bundles = {name: get_dataset(name).build(data_hp(name, prepared(name)[1])) for name in ("nvgesture", "ucf101")}

    def refuse(*args, **kwargs):
        raise AssertionError(f"media opened during an epoch: {args[:1]}")

    monkeypatch.setattr(av, "open", refuse)
    monkeypatch.setattr(Image, "open", refuse)
    monkeypatch.setattr("builtins.open", refuse)
    for bundle in bundles.values():
        for train in (True, False):
            split = "train" if train else "test"
            seen = sum(len(b["label"]) for b in bundle.loader(split, batch_size=4, train=train, seed=1))
            assert seen == len(bundle.splits[split])


def test_food101_title_with_an_unclosed_quote_is_one_counted_row_not_the_rest_of_the_file(tmp_path):
    path = write_lines(tmp_path / "train_titles.csv", [
        "image_path,text,label", 'apple_pie_1.jpg,"Grandma\'s apple pie,apple_pie',
        "apple_pie_2.jpg,Easy pie,apple_pie", "cheesecake_3.jpg,NY cheesecake,cheesecake"])
    parsed, _ = parse_titles_csv(path)
    assert [(r.id, r.line) for r in parsed.rows] == [("apple_pie_2.jpg", 3), ("cheesecake_3.jpg", 4)]
    assert [(n, why) for n, _, why in parsed.skipped] == [
        (1, "header"), (2, "a quote opens and never closes on this line")]


def test_food101_titles_csv_header_quotes_and_unquoted_commas(tmp_path):
    path = write_lines(tmp_path / "train_titles.csv", ["Image_path,text,label", 'a_1.jpg,"fries, salt",apple_pie',
                                                       "b_2.jpg,too,many,commas,cheesecake", "only,two"])
    parsed, rejoined = parse_titles_csv(path)
    assert [(r.id, r.label, r.fields[0]) for r in parsed.rows] == [("a_1.jpg", "apple_pie", "fries, salt"),
                                                                   ("b_2.jpg", "cheesecake", "too,many,commas")]
    assert rejoined == 1 and parsed.skipped[0][2] == "header" and "2 field(s)" in parsed.skipped[1][2]
    headerless, _ = parse_titles_csv(write_lines(tmp_path / "test_titles.csv", ["x.jpg,title,pho"]))
    assert [(r.id, r.label) for r in headerless.rows] == [("x.jpg", "pho")] and not headerless.skipped
    assert clean_text("RT #tasty soup http://t.co/x more") == "tasty soup "


def test_food101_header_in_another_order_or_wider_keeps_whole_titles_and_counts_short_rows(tmp_path):
    # Under a named header the surplus fields of a row are its title's commas, wherever the title column is; the
    # title used to be cut at the first comma (columns reordered) or the row crashed with an IndexError (4 columns).
    reordered = write_lines(tmp_path / "train_titles.csv", ["label,image_path,text", "pho,p_1.jpg,beef, rice noodles"])
    parsed, rejoined = parse_titles_csv(reordered)
    assert [(r.id, r.label, r.fields[0]) for r in parsed.rows] == [("p_1.jpg", "pho", "beef, rice noodles")]
    assert rejoined == 1
    wider = write_lines(tmp_path / "test_titles.csv", ["id,image_path,text,label", "7,p_2.jpg,soup, hot,pho",
                                                       "p_3.jpg,soup,pho"])
    parsed, rejoined = parse_titles_csv(wider)
    assert [(r.id, r.label, r.fields[0]) for r in parsed.rows] == [("p_2.jpg", "pho", "soup, hot")] and rejoined == 1
    assert [(n, why) for n, _, why in parsed.skipped] == [
        (1, "header"), (3, "expected 'id,image_path,text,label', got 3 field(s)")]


def test_food101_label_map_is_sorted_and_independent_of_folders(prepared, vocab, tmp_path):
    assert len(FOOD_CLASSES) == 101 and list(FOOD_CLASSES) == sorted(FOOD_CLASSES)
    assert FOOD_CLASSES.index("cheese_plate") < FOOD_CLASSES.index("cheesecake")
    tree, cache_dir = prepared("food101")
    cache = open_cache(cache_dir)
    assert cache.classes == FIXTURE_FOOD == tuple(sorted(FIXTURE_FOOD))
    assert list(cache.labels[cache.splits["test"]]) == tree.labels["test"]
    text = cache.arrays["text"][cache.splits["test"][1]]
    tokenizer = load_tokenizer(str(vocab))
    assert text[0] == tokenizer.cls_token_id and tokenizer.sep_token_id in text, "BalanceBenchmark adds [CLS]/[SEP]"
    assert tokenizer.convert_tokens_to_ids("rt") not in text, "clean_text drops the leading RT"
    with pytest.raises(PrepareError, match="have no train samples"):
        build("food101", tree.root, tmp_path / "declared", vocab, label_order="declared")


def test_food101_csv_label_order_is_sorted_not_first_appearance_and_images_come_from_the_rows_phase(tmp_path):
    # BalanceBenchmark: classes = sorted class folder names; images from images/<phase>/<label>/<name>.
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "train_titles.csv").write_text("image_path,text,label\ncheesecake_1.jpg,a cake,cheesecake\n"
                                            "apple_pie_2.jpg,a pie,apple_pie\n")
    (texts / "test_titles.csv").write_text("image_path,text,label\ncheese_plate_3.jpg,cheese,cheese_plate\n"
                                           "apple_pie_4.jpg,pie,apple_pie\n")
    files = {n: texts / n for n in Food101.SPLIT_FILES}
    tables = Food101.read_splits(files, tmp_path, PrepareOptions(label_order="csv"), None)
    assert tables.classes == ("apple_pie", "cheese_plate", "cheesecake")
    assert [(s.id, s.label) for s in tables.splits["train"]] == [("cheesecake_1.jpg", 2), ("apple_pie_2.jpg", 0)]
    test = tables.splits["test"][1]
    for phase in ("train", "test"):
        write_image(tmp_path / "images" / phase / "apple_pie" / "apple_pie_4.jpg", CLASS_COLOURS[0])
    path = Food101.image_path(tmp_path, test, SimpleNamespace(image_dir="images"))
    assert path == tmp_path / "images" / "test" / "apple_pie" / "apple_pie_4.jpg"


def test_food101_training_rotates_and_flips_per_batch_evaluation_does_not():
    images = torch.zeros(4, 8, 8, 3, dtype=torch.uint8)
    images[:, :2, :2] = 255
    augment = ImageAugment("visual", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), rotate_degrees=30.0, flip=True)
    test = augment({"visual": images.clone()}, torch.Generator().manual_seed(0), False)["visual"]
    torch.testing.assert_close(test[:, :, 0], images.permute(0, 3, 1, 2).float() / 255, rtol=1e-6, atol=1e-7)
    train = augment({"visual": images.clone()}, torch.Generator().manual_seed(0), True)["visual"]
    assert train.shape == (4, 3, 1, 8, 8) and not torch.equal(train, test)
    flipped = ImageAugment("visual", (0.0,) * 3, (1.0,) * 3, flip=True)({"visual": images.clone()},
                                                                         torch.Generator().manual_seed(3), True)
    corners = flipped["visual"][:, 0, 0, 0, [0, -1]]
    assert {tuple(c.tolist()) for c in corners} <= {(1.0, 0.0), (0.0, 1.0)}


def test_unquote_reads_whole_quoted_fields_as_pandas_does():
    assert unquote('""') == "" and unquote('"a ""b"" c"') == 'a "b" c'
    assert unquote('"') == '"' and unquote('a"') == 'a"' and unquote('"a') == '"a', "not wrapped: as written"


def test_amss_tsv_header_spacing_padded_fields_and_bad_rows_per_line(tmp_path):
    # pandas writes "Unnamed: 0" for an index column re-saved without a name; padded header names still match.
    path = write_lines(tmp_path / "train.tsv", [
        "Unnamed: 0\t Label\tString \tImageID", "5\t 1 \tgood day\t 1.jpg ", "   ", "6\t0\ttext\t2.jpg\textra",
        "7\t\ttext\t3.jpg", "8\t1\ttext\t", "\t1\tno index\t4.jpg"])
    parsed = parse_amss_tsv(path, strict=False)
    assert [(r.id, r.label, r.line, r.fields) for r in parsed.rows] == [
        ("5", "1", 2, ("good day", "1.jpg")), ("L7", "1", 7, ("no index", "4.jpg"))]
    assert [(n, why) for n, _, why in parsed.skipped] == [
        (1, "header"), (3, "blank line"),
        (4, "expected 4 tab-separated fields (['Unnamed: 0', 'Label', 'String', 'ImageID']), got 5"),
        (5, "empty Label or ImageID"), (6, "empty Label or ImageID")]
    write_lines(path, ["index\tLabel\tString\tImageID", "12\t0\tx\t9.jpg"])
    assert [r.id for r in parse_amss_tsv(path).rows] == ["12"]
    path.write_bytes(b"\n\n")
    with pytest.raises(SplitParseError, match=r"train.tsv: empty file, expected a header line"):
        parse_amss_tsv(path)


def test_tombert_rows_are_stripped_checked_and_deduplicated_by_policy(tmp_path):
    header = "index\t#1 Label\t#2 ImageID\t#3 String\t#3 String"
    train = write_lines(tmp_path / "train.tsv", [
        header, "1\t0\t1.jpg\t$T$ and $T$ again\tRT Madrid", "", "1\t2\t2.jpg\t$T$ wins\tX",
        " 3 \t 1 \t 3.jpg \t $T$ ok \t Y ", "4\t1\t4.jpg\t$T$ x\tZ\textra", "\t1\t5.jpg\t$T$\tW", "6\t1\t\t$T$\tW",
        "7\t3\t7.jpg\t$T$\tW"])
    test = write_lines(tmp_path / "test.tsv", ["index\t#1 ImageID\t#2 String\t#2 String", "9\t2\t9.jpg\t$T$\tV"])
    parsed = parse_tombert_tsv(train, strict=False, text="substituted")
    assert [(r.id, r.label, r.fields) for r in parsed.rows] == [
        ("1", "0", ("RT Madrid and RT Madrid again", "1.jpg")), ("1", "2", ("X wins", "2.jpg")),
        ("3", "1", ("Y ok", "3.jpg")), ("7", "3", ("W", "7.jpg"))]
    tables = Twitter2015.read_splits({"train.tsv": train, "test.tsv": test}, tmp_path,
                                     PrepareOptions(duplicates="last"), twitter_settings(tmp_path))
    assert [(s.id, s.label, s.where) for s in tables.splits["train"]] == [("1", 2, "train.tsv:4"),
                                                                          ("3", 1, "train.tsv:5")]
    # label 3 of three classes is an unknown label, not an IndexError; the blank line is no bad row
    assert [(d.where, d.kind, d.bad) for d in tables.dropped] == [
        ("train.tsv:6", "malformed row", True), ("train.tsv:7", "malformed row", True),
        ("train.tsv:8", "malformed row", True), ("train.tsv:2", "duplicate id", False),
        ("train.tsv:9", "unknown label", True)]
    assert tables.info["skipped_lines"]["train.tsv"] == {
        "header": 1, "blank line": 1, "expected 5 tab-separated fields, got 6": 1,
        "empty index, label or ImageID": 2}


def test_tsv_format_reads_the_first_non_blank_line_and_needs_every_tombert_name(tmp_path):
    tombert = "index\t#1 Label\t#2 ImageID\t#3 String\t#3 String"
    assert tsv_format(write_lines(tmp_path / "a.tsv", ["", tombert])) == "tombert"
    assert tsv_format(write_lines(tmp_path / "b.tsv", [tombert.replace("index", "id")])) == "amss"
    assert tsv_format(write_lines(tmp_path / "c.tsv", ["index\t#1 Label\tString\tImageID"])) == "amss"


def test_clean_text_drops_only_a_leading_retweet_mark_urls_and_hashes():
    assert clean_text("I RT this") == "I RT this" and clean_text("RTX 4090 #gpu") == "RTX 4090 gpu"
    assert clean_text("#RT great") == "RT great", "the retweet mark is dropped before '#'"
    assert clean_text("see https://t.co/x now") == "see " and clean_text("a http://x.co/1\nnext") == "a next"


def test_the_lowercase_setting_reaches_the_tokenizer_and_amss_text_is_not_cleaned(tmp_path, vocab):
    # AMSS tokenises the raw tweet ("rt" is in the tiny vocabulary); only Food-101's recipe cleans.
    assert load_tokenizer(str(vocab), False).tokenize("Happy") == ["[UNK]"]
    write_image(tmp_path / "images" / "1.jpg", CLASS_COLOURS[0])
    sample = Sample("1", "train", 0, "not_sarcastic", "train.tsv:2", row=SplitRow("1", "0", 2, ("RT Happy", "1.jpg")))
    settings = {"tokenizer": str(vocab), "max_len": 4, "special_tokens": False, "image_size": 4}
    tokenizer = load_tokenizer(str(vocab))
    rt, happy, unk = tokenizer.convert_tokens_to_ids(["rt", "happy", "[UNK]"])
    for lowercase, expected in ((True, [rt, happy, 0, 0]), (False, [unk, unk, 0, 0])):
        hp = SimpleNamespace(**settings, lowercase=lowercase, clean_text=False)
        media, extra = Sarcasm.locate(tmp_path, sample, SimpleNamespace(image_dir="images"))
        arrays, _ = Sarcasm.load(tmp_path, Record(0, sample, media, extra), hp)
        assert arrays["text"].tolist() == expected and arrays["visual"].shape == (4, 4, 3)


def test_find_image_tries_suffixes_for_bare_names_and_skips_folders(tmp_path):
    (tmp_path / "images" / "7.jpg").mkdir(parents=True)
    write_image(tmp_path / "images" / "7.png", CLASS_COLOURS[0])
    assert find_image(tmp_path, "images", "7") == tmp_path / "images" / "7.png"
    with pytest.raises(MediaError, match=r"image '7.jpg' not found"):
        find_image(tmp_path, "images", "7.jpg")


def test_an_image_id_outside_the_image_folder_is_a_bad_item_naming_its_row(tmp_path, vocab):
    # An absolute ImageID outside the raw root crashed prepare with a bare ValueError from Path.relative_to.
    tree = make_image_text(tmp_path / "raw", image_dir="images", classes=2, per_class={"train": 4, "test": 2})
    outside = tmp_path / "elsewhere.jpg"
    write_image(outside, CLASS_COLOURS[0])
    tsv = tree.root / "annotations" / "train.tsv"
    lines = tsv.read_text().splitlines()
    write_lines(tsv, [lines[0], lines[1].replace("1000.jpg", str(outside)),
                      lines[2].replace("1001.jpg", "../../elsewhere.jpg"), *lines[3:]])
    with pytest.raises(PrepareError) as err:
        build("sarcasm", tree.root, tmp_path / "cache", vocab)
    assert "2 bad item(s) in sarcasm" in str(err.value) and "train.tsv:2" in str(err.value) and \
        "train.tsv:3" in str(err.value) and "points outside" in str(err.value)
    with pytest.raises(MediaError, match="outside"):
        find_image(tree.root, "images", str(outside))


def test_rotation_matches_torchvision_nearest_rotation():
    functional = pytest.importorskip("torchvision.transforms.functional")
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    angles = torch.tensor([30.0, -30.0, 17.3, 90.0, -4.1])
    ours = rotate_nearest(images, angles)
    for image, angle, out in zip(images, angles, ours):
        expected = functional.rotate(image, float(angle), interpolation=functional.InterpolationMode.NEAREST)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_training_augment_draws_angles_in_both_directions_then_flips_half():
    # BalanceBenchmark: RandomRotation(30) = U(-30, 30) degrees, then RandomHorizontalFlip(p=0.5); replayed from the
    # same generator draws, on an image without symmetry so a transposed layout shows too.
    images = torch.randint(0, 256, (64, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    augment = ImageAugment("visual", mean, std, rotate_degrees=30.0, flip=True)
    out = augment({"visual": images.clone()}, torch.Generator().manual_seed(5), True)["visual"][:, :, 0]
    draws = torch.Generator().manual_seed(5)
    angles = (torch.rand(64, generator=draws) * 2.0 - 1.0) * 30.0
    flips = torch.rand(64, generator=draws) < 0.5
    assert (angles < 0).any() and (angles > 0).any() and 0 < int(flips.sum()) < 64
    expected = rotate_nearest(images.permute(0, 3, 1, 2).float() / 255.0, angles)
    expected = torch.where(flips[:, None, None, None], expected.flip(-1), expected)
    expected = (expected - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_image_text_defaults_are_the_published_recipes():
    amss = {h.name: h.default for h in Twitter2015.SETTINGS}
    assert {k: amss[k] for k in ("tokenizer", "lowercase", "max_len", "special_tokens", "clean_text",
                                 "image_size")} == {"tokenizer": "bert-base-uncased", "lowercase": True,
                                                    "max_len": 128, "special_tokens": False, "clean_text": False,
                                                    "image_size": 224}
    assert {h.name: h.default for h in Sarcasm.SETTINGS} == {**amss, "image_dir": "images"}
    food = {h.name: h.default for h in Food101.SETTINGS}
    assert (food["max_len"], food["special_tokens"], food["clean_text"], food["image_size"]) == (40, True, True, 224)
    serving = {name: {h.name: h.default for h in get_dataset(name).HPARAMS} for name in ("food101", "sarcasm")}
    assert serving["food101"]["mean"] == [0.485, 0.456, 0.406] and serving["food101"]["std"] == [0.229, 0.224, 0.225]
    assert (serving["food101"]["rotate_degrees"], serving["food101"]["flip"]) == (30.0, True)
    np.testing.assert_allclose(serving["sarcasm"]["mean"], [0.4846, 0.4989, 0.5307], atol=5e-5, rtol=0)
    np.testing.assert_allclose(serving["sarcasm"]["std"], [0.2440, 0.2487, 0.2574], atol=5e-5, rtol=0)
    np.testing.assert_allclose(Twitter2015.HPARAMS[-2].default, [0.42455, 0.44051, 0.47076], atol=0, rtol=0)
    np.testing.assert_allclose(Twitter2015.HPARAMS[-1].default, [0.24485, 0.24617, 0.25451], atol=0, rtol=0)
    assert Twitter2015.CLASSES == ("negative", "neutral", "positive")
    assert Sarcasm.CLASSES == ("not_sarcastic", "sarcastic")
    augment = Food101.augment(resolve("data", Food101.HPARAMS, "food101", {}))
    assert (augment.rotate_degrees, augment.flip) == (30.0, True)


def test_food101_titles_header_after_a_blank_line_other_column_names_and_padded_fields(tmp_path):
    # pandas skips blank lines before the header; the header read as a row made "label" a class of its own
    # under --label-order csv.
    path = write_lines(tmp_path / "train_titles.csv", [
        "", " image_name , title , class ", " x_1.jpg , a title , pho ", "x_2.jpg,no class,", ",no image,pho",
        "image_path,text,label"])
    parsed, _ = parse_titles_csv(path)
    assert [(r.id, r.label, r.line, r.fields) for r in parsed.rows] == [
        ("x_1.jpg", "pho", 3, ("a title", "x_1.jpg")), ("image_path", "label", 6, ("text", "image_path"))]
    assert [(n, why) for n, _, why in parsed.skipped] == [
        (1, "blank line"), (2, "header"), (4, "empty image name or class"), (5, "empty image name or class")]
    write_lines(path, ["image_path,label", "x.jpg,pho"])
    assert [why for _, _, why in parse_titles_csv(path)[0].skipped] == [
        "header ['image_path', 'label'] lacks an image, text or label column", "expected 'image,title,class', "
        "got 2 field(s)"]


def test_food101_read_splits_counts_bad_rows_duplicates_and_rejoined_titles(tmp_path):
    texts = tmp_path / "texts"
    train = write_lines(texts / "train_titles.csv", ["image_path,text,label", "p_1.jpg,soup,pho", "p_1.jpg,soup 2,pho",
                                                     "short,pho", "a_2.jpg,pie, warm,apple_pie"])
    test = write_lines(texts / "test_titles.csv", ["image_path,text,label", "p_3.jpg,soup,pho"])
    tables = Food101.read_splits({"train_titles.csv": train, "test_titles.csv": test}, tmp_path,
                                 PrepareOptions(label_order="csv", duplicates="last"), None)
    assert [(s.id, s.where) for s in tables.splits["train"]] == [("p_1.jpg", "train_titles.csv:3"),
                                                                 ("a_2.jpg", "train_titles.csv:5")]
    assert [(d.where, d.kind, d.bad) for d in tables.dropped] == [
        ("train_titles.csv:4", "malformed row", True), ("train_titles.csv:2", "duplicate id", False)]
    assert tables.info["num_classes"] == 2 and tables.info["rows_with_rejoined_commas"] == {"train": 1, "test": 0}


# --- CMU-MOSEI ---------------------------------------------------------------------------------------------------


def test_mosei_only_audio_minus_inf_is_zeroed_other_non_finite_features_are_bad_items(tmp_path, vocab):
    # BalanceBenchmark zeroes audio -inf only; NaN or +inf in audio, or -inf in vision or text, would be trained on as
    # 0 without a word.
    tree = make_mosei(tmp_path / "raw")
    path = tree.extra["path"]
    doc = pickle.loads(path.read_bytes())
    doc["train"]["audio"][1, 2, 5] = np.nan
    doc["train"]["audio"][2, 0, 0] = np.inf
    doc["train"]["vision"][3, 1, 1] = -np.inf
    doc["train"]["text"][4, 0, 2] = -np.inf
    path.write_bytes(pickle.dumps(doc, protocol=4))
    cache = open_cache(build("mosei", tree.root, tmp_path / "cache", vocab, skip_bad=True))
    dropped = {row["id"]: row["reason"] for row in csv.DictReader((cache.path / "dropped.csv").open())}
    assert dropped == {f"train-{i:05d}": "non-finite features" for i in (1, 2, 3, 4)}
    assert (cache.arrays["audio"][cache.splits["train"][0], 0, :3] == 0).all(), "-inf -> 0 (BalanceBenchmark)"


def test_mosei_splits_acc2_policies_and_audio_inf(prepared, tmp_path, vocab):
    tree, cache_dir = prepared("mosei")
    cache = open_cache(cache_dir)
    m = cache.manifest
    assert {s: v["n"] for s, v in m["counts"]["splits"].items()} == {"train": 10, "val": 5, "test": 5,
                                                                     "train_noval": 10}
    assert m["val_source"].startswith("published valid") and m["settings"]["acc2"] == "zero_positive"
    assert m["info"]["pickle_sha256"] == sha256_file(tree.root / m["info"]["pickle"])
    y = np.asarray(tree.labels["train"])
    assert list(cache.labels[cache.splits["train"]]) == list((y >= 0).astype(int)), "zero sentiment is positive"
    audio = cache.arrays["audio"]
    assert audio.dtype == np.float16 and audio.shape == (20, 7, 74) and np.isfinite(audio).all()
    assert (audio[cache.splits["train"][0], 0, :3] == 0).all(), "-inf -> 0 (BalanceBenchmark)"
    assert cache.index["speaker"][0] == "vid0"
    strict = open_cache(build("mosei", tree.root, tmp_path / "cache", vocab, {"acc2": "exclude_zero"}))
    assert strict.manifest["dropped"]["by_reason"] == {"zero sentiment (acc2 exclude_zero)": 4}
    assert strict.manifest["dropped"]["bad"] == 0 and len(strict.splits["train"]) == 8
    assert list(strict.labels[strict.splits["train"]]) == list((y[y != 0] > 0).astype(int))
    bundle, batch = batch_of("mosei", cache_dir)
    assert bundle.task.names == ("audio", "visual", "text")
    assert batch["text"].dtype == torch.float32 and batch["text"].shape == (5, 5, 300)


def test_mosei_pickle_holding_other_objects_is_refused(tmp_path, vocab):
    import datetime

    (tmp_path / "raw").mkdir()
    with (tmp_path / "raw" / "mosei_senti_data_noalign.pkl").open("wb") as f:
        pickle.dump({"train": {"when": datetime.date(2020, 1, 1)}}, f)
    with pytest.raises(SplitParseError, match="refusing to load datetime.date"):
        build("mosei", tmp_path / "raw", tmp_path / "cache", vocab)


@pytest.mark.parametrize("damage, message", [
    (lambda doc: doc.update(test=None), "split 'test' should be a dict of arrays, got NoneType"),
    (lambda doc: doc["train"].update(labels=np.ones((10, 3), np.float32)),
     r"train/labels should hold one number per sample, got dtype float32 and shape \(10, 3\)"),
    (lambda doc: doc["train"].update(labels=np.array(["pos"] * 10)), "train/labels should hold one number per sample"),
    (lambda doc: doc["train"].update(id=doc["train"]["id"][:4]), "different sample counts per key"),
    (lambda doc: doc["train"].update(audio=5), "train/audio should hold one entry per sample, got int"),
    # the cache's feature shape comes from train: a test split of other widths failed at load, naming one sample
    (lambda doc: doc["test"].update(vision=doc["test"]["vision"][:, :, :-1]),
     r"test/vision has samples of shape \(\d+, \d+\), train/vision \(\d+, \d+\)"),
])
def test_a_mosei_pickle_with_an_ill_typed_entry_names_its_split_and_key(tmp_path, vocab, damage, message):
    # Each ended in a bare numpy/Python error naming no key (a (10, 3) label array was read from column 0 silently).
    tree = make_mosei(tmp_path / "raw")
    with tree.extra["path"].open("rb") as f:
        doc = pickle.load(f)
    damage(doc)
    with tree.extra["path"].open("wb") as f:
        pickle.dump(doc, f, protocol=4)
    with pytest.raises(SplitParseError, match=message):
        build("mosei", tree.root, tmp_path / "cache", vocab)


# --- NVGesture ---------------------------------------------------------------------------------------------------


def test_nvgesture_lists_use_one_based_labels_and_line_positions(tmp_path):
    good = "path:./Video_data/class_02/subject3_r1 depth:sk_depth:5:85 color:sk_color:5:85 duo_left:d:1:2 label:2"
    path = write_lines(tmp_path / "nvgesture_train_correct_v2.lst",
                       [good, "", "path:./x depth:sk_depth:1:2 label:3", good.replace("label:2", "label:26"),
                        good.replace("subject3", "subject4")])
    parsed = parse_nvgesture_list(path)
    assert [(r.id, r.label, r.line, r.fields[0]) for r in parsed.rows] == [
        ("./Video_data/class_02/subject3_r1", "2", 1, "0"), ("./Video_data/class_02/subject4_r1", "2", 5, "3")]
    assert parsed.rows[0].fields[1:] == ("sk_color", "5", "85", "sk_depth", "5", "85")
    reasons = [reason for _, _, reason in parsed.skipped]
    assert reasons[0] == "blank line" and "missing ['color']" in reasons[1] and "not 1..25" in reasons[2]


def test_nvgesture_line_naming_a_key_twice_is_a_counted_bad_row_not_its_last_value(tmp_path, vocab):
    # "label:1 ... label:7" used to keep label 7 without a word; the line is malformed, named by file and line.
    good = "path:./Video_data/class_01/subject1_r0 depth:sk_depth:5:85 color:sk_color:5:85 duo_left:d:1:2 label:1"
    path = write_lines(tmp_path / "nvgesture_train_correct_v2.lst", [good, good.replace("r0", "r1") + " label:7"])
    parsed = parse_nvgesture_list(path)
    assert [r.id for r in parsed.rows] == ["./Video_data/class_01/subject1_r0"]
    assert [(line, reason) for line, _, reason in parsed.skipped] == [(2, "key 'label' given twice")]
    tree = make_nvgesture(tmp_path / "raw")
    lst = tree.root / "nvgesture_train_correct_v2.lst"
    lines = lst.read_text().splitlines()
    lst.write_text("\n".join([lines[0] + " label:3", *lines[1:]]) + "\n")
    with pytest.raises(PrepareError, match=r"nvgesture_train_correct_v2.lst:1.*key 'label' given twice"):
        build("nvgesture", tree.root, tmp_path / "cache", vocab)


def test_nvgesture_cache_starts_at_the_list_frame_and_serves_shared_windows(prepared):
    tree, cache_dir = prepared("nvgesture")
    cache = open_cache(cache_dir)
    rgb, depth, flow = cache.arrays["rgb"], cache.arrays["depth"], cache.arrays["flow"]
    assert rgb.shape == (15, 8, 20, 20, 3) and depth.shape == (15, 8, 20, 20) and flow.dtype == np.float16
    assert [int(rgb[0, k, 5, 5, 0]) for k in range(3)] == [frame_level(2 + k) for k in range(3)], "start frame 2"
    assert int(depth[0, 0, 5, 5]) == 100, "depth = OpenCV frame[..., 0] of BGR = blue"
    np.testing.assert_array_equal(flow[0, :, 3, 3, 0], np.arange(8))
    assert cache.classes == ("class_01", "class_02", "class_03") and cache.index["speaker"][0] == "subject0"
    bundle, test = batch_of("nvgesture", cache_dir)
    assert bundle.task.names == ("rgb", "flow", "depth")
    assert test["rgb"].shape == (6, 3, 8, 16, 16) and test["depth"].shape == (6, 1, 8, 16, 16)
    np.testing.assert_array_equal(test["flow"][0, 0, :, 0, 0].numpy(), np.arange(8))
    _, train = batch_of("nvgesture", cache_dir, split="train", train=True)
    assert train["rgb"].shape == (6, 3, 4, 16, 16) and train["flow"].shape == (6, 2, 4, 16, 16)
    steps = train["flow"][:, 0, :, 0, 0]
    assert torch.equal(steps - steps[:, :1], torch.arange(4.0).expand(6, 4)), "consecutive frames"
    red = train["rgb"][:, 0, :, 0, 0] * 0.229 + 0.485
    levels = torch.tensor([frame_level(2 + int(t)) for t in steps.flatten()]).view(6, 4) / 255.0
    torch.testing.assert_close(red, levels, atol=1e-4, rtol=0, msg="one window shared by rgb and flow")
    _, bgr = batch_of("nvgesture", cache_dir, channel_order="bgr")
    torch.testing.assert_close(bgr["rgb"][:, 2] * 0.225 + 0.406, test["rgb"][:, 0] * 0.229 + 0.485, rtol=1e-5,
                               atol=1e-6)


def test_crop_clips_takes_each_clips_own_window():
    h = torch.arange(6)[:, None] * 10 + torch.arange(6)[None]
    clips = h[None, None, :, :, None].expand(2, 3, 6, 6, 1).clone()
    out = crop_clips(clips, torch.tensor([0, 2]), torch.tensor([1, 3]), 3)
    assert out.shape == (2, 1, 3, 3, 3)
    assert torch.equal(out[0, 0, 0], h[0:3, 1:4]) and torch.equal(out[1, 0, 2], h[2:5, 3:6])


def test_nvgesture_missing_flow_is_a_bad_item(tmp_path, vocab):
    tree = make_nvgesture(tmp_path / "raw", per_class={"train": 3, "test": 1})
    (tree.root / "Video_data" / "flow_data" / "test" / "1.npy").unlink()
    with pytest.raises(PrepareError, match=r"nvgesture_test_correct_v2.lst:2 ./Video_data/class_02/subject1_r1"):
        build("nvgesture", tree.root, tmp_path / "cache", vocab)


def test_an_nvgesture_clip_path_outside_the_raw_root_is_a_bad_item(tmp_path, vocab):
    # raw / "/abs/clip" is "/abs/clip": an absolute path: value read another tree's videos into the cache.
    tree = make_nvgesture(tmp_path / "raw", per_class={"train": 3, "test": 1})
    lst = tree.root / "nvgesture_test_correct_v2.lst"
    lines = lst.read_text().splitlines()
    write_lines(lst, [lines[0].replace("path:./", f"path:{tree.root}/"), lines[1].replace("path:./", "path:../raw/"),
                      *lines[2:]])
    with pytest.raises(PrepareError) as err:
        build("nvgesture", tree.root, tmp_path / "cache", vocab)
    assert "2 bad item(s) in nvgesture" in str(err.value) and "points outside" in str(err.value)
    assert "nvgesture_test_correct_v2.lst:1" in str(err.value) and "nvgesture_test_correct_v2.lst:2" in str(err.value)


# --- UCF-101 -----------------------------------------------------------------------------------------------------


def test_ucf101_label_orders_and_mismatched_numbers(tmp_path, vocab):
    tree = make_ucf101(tmp_path / "raw")
    assert parse_class_index(tree.root / "ucfTrainTestlist" / "classInd.txt") == [
        (1, "Basketball"), (2, "Archery"), (3, "ApplyEyeMakeup")]
    sorted_cache = open_cache(build("ucf101", tree.root, tmp_path / "a", vocab))
    assert sorted_cache.classes == UCF_CLASSES and list(sorted_cache.labels[sorted_cache.splits["test"]]) == \
        tree.labels["test"]
    assert sorted_cache.index["id"][0] == tree.ids["train"][0]
    official = open_cache(build("ucf101", tree.root, tmp_path / "b", vocab, label_order="classind"))
    assert official.classes == tuple(reversed(UCF_CLASSES))
    lst = tree.root / "ucfTrainTestlist" / "trainlist01.txt"
    lines = lst.read_text().splitlines()
    write_lines(lst, [lines[0].replace(" 3", " 1")] + lines[1:], "\r\n")
    with pytest.raises(PrepareError, match="number 1 is 'Basketball' in classInd.txt, the path says 'ApplyEyeMakeup'"):
        build("ucf101", tree.root, tmp_path / "c", vocab)
    kept = open_cache(build("ucf101", tree.root, tmp_path / "c", vocab, skip_bad=True))
    assert kept.manifest["dropped"]["by_reason"] == {"label mismatch": 1}


def test_ucf101_validation_holds_out_whole_groups(tmp_path):
    # A hold-out of single clips put clips of one gNN group (one actor and scene) into both train and validation:
    # on a list like split 1's, every held-out clip shared its group with a training clip.
    lists = tmp_path / "lists"
    write_lines(lists / "classInd.txt", ["1 Archery", "2 Basketball"], "\r\n")
    rows = [f"{c}/v_{c}_g{g:02d}_c{k:02d}.avi {n}" for n, c in ((1, "Archery"), (2, "Basketball"))
            for g in range(8, 16) for k in range(1, 4)]
    write_lines(lists / "trainlist01.txt", rows + ["Archery/v_Archery_x.avi 1"], "\r\n")
    write_lines(lists / "testlist01.txt", ["Archery/v_Archery_g01_c01.avi"], "\r\n")
    files = {name: lists / name for name in ("classInd.txt", "trainlist01.txt", "testlist01.txt")}
    tables = UCF101.read_splits(files, tmp_path, PrepareOptions(label_order="sorted"), SimpleNamespace(split=1))
    val, source, record = validation_split(tables, PrepareOptions(val_fraction=0.25, val_seed=0))
    group = {s.id: s.id.rsplit("_c", 1)[0] for s in tables.splits["train"]}
    assert {group[i] for i in val}.isdisjoint(group[i] for i in set(group) - val)
    assert sum(i.startswith("Basketball/") for i in val) == 6, "2 of Basketball's 8 groups, 3 clips each"
    assert record == {"fraction": 0.25, "seed": 0, "groups": "gNN groups of a class"}
    assert source == "stratified hold-out of train by whole gNN groups of a class (fraction 0.25, seed 0)"
    assert tables.info["train_clips_without_group"] == 1


def test_ucf101_counts_the_clips_too_short_for_its_frame_picks(tmp_path, vocab):
    # Kept and served by repeating frames, where BalanceBenchmark's loader would miss a frame file: counted, not silent.
    short = open_cache(build("ucf101", make_ucf101(tmp_path / "raw", rgb_frames=2, flow_frames=2).root,
                             tmp_path / "cache", vocab))
    counts = short.manifest["counts"]
    assert counts["rgb_clips_under_rgb_frames"] == counts["flow_clips_under_3_frames"] == len(short) > 0
    assert "repeat frames at load" in short.manifest["policies"]["short_clips"]
    full = open_cache(build("ucf101", make_ucf101(tmp_path / "raw2").root, tmp_path / "cache2", vocab))
    full_counts = full.manifest["counts"]
    assert full_counts["rgb_clips_under_rgb_frames"] == full_counts["flow_clips_under_3_frames"] == 0


def test_ucf101_flow_u_and_v_pair_by_frame_name(tmp_path, vocab):
    # Same counts, different frames: pairing by position would stack u frame 9 with v frame 10 without a word.
    tree = make_ucf101(tmp_path / "raw")
    flow_v = tree.root / "v" / tree.ids["train"][0].split("/")[1]
    last = sorted(flow_v.iterdir())[-1]
    last.rename(flow_v / "frame000010.jpg")
    with pytest.raises(PrepareError, match=r"9 u and 9 v flow frames.*unpaired: \['frame000009', 'frame000010'\]"):
        build("ucf101", tree.root, tmp_path / "c", vocab)


def test_ucf101_flow_max_frames_keeps_evenly_spaced_pairs(tmp_path, vocab):
    # 9 flow pairs, 4 kept: frames round(linspace(0, 8, 4)) = 0, 3, 5, 8 of the sorted pairs, u and v of the same frame.
    tree = make_ucf101(tmp_path / "raw")
    cache = open_cache(build("ucf101", tree.root, tmp_path / "cache", vocab, {"flow_max_frames": 4}))
    assert (cache.counts["flow"] == 4).all()
    first = cache.starts["flow"][0]
    u, v = cache.arrays["flow"][first:first + 4, 4, 4].T.astype(int)
    np.testing.assert_allclose(u, [128 + 10 + 10 * k for k in (0, 3, 5, 8)], atol=3)
    np.testing.assert_allclose(v, [128 - 10 - 10 * k for k in (0, 3, 5, 8)], atol=3)


def test_ucf101_hold_out_unit_is_the_class_and_its_group():
    # gNN numbers restart in every class: g08 of ApplyEyeMakeup and g08 of Archery are different actors and scenes.
    def sample(path: str, label: str) -> Sample:
        return Sample(path.rsplit(".", 1)[0], "train", 0, label, "trainlist01.txt:1", "",
                      SplitRow(path.rsplit(".", 1)[0], label, 1, (path, "1")))

    assert clip_group(sample("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup")) == "ApplyEyeMakeup/g8"
    assert clip_group(sample("Archery/v_Archery_g08_c03.avi", "Archery")) == "Archery/g8"
    assert clip_group(sample("Archery/odd_name.avi", "Archery")) == "Archery/odd_name"


def test_bb_segment_rule():
    six, nine, four = torch.tensor([6]), torch.tensor([9]), torch.tensor([4])
    assert bb_offsets(six, six, False, None).tolist() == [[0, 2, 4]]    # 1-based 1, 3, 5
    assert bb_offsets(nine, nine, False, None).tolist() == [[0, 3, 6]]  # seg 3: i*3 + max(1, 1)
    assert bb_offsets(four, six, False, None).tolist() == [[0, 2, 3]], "clamped to the frames that exist"
    picks = torch.cat([bb_offsets(six, six, True, torch.Generator().manual_seed(s)) for s in range(40)])
    assert set(picks[:, 0].tolist()) == {0, 1} and set(picks[:, 1].tolist()) == {2, 3} and \
        set(picks[:, 2].tolist()) == {4, 5}


def test_ucf101_cache_is_ragged_and_batches_pick_three_frames(prepared):
    tree, cache_dir = prepared("ucf101")
    cache = open_cache(cache_dir)
    assert (cache.counts["visual"] == 6).all() and (cache.counts["flow"] == 9).all(), "first 6 RGB, every flow frame"
    first = cache.starts["flow"][0]
    u, v = cache.arrays["flow"][first, 4, 4]
    assert abs(int(u) - 138) <= 3 and abs(int(v) - 118) <= 3, "u and v stacked as 2 channels"
    bundle, batch = batch_of("ucf101", cache_dir)
    assert bundle.task.names == ("visual", "flow")
    assert batch["visual"].shape == (6, 3, 3, 16, 16) and batch["flow"].shape == (6, 2, 3, 16, 16)
    red = batch["visual"][0, 0, :, 0, 0] * 0.229 + 0.485
    torch.testing.assert_close(red, torch.tensor([frame_level(k) / 255 for k in (0, 2, 4)]), atol=0.02, rtol=0)
    assert 0.0 <= float(batch["flow"].min()) and float(batch["flow"].max()) <= 1.0


# --- end to end --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["twitter2015", "sarcasm", "food101", "mosei", "nvgesture", "ucf101"])
def test_each_dataset_trains_joint_and_aug(prepared, tmp_path, name):
    _, cache = prepared(name)
    train = {**TINY_TRAIN, "batch_size": 3, "epochs": 2}
    if name in ("twitter2015", "sarcasm"):
        train.update(optimizer="adam", lr=1e-3, weight_decay=0.0)
    for method in ("joint", "aug"):
        cfg = build_config(method, name, {"model": MODEL[name], "data": {"cache": str(cache), **DATA.get(name, {})},
                                          "train": train})
        summary = train_run(cfg, tmp_path / method, log=quiet)
        lines = [json.loads(x) for x in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
        assert len(lines) == 2 and all(math.isfinite(r["train"]["loss"]) for r in lines)
        last = summary["protocols"]["last"]["test"]
        assert 0.0 <= last["acc"] <= 1.0 and set(last["per_modality"]) == set(get_dataset(name).build(
            data_hp(name, cache)).task.names)
        statuses = {n: r["status"] for n, r in json.loads((cache / "manifest.json").read_text())["split_files"].items()}
        assert summary["split_files"] == statuses, "the run says which split files its cache was prepared from"


def test_a_cache_prepared_without_validation_split_trains_without_a_val_loader(tmp_path, vocab):
    tree = make_image_text(tmp_path / "raw", image_dir="twitter2015_images", classes=3,
                           per_class={"train": 4, "test": 2})
    path = build("twitter2015", tree.root, tmp_path / "cache", vocab, val_fraction=0.0)
    train = {**TINY_TRAIN, "batch_size": 3, "epochs": 1, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0}
    cfg = build_config("joint", "twitter2015", {"model": MODEL["twitter2015"], "data": {"cache": str(path)},
                                                "train": train})
    summary = train_run(cfg, tmp_path / "run", log=quiet)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and math.isfinite(lines[0]["train"]["loss"])
    assert 0.0 <= summary["protocols"]["last"]["test"]["acc"] <= 1.0
    m = open_cache(path).manifest
    assert m["empty_splits"] == ["val"] and set(m["counts"]["splits"]) == {"train", "train_noval", "test"}
    assert not (path / "splits" / "val.npy").exists()
    assert set(Twitter2015.build(data_hp("twitter2015", path)).splits) == {"train", "test"}


def test_aug_fusion_weights_line_up_with_nvgesture_modalities(prepared):
    _, cache = prepared("nvgesture")
    bundle = NVGesture.build(data_hp("nvgesture", cache))
    cfg = build_config("aug", "nvgesture", {"model": MODEL["nvgesture"], "data": {"cache": str(cache), **DATA[
        "nvgesture"]}, "train": {**TINY_TRAIN, "epochs": 1}})
    from aug.method import AUG
    from baselines.base import TrainContext

    ctx = TrainContext(device=torch.device("cpu"), epochs=1, train_hp=cfg.train, model_hp=cfg.model)
    method = AUG(bundle.task, cfg.method_hp, ctx)
    assert dict(zip(method.modalities, method.fusion)) == {"rgb": 0.33, "flow": 0.33, "depth": 0.34}


def test_cli_prepares_with_dataset_options(tmp_path, vocab, capsys):
    tree = make_image_text(tmp_path / "raw", image_dir="images", classes=2, per_class={"train": 4, "test": 2})
    args = ["prepare", "sarcasm", "--raw", str(tree.root), "--out", str(tmp_path / "cache"), "--val-fraction", "0.25",
            "--option", f"tokenizer={vocab}", "--option", "image_size=16", "--option", "max_len=8"]
    assert main(args) == 0
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    cache = open_cache(path)
    assert cache.arrays["text"].shape == (12, 8) and cache.manifest["settings"]["tokenizer"] == str(vocab)
    assert main(args[:-2] + ["--option", "no_such_setting=1"]) == 2
    assert "no_such_setting" in capsys.readouterr().err


def test_datasets_name_their_modalities_for_two_modality_methods(prepared):
    _, cache = prepared("mosei")
    bundle = get_dataset("mosei").build(data_hp("mosei", cache))
    cfg = build_config("ogm", "mosei", {"model": TINY_SEQ, "data": {"cache": str(cache)}})
    from baselines.base import TrainContext
    from baselines.registry import get_method

    ctx = TrainContext(device=torch.device("cpu"), epochs=1, train_hp=cfg.train, model_hp=cfg.model)
    with pytest.raises(ValueError, match=r"method 'ogm' supports \(2,\) modalities; dataset 'mosei' has 3 "
                                         r"\(audio, visual, text\)"):
        get_method("ogm")(bundle.task, cfg.method_hp, ctx)
    assert Mosei.CLASSES == ("negative", "positive") and Food101.LABEL_ORDERS[0] == "declared"
    assert UCF101.LABEL_ORDERS[0] == "sorted"
