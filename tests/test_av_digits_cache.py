"""The av_digits entry is CREMA-D's, with the demo's documented defaults (docs/datasets/av_digits.md)."""

from __future__ import annotations

from datasets.av_digits_cache import AVDigits
from datasets.cremad import CremaD
from datasets.registry import get_dataset


def test_av_digits_is_cremad_served_with_the_demos_defaults():
    assert get_dataset("av_digits") is AVDigits and issubclass(AVDigits, CremaD)
    defaults = {h.name: h.default for h in AVDigits.HPARAMS}
    # the 3 s ogm recipe and 64x64 frames keep the CPU demo fast; every frame of a clip shows the same digit
    assert AVDigits.DEFAULT_RECIPE == defaults["recipe"] == "ogm"
    assert (defaults["image_size"], defaults["frames"], defaults["frame_rule"]) == (64, 1, "segments")
    # the clips' native 120x160 frames, split files in the tree's own annotations/ folder
    assert AVDigits.FRAME_SIZE == (120, 160) and AVDigits.SPLITS_IN_RAW == "annotations"
    # stat.csv order by default: label == digit in the 6-class mode (NEU..ANG), and the 10-class mode works too
    assert AVDigits.LABEL_ORDERS[0] == "stat" and set(AVDigits.LABEL_ORDERS) == set(CremaD.LABEL_ORDERS)
