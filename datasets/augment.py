"""Per-batch augmentation of cached audio-visual batches, vectorised on the batch's device (datasets.md §7.3).

``AVAugment`` is the ``Augment`` a cache-backed ``DataBundle`` hands its loaders. Per batch it:

1. chooses the frames of every clip from its cached ``frame_start``/``frame_count`` (``frame_offsets``) and reads
   them with one fancy index into the memory-mapped ``frames.npy``;
2. train: RandomResizedCrop with torchvision's parameterisation (scale (0.08, 1), ratio (3/4, 4/3), 10 attempts,
   then the centre-crop fallback; ``crop_boxes``), resampled with PIL's antialiased bilinear filter as separable
   per-sample weight matrices (``resized_crop``, one batched product for the whole batch), then a horizontal flip
   with probability 0.5, both drawn per frame as the published loaders transform each frame separately (GitHub:
   GeWu-Lab/OGM-GE_CVPR2022, ``dataset/CramedDataset.py``); test: ``Resize((S, S))`` with the same filter;
3. scales to [0, 1] and applies ImageNet normalisation; serves ``visual`` as float32 (B, 3, T, S, S);
4. serves ``audio`` as float32 (B, 1, F, T); a recipe with ``serve_frames`` gets a time crop (train: random start,
   test: the first frames).

Every random number comes from the CPU ``torch.Generator`` the loader passes (seeded by run seed and epoch), drawn in
a fixed order, so CPU and GPU runs see the same frames, crops and flips and an interrupted epoch replays exactly;
evaluation draws nothing.

Frame rules: ``segments`` splits a clip's n frames into T equal segments and takes a uniformly random frame of each
(train) or its middle frame (test), i.e. index ``floor((i + u) * n / T)`` with u ~ U[0, 1) or u = 0.5, so clips
with fewer than T frames repeat frames instead of failing; ``first_k`` takes frames 0..T-1 of the sorted list
(what OGM-GE/AUG/AMSS effectively do once their unused random index is ignored, datasets.md §5.1), repeating the
last frame of short clips.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from datasets.base import Batch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10
FLIP_PROB = 0.5
FRAME_RULES = ("segments", "first_k")
# Batch keys the gather step fills and AVAugment consumes; methods never see them.
FRAME_START_KEY = "_frame_start"
FRAME_COUNT_KEY = "_frame_count"


def frame_offsets(counts: torch.Tensor, num_frames: int, rule: str, train: bool,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Offsets (B, T) into each clip's sorted frames.

    Args:
        counts: (B,) frames per clip (>= 1).
        num_frames: T frames to serve.
        rule: ``segments`` or ``first_k`` (see the module docstring).
        train: random frame per segment (True) or the middle one (False).
        generator: CPU generator for the training draws.
    """
    counts = counts.to(torch.int64).cpu()
    if rule not in FRAME_RULES:
        raise ValueError(f"unknown frame rule {rule!r}; valid: {FRAME_RULES}")
    if bool((counts < 1).any()):
        raise ValueError("a clip with no frames reached the loader; prepare drops or rejects such clips")
    steps = torch.arange(num_frames, dtype=torch.int64)[None]
    if rule == "first_k":
        return torch.minimum(steps, counts[:, None] - 1)
    if train:
        u = torch.rand((len(counts), num_frames), generator=generator, dtype=torch.float64)
    else:
        u = torch.full((len(counts), num_frames), 0.5, dtype=torch.float64)
    pos = torch.floor((steps + u) * counts[:, None] / num_frames).to(torch.int64)
    return torch.minimum(pos, counts[:, None] - 1)


def crop_boxes(n: int, height: int, width: int, generator: torch.Generator | None,
               scale: tuple[float, float] = CROP_SCALE, ratio: tuple[float, float] = CROP_RATIO,
               attempts: int = CROP_ATTEMPTS) -> torch.Tensor:
    """RandomResizedCrop boxes for ``n`` images of one size, vectorised: int64 (n, 4) rows ``(top, left, h, w)``.

    Same parameterisation as ``torchvision.transforms.RandomResizedCrop.get_params``: per attempt, an area fraction
    ~ U(scale) and a log-uniform aspect ratio; the first attempt whose box fits wins; if none of ``attempts`` fits,
    the whole image is centre-cropped to the nearest allowed ratio. The random stream differs from torchvision's
    (draws are batched), the distribution does not.
    """
    area = height * width
    frac = torch.empty((n, attempts), dtype=torch.float64).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty((n, attempts), dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                                         generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(area * frac * aspect)).to(torch.int64)
    h = torch.round(torch.sqrt(area * frac / aspect)).to(torch.int64)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int64).argmax(dim=1)
    found = fits.any(dim=1)
    rows = torch.arange(n)
    w, h = w[rows, first], h[rows, first]
    u_top, u_left = torch.rand((2, n), generator=generator, dtype=torch.float64)
    top = torch.floor(u_top * (height - h + 1)).to(torch.int64)
    left = torch.floor(u_left * (width - w + 1)).to(torch.int64)

    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fh, fw = height, int(round(height * ratio[1]))
    else:
        fw, fh = width, height
    fallback = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw], dtype=torch.int64)
    boxes = torch.stack([top, left, h, w], dim=1)
    return torch.where(found[:, None], boxes, fallback[None])


