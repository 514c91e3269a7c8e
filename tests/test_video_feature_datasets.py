"""NVGesture, UCF-101 and CMU-MOSEI beyond tests/test_more_datasets.py: frame windows and flow reading at prepare,
the crops, windows, flips and frame picks of serving (on position-coded tensors, so a wrong axis or offset shows), and
the MOSEI pickle's splits, recipes and checks."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core.hparams import resolve
from datasets.cache import open_cache
from datasets.media import MediaError
from datasets.mosei import Mosei, read_feature_pickle
from datasets.nvgesture import NVGesture, NVGestureAugment, read_clip, read_flow
from datasets.prepare import prepare
from datasets.prepared import Record
from datasets.splits import SplitParseError, SplitRow
from datasets.tables import PrepareOptions
from datasets.ucf101 import UCF101, UCFAugment, bb_offsets, clip_name
from tests.more_fixtures import frame_level, make_mosei, make_nvgesture, make_ucf101, write_avi, write_lines

NV_SETTINGS = {"frames": 8, "frame_size": 20}


def quiet(_: str) -> None:
    pass


def nv_hp(**overrides):
    return resolve("data", NVGesture.HPARAMS, "nvgesture", overrides)


def write_frames_avi(path: Path, images: list[np.ndarray]) -> None:
    """Lossless FFV1 AVI of the given RGB frames."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=30)
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = "bgr0"
        for img in images:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def write_coloured_avi(path: Path, frames: int, size: tuple[int, int] = (24, 32)) -> None:
    """Frame k has red ``frame_level(k)`` and blue ``frame_level(k) + 5`` (depth reads blue)."""
    images = []
    for k in range(frames):
        img = np.zeros((*size, 3), dtype=np.uint8)
        img[..., 0], img[..., 2] = frame_level(k), frame_level(k) + 5
        images.append(img)
    write_frames_avi(path, images)


# --- NVGesture: prepare ------------------------------------------------------------------------------------------


def test_nvgesture_each_sensor_reads_its_own_list_window_and_frames_past_its_end_stay_zero(tmp_path):
    # color:2:6 is 4 frames of the 8 read, so frames 4..7 stay zero; depth:5:14 starts 3 frames later in its own video.
    tree = make_nvgesture(tmp_path / "raw", classes=1, per_class={"train": 2, "test": 1})
    for split in ("train", "test"):
        lst = tree.root / f"nvgesture_{split}_correct_v2.lst"
        lines = [line.replace("depth:sk_depth:2:14", "depth:sk_depth:5:14").replace("color:sk_color:2:14",
                                                                                    "color:sk_color:2:6")
                 for line in lst.read_text().splitlines()]
        write_lines(lst, lines)
        for rel in tree.ids[split]:
            write_coloured_avi(tree.root / rel / "sk_depth.avi", 14)
    cache = open_cache(prepare(NVGesture, tree.root, tmp_path / "cache", PrepareOptions(label_order="lists"),
                               NV_SETTINGS, log=quiet))
    rgb, depth = cache.arrays["rgb"], cache.arrays["depth"]
    for row in range(len(cache)):
        assert [int(rgb[row, k, 5, 5, 0]) for k in range(4)] == [frame_level(2 + k) for k in range(4)]
        assert not rgb[row, 4:].any(), "frames past the list's end frame stay zero"
        assert [int(depth[row, k, 5, 5]) for k in range(8)] == [frame_level(5 + k) + 5 for k in range(8)]


def test_nvgesture_a_window_past_the_end_of_the_video_is_too_few_frames(tmp_path):
    path = tmp_path / "sk_color.avi"
    write_coloured_avi(path, 6)
    with pytest.raises(MediaError, match=r"sk_color.avi: no frame in \[6, 10\)") as err:
        read_clip(path, 6, 40, 4, 8)
    assert err.value.kind == "too few frames"
    tail = read_clip(path, 4, 40, 4, 8)
    assert [int(tail[k, 0, 0, 0]) for k in range(4)] == [frame_level(4), frame_level(5), 0, 0], "video's end: zero"


