"""The speed paths of the data pipeline and the benchmarks: the fast crop filter against torchvision, resident
arrays, kept evaluation views, the background prefetch, host-side batch notes, the compile knob, and
``augbench bench data|step|epoch`` writing JSON + Markdown. Nothing here times anything."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from baselines.networks import compile_encoders
from benchmarks import bench_data
from benchmarks.cli import main
from benchmarks.config import build_config
from benchmarks.runner import build_data, build_method
from core.data import BatchLoader
from core.hparams import resolve
from datasets import augment
from datasets.augment import (
    AVAugment,
    CacheArrays,
    EvalViews,
    crop_boxes,
    normalize_into,
    normalized_views_compiled,
    normalized_views_into,
    resize,
    resize_uint8,
    resized_crop,
    resized_crop_fast,
    resized_crop_pil,
)
from datasets.cremad import CremaD
from datasets.prepare import prepare
from datasets.tables import PrepareOptions
from tests.conftest import TINY_DATA, TINY_MODEL
from tests.media_fixtures import make_cremad
from tests.numeric import approx64

SIZE = 16


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_cremad(tmp_path_factory.mktemp("cremad") / "raw", seconds=(1.3, 2.5, 3.2, 4.1))


@pytest.fixture(scope="module")
def cache_path(tree, tmp_path_factory):
    opts = PrepareOptions(recipe="ogm", splits_dir=tree.splits_dir, frame_size=(24, 32), shard_size=8)
    return prepare(CremaD, tree.root, tmp_path_factory.mktemp("cache"), opts, log=lambda s: None)


def bundle(cache_path, **data):
    hp = resolve("data", CremaD.HPARAMS, "cremad", {"cache": str(cache_path), "image_size": SIZE, "frames": 2,
                                                     **data})
    return CremaD.build(hp)


def epoch(data, split: str, train: bool, seed: int = 3, number: int = 0, batch_size: int = 4) -> list[dict]:
    loader = data.loader(split, batch_size=batch_size, train=train, seed=seed)
    loader.set_epoch(number)
    return list(loader)


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for key in x:
            assert torch.equal(x[key], y[key]), key


def smooth_images(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 3, 8, 10), generator=g) * 255
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 255)


def torchvision_crops(images: torch.Tensor, boxes: torch.Tensor, size: int, antialias: bool = True) -> torch.Tensor:
    from torchvision.transforms import functional as TF

    return torch.stack([TF.resized_crop(img, *box.tolist(), [size, size], antialias=antialias)
                        for img, box in zip(images, boxes)])


# --- the fast crop filter ---------------------------------------------------------------------------------------

def test_fast_crop_is_bilinear_inside_enlarged_crops_and_exact_for_identity():
    images = smooth_images(4, 64, 85, seed=0)
    out = resized_crop_fast(images, torch.tensor([[10, 12, 30, 40]] * 4), 56)
    ref = torchvision_crops(images, torch.tensor([[10, 12, 30, 40]] * 4), 56)
    # Enlarging is plain bilinear at the same pixel centres; only the border pixels differ, where PIL renormalises
    # its filter inside the crop and roi_align reads the pixels just outside it.
    torch.testing.assert_close(out[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2], atol=1e-3, rtol=0)
    assert (out - ref).abs().max() > 0.1, "the border difference is real (documented deviation)"
    same = resized_crop_fast(images[:, :, :56, :56].contiguous(), torch.tensor([[0, 0, 56, 56]] * 4), 56)
    torch.testing.assert_close(same, images[:, :, :56, :56], atol=1e-4, rtol=0)


def test_fast_crop_stays_within_the_documented_bound_of_torchvision_resized_crop():
    """CREMA-D geometry (stored 256x341 served 224, scaled down 4x): crops shrink by up to 1.52x."""
    images = smooth_images(48, 64, 85, seed=1)
    boxes = crop_boxes(48, 64, 85, torch.Generator().manual_seed(1))
    diff = (resized_crop_fast(images, boxes, 56) - torchvision_crops(images, boxes, 56)).abs()
    assert diff.mean() < 0.5, "mean |difference| under half a grey level (of 255)"
    assert torch.quantile(diff.flatten(), 0.99) < 4.0
    exact = (resized_crop(images, boxes, 56) - torchvision_crops(images, boxes, 56)).abs()
    assert exact.max() < 1e-2, "data.resample=exact keeps torchvision's values"


@pytest.mark.parametrize("size", [37, 45])
def test_fast_crop_filters_when_shrinking_instead_of_aliasing(size):
    """Shrinking noise 1.7x and 1.4x: area-averaged sub-samples stay much closer to the antialiased reference than
    plain bilinear sampling, which aliases."""
    noise = torch.rand((16, 3, 64, 64), generator=torch.Generator().manual_seed(2)) * 255
    boxes = torch.tensor([[0, 0, 64, 64]] * 16)
    ref = torchvision_crops(noise, boxes, size)
    fast = (resized_crop_fast(noise, boxes, size) - ref).abs().mean()
    aliased = (torchvision_crops(noise, boxes, size, antialias=False) - ref).abs().mean()
    assert fast < 0.5 * aliased


def test_fast_and_exact_paths_serve_the_same_draws(cache_path):
    """Only the filter differs: the same frames, boxes and flips (uniform test frames make the filters agree)."""
    fast = epoch(bundle(cache_path, resample="fast"), "train", True)
    exact = epoch(bundle(cache_path, resample="exact"), "train", True)
    for a, b in zip(fast, exact):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["audio"], b["audio"])
        torch.testing.assert_close(a["visual"], b["visual"], atol=2e-3, rtol=0)


def draws(seed: int, n: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The boxes and flips AVAugment draws for ``first_k`` frames (which draw nothing) from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    boxes = crop_boxes(n, height, width, g)
    return boxes, torch.rand(n, generator=g) < augment.FLIP_PROB


def crops_by(resample: str, frames: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Float [0, 255] (N, 3, S, S) crops of uint8 (N, H, W, 3) ``frames`` by each filter's own function."""
    if resample == "pil":
        return resized_crop_pil(frames, torch.arange(len(frames)), boxes, SIZE).permute(0, 3, 1, 2).float()
    crop = resized_crop_fast if resample == "fast" else resized_crop
    return crop(frames.permute(0, 3, 1, 2).float(), boxes, SIZE)


