"""Per-batch augmentation of cached audio-visual batches, vectorised on the batch's device
(docs/datasets/cache.md#serving).

``AVAugment`` is the ``Augment`` a cache-backed ``DataBundle`` hands its loaders. Per batch it:

1. reads the batch's audio rows and chooses the frames of every clip from its cached ``frame_start``/``frame_count``
   (``frame_offsets``), each with one sorted fancy index into the cache arrays (``CacheArrays``: memory-mapped, in
   RAM, or resident on the batch's device, where the gather is a device ``index_select`` and nothing is copied from
   the host);
2. train: RandomResizedCrop with torchvision's parameterisation (scale (0.08, 1), ratio (3/4, 4/3), 10 attempts,
   then the centre-crop fallback; ``crop_boxes``), then a horizontal flip with probability 0.5, both drawn per frame
   as the published loaders transform each frame separately (GitHub: GeWu-Lab/OGM-GE_CVPR2022,
   ``dataset/CramedDataset.py``). The crop is resampled in one batched call on the device, by one of two filters
   (``data.resample``):

   - ``fast`` (default): ``torchvision.ops.roi_align(aligned=True, sampling_ratio=-1)``, the ``roi_align`` the data
     spec names: bilinear sampling at the output pixel centres, averaged over ceil(crop / S) sub-samples per axis
     when the crop is shrunk (an area-style antialias). Deviation from PIL's antialiased bilinear: the filter
     support when shrinking is a box of sub-samples rather than PIL's stretched triangle, and pixels just outside
     the crop box take part at its border. ``tests/test_speed_paths.py`` bounds the difference to torchvision's
     ``resized_crop(antialias=True)``;
   - ``exact``: PIL's antialiased bilinear filter as separable per-sample weight matrices (``resized_crop``), equal
     to torchvision's ``resized_crop(..., antialias=True)`` up to float rounding, at about 4x the CPU cost.

   Evaluation: ``Resize((S, S))`` with the antialiased bilinear filter on uint8 frames, rounded to uint8 as PIL does
   in the published pipeline; each frame's view is computed once on the CPU and kept (``EvalViews``), so later
   evaluations are a gather and a normalisation, and CPU and GPU runs serve identical evaluation batches;
3. scales to [0, 1] and applies ImageNet normalisation in place; serves ``visual`` as float32 (B, 3, T, S, S);
4. serves ``audio`` as float32 (B, 1, F, T), converted from the cached float16 on the device; an audio pipeline
   with ``serve_frames`` gets a time crop (train: random start, test: the first frames), cut before the conversion.

Every random number comes from the CPU ``torch.Generator`` the loader passes (seeded by run seed and epoch), drawn in
a fixed order (frame offsets, crop boxes, flips, audio starts), so CPU and GPU runs see the same frames, crops and
flips and an interrupted epoch replays exactly; evaluation draws nothing. The batch keys starting with ``_`` that
the gather fills stay on the host (``core.data.BatchLoader``), so choosing frames never waits for the device.

Frame rules: ``segments`` splits a clip's n frames into T equal segments and takes a uniformly random frame of each
(train) or its middle frame (test), i.e. index ``floor((i + u) * n / T)`` with u ~ U[0, 1) or u = 0.5, so clips
with fewer than T frames repeat frames instead of failing; ``first_k`` takes frames 0..T-1 of the sorted list
(what OGM-GE/AUG/AMSS effectively do once their unused random index is ignored,
docs/datasets/pitfalls.md#unsorted-listing), repeating the last frame of short clips.
"""

from __future__ import annotations

import functools
import math
import threading
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from core.data import Batch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10
FLIP_PROB = 0.5
FRAME_RULES = ("segments", "first_k")
RESAMPLE_MODES = ("fast", "exact")
RESIDENT_MODES = ("auto", "none", "memory", "device")
# Batch keys the gather step fills and AVAugment consumes; they stay on the host and methods never see them.
ROWS_KEY = "_rows"
FRAME_START_KEY = "_frame_start"
FRAME_COUNT_KEY = "_frame_count"
# ``resident: auto`` puts the arrays on a CUDA device only when they take at most this share of its free memory.
AUTO_DEVICE_SHARE = 0.5
# Host -> device copies of whole arrays go in chunks of this many bytes, so no giant pageable staging buffer is made.
COPY_CHUNK_BYTES = 256 << 20


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


def resize_uint8(frames: torch.Tensor, size: int) -> torch.Tensor:
    """``Resize((size, size))`` of uint8 (N, H, W, 3) frames -> uint8 (N, size, size, 3), antialiased bilinear.

    Runs torch's uint8 channels-last kernel (the PIL-style fixed-point path), which rounds to uint8 as the
    published PIL pipeline does, about 5x faster on a CPU than the float kernel.
    """
    if frames.shape[1:3] == (size, size):
        return frames
    out = F.interpolate(frames.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False,
                        antialias=True)
    return out.permute(0, 2, 3, 1).contiguous()


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


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor -> ``device``; through pinned memory and a non-blocking copy on CUDA."""
    if device.type == "cuda" and not tensor.is_cuda:
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _available_ram() -> int | None:
    """``MemAvailable`` from /proc/meminfo in bytes, or None where there is no such file."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


