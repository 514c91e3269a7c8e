"""``twitter2015``: Twitter-2015 target-oriented sentiment (text + image, 3 classes; docs/datasets/image-text.md).

Raw layout, as AMSS reads it (GitHub: njustkmg/TPAMI-AMSS, ``AMSS_IT/MyHelper.py``, the data preparation AUG's
README points to)::

    annotations/train.tsv, annotations/test.tsv   Label, String, ImageID (AMSS's reformatted lists), or the TomBERT
                                                  release files (header ``index  #1 Label  #2 ImageID  #3 String
                                                  #3 String``), detected per file
    annotations/dev.tsv                           optional: the TomBERT dev list, used as the validation split
    twitter2015_images/<ImageID>

Split sizes as published: 3,179 / 1,122 / 1,037 [R]. AMSS reads only train and test, so without ``dev.tsv`` the
validation split is a seeded hold-out of train by whole images (a tweet's rows, one per target, share its image),
recorded in the manifest. TomBERT rows are converted as documented in ``datasets.image_text.parse_tombert_tsv``
(AMSS's own conversion is unpublished).

Recipe ``amss`` (the only one): ``bert-base-uncased`` WordPiece, lower-cased, truncated to 128 tokens, zero-padded,
**no [CLS]/[SEP]** (AMSS ``MyDataset.get_tokenized``, ``--max_seq_len`` 128); images PIL ``Resize((224, 224))``,
stored as is, because AMSS uses the same transform for train and test (no augmentation), normalised with AMSS's
Twitter-15 statistics. Labels are class indices; AMSS serves them one-hot, we serve integers.
"""

from __future__ import annotations

from core.hparams import HParam
from datasets.image_text import AMSS_RECIPES, AMSS_SETTINGS, TsvImageTextDataset, tombert_text_setting
from datasets.prepared import cache_hparams
from datasets.registry import register_dataset

RECIPES = AMSS_RECIPES

SETTINGS = AMSS_SETTINGS + (HParam("image_dir", "twitter2015_images",
                                          "Image folder under the raw root (AMSS MyHelper.py)."),
                            tombert_text_setting())


@register_dataset
class Twitter2015(TsvImageTextDataset):
    NAME = "twitter2015"
    DESCRIPTION = "Twitter-2015 sentiment: BERT token ids + image, from `augbench prepare` (AMSS/TomBERT TSVs)"
    CLASSES = ("negative", "neutral", "positive")  # [R] TomBERT label ids 0 / 1 / 2
    RECIPES = RECIPES
    DEFAULT_RECIPE = "amss"
    SETTINGS = SETTINGS
    HPARAMS = cache_hparams(recipes=tuple(RECIPES), recipe="amss",
                            recipe_doc="Prepared preset: 'amss' (AMSS tokenisation and image size).") + (
        HParam("mean", [0.42455, 0.44051, 0.47076], "Image normalisation mean (AMSS MyHelper.py, Twitter15)."),
        HParam("std", [0.24485, 0.24617, 0.25451], "Image normalisation std (AMSS MyHelper.py, Twitter15)."),
    )
