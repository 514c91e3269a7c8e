"""``food101``: UPMC Food-101 (text + image, 101 classes; docs/datasets/food101.md), as BalanceBenchmark reads it.

Raw layout (GitHub: GeWu-Lab/BalanceBenchmark, ``balancemm/datasets/food_dataset.py``)::

    texts/train_titles.csv, texts/test_titles.csv   image name, title text, class (a header line is optional)
    images/{train,test}/<class>/<image name>

Label map: ``CLASSES``, the 101 class names sorted with Python's ``sorted`` (BalanceBenchmark sorts the image
sub-folder names, so ``cheese_plate`` precedes ``cheesecake``) [R: the names are the Food-101 class list]. It never
depends on which folders exist: a missing folder would shift every index in BalanceBenchmark. ``--label-order csv``
instead uses the sorted distinct classes of the two CSV files (for subsets). Validation: BalanceBenchmark has none
(``validation: false``), so a stratified, seeded hold-out of train is used and recorded.

Recipe ``bb``: texts cleaned as BalanceBenchmark (``RT``, URLs, ``#`` removed), tokenised with BERT WordPiece with
[CLS]/[SEP] to 40 tokens (``padding='max_length', max_length=40, truncation=True``); images ``Resize((224, 224))``
stored once. Training adds ``RandomRotation(30)`` and a horizontal flip per batch, ImageNet normalisation as
published. Deviation: the rotation is applied to the stored 224 x 224 image, BalanceBenchmark rotates the original
before resizing (nearest-neighbour either way).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from core.hparams import HParam, HParams
from datasets.image_text import ImageAugment, ImageTextDataset, find_image, image_text_settings
from datasets.prepared import Recipe, cache_hparams
from datasets.registry import register_dataset
from datasets.splits import ParsedList, SplitRow, csv_line_fields, read_lines
from datasets.tables import PrepareOptions, Sample, SplitTables, malformed_rows

CLASSES = (
    "apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare", "beet_salad", "beignets", "bibimbap",
    "bread_pudding", "breakfast_burrito", "bruschetta", "caesar_salad", "cannoli", "caprese_salad", "carrot_cake",
    "ceviche", "cheese_plate", "cheesecake", "chicken_curry", "chicken_quesadilla", "chicken_wings", "chocolate_cake",
    "chocolate_mousse", "churros", "clam_chowder", "club_sandwich", "crab_cakes", "creme_brulee", "croque_madame",
    "cup_cakes", "deviled_eggs", "donuts", "dumplings", "edamame", "eggs_benedict", "escargots", "falafel",
    "filet_mignon", "fish_and_chips", "foie_gras", "french_fries", "french_onion_soup", "french_toast",
    "fried_calamari", "fried_rice", "frozen_yogurt", "garlic_bread", "gnocchi", "greek_salad",
    "grilled_cheese_sandwich", "grilled_salmon", "guacamole", "gyoza", "hamburger", "hot_and_sour_soup", "hot_dog",
    "huevos_rancheros", "hummus", "ice_cream", "lasagna", "lobster_bisque", "lobster_roll_sandwich",
    "macaroni_and_cheese", "macarons", "miso_soup", "mussels", "nachos", "omelette", "onion_rings", "oysters",
    "pad_thai", "paella", "pancakes", "panna_cotta", "peking_duck", "pho", "pizza", "pork_chop", "poutine", "prime_rib",
    "pulled_pork_sandwich", "ramen", "ravioli", "red_velvet_cake", "risotto", "samosa", "sashimi", "scallops",
    "seaweed_salad", "shrimp_and_grits", "spaghetti_bolognese", "spaghetti_carbonara", "spring_rolls", "steak",
    "strawberry_shortcake", "sushi", "tacos", "takoyaki", "tiramisu", "tuna_tartare", "waffles",
)

IMAGE_COLUMNS = ("image_path", "image_name", "image", "img")
TEXT_COLUMNS = ("text", "title", "titles")
LABEL_COLUMNS = ("label", "class", "category")

RECIPES = {
    "bb": Recipe("BalanceBenchmark food_dataset.py: clean_text, BERT WordPiece with [CLS]/[SEP] to 40 tokens; "
                      "Resize((224, 224))"),
}


def parse_titles_csv(path: Path) -> tuple[ParsedList, int]:
    """``texts/<phase>_titles.csv``: ``image name, title, class`` per row, quoted as CSV, header optional.

    A first non-blank row (pandas skips blank lines before the header) whose fields name the columns
    (BalanceBenchmark's ``Image_path,text,label``) is a header and maps them by name; otherwise the order is (image,
    text, class). A row with more fields than the header (3 without one) has unquoted commas in its title: the fields
    before the title column are read from the start, those after it from the end, and the surplus is rejoined into
    the title with commas. A row with fewer fields than that is counted in ``skipped``. Rows are ``SplitRow(image
    name, class, line, (title, image name))``; the count of rejoined rows comes with them.
    """
    lines, bom, endings = read_lines(path)
    out = ParsedList(Path(path), bom=bom, line_endings=endings)
    order, width, expected = (0, 1, 2), 3, "'image,title,class'"
    rejoined = 0
    first_row = True
    for number, text_line in enumerate(lines, start=1):
        if not text_line.strip():
            out.skipped.append((number, text_line, "blank line"))
            continue
        may_be_header, first_row = first_row, False
        fields = csv_line_fields(text_line)
        if fields is None:
            out.skipped.append((number, text_line, "a quote opens and never closes on this line"))
            continue
        lowered = [f.strip().lower() for f in fields]
        if may_be_header and any(c in lowered for c in IMAGE_COLUMNS) and any(c in lowered for c in LABEL_COLUMNS):
            found = [next((lowered.index(c) for c in names if c in lowered), None)
                     for names in (IMAGE_COLUMNS, TEXT_COLUMNS, LABEL_COLUMNS)]
            if None in found:
                out.skipped.append((number, text_line, f"header {fields} lacks an image, text or label column"))
                continue
            order, width, expected = tuple(found), len(fields), repr(",".join(f.strip() for f in fields))
            out.skipped.append((number, text_line, "header"))
            continue
        if len(fields) < width:
            out.skipped.append((number, text_line, f"expected {expected}, got {len(fields)} field(s)"))
            continue
        if len(fields) > width:
            title, extra = order[1], len(fields) - width
            fields = [*fields[:title], ",".join(fields[title:title + extra + 1]), *fields[title + extra + 1:]]
            rejoined += 1
        image, title, label = (fields[i].strip() for i in order)
        if not image or not label:
            out.skipped.append((number, text_line, "empty image name or class"))
            continue
        out.rows.append(SplitRow(image, label, number, (title, image)))
    return out, rejoined


@register_dataset
class Food101(ImageTextDataset):
    NAME = "food101"
    DESCRIPTION = "UPMC Food-101: BERT token ids + image, from `augbench prepare` (BalanceBenchmark layout)"
    CLASSES = CLASSES
    RECIPES = RECIPES
    DEFAULT_RECIPE = "bb"
    SPLITS_IN_RAW = "texts"
    SPLIT_FILES = ("train_titles.csv", "test_titles.csv")
    LABEL_ORDERS = ("declared", "csv")
    SETTINGS = image_text_settings(
        tokenizer_doc="BERT WordPiece vocabulary: hub name, folder with vocab.txt, or a vocab.txt file "
                      "(BalanceBenchmark: BertTokenizer.from_pretrained(<bert-base-uncased folder>)).",
        max_len=40, max_len_doc="Tokens per title including [CLS]/[SEP] (BalanceBenchmark max_length=40).",
        special_tokens=True, special_doc="Add [CLS]/[SEP] (BalanceBenchmark calls the tokenizer directly).",
        clean=True, clean_doc="BalanceBenchmark clean_text: drop a leading 'RT', URLs and '#'.",
        image_size=224, image_doc="Stored S x S image: BalanceBenchmark Resize((224, 224)).",
    ) + (HParam("image_dir", "images", "Image root under the raw root: <image_dir>/<phase>/<class>/<name>."),)
    HPARAMS = cache_hparams(recipes=tuple(RECIPES), recipe="bb",
                            recipe_doc="Prepared preset: 'bb' (BalanceBenchmark tokenisation and image size).") \
        + (HParam("mean", [0.485, 0.456, 0.406], "ImageNet mean (BalanceBenchmark food_dataset.py)."),
           HParam("std", [0.229, 0.224, 0.225], "ImageNet std (BalanceBenchmark food_dataset.py)."),
           HParam("rotate_degrees", 30.0, "Training RandomRotation range in degrees (BalanceBenchmark: 30); 0 = off."),
           HParam("flip", True, "Training RandomHorizontalFlip (BalanceBenchmark)."))

    @classmethod
    def read_splits(cls, files: Mapping[str, Path], raw: Path, opts: PrepareOptions, settings: HParams
                    ) -> SplitTables:
        read = {split: parse_titles_csv(files[f"{split}_titles.csv"]) for split in ("train", "test")}
        parsed = {split: p for split, (p, _) in read.items()}
        if opts.label_order == "csv":
            classes = tuple(sorted({r.label for p in parsed.values() for r in p.rows}))
            source = "sorted distinct classes of train_titles.csv and test_titles.csv"
        else:
            classes = cls.CLASSES
            source = "declared CLASSES (sorted Food-101 class names, as BalanceBenchmark's sorted folder names)"
        tables = SplitTables(classes)
        for split, p in parsed.items():
            tables.dropped += malformed_rows(p, split)
            tables.add(p, split, label_name=lambda r: r.label, duplicates=opts.duplicates)
        tables.info = {"label_map_source": source, "num_classes": len(classes),
                       "rows_with_rejoined_commas": {s: n for s, (_, n) in read.items()},
                       "skipped_lines": {s: dict(Counter(reason for _, _, reason in p.skipped))
                                         for s, p in parsed.items()}}
        return tables

    @classmethod
    def image_path(cls, raw: Path, sample: Sample, settings: HParams) -> Path:
        return find_image(raw, f"{settings.image_dir}/{sample.split}/{sample.label_name}", sample.row.fields[1])

    @classmethod
    def augment(cls, hp: HParams) -> ImageAugment:
        return ImageAugment("visual", hp.mean, hp.std, rotate_degrees=hp.rotate_degrees, flip=hp.flip)

    @classmethod
    def deviations(cls, settings: HParams) -> list[Any]:
        return ["training RandomRotation is applied to the stored Resize((224, 224)) image; BalanceBenchmark rotates "
                "the original image before resizing"]
