"""The serving fast paths: the uint8 ``pil`` crop filter against PIL, its float (CUDA) branch, reused batch buffers
(``BufferRing``) that never overwrite a batch the caller keeps, the GPU path's host gather run on a CPU, and
``resident=auto`` loading the cache into RAM. Nothing here times anything."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.hparams import resolve
from datasets import augment, ram_copies
from datasets.augment import (
    AVAugment,
    BufferRing,
    crop_boxes,
    normalize_into,
    resized_crop_pil,
    resized_crop_pil_normalized,
)
from datasets.cremad import CremaD
from datasets.prepare import prepare
from datasets.tables import PrepareOptions
from tests.media_fixtures import make_cremad

SIZE = 16
# Normalised values differ by (level difference) / (255 * std); the smallest ImageNet std is 0.224.
ONE_LEVEL = 1.0 / (255 * 0.224) + 1e-6


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    tree = make_cremad(tmp_path_factory.mktemp("cremad") / "raw", seconds=(1.3, 2.5, 3.2, 4.1))
    opts = PrepareOptions(recipe="ogm", splits_dir=tree.splits_dir, frame_size=(24, 32), shard_size=8)
    return prepare(CremaD, tree.root, tmp_path_factory.mktemp("cache"), opts, log=lambda s: None)


def bundle(cache_path, **data):
    hp = resolve("data", CremaD.HPARAMS, "cremad", {"cache": str(cache_path), "image_size": SIZE, "frames": 2,
                                                     **data})
    return CremaD.build(hp)


def frames_and_boxes(kind: str, n: int = 48, height: int = 64, width: int = 85, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if kind == "noise":
        frames = torch.randint(0, 256, (n, height, width, 3), dtype=torch.uint8, generator=g)
    else:
        coarse = torch.rand((n, 3, 8, 10), generator=g) * 255
        frames = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 255)
        frames = frames.round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return frames, crop_boxes(n, height, width, g)


def pil_crops(frames: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """The published pipeline: PIL crop + resize (torchvision's RandomResizedCrop on a PIL image), uint8 NCHW."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    out = [np.asarray(TF.resized_crop(Image.fromarray(f.numpy()), *b.tolist(), [size, size],
                                      interpolation=TF.InterpolationMode.BILINEAR)) for f, b in zip(frames, boxes)]
    return torch.from_numpy(np.stack(out))


# --- the pil filter ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "levels", "share"), [("smooth", 1, 0.03), ("noise", 2, 0.06)])
def test_pil_crop_is_within_the_documented_bound_of_pil(kind, levels, share):
    """CREMA-D geometry scaled down 4x (stored 64x85, served 56): at most 1-2 grey levels off PIL, in few pixels."""
    frames, boxes = frames_and_boxes(kind)
    ours = resized_crop_pil(frames, torch.arange(len(frames)), boxes, 56)
    diff = (ours.int() - pil_crops(frames, boxes, 56).int()).abs()
    assert ours.dtype == torch.uint8 and ours.shape == (48, 56, 56, 3)
    assert diff.max() <= levels and (diff > 0).float().mean() < share


def test_pil_crop_equals_torchs_uint8_resize_of_each_crop_and_flips_after():
    frames, boxes = frames_and_boxes("noise", n=6)
    flip = torch.tensor([True, False, True, False, False, True])
    index = torch.tensor([5, 0, 0, 3, 2, 1])
    out = resized_crop_pil(frames, index, boxes[:6], 20, flip=flip)
    for i, (k, (top, left, h, w)) in enumerate(zip(index.tolist(), boxes[:6].tolist())):
        crop = frames[k, top:top + h, left:left + w].permute(2, 0, 1)[None].contiguous()
        ref = F.interpolate(crop, size=(20, 20), mode="bilinear", align_corners=False, antialias=True)[0]
        ref = ref.permute(1, 2, 0)
        assert torch.equal(out[i], ref.flip(1) if flip[i] else ref)


def test_pil_crop_float_branch_used_on_cuda_is_within_one_level_of_the_integer_kernel():
    frames, boxes = frames_and_boxes("noise")
    integer = resized_crop_pil(frames, torch.arange(48), boxes, 56, integer=True)
    floating = resized_crop_pil(frames, torch.arange(48), boxes, 56, integer=False)
    assert (integer.int() - floating.int()).abs().max() <= 1 and floating.dtype == torch.uint8


