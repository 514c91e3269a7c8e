"""Data-pipeline speed: the cache loader against per-sample media loading, on the same prepared tree.

``benchmark_data`` times batches of one split through (a) the cache-backed ``DataBundle`` loader (memmap gather +
per-batch ``AVAugment``) and (b) ``datasets.media_loader.MediaDataset`` in a ``DataLoader`` with no workers (decode
WAV + STFT + decode JPEGs/video + PIL transforms per item, as the published loaders do), both on one CPU thread, and
reports samples per second, in the process's CPU time (the figures then do not depend on how many CPU slices this
process got on a loaded machine, though other processes' memory traffic still slows it) and in wall time alongside.
It reads the raw media the cache was built from (``raw_root`` in the manifest, or
``raw_dir``). The evaluation view is timed in its steady state: one untimed pass over the split first, as every
evaluation after the first epoch's finds the test-time frame views computed (``datasets.augment.EvalViews``).

``bench_tree`` makes a tree to measure when no prepared cache is given: AV-Digits generated in CREMA-D's layout,
its 1 fps frames extracted to JPEG folders the way OGM-GE's ``data/CREMAD/video_preprocessing.py`` writes them
(``Image-01-FPS/<id>/{absolute frame index:05d}.jpg``, docs/datasets/pitfalls.md) at CREMA-D's video size, 480x360
(AV-Digits renders 160x120: the frames are upscaled, so the media loader decodes and resizes as many pixels per
frame as on CREMA-D, though of smoother pictures), prepared as ``cremad`` so that the cache stores and serves
CREMA-D's sizes (frames 256x341 -> 224, the recipe's spectrogram). Figures are benchmark results, never test
assertions.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from core.hparams import resolve
from datasets.audio_visual import audio_pipeline
from datasets.augment import AVAugment, EvalViews, StageTimes, frame_offsets
from datasets.cache import open_cache
from datasets.media_loader import MediaDataset, items_from_cache
from datasets.registry import get_dataset

# cv2.imwrite's default JPEG quality, which OGM-GE's frame extraction uses.
JPEG_QUALITY = 95
# CREMA-D's video frames (VideoFlash/*.flv: flv1, 480x360, 30 fps) as (H, W), the size of the bench tree's JPEGs: the
# per-sample loader's decoding and resizing cost grows with it.
CREMAD_FRAME_SIZE = (360, 480)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# The stream order of each round, repeating every three rounds. A stream can run slower right after another (the
# cache loader measured 3150-3200 samples/s right after the media loader, 3860-4170 in a second cache stream), so a
# fixed order would charge one stream its predecessor's after-effects in every round.
# Over one cycle each stream follows each other stream exactly once, counting the turn from one round into the next
# and from the last round back to the first (which the warm-up's order stands in for before round 0).
ROUND_ORDERS = (("cache", "floor", "host", "media"), ("floor", "media", "host", "cache"),
                ("host", "floor", "cache", "media"))


def round_order(index: int) -> tuple[str, ...]:
    """The streams in the order round ``index`` times them (``ROUND_ORDERS``, cyclic)."""
    return ROUND_ORDERS[index % len(ROUND_ORDERS)]


class _Timed:
    """A batch stream timed in slices: ``take(count)`` times the next ``count`` batches (restarting the stream when it
    ends) and adds them to the totals, so that several streams can be timed in interleaved rounds. Both the wall time
    and the process's CPU time (``time.process_time``: every thread of the process, a prefetch thread included) are
    summed."""

    def __init__(self, name: str, start: Callable[[], Iterator], device: torch.device | None = None) -> None:
        self.name, self.start, self.device = name, start, device or torch.device("cpu")
        self.iterator = start()
        self.samples, self.seconds, self.cpu_seconds = 0, 0.0, 0.0

    def _next(self) -> Any:
        batch = next(self.iterator, None)
        if batch is None:
            self.iterator = self.start()
            batch = next(self.iterator)
        return batch

    def skip(self, count: int) -> None:
        for _ in range(count):
            self._next()

    def take(self, count: int) -> None:
        _sync(self.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        samples = 0
        for _ in range(count):
            samples += len(self._next()["label"])
        _sync(self.device)
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += time.process_time() - cpu_start
        self.samples += samples

    @property
    def rate(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("inf")

    @property
    def cpu_rate(self) -> float:
        return self.samples / self.cpu_seconds if self.cpu_seconds > 0 else float("inf")


def _floor_batches(loader: Any, augment: AVAugment, starts: np.ndarray, counts: np.ndarray, frames: int
                   ) -> Callable[[], Iterator[dict[str, Any]]]:
    """The bandwidth floor of an epoch of ``loader``: per batch, the float16 audio rows and the batch's uint8 S x S
    frame views (its test-time views, computed here once, before any timing), in sorted order, each stored row read
    once and converted straight to float32 into buffers made once (row by row, which measured faster than a gather
    followed by one conversion of the gathered batch: the row is converted while it is in cache). No crop, flip,
    normalisation or collation: what serving a float32 batch costs at least. Returns a function starting such an
    epoch."""
    audio = augment.arrays.host_source("audio")
    views = EvalViews(augment.eval_views.frames, augment.image_size, capacity=len(augment.eval_views.frames),
                      view=augment.eval_views.view)
    order = loader._order()
    plan = []
    for first in range(0, len(order), loader.batch_size):
        rows = np.sort(loader.rows[order[first:first + loader.batch_size]])
        index = (starts[rows][:, None] + frame_offsets(torch.from_numpy(counts[rows]), frames, augment.frame_rule,
                                                       False, None).numpy()).reshape(-1)
        views.take(index)
        plan.append((torch.from_numpy(rows), torch.from_numpy(np.sort(views.slot[index]))))
    table = views.table
    buffers: dict[int, dict[str, torch.Tensor]] = {}

    def epoch() -> Iterator[dict[str, Any]]:
        for rows, slots in plan:
            if len(rows) not in buffers:
                buffers[len(rows)] = {"a32": torch.empty((len(rows), *audio.shape[1:])),
                                      "v32": torch.empty((len(slots), *table.shape[1:]))}
            out = buffers[len(rows)]
            for i, row in enumerate(rows.tolist()):
                out["a32"][i].copy_(audio[row])
            for i, slot in enumerate(slots.tolist()):
                out["v32"][i].copy_(table[slot])
            yield {"label": rows}

    return epoch


def _host_batches(loader: Any, augment: AVAugment, starts: np.ndarray, counts: np.ndarray, frames: int, train: bool,
                  seed: int) -> Iterator[dict[str, Any]]:
    """The host's share of a CUDA batch served from the host arrays (``data.resident`` none/memory): the gathers of
    the float16 audio rows and of the distinct uint8 frames into the ring buffers ``AVAugment`` uses (pinned on
    CUDA, plain here), through the same ``CacheArrays.take``; the crops, flips and conversions then run on the
    device."""
    order = loader._order()
    generator = torch.Generator().manual_seed(seed)
    for first in range(0, len(order), loader.batch_size):
        rows = np.sort(loader.rows[order[first:first + loader.batch_size]])
        offsets = frame_offsets(torch.from_numpy(counts[rows]), frames, augment.frame_rule, train, generator)
        index = (starts[rows][:, None] + offsets.numpy()).reshape(-1)
        augment.arrays.take("audio", rows, torch.device("cpu"), augment.ring)
        if train:
            augment.arrays.take("frames", np.unique(index), torch.device("cpu"), augment.ring)
        else:
            augment.eval_views.take(index, augment.ring.get("views", (len(index), 3, augment.image_size,
                                                                      augment.image_size), torch.uint8,
                                                            torch.device("cpu")))
        yield {"label": rows}


def _profile(loader: Any, augment: AVAugment, batches: int, device: torch.device) -> dict[str, float]:
    """ms per sample of each serving stage over ``batches`` batches: ``AVAugment``'s stages, the loader's own work
    (shuffle order, row notes, labels: ``loader``), and the Python between the timed stages (``python overhead``).
    On a CPU in CPU time (``StageTimes`` times each stage in its thread's CPU time, the totals here are the process's
    CPU time), on CUDA in wall time."""
    times = StageTimes()
    inner = loader.augment
    augment_seconds = [0.0]
    clock = time.perf_counter if device.type == "cuda" else time.process_time

    def timed(batch: dict, generator: torch.Generator, train: bool) -> dict:
        start = clock()
        out = inner(batch, generator, train)
        augment_seconds[0] += clock() - start
        return out

    loader.augment, augment.times = timed, times
    try:
        iterator, samples = iter(loader), 0
        start = clock()
        for _ in range(batches):
            batch = next(iterator, None)
            if batch is None:
                break
            samples += len(batch["label"])
        total = clock() - start
    finally:
        loader.augment, augment.times = inner, None
    per = 1e3 / max(samples, 1)
    profile = {name: seconds * per for name, seconds in times.seconds.items()}
    profile["python overhead"] = (augment_seconds[0] - sum(times.seconds.values())) * per
    profile["loader"] = (total - augment_seconds[0]) * per
    profile["total"] = total * per
    return profile


def benchmark_data(prepared_dir: Path | str, *, raw_dir: Path | str | None = None, split: str = "train",
                   train: bool = True, batch_size: int = 32, batches: int = 5, rounds: int = 3, warmup: int = 1,
                   image_size: int | None = None, frames: int | None = None, seed: int = 0,
                   data: dict[str, Any] | None = None, device: str = "cpu") -> dict[str, Any]:
    """Samples/s of the cache loader vs the per-sample media loader and the bandwidth floor, one CPU thread.

    After a warm epoch of the cache loader (the cache is then in RAM or the page cache, the test-time views are
    kept), ``rounds`` rounds each time ``batches`` batches of: the cache loader, its bandwidth floor
    (``_floor_batches``), the host share of a CUDA batch (``_host_batches``) and the media loader, interleaved so
    that a shared or throttled machine slows all alike and the ratios hold. The order changes from round to round
    (``ROUND_ORDERS``, a cycle of three): over each three rounds every stream runs right after each other stream
    exactly once, so that no stream is always timed right after the same one (the one before can slow it); with a
    multiple of three rounds every stream had every predecessor equally often. Every rate and ratio is reported in
    the process's CPU time (``cpu_*``: what the work costs, whatever share of the machine the process got) and in
    wall time; on CUDA the wall figures count (the device's time is no CPU time). Further passes, one per round,
    profile the stages (median over the passes).

    Args:
        prepared_dir: a finished cache folder.
        raw_dir: the raw tree it was built from (default: the manifest's ``raw_root``).
        split: bundle split to read (``train``, ``val``, ``test``).
        train: training transforms (random crops, flips, frame choice) or the test view.
        batch_size: samples per batch.
        batches: timed batches per loader per round.
        rounds: interleaved rounds.
        warmup: untimed batches of each stream before the first round.
        image_size: S (default: the dataset's ``data.image_size``).
        frames: T (default: the dataset's ``data.frames``).
        seed: loader seed.
        data: further ``data.*`` overrides for the cache loader (``resample``, ``resident``, ...).
        device: where the cache loader serves batches (the media loader always runs on the CPU, as published).

    Returns:
        A dict with the rates and ratios (CPU time and wall time), the stage profile (ms per sample) and the settings
        measured.
    """
    cache = open_cache(Path(prepared_dir))
    dataset = get_dataset(cache.manifest["dataset"])
    overrides: dict[str, Any] = {**(data or {}), "cache": str(prepared_dir)}
    if image_size is not None:
        overrides["image_size"] = image_size
    if frames is not None:
        overrides["frames"] = frames
    hp = resolve("data", dataset.HPARAMS, dataset.NAME, overrides)
    target = torch.device(device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bundle = dataset.build(hp)
        augment = bundle.augment
        loader = bundle.loader(split, batch_size=batch_size, train=train, seed=seed, device=target)
        for _ in loader:  # the warm epoch
            pass
        starts, counts = cache.starts["frames"], cache.counts["frames"]
        items = items_from_cache(cache, bundle.splits[split], raw_dir)
        media = MediaDataset(items, audio_pipeline(cache), num_frames=hp.frames, image_size=hp.image_size, train=train,
                             frame_rule=hp.frame_rule, frames_per_second=cache.manifest["visual"]["per_second"],
                             seed=seed, crop_scale=hp.crop_scale, crop_per=hp.crop_per, eval_view=hp.eval_view)
        media_loader = torch.utils.data.DataLoader(media, batch_size=batch_size, shuffle=train, num_workers=0,
                                                   generator=torch.Generator().manual_seed(seed))
        streams = {"cache": _Timed("cache", lambda: iter(loader), target),
                   "floor": _Timed("floor", _floor_batches(loader, augment, starts, counts, hp.frames)),
                   "host": _Timed("host", lambda: _host_batches(loader, augment, starts, counts, hp.frames, train,
                                                                seed)),
                   "media": _Timed("media", lambda: iter(media_loader))}
        # The warm-up ends on the last stream of the cycle, so round 0's first stream follows the one it follows
        # when the cycle repeats.
        for name in round_order(-1):
            streams[name].skip(warmup)
        for index in range(rounds):
            for name in round_order(index):
                streams[name].take(batches)
        # One pass of a few batches moved by up to half between invocations on a shared machine; the median of one
        # pass per round follows the interleaved rates.
        passes = [_profile(loader, augment, batches, target) for _ in range(rounds)]
        profile = {stage: float(np.median([p.get(stage, 0.0) for p in passes])) for stage in passes[0]}
    finally:
        torch.set_num_threads(threads)
    rates = {name: stream.rate for name, stream in streams.items()}
    cpu = {name: stream.cpu_rate for name, stream in streams.items()}
    return {"cpu_samples_per_s": cpu, "cpu_speedup": cpu["cache"] / cpu["media"],
            "cpu_floor_ratio": cpu["floor"] / cpu["cache"], "cpu_host_speedup": cpu["host"] / cpu["media"],
            "cache_samples_per_s": rates["cache"], "media_samples_per_s": rates["media"],
            "floor_samples_per_s": rates["floor"], "host_samples_per_s": rates["host"],
            "speedup": rates["cache"] / rates["media"], "floor_ratio": rates["floor"] / rates["cache"],
            "host_speedup": rates["host"] / rates["media"], "profile_ms_per_sample": profile,
            "timed_samples": {name: stream.samples for name, stream in streams.items()},
            "batch_size": batch_size, "batches": batches, "rounds": rounds,
            "threads": 1, "split": split, "train": train, "dataset": cache.manifest["dataset"],
            "recipe": cache.manifest["recipe"], "audio_shape": cache.manifest["served_audio_shape"],
            "visual_source": cache.manifest["visual"]["source"], "stored_frame": cache.manifest["visual"]["frame_size"],
            "image_size": hp.image_size, "frames": hp.frames, "resample": hp.resample, "resident": hp.resident,
            "compile_views": hp.compile_views, "device": str(target), "load_average": load_average()}


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages while measuring (a shared machine shows here), where the OS reports them."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _jpeg_size(folder: Path) -> tuple[int, int] | None:
    """(H, W) of the first JPEG in ``folder``, None when it holds none."""
    from PIL import Image

    first = min(folder.glob("*.jpg"), default=None)
    if first is None:
        return None
    with Image.open(first) as image:
        return image.height, image.width


def extract_jpeg_frames(raw: Path, video_dir: str = "VideoFlash", frames_dir: str = "Image-01-FPS",
                        size: tuple[int, int] = CREMAD_FRAME_SIZE, log: Callable[[str], None] = print) -> int:
    """Write the first frame of every second of each ``raw/video_dir/*`` video, resized to ``size`` (H, W), to
    ``raw/frames_dir/<id>/`` as ``{absolute frame index:05d}.jpg`` (OGM-GE ``video2frame_update``,
    docs/datasets/pitfalls.md); returns the clips written.

    A clip whose folder holds frames of ``size`` already is skipped, so an interrupted extraction resumes; a folder of
    another size (a tree extracted before the frames were made CREMA-D's size) is extracted again, so that the figures
    never silently come from smaller frames.
    """
    from PIL import Image

    from datasets.media.video import extract_frames

    videos = sorted(p for p in (raw / video_dir).iterdir() if p.is_file())
    written, replaced = 0, 0
    for video in videos:
        folder = raw / frames_dir / video.stem
        if folder.is_dir() and _jpeg_size(folder) == tuple(size):
            continue
        frames, info = extract_frames(video, size, 1)
        partial = folder.with_name(folder.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        for k, frame in enumerate(frames):
            Image.fromarray(frame).save(partial / f"{k * info['fps']:05d}.jpg", quality=JPEG_QUALITY)
        if folder.is_dir():
            shutil.rmtree(folder)
            replaced += 1
        partial.rename(folder)
        written += 1
    again = f" ({replaced} of them again: their frames were not {size[1]}x{size[0]})" if replaced else ""
    log(f"extracted 1 fps {size[1]}x{size[0]} JPEG frames of {written} clips into {raw / frames_dir}{again}")
    return written


def bench_tree(work: Path, *, preset: str = "small", recipe: str = "aug", workers: int = 0,
               log: Callable[[str], None] = print, **generate_params: Any) -> Path:
    """A prepared cache to benchmark, made once under ``work`` and reused: AV-Digits (``preset``) generated into
    ``work/data``, JPEG frame folders extracted at CREMA-D's frame size, prepared as ``cremad`` with ``recipe`` into
    ``work/cache`` (built again when frames were extracted again). An existing tree of other knobs, or one whose
    files changed, is refused (``check_tree``).

    Returns:
        The finished cache folder.
    """
    from datasets.av_digits import ROOT_NAME, check_tree, generate
    from datasets.prepare import prepare
    from datasets.tables import PrepareOptions, StaleCacheError

    work = Path(work)
    raw = work / "data" / ROOT_NAME
    if raw.is_dir():
        # The figures are named by the preset asked for: a tree of another one (or damaged) would measure other data.
        check_tree(raw, preset=preset, **generate_params)
    else:
        log(f"generating AV-Digits ({preset}) into {raw}")
        generate(work / "data", preset=preset, **({"workers": workers} if workers else {}), **generate_params)
    extract_jpeg_frames(raw, log=log)
    opts = PrepareOptions(recipe=recipe, splits_dir=raw / "annotations", label_order="stat", visual="frames",
                          workers=workers)
    # prepare reuses a finished cache built from the same media and options. One built from frames since rewritten
    # (in this run or in one that stopped before preparing) is refused; the bench owns this tree, so it rebuilds it.
    try:
        return prepare(get_dataset("cremad"), raw, work / "cache", opts, log=log)
    except StaleCacheError as err:
        log(f"rebuilding the bench cache: {err}")
        return prepare(get_dataset("cremad"), raw, work / "cache", replace(opts, force=True), log=log)
