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
