"""Per-batch augmentation of cached audio-visual batches, vectorised on the batch's device
(docs/datasets/cache.md#serving).

``AVAugment`` is the ``Augment`` a cache-backed ``DataBundle`` hands its loaders. Per batch it:

1. reads the batch's audio rows and chooses the frames of every clip from its cached ``frame_start``/``frame_count``
   (``frame_offsets``), each with one sorted fancy index into the cache arrays (``CacheArrays``: memory-mapped, in
   RAM, or resident on the batch's device, where the gather is a device ``index_select`` and nothing is copied from
   the host);
2. train: RandomResizedCrop with torchvision's parameterisation (scale ``data.crop_scale``, by default (0.08, 1),
   ratio (3/4, 4/3), 10 attempts, then the centre-crop fallback; ``crop_boxes``), then a horizontal flip with
   probability 0.5, both drawn per frame as the published loaders transform each frame separately (GitHub:
   GeWu-Lab/OGM-GE_CVPR2022, ``dataset/CramedDataset.py``), or with ``data.crop_per: clip`` once per clip and
   applied to its T frames, as BML does (GitHub: GeWu-Lab/BML_TPAMI2024, ``code/dataset/KS.py``,
   ``KSDataset.__loading``). The crop is resampled by one of three filters (``data.resample``):

   - ``pil`` (default): PIL's antialiased bilinear filter on the uint8 crop, rounded to uint8, then the flip on the
     uint8 rows (``resized_crop_pil``): what the published PIL pipeline computes, and the cheapest on a CPU, since
     only the crop's bytes are read and nothing is converted to float before the final batch. On a CPU it runs
     torch's uint8 kernel straight from the cache arrays (no gather); on CUDA, which has no uint8 antialiased
     kernel, the same filter in float32, rounded (within one grey level). Within two grey levels of PIL in a few
     percent of the pixels (``tests/test_serving_buffers.py``);
   - ``fast``: ``torchvision.ops.roi_align(aligned=True, sampling_ratio=-1)`` on the whole frames in float32, the
     ``roi_align`` the data spec names: bilinear sampling at the output pixel centres, averaged over ceil(crop / S)
     sub-samples per axis when the crop is shrunk (an area-style antialias). Deviation from PIL's antialiased
     bilinear: the filter support when shrinking is a box of sub-samples rather than PIL's stretched triangle, and
     pixels just outside the crop box take part at its border. ``tests/test_speed_paths.py`` bounds the difference
     to torchvision's ``resized_crop(antialias=True)``;
   - ``exact``: PIL's antialiased bilinear filter as separable per-sample weight matrices (``resized_crop``) in
     float32, equal to torchvision's ``resized_crop(..., antialias=True)`` up to float rounding (no uint8 rounding).

   Evaluation (``data.eval_view``): ``Resize((S, S))`` with the antialiased bilinear filter on uint8 frames,
   rounded to uint8 as PIL does in the published pipeline, or ``short_side_center``: BML's ``Resize(S)`` of the short
   side then ``CenterCrop(S)`` (``short_side_center_uint8``); each frame's view is computed once on the CPU and kept
   (``EvalViews``), so later evaluations are one gather and a conversion (on a CPU: each kept view converted and
   normalised straight into the served batch, ``normalized_views_into``), and CPU and GPU runs serve identical
   evaluation batches;
3. converts to float32 and applies ImageNet normalisation, into the served float32 (B, 3, T, S, S) ``visual``: on a
   CPU each ``pil`` crop as soon as it is made, while it is in cache (``resized_crop_pil_normalized``), elsewhere the
   whole batch at once; both give the same bits;
4. serves ``audio`` as float32 (B, 1, F, T), converted from the cached float16 on the device (on a CPU with no time
   crop, each cached row converted straight into the served buffer, ``AVAugment._audio_rows``); an audio pipeline
   with ``serve_frames`` gets a time crop (train: random start, test: the first frames), cut before the conversion.

Every batch-sized tensor (the served ``audio`` and ``visual``, the uint8 crops, the host buffers the gathers fill,
pinned when a CUDA copy reads them) comes from a per-thread ``BufferRing`` and is reused once the caller has dropped
the batch it served, instead of being allocated (and page-faulted in) for every batch. On CUDA the host only gathers
float16 audio rows and uint8 frames (or kept test views) into pinned buffers; crops, flips and conversions run on
the device, or everything does when the arrays are resident there.

Every random number comes from the CPU ``torch.Generator`` the loader passes (seeded by run seed and epoch), drawn in
a fixed order (frame offsets, crop boxes, flips, audio starts), so CPU and GPU runs see the same frames, crops and
flips and an interrupted epoch replays exactly; evaluation draws nothing. The batch keys starting with ``_`` that
the gather fills stay on the host (``core.data.BatchLoader``), so choosing frames never waits for the device.

Frame rules (``frame_offsets``): ``segments`` splits a clip's n frames into T segments of ``seg = n // T`` frames
(the last ``n % T`` frames are never read) and takes a uniformly random frame of each (train) or frame
``i * seg + seg // 2`` (test), as BalanceBenchmark's CREMA-D loader does; ``segments_ks`` is BalanceBenchmark's
Kinetics-Sounds variant of it, written for 1-based frame files (test frame ``i * seg + max(seg // 2, 1)``, 1-based;
frame 1 for clips of at most 6 frames; training draws never beyond frame 9); clips with fewer than T frames repeat
frames instead of failing; ``first_k`` takes frames 0..T-1 of the sorted list
(what OGM-GE/AUG/AMSS effectively do once their unused random index is ignored,
docs/datasets/pitfalls.md#unsorted-listing), repeating the last frame of short clips; ``random_k`` takes T distinct
random frames in clip order for training and the first T for evaluation (IPRM's CREMA-D loader); ``bml_ks`` serves
the 3 frames BML's Kinetics-Sounds loader reads, stored frames n-1, ((n-1)//2 - 1) mod n and (n-2) mod n in that
order, for training and evaluation alike (``bml_ks_offsets``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.data import Batch
from core.hparams import HParamError
from datasets import ram_copies

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10
FLIP_PROB = 0.5
FRAME_RULES = ("segments", "segments_ks", "first_k", "random_k", "bml_ks")
# ``bml_ks``: GeWu-Lab/BML_TPAMI2024 code/dataset/KS.py picks three frames of a clip, whatever else is configured.
BML_KS_FRAMES = 3
# ``segments_ks``: a clip of at most this many frames serves its first frame only; no training draw beyond frame 9
# (1-based).
KS_SHORT_CLIP_FRAMES = 6
KS_LAST_FRAME = 8
RESAMPLE_MODES = ("pil", "fast", "exact")
CROP_PER = ("frame", "clip")
EVAL_VIEWS = ("resize", "short_side_center")
RESIDENT_MODES = ("auto", "none", "memory", "device")
# Batch keys the gather step fills and AVAugment consumes; they stay on the host and methods never see them.
ROWS_KEY = "_rows"
FRAME_START_KEY = "_frame_start"
FRAME_COUNT_KEY = "_frame_count"
# ``resident: auto`` puts the arrays on a CUDA device only when they take at most this share of its free memory, and
# on a CPU loads them into RAM when they take at most this share of the available memory.
AUTO_DEVICE_SHARE = 0.5
AUTO_RAM_SHARE = 0.5
# Batches a ``BufferRing`` keeps buffers for: the batch being served, the one the caller still holds, and two in a
# prefetch queue; a batch beyond that gets a fresh buffer (correct, only slower).
RING_DEPTH = 4
# Host -> device copies of whole arrays go in chunks of this many bytes, so no giant pageable staging buffer is made.
COPY_CHUNK_BYTES = 256 << 20


def check_crop_scale(key: str, scale: Sequence[float]) -> None:
    """RandomResizedCrop's area range: two fractions 0 < low <= high <= 1, or an error naming ``key``."""
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise HParamError(f"{key}={list(scale)} must be two area fractions 0 < low <= high <= 1")