def test_pil_crop_float_branch_is_the_float_filter_rounded_and_keeps_white_and_black_frames():
    frames, boxes = frames_and_boxes("noise", n=6)
    frames[0], frames[1] = 255, 0
    floating = resized_crop_pil(frames, torch.arange(6), boxes, 20, integer=False)
    assert bool((floating[0] == 255).all()) and bool((floating[1] == 0).all())
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        crop = frames[i, top:top + h, left:left + w].permute(2, 0, 1)[None].float()
        ref = F.interpolate(crop, size=(20, 20), mode="bilinear", align_corners=False, antialias=True)[0]
        assert torch.equal(floating[i], ref.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0))


def test_cpu_crops_normalised_one_at_a_time_equal_the_batch_conversion():
    """Each crop converted and normalised on its own, straight into the served (B, 3, T, S, S) batch, is bit-identical
    to cropping the whole batch to uint8 and converting it at once (and the flips land on the same crops)."""
    frames, boxes = frames_and_boxes("noise", n=12)
    index = torch.tensor([11, 0, 0, 3, 2, 1, 7, 7, 5, 9, 4, 6])
    flip = torch.rand(12, generator=torch.Generator().manual_seed(1)) < 0.5
    crops = resized_crop_pil(frames, index, boxes, 20, flip=flip)
    batch = normalize_into(torch.empty(4, 3, 3, 20, 20), crops.view(4, 3, 20, 20, 3).permute(0, 4, 1, 2, 3))
    one_by_one = resized_crop_pil_normalized(frames, index, boxes, torch.full((4, 3, 3, 20, 20), float("nan")),
                                             flip=flip)
    assert flip.any() and not flip.all()
    assert torch.equal(one_by_one, batch)


def test_cuda_branches_of_the_training_view_run_on_the_cpu(cache_path):
    """The GPU path gathers the distinct frames into a (pinned) buffer and crops with the float kernel; forced on a
    CPU through the same code, the gather changes nothing and the float kernel stays within one grey level."""
    reference = list(bundle(cache_path).loader("train", batch_size=4, train=True, seed=3))
    data = bundle(cache_path)
    data.augment.crop_in_place = False
    gathered = list(data.loader("train", batch_size=4, train=True, seed=3))
    data.augment.integer_kernel = False
    floating = list(data.loader("train", batch_size=4, train=True, seed=3))
    for a, b, c in zip(reference, gathered, floating, strict=True):
        for key in a:
            assert torch.equal(a[key], b[key]), key
        torch.testing.assert_close(c["visual"], a["visual"], atol=ONE_LEVEL, rtol=0)
        assert torch.equal(c["audio"], a["audio"])


def test_cpu_audio_is_converted_row_by_row_to_the_exact_float_of_the_cached_rows():
    g = torch.Generator().manual_seed(0)
    audio = (torch.randn((9, 5, 7), generator=g) * 30).half().numpy()
    frames = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8, generator=g).numpy()
    aug = AVAugment(frames, num_frames=1, image_size=8, audio=audio)
    rows = torch.tensor([8, 0, 3, 3])

    def serve():
        batch = {"label": torch.zeros(4, dtype=torch.int64), "_rows": rows, "_frame_start": torch.zeros(4),
                 "_frame_count": torch.ones(4, dtype=torch.int64)}
        return aug(batch, torch.Generator().manual_seed(1), False)["audio"]

    first = serve()
    assert first.dtype == torch.float32 and first.shape == (4, 1, 5, 7)
    assert torch.equal(first, torch.from_numpy(audio[rows.numpy()]).float()[:, None])
    ptr = first.data_ptr()
    del first
    assert serve().data_ptr() == ptr, "the served buffer is reused once the batch is dropped"
    # With a time crop the batch is gathered, cut, then converted: the same values of the cut rows.
    aug.audio_frames = 3
    assert torch.equal(serve(), torch.from_numpy(audio[rows.numpy(), :, :3]).float()[:, None])


