"""``av_digits``: the offline AV-Digits demo (docs/datasets/av_digits.md) served through the unchanged CREMA-D path.

``datasets.av_digits`` generates the raw tree in CREMA-D's exact layout; this entry is ``CremaD`` with another name,
split files read from the tree's own ``annotations/`` folder, frames stored at the clips' native 120x160, and
defaults sized for tiny encoders on a CPU (the 3 s ``ogm`` recipe, 64x64 served frames). The label map
defaults to ``stat.csv`` order, so both the 6-class mode (codes NEU..ANG, label == digit) and the 10-class mode
(ZER..NIN) work without options::

    python -m datasets.av_digits --out data --preset small
    augbench prepare av_digits --raw data/AV-Digits --out cache
    augbench train --method joint --dataset av_digits --set data.cache_dir=cache
"""

from __future__ import annotations

from datasets.audio_visual import av_hparams
from datasets.cremad import RECIPES, CremaD
from datasets.registry import register_dataset


@register_dataset
class AVDigits(CremaD):
    NAME = "av_digits"
    DESCRIPTION = "AV-Digits: offline spoken + handwritten digits in CREMA-D's layout (the demo; generate it first)"
    SPLITS_IN_RAW = "annotations"
    FRAME_SIZE = (120, 160)
    DEFAULT_RECIPE = "ogm"
    LABEL_ORDERS = ("stat", "ogm", "sorted")
    HPARAMS = av_hparams(
        recipes=tuple(RECIPES), recipe="ogm",
        recipe_doc="Audio front-end recipe; 'ogm' (3 s -> 257x188) keeps the CPU demo fast, 'aug' is AUG's 20 s.",
        frames=1, frames_doc="T frames per clip; every AV-Digits frame of a clip shows the same digit "
                             "(docs/datasets/av_digits.md#content), so T does not change the imbalance.",
        image_size=64)