class CacheArrays:
    """The cache arrays batches are gathered from, resident where ``data.resident`` says.

    ``none``: the memory-mapped arrays (the OS page cache keeps what fits in RAM); ``memory``: loaded once into RAM
    (no page faults or disk reads after the first epoch); ``device``: copied once to the batch's device, where a
    gather is an ``index_select`` on the device and nothing crosses the bus per batch; ``auto``: ``device`` on a
    CUDA device when all arrays take at most ``AUTO_DEVICE_SHARE`` of its free memory, else ``none``. The copies are
    made on first use, so building a bundle costs nothing.

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
        self._on_device: dict[torch.device, dict[str, torch.Tensor] | None] = {}
        self._lock = threading.Lock()

    def _load_into_ram(self) -> None:
        available = _available_ram()
        if available is not None and self.nbytes > available:
            raise MemoryError(f"data.resident=memory needs {self.nbytes / 2**30:.1f} GiB for the cache arrays, "
                              f"{available / 2**30:.1f} GiB of RAM is available; use data.resident=none")
        self.host = {name: np.array(a) for name, a in self.host.items()}
        self._loaded = True

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

    def take(self, name: str, index: np.ndarray, device: torch.device) -> torch.Tensor:
        """Rows ``index`` (sorted for locality by the caller) of array ``name``, on ``device``."""
        resident = self.resident_on(device)
        if resident is not None:
            return resident[name].index_select(0, to_device(torch.from_numpy(index), device))
        if self.mode == "memory" and not self._loaded:
            with self._lock:
                if not self._loaded:
                    self._load_into_ram()
        return to_device(torch.from_numpy(np.ascontiguousarray(self.host[name][index])), device)


class EvalViews:
    """Test-time ``Resize((S, S))`` views of cached frames (uint8), each computed once on the CPU and then kept.

    Evaluation visits the same frames every epoch (the selection rule is deterministic), so after the first pass an
    evaluation batch is a gather from this table. At most ``capacity`` frames are kept; frames beyond that are
    resized on every use. The table is allocated lazily and its pages are only touched as frames are added.

    Args:
        frames: the cache's uint8 (total_frames, H, W, 3) array (host).
        size: S.
        capacity: frames to keep at most (0 = keep none).
    """

    def __init__(self, frames: np.ndarray, size: int, capacity: int) -> None:
        self.frames = frames
        self.size = size
        self.capacity = max(0, min(int(capacity), len(frames)))
        self.identity = tuple(frames.shape[1:3]) == (size, size)
        self.slot = np.full(len(frames), -1, dtype=np.int64)
        self.table: torch.Tensor | None = None
        self.used = 0
        self._lock = threading.Lock()

    def take(self, index: np.ndarray) -> torch.Tensor:
        """uint8 (len(index), S, S, 3) views of frames ``index``, on the host."""
        unique, inverse = np.unique(index, return_inverse=True)
        if self.identity:
            views = torch.from_numpy(np.ascontiguousarray(self.frames[unique]))
        else:
            with self._lock:
                views = self._views(unique)
        if len(unique) == len(index) and np.array_equal(unique, index):
            return views
        return views[torch.from_numpy(inverse.reshape(-1))]

    def _views(self, unique: np.ndarray) -> torch.Tensor:
        missing = unique[self.slot[unique] < 0]
        fresh = resize_uint8(torch.from_numpy(np.ascontiguousarray(self.frames[missing])), self.size) \
            if len(missing) else None
        keep = min(len(missing), self.capacity - self.used)
        if keep > 0:
            if self.table is None:
                self.table = torch.empty((self.capacity, self.size, self.size, 3), dtype=torch.uint8)
            self.table[self.used:self.used + keep] = fresh[:keep]
            self.slot[missing[:keep]] = np.arange(self.used, self.used + keep)
            self.used += keep
        slots = self.slot[unique]
        if fresh is None or keep == len(missing):
            return self.table[torch.from_numpy(slots)]
        views = torch.empty((len(unique), self.size, self.size, 3), dtype=torch.uint8)
        stored = slots >= 0
        if stored.any():
            views[torch.from_numpy(stored)] = self.table[torch.from_numpy(slots[stored])]
        views[torch.from_numpy(~stored)] = fresh[keep:]
        return views


class AVAugment:
    """The cache-backed ``Augment``: audio rows + frame choice + image transforms + audio time crop, once per batch.

    Args:
        frames: the cache's uint8 (total_frames, H, W, 3) array (memory-mapped).
        num_frames: T frames per clip.
        image_size: S of the served (3, T, S, S).
        frame_rule: ``segments`` or ``first_k``.
        audio_frames: when > 0, serve a crop of this many audio time frames.
        audio: the cache's float16 (N, F, T) array; when given, batches carry only ``ROWS_KEY`` and the audio is
            gathered here (on the device when resident); without it a batch must carry ``audio`` already.
        resample: training crop filter, ``fast`` (roi_align) or ``exact`` (PIL antialiased bilinear).
        resident: where the arrays live (``CacheArrays``).
        eval_cache_frames: test-time frame views kept at most (``EvalViews``).
    """

    def __init__(self, frames: np.ndarray, *, num_frames: int, image_size: int, frame_rule: str = "segments",
                 audio_frames: int = 0, audio: np.ndarray | None = None, resample: str = "fast",
                 resident: str = "none", eval_cache_frames: int = 0) -> None:
        if frame_rule not in FRAME_RULES:
            raise ValueError(f"unknown frame rule {frame_rule!r}; valid: {FRAME_RULES}")
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"data.resample={resample!r} is not one of {RESAMPLE_MODES}")
        if num_frames < 1 or image_size < 1:
            raise ValueError(f"num_frames and image_size must be >= 1, got {num_frames} and {image_size}")
        arrays = {"frames": frames} if audio is None else {"frames": frames, "audio": audio}
        self.arrays = CacheArrays(arrays, resident)
        self.eval_views = EvalViews(frames, image_size, eval_cache_frames)
        self.frame_size = tuple(frames.shape[1:3])
        self.num_frames = num_frames
        self.image_size = image_size
        self.frame_rule = frame_rule
        self.audio_frames = audio_frames
        self.resample = resample
        self._scratch = threading.local()

    def scratch(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """A float32 work buffer of ``shape`` reused across batches (per thread): it never leaves this object, and
        a fresh one per batch costs page faults for every touched page on a CPU (allocations this large bypass the
        allocator's free lists)."""
        buffers = self._scratch.__dict__.setdefault("buffers", {})
        key = (shape, device)
        if key not in buffers:
            buffers.clear()
            buffers[key] = torch.empty(shape, device=device)
        return buffers[key]

    def read_frames(self, index: np.ndarray, device: torch.device) -> torch.Tensor:
        """uint8 (len(index), H, W, 3) frames on ``device``, read once each in sorted order."""
        unique, inverse = np.unique(index, return_inverse=True)
        block = self.arrays.take("frames", unique, device)
        if len(unique) == len(index) and np.array_equal(unique, index):
            return block
        return block.index_select(0, to_device(torch.from_numpy(inverse.reshape(-1)), device))

    def visual(self, starts: torch.Tensor, counts: torch.Tensor, generator: torch.Generator, train: bool,
               device: torch.device) -> torch.Tensor:
        b, t, s = len(starts), self.num_frames, self.image_size
        offsets = frame_offsets(counts, t, self.frame_rule, train, generator)
        index = (starts.cpu().to(torch.int64)[:, None] + offsets).reshape(-1).numpy()
        if train:
            height, width = self.frame_size
            boxes = crop_boxes(b * t, height, width, generator)
            flip = torch.rand(b * t, generator=generator) < FLIP_PROB
            frames = self.read_frames(index, device)
            # NCHW float in one pass (conversion + transpose); both resamplers are fastest on contiguous NCHW.
            images = self.scratch((b * t, 3, height, width), device)
            images.copy_(frames.permute(0, 3, 1, 2))
            crop = resized_crop_fast if self.resample == "fast" else resized_crop
            images = crop(images, to_device(boxes, device), s)
            flipped = torch.nonzero(flip)[:, 0]
            if len(flipped):
                flipped = to_device(flipped, device)
                images.index_copy_(0, flipped, images.index_select(0, flipped).flip(-1))
            clips = images.view(b, t, 3, s, s).transpose(1, 2).contiguous()
        else:
            views = to_device(self.eval_views.take(index), device)
            clips = torch.empty((b, 3, t, s, s), device=device)
            clips.copy_(views.view(b, t, s, s, 3).permute(0, 4, 1, 2, 3))
        return normalize_(clips)

    def audio(self, audio: torch.Tensor, generator: torch.Generator, train: bool) -> torch.Tensor:
        """Time crop (when ``audio_frames``), then float32; ``audio`` is (B, 1, F, T) on the device."""
        if self.audio_frames:
            b, _, f, total = audio.shape
            if train:
                starts = torch.floor(torch.rand(b, generator=generator, dtype=torch.float64)
                                     * (total - self.audio_frames + 1)).to(torch.int64)
            else:
                starts = torch.zeros(b, dtype=torch.int64)
            index = to_device(starts[:, None] + torch.arange(self.audio_frames)[None], audio.device)
            audio = audio.gather(3, index[:, None, None, :].expand(b, 1, f, self.audio_frames))
        return audio.float()

    def __call__(self, batch: Batch, generator: torch.Generator, train: bool) -> Batch:
        starts, counts = batch.pop(FRAME_START_KEY), batch.pop(FRAME_COUNT_KEY)
        rows = batch.pop(ROWS_KEY, None)
        device = batch["label"].device
        if "audio" not in batch:
            if rows is None or "audio" not in self.arrays.host:
                raise KeyError(f"AVAugment needs either batch['audio'] or the cache's audio array and "
                               f"batch[{ROWS_KEY!r}]")
            batch["audio"] = self.arrays.take("audio", rows.cpu().numpy(), device)[:, None]
        batch["visual"] = self.visual(starts, counts, generator, train, device)
        batch["audio"] = self.audio(batch["audio"], generator, train)
        return batch
