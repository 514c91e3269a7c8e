"""The image-text pieces shared by Twitter-2015, Sarcasm and Food-101 (docs/datasets/food101.md,
docs/datasets/image-text.md): annotation parsers, tokenisation, image augmentation and the ``ImageTextDataset`` base (a
``datasets.prepared.PreparedDataset``).

**Text** is tokenised at prepare time into int32 ids with a BERT WordPiece tokenizer (``transformers``; a hub name
such as ``bert-base-uncased``, a folder holding ``vocab.txt``, or a ``vocab.txt`` path) and served as int64
``(B, L)`` under ``"text"``; id 0 is [PAD], so the attention mask is ``ids != 0``. **Images** are stored as uint8
``(S, S, 3)`` after PIL bilinear ``Resize((S, S))``, the published test transform, and served as float
``(B, 3, 1, S, S)`` under ``"visual"`` after per-batch augmentation (``ImageAugment``) and normalisation.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from core.data import Augment, Batch, Gather, ModalitySpec, TaskSpec
from core.extras import require_transformers
from core.hparams import HParam, HParams
from datasets.cache import ArraySpec, Cache
from datasets.media import MISSING_MEDIA, MediaError, check_inside
from datasets.media.video import load_image
from datasets.prepared import PreparedDataset, Recipe, Record
from datasets.splits import ParsedList, SplitParseError, SplitRow, read_lines
from datasets.tables import PrepareOptions, Sample, SplitTables, indexed_label, malformed_rows

# Suffixes tried for an image name written without one.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


# ---------------------------------------------------------------------------------------------------------------------
# Tab-separated annotations (AMSS and TomBERT)
# ---------------------------------------------------------------------------------------------------------------------

def unquote(field_text: str) -> str:
    """A field as pandas would read it when it is wrapped in double quotes (``""`` -> ``"``); others unchanged."""
    if len(field_text) >= 2 and field_text[0] == field_text[-1] == '"':
        return field_text[1:-1].replace('""', '"')
    return field_text


def read_table(path: Path, delimiter: str) -> tuple[list[str], list[tuple[int, list[str]]], ParsedList]:
    """A delimited text file with a header line: (header names, [(line, fields)], a ``ParsedList`` shell).

    One record per line (fields are never continued across lines); BOM, CRLF/LF and a missing final newline are
    accepted; blank lines are skipped and reported. No quote processing beyond ``unquote`` of whole fields, because
    a tweet with a stray quote would make a CSV reader swallow the following lines.
    """
    lines, bom, endings = read_lines(path)
    shell = ParsedList(Path(path), bom=bom, line_endings=endings)
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            shell.skipped.append((number, text, "blank line"))
            continue
        fields = [unquote(f) for f in text.split(delimiter)]
        if header is None:
            header = [f.strip() for f in fields]
            shell.skipped.append((number, text, "header"))
            continue
        rows.append((number, fields))
    if header is None:
        raise SplitParseError(f"{path}: empty file, expected a header line")
    return header, rows, shell


def column(header: Sequence[str], names: Sequence[str], path: Path) -> int:
    """Index of the first header field equal (case-insensitively) to one of ``names``."""
    lowered = [h.lower() for h in header]
    for name in names:
        if name.lower() in lowered:
            return lowered.index(name.lower())
    raise SplitParseError(f"{path}: header {header} has no column {' or '.join(repr(n) for n in names)}")


def parse_amss_tsv(path: Path, *, strict: bool = True) -> ParsedList:
    """AMSS ``annotations/{train,test}.tsv`` (``pd.read_csv(sep='\\t')``, columns ``Label``, ``String``,
    ``ImageID``; ``AMSS_IT/MyDataset.py``). Rows become ``SplitRow(id, label, line, (text, image_id))``; the id is
    the row's index column when the file has one (an unnamed or ``index`` first column, as pandas writes it) and its
    values are unique, else ``L<line>``. A repeated index (a frame written after ``pd.concat`` without
    ``reset_index``) names different rows, not duplicates: ``pd.read_csv`` reads them all, and so do we."""
    header, rows, out = read_table(path, "\t")
    label_col = column(header, ("Label",), path)
    text_col = column(header, ("String",), path)
    image_col = column(header, ("ImageID",), path)
    id_col = 0 if header[0].lower() in ("", "index", "unnamed: 0") else None
    if id_col is not None:
        index = [fields[0].strip() for _, fields in rows]
        if len(set(index)) < len(index):
            id_col = None
    for number, fields in rows:
        try:
            if len(fields) != len(header):
                raise SplitParseError(f"expected {len(header)} tab-separated fields ({header}), got {len(fields)}")
            label, image = fields[label_col].strip(), fields[image_col].strip()
            if not label or not image:
                raise SplitParseError("empty Label or ImageID")
            sid = fields[id_col].strip() if id_col is not None and fields[id_col].strip() else f"L{number}"
            out.rows.append(SplitRow(sid, label, number, (fields[text_col], image)))
        except SplitParseError as err:
            if strict:
                raise SplitParseError(f"{path}:{number}: {err}") from None
            out.skipped.append((number, "\t".join(fields), str(err)))
    return out


# The TomBERT release's headers (jefferyYu/TomBERT @31bc79f, absa_data/twitter2015): train.tsv and dev.tsv name
# five columns; test.tsv's header leaves out "#1 Label" although its rows carry the label in the same position.
# TomBERT's own reader (run_multimodal_classifier.py, _create_examples) skips the header and reads by position.
TOMBERT_HEADERS = (("index", "#1 label", "#2 imageid", "#3 string", "#3 string"),
                   ("index", "#1 imageid", "#2 string", "#2 string"))


# How a TomBERT row becomes one text (the ``tombert_text`` prepare setting).
TOMBERT_TEXTS = ("pair", "substituted")


def tombert_text(sentence: str, target: str, how: str) -> str:
    """``pair``: TomBERT's own input (run_multimodal_classifier.py: text_a is the sentence with its ``$T$``
    placeholder, text_b the target), written ``sentence [SEP] target`` so that the tokenizer keeps [SEP] as one token
    and, with special tokens, gives TomBERT's ``[CLS] a [SEP] b [SEP]`` ids. ``substituted``: the target written into
    the sentence and not kept, so the rows of one tweet (one per target, often with different labels) share one
    text."""
    if how == "pair":
        return f"{sentence} [SEP] {target}"
    if how == "substituted":
        return sentence.replace("$T$", target)
    raise ValueError(f"tombert_text={how!r} is not one of {list(TOMBERT_TEXTS)}")


def parse_tombert_tsv(path: Path, *, strict: bool = True, text: str = "pair") -> ParsedList:
    """The TomBERT Twitter-2015 release: rows ``index  label  ImageID  sentence  target`` under one of
    ``TOMBERT_HEADERS``; the sentence holds the ``$T$`` target placeholder. One sample per row, id = ``index``, its
    text made by ``tombert_text`` (AMSS's conversion to its single String column is not published)."""
    header, rows, out = read_table(path, "\t")
    if tuple(h.lower() for h in header) not in TOMBERT_HEADERS:
        raise SplitParseError(f"{path}: header {header} is not a TomBERT one: "
                              f"{' or '.join(repr(h) for h in TOMBERT_HEADERS)} (case-insensitive)")
    for number, fields in rows:
        try:
            if len(fields) != 5:
                raise SplitParseError(f"expected 5 tab-separated fields, got {len(fields)}")
            sid, label, image, sentence, target = (f.strip() for f in fields)
            if "$T$" not in sentence:
                raise SplitParseError("the sentence has no $T$ target placeholder")
            if not sid or not label or not image:
                raise SplitParseError("empty index, label or ImageID")
            out.rows.append(SplitRow(sid, label, number, (tombert_text(sentence, target, text), image)))
        except SplitParseError as err:
            if strict:
                raise SplitParseError(f"{path}:{number}: {err}") from None
            out.skipped.append((number, "\t".join(fields), str(err)))
    return out


def conflicting_rows(samples: Sequence[Sample]) -> int:
    """How many samples share their (text, image) input with a sample of another label: no model can score them all,
    which a reader of the split's accuracy needs to know (Twitter-2015 read target-agnostically)."""
    labels: dict[tuple, set[int]] = {}
    for sample in samples:
        labels.setdefault(sample.row.fields, set()).add(sample.label)
    return sum(len(labels[sample.row.fields]) > 1 for sample in samples)


def tsv_format(path: Path) -> str:
    """``tombert`` (a header whose first column is ``index`` and whose others are TomBERT's ``#<n> Name``) or
    ``amss``, from the header line."""
    lines, _, _ = read_lines(path)
    first = [f.strip() for f in next((line for line in lines if line.strip()), "").split("\t")]
    return "tombert" if first[0].lower() == "index" and all(re.match(r"#\d ", f) for f in first[1:]) else "amss"


# ---------------------------------------------------------------------------------------------------------------------
# Text and images
# ---------------------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def load_tokenizer(name: str, lowercase: bool = True) -> Any:
    """A BERT WordPiece tokenizer from a hub name, a folder holding ``vocab.txt`` or a ``vocab.txt`` file."""
    transformers = require_transformers()
    path = Path(name)
    if path.is_file():
        # The first positional argument is the vocabulary file in transformers 4.x ("vocab_file") and 5.x ("vocab").
        return transformers.BertTokenizer(str(path), do_lower_case=lowercase)
    return transformers.BertTokenizer.from_pretrained(name, do_lower_case=lowercase)


_RETWEET = re.compile(r"^RT[\s]+")
_URL = re.compile(r"https?:\/\/.*[\r\n]*")


def clean_text(text: str) -> str:
    """BalanceBenchmark ``food_dataset.py`` ``clean_text``: drop a leading ``RT``, URLs (to the end) and ``#``."""
    return _URL.sub("", _RETWEET.sub("", text)).replace("#", "")


def token_ids(tokenizer: Any, text: str, max_len: int, special_tokens: bool) -> np.ndarray:
    """int32 ids of length ``max_len``, zero-padded ([PAD] = 0).

    ``special_tokens=False`` is AMSS ``MyDataset.get_tokenized``: ``tokenize`` -> truncate to ``max_len`` ->
    ``convert_tokens_to_ids`` -> zero padding, no [CLS]/[SEP]. ``True`` is BalanceBenchmark's ``tokenizer(sentence,
    padding='max_length', max_length=L, truncation=True)``: [CLS] ... [SEP] within ``max_len``.
    """
    if special_tokens:
        ids = tokenizer(text, padding="max_length", max_length=max_len, truncation=True)["input_ids"]
    else:
        ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)[:max_len])
    out = np.zeros(max_len, dtype=np.int32)
    out[:len(ids)] = ids
    return out


