"""``sarcasm``: multimodal sarcasm detection (text + image, 2 classes; docs/datasets/image-text.md).

Data: Cai et al. 2019 (linked from AUG's README as GitHub feiLinX/Multi-modal-Sarcasm-Detection), in the layout AMSS
reads (GitHub: njustkmg/TPAMI-AMSS, ``AMSS_IT/MyHelper.py``)::

    annotations/train.tsv, annotations/test.tsv   Label, String, ImageID
    annotations/dev.tsv                           optional validation list
    images/<ImageID>

Split sizes as published: 19,816 / 2,410 / 2,409 [R]; AMSS reads only train and test, so without ``dev.tsv`` the
validation split is a seeded hold-out of train by whole images. The original release's Python-literal ``.txt`` lists are
not read: convert them to the TSV layout first. Recipe ``amss`` as for Twitter-2015 (128 WordPiece tokens without
[CLS]/[SEP], ``Resize((224, 224))``, no augmentation); normalisation uses AMSS's fall-through statistics, which
``MyHelper.py`` applies to every dataset it does not name (Sarcasm included).
"""

from __future__ import annotations

from core.hparams import HParam
from datasets.image_text import AMSS_RECIPES, AMSS_SETTINGS, TsvImageTextDataset, tombert_text_setting
from datasets.prepared import cache_hparams
from datasets.registry import register_dataset

RECIPES = AMSS_RECIPES

SETTINGS = AMSS_SETTINGS + (HParam("image_dir", "images",
                                          "Image folder under the raw root (AMSS MyHelper.py: 'images' for Sarcasm)."),
                            # Sarcasm has no TomBERT release: its caches, all from AMSS TSVs, keep their names.
                            tombert_text_setting(absent_value="pair"))


@register_dataset
class Sarcasm(TsvImageTextDataset):
    NAME = "sarcasm"
    DESCRIPTION = "Multimodal sarcasm detection: BERT token ids + image, from `augbench prepare` (AMSS TSVs)"
    CLASSES = ("not_sarcastic", "sarcastic")  # [R] label 0 / 1 of the Cai et al. release
    RECIPES = RECIPES
    DEFAULT_RECIPE = "amss"
    SETTINGS = SETTINGS
    HPARAMS = cache_hparams(recipes=tuple(RECIPES), recipe="amss",
                            recipe_doc="Prepared preset: 'amss' (AMSS tokenisation and image size).") + (
        HParam("mean", [0.48456249428840364, 0.4988762843596956, 0.530657871261656],
               "Image normalisation mean (AMSS MyHelper.py default branch, used for Sarcasm)."),
        HParam("std", [0.24398715912049204, 0.24868027118814742, 0.2573621194247526],
               "Image normalisation std (AMSS MyHelper.py default branch, used for Sarcasm)."),
    )