def test_nvgesture_frames_are_resized_with_pil_bilinear(tmp_path):
    from PIL import Image

    path = tmp_path / "sk_color.avi"
    ramp = np.zeros((4, 8, 3), dtype=np.uint8)
    ramp[..., 0] = np.arange(8) * 30
    write_frames_avi(path, [ramp])
    expected = np.asarray(Image.fromarray(ramp).resize((6, 6), Image.BILINEAR))
    np.testing.assert_array_equal(read_clip(path, 0, 1, 1, 6)[0], expected)
    assert len(np.unique(expected[0, :, 0])) == 6, "a ramp nearest-neighbour resizing would not give"


def test_nvgesture_flow_keeps_its_rows_and_columns_and_pads_short_clips_at_the_end(tmp_path):
    flow = np.zeros((5, 5, 2, 3), dtype=np.float32)
    flow[:, :, 0, :] = (np.arange(5)[:, None] * 10 + np.arange(5)[None])[..., None]  # 10 y + x
    flow[:, :, 1, :] = np.arange(3) + 1
    np.save(tmp_path / "0.npy", flow)
    out = read_flow(tmp_path / "0.npy", 4, 5, 2)
    assert out.shape == (4, 5, 5, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[1, :, :, 0], flow[:, :, 0, 1])
    np.testing.assert_array_equal(out[:, 2, 2, 1], [1, 2, 3, 0])


def test_nvgesture_flow_of_another_size_is_resized_bilinearly_without_corner_alignment(tmp_path):
    flow = np.zeros((4, 4, 2, 1), dtype=np.float32)
    flow[:, :, 0, 0] = np.arange(4)[None]
    np.save(tmp_path / "0.npy", flow)
    out = read_flow(tmp_path / "0.npy", 1, 8, 2)
    # align_corners=False: output column i samples input column i / 2 - 0.25, clamped to [0, 3]
    np.testing.assert_allclose(out[0, 3, :, 0], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(5, 5, 2), (5, 5, 3, 4)])
def test_nvgesture_flow_of_the_wrong_rank_or_channels_is_corrupt_flow(tmp_path, shape):
    np.save(tmp_path / "0.npy", np.zeros(shape, dtype=np.float32))
    with pytest.raises(MediaError, match=r"0.npy: expected \(H, W, 2, T\)") as err:
        read_flow(tmp_path / "0.npy", 4, 5, 2)
    assert err.value.kind == "corrupt flow"


def test_nvgesture_flow_without_steps_rows_or_columns_or_not_an_array_is_a_bad_item(tmp_path):
    # No steps was served as a clip of zero motion without a word; no rows or columns crashed in interpolate with a
    # bare RuntimeError, and a .npz archive (np.load reads one whatever the name) with a bare AttributeError.
    for shape, kind, message in (((5, 5, 2, 0), "too few frames", "0.npy: no flow step"),
                                 ((0, 5, 2, 3), "corrupt flow", r"0.npy: expected \(H, W, 2, T\).*got \(0, 5, 2, 3\)")):
        np.save(tmp_path / "0.npy", np.ones(shape, dtype=np.float32))
        with pytest.raises(MediaError, match=message) as err:
            read_flow(tmp_path / "0.npy", 4, 5, 2)
        assert err.value.kind == kind
    with (tmp_path / "1.npy").open("wb") as f:
        np.savez(f, flow=np.ones((5, 5, 2, 3), dtype=np.float32))
    with pytest.raises(MediaError, match="1.npy: expected one NumPy array, got NpzFile") as err:
        read_flow(tmp_path / "1.npy", 4, 5, 2)
    assert err.value.kind == "corrupt flow"


def nv_record(tree, split: str = "train") -> Record:
    sample_id = tree.ids[split][0]
    folder = sample_id[2:]
    return Record(0, None, {"rgb": f"{folder}/sk_color.avi", "depth": f"{folder}/sk_depth.avi",
                            "flow": f"Video_data/flow_data/{split}/0.npy"}, {"windows": {"rgb": (2, 14),
                                                                                           "depth": (2, 14)}})


