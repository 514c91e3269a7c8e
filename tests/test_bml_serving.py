"""BML's serving as opt-in knobs: ``data.crop_per: clip`` (one crop box and flip per clip, on every serving path) and
``data.eval_view: short_side_center`` (Resize(S) of the short side, then CenterCrop(S)), against an independent
computation of BML's steps with PIL; the defaults serve the batches they served before the knobs existed."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from core.hparams import HParamError, resolve
from datasets import augment
from datasets.augment import AVAugment, EvalViews, crop_boxes, frame_offsets
from datasets.cremad import CremaD
from datasets.kinetics_sounds import KineticsSounds

SIZE = 16
T = 3
STARTS, COUNTS = torch.tensor([0, 5, 10, 15]), torch.tensor([5, 5, 4, 5])
CPU = torch.device("cpu")
# (resample, run the CUDA branches on the CPU): the fused CPU ``pil`` path, the device ``pil`` path, the float paths.
PATHS = [("pil", False), ("pil", True), ("fast", False), ("exact", False), ("exact", True)]


def noise_frames(n: int = 20, height: int = 24, width: int = 32, seed: int = 7) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, height, width, 3), dtype=torch.uint8, generator=g).numpy()


def make_augment(frames: np.ndarray, resample: str = "pil", device_branch: bool = False, **knobs) -> AVAugment:
    aug = AVAugment(frames, num_frames=T, image_size=SIZE, resample=resample, **knobs)
    if device_branch:
        aug.integer_kernel, aug.crop_in_place = False, False
    return aug


def serve(aug: AVAugment, train: bool = True, seed: int = 3) -> torch.Tensor:
    return aug.visual(STARTS, COUNTS, torch.Generator().manual_seed(seed), train, CPU).clone()


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()[:16]


def test_defaults_serve_the_batches_served_before_the_knobs():
    # Digests of these batches computed with the code before data.crop_per and data.eval_view existed (integer
    # kernels only, so they do not depend on float vectorisation); the float paths share the pinned random stream.
    frames = noise_frames()
    assert digest(serve(make_augment(frames))) == "149bd736a40b1923"
    assert digest(serve(make_augment(frames, eval_cache_frames=8), train=False)) == "a4b7d09025d3037a"
    for resample, device_branch in PATHS:
        explicit = make_augment(frames, resample, device_branch, crop_per="frame", eval_view="resize")
        assert torch.equal(serve(explicit), serve(make_augment(frames, resample, device_branch)))


@pytest.mark.parametrize(("resample", "device_branch"), PATHS)
def test_per_clip_crops_and_flips_every_frame_of_a_clip_alike_on_every_path(resample, device_branch):
    # Each clip's frames are one image, so its served frames are equal exactly when box and flip are shared.
    clip_images = noise_frames(n=4)
    frames = np.repeat(clip_images, 5, axis=0)
    per_clip = serve(make_augment(frames, resample, device_branch, crop_per="clip"))
    per_frame = serve(make_augment(frames, resample, device_branch))
    for b in range(len(STARTS)):
        assert all(torch.equal(per_clip[b, :, 0], per_clip[b, :, k]) for k in range(1, T))
    assert any(not torch.equal(per_frame[b, :, 0], per_frame[b, :, k]) for b in range(len(STARTS))
               for k in range(1, T))


def test_per_clip_draws_one_box_and_one_flip_per_clip_after_the_frame_offsets(monkeypatch):
    seen = {}
    real = augment.resized_crop_pil_normalized

    def spy(frames, index, boxes, out, flip=None):
        seen.update(boxes=boxes.clone(), flip=flip.clone())
        return real(frames, index, boxes, out, flip=flip)

    monkeypatch.setattr(augment, "resized_crop_pil_normalized", spy)
    frames = noise_frames()
    serve(make_augment(frames, crop_per="clip", crop_scale=(0.25, 1.0)))
    g = torch.Generator().manual_seed(3)
    frame_offsets(COUNTS, T, "segments", True, g)
    boxes = crop_boxes(len(STARTS), 24, 32, g, scale=(0.25, 1.0))
    flip = torch.rand(len(STARTS), generator=g) < augment.FLIP_PROB
    assert torch.equal(seen["boxes"], boxes.repeat_interleave(T, dim=0))
    assert torch.equal(seen["flip"], flip.repeat_interleave(T))


def bml_eval_view_pil(frame: np.ndarray, size: int, expected_shape: tuple[int, int],
                      expected_offsets: tuple[int, int]) -> np.ndarray:
    """BML's steps on a PIL image, with the resize size and crop offsets written out rather than computed by the
    code under test: PIL's bilinear (antialiased) resize to ``expected_shape`` (h, w), then the box at
    ``expected_offsets`` (top, left); also checked against torchvision's Resize(size) + CenterCrop(size)."""
    from PIL import Image
    from torchvision import transforms

    image = Image.fromarray(frame)
    (h, w), (top, left) = expected_shape, expected_offsets
    ours = np.asarray(image.resize((w, h), Image.BILINEAR).crop((left, top, left + size, top + size)))
    theirs = np.asarray(transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size)])(image))
    assert np.array_equal(ours, theirs)
    return ours