def test_frames_are_read_in_the_order_asked_for():
    frames = torch.randint(0, 256, (5, 4, 6, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(8))
    aug = AVAugment(frames.numpy(), num_frames=1, image_size=SIZE)
    for index in ([3, 0, 2], [2, 0, 2], [0, 1, 4]):
        assert torch.equal(aug.read_frames(np.array(index), torch.device("cpu")), frames[index]), index


@pytest.mark.parametrize("resample", ["pil", "fast", "exact"])
def test_training_view_is_the_drawn_crop_flipped_as_drawn_and_normalised(resample):
    frames = smooth_images(2, 24, 32, seed=3).permute(0, 2, 3, 1).round().to(torch.uint8)
    aug = AVAugment(frames.numpy(), num_frames=1, image_size=SIZE, frame_rule="first_k", resample=resample)
    seed = next(s for s in range(100) if draws(s, 2, 24, 32)[1].tolist() == [True, False])
    batch = {"audio": torch.zeros(2, 1, 4, 4, dtype=torch.float16), "label": torch.zeros(2, dtype=torch.int64),
             "_frame_start": torch.tensor([0, 1]), "_frame_count": torch.ones(2, dtype=torch.int64)}
    out = aug(batch, torch.Generator().manual_seed(seed), True)["visual"][:, :, 0]
    boxes, _ = draws(seed, 2, 24, 32)
    crops = augment.normalize(crops_by(resample, frames, boxes))
    # Bit-identical: the same crop, flip and normalisation arithmetic, in whichever order the path runs them.
    torch.testing.assert_close(out[0], crops[0].flip(-1), atol=0, rtol=0)
    torch.testing.assert_close(out[1], crops[1], atol=0, rtol=0)
    assert (crops[0].flip(-1) - crops[0]).abs().max() > 0.1, "the flip is visible on these frames"


# --- evaluation views -------------------------------------------------------------------------------------------

def test_eval_views_are_computed_once_and_equal_the_uint8_resize(monkeypatch):
    frames = torch.randint(0, 256, (10, 24, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    views = EvalViews(frames.numpy(), SIZE, capacity=4)
    calls = []
    real = augment.resize_uint8
    monkeypatch.setattr(augment, "resize_uint8", lambda x, s: calls.append(len(x)) or real(x, s))
    index = np.array([7, 2, 2, 5])
    first = views.take(index)

    def resized(rows):
        return real(frames[torch.from_numpy(rows)], SIZE).permute(0, 3, 1, 2)

    assert calls == [3] and views.used == 3
    assert torch.equal(first, resized(index))
    assert torch.equal(views.take(index), first) and calls == [3], "kept views are not resized again"
    more = np.array([0, 1, 2, 9])
    assert torch.equal(views.take(more), resized(more))
    assert views.used == 4 and calls == [3, 3], "beyond capacity, frames are resized on every use"
    assert torch.equal(views.take(more, out=torch.empty(4, 3, SIZE, SIZE, dtype=torch.uint8)), resized(more))
    assert calls[-1] == 2
    # The uint8 kernel is the float antialiased resize rounded, as PIL rounds each resized frame.
    as_float = resize(frames.permute(0, 3, 1, 2).float(), SIZE).permute(0, 2, 3, 1)
    assert (resize_uint8(frames, SIZE).float() - as_float).abs().max() <= 1.01


def test_eval_views_keep_at_most_the_frames_there_are_and_serve_unkept_repeats_in_order():
    frames = torch.randint(0, 256, (10, 24, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))

    def resized(rows):
        return resize_uint8(frames[torch.from_numpy(rows)], SIZE).permute(0, 3, 1, 2)

    roomy = EvalViews(frames.numpy(), SIZE, capacity=10**6)
    assert torch.equal(roomy.take(np.arange(10)), resized(np.arange(10)))
    assert roomy.used == 10 and roomy.table.shape[0] == 10, "the table is no larger than the frames"
    none = EvalViews(frames.numpy(), SIZE, capacity=-1)
    index = np.array([9, 1, 9, 4])
    assert torch.equal(none.take(index), resized(index))
    assert none.table is None and none.used == 0 and none.kept_slots(index) is None


def test_frames_stored_at_the_served_size_are_served_as_they_are():
    frames = torch.randint(0, 256, (10, SIZE, SIZE, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
    views = EvalViews(frames.numpy(), SIZE, capacity=10)
    index = np.array([7, 2, 2, 5])
    assert torch.equal(views.take(index), frames[torch.from_numpy(index)].permute(0, 3, 1, 2))
    assert views.table is None and views.kept_slots(index) is None, "nothing to keep: the frames are the views"
    aug = AVAugment(frames.numpy(), num_frames=2, image_size=SIZE, frame_rule="first_k", eval_cache_frames=10)
    batch = {"audio": torch.zeros(2, 1, 2, 2, dtype=torch.float16), "label": torch.zeros(2, dtype=torch.int64),
             "_frame_start": torch.tensor([7, 2]), "_frame_count": torch.tensor([2, 3])}
    visual = aug(batch, torch.Generator().manual_seed(0), False)["visual"]
    expected = augment.normalize(frames[[7, 8, 2, 3]].permute(0, 3, 1, 2).float())
    torch.testing.assert_close(visual, expected.view(2, 2, 3, SIZE, SIZE).transpose(1, 2), atol=0, rtol=0)


def test_kept_evaluation_views_normalised_one_at_a_time_equal_the_batch_conversion(cache_path):
    frames = torch.randint(0, 256, (10, 24, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    views = EvalViews(frames.numpy(), SIZE, capacity=8)
    index = np.array([7, 2, 2, 5, 0, 1])
    assert views.kept_slots(index) is None, "nothing is kept yet"
    gathered = views.take(index)
    slots = views.kept_slots(index)
    assert slots is not None and views.kept_slots(np.array([7, 9])) is None, "frame 9 is not kept"
    batch = normalize_into(torch.empty(3, 3, 2, SIZE, SIZE), gathered.view(3, 2, 3, SIZE, SIZE).transpose(1, 2))
    one_by_one = normalized_views_into(torch.full((3, 3, 2, SIZE, SIZE), float("nan")), views.table, slots)
    assert torch.equal(one_by_one, batch)
    # Through the loader: the kept-view path serves the batches of the gather + batch conversion path.
    data = bundle(cache_path)
    first = epoch(data, "test", False)
    assert data.augment.eval_views.used > 0
    assert_same_batches(first, epoch(data, "test", False, number=1))


def test_evaluation_batches_are_a_gather_after_the_first_pass(cache_path, monkeypatch):
    data = bundle(cache_path)
    first = epoch(data, "test", False)
    monkeypatch.setattr(augment, "resize_uint8", lambda *a: pytest.fail("a kept view was resized again"))
    assert_same_batches(first, epoch(data, "test", False, number=5))
    no_views = bundle(cache_path, eval_cache_mb=0)
    monkeypatch.undo()
    assert_same_batches(first, epoch(no_views, "test", False))


def test_compiled_test_views_are_bit_identical_to_the_eager_path(cache_path, monkeypatch):
    frames = torch.randint(0, 256, (12, 24, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    views = EvalViews(frames.numpy(), SIZE, capacity=12)
    views.take(np.arange(12))
    for slots in (np.array([7, 2, 2, 5, 0, 11]), np.array([3, 3])):  # two batch sizes: one compiled kernel
        shape = (len(slots) // 2, 3, 2, SIZE, SIZE)
        eager = normalized_views_into(torch.empty(shape), views.table, slots)
        fused = normalized_views_compiled(torch.full(shape, float("nan")), views.table, slots)
        assert torch.equal(fused, eager)
    # Through the loader: the knob serves the same batches, and its kernel is what served the kept views.
    served = []
    monkeypatch.setattr(augment, "normalized_views_compiled",
                        lambda *a: served.append(len(a[2])) or normalized_views_compiled(*a))
    eager_data, compiled_data = bundle(cache_path), bundle(cache_path, compile_views=True)
    first = epoch(eager_data, "test", False)
    assert_same_batches(first, epoch(compiled_data, "test", False))
    assert not served, "the first pass resizes the views; nothing is kept yet"
    assert_same_batches(first, epoch(compiled_data, "test", False, number=1))
    assert sum(served) == sum(len(b["label"]) for b in first) * 2, "every kept view (T=2 per clip) went through it"


def test_compiled_test_views_without_a_compiler_say_how_to_do_without(monkeypatch):
    def no_compiler(*args):
        raise torch._dynamo.exc.BackendCompilerFailed(None, OSError("no C++ compiler"), None)

    monkeypatch.setattr(augment, "_compiled_views_kernel", lambda: no_compiler)
    table = torch.zeros((2, 3, SIZE, SIZE), dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="data.compile_views=false"):
        normalized_views_compiled(torch.empty(1, 3, 1, SIZE, SIZE), table, np.array([1]))


# --- resident arrays --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["memory", "device", "auto"])
def test_resident_modes_serve_the_batches_of_the_memory_map(cache_path, mode):
    mapped, resident = bundle(cache_path, resident="none"), bundle(cache_path, resident=mode)
    for split, train in (("train", True), ("test", False)):
        assert_same_batches(epoch(mapped, split, train), epoch(resident, split, train))


def test_device_residency_gathers_from_the_device_copy(cache_path):
    data = bundle(cache_path, resident="device")
    first = epoch(data, "train", True)
    arrays: CacheArrays = data.augment.arrays
    assert set(arrays.resident_on(torch.device("cpu"))) == {"audio", "frames"}

    class Untouchable:
        def __getitem__(self, item):
            raise AssertionError("the memory map was read after the arrays became resident")

    arrays.host = {name: Untouchable() for name in arrays.host}
    assert_same_batches(first, epoch(data, "train", True))


def test_resident_modes_and_knobs_are_validated(cache_path):
    with pytest.raises(ValueError, match="data.resident"):
        CacheArrays({}, "gpu")
    with pytest.raises(ValueError, match="data.resample"):
        AVAugment(np.zeros((1, 2, 2, 3), np.uint8), num_frames=1, image_size=2, resample="bicubic")
    with pytest.raises(ValueError, match="prefetch"):
        bundle(cache_path, prefetch=-1)


def test_gather_hands_only_host_notes_and_audio_is_converted_after_transfer(cache_path):
    data = bundle(cache_path)
    notes = data.gather(data.splits["train"][:3])
    assert set(notes) == {"_rows", "_frame_start", "_frame_count"}
    batch = next(iter(data.loader("train", batch_size=3, train=False, seed=0)))
    assert set(batch) == {"audio", "visual", "label", "index"} and batch["audio"].dtype == torch.float32


def test_underscore_keys_stay_on_the_host():
    seen = {}

    def gather(rows):
        return {"x": torch.from_numpy(rows.astype(np.float32)), "_note": torch.from_numpy(rows)}

    def look(batch, generator, train):
        seen.update({k: v.device.type for k, v in batch.items()})
        batch.pop("_note")
        return batch

    loader = BatchLoader(np.arange(6), np.zeros(6), gather, batch_size=3, train=False, seed=0, device="meta",
                         augment=look)
    batch = next(iter(loader))
    assert seen == {"x": "meta", "_note": "cpu", "label": "meta", "index": "meta"} and "_note" not in batch


# --- prefetch ---------------------------------------------------------------------------------------------------

def test_prefetch_serves_the_single_thread_sequence(cache_path):
    plain, ahead = bundle(cache_path), bundle(cache_path, prefetch=2)
    for number in (0, 1):
        assert_same_batches(epoch(plain, "train", True, number=number), epoch(ahead, "train", True, number=number))
    assert_same_batches(epoch(plain, "test", False), epoch(ahead, "test", False))


def test_prefetch_stops_when_the_loop_breaks_and_reraises_errors():
    def gather(rows):
        if rows[0] >= 60:
            raise OSError(f"row {rows[0]} unreadable")
        return {"x": torch.from_numpy(rows.astype(np.float32))}

    loader = BatchLoader(np.arange(100), np.zeros(100), gather, batch_size=10, train=False, seed=0, prefetch=3)
    before = threading.active_count()
    for i, _ in enumerate(loader):
        if i == 1:
            break
    assert threading.active_count() == before, "the producer thread ended with the loop"
    with pytest.raises(OSError, match="row 60 unreadable"):
        list(loader)
    assert threading.active_count() == before
    assert [b["index"][0].item() for b in BatchLoader(np.arange(30), np.zeros(30), gather, batch_size=10,
                                                       train=False, seed=0, prefetch=1)] == [0, 10, 20]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_resident_prefetched_batches_on_cuda_equal_the_cpu_ones(cache_path):
    cpu = bundle(cache_path)
    cuda = bundle(cache_path, resident="device", prefetch=2)
    for split, train in (("train", True), ("test", False)):
        a = epoch(cpu, split, train)
        b = [{k: v.cpu() for k, v in batch.items()} for batch in
             cuda.loader(split, batch_size=4, train=train, seed=3, device="cuda")]
        for x, y in zip(a, b):
            for key in x:
                # The pil crop runs in float32 + rounding on CUDA: within one grey level of the CPU's uint8 kernel.
                atol = 1 / (255 * 0.224) + 1e-4 if key == "visual" and train else 1e-3
                torch.testing.assert_close(y[key], x[key], atol=atol, rtol=1e-4)


# --- compile knob -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "expected"), [("joint", ["model.encoders.audio", "model.encoders.visual"]),
                                                  ("aug", ["encoders.audio", "encoders.visual"])])
def test_train_compile_compiles_the_encoders_in_place(method, expected):
    cfg = build_config(method, "synthetic", {"model": TINY_MODEL, "data": TINY_DATA, "train": {"compile": True}})
    built = build_method(cfg, build_data(cfg), torch.device("cpu"))
    keys = list(built.state_dict())
    assert compile_encoders(built) == expected, "the runner compiled them already; a second call keeps them"
    modules = dict(built.named_modules())
    assert all(modules[name]._compiled_call_impl is not None for name in expected)
    assert list(built.state_dict()) == keys and not any("_orig_mod" in k for k in keys)
    plain = build_method(build_config(method, "synthetic", {"model": TINY_MODEL, "data": TINY_DATA}),
                         build_data(cfg), torch.device("cpu"))
    assert all(dict(plain.named_modules())[name]._compiled_call_impl is None for name in expected)


# --- augbench bench -------------------------------------------------------------------------------------------

def test_bench_data_on_a_prepared_cache_writes_json_and_markdown(cache_path, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "data", "--cache", str(cache_path), "--out", str(out), "--batches", "1", "--rounds", "1",
                 "--batch-size", "2", "--device", "cpu", "--set", "data.resample=exact"]) == 0
    assert not (out / "data-cremad-ogm-cpu.json").exists(), "other serving settings do not replace the defaults'"
    doc = json.loads((out / "data-cremad-ogm-cpu-batch-2-resample-exact.json").read_text())
    train, test = doc["rows"]
    assert (train["train"], test["train"]) == (True, False) and train["resample"] == "exact"
    assert train["timed_samples"] == {"cache": 2, "floor": 2, "host": 2, "media": 2}
    assert train["visual_source"] == "video"
    assert {"crop/resize", "flip", "conversion", "normalisation"} <= set(train["profile_ms_per_sample"])
    assert "crop/resize" not in test["profile_ms_per_sample"], "the test view crops nothing"
    table = (out / "data-cremad-ogm-cpu-batch-2-resample-exact.md").read_text()
    assert "data.resample=exact" in table.splitlines()[0]
    assert table.count("\n| ") == 6 and "train (random crop + flip)" in table and "test (Resize" in table
    assert "Serving profile, ms per sample" in table and "| floor / cache |" in table
    assert "1 extra passes of the cache loader after the timed rounds, as many as there were rounds, each of 1 " \
           "batches" in table


def test_bench_data_profile_is_the_median_of_one_pass_per_round(cache_path, monkeypatch):
    passes = iter([{"audio": 1.0, "python overhead": 0.3}, {"audio": 5.0, "python overhead": 0.1},
                   {"audio": 2.0, "python overhead": 0.2}])
    monkeypatch.setattr(bench_data, "_profile", lambda *args: next(passes))
    row = bench_data.benchmark_data(cache_path, batch_size=2, batches=1, rounds=3)
    assert row["profile_ms_per_sample"] == {"audio": 2.0, "python overhead": 0.2}
    assert next(passes, None) is None, "one pass per round"


def test_bench_data_generates_and_reuses_a_jpeg_tree(tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "bench"
    args = ["bench", "data", "--work", str(work), "--preset", "tiny", "--recipe", "ogm", "--out", str(out),
            "--batches", "1", "--rounds", "1", "--batch-size", "2", "--device", "cpu"]
    assert main(args) == 0
    frames = sorted((work / "data" / "AV-Digits" / "Image-01-FPS").iterdir())
    assert frames and sorted(p.name for p in frames[0].iterdir())[:2] == ["00000.jpg", "00030.jpg"]
    # Another tree and batch size than the committed figures': beside them, not over them (the counts of batches and
    # rounds only make a figure more or less precise).
    assert sorted(p.name for p in out.iterdir()) == ["data-cremad-ogm-cpu-preset-tiny-batch-2.json",
                                                     "data-cremad-ogm-cpu-preset-tiny-batch-2.md"]
    doc = json.loads((out / "data-cremad-ogm-cpu-preset-tiny-batch-2.json").read_text())
    assert doc["rows"][0]["visual_source"] == "frames", "the media loader decodes JPEGs, as published"
    assert main(args) == 0
    assert "generating" not in capsys.readouterr().out.split("data loaders")[-1]


def test_bench_data_refuses_a_prefetch_thread_that_would_bill_the_other_loaders(tmp_path, capsys):
    assert main(["bench", "data", "--set", "data.prefetch=2", "--out", str(tmp_path)]) == 2
    assert "data.prefetch runs a background thread" in capsys.readouterr().err


def test_bench_step_and_epoch_write_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "bench"
    tiny = ["--set", "model.width=4", "--set", "model.blocks=[1,1,1,1]", "--set", "data.n_train=32",
            "--set", "data.audio_shape=[1,16,16]", "--set", "data.visual_shape=[3,1,16,16]", "--device", "cpu",
            "--out", str(out)]
    assert main(["bench", "step", "--methods", "aug", "joint", "--repeats", "1", *tiny]) == 0
    # figures of other settings go beside the defaults': the --set values are hashed into the name
    (step,) = out.glob("step-small-cpu-set-*.json")
    rows = json.loads(step.read_text())["rows"]
    assert [r["method"] for r in rows] == ["joint", "aug"] and rows[0]["ratio_to_joint"] == 1.0
    step_md = step.with_suffix(".md").read_text()
    assert rows[1]["ratio_to_joint"] > 0 and "| AUG (`aug`) |" in step_md and "model.width=4" in step_md
    assert f"| {rows[1]['joint_step_s'] * 1e3:.1f} | {rows[1]['ratio_to_joint']:.2f} |" in step_md
    assert len(rows[1]["load_average"]) == 3 and f"load average {rows[1]['load_average']} at the end" in step_md
    assert main(["bench", "epoch", "--amp", "--channels-last", "--epoch-repeats", "1", *tiny]) == 0
    (epoch,) = out.glob("epoch-aug-synthetic-small-cpu-amp-channels_last-set-*.json")
    (row,) = json.loads(epoch.read_text())["rows"]
    assert row["amp"] and row["channels_last"] and row["batches"] == 2 and len(row["load_average"]) == 3
    assert row["epoch_over_model"] == approx64(row["epoch_s"] / row["model_only_s"])
    assert row["step_s"] == approx64(row["epoch_s"] / 2) and row["samples_per_s"] == approx64(32 / row["epoch_s"])
    assert row["projected_cremad_run_s"] is None, "a toy shape's epoch is not projected to a CREMA-D run"
    table = epoch.with_suffix(".md").read_text()
    assert "200 CREMA-D epochs, min" in table and "amp, channels_last" in table and table.endswith("| – |\n")
    assert "| aug | synthetic | width 4, blocks [1, 1, 1, 1] | 2 × 16 |" in table


def test_bench_all_at_the_cremad_shape_times_the_epoch_on_the_measured_cache(tmp_path):
    from benchmarks.cli import build_parser
    from benchmarks.commands.bench import epoch_target

    parse = build_parser("bench").parse_args
    cache = tmp_path / "cache" / "cremad" / "aug-1234"
    measured = ([{"dataset": "cremad"}, {"dataset": "cremad"}], cache)
    assert epoch_target(parse(["bench", "all", "--shape", "cremad"]), measured) == ("cremad", cache)
    # Elsewhere the epoch stays on --dataset / --cache: the CPU default, an explicit dataset, epoch alone.
    assert epoch_target(parse(["bench", "all"]), measured) == ("synthetic", None)
    assert epoch_target(parse(["bench", "all", "--shape", "cremad", "--dataset", "ks"]), measured) == ("ks", None)
    assert epoch_target(parse(["bench", "epoch", "--shape", "cremad"]), None) == ("synthetic", None)


def test_bench_epoch_on_a_cache_is_filed_under_the_recipe_the_cache_was_built_with(cache_path, tmp_path):
    # The fixture's cache is an `ogm` one; the config's data.recipe stays CREMA-D's default `aug`, which the name
    # took, so an ogm cache's figures replaced an aug cache's.
    out = tmp_path / "bench"
    tiny = ["--set", "model.width=4", "--set", "model.blocks=[1,1,1,1]", "--set", "data.image_size=16",
            "--set", "data.frames=1", "--set", "train.batch_size=4"]
    assert main(["bench", "epoch", "--dataset", "cremad", "--cache", str(cache_path), "--epoch-method", "joint",
                 "--epoch-repeats", "1", "--device", "cpu", "--out", str(out), *tiny]) == 0
    (epoch,) = out.glob("epoch-*.json")
    assert epoch.name.startswith("epoch-joint-cremad-ogm-cpu-set-"), epoch.name
    (row,) = json.loads(epoch.read_text())["rows"]
    assert row["recipe"] == "ogm" and "| joint | cremad (recipe ogm) |" in epoch.with_suffix(".md").read_text()