def test_nvgesture_flow_beyond_its_storage_dtype_is_a_bad_item_and_float32_keeps_it(tmp_path):
    tree = make_nvgesture(tmp_path / "raw", classes=1, per_class={"train": 1}, flow_size=20)
    flow_file = tree.root / "Video_data" / "flow_data" / "train" / "0.npy"
    flow = np.load(flow_file)
    flow[3, 4, 1, 2] = 1e6
    np.save(flow_file, flow)
    settings = SimpleNamespace(frames=8, frame_size=20, flow_channels=2, flow_dtype="float16")
    with pytest.raises(MediaError, match="0.npy: flow exceeds float16") as err:
        NVGesture.load(tree.root, nv_record(tree), settings)
    assert err.value.kind == "feature overflow"
    settings.flow_dtype = "float32"
    arrays, _ = NVGesture.load(tree.root, nv_record(tree), settings)
    assert arrays["flow"].dtype == np.float32 and arrays["flow"][2, 3, 4, 1] == 1e6


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nvgesture_non_finite_flow_is_a_bad_item(tmp_path, value):
    # A NaN slipped past the overflow check (NaN > max is false) into the cache and every batch holding that clip;
    # an inf was reported as "exceeds float16" even when stored as float32.
    tree = make_nvgesture(tmp_path / "raw", classes=1, per_class={"train": 1}, flow_size=20)
    flow_file = tree.root / "Video_data" / "flow_data" / "train" / "0.npy"
    flow = np.load(flow_file)
    flow[3, 4, 1, 2] = value
    np.save(flow_file, flow)
    for dtype in ("float16", "float32"):
        settings = SimpleNamespace(frames=8, frame_size=20, flow_channels=2, flow_dtype=dtype)
        with pytest.raises(MediaError, match="0.npy: flow holds NaN or inf") as err:
            NVGesture.load(tree.root, nv_record(tree), settings)
        assert err.value.kind == "non-finite features"


# --- NVGesture: serving ------------------------------------------------------------------------------------------


def nv_clips(b: int, frames: int, size: int) -> dict:
    """Stored-layout clips coding positions: rgb = (t, y, x), flow = (100 t + y, x), depth = 10 y + x."""
    t, y, x = np.meshgrid(np.arange(frames), np.arange(size), np.arange(size), indexing="ij")
    rgb = np.stack([t, y, x], -1).astype(np.uint8)
    flow = np.stack([100 * t + y, x], -1).astype(np.float16)
    depth = (10 * y + x).astype(np.uint8)
    return {"rgb": torch.from_numpy(np.repeat(rgb[None], b, 0)), "flow": torch.from_numpy(np.repeat(flow[None], b, 0)),
            "depth": torch.from_numpy(np.repeat(depth[None], b, 0))}


def nv_expected(clips: dict, i: int, start: int, length: int, top: int, left: int, size: int, flip: bool) -> dict:
    """Clip ``i`` of ``clips`` cut by hand: frames [start, start + length), rows and columns from (top, left), as served
    (C, T, size, size) before scaling."""
    out = {}
    for name, x in clips.items():
        x = x[i] if x[i].dim() == 4 else x[i][..., None]
        x = x[start:start + length, top:top + size, left:left + size].permute(3, 0, 1, 2).float()
        out[name] = x.flip(-1) if flip else x
    return out


def nv_unscale(batch: dict) -> dict:
    """Served values back to stored ones (mean 0, std 1 in these tests)."""
    return {"rgb": batch["rgb"] * 255.0, "flow": batch["flow"], "depth": batch["depth"] * 255.0}


def test_nvgesture_evaluation_serves_the_centre_crop_of_every_frame_scaled_per_modality():
    # stored 10, crop 6: the centre box starts at row and column 2; all 8 frames; depth / 255, flow as stored.
    mean, std = [0.5, 0.25, 0.125], [2.0, 4.0, 0.5]
    augment = NVGestureAugment(nv_hp(crop_size=6, train_frames=5, mean=mean, std=std), 10, 8)
    clips = nv_clips(2, 8, 10)
    out = augment(dict(clips), torch.Generator().manual_seed(0), False)
    want = nv_expected(clips, 1, 0, 8, 2, 2, 6, False)
    assert out["rgb"].shape == (2, 3, 8, 6, 6) and out["flow"].shape == (2, 2, 8, 6, 6)
    assert out["depth"].shape == (2, 1, 8, 6, 6)
    rgb = (want["rgb"] / 255.0 - torch.tensor(mean).view(3, 1, 1, 1)) / torch.tensor(std).view(3, 1, 1, 1)
    torch.testing.assert_close(out["rgb"][1], rgb, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["flow"][1], want["flow"], rtol=0, atol=0)
    torch.testing.assert_close(out["depth"][1], want["depth"] / 255.0, rtol=1e-6, atol=1e-7)