def find_image(raw: Path, folder: str, name: str) -> Path:
    """``<raw>/<folder>/<name>``, also trying image suffixes when ``name`` has none; ``MediaError`` if missing or if
    ``name`` is absolute or climbs out with ``..`` (the cache records media relative to the raw root)."""
    check_inside(raw / folder, name)
    base = raw / folder / name
    candidates = [base] if Path(name).suffix else [base.with_name(base.name + s) for s in IMAGE_SUFFIXES]
    for path in candidates:
        if path.is_file():
            return path
    raise MediaError(candidates[0], MISSING_MEDIA, f"image {name!r} not found under {raw / folder}")


def rotate_nearest(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate (N, C, H, W) about the centre by per-image angles (degrees), nearest neighbour, zero fill, same size:
    torchvision ``RandomRotation``'s defaults (``InterpolationMode.NEAREST``, ``expand=False``, ``fill=0``)."""
    rad = degrees.to(images.device, torch.float32) * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


class ImageAugment:
    """Per-batch image transform of cached uint8 (B, S, S, 3) images into float (B, 3, 1, S, S).

    Train: optional rotation by U(-rotate, rotate) degrees and optional horizontal flip (p = 0.5), both drawn from
    the loader's generator; evaluation draws nothing. Then scaling to [0, 1] and ``(x - mean) / std``.
    """

    def __init__(self, key: str, mean: Sequence[float], std: Sequence[float], rotate_degrees: float = 0.0,
                 flip: bool = False) -> None:
        self.key = key
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.rotate_degrees = rotate_degrees
        self.flip = flip

    def __call__(self, batch: Batch, generator: torch.Generator, train: bool) -> Batch:
        images = batch[self.key].permute(0, 3, 1, 2).float() / 255.0
        n = len(images)
        if train and self.rotate_degrees:
            angles = (torch.rand(n, generator=generator) * 2.0 - 1.0) * self.rotate_degrees
            images = rotate_nearest(images, angles)
        if train and self.flip:
            flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        images = (images - self.mean.to(images.device)) / self.std.to(images.device)
        batch[self.key] = images[:, :, None]
        return batch


def image_text_settings(*, tokenizer_doc: str, max_len: int, max_len_doc: str, special_tokens: bool,
                        special_doc: str, clean: bool, clean_doc: str, image_size: int, image_doc: str
                        ) -> tuple[HParam, ...]:
    """The prepare-time knobs of an image-text dataset, with that dataset's defaults and sources."""
    return (
        HParam("tokenizer", "bert-base-uncased", tokenizer_doc),
        HParam("lowercase", True, "Lower-case before WordPiece (bert-base-uncased; AMSS do_lower_case=True)."),
        HParam("max_len", max_len, max_len_doc),
        HParam("special_tokens", special_tokens, special_doc),
        HParam("clean_text", clean, clean_doc),
        HParam("image_size", image_size, image_doc),
    )


# The AMSS_IT recipe, shared by Twitter-2015 and Sarcasm (each adds its own image folder).
AMSS_RECIPES = {
    "amss": Recipe("AMSS_IT (GitHub njustkmg/TPAMI-AMSS, MyDataset.py/MyHelper.py): bert-base-uncased "
                        "WordPiece without [CLS]/[SEP], 128 tokens; Resize((224, 224))"),
}

AMSS_SETTINGS = image_text_settings(
    tokenizer_doc="BERT WordPiece vocabulary: hub name, folder with vocab.txt, or a vocab.txt file (AMSS: "
                  "BertTokenizer.from_pretrained('bert-base-uncased', do_lower_case=True)).",
    max_len=128, max_len_doc="Tokens kept per text (AMSS train_test_IT.py --max_seq_len default 128).",
    special_tokens=False, special_doc="Add [CLS]/[SEP]; AMSS does not (tokenize -> convert_tokens_to_ids).",
    clean=False, clean_doc="Strip RT/URLs/'#' (BalanceBenchmark's Food-101 cleaning); AMSS does not.",
    image_size=224, image_doc="Stored S x S image: AMSS transforms.Resize((224, 224)) for train and test.",
)


def tombert_text_setting(**absent: Any) -> HParam:
    """The ``tombert_text`` prepare setting of a dataset whose TSVs may be in the TomBERT release format (``absent``:
    ``absent_value`` where caches were built before the setting existed and it does not change them)."""
    return HParam("tombert_text", "pair",
                  "Text of a TomBERT-release row (Twitter-2015's published files): 'pair' = TomBERT's input, the "
                  "sentence with its $T$ placeholder, [SEP], the target (run_multimodal_classifier.py), so each target "
                  "of a tweet is its own input; 'substituted' = the target written into the sentence and dropped, a "
                  "target-agnostic task whose rows of one tweet share one input (on the release, 24% of test rows "
                  "share theirs with a row of another label). AMSS's own conversion is not published; AMSS-format "
                  "files are read as they are.", choices=TOMBERT_TEXTS, **absent)


class ImageTextDataset(PreparedDataset):
    """Image + text samples: arrays ``text`` int32 (L,) and ``visual`` uint8 (S, S, 3); served in the order
    (text, visual), as AMSS's ``JointClsModel.forward(text, img)`` concatenates them.

    Subclasses parse their annotation files into rows ``SplitRow(id, label, line, (text, image_name))`` and say where
    images live (``image_path``).
    """

    MODALITY_NAMES = ("text", "visual")

    @classmethod
    def image_path(cls, raw: Path, sample: Sample, settings: HParams) -> Path:
        raise NotImplementedError

    @classmethod
    def locate(cls, raw: Path, sample: Sample, settings: HParams) -> tuple[dict[str, str], dict[str, Any]]:
        path = cls.image_path(raw, sample, settings)
        return {"visual": path.relative_to(raw).as_posix()}, {"text": sample.row.fields[0]}

    @classmethod
    def arrays(cls, settings: HParams, info: Mapping[str, Any]) -> tuple[ArraySpec, ...]:
        s = settings.image_size
        return ArraySpec("text", "int32", (settings.max_len,)), ArraySpec("visual", "uint8", (s, s, 3))

    @classmethod
    def load(cls, raw: Path, record: Record, settings: HParams) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        text = record.extra["text"]
        if settings.clean_text:
            text = clean_text(text)
        tokenizer = load_tokenizer(settings.tokenizer, settings.lowercase)
        size = (settings.image_size, settings.image_size)
        return {"text": token_ids(tokenizer, text, settings.max_len, settings.special_tokens),
                "visual": load_image(raw / record.media["visual"], size)}, {}

    @classmethod
    def augment(cls, hp: HParams) -> ImageAugment:
        return ImageAugment("visual", hp.mean, hp.std)

    @classmethod
    def serve(cls, cache: Cache, hp: HParams) -> tuple[TaskSpec, Gather, Augment]:
        text, images = cache.arrays["text"], cache.arrays["visual"]
        size = images.shape[1]
        task = TaskSpec(cls.NAME, len(cache.classes),
                        (ModalitySpec("text", "tokens", (text.shape[1],)),
                         ModalitySpec("visual", "frames", (3, 1, size, size))), cache.classes)

        def gather(rows: np.ndarray) -> dict[str, torch.Tensor]:
            return {"text": torch.from_numpy(np.ascontiguousarray(text[rows]).astype(np.int64)),
                    "visual": torch.from_numpy(np.ascontiguousarray(images[rows]))}

        return task, gather, cls.augment(hp)


class TsvImageTextDataset(ImageTextDataset):
    """Image-text datasets in AMSS's layout (``AMSS_IT/MyHelper.py``)::

        annotations/train.tsv, annotations/test.tsv    Label, String, ImageID (tab-separated, header line)
        annotations/dev.tsv                             optional published validation list (TomBERT releases)
        <IMAGE_DIR>/<ImageID>                           images

    Each TSV may instead be in the TomBERT release format (``parse_tombert_tsv``), detected from its header. Labels
    are class indices. With ``dev.tsv`` that list is the validation split; otherwise a seeded hold-out of train by
    whole images (every row of one ImageID on one side) is used and recorded (AMSS reads only train and test).
    """

    # ids are each TSV's own index column or line number: id 0 of train.tsv and id 0 of test.tsv are two rows
    IDS_NAME_SAMPLES = False

    SPLITS_IN_RAW = "annotations"
    SPLIT_FILES = ("train.tsv", "test.tsv")
    OPTIONAL_SPLIT_FILES = ("dev.tsv",)

    @classmethod
    def read_splits(cls, files: Mapping[str, Path], raw: Path, opts: PrepareOptions, settings: HParams
                    ) -> SplitTables:
        tables = SplitTables(cls.CLASSES)
        formats, skipped = {}, {}
        for split, name in (("train", "train.tsv"), ("val", "dev.tsv"), ("test", "test.tsv")):
            if name not in files:
                continue
            formats[name] = tsv_format(files[name])
            parsed = (parse_tombert_tsv(files[name], strict=False, text=settings.tombert_text)
                      if formats[name] == "tombert" else parse_amss_tsv(files[name], strict=False))
            tables.dropped += malformed_rows(parsed, split)
            tables.add(parsed, split, label_name=indexed_label(cls.CLASSES), duplicates=opts.duplicates)
            skipped[name] = dict(Counter(reason for _, _, reason in parsed.skipped))
        if "val" in tables.splits:
            tables.val_source = "published dev.tsv"
        # One tweet is one row per target in Twitter-2015, all sharing its text and image: held out by rows, a tweet
        # would sit on both sides, and validation would reward memorising it.
        tables.val_group = (lambda sample: sample.row.fields[1], "images")
        tables.info = {"label_map_source": "declared CLASSES; the files hold class indices", "formats": formats,
                       "skipped_lines": skipped, "rows_sharing_input_with_another_label": {
                           split: conflicting_rows(samples) for split, samples in tables.splits.items()}}
        return tables

    @classmethod
    def image_path(cls, raw: Path, sample: Sample, settings: HParams) -> Path:
        return find_image(raw, settings.image_dir, sample.row.fields[1])
