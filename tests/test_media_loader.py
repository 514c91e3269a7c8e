"""The per-sample reference loader picks frames from the sorted listing by the cache loader's rule and applies the
published transforms."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import media_loader
from datasets.augment import frame_offsets
from datasets.media_loader import MediaDataset, MediaItem, items_from_cache

COUNT = 12
MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


@pytest.fixture
def clip(tmp_path, monkeypatch):
    """A clip of 12 grey frames frame_1.png .. frame_12.png, frame k at grey level 20 * k (a name sort puts frame_10
    after frame_1), and stand-in audio features."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(1, COUNT + 1):
        Image.fromarray(np.full((8, 8, 3), 20 * k, np.uint8)).save(folder / f"frame_{k}.png")
    monkeypatch.setattr(media_loader, "features_from_file",
                        lambda pipeline, path: (np.zeros((3, 5), np.float32), 1.0, False))
    return MediaItem(7, 2, tmp_path / "a.wav", folder, "frames")


def served_frames(item, **kw) -> list[int]:
    """The 1-based frame numbers a MediaDataset item shows, read back from the grey levels through the normalisation."""
    media = MediaDataset([item], SimpleNamespace(serve_frames=0), num_frames=3, image_size=4, **kw)
    visual = media[0]["visual"]  # (3, T, S, S)
    grey = visual * STD[:, None, None, None] + MEAN[:, None, None, None]
    levels = grey.mean(dim=(2, 3)) * 255 / 20  # (3, T), every channel the same level
    torch.testing.assert_close(levels, levels[:1].expand(3, -1), atol=1e-3, rtol=0)
    torch.testing.assert_close(levels, levels.round(), atol=1e-3, rtol=0)
    return levels[0].round().int().tolist()


def test_evaluation_frames_are_the_middle_of_each_segment_of_the_naturally_sorted_listing(clip):
    # segments: 12 frames in 3 segments of 4, the middle (offset 4 // 2 = 2) of each: 0-based 2, 6, 10
    assert served_frames(clip, train=False) == [3, 7, 11]
    assert served_frames(clip, train=False, frame_rule="first_k") == [1, 2, 3]


def test_training_frames_are_the_cache_loaders_draw_from_the_datasets_seed(clip):
    for seed in (0, 3):
        expected = frame_offsets(torch.tensor([COUNT]), 3, "segments", True, torch.Generator().manual_seed(seed))
        assert served_frames(clip, train=True, seed=seed) == (expected[0] + 1).tolist()
    assert served_frames(clip, train=True, seed=0) != served_frames(clip, train=True, seed=3)


@pytest.mark.parametrize("crop_per", ["frame", "clip"])
def test_training_views_are_flipped_half_the_time(tmp_path, monkeypatch, crop_per):
    # A frame black on its left half: RandomResizedCrop at scale (1, 1) keeps the whole square frame, so only the
    # horizontal flip moves the black half.
    pixels = np.full((8, 8, 3), 255, np.uint8)
    pixels[:, :4] = 0
    monkeypatch.setattr(media_loader, "features_from_file",
                        lambda pipeline, path: (np.zeros((3, 5), np.float32), 1.0, False))
    monkeypatch.setattr(MediaDataset, "_frames", lambda self, item: [Image.fromarray(pixels)] * self.num_frames)
    media = MediaDataset([MediaItem(0, 0, Path("a.wav"), Path("v"), "frames")], SimpleNamespace(serve_frames=0),
                         num_frames=2, image_size=8, train=True, crop_scale=(1.0, 1.0), crop_per=crop_per)
    torch.manual_seed(0)
    flipped = [bool(media[0]["visual"][0, 0, 0, 0] > 0) for _ in range(40)]
    assert 8 <= sum(flipped) <= 32


def test_an_unknown_evaluation_view_is_refused():
    with pytest.raises(ValueError, match=r"data\.eval_view='center' is not one of"):
        MediaDataset([], None, num_frames=1, image_size=4, train=False, eval_view="center")


def test_items_are_found_under_the_raw_root_asked_or_else_the_manifests():
    cache = SimpleNamespace(manifest={"raw_root": "/built/raw", "visual": {"source": "video"}},
                            index={"label": np.array([0, 3, 1]), "audio_path": np.array(["a0.wav", "a1.wav", "a2.wav"]),
                                   "visual_path": np.array(["v0.mp4", "v1.mp4", "v2.mp4"])})
    assert items_from_cache(cache, np.array([2, 1])) == [
        MediaItem(2, 1, Path("/built/raw/a2.wav"), Path("/built/raw/v2.mp4"), "video"),
        MediaItem(1, 3, Path("/built/raw/a1.wav"), Path("/built/raw/v1.mp4"), "video")]
    assert items_from_cache(cache, np.array([0]), Path("/moved")) == [
        MediaItem(0, 0, Path("/moved/a0.wav"), Path("/moved/v0.mp4"), "video")]