def nv_train(b: int, seed: int = 0, **hp):
    hparams = nv_hp(crop_size=6, train_frames=5, mean=[0.0] * 3, std=[1.0] * 3, **hp)
    clips = nv_clips(b, 8, 10)
    out = NVGestureAugment(hparams, 10, 8)(dict(clips), torch.Generator().manual_seed(seed), True)
    return clips, nv_unscale(out)


def test_nvgesture_training_shares_one_window_and_crop_per_clip_and_reaches_every_offset():
    clips, out = nv_train(300)
    starts, tops, lefts = (out["rgb"][:, c, 0, 0, 0].round().long() for c in range(3))
    for i in range(300):
        want = nv_expected(clips, i, int(starts[i]), 5, int(tops[i]), int(lefts[i]), 6, False)
        for name in ("rgb", "flow", "depth"):
            torch.testing.assert_close(out[name][i], want[name], rtol=0, atol=1e-4, msg=f"{name} of clip {i}")
    # 8 frames, window 5: starts 0..3; 10 x 10, crop 6: rows and columns 0..4, drawn independently
    assert set(starts.tolist()) == set(range(4)) and set(tops.tolist()) == set(lefts.tolist()) == set(range(5))
    assert (tops != lefts).any()


def test_nvgesture_training_flip_mirrors_columns_of_all_three_modalities_together():
    clips, out = nv_train(64, flip=True)
    flipped = []
    for i in range(64):
        start, top = int(out["rgb"][i, 0, 0, 0, 0].round()), int(out["rgb"][i, 1, 0, 0, 0].round())
        columns = out["rgb"][i, 2, 0, 0].round().long()
        left, flip = int(columns.min()), bool(columns[0] > columns[-1])
        want = nv_expected(clips, i, start, 5, top, left, 6, flip)
        for name in ("rgb", "flow", "depth"):
            torch.testing.assert_close(out[name][i], want[name], rtol=0, atol=1e-4, msg=f"{name} of clip {i}")
        flipped.append(flip)
    assert 10 < sum(flipped) < 54
    _, plain = nv_train(64)
    assert all(bool(c[0] < c[-1]) for c in plain["rgb"][:, 2, 0, 0]), "flip is off by default (AMSS: p = 0)"


def test_nvgesture_flow_full_clip_keeps_every_flow_frame_in_training_and_in_the_task():
    clips, out = nv_train(8, flow_full_clip=True)
    assert out["rgb"].shape == (8, 3, 5, 6, 6) and out["depth"].shape == (8, 1, 5, 6, 6)
    assert out["flow"].shape == (8, 2, 8, 6, 6)
    for i in range(8):
        top, left = (int(out["rgb"][i, c, 0, 0, 0].round()) for c in (1, 2))
        torch.testing.assert_close(out["flow"][i], nv_expected(clips, i, 0, 8, top, left, 6, False)["flow"], rtol=0,
                                   atol=0)
    cache = SimpleNamespace(arrays={k: v.numpy() for k, v in nv_clips(2, 8, 10).items()}, classes=("a", "b"))
    for full, flow_frames in ((False, 5), (True, 8)):
        task, _, _ = NVGesture.serve(cache, nv_hp(crop_size=6, train_frames=5, flow_full_clip=full))
        assert [m.shape for m in task.modalities] == [(3, 5, 6, 6), (2, flow_frames, 6, 6), (1, 5, 6, 6)]


