"""NVGesture, UCF-101 and CMU-MOSEI beyond tests/test_more_datasets.py: frame windows and flow reading at prepare,
the crops, windows, flips and frame picks of serving (on position-coded tensors, so a wrong axis or offset shows), and
the MOSEI pickle's splits, recipes and checks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from core.hparams import resolve
from datasets.cache import open_cache
from datasets.media import MediaError
from datasets.nvgesture import NVGesture, read_clip, read_flow
from datasets.prepare import prepare
from datasets.prepared import Record
from datasets.tables import PrepareOptions
from tests.more_fixtures import frame_level, make_nvgesture, write_lines

NV_SETTINGS = {"frames": 8, "frame_size": 20}


def quiet(_: str) -> None:
    pass


def nv_hp(**overrides):
    return resolve("data", NVGesture.HPARAMS, "nvgesture", overrides)


def write_coloured_avi(path: Path, frames: int, size: tuple[int, int] = (24, 32)) -> None:
    """Lossless FFV1 AVI whose frame k has red ``frame_level(k)`` and blue ``frame_level(k) + 5`` (depth reads blue)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=30)
        stream.height, stream.width = size
        stream.pix_fmt = "bgr0"
        for k in range(frames):
            img = np.zeros((*size, 3), dtype=np.uint8)
            img[..., 0], img[..., 2] = frame_level(k), frame_level(k) + 5
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


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
    import av
    from PIL import Image

    path = tmp_path / "sk_color.avi"
    ramp = np.zeros((4, 8, 3), dtype=np.uint8)
    ramp[..., 0] = np.arange(8) * 30
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=30)
        stream.height, stream.width, stream.pix_fmt = 4, 8, "bgr0"
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(ramp, format="rgb24")), *stream.encode()]:
            out.mux(packet)
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