def test_served_views_are_torchvisions_imagenet_normalisation_of_the_image_in_0_1():
    from torchvision.transforms import functional as TF

    images = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    # The published transforms: ToTensor (x / 255), then Normalize with the ImageNet statistics.
    ref = TF.normalize(images.float() / 255, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    torch.testing.assert_close(augment.normalize(images.float()), ref, atol=1e-5, rtol=0)
    clips = normalize_into(torch.empty(2, 3, 1, 4, 5), images[:, :, None])
    torch.testing.assert_close(clips, ref[:, :, None], atol=1e-5, rtol=0)


def test_training_views_are_flipped_with_probability_one_half():
    # Columns brighten left to right, so any crop of a frame rises across the served view unless it was mirrored.
    ramp = (torch.arange(32, dtype=torch.uint8) * 8).view(1, 1, 32, 1).expand(1, 32, 32, 3).contiguous()
    aug = AVAugment(ramp.numpy(), num_frames=1, image_size=8, frame_rule="first_k")
    n = 400
    batch = {"audio": torch.zeros(n, 1, 2, 2, dtype=torch.float16), "label": torch.zeros(n, dtype=torch.int64),
             "_frame_start": torch.zeros(n, dtype=torch.int64), "_frame_count": torch.ones(n, dtype=torch.int64)}
    visual = aug(batch, torch.Generator().manual_seed(0), True)["visual"][:, 0, 0]
    left, right = visual[..., 0].mean(-1), visual[..., -1].mean(-1)
    assert bool(((left < right) | (left > right)).all()), "every view rises or falls across"
    assert 0.42 < (left > right).double().mean() < 0.58


# --- reused buffers ---------------------------------------------------------------------------------------------

def test_ring_reuses_a_buffer_only_once_nothing_holds_it():
    ring = BufferRing(depth=3)
    first = ring.get("x", (4, 3), torch.float32, torch.device("cpu"))
    ptr = first.data_ptr()
    second = ring.get("x", (4, 3), torch.float32, torch.device("cpu"))
    assert second.data_ptr() != ptr, "a buffer the caller holds is never handed out again"
    view = first[1:]
    del first
    assert ring.get("x", (4, 3), torch.float32, torch.device("cpu")).data_ptr() not in (ptr, second.data_ptr()), \
        "a view keeps the buffer busy"
    del view, second
    assert ring.get("x", (4, 3), torch.float32, torch.device("cpu")).data_ptr() == ptr
    assert ring.get("x", (5, 3), torch.float32, torch.device("cpu")).shape == (5, 3)


def test_a_reused_buffer_is_busy_again_while_its_new_batch_is_held():
    ring = BufferRing()
    cpu = torch.device("cpu")
    first = ring.get("x", (4,), torch.float32, cpu)
    ptr = first.data_ptr()
    del first
    again = ring.get("x", (4,), torch.float32, cpu)
    assert again.data_ptr() == ptr
    assert ring.get("x", (4,), torch.float32, cpu).data_ptr() != ptr, "the reused buffer is held again"
    del again
    assert ring.get("x", (4,), torch.float32, cpu).data_ptr() == ptr


def test_ring_keeps_the_newest_depth_buffers_per_key_and_the_newest_keys():
    cpu = torch.device("cpu")
    ring = BufferRing(depth=2)
    a, b, c = (ring.get("x", (2,), torch.float32, cpu) for _ in range(3))
    assert ring.allocations == 3
    del a
    held = ring.get("x", (2,), torch.float32, cpu)
    assert ring.allocations == 4, "the oldest buffer was forgotten once a third was made"
    del b, held
    ring.get("x", (2,), torch.float32, cpu)
    assert ring.allocations == 4, "the second one is kept"
    ring = BufferRing(keys=2)
    for name in ("x", "y", "z"):
        ring.get(name, (2,), torch.float32, cpu)
    ring.get("z", (2,), torch.float32, cpu)
    assert ring.allocations == 3
    ring.get("x", (2,), torch.float32, cpu)
    assert ring.allocations == 4, "the least recently used key was forgotten"
    ring.get("z", (2,), torch.float32, cpu)
    assert ring.allocations == 4, "asking for x again forgot y, not z (used after y)"


def test_ring_waits_for_a_pending_copy_before_reusing_a_buffer():
    class Event:
        waited = 0

        def synchronize(self):
            Event.waited += 1

    ring = BufferRing()
    buffer = ring.get("x", (2,), torch.float32, torch.device("cpu"))
    ptr = buffer.data_ptr()
    ring.fence(buffer, Event())
    del buffer
    assert ring.get("x", (2,), torch.float32, torch.device("cpu")).data_ptr() == ptr and Event.waited == 1
    ring.get("x", (2,), torch.float32, torch.device("cpu"))
    assert Event.waited == 1, "the fence is waited for once"


@pytest.mark.parametrize("resample", ["pil", "fast", "exact"])
def test_reused_buffers_never_change_a_batch_the_caller_keeps(cache_path, resample):
    data = bundle(cache_path, resample=resample)
    for split, train in (("train", True), ("test", False)):
        kept = list(data.loader(split, batch_size=1, train=train, seed=5))
        ring = data.augment.ring
        before = ring.allocations
        cloned = [{k: v.clone() for k, v in b.items()} for b in data.loader(split, batch_size=1, train=train, seed=5)]
        assert len(kept) == len(cloned) > 2
        for a, b in zip(kept, cloned):
            for key in a:
                assert torch.equal(a[key], b[key]), (split, key)
        # Dropped batches give their buffers back: the second epoch allocates far fewer than one per batch.
        assert ring.allocations - before <= 2 * 4, "buffers were reused"


def test_resident_auto_loads_the_cache_into_ram_when_it_fits(cache_path, monkeypatch):
    monkeypatch.setattr(augment, "_available_ram", lambda: 1 << 40)
    roomy = bundle(cache_path, resident="auto")
    next(iter(roomy.loader("train", batch_size=2, train=True, seed=0)))
    assert roomy.augment.arrays._loaded and not any(isinstance(a, np.memmap)
                                                     for a in roomy.augment.arrays.host.values())
    monkeypatch.setattr(augment, "_available_ram", lambda: 1)
    # A later bundle on the same files reuses this process's copy, though no RAM is left for another.
    again = bundle(cache_path, resident="auto")
    next(iter(again.loader("train", batch_size=2, train=True, seed=0)))
    assert all(again.augment.arrays.host[name] is roomy.augment.arrays.host[name] for name in ("audio", "frames"))
    ram_copies.clear()
    asked = []
    monkeypatch.setattr(augment, "_available_ram", lambda: asked.append(1) or 1)
    tight = bundle(cache_path, resident="auto")
    for _ in tight.loader("train", batch_size=2, train=True, seed=0):
        pass
    assert not tight.augment.arrays._loaded and all(isinstance(a, np.memmap)
                                                    for a in tight.augment.arrays.host.values())
    assert len(asked) == 1, "decided once, not checked again for every batch"


def test_resident_auto_leaves_the_cache_mapped_under_a_subset(cache_path, monkeypatch):
    # A smoke run on a few rows of each class copied the whole cache into RAM (or onto the GPU) first.
    monkeypatch.setattr(augment, "_available_ram", lambda: 1 << 40)
    smoke = bundle(cache_path, resident="auto", subset=1)
    next(iter(smoke.loader("train", batch_size=2, train=True, seed=0)))
    assert smoke.augment.arrays.mode == "none" and not smoke.augment.arrays._loaded
    assert all(isinstance(a, np.memmap) for a in smoke.augment.arrays.host.values())
    assert bundle(cache_path, resident="memory", subset=1).augment.arrays.mode == "memory", "an explicit mode holds"


def test_ram_copies_are_shared_per_file_read_only_and_only_for_the_last_cache(tmp_path):
    def mapped(name, values):
        # Written beside and renamed over, as a cache is (a new inode each time).
        np.save(tmp_path / "partial.npy", values)
        os.replace(tmp_path / "partial.npy", tmp_path / f"{name}.npy")
        return ram_copies.open_mapped(tmp_path / f"{name}.npy")

    def no_room(nbytes):
        raise MemoryError(f"no room for {nbytes} bytes")

    ram_copies.clear()
    original = mapped("a", np.arange(6, dtype=np.float16))  # held, so the rewrite cannot get its inode back
    first = ram_copies.load({"a": original}, lambda nbytes: None)
    assert np.array_equal(first["a"], np.arange(6)) and not first["a"].flags.writeable
    asked = []
    second = ram_copies.load({"a": ram_copies.open_mapped(tmp_path / "a.npy")}, asked.append)
    assert second["a"] is first["a"] and asked == [0]
    # The file rewritten in place is another file: read again.
    rewritten = mapped("a", np.arange(6, dtype=np.float16) + 1)
    assert not ram_copies.held({"a": rewritten})
    assert np.array_equal(ram_copies.load({"a": rewritten}, asked.append)["a"], np.arange(6) + 1)
    assert asked == [0, 12]
    # Another cache releases the first one's copies; in-memory arrays and views are copied, never kept.
    other = mapped("b", np.zeros(3, dtype=np.uint8))
    ram_copies.load({"b": other, "c": np.ones(2), "view": other[1:]}, asked.append)
    assert asked[-1] == 3 + 16 + 2 and not ram_copies.held({"a": rewritten}) and ram_copies.held({"b": other})
    assert not ram_copies.held({"view": other[1:]})
    with pytest.raises(MemoryError, match="no room"):
        ram_copies.load({"a": rewritten}, no_room)
    ram_copies.clear()


def test_a_map_opened_before_its_file_was_replaced_keeps_its_copy_apart(tmp_path):
    # A bundle opened before prepare --force rebuilt the cache in place, first used after the rebuild: its copy holds
    # the old file's data and must not be handed to a bundle that maps the new file.
    np.save(tmp_path / "a.npy", np.zeros(4, np.float32))
    old = ram_copies.open_mapped(tmp_path / "a.npy")
    np.save(tmp_path / "partial.npy", np.ones(4, np.float32))
    os.replace(tmp_path / "partial.npy", tmp_path / "a.npy")
    ram_copies.clear()
    assert np.array_equal(ram_copies.load({"a": old}, lambda nbytes: None)["a"], np.zeros(4))
    new = ram_copies.open_mapped(tmp_path / "a.npy")
    assert not ram_copies.held({"a": new})
    assert np.array_equal(ram_copies.load({"a": new}, lambda nbytes: None)["a"], np.ones(4))
    ram_copies.clear()


def test_maps_opened_otherwise_are_copied_but_never_shared(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(3, dtype=np.float32))
    ram_copies.clear()
    ram_copies.load({"a": np.load(tmp_path / "a.npy", mmap_mode="r")}, lambda nbytes: None)
    assert not ram_copies.held({"a": np.load(tmp_path / "a.npy", mmap_mode="r")})
    ram_copies.clear()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("resident", ["none", "memory"])
def test_gpu_path_gathers_into_pinned_buffers_and_serves_the_cpu_batches(cache_path, resident):
    data = bundle(cache_path, resident=resident)
    for split, train in (("train", True), ("test", False)):
        cpu = list(bundle(cache_path).loader(split, batch_size=3, train=train, seed=2))
        for _ in range(2):  # the second epoch reuses the pinned buffers behind their fences
            gpu = [{k: v.cpu() for k, v in b.items()}
                   for b in data.loader(split, batch_size=3, train=train, seed=2, device="cuda")]
            for a, b in zip(cpu, gpu, strict=True):
                for key in a:
                    atol = ONE_LEVEL if key == "visual" and train else 1e-6
                    torch.testing.assert_close(b[key], a[key], atol=atol, rtol=0)
    host = [s.tensor for slots in data.augment.ring._slots.values() for s in slots if s.tensor.device.type == "cpu"]
    assert host and all(t.is_pinned() for t in host)


def test_in_memory_arrays_each_get_their_own_copy_and_held_needs_every_array(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(4, dtype=np.float32))
    ram_copies.clear()
    mapped = ram_copies.open_mapped(tmp_path / "a.npy")
    out = ram_copies.load({"a": mapped, "x": np.ones(2), "y": np.zeros(2)}, lambda nbytes: None)
    # arrays with no file identity share no key: each is its own copy, never another's
    assert np.array_equal(out["x"], np.ones(2)) and np.array_equal(out["y"], np.zeros(2))
    assert ram_copies.held({"a": mapped})
    assert not ram_copies.held({"a": mapped, "x": out["x"]}), "one array still to read means loading needs memory"
    ram_copies.clear()


def test_a_file_replaced_while_it_is_being_mapped_gets_no_identity(tmp_path, monkeypatch):
    # The map may hold either file's data, so no copy of it may be shared under the identity taken before.
    np.save(tmp_path / "a.npy", np.zeros(4, np.float32))
    load = np.load

    def replaced_while_mapping(path, **kw):
        np.save(tmp_path / "partial.npy", np.ones(4, np.float32))
        os.replace(tmp_path / "partial.npy", tmp_path / "a.npy")
        return load(path, **kw)

    monkeypatch.setattr(np, "load", replaced_while_mapping)
    assert ram_copies.file_key(ram_copies.open_mapped(tmp_path / "a.npy")) is None
    monkeypatch.setattr(np, "load", load)
    assert ram_copies.file_key(ram_copies.open_mapped(tmp_path / "a.npy")) is not None