@pytest.mark.parametrize(("height", "width", "shape", "offsets"), [
    # 112 * 341 / 256 = 149.19 -> 149 (truncated); (149 - 112) / 2 = 18.5 -> 18 (half to even).
    (256, 341, (112, 149), (0, 18)),
    # 112 * 342 / 256 = 149.63 -> 149, not the rounded 150.
    (256, 342, (112, 149), (0, 18)),
    # portrait: 112 * 333 / 250 = 149.18 -> 149, top 18.5 -> 18.
    (333, 250, (149, 112), (18, 0)),
    # 112 * 300 / 256 = 131.25 -> 131; (131 - 112) / 2 = 9.5 -> 10 (half to even rounds up here).
    (256, 300, (112, 131), (0, 10)),
])
def test_short_side_center_is_bmls_resize_then_centre_crop(height, width, shape, offsets):
    g = torch.Generator().manual_seed(height + width)
    coarse = torch.rand((1, 3, 9, 11), generator=g) * 255
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    frame = smooth.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    assert augment.short_side_shape(height, width, 112) == shape
    view = augment.short_side_center_uint8(frame, 112)[0].numpy().astype(np.int16)
    reference = bml_eval_view_pil(frame[0].numpy(), 112, shape, offsets).astype(np.int16)
    # torch's uint8 antialiased kernel against PIL's: within 2 grey levels, few pixels off at all.
    diff = np.abs(view - reference)
    assert diff.max() <= 2 and (diff > 0).mean() < 0.05


def test_eval_views_serve_and_keep_the_selected_view():
    frames = noise_frames(n=6, height=24, width=37)
    index = np.array([4, 1, 1, 5])
    expected = augment.short_side_center_uint8(torch.from_numpy(frames[index]), SIZE).permute(0, 3, 1, 2)
    for capacity in (0, 2, 6):
        views = EvalViews(frames, SIZE, capacity, view="short_side_center")
        assert torch.equal(views.take(index), expected) and torch.equal(views.take(index), expected)
    squeezed = EvalViews(frames, SIZE, 6).take(index)
    assert not torch.equal(squeezed, expected)
    cache = np.concatenate([frames] * 4)[:20]
    rows = (STARTS[:, None] + frame_offsets(COUNTS, T, "segments", False, None)).reshape(-1).numpy()
    views = augment.short_side_center_uint8(torch.from_numpy(cache[rows]), SIZE).permute(0, 3, 1, 2).float()
    expected = augment.normalize(views).view(len(STARTS), T, 3, SIZE, SIZE).transpose(1, 2)
    for kept in (0, 20):
        served = serve(make_augment(cache, eval_view="short_side_center", eval_cache_frames=kept), train=False)
        assert torch.allclose(served, expected, atol=1e-6)


@pytest.mark.parametrize(("knob", "value"), [("crop_per", "video"), ("eval_view", "center")])
def test_invalid_values_are_refused_naming_the_key(knob, value):
    with pytest.raises(HParamError, match=rf"data\.{knob}"):
        resolve("data", CremaD.HPARAMS, "cremad", {knob: value})
    with pytest.raises(HParamError, match=rf"data\.{knob}={value!r} is not one of"):
        make_augment(noise_frames(), **{knob: value})


def test_the_knobs_are_declared_for_every_audio_visual_dataset_and_recorded_only_when_set():
    hp = resolve("data", KineticsSounds.HPARAMS, "kinetics_sounds", {})
    assert (hp.crop_per, hp.eval_view) == ("frame", "resize")
    assert "crop_per" not in hp.as_dict() and "eval_view" not in hp.as_dict()
    bml = resolve("data", KineticsSounds.HPARAMS, "kinetics_sounds",
                  {"crop_per": "clip", "eval_view": "short_side_center"})
    assert bml.as_dict()["crop_per"] == "clip" and bml.as_dict()["eval_view"] == "short_side_center"
