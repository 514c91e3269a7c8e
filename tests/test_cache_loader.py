"""Serving a prepared cache: every sample once in evaluation, no media touched, deterministic per-batch randomness,
frame rules, RandomResizedCrop parameterisation, agreement with the per-sample media loader, the data benchmark."""

from __future__ import annotations

import builtins
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.bench_data import benchmark_data
from benchmarks.config import build_config
from benchmarks.runner import train_run
from core.hparams import resolve
from datasets.audio_visual import audio_pipeline
from datasets.augment import IMAGENET_MEAN, IMAGENET_STD, AVAugment, crop_boxes, frame_offsets, resize, resized_crop
from datasets.cache import CacheError, first_per_class, open_cache
from datasets.cremad import CremaD
from datasets.media_loader import MediaDataset, items_from_cache
from datasets.prepare import prepare
from datasets.tables import PrepareOptions
from tests.conftest import TINY_MODEL
from tests.media_fixtures import make_cremad, second_level
from tests.numeric import approx64

SIZE = 16


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    tree = make_cremad(tmp_path_factory.mktemp("cremad") / "raw", seconds=(1.3, 2.5, 3.2, 4.1))
    opts = PrepareOptions(recipe="ogm", splits_dir=tree.splits_dir, frame_size=(24, 32), shard_size=8)
    return prepare(CremaD, tree.root, tmp_path_factory.mktemp("cache"), opts, log=lambda s: None)


def bundle(cache_path, **data):
    hp = resolve("data", CremaD.HPARAMS, "cremad", {"cache": str(cache_path), "image_size": SIZE, **data})
    return CremaD.build(hp)


def reds(visual: torch.Tensor) -> torch.Tensor:
    """Mean red level (0-255) of each served frame, undoing the ImageNet normalisation: (B, T)."""
    red = visual[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    return red.mean(dim=(-1, -2)) * 255


def test_task_and_batch_format(cache_path):
    data = bundle(cache_path, frames=2)
    assert data.task.modality("audio").shape == (1, 257, 188)
    assert data.task.modality("visual").shape == (3, 2, SIZE, SIZE)
    assert data.task.class_names == ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
    batch = next(iter(data.loader("train", batch_size=4, train=True, seed=0)))
    assert set(batch) == {"audio", "visual", "label", "index"}
    assert batch["audio"].dtype == batch["visual"].dtype == torch.float32 and batch["label"].dtype == torch.int64
    assert batch["visual"].shape == (4, 3, 2, SIZE, SIZE) and batch["audio"].shape == (4, 1, 257, 188)


@pytest.mark.parametrize("batch_size", [1, 4, 7, 1000])
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_evaluation_visits_every_sample_exactly_once(cache_path, split, batch_size):
    data = bundle(cache_path)
    seen = torch.cat([b["index"] for b in data.loader(split, batch_size=batch_size, train=False, seed=0)])
    assert sorted(seen.tolist()) == sorted(data.splits[split].tolist())


def test_clean_and_full_training_splits(cache_path):
    clean, full = bundle(cache_path), bundle(cache_path, train_split="full")
    assert (len(clean.splits["train"]), len(clean.splits["val"]), len(clean.splits["test"])) == (6, 6, 6)
    assert len(full.splits["train"]) == 12 and "val" not in full.splits, "val.csv is part of the full train list"
    assert not set(clean.splits["train"].tolist()) & set(clean.splits["val"].tolist())


def test_first_per_class_keeps_each_class_first_rows_in_their_order():
    labels = np.array([2, 0, 2, 1, 0, 2, 0, 1])
    rows = np.array([7, 6, 5, 4, 3, 2, 1, 0])  # classes 1, 0, 2, 0, 1, 2, 0, 2
    assert first_per_class(rows, labels, 1).tolist() == [7, 6, 5]
    assert first_per_class(rows, labels, 2).tolist() == [7, 6, 5, 4, 3, 2]
    assert first_per_class(rows, labels, 10).tolist() == rows.tolist()
    assert first_per_class(rows[:0], labels, 2).tolist() == []


def test_subset_serves_at_most_n_samples_per_class_of_every_split(cache_path):
    whole, smoke = bundle(cache_path, train_split="full"), bundle(cache_path, train_split="full", subset=1)
    assert set(smoke.splits) == set(whole.splits)
    for name, rows in whole.splits.items():
        classes = whole.labels[rows]
        # the first row of each class in the split's order, nothing else
        expected = [int(row) for i, row in enumerate(rows) if classes[i] not in classes[:i]]
        assert smoke.splits[name].tolist() == expected, name
    assert len(smoke.splits["train"]) < len(whole.splits["train"]), "the full train list has classes of 2 samples"
    assert smoke.info["subset"] == {"per_class": 1, "served": {k: len(v) for k, v in smoke.splits.items()}}
    assert "subset" not in whole.info
    with pytest.raises(ValueError, match="subset"):
        bundle(cache_path, subset=-1)


def test_a_run_on_a_subset_says_so_in_its_summary(cache_path, tmp_path):
    # The summary holds the run's numbers (and goes to W&B as the run's summary): it says they come from a subset.
    overrides = {"model": dict(TINY_MODEL), "data": {"cache": str(cache_path), "image_size": SIZE, "subset": 1},
                 "train": {"epochs": 1, "batch_size": 4, "eval_batch_size": 8, "max_steps_per_epoch": 1}}
    summary = train_run(build_config("joint", "cremad", overrides), tmp_path / "smoke", log=lambda line: None)
    served = {name: len(rows) for name, rows in bundle(cache_path, subset=1).splits.items()}
    assert summary["subset"] == {"per_class": 1, "served": served}
    assert json.loads((tmp_path / "smoke" / "summary.json").read_text())["subset"] == summary["subset"]
    overrides["data"]["subset"] = 0
    assert "subset" not in train_run(build_config("joint", "cremad", overrides), tmp_path / "full",
                                     log=lambda line: None)


def test_an_epoch_touches_no_media_file(cache_path, monkeypatch):
    import av
    import soundfile
    from PIL import Image

    data = bundle(cache_path, frames=2)

    def forbidden(*args, **kwargs):
        raise AssertionError(f"media access during an epoch: {args[:1]}")

    for target, name in ((builtins, "open"), (os, "listdir"), (os, "scandir"), (av, "open"), (soundfile, "read"),
                         (Image, "open")):
        monkeypatch.setattr(target, name, forbidden)
    n = sum(len(b["label"]) for b in data.loader("train", batch_size=4, train=True, seed=0))
    n += sum(len(b["label"]) for b in data.loader("test", batch_size=4, train=False, seed=0))
    assert n == 12


def test_randomness_is_per_epoch_and_evaluation_is_deterministic(cache_path):
    data = bundle(cache_path, frames=2)
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())

    def epoch(train: bool, number: int) -> list[torch.Tensor]:
        loader = data.loader("train", batch_size=3, train=train, seed=5)
        loader.set_epoch(number)
        return [b["visual"] for b in loader]

    assert all(torch.equal(a, b) for a, b in zip(epoch(True, 0), epoch(True, 0)))
    assert not all(torch.equal(a, b) for a, b in zip(epoch(True, 0), epoch(True, 1)))
    assert all(torch.equal(a, b) for a, b in zip(epoch(False, 0), epoch(False, 7)))
    assert states[0] == random.getstate() and np.array_equal(states[1], np.random.get_state()[1])
    assert torch.equal(states[2], torch.get_rng_state()), "loading never touches the global generators"


