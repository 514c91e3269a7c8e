"""Serving-time augmentation (``datasets.augment``): guards and rules the cache and serving tests leave unpinned."""

from __future__ import annotations

import pytest
import torch

from datasets.augment import FRAME_RULES, frame_offsets


@pytest.mark.parametrize("rule", FRAME_RULES)
@pytest.mark.parametrize("train", [False, True])
def test_a_clip_with_no_frames_is_an_error_for_every_rule(rule, train):
    # Without the check, offset -1 would read the previous clip's last frame from the shared cache array.
    counts = torch.tensor([4, 0, 5])
    with pytest.raises(ValueError, match="no frames"):
        frame_offsets(counts, 3, rule, train, torch.Generator().manual_seed(0))


# segments_ks on 9 frames: segments of 3, so its cap at the 9th frame never binds.
@pytest.mark.parametrize(("rule", "frames"), [("segments", 12), ("segments_ks", 9)])
def test_training_draws_every_frame_of_a_segment_equally_often(rule, frames):
    # The published loaders draw randint over a segment's frames: uniform, the first and last frame included.
    seg = frames // 3
    g = torch.Generator().manual_seed(0)
    drawn = torch.cat([frame_offsets(torch.tensor([frames] * 100), 3, rule, True, g) for _ in range(40)])
    for i in range(3):
        share = torch.bincount(drawn[:, i] - seg * i, minlength=seg).double() / len(drawn)
        assert share.tolist() == pytest.approx([1 / seg] * seg, abs=0.03)