def check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    """A serving knob's value among its ``choices``, or an error naming ``key``: the constructors that take these knobs
    directly (not through a resolved config) check them too."""
    if value not in choices:
        raise HParamError(f"{key}={value!r} is not one of {list(choices)}")


def check_frame_rule(rule: str, num_frames: int) -> None:
    """A known rule serving T = ``num_frames`` frames, or an error naming the ``data.*`` keys."""
    check_choice("data.frame_rule", rule, FRAME_RULES)
    if rule == "bml_ks" and num_frames != BML_KS_FRAMES:
        # The published loader defines only its three picks; any other T would be this project's invention.
        raise HParamError(f"data.frame_rule=bml_ks serves the {BML_KS_FRAMES} frames BML's KS.py reads; set "
                          f"data.frames={BML_KS_FRAMES} (got {num_frames}) or choose another data.frame_rule")


def bml_ks_offsets(counts: torch.Tensor) -> torch.Tensor:
    """(B, 3) offsets BML's KS loader reads from each clip's n stored frames, in its order, training and test alike.

    GeWu-Lab/BML_TPAMI2024 code/dataset/KS.py (``KSDataset.__loading``) keeps ``clip[0]``, ``clip[int((n-1)/2)]``
    and ``clip[n-1]``; its ``dataset/loader.py`` (``VideoLoaderHDF5``) builds ``clip[i]`` from hdf5 entry ``i - 1``,
    which h5py reads as the last entry for i = 0, so every pick is one stored frame earlier, wrapping around: a
    10-frame clip serves stored frames 9, 3 and 8.
    """
    n = counts[:, None]
    picks = torch.cat([torch.zeros_like(n), (n - 1) // 2, n - 1], dim=1)
    return torch.remainder(picks - 1, n)


def frame_offsets(counts: torch.Tensor, num_frames: int, rule: str, train: bool,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Offsets (B, T) into each clip's sorted frames.

    Args:
        counts: (B,) frames per clip (>= 1).
        num_frames: T frames to serve.
        rule: one of ``FRAME_RULES`` (see the module docstring).
        train: random frame per segment (True) or the rule's middle one (False).
        generator: CPU generator for the training draws.
    """
    counts = counts.to(torch.int64).cpu()
    check_frame_rule(rule, num_frames)
    if bool((counts < 1).any()):
        raise ValueError("a clip with no frames reached the loader; prepare drops or rejects such clips")
    if rule == "bml_ks":
        return bml_ks_offsets(counts)
    steps = torch.arange(num_frames, dtype=torch.int64)[None]
    last = counts[:, None] - 1
    if rule == "first_k" or (rule == "random_k" and not train):
        return torch.minimum(steps, last)
    if rule == "random_k":
        # T distinct frames in clip order: the T smallest of per-frame uniform keys, frames beyond a clip's end keyed
        # out; a clip with fewer than T frames serves all of them and repeats its last.
        width = max(int(counts.max()), num_frames)
        keys = torch.rand((len(counts), width), generator=generator, dtype=torch.float64)
        keys[torch.arange(width)[None] > last] = math.inf
        picked = keys.topk(num_frames, dim=1, largest=False).indices.sort(dim=1).values
        return torch.minimum(picked, last)
    seg = (counts // num_frames).clamp(min=1)[:, None]
    if train:
        u = torch.rand((len(counts), num_frames), generator=generator, dtype=torch.float64)
        within = torch.floor(u * seg).to(torch.int64)
    elif rule == "segments":
        within = seg // 2
    else:
        within = (seg // 2).clamp(min=1) - 1
    pos = steps * seg + within
    if rule == "segments_ks":
        # GeWu-Lab/BalanceBenchmark balancemm/datasets/KS_dataset.py: 1-based frame_0000{t}.jpg, t = 1 for every
        # frame of a clip with <= 6 frames, and only the training draw is capped at t = 9 (its test index is not).
        capped = pos.clamp(max=KS_LAST_FRAME) if train else pos
        pos = torch.where(counts[:, None] <= KS_SHORT_CLIP_FRAMES, 0, capped)
    return torch.minimum(pos, last)


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


def resized_crop_fast(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """``resized_crop`` by ``roi_align``: one batched call, float (N, C, H, W) -> (N, C, size, size).

    With ``aligned=True`` output pixel i of a box samples the input at ``top + (i + 0.5) * h / size - 0.5`` (pixel
    centres, as PIL and torchvision place them); ``sampling_ratio=-1`` averages ceil(h / size) x ceil(w / size)
    bilinear sub-samples per output pixel, so a shrunk crop is filtered over its footprint instead of aliasing, and
    an enlarged one is plain bilinear interpolation. See the module docstring for how this deviates from PIL.
    """
    from torchvision.ops import roi_align

    boxes = boxes.to(device=images.device, dtype=images.dtype)
    top, left, h, w = boxes.unbind(1)
    sample = torch.arange(len(boxes), device=images.device, dtype=images.dtype)
    rois = torch.stack([sample, left, top, left + w, top + h], dim=1)
    return roi_align(images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """``Resize((size, size))`` of float (N, C, H, W): the same antialiased bilinear filter, through torch's separable
    kernel (every image has the same scale here, so no per-sample weights are needed)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def resize_uint8(frames: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """``Resize((size, size))`` (or to ``size`` = (h, w)) of uint8 (N, H, W, 3) frames -> uint8 (N, h, w, 3),
    antialiased bilinear.

    Runs torch's uint8 channels-last kernel (the PIL-style fixed-point path), which rounds to uint8 as the
    published PIL pipeline does, about 5x faster on a CPU than the float kernel.
    """
    shape = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(frames.shape[1:3]) == shape:
        return frames
    out = F.interpolate(frames.permute(0, 3, 1, 2), size=shape, mode="bilinear", align_corners=False,
                        antialias=True)
    return out.permute(0, 2, 3, 1).contiguous()


def short_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) of ``Resize(size)`` with an int size: the short side becomes ``size``, the long side
    ``int(size * long / short)``, truncated (torchvision ``functional._compute_resized_output_size``, which BML's
    torchvision 0.14 ``Resize`` uses: a 256x341 frame becomes 112x149)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def short_side_center_uint8(frames: torch.Tensor, size: int) -> torch.Tensor:
    """BML's evaluation view of uint8 (N, H, W, 3) frames -> uint8 (N, size, size, 3): ``Resize(size)`` of the short
    side (``short_side_shape``, antialiased bilinear as PIL's ``resize``), then ``CenterCrop(size)``, whose offsets
    ``int(round((h - size) / 2))`` round halves to even as Python's ``round`` does in torchvision
    ``functional.center_crop`` (GitHub: GeWu-Lab/BML_TPAMI2024, ``code/dataset/spatial_transforms.py``,
    ``get_val_spatial_transforms``)."""
    h, w = short_side_shape(frames.shape[1], frames.shape[2], size)
    top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
    return resize_uint8(frames, (h, w))[:, top:top + size, left:left + size].contiguous()


def eval_view_uint8(frames: torch.Tensor, size: int, view: str) -> torch.Tensor:
    """The ``data.eval_view`` of uint8 (N, H, W, 3) frames -> uint8 (N, size, size, 3)."""
    return short_side_center_uint8(frames, size) if view == "short_side_center" else resize_uint8(frames, size)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 255] floats (N, 3, H, W) -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1) * 255.0
    return (images - mean) / std


@functools.lru_cache(maxsize=8)
def _imagenet_scale(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: building them per batch would copy from pageable memory, which waits for the device.
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype).view(1, 3, 1, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, dtype=dtype).view(1, 3, 1, 1, 1) * 255.0
    return mean.to(device), std.to(device)


def normalize_(clips: torch.Tensor) -> torch.Tensor:
    """In-place ``normalize`` of [0, 255] floats (B, 3, T, H, W): the same arithmetic, no new memory."""
    mean, std = _imagenet_scale(clips.device, clips.dtype)
    return clips.sub_(mean).div_(std)


def normalize_into(out: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``normalize_`` of uint8 ``images`` (B, 3, T, S, S), any strides, written to float ``out``: one conversion
    pass, then the in-place arithmetic of ``normalize_`` (so the values are those of converting first)."""
    return normalize_(out.copy_(images))


def resized_crop_pil(frames: torch.Tensor, index: torch.Tensor, boxes: torch.Tensor, size: int,
                     out: torch.Tensor | None = None, integer: bool | None = None,
                     flip: torch.Tensor | None = None) -> torch.Tensor:
    """RandomResizedCrop's resampling as PIL computes it, on uint8: frame ``index[i]`` of ``frames`` (M, H, W, 3) is
    cut to box i ``(top, left, h, w)`` and resized to (size, size) with the antialiased bilinear filter, rounded to
    uint8 -> (N, size, size, 3) in ``out`` (channels last, as the kernel writes them: the batch's one float
    conversion transposes them); ``flip[i]`` mirrors output i horizontally (RandomHorizontalFlip after the crop),
    done on that frame while it is in cache, much cheaper than a batched flip by index afterwards.

    Only the crop's pixels are read, and nothing is converted to float on the CPU: ``integer`` (default: on a CPU)
    runs torch's uint8 channels-last kernel, PIL-style fixed-point arithmetic, within two grey levels of PIL's
    ``resize`` of the cropped image, in a few percent of the pixels (``tests/test_serving_buffers.py``). Elsewhere
    (CUDA has no uint8 antialiased kernel) the same filter runs in float32 and is rounded, within one level of the
    integer kernel. One kernel call per frame: the crops differ in size, and the batched filters (``resized_crop``,
    ``resized_crop_fast``) need every whole frame in float first, which costs more than the per-call overhead.
    """
    if integer is None:
        integer = frames.device.type == "cpu"
    if out is None:
        out = torch.empty((len(boxes), size, size, 3), dtype=torch.uint8, device=frames.device)
    mirror = [False] * len(boxes) if flip is None else flip.tolist()
    for i, (k, (top, left, h, w)) in enumerate(zip(index.tolist(), boxes.tolist())):
        crop = frames[k, top:top + h, left:left + w].permute(2, 0, 1)[None]
        if integer:
            resized = F.interpolate(crop.contiguous(memory_format=torch.channels_last), size=(size, size),
                                    mode="bilinear", align_corners=False, antialias=True)
        else:
            resized = F.interpolate(crop.float(), size=(size, size), mode="bilinear", align_corners=False,
                                    antialias=True).round_().clamp_(0, 255)
        out[i].copy_(resized[0].permute(1, 2, 0))
        if mirror[i]:
            out[i].copy_(out[i].flip(1))
    return out


def resized_crop_pil_normalized(frames: torch.Tensor, index: torch.Tensor, boxes: torch.Tensor, out: torch.Tensor,
                                flip: torch.Tensor | None = None) -> torch.Tensor:
    """``resized_crop_pil`` on a CPU (the integer kernel), each crop converted and normalised while it is in cache:
    crop i is written to ``out[i // T, :, i % T]`` of the served float (B, 3, T, S, S) batch, bit-identical to
    ``normalize_into`` of the whole uint8 batch (the same elementwise arithmetic per value), without the uint8
    batch buffer being written and read back."""
    t, size = out.shape[2], out.shape[-1]
    mean, std = (x.view(3, 1, 1) for x in _imagenet_scale(out.device, out.dtype))
    mirror = [False] * len(boxes) if flip is None else flip.tolist()
    for i, (k, (top, left, h, w)) in enumerate(zip(index.tolist(), boxes.tolist())):
        crop = frames[k, top:top + h, left:left + w].permute(2, 0, 1)[None]
        resized = F.interpolate(crop.contiguous(memory_format=torch.channels_last), size=(size, size),
                                mode="bilinear", align_corners=False, antialias=True)[0]
        if mirror[i]:
            resized = resized.flip(-1)
        out[i // t, :, i % t].copy_(resized).sub_(mean).div_(std)
    return out


def normalized_views_into(out: torch.Tensor, table: torch.Tensor, slots: np.ndarray) -> torch.Tensor:
    """Kept uint8 views ``table[slots[i]]`` (3, S, S), each converted and normalised straight into
    ``out[i // T, :, i % T]`` of the served float (B, 3, T, S, S): every kept byte is read once, no uint8 batch is
    gathered first; bit-identical to ``normalize_into`` of the gathered batch."""
    t = out.shape[2]
    mean, std = (x.view(3, 1, 1) for x in _imagenet_scale(out.device, out.dtype))
    for i, slot in enumerate(slots.tolist()):
        out[i // t, :, i % t].copy_(table[slot]).sub_(mean).div_(std)
    return out


def _views_kernel(out: torch.Tensor, table: torch.Tensor, slots: torch.Tensor, mean: torch.Tensor,
                  std: torch.Tensor) -> None:
    # The operations of ``normalized_views_into`` in its order (convert, subtract, divide), written as one expression
    # so that inductor fuses them into a single pass over the kept bytes.
    b, _, t = out.shape[:3]
    views = table.index_select(0, slots).view(b, t, *table.shape[1:]).transpose(1, 2)
    out.copy_((views.float() - mean) / std)


@functools.lru_cache(maxsize=1)
def _compiled_views_kernel() -> object:
    # One compiled kernel for every batch size (dynamic shapes): a last, smaller batch compiles nothing new.
    return torch.compile(_views_kernel, dynamic=True, fullgraph=True)


def normalized_views_compiled(out: torch.Tensor, table: torch.Tensor, slots: np.ndarray) -> torch.Tensor:
    """``normalized_views_into`` as one kernel that ``torch.compile`` (inductor's C++ backend) generates: the gather,
    uint8 -> float32 conversion and normalisation fused, every kept byte read once and every served float written
    once, with no per-view Python. Bit-identical to ``normalized_views_into``: the same three IEEE operations per
    value (the division stays a division). The first call compiles it, which needs a C++ compiler and Python's
    headers; without them the error says so."""
    mean, std = _imagenet_scale(out.device, out.dtype)
    index = torch.from_numpy(slots)
    try:
        _compiled_views_kernel()(out, table, index, mean, std)
    except torch._dynamo.exc.BackendCompilerFailed as error:
        raise RuntimeError("data.compile_views=true: torch.compile could not build the test-view kernel (inductor "
                           "needs a C++ compiler and Python's development headers); set data.compile_views=false "
                           "to serve the same values without it") from error
    return out


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor -> ``device``; through pinned memory and a non-blocking copy on CUDA."""
    if device.type == "cuda" and not tensor.is_cuda:
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def host_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory (a read-only memory map included: batches only ever read from it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _available_ram() -> int | None:
    """``MemAvailable`` from /proc/meminfo in bytes, or None where there is no such file."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _check_room(nbytes: int) -> None:
    available = _available_ram()
    if available is not None and nbytes > available:
        raise MemoryError(f"data.resident=memory needs {nbytes / 2**30:.1f} GiB for the cache arrays, "
                          f"{available / 2**30:.1f} GiB of RAM is available; use data.resident=none")


_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _holders(tensor: torch.Tensor) -> int:
    """How many tensors hold ``tensor``'s memory (-1 where this torch cannot tell: the buffer is then never reused)."""
    if _storage_use_count is None:
        return -1
    return int(_storage_use_count(tensor.untyped_storage()._cdata))


class _Slot:
    __slots__ = ("fence", "idle", "tensor")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.idle = _holders(tensor)
        self.fence = None

    def free(self) -> bool:
        return self.idle >= 0 and _holders(self.tensor) == self.idle


class BufferRing:
    """Batch-sized buffers reused across batches instead of allocated for every batch.

    A fresh CPU allocation of this size pays a page fault for every page it touches (it bypasses the allocator's free
    lists), a pinned one a driver call. ``get`` hands out a view of a kept buffer when nothing else holds that
    buffer's memory any more (every tensor of the batch it served was dropped) and, for a host buffer an asynchronous
    copy reads, once that copy has finished (``fence``); otherwise it allocates, and the new buffer replaces the
    oldest kept one once ``depth`` are kept. So a batch the caller keeps is never overwritten, and values never depend
    on the reuse.

    Args:
        depth: buffers kept per (name, shape, dtype, device, pinned).
        keys: distinct keys kept (a last partial batch has its own shape).
    """

    def __init__(self, depth: int = RING_DEPTH, keys: int = 8) -> None:
        self.depth = depth
        self.keys = keys
        self.allocations = 0
        self._slots: OrderedDict[tuple, list[_Slot]] = OrderedDict()

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
            pin: bool = False) -> torch.Tensor:
        key = (name, tuple(shape), dtype, torch.device(device), pin)
        slots = self._slots.pop(key, [])
        self._slots[key] = slots
        while len(self._slots) > self.keys:
            self._slots.popitem(last=False)
        for slot in slots:
            if slot.free():
                if slot.fence is not None:
                    slot.fence.synchronize()
                    slot.fence = None
                return slot.tensor.view(slot.tensor.shape)
        tensor = torch.empty(shape, dtype=dtype, device=device, pin_memory=pin)
        self.allocations += 1
        if len(slots) >= self.depth:
            # All kept buffers are held (the caller keeps batches): forget the oldest, which stays its caller's.
            slots.pop(0)
        slots.append(_Slot(tensor))
        return tensor.view(tensor.shape)

    def fence(self, tensor: torch.Tensor, event: object) -> None:
        """``get`` waits for ``event`` (anything with ``synchronize()``: a CUDA event) before handing out the buffer
        ``tensor`` views again: an asynchronous copy from it was queued."""
        ptr = tensor.untyped_storage().data_ptr()
        for slots in self._slots.values():
            for slot in slots:
                if slot.tensor.untyped_storage().data_ptr() == ptr:
                    slot.fence = event
                    return


def upload(host: torch.Tensor, device: torch.device, ring: BufferRing | None) -> torch.Tensor:
    """A host buffer -> ``device``. On CUDA the buffer is pinned (from ``ring``) and copied without blocking, and the
    ring waits for the copy before reusing the buffer; on a CPU it is the batch tensor itself."""
    if device.type != "cuda":
        return host.to(device)
    if not host.is_pinned():
        return to_device(host, device)
    moved = host.to(device, non_blocking=True)
    if ring is not None:
        event = torch.cuda.Event()
        event.record()
        ring.fence(host, event)
    return moved


class StageTimes:
    """Seconds per serving stage summed over batches, for ``augbench bench data``'s profile. On a CPU each stage is
    timed in the CPU time of the thread that runs it (``time.thread_time``), so time the thread waits for a core on a
    loaded machine does not count; on CUDA in wall time, with the device synchronised first and last, so the profile
    slows the loader it measures. Timing is off by default."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def stage(self, name: str, device: torch.device) -> _Stage:
        return _Stage(self.seconds, name, device.type == "cuda")


class _Stage:
    __slots__ = ("clock", "name", "seconds", "start", "sync")

    def __init__(self, seconds: dict[str, float], name: str, sync: bool) -> None:
        self.seconds, self.name, self.sync, self.start = seconds, name, sync, 0.0
        self.clock = time.perf_counter if sync else time.thread_time

    def __enter__(self) -> None:
        if self.sync:
            torch.cuda.synchronize()
        self.start = self.clock()

    def __exit__(self, *exc: object) -> None:
        if self.sync:
            torch.cuda.synchronize()
        self.seconds[self.name] = self.seconds.get(self.name, 0.0) + self.clock() - self.start


_UNTIMED = contextlib.nullcontext()


class CacheArrays:
    """The cache arrays batches are gathered from, resident where ``data.resident`` says.

    ``none``: the memory-mapped arrays (the OS page cache keeps what fits in RAM); ``memory``: loaded once into RAM
    (no page faults or disk reads after the first epoch; one copy per process, which later bundles on the same files
    reuse, ``datasets.ram_copies``); ``device``: copied once to the batch's device, where a
    gather is an ``index_select`` on the device and nothing crosses the bus per batch; ``auto``: ``device`` on a
    CUDA device when all arrays take at most ``AUTO_DEVICE_SHARE`` of its free memory, else ``memory`` when they take
    at most ``AUTO_RAM_SHARE`` of the available RAM, else ``none``. The copies are made on first use, so building a
    bundle costs nothing.

    Args:
        arrays: name -> array (N, ...), normally memory-mapped ``.npy`` files.
        mode: one of ``RESIDENT_MODES``.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], mode: str = "none") -> None:
        if mode not in RESIDENT_MODES:
            raise ValueError(f"data.resident={mode!r} is not one of {RESIDENT_MODES}")
        self.host = dict(arrays)
        self.mode = mode
        self.nbytes = sum(int(a.nbytes) for a in self.host.values())
        self._loaded = False
        # Whether to load into RAM is decided on first use, once: a run never switches, and no batch pays the check.
        self._decided = False
        self._host_tensors: dict[str, torch.Tensor] = {}
        self._on_device: dict[torch.device, dict[str, torch.Tensor] | None] = {}
        self._lock = threading.Lock()

    def _load_into_ram(self) -> None:
        self.host = ram_copies.load(self.host, _check_room)
        self._host_tensors = {}
        self._loaded = True

    def _wants_ram(self) -> bool:
        if self.mode == "memory":
            return True
        if self.mode != "auto":
            return False
        if ram_copies.held(self.host):  # an earlier run in this process loaded these very files
            return True
        available = _available_ram()
        return available is not None and self.nbytes <= AUTO_RAM_SHARE * available

    def _fits_on(self, device: torch.device, share: float) -> tuple[bool, int]:
        if device.type != "cuda":
            return True, 0
        free, _ = torch.cuda.mem_get_info(device)
        return self.nbytes <= share * free, free

    def resident_on(self, device: torch.device) -> dict[str, torch.Tensor] | None:
        """The device copies of the arrays when they live on ``device``, else None (gather on the host)."""
        if self.mode in ("none", "memory") or (self.mode == "auto" and device.type != "cuda"):
            return None
        with self._lock:
            if device not in self._on_device:
                fits, free = self._fits_on(device, AUTO_DEVICE_SHARE if self.mode == "auto" else 1.0)
                if not fits and self.mode == "device":
                    raise MemoryError(f"data.resident=device needs {self.nbytes / 2**30:.1f} GiB on {device}, "
                                      f"{free / 2**30:.1f} GiB is free; use data.resident=memory or none")
                # Decided once per device, so a run never switches between host and device gathers.
                self._on_device[device] = {name: self._copy_to(a, device) for name, a in self.host.items()} \
                    if fits else None
            return self._on_device[device]

    @staticmethod
    def _copy_to(array: np.ndarray, device: torch.device) -> torch.Tensor:
        out = torch.empty(array.shape, dtype=torch.from_numpy(np.empty(0, dtype=array.dtype)).dtype, device=device)
        step = max(1, COPY_CHUNK_BYTES // max(1, array[:1].nbytes))
        for i in range(0, len(array), step):
            out[i:i + step].copy_(torch.from_numpy(np.array(array[i:i + step])))
        return out

    def host_source(self, name: str) -> torch.Tensor:
        """Array ``name`` as a host tensor sharing its memory, loaded into RAM first where the mode says so."""
        if not self._decided:
            with self._lock:
                if not self._decided:
                    if self._wants_ram():
                        self._load_into_ram()
                    self._decided = True
        if name not in self._host_tensors:
            self._host_tensors[name] = host_tensor(self.host[name])
        return self._host_tensors[name]

    def source(self, name: str, device: torch.device) -> torch.Tensor:
        """Where rows of ``name`` are read for a batch on ``device``: its device copy, or the host tensor."""
        resident = self.resident_on(device)
        return resident[name] if resident is not None else self.host_source(name)

    def take(self, name: str, index: np.ndarray, device: torch.device, ring: BufferRing | None = None
             ) -> torch.Tensor:
        """Rows ``index`` (sorted for locality by the caller) of array ``name``, on ``device``: one ``index_select``
        into a buffer of ``ring`` (pinned when it goes on to a CUDA device) or a fresh tensor."""
        resident = self.resident_on(device)
        if resident is not None:
            return resident[name].index_select(0, to_device(torch.from_numpy(index), device))
        source = self.host_source(name)
        if ring is None:
            return to_device(source.index_select(0, torch.from_numpy(index)), device)
        out = ring.get(name, (len(index), *source.shape[1:]), source.dtype, torch.device("cpu"),
                       pin=device.type == "cuda")
        torch.index_select(source, 0, torch.from_numpy(index), out=out)
        return upload(out, device, ring)


class EvalViews:
    """Test-time views (``Resize((S, S))``, or BML's short-side resize and centre crop) of cached frames (uint8, kept
    channels first), each computed once on the CPU and then kept.

    Evaluation visits the same frames every epoch (the selection rule is deterministic), so after the first pass an
    evaluation batch is one gather from this table. At most ``capacity`` frames are kept; frames beyond that are
    resized on every use. The table is allocated lazily and its pages are only touched as frames are added.

    Args:
        frames: the cache's uint8 (total_frames, H, W, 3) array (host).
        size: S.
        capacity: frames to keep at most (0 = keep none).
        view: one of ``EVAL_VIEWS`` (``data.eval_view``).
    """

    def __init__(self, frames: np.ndarray, size: int, capacity: int, view: str = "resize") -> None:
        check_choice("data.eval_view", view, EVAL_VIEWS)
        self.frames = frames
        self.size = size
        self.view = view
        self.capacity = max(0, min(int(capacity), len(frames)))
        self.identity = tuple(frames.shape[1:3]) == (size, size)
        self.slot = np.full(len(frames), -1, dtype=np.int64)
        self.table: torch.Tensor | None = None
        self.used = 0
        self._lock = threading.Lock()

    def take(self, index: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (len(index), 3, S, S) views of frames ``index``, on the host (in ``out`` when given)."""
        if out is None:
            out = torch.empty((len(index), 3, self.size, self.size), dtype=torch.uint8)
        if self.identity:
            return out.copy_(host_tensor(self.frames)[torch.from_numpy(index)].permute(0, 3, 1, 2))
        with self._lock:
            unique = np.unique(index)
            missing = unique[self.slot[unique] < 0]
            unkept, views = self._store(missing) if len(missing) else (missing, None)
            slots = self.slot[index]
            table = self.table
        if views is None:
            return torch.index_select(table, 0, torch.from_numpy(slots), out=out)
        stored = slots >= 0
        if stored.any():
            out[torch.from_numpy(stored)] = table[torch.from_numpy(slots[stored])]
        out[torch.from_numpy(~stored)] = views[torch.from_numpy(np.searchsorted(unkept, index[~stored]))]
        return out

    def kept_slots(self, index: np.ndarray) -> np.ndarray | None:
        """Rows of ``table`` holding the views of frames ``index`` when every one of them is kept, else None."""
        if self.identity or self.table is None:
            return None
        with self._lock:
            slots = self.slot[index]
        return None if bool((slots < 0).any()) else slots

    def _store(self, missing: np.ndarray) -> tuple[np.ndarray, torch.Tensor | None]:
        """Resize ``missing`` (sorted, unique) frames and keep as many as fit; returns the frames not kept and their
        views (None when all were kept)."""
        fresh = eval_view_uint8(torch.from_numpy(np.ascontiguousarray(self.frames[missing])), self.size, self.view)
        fresh = fresh.permute(0, 3, 1, 2).contiguous()
        keep = min(len(missing), self.capacity - self.used)
        if keep > 0:
            if self.table is None:
                self.table = torch.empty((self.capacity, 3, self.size, self.size), dtype=torch.uint8)
            self.table[self.used:self.used + keep] = fresh[:keep]
            self.slot[missing[:keep]] = np.arange(self.used, self.used + keep)
            self.used += keep
        return missing[keep:], (None if keep == len(missing) else fresh[keep:])


class AVAugment:
    """The cache-backed ``Augment``: audio rows + frame choice + image transforms + audio time crop, once per batch.

    Every batch-sized tensor it makes lives in a per-thread ``BufferRing``: the served ``audio`` and ``visual`` (and
    on CUDA the pinned host buffers the gathers fill) are reused once the caller has dropped the batch they served.

    Args:
        frames: the cache's uint8 (total_frames, H, W, 3) array (memory-mapped).
        num_frames: T frames per clip.
        image_size: S of the served (3, T, S, S).
        frame_rule: one of ``FRAME_RULES``.
        audio_frames: when > 0, serve a crop of this many audio time frames.
        audio: the cache's float16 (N, F, T) array; when given, batches carry only ``ROWS_KEY`` and the audio is
            gathered here (on the device when resident); without it a batch must carry ``audio`` already.
        resample: training crop filter: ``pil`` (uint8, per frame), ``fast`` (roi_align) or ``exact`` (PIL's filter
            in float32, batched).
        resident: where the arrays live (``CacheArrays``).
        eval_cache_frames: test-time frame views kept at most (``EvalViews``).
        compile_views: on a CPU, serve batches of kept test-time views with the compiled kernel
            (``normalized_views_compiled``) instead of one eager conversion per view; the same bits.
        crop_scale: RandomResizedCrop's range of the crop's share of the frame area.
        crop_per: one of ``CROP_PER``: a crop box and flip drawn for every frame, or one per clip for its T frames.
        eval_view: one of ``EVAL_VIEWS``: the test-time view (``EvalViews``).
    """

    def __init__(self, frames: np.ndarray, *, num_frames: int, image_size: int, frame_rule: str = "segments",
                 audio_frames: int = 0, audio: np.ndarray | None = None, resample: str = "pil",
                 resident: str = "none", eval_cache_frames: int = 0, compile_views: bool = False,
                 crop_scale: Sequence[float] = CROP_SCALE, crop_per: str = "frame", eval_view: str = "resize"
                 ) -> None:
        check_frame_rule(frame_rule, num_frames)
        check_choice("data.crop_per", crop_per, CROP_PER)
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"data.resample={resample!r} is not one of {RESAMPLE_MODES}")
        check_crop_scale("data.crop_scale", crop_scale)
        if num_frames < 1 or image_size < 1:
            raise ValueError(f"num_frames and image_size must be >= 1, got {num_frames} and {image_size}")
        arrays = {"frames": frames} if audio is None else {"frames": frames, "audio": audio}
        self.arrays = CacheArrays(arrays, resident)
        self.eval_views = EvalViews(frames, image_size, eval_cache_frames, eval_view)
        self.frame_size = tuple(frames.shape[1:3])
        self.num_frames = num_frames
        self.image_size = image_size
        self.frame_rule = frame_rule
        self.audio_frames = audio_frames
        self.resample = resample
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.crop_per = crop_per
        self.compile_views = compile_views
        # Set to a ``StageTimes`` to profile the serving stages (``augbench bench data``).
        self.times: StageTimes | None = None
        # None: decided by the device (see ``resized_crop_pil`` and ``_frames_to_crop``); tests set them to run the
        # CUDA branches on a CPU.
        self.integer_kernel: bool | None = None
        self.crop_in_place: bool | None = None
        self._local = threading.local()

    @property
    def ring(self) -> BufferRing:
        """This thread's buffers (a prefetch thread has its own)."""
        if not hasattr(self._local, "ring"):
            self._local.ring = BufferRing()
        return self._local.ring

    def _stage(self, name: str, device: torch.device) -> contextlib.AbstractContextManager:
        return _UNTIMED if self.times is None else self.times.stage(name, device)

    def read_frames(self, index: np.ndarray, device: torch.device) -> torch.Tensor:
        """uint8 (len(index), H, W, 3) frames on ``device``, read once each in sorted order."""
        unique, inverse = np.unique(index, return_inverse=True)
        block = self.arrays.take("frames", unique, device, self.ring)
        if len(unique) == len(index) and np.array_equal(unique, index):
            return block
        return block.index_select(0, to_device(torch.from_numpy(inverse.reshape(-1)), device))

    def _frames_to_crop(self, index: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(frames, positions) such that ``frames[positions[i]]`` is frame ``index[i]``, on ``device``: the whole
        source array where it already is there (host arrays for a CPU batch, device-resident ones), so only the
        crops are read; otherwise the distinct frames gathered into a pinned buffer and copied over."""
        in_place = self.crop_in_place
        if in_place is None:
            in_place = device.type == "cpu" or self.arrays.resident_on(device) is not None
        if in_place:
            return self.arrays.source("frames", device), torch.from_numpy(index)
        unique, inverse = np.unique(index, return_inverse=True)
        return self.arrays.take("frames", unique, device, self.ring), torch.from_numpy(inverse.reshape(-1))

    def _crops_on_cpu(self, device: torch.device) -> bool:
        """Whether the ``pil`` crops run on the CPU's integer kernel straight from the arrays (the CPU default), so
        each crop can be converted and normalised on its own (``resized_crop_pil_normalized``)."""
        return (device.type == "cpu" and self.integer_kernel in (None, True) and self.crop_in_place in (None, True)
                and self.arrays.source("frames", device).device.type == "cpu")

    def _train_pil(self, index: np.ndarray, boxes: torch.Tensor, flip: torch.Tensor, device: torch.device
                   ) -> torch.Tensor:
        """The ``pil`` filter: crops resized and flipped on uint8; (N, S, S, 3) uint8."""
        n, s = len(index), self.image_size
        with self._stage("frame gather", device):
            frames, positions = self._frames_to_crop(index, device)
        with self._stage("crop/resize+flip", device):
            out = self.ring.get("crops", (n, s, s, 3), torch.uint8, device)
            return resized_crop_pil(frames, positions, boxes, s, out, integer=self.integer_kernel, flip=flip)

    def _train_float(self, index: np.ndarray, boxes: torch.Tensor, flip: torch.Tensor, device: torch.device
                     ) -> torch.Tensor:
        """The ``fast``/``exact`` filters: whole frames to float, then one batched crop; float (N, 3, S, S)."""
        height, width = self.frame_size
        with self._stage("frame gather", device):
            frames = self.read_frames(index, device)
        with self._stage("conversion", device):
            # NCHW float in one pass (conversion + transpose); both resamplers are fastest on contiguous NCHW.
            images = self.ring.get("frames float", (len(index), 3, height, width), torch.float32, device)
            images.copy_(frames.permute(0, 3, 1, 2))
        with self._stage("crop/resize", device):
            crop = resized_crop_fast if self.resample == "fast" else resized_crop
            images = crop(images, to_device(boxes, device), self.image_size)
        with self._stage("flip", device):
            flipped = torch.nonzero(flip)[:, 0]
            if len(flipped):
                flipped = to_device(flipped, device)
                images.index_copy_(0, flipped, images.index_select(0, flipped).flip(-1))
        return images

    def visual(self, starts: torch.Tensor, counts: torch.Tensor, generator: torch.Generator, train: bool,
               device: torch.device) -> torch.Tensor:
        b, t, s = len(starts), self.num_frames, self.image_size
        offsets = frame_offsets(counts, t, self.frame_rule, train, generator)
        index = (starts.cpu().to(torch.int64)[:, None] + offsets).reshape(-1).numpy()
        clips = self.ring.get("visual", (b, 3, t, s, s), torch.float32, device)
        if train:
            height, width = self.frame_size
            draws = b if self.crop_per == "clip" else b * t
            boxes = crop_boxes(draws, height, width, generator, scale=self.crop_scale)
            flip = torch.rand(draws, generator=generator) < FLIP_PROB
            if self.crop_per == "clip":
                # Every path below takes one box and flip per frame; a clip's frames are consecutive in ``index``.
                boxes, flip = boxes.repeat_interleave(t, dim=0), flip.repeat_interleave(t)
            if self.resample == "pil" and self._crops_on_cpu(device):
                # The fused kernel reads the frames itself: this stage only looks the array up.
                with self._stage("frame array lookup", device):
                    frames = self.arrays.source("frames", device)
                with self._stage("frame read+crop/resize+flip+conversion+normalisation", device):
                    return resized_crop_pil_normalized(frames, torch.from_numpy(index), boxes, clips, flip=flip)
            if self.resample == "pil":
                crops = self._train_pil(index, boxes, flip, device)
                with self._stage("conversion+normalisation", device):
                    return normalize_into(clips, crops.view(b, t, s, s, 3).permute(0, 4, 1, 2, 3))
            images = self._train_float(index, boxes, flip, device)
            with self._stage("collation", device):
                clips.copy_(images.view(b, t, 3, s, s).transpose(1, 2))
        else:
            slots = self.eval_views.kept_slots(index) if device.type == "cpu" else None
            if slots is not None:
                serve = normalized_views_compiled if self.compile_views else normalized_views_into
                with self._stage("view gather+conversion+normalisation", device):
                    return serve(clips, self.eval_views.table, slots)
            with self._stage("frame gather", device):
                views = self.eval_views.take(index, self.ring.get("views", (b * t, 3, s, s), torch.uint8,
                                                                  torch.device("cpu"), pin=device.type == "cuda"))
                views = upload(views, device, self.ring)
            with self._stage("conversion+normalisation", device):
                return normalize_into(clips, views.view(b, t, 3, s, s).transpose(1, 2))
        with self._stage("normalisation", device):
            return normalize_(clips)

    def audio(self, audio: torch.Tensor, generator: torch.Generator, train: bool) -> torch.Tensor:
        """Time crop (when ``audio_frames``), then float32 into a reused buffer; ``audio`` is (B, 1, F, T) on the
        device."""
        if self.audio_frames:
            b, _, f, total = audio.shape
            if train:
                starts = torch.floor(torch.rand(b, generator=generator, dtype=torch.float64)
                                     * (total - self.audio_frames + 1)).to(torch.int64)
            else:
                starts = torch.zeros(b, dtype=torch.int64)
            index = to_device(starts[:, None] + torch.arange(self.audio_frames)[None], audio.device)
            audio = audio.gather(3, index[:, None, None, :].expand(b, 1, f, self.audio_frames))
        with self._stage("audio conversion", audio.device):
            return self.ring.get("audio", tuple(audio.shape), torch.float32, audio.device).copy_(audio)

    def _audio_rows(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        """float32 (B, 1, F, T) of the float16 cached rows ``rows``, each row converted straight from the arrays
        into the reused served buffer (a CPU batch with no audio time crop): every stored byte is read once, no
        float16 batch is gathered first; the same values as gathering and converting the batch."""
        source = self.arrays.source("audio", device)
        out = self.ring.get("audio", (len(rows), 1, *source.shape[1:]), torch.float32, device)
        for i, row in enumerate(rows.tolist()):
            out[i, 0].copy_(source[row])
        return out

    def __call__(self, batch: Batch, generator: torch.Generator, train: bool) -> Batch:
        starts, counts = batch.pop(FRAME_START_KEY), batch.pop(FRAME_COUNT_KEY)
        rows = batch.pop(ROWS_KEY, None)
        device = batch["label"].device
        served = None
        if "audio" not in batch:
            if rows is None or "audio" not in self.arrays.host:
                raise KeyError(f"AVAugment needs either batch['audio'] or the cache's audio array and "
                               f"batch[{ROWS_KEY!r}]")
            if device.type == "cpu" and not self.audio_frames:
                with self._stage("audio gather+conversion", device):
                    served = self._audio_rows(rows.cpu().numpy(), device)
            else:
                with self._stage("audio gather", device):
                    batch["audio"] = self.arrays.take("audio", rows.cpu().numpy(), device, self.ring)[:, None]
        batch["visual"] = self.visual(starts, counts, generator, train, device)
        batch["audio"] = served if served is not None else self.audio(batch["audio"], generator, train)
        return batch