def test_evaluation_takes_the_middle_frame_of_each_segment(cache_path):
    data = bundle(cache_path, frames=1)
    cache = open_cache(cache_path)
    for batch in data.loader("test", batch_size=8, train=False, seed=0):
        counts = cache.index["frame_count"][batch["index"].numpy()]
        expected = [second_level(n // 2) for n in counts]
        np.testing.assert_allclose(reds(batch["visual"])[:, 0], expected, atol=5)
    first = bundle(cache_path, frames=2, frame_rule="first_k")
    batch = next(iter(first.loader("test", batch_size=8, train=False, seed=0)))
    np.testing.assert_allclose(reds(batch["visual"]), [[second_level(0), second_level(1)]] * len(batch["label"]),
                               atol=5)


def published_segment_frames(n: int, t: int, rule: str, train: bool) -> list[set[int]]:
    """The 0-based frames each of the T picks can read, written as the published loops (clamped to the clip).

    segments: GeWu-Lab/BalanceBenchmark balancemm/datasets/cremad_dataset.py, ``seg = int(n / T)``, train
    ``i*seg + randint(seg)``, test ``i*seg + seg//2``. segments_ks: its KS_dataset.py (1-based frame_0000{t}.jpg),
    train ``randint(i*seg + 1, i*seg + seg)`` capped at 9, test ``i*seg + max(int(seg/2), 1)``, both 1 when n <= 6.
    """
    seg = max(int(n / t), 1)
    picks = []
    for i in range(t):
        if rule == "segments":
            frames = set(range(i * seg, i * seg + seg)) if train else {i * seg + seg // 2}
        else:
            one_based = set(range(i * seg + 1, i * seg + seg + 1)) if train else {i * seg + max(int(seg / 2), 1)}
            capped = {min(f, 9) for f in one_based} if train else one_based
            frames = {f - 1 for f in capped} if n > 6 else {0}
        picks.append({min(f, n - 1) for f in frames})
    return picks


@pytest.mark.parametrize("rule", ["segments", "segments_ks"])
def test_segment_rules_read_the_frames_the_published_loaders_read(rule):
    counts = torch.arange(1, 16)
    g = torch.Generator().manual_seed(0)
    for t in (1, 2, 3, 4):
        middle = frame_offsets(counts, t, rule, False, None)
        drawn = torch.stack([frame_offsets(counts, t, rule, True, g) for _ in range(300)])
        for row, n in enumerate(counts.tolist()):
            assert [{v} for v in middle[row].tolist()] == published_segment_frames(n, t, rule, False), (n, t)
            assert [set(drawn[:, row, i].tolist()) for i in range(t)] == published_segment_frames(n, t, rule, True)


def test_segment_rules_on_ten_frame_clips_and_first_k():
    ten = torch.tensor([10])
    assert frame_offsets(ten, 3, "segments", False, None).tolist() == [[1, 4, 7]]
    assert frame_offsets(ten, 3, "segments_ks", False, None).tolist() == [[0, 3, 6]]
    # BB's KS_dataset.py caps only its training draw at frame 9: 12 frames, seg 4, test 1-based 2, 6, 10.
    assert frame_offsets(torch.tensor([12]), 3, "segments_ks", False, None).tolist() == [[1, 5, 9]]
    counts = torch.tensor([1, 2, 3, 4, 5, 10])
    g = torch.Generator().manual_seed(0)
    assert frame_offsets(counts, 2, "first_k", True, g).tolist() == [[0, 0], [0, 1], [0, 1], [0, 1], [0, 1], [0, 1]]


def test_random_k_refuses_a_cache_with_clips_of_fewer_frames_than_it_draws(cache_path):
    # The fixture's clips have 2, 3, 4 and 5 frames.
    assert bundle(cache_path, frames=2, frame_rule="random_k").task.modalities[1].shape[1] == 2
    counts = open_cache(cache_path).counts["frames"]
    short = int((counts < 3).sum())
    assert short > 0
    with pytest.raises(CacheError, match=rf"random_k draws 3 distinct frames per clip, but {short} clip\(s\) have "
                                         r"fewer; prepare the cache with --min-frames 3 --skip-bad"):
        bundle(cache_path, frames=3, frame_rule="random_k")
    bundle(cache_path, frames=3, frame_rule="first_k")  # the other rules repeat a short clip's last frame


def test_random_k_draws_distinct_frames_in_clip_order_uniformly_and_the_first_k_at_test():
    # IPRM's loader: np.random.choice(n, size=2, replace=False), sorted, for training; the first 2 for testing.
    counts = torch.tensor([1, 2, 3, 5])
    assert frame_offsets(counts, 2, "random_k", False, None).tolist() == [[0, 0], [0, 1], [0, 1], [0, 1]]
    g = torch.Generator().manual_seed(0)
    drawn = torch.stack([frame_offsets(counts, 2, "random_k", True, g) for _ in range(3000)])
    assert drawn[:, 0].tolist() == [[0, 0]] * 3000 and drawn[:, 1].tolist() == [[0, 1]] * 3000
    assert (drawn[:, 1:, 0] < drawn[:, 1:, 1]).all() and (drawn[:, 1:, 1] < counts[1:]).all()
    pairs = torch.tensor([[a, b] for a in range(5) for b in range(a + 1, 5)])
    share = (drawn[:, 3, None, :] == pairs[None]).all(-1).double().mean(0)
    assert share.sum() == 1.0 and (share - 0.1).abs().max() < 0.02, share


def published_bml_frames(n: int) -> list[int]:
    """The stored frames BML's KS loader serves, written as its steps: GeWu-Lab/BML_TPAMI2024 dataset/loader.py
    VideoLoaderHDF5 appends hdf5 entry ``i - 1`` for i in range(n) (h5py reads -1 as the last entry), then KS.py
    keeps ``clip[0], clip[int((n-1)/2)], clip[n-1]``."""
    stored = list(range(n))
    clip = [stored[i - 1] for i in range(n)]
    return [clip[0], clip[int((n - 1) / 2)], clip[n - 1]]


def test_bml_ks_serves_the_frames_bml_reads_in_its_order_for_training_and_test():
    counts = torch.arange(1, 25)
    expected = [published_bml_frames(n) for n in counts.tolist()]
    g = torch.Generator().manual_seed(0)
    assert frame_offsets(counts, 3, "bml_ks", False, None).tolist() == expected
    assert frame_offsets(counts, 3, "bml_ks", True, g).tolist() == expected
    # the middle pick rounds down and the loader's shift wraps: not first/middle/last of the stored frames
    assert expected[9] == [9, 3, 8] and expected[10] == [10, 4, 9]
    assert expected[:3] == [[0, 0, 0], [1, 1, 0], [2, 0, 1]]


def test_an_unknown_frame_rule_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"data.frame_rule='middle' is not one of \['segments'"):
        frame_offsets(torch.tensor([10]), 3, "middle", False, None)


def test_bml_ks_serves_its_frames_and_refuses_other_frame_counts(cache_path):
    for t in (1, 2, 4):
        with pytest.raises(ValueError, match=rf"data.frame_rule=bml_ks serves the 3 frames BML's KS.py reads; set "
                                             rf"data.frames=3 \(got {t}\)"):
            frame_offsets(torch.tensor([10]), t, "bml_ks", False, None)
    with pytest.raises(ValueError, match=r"data.frames=3 \(got 2\)"):
        bundle(cache_path, frames=2, frame_rule="bml_ks")
    counts = open_cache(cache_path).index["frame_count"]
    for train in (False, True):
        loader = bundle(cache_path, frames=3, frame_rule="bml_ks").loader("train", batch_size=4, train=train, seed=0)
        for batch in loader:
            expected = [[second_level(f) for f in published_bml_frames(n)] for n in counts[batch["index"].numpy()]]
            # training crops a random part of each uniform frame: its mean level stays the frame's
            np.testing.assert_allclose(reds(batch["visual"]), expected, atol=5)


def test_training_draws_each_segments_frame_independently():
    # 30 frames in 3 segments of 10: "a uniformly random frame of each" segment (datasets/augment.py) is one draw per
    # segment; one offset shared by the segments would serve frames t, t + 10, t + 20 of every clip.
    g = torch.Generator().manual_seed(0)
    drawn = torch.cat([frame_offsets(torch.tensor([30]), 3, "segments", True, g) for _ in range(400)])
    within = drawn - torch.tensor([0, 10, 20])
    assert all(set(within[:, s].tolist()) == set(range(10)) for s in range(3))
    same = (within[:, 0] == within[:, 1]).double().mean()
    assert 0.05 < same < 0.2, f"two independent uniform draws of 10 agree 1 time in 10, not {same:.2f}"


def test_one_frame_segments_equal_the_middle_and_a_uniform_frame():
    # T = 1 (CREMA-D in OGM-GE/AUG-style configs): the middle frame n // 2 and a frame uniform over the clip.
    counts = torch.tensor([1, 2, 5, 10])
    assert frame_offsets(counts, 1, "segments", False, None).flatten().tolist() == [0, 1, 2, 5]
    g = torch.Generator().manual_seed(0)
    drawn = torch.stack([frame_offsets(counts, 1, "segments", True, g) for _ in range(300)])
    assert [set(drawn[:, i, 0].tolist()) for i in range(4)] == [set(range(n)) for n in (1, 2, 5, 10)]


def test_crop_boxes_follow_torchvisions_parameterisation():
    from torchvision.transforms import RandomResizedCrop

    h, w, n = 48, 64, 4000
    boxes = crop_boxes(n, h, w, torch.Generator().manual_seed(1))
    top, left, bh, bw = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
    frac, ratio = (bh * bw).double() / (h * w), bw.double() / bh
    assert frac.min() > 0.06 and frac.max() <= 1.0 and ratio.min() > 0.6 and ratio.max() < 1.6
    torch.manual_seed(1)
    ref = torch.tensor([RandomResizedCrop.get_params(torch.empty(3, h, w), [0.08, 1.0], [3 / 4, 4 / 3])
                        for _ in range(n)])
    ref_frac = (ref[:, 2] * ref[:, 3]).double() / (h * w)
    assert abs(frac.mean() - ref_frac.mean()) < 0.02 and abs(frac.std() - ref_frac.std()) < 0.02
    assert abs(ratio.log().mean() - (ref[:, 3].double() / ref[:, 2]).log().mean()) < 0.02


def test_data_crop_scale_bounds_the_training_crops(cache_path, monkeypatch):
    h, w = 48, 64
    frac = {scale: (lambda b: (b[:, 2] * b[:, 3]).double() / (h * w))(
        crop_boxes(4000, h, w, torch.Generator().manual_seed(1), scale=scale)) for scale in ((0.08, 1.0), (0.5, 1.0))}
    assert frac[(0.08, 1.0)].min() < 0.1 and frac[(0.5, 1.0)].min() > 0.47, "rounded sides: a little under 0.5"
    import datasets.augment as augment
    seen = []
    original = augment.crop_boxes

    def recording(*args, **kwargs):
        seen.append(kwargs.get("scale"))
        return original(*args, **kwargs)

    monkeypatch.setattr(augment, "crop_boxes", recording)
    for data, scale in ((bundle(cache_path), (0.08, 1.0)), (bundle(cache_path, crop_scale=[0.5, 1.0]), (0.5, 1.0))):
        next(iter(data.loader("train", batch_size=3, train=True, seed=0)))
        assert seen.pop() == scale
    for bad in ([0.0, 1.0], [0.9, 0.5], [0.5, 1.5], [0.5]):
        with pytest.raises(ValueError, match=r"data\.crop_scale=.* must be two area fractions"):
            bundle(cache_path, crop_scale=bad)


def test_crop_positions_reach_every_offset_of_the_frame():
    # torchvision draws top ~ U{0, ..., H - h} and left ~ U{0, ..., W - w}: a box can touch the bottom and right edges.
    h, w = 6, 8
    top, left, bh, bw = crop_boxes(4000, h, w, torch.Generator().manual_seed(2), scale=(0.5, 0.5)).T
    for size in set(bh.tolist()):
        assert set(top[bh == size].tolist()) == set(range(h - size + 1)), f"height {size}"
    for size in set(bw.tolist()):
        assert set(left[bw == size].tolist()) == set(range(w - size + 1)), f"width {size}"


def test_crop_falls_back_to_the_centre_when_no_attempt_fits():
    boxes = crop_boxes(50, 4, 100, torch.Generator().manual_seed(0))
    assert (boxes == torch.tensor([0, (100 - 5) // 2, 4, 5])).all(), "ratio clamped to 4/3: 4 x round(5.33)"
    tall = crop_boxes(50, 100, 4, torch.Generator().manual_seed(0))
    assert (tall == torch.tensor([(100 - 5) // 2, 0, 5, 4])).all(), "ratio clamped to 3/4: round(5.33) x 4"


def test_crop_scale_bounds_the_area_from_above_and_a_drawn_box_may_span_a_whole_side():
    h, w = 48, 64
    top, left, bh, bw = crop_boxes(4000, h, w, torch.Generator().manual_seed(3), scale=(0.1, 0.3)).T
    frac = (bh * bw).double() / (h * w)
    assert frac.max() < 0.33 and frac.min() > 0.08, "rounded sides: a little over 0.3 at most"
    # A box that fits may span one whole side of a square frame (torchvision accepts w <= W and h <= H), short of
    # the fallback, which spans both.
    top, left, bh, bw = crop_boxes(4000, 48, 48, torch.Generator().manual_seed(3)).T
    assert ((bw == 48) & (bh < 48)).any() and ((bh == 48) & (bw < 48)).any()


def test_resized_crop_matches_torchvision_resampling():
    from torchvision.transforms import functional as TF

    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand((2, 3, 6, 8), generator=g) * 255, size=(48, 64),
                                             mode="bicubic", align_corners=False)
    boxes = torch.tensor([[5, 7, 40, 50], [0, 0, 48, 64]])
    out = resized_crop(smooth, boxes, 16)
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        ref = TF.resized_crop(smooth[i], top, left, h, w, [16, 16], antialias=True)
        torch.testing.assert_close(out[i], ref, atol=2e-3, rtol=1e-4)
    upscaled = resized_crop(smooth, torch.tensor([[3, 4, 10, 12]] * 2), 32)
    torch.testing.assert_close(upscaled, TF.resized_crop(smooth, 3, 4, 10, 12, [32, 32], antialias=True),
                               atol=2e-3, rtol=1e-4)
    identity = resized_crop(smooth[:, :, :16, :16].contiguous(), torch.tensor([[0, 0, 16, 16]] * 2), 16)
    # Same float32 resampling budget as above (values on a 0-255 scale).
    torch.testing.assert_close(identity, smooth[:, :, :16, :16], atol=2e-3, rtol=1e-4)
    torch.testing.assert_close(resize(smooth, 16), TF.resize(smooth, [16, 16], antialias=True), atol=2e-3, rtol=1e-4)


def test_audio_time_crop():
    frames = np.zeros((4, 2, 2, 3), dtype=np.uint8)
    audio = torch.arange(10, dtype=torch.float16).repeat(4, 1, 3, 1)
    aug = AVAugment(frames, num_frames=1, image_size=2, audio_frames=4)
    batch = {"audio": audio, "_frame_start": torch.arange(4), "_frame_count": torch.ones(4, dtype=torch.int64),
             "label": torch.zeros(4, dtype=torch.int64)}
    test = aug(dict(batch), torch.Generator().manual_seed(0), False)["audio"]
    assert test.shape == (4, 1, 3, 4) and (test[:, 0, 0] == torch.arange(4.0)).all()
    train = aug(dict(batch), torch.Generator().manual_seed(0), True)["audio"]
    starts = train[:, 0, 0, 0]
    assert ((train[:, 0, 0] - starts[:, None]) == torch.arange(4.0)).all() and starts.max() <= 6
    starts = {aug(dict(batch), torch.Generator().manual_seed(s), True)["audio"][0, 0, 0, 0].item() for s in range(60)}
    assert starts == set(range(7)), "every start 0..10-4, the last window included"


def test_cache_agrees_with_the_per_sample_media_loader(cache_path):
    cache = open_cache(cache_path)
    data = bundle(cache_path, frames=2)
    rows = data.splits["test"]
    media = MediaDataset(items_from_cache(cache, rows), audio_pipeline(cache), num_frames=2, image_size=SIZE,
                         train=False)
    batch = next(iter(data.loader("test", batch_size=len(rows), train=False, seed=0)))
    by_row = {int(r): i for i, r in enumerate(batch["index"])}
    for item in (media[i] for i in range(len(media))):
        i = by_row[int(item["index"])]
        torch.testing.assert_close(batch["audio"][i], item["audio"], atol=1e-2, rtol=1e-3)
        # Source 48x64 -> stored 24x32 -> 16x16 vs source -> 16x16 directly: uniform frames agree closely.
        torch.testing.assert_close(batch["visual"][i], item["visual"], atol=0.08, rtol=0)
        assert int(item["label"]) == int(batch["label"][i])
    train_item = MediaDataset(items_from_cache(cache, rows[:1]), audio_pipeline(cache), num_frames=2, image_size=SIZE,
                              train=True)[0]
    assert train_item["visual"].shape == (3, 2, SIZE, SIZE)


def test_per_sample_media_loader_serves_bmls_views_when_asked(cache_path, monkeypatch):
    from torchvision import transforms

    cache = open_cache(cache_path)
    rows = bundle(cache_path).splits["test"]
    items, pipeline = items_from_cache(cache, rows), audio_pipeline(cache)
    batch = next(iter(bundle(cache_path, frames=2, eval_view="short_side_center").loader(
        "test", batch_size=len(rows), train=False, seed=0)))
    media = MediaDataset(items, pipeline, num_frames=2, image_size=SIZE, train=False, eval_view="short_side_center")
    by_row = {int(r): i for i, r in enumerate(batch["index"])}
    for item in (media[i] for i in range(len(media))):
        torch.testing.assert_close(batch["visual"][by_row[int(item["index"])]], item["visual"], atol=0.08, rtol=0)
    draws = []
    real = transforms.RandomResizedCrop.get_params
    monkeypatch.setattr(transforms.RandomResizedCrop, "get_params",
                        staticmethod(lambda *a: draws.append(1) or real(*a)))
    for crop_per, per_item in (("clip", 1), ("frame", 3)):
        draws.clear()
        MediaDataset(items[:2], pipeline, num_frames=3, image_size=SIZE, train=True, crop_per=crop_per)[1]
        assert len(draws) == per_item, crop_per
    with pytest.raises(ValueError, match=r"data\.crop_per='video' is not one of"):
        MediaDataset(items, pipeline, num_frames=2, image_size=SIZE, train=True, crop_per="video")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_are_the_same_on_cpu_and_gpu(cache_path):
    data = bundle(cache_path, frames=2)
    for train in (True, False):
        cpu = next(iter(data.loader("train", batch_size=6, train=train, seed=1)))
        gpu = next(iter(data.loader("train", batch_size=6, train=train, seed=1, device="cuda")))
        assert gpu["visual"].is_cuda and set(gpu) == set(cpu)
        for key in cpu:
            # The pil crop runs in float32 + rounding on CUDA: within one grey level of the CPU's uint8 kernel.
            atol = 1 / (255 * 0.224) + 1e-4 if key == "visual" and train else 1e-3
            torch.testing.assert_close(gpu[key].cpu(), cpu[key], atol=atol, rtol=1e-4)


def test_benchmark_data_reports_both_loaders(cache_path):
    threads = torch.get_num_threads()
    result = benchmark_data(cache_path, batch_size=3, batches=1, rounds=2, warmup=0, image_size=SIZE, frames=1)
    assert result["cache_samples_per_s"] > 0 and result["media_samples_per_s"] > 0
    assert result["floor_samples_per_s"] > 0 and result["host_samples_per_s"] > 0
    assert result["timed_samples"] == {"cache": 6, "floor": 6, "host": 6, "media": 6} and result["threads"] == 1
    assert result["speedup"] == approx64(result["cache_samples_per_s"] / result["media_samples_per_s"])
    assert result["floor_ratio"] == approx64(result["floor_samples_per_s"] / result["cache_samples_per_s"])
    # The same rates and ratios in the process's CPU time.
    cpu = result["cpu_samples_per_s"]
    assert set(cpu) == {"cache", "floor", "host", "media"} and min(cpu.values()) > 0
    assert result["cpu_speedup"] == approx64(cpu["cache"] / cpu["media"])
    assert result["cpu_floor_ratio"] == approx64(cpu["floor"] / cpu["cache"])
    assert result["cpu_host_speedup"] == approx64(cpu["host"] / cpu["media"])
    profile = result["profile_ms_per_sample"]
    # On a CPU the audio rows and the crops are converted (and normalised) as they are read.
    assert {"audio gather+conversion", "frame array lookup", "frame read+crop/resize+flip+conversion+normalisation",
            "loader", "python overhead", "total"} <= set(profile)
    assert sum(v for k, v in profile.items() if k != "total") == pytest.approx(profile["total"], rel=1e-6)
    assert result["dataset"] == "cremad" and result["visual_source"] == "video"
    assert torch.get_num_threads() == threads


def _damage(folder, edit: str) -> str:
    """Make one cache file disagree with the others while it still parses; return the file the error must name."""
    labels = np.load(folder / "labels.npy")
    if edit == "index cut at a line end":
        lines = (folder / "index.csv").read_text(encoding="utf-8").splitlines(keepends=True)
        (folder / "index.csv").write_text("".join(lines[:5]), encoding="utf-8")
        return str(folder)
    if edit == "labels from another build":
        np.save(folder / "labels.npy", (labels + 1) % 6)
        return str(folder / "labels.npy")
    np.save(folder / "splits" / "test.npy", np.load(folder / "splits" / "test.npy") + len(labels))
    return str(folder / "splits" / "test.npy")


@pytest.mark.parametrize("edit", ["index cut at a line end", "labels from another build", "split rows out of range"])
def test_a_cache_whose_files_disagree_is_refused_naming_the_file(cache_path, tmp_path, edit):
    # Each damaged file parses on its own: served, the cache would train on wrong labels without a word, or stop
    # with a bare IndexError in the middle of an epoch.
    import shutil

    folder = tmp_path / "cache"
    shutil.copytree(cache_path, folder)
    named = _damage(folder, edit)
    with pytest.raises(CacheError, match="prepare the cache again with --force") as err:
        open_cache(folder)
    assert named in str(err.value)


def _copy(cache_path, tmp_path):
    import shutil

    folder = tmp_path / "cremad" / cache_path.name
    shutil.copytree(cache_path, folder)
    return folder


@pytest.mark.parametrize("edit", ["frames offsets of another build", "frames one row short", "audio one row short",
                                  "split row one past the end", "negative split row"])
def test_a_cache_off_by_one_row_is_refused_naming_the_file(cache_path, tmp_path, edit):
    # The smallest disagreements: one sample too few, one offset too far, a row index just outside 0..N-1 (a
    # negative one would silently serve the last sample).
    folder = _copy(cache_path, tmp_path)
    n = len(np.load(folder / "labels.npy"))
    if edit == "frames offsets of another build":
        named = folder / "frames_start.npy"
        np.save(folder / "frames_count.npy", np.load(folder / "frames_count.npy")[:-1])
    elif edit == "frames one row short":
        named = folder / "frames.npy"
        reach = int((np.load(folder / "frames_start.npy") + np.load(folder / "frames_count.npy")).max())
        np.save(named, np.load(named)[:reach - 1])
    elif edit == "audio one row short":
        named = folder / "audio.npy"
        np.save(named, np.load(named)[:n - 1])
    else:
        named = folder / "splits" / "test.npy"
        rows = np.load(named)
        rows[0] = n if edit == "split row one past the end" else -1
        np.save(named, rows)
    with pytest.raises(CacheError, match="prepare the cache again with --force") as err:
        open_cache(folder)
    assert str(named) in str(err.value)
    if "split row" in edit:
        assert f"row index {rows[0]} is outside 0..{n - 1}" in str(err.value)


def test_a_cache_of_another_format_version_or_index_layout_is_refused(cache_path, tmp_path):
    folder = _copy(cache_path, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format": 2}), encoding="utf-8")
    with pytest.raises(CacheError, match=r"cache format 2, this code reads 1; prepare again with --force"):
        open_cache(folder)
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    index = (folder / "index.csv").read_text(encoding="utf-8")
    (folder / "index.csv").write_text(index.replace("label_name", "class_name", 1), encoding="utf-8")
    with pytest.raises(CacheError, match=r"index.csv: columns .*class_name.* differ from"):
        open_cache(folder)


def test_damaged_split_and_manifest_files_are_refused_naming_them(cache_path, tmp_path):
    folder = _copy(cache_path, tmp_path)
    val = folder / "splits" / "val.npy"
    val.write_bytes(val.read_bytes()[:100])
    with pytest.raises(CacheError, match=rf"{val} is damaged"):
        open_cache(folder)
    folder = _copy(cache_path, tmp_path / "again")
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    del manifest["arrays"], manifest["audio_shape"]  # parses, but names no arrays
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(CacheError, match=rf"{folder / 'manifest.json'} is damaged \(KeyError"):
        open_cache(folder)


def test_index_columns_are_typed_and_duration_is_a_float_nan_when_unmeasured(cache_path):
    index = open_cache(cache_path).index
    assert index["duration_s"].dtype == np.float64 and index["label"].dtype == np.int64
    assert index["frame_start"].dtype == np.int64 and index["id"].dtype == object


def test_an_unfinished_cache_is_refused_with_the_resume_hint_only_when_a_partial_build_exists(cache_path, tmp_path):
    folder = _copy(cache_path, tmp_path)
    (folder / "DONE").unlink()
    with pytest.raises(CacheError, match=r"no DONE file$"):
        open_cache(folder)
    folder.with_name(folder.name + ".partial").mkdir()
    with pytest.raises(CacheError, match=r"no DONE file \(an interrupted prepare resumes when run again\)"):
        open_cache(folder)


def test_only_finished_caches_of_the_recipe_are_found_and_several_are_refused(cache_path, tmp_path, monkeypatch):
    from datasets.cache import default_cache_root, find_caches

    folder = _copy(cache_path, tmp_path)
    root, recipe = tmp_path, folder.name.split("-")[0]
    # a build killed between DONE and its rename, an unfinished one, another recipe's: none is a cache to serve
    for name in (f"{folder.name}.partial", f"{recipe}-00000000", "pmr-11111111"):
        (root / "cremad" / name).mkdir()
    (root / "cremad" / f"{folder.name}.partial" / "DONE").touch()
    (root / "cremad" / "pmr-11111111" / "DONE").touch()
    assert find_caches(root, "cremad", recipe) == [folder]
    monkeypatch.setenv("AUG_BENCH_CACHE", str(root))
    assert default_cache_root() == root
    hp = resolve("data", CremaD.HPARAMS, "cremad", {"recipe": recipe})
    assert CremaD.locate_cache(hp) == folder
    (root / "cremad" / f"{recipe}-00000000" / "DONE").touch()
    with pytest.raises(ValueError, match="several cremad caches .* set data.cache"):
        CremaD.locate_cache(hp)
    monkeypatch.delenv("AUG_BENCH_CACHE")
    assert default_cache_root() == Path("cache")
    with pytest.raises(FileNotFoundError, match="is not a finished cache"):
        CremaD.locate_cache(resolve("data", CremaD.HPARAMS, "cremad", {"cache": str(root / "cremad" / "pmr-none")}))


def test_options_hash_is_eight_hex_digits_independent_of_key_order():
    from datasets.cache import options_hash

    # It names the cache folders already built: another length or key order would orphan them.
    assert options_hash({"a": 1, "b": [2, 3]}) == options_hash({"b": [2, 3], "a": 1}) == "fd28b174"
    assert options_hash({"a": 1, "b": [3, 2]}) != options_hash({"a": 1, "b": [2, 3]})


def _splits_cache(**splits):
    from datasets.cache import Cache

    return Cache(Path("c"), {"empty_splits": []}, {}, np.zeros(10, dtype=np.int64), {}, {}, {},
                 {name: np.asarray(rows, dtype=np.int64) for name, rows in splits.items()})


def test_full_training_serves_a_validation_split_from_outside_train_and_leaves_out_one_inside():
    from datasets.cache import served_splits

    outside = _splits_cache(train=[0, 1, 2, 3], train_noval=[0, 1, 2, 3], val=[4, 5], test=[6, 7])
    assert served_splits(outside, "full")["val"].tolist() == [4, 5]
    assert served_splits(outside, "clean")["val"].tolist() == [4, 5]
    partly = _splits_cache(train=[0, 1, 2, 3], train_noval=[0, 1, 2], val=[3, 4], test=[6, 7])
    assert "val" not in served_splits(partly, "full"), "one validation row is trained on"
    assert served_splits(partly, "clean")["val"].tolist() == [3, 4]
    empty = _splits_cache(train=[0, 1], train_noval=[0, 1], val=[], test=[6, 7])
    assert list(served_splits(empty, "clean")) == ["train", "test"]


def test_a_bundle_records_the_caches_build_and_refuses_another_datasets_cache(cache_path, tmp_path):
    manifest = json.loads((cache_path / "manifest.json").read_text(encoding="utf-8"))
    info = bundle(cache_path).info
    assert info["cache"] == str(cache_path) and info["val_source"] == manifest["val_source"]
    # what the run says it was compared on: each split file pinned or custom, "unknown" where the manifest lacks it
    assert info["split_files"] == {name: record["status"] for name, record in manifest["split_files"].items()}
    assert info["split_files"]["stat.csv"] == "pinned" and info["split_files"]["test.csv"] == "custom"
    folder = _copy(cache_path, tmp_path)
    manifest["split_files"]["test.csv"] = "sha256 only"
    (folder / "manifest.json").write_text(json.dumps({**manifest, "dataset": "vggsound"}), encoding="utf-8")
    with pytest.raises(CacheError, match=rf"{folder} holds dataset 'vggsound', not 'cremad'"):
        bundle(folder)
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert bundle(folder).info["split_files"]["test.csv"] == "unknown"


def test_data_cache_dir_names_the_root_and_a_missing_data_cache_says_how_to_build_it(cache_path, tmp_path,
                                                                                    monkeypatch):
    folder = _copy(cache_path, tmp_path / "root")
    monkeypatch.setenv("AUG_BENCH_CACHE", str(tmp_path / "elsewhere"))
    recipe = folder.name.split("-")[0]
    hp = resolve("data", CremaD.HPARAMS, "cremad", {"cache_dir": str(tmp_path / "root"), "recipe": recipe})
    assert CremaD.locate_cache(hp) == folder
    missing = tmp_path / "out" / "cremad" / f"{recipe}-12345678"
    root = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=rf"build it with: augbench prepare cremad .* --out {root} "):
        CremaD.locate_cache(resolve("data", CremaD.HPARAMS, "cremad", {"cache": str(missing)}))


def _media_item(monkeypatch, **kw):
    """A per-sample loader item over a synthetic clip: audio features whose every time frame holds its own index
    (10 frames, served 4 at a time), and frames of 16x32 whose left 4 columns are black, the rest white."""
    from types import SimpleNamespace

    from PIL import Image

    from datasets import media_loader
    from datasets.media_loader import MediaItem

    features = np.tile(np.arange(10, dtype=np.float32), (3, 1))
    monkeypatch.setattr(media_loader, "features_from_file", lambda pipeline, path: (features, 1.0, False))
    pixels = np.full((16, 32, 3), 255, np.uint8)
    pixels[:, :4] = 0
    monkeypatch.setattr(MediaDataset, "_frames", lambda self, item: [Image.fromarray(pixels)] * self.num_frames)
    item = MediaItem(5, 1, Path("a.wav"), Path("v"), "frames")
    return MediaDataset([item], SimpleNamespace(serve_frames=4), num_frames=1, image_size=8, **kw)


def test_per_sample_media_loader_views_and_audio_crop(monkeypatch):
    squeezed = _media_item(monkeypatch, train=False)[0]
    assert squeezed["audio"][0, 0].tolist() == [0, 1, 2, 3], "evaluation serves the first frames"
    assert (int(squeezed["index"]), int(squeezed["label"])) == (5, 1), "the cache row, not the item's position"
    assert squeezed["visual"].shape == (3, 1, 8, 8) and squeezed["visual"][0, 0, :, 0].max() < 0
    assert squeezed["visual"][0, 0, :, -1].min() > 2, "resize((S, S)) keeps the whole frame, squeezed"
    centre = _media_item(monkeypatch, train=False, eval_view="short_side_center")[0]["visual"]
    assert centre.min() > 2, "the short side resized to S and the centre S x S cut: the black border is outside it"
    torch.manual_seed(0)
    clip = _media_item(monkeypatch, train=False, crop_per="clip")[0]["visual"]
    assert torch.equal(clip, squeezed["visual"]), "crop_per draws crops for training only"
    train = _media_item(monkeypatch, train=True)
    starts = {int(train[0]["audio"][0, 0, 0]) for _ in range(80)}
    assert starts == set(range(7)), "every start 0..10-4, the last window included"


def test_per_sample_media_loader_takes_the_crop_scale_and_decodes_videos_at_the_frame_rate_asked(monkeypatch):
    from datasets import media_loader
    from datasets.media_loader import MediaItem

    rates = []
    monkeypatch.setattr(media_loader, "extract_frames",
                        lambda path, size, fps: rates.append(fps) or (np.zeros((4, 6, 6, 3), np.uint8), None))
    media = MediaDataset([MediaItem(0, 0, Path("a.wav"), Path("v.mp4"), "video")], None, num_frames=2, image_size=4,
                         train=True, frames_per_second=3, crop_scale=(0.3, 0.5))
    assert media.crop.scale == (0.3, 0.5)
    assert len(media._frames(media.items[0])) == 2 and rates == [3]


def test_a_subclass_dataset_serves_its_ancestors_cache(cache_path):
    from datasets.av_digits_cache import AVDigits

    # AV-Digits is served from a cache prepared as CREMA-D (its manifest names cremad)
    assert AVDigits.family() == {AVDigits.NAME, "cremad"} and CremaD.family() == {"cremad"}
    hp = resolve("data", AVDigits.HPARAMS, AVDigits.NAME, {"cache": str(cache_path), "image_size": SIZE})
    assert len(AVDigits.build(hp).splits["test"]) == len(bundle(cache_path).splits["test"])


def test_a_cache_of_no_samples_passes_the_row_checks():
    from datasets.cache import Cache, check_cache_rows

    empty = np.zeros(0, dtype=np.int64)
    check_cache_rows(Cache(Path("c"), {}, {"label": empty, "id": empty.astype(object)}, empty,
                           {"frames": np.zeros((0, 2, 2, 3), np.uint8)}, {"frames": empty}, {"frames": empty}, {}))


@pytest.mark.parametrize("subset, resident, mode", [(1, "auto", "none"), (1, "memory", "memory"), (0, "auto", "auto")])
def test_a_subset_keeps_the_cache_memory_mapped_unless_asked_otherwise(cache_path, subset, resident, mode):
    # A smoke run on a few rows per class would spend more copying the whole cache into RAM than it saves.
    assert bundle(cache_path, subset=subset, resident=resident).augment.arrays.mode == mode