def test_nvgesture_crop_and_window_may_equal_the_stored_clip_but_not_exceed_it():
    out = NVGestureAugment(nv_hp(crop_size=10, train_frames=8), 10, 8)(nv_clips(2, 8, 10), torch.Generator(), True)
    assert out["rgb"].shape == (2, 3, 8, 10, 10)
    for overrides in ({"crop_size": 11, "train_frames": 8}, {"crop_size": 10, "train_frames": 9}):
        with pytest.raises(ValueError, match=r"data.crop_size=\d+ / data.train_frames=\d+ exceed the cache's "
                                             r"10 x 10 frames / 8 frames"):
            NVGestureAugment(nv_hp(**overrides), 10, 8)


# --- UCF-101 -----------------------------------------------------------------------------------------------------


def ucf_hp(**overrides):
    return resolve("data", UCF101.HPARAMS, "ucf101", overrides)


def ucf_stores(visual_frames: int, flow_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged stores (n, 4, 5, C) coding positions: visual = (frame g, y, x), flow = (10 g + x, 100 + 10 y + x)."""
    g, y, x = np.meshgrid(np.arange(max(visual_frames, flow_frames)), np.arange(4), np.arange(5), indexing="ij")
    visual = np.stack([g, y, x], -1)[:visual_frames].astype(np.uint8)
    flow = np.stack([10 * g + x, 100 + 10 * y + x], -1)[:flow_frames].astype(np.uint8)
    return visual, flow


def ucf_batch(visual_counts, flow_counts) -> dict:
    def starts(counts):
        return torch.tensor(np.concatenate([[0], np.cumsum(counts)[:-1]]), dtype=torch.long)

    return {"label": torch.zeros(len(visual_counts), dtype=torch.long),
            "_visual_start": starts(visual_counts), "_visual_count": torch.tensor(visual_counts),
            "_flow_start": starts(flow_counts), "_flow_count": torch.tensor(flow_counts)}


def test_ucf101_evaluation_picks_segment_middles_from_file_num_for_rgb_and_the_clips_frames_for_flow():
    # RGB segments come from rgb_file_num (6) whatever the clip holds: a 4-frame clip gives 0, 2, 3 (clamped), not the
    # 0, 1, 2 of its own count; flow segments from the clip's count, seg >= 1: 2 frames give 0, 1, 1 and 3 give 0, 1, 2.
    visual_counts, flow_counts = [6, 6, 4, 6], [9, 2, 3, 5]
    visual, flow = ucf_stores(sum(visual_counts), sum(flow_counts))
    mean, std = [0.5, 0.25, 0.125], [2.0, 4.0, 0.5]
    out = UCFAugment(ucf_hp(mean=mean, std=std), visual, flow)(ucf_batch(visual_counts, flow_counts),
                                                               torch.Generator().manual_seed(0), False)
    assert out["visual"].shape == (4, 3, 3, 4, 5) and out["flow"].shape == (4, 2, 3, 4, 5)
    picks = {"visual": ([0, 2, 4], [6, 8, 10], [12, 14, 15], [16, 18, 20]),
             "flow": ([0, 3, 6], [9, 10, 10], [11, 12, 13], [14, 15, 16])}
    for i in range(4):
        want = torch.from_numpy(visual[picks["visual"][i]]).permute(3, 0, 1, 2).float() / 255.0
        want = (want - torch.tensor(mean).view(3, 1, 1, 1)) / torch.tensor(std).view(3, 1, 1, 1)
        torch.testing.assert_close(out["visual"][i], want, rtol=1e-6, atol=1e-6, msg=f"visual of clip {i}")
        want = torch.from_numpy(flow[picks["flow"][i]]).permute(3, 0, 1, 2).float() / 255.0
        torch.testing.assert_close(out["flow"][i], want, rtol=1e-6, atol=1e-7, msg=f"flow of clip {i}")


def test_bb_segment_rule_for_pools_under_six():
    for pool, evaluation in ((2, [0, 1, 1]), (3, [0, 1, 2]), (5, [0, 1, 2]), (7, [0, 2, 4])):
        n = torch.tensor([pool])
        assert bb_offsets(n, n, False, None).tolist() == [evaluation], f"{pool} frames"
    five, two = torch.tensor([5] * 20), torch.tensor([2] * 20)
    assert (bb_offsets(five, five, True, torch.Generator().manual_seed(0)) == torch.tensor([0, 1, 2])).all(), \
        "seg 1: randint(i + 1, i + 1)"
    assert (bb_offsets(two, two, True, torch.Generator().manual_seed(0)) == torch.tensor([0, 1, 1])).all()


def test_ucf101_training_flips_each_frame_on_its_own_and_flow_u_and_v_together():
    visual, flow = ucf_stores(6, 9)
    out = UCFAugment(ucf_hp(mean=[0.0] * 3, std=[1.0] * 3), visual, flow)(
        ucf_batch([6] * 64, [9] * 64) | {"_visual_start": torch.zeros(64, dtype=torch.long),
                                         "_flow_start": torch.zeros(64, dtype=torch.long)},
        torch.Generator().manual_seed(0), True)
    flips = {"visual": [], "flow": []}
    for i in range(64):
        for k in range(3):
            served = (out["visual"][i, :, k] * 255).round().to(torch.uint8)
            g = int(served[0, 0, 0])
            assert 2 * k <= g <= 2 * k + 1, "RGB frame from its segment of 6"
            flipped = bool(served[2, 0, 0] == 4)
            want = torch.from_numpy(visual[g]).permute(2, 0, 1)
            assert torch.equal(served, want.flip(-1) if flipped else want)
            flips["visual"].append(flipped)
            served = (out["flow"][i, :, k] * 255).round().to(torch.uint8)
            g = int(served[0, 0, 0]) // 10
            assert 3 * k <= g <= 3 * k + 2, "flow frame from its segment of 9"
            flipped = bool(served[1, 0, 0] % 10 == 4)
            want = torch.from_numpy(flow[g]).permute(2, 0, 1)
            assert torch.equal(served, want.flip(-1) if flipped else want), "u and v flipped together"
            flips["flow"].append(flipped)
    for name, seen in flips.items():
        per_clip = np.asarray(seen).reshape(64, 3)
        assert 0.3 < per_clip.mean() < 0.7 and (per_clip.min(1) != per_clip.max(1)).any(), f"{name}: per frame"
    plain = UCFAugment(ucf_hp(flip=False), visual, flow)(ucf_batch([6] * 8, [9] * 8) | {
        "_visual_start": torch.zeros(8, dtype=torch.long), "_flow_start": torch.zeros(8, dtype=torch.long)},
        torch.Generator().manual_seed(0), True)
    assert (plain["flow"][:, 1, :, 0, 0] < plain["flow"][:, 1, :, 0, -1]).all(), "flip=False: no frame mirrored"


def test_ucf101_rgb_from_videos_keeps_the_first_frame_of_each_second_up_to_rgb_frames(tmp_path):
    # 16 frames at 2 fps: 8 seconds whose first frames are 0, 2, .., 14; the first 6 are kept.
    tree = make_ucf101(tmp_path / "raw", per_class={"train": 1, "test": 1})
    for split in ("train", "test"):
        for clip in tree.ids[split]:
            folder, name = clip.split("/")
            write_avi(tree.root / "UCF-101" / folder / f"{name}.avi", 16, green=50, size=(12, 16), fps=2)
            shutil.rmtree(tree.root / "ucf101-frames-1fps" / "video-set" / name)
    cache = open_cache(prepare(UCF101, tree.root, tmp_path / "cache", PrepareOptions(val_fraction=0.0),
                               {"frame_size": 16, "rgb_source": "video"}, log=quiet))
    assert (cache.counts["visual"] == 6).all()
    first = cache.starts["visual"][0]
    assert [int(v) for v in cache.arrays["visual"][first:first + 6, 4, 4, 0]] == [frame_level(k)
                                                                                 for k in range(0, 12, 2)]
    assert any("decoded from the videos" in d for d in cache.manifest["deviations"])


def test_ucf101_clip_name_is_the_basename_before_its_first_dot():
    row = SplitRow("Archery/v_Archery_g01_c01.part", "Archery", 1, ("Archery/v_Archery_g01_c01.part.avi", "1"))
    assert clip_name(row) == "v_Archery_g01_c01"


def test_ucf101_classind_order_follows_the_numbers_not_the_lines(tmp_path):
    lists = tmp_path / "lists"
    write_lines(lists / "classInd.txt", ["2 Archery", "3 Basketball", "1 Zumba"], "\r\n")
    write_lines(lists / "trainlist01.txt", ["Zumba/v_Zumba_g01_c01.avi 1", "Archery/v_Archery_g01_c01.avi 2"], "\r\n")
    write_lines(lists / "testlist01.txt", ["Basketball/v_Basketball_g02_c01.avi"], "\r\n")
    files = {name: lists / name for name in ("classInd.txt", "trainlist01.txt", "testlist01.txt")}
    tables = UCF101.read_splits(files, tmp_path, PrepareOptions(label_order="classind"), SimpleNamespace(split=1))
    assert tables.classes == ("Zumba", "Archery", "Basketball")
    assert [s.label for s in tables.splits["train"]] == [0, 1] and tables.splits["test"][0].label == 2
    by_name = UCF101.read_splits(files, tmp_path, PrepareOptions(label_order="sorted"), SimpleNamespace(split=1))
    assert by_name.classes == ("Archery", "Basketball", "Zumba")


@pytest.mark.parametrize("empty, kind, message", [
    ("visual", "too few frames", "no RGB frame"),
    ("flow", "flow u/v mismatch", r"0 u and 0 v flow frames"),
])
def test_ucf101_an_empty_frame_folder_is_a_bad_item(tmp_path, empty, kind, message):
    tree = make_ucf101(tmp_path / "raw", per_class={"train": 1})
    name = tree.ids["train"][0].split("/")[1]
    media = {"visual": f"ucf101-frames-1fps/video-set/{name}", "flow_u": f"u/{name}", "flow_v": f"v/{name}"}
    for role, rel in media.items():
        if role.startswith(empty):
            for frame in (tree.root / rel).iterdir():
                frame.unlink()
    settings = SimpleNamespace(frame_size=16, rgb_source="frames", rgb_frames=6, flow_max_frames=0)
    with pytest.raises(MediaError, match=message) as err:
        UCF101.load(tree.root, Record(0, None, media), settings)
    assert err.value.kind == kind and name in err.value.path


# --- CMU-MOSEI ---------------------------------------------------------------------------------------------------


def mosei_settings(**overrides) -> SimpleNamespace:
    return SimpleNamespace(**{"aligned": False, "acc2": "zero_positive", "feature_dtype": "float16", **overrides})


def rewrite(path: Path, change) -> None:
    with path.open("rb") as f:
        doc = pickle.load(f)
    change(doc)
    with path.open("wb") as f:
        pickle.dump(doc, f, protocol=4)


def test_mosei_valid_is_the_validation_split_and_test_the_test_split(tmp_path):
    tree = make_mosei(tmp_path, sizes={"train": 5, "valid": 3, "test": 4})
    rewrite(tree.extra["path"], lambda doc: doc["test"].pop("id"))
    tables = Mosei.read_splits({}, tmp_path, PrepareOptions(), mosei_settings())
    assert {s: len(v) for s, v in tables.splits.items()} == {"train": 5, "val": 3, "test": 4}
    val, test = tables.splits["val"], tables.splits["test"]
    assert [s.id for s in val] == ["val-00000", "val-00001", "val-00002"] and val[2].where.endswith(":valid[2]")
    assert [s.label for s in test] == [0, 0, 1, 1] and test[3].where == "mosei_senti_data_noalign.pkl:test[3]"
    assert [s.speaker for s in val] == ["vid0", "vid1", "vid2"] and {s.speaker for s in test} == {""}, "no id: none"


def test_mosei_aligned_recipe_reads_the_aligned_pickle(tmp_path):
    make_mosei(tmp_path, sizes={"train": 2, "valid": 1, "test": 1}, aligned=True)
    tables = Mosei.read_splits({}, tmp_path, PrepareOptions(), mosei_settings(aligned=True))
    assert tables.info["pickle"] == "mosei_senti_data.pkl" and len(tables.splits["train"]) == 2
    with pytest.raises(SplitParseError, match="mosei_senti_data_noalign.pkl not found"):
        Mosei.read_splits({}, tmp_path, PrepareOptions(), mosei_settings())


def test_mosei_a_non_finite_label_is_a_bad_item_not_a_negative(tmp_path):
    tree = make_mosei(tmp_path, sizes={"train": 5, "valid": 1, "test": 1})

    def damage(doc):
        doc["train"]["labels"][3, 0, 0] = np.nan

    rewrite(tree.extra["path"], damage)
    tables = Mosei.read_splits({}, tmp_path, PrepareOptions(), mosei_settings())
    assert [s.id for s in tables.splits["train"]] == ["train-00000", "train-00001", "train-00002", "train-00004"]
    [dropped] = tables.dropped
    assert (dropped.id, dropped.kind, dropped.bad, dropped.where) == (
        "train-00003", "bad label", True, "mosei_senti_data_noalign.pkl:train[3]")


def test_mosei_features_beyond_float16_are_a_bad_item_that_float32_keeps(tmp_path):
    tree = make_mosei(tmp_path, sizes={"train": 3, "valid": 1, "test": 1})

    def damage(doc):
        doc["train"]["vision"][1, 2, 3] = 1e5

    rewrite(tree.extra["path"], damage)
    record = Record(0, None, {"features": tree.extra["path"].name}, {"key": "train", "index": 1})
    with pytest.raises(MediaError, match=r"train/vision\[1\] exceeds float16; prepare with feature_dtype=float32") \
            as err:
        Mosei.load(tmp_path, record, mosei_settings())
    assert err.value.kind == "feature overflow"
    arrays, _ = Mosei.load(tmp_path, record, mosei_settings(feature_dtype="float32"))
    assert arrays["visual"].dtype == np.float32 and arrays["visual"][2, 3] == 1e5


@pytest.mark.parametrize("damage, message", [
    (lambda doc: doc.clear() or doc.update(train=[1, 2]), "expected a dict with keys"),
    (lambda doc: doc.pop("valid"), r"missing split\(s\) \['valid'\]; it has \['test', 'train'\]"),
    (lambda doc: doc["test"].pop("text"), r"split 'test' lacks \['text'\]"),
    (lambda doc: doc["valid"].update(audio=doc["valid"]["audio"][:, 0]), r"valid/audio should be \(N, L, D\)"),
])
def test_a_mosei_pickle_of_the_wrong_structure_names_the_split_and_key(tmp_path, damage, message):
    tree = make_mosei(tmp_path, sizes={"train": 3, "valid": 2, "test": 2})
    if "expected a dict" in message:
        with tree.extra["path"].open("wb") as f:
            pickle.dump([1, 2], f, protocol=4)
    else:
        rewrite(tree.extra["path"], damage)
    with pytest.raises(SplitParseError, match=message):
        Mosei.read_splits({}, tmp_path, PrepareOptions(), mosei_settings())


def test_mosei_pickle_is_read_again_when_the_file_changes(tmp_path):
    tree = make_mosei(tmp_path, sizes={"train": 3, "valid": 1, "test": 1})
    path = tree.extra["path"]
    assert len(read_feature_pickle(str(path))["train"]["labels"]) == 3
    make_mosei(tmp_path, sizes={"train": 4, "valid": 1, "test": 1})
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert len(read_feature_pickle(str(path))["train"]["labels"]) == 4


def test_mosei_exclude_zero_counts_the_zeros_of_every_split_in_the_manifest_info(tmp_path):
    make_mosei(tmp_path, sizes={"train": 5, "valid": 3, "test": 4})  # labels -2, -0.5, 0, 0.5, 2, ...: one 0 each
    tables = Mosei.read_splits({}, tmp_path, PrepareOptions(), mosei_settings(acc2="exclude_zero"))
    assert tables.info["zero_labels_dropped"] == 3 and tables.info["acc2"] == "exclude_zero"
    assert {s: len(v) for s, v in tables.splits.items()} == {"train": 4, "val": 2, "test": 3}
    assert {d.id for d in tables.dropped} == {"train-00002", "val-00002", "test-00002"}
    assert not any(d.bad for d in tables.dropped), "dropped by policy, not bad items"