def axis_weights(start: torch.Tensor, length: torch.Tensor, size_in: int, size_out: int) -> torch.Tensor:
    """Antialiased bilinear resampling weights (N, size_out, size_in) of one image axis, per sample.

    Output pixel i of sample n samples the window ``[start, start + length)`` of the input axis at
    ``center = start + (i + 0.5) * scale`` (``scale = length / size_out``) with a triangle filter stretched by
    ``max(scale, 1)`` and renormalised inside the window: PIL's bilinear ``resize`` of the cropped image, which
    torchvision's ``resize(antialias=True)`` also implements.
    """
    start, length = start.to(torch.float32), length.to(torch.float32)
    scale = length / size_out
    stretch = scale.clamp(min=1.0)
    centers = start[:, None] + (torch.arange(size_out, device=start.device, dtype=torch.float32) + 0.5) * scale[:, None]
    pixels = torch.arange(size_in, device=start.device, dtype=torch.float32)
    weights = (1.0 - (pixels + 0.5 - centers[..., None]).abs() / stretch[:, None, None]).clamp(min=0.0)
    inside = (pixels >= start[:, None, None]) & (pixels < (start + length)[:, None, None])
    weights = weights * inside
    return weights / weights.sum(dim=-1, keepdim=True)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image (N, C, H, W) to its box ``(top, left, h, w)`` and resize it to (size, size).

    Separable antialiased bilinear (``axis_weights``) applied as two batched matrix products, so a whole batch of
    differently sized crops is one operation on the device; equal to torchvision's ``resized_crop(...,
    antialias=True)`` up to float rounding (the published PIL path also rounds each resized frame to uint8).
    """
    boxes = boxes.to(images.device)
    top, left, h, w = boxes.unbind(1)
    rows = axis_weights(top, h, images.shape[-2], size).to(images.dtype)
    cols = axis_weights(left, w, images.shape[-1], size).to(images.dtype)
    return torch.einsum("nsh,nchw,ntw->ncst", rows, images, cols)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """``Resize((size, size))`` of (N, C, H, W): the same antialiased bilinear filter, through torch's separable
    kernel (every image has the same scale here, so no per-sample weights are needed)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 255] floats (N, 3, H, W) -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1) * 255.0
    return (images - mean) / std


class AVAugment:
    """The cache-backed ``Augment``: frame choice + image transforms + audio time crop, once per batch.

    Args:
        frames: the cache's uint8 (total_frames, H, W, 3) array (memory-mapped).
        num_frames: T frames per clip.
        image_size: S of the served (3, T, S, S).
        frame_rule: ``segments`` or ``first_k``.
        audio_frames: when > 0, serve a crop of this many audio time frames.
    """

    def __init__(self, frames: np.ndarray, *, num_frames: int, image_size: int, frame_rule: str = "segments",
                 audio_frames: int = 0) -> None:
        if frame_rule not in FRAME_RULES:
            raise ValueError(f"unknown frame rule {frame_rule!r}; valid: {FRAME_RULES}")
        if num_frames < 1 or image_size < 1:
            raise ValueError(f"num_frames and image_size must be >= 1, got {num_frames} and {image_size}")
        self.frames = frames
        self.num_frames = num_frames
        self.image_size = image_size
        self.frame_rule = frame_rule
        self.audio_frames = audio_frames

    def read_frames(self, starts: torch.Tensor, offsets: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Frames at ``starts[:, None] + offsets`` as uint8 (B*T, 3, H, W) on ``device`` (one read, sorted)."""
        index = (starts.cpu().to(torch.int64)[:, None] + offsets).reshape(-1).numpy()
        unique, inverse = np.unique(index, return_inverse=True)
        block = torch.from_numpy(np.ascontiguousarray(self.frames[unique]))
        if device.type == "cuda":
            block = block.pin_memory()
        block = block.to(device, non_blocking=device.type == "cuda")
        # Contiguous NCHW before the float conversion: the resampling kernels are much slower on strided input.
        return block[torch.from_numpy(inverse.reshape(-1)).to(device)].permute(0, 3, 1, 2).contiguous()

    def visual(self, starts: torch.Tensor, counts: torch.Tensor, generator: torch.Generator, train: bool,
               device: torch.device) -> torch.Tensor:
        b, t, s = len(starts), self.num_frames, self.image_size
        offsets = frame_offsets(counts, t, self.frame_rule, train, generator)
        images = self.read_frames(starts, offsets, device).float()
        if train:
            boxes = crop_boxes(b * t, images.shape[-2], images.shape[-1], generator)
            images = resized_crop(images, boxes, s)
            flip = (torch.rand(b * t, generator=generator) < FLIP_PROB).to(device)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        else:
            images = resize(images, s)
        images = normalize(images)
        return images.view(b, t, 3, s, s).permute(0, 2, 1, 3, 4).contiguous()

    def audio(self, audio: torch.Tensor, generator: torch.Generator, train: bool) -> torch.Tensor:
        audio = audio.float()
        if not self.audio_frames:
            return audio
        b, _, f, total = audio.shape
        if train:
            starts = torch.floor(torch.rand(b, generator=generator, dtype=torch.float64)
                                 * (total - self.audio_frames + 1)).to(torch.int64)
        else:
            starts = torch.zeros(b, dtype=torch.int64)
        index = (starts[:, None] + torch.arange(self.audio_frames)[None]).to(audio.device)
        return audio.gather(3, index[:, None, None, :].expand(b, 1, f, self.audio_frames))

    def __call__(self, batch: Batch, generator: torch.Generator, train: bool) -> Batch:
        starts, counts = batch.pop(FRAME_START_KEY), batch.pop(FRAME_COUNT_KEY)
        device = batch["audio"].device
        batch["visual"] = self.visual(starts, counts, generator, train, device)
        batch["audio"] = self.audio(batch["audio"], generator, train)
        return batch
