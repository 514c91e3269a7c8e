"""Data-pipeline speed: the cache loader against per-sample media loading, on the same prepared tree.

``benchmark_data`` times batches of one split through (a) the cache-backed ``DataBundle`` loader (memmap gather +
per-batch ``AVAugment``) and (b) ``datasets.media_loader.MediaDataset`` in a ``DataLoader`` with no workers (decode
WAV + STFT + decode JPEGs/video + PIL transforms per item, as the published loaders do), both on one CPU thread, and
reports samples per second. It reads the raw media the cache was built from (``raw_root`` in the manifest, or
``raw_dir``). The evaluation view is timed in its steady state: one untimed pass over the split first, as every
evaluation after the first epoch's finds the test-time frame views computed (``datasets.augment.EvalViews``).

``bench_tree`` makes a tree to measure when no prepared cache is given: AV-Digits generated in CREMA-D's layout,
its 1 fps frames extracted to JPEG folders the way OGM-GE's ``data/CREMAD/video_preprocessing.py`` writes them
(``Image-01-FPS/<id>/{absolute frame index:05d}.jpg``, docs/datasets/pitfalls.md), prepared as ``cremad`` so that the
cache stores and serves CREMA-D's sizes (frames 256x341 -> 224, the recipe's spectrogram). Figures are benchmark
results, never test assertions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from core.hparams import resolve
from datasets.audio_visual import audio_pipeline
from datasets.cache import open_cache
from datasets.media_loader import MediaDataset, items_from_cache
from datasets.registry import get_dataset

# cv2.imwrite's default JPEG quality, which OGM-GE's frame extraction uses.
JPEG_QUALITY = 95


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(batches: Iterable[dict], count: int, warmup: int, device: torch.device = torch.device("cpu")
          ) -> tuple[float, int]:
    """Samples per second over ``count`` batches after ``warmup`` untimed ones."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator, None)
    _sync(device)
    samples, start = 0, time.perf_counter()
    for _ in range(count):
        batch = next(iterator, None)
        if batch is None:
            break
        samples += len(batch["label"])
    _sync(device)
    elapsed = time.perf_counter() - start
    return (samples / elapsed if elapsed > 0 else float("inf")), samples


def benchmark_data(prepared_dir: Path | str, *, raw_dir: Path | str | None = None, split: str = "train",
                   train: bool = True, batch_size: int = 32, batches: int = 5, warmup: int = 1,
                   image_size: int | None = None, frames: int | None = None, seed: int = 0,
                   data: dict[str, Any] | None = None, device: str = "cpu") -> dict[str, Any]:
    """Samples/s of the cache loader vs the per-sample media loader, one CPU thread.

    Args:
        prepared_dir: a finished cache folder.
        raw_dir: the raw tree it was built from (default: the manifest's ``raw_root``).
        split: bundle split to read (``train``, ``val``, ``test``).
        train: training transforms (random crops, flips, frame choice) or the test view.
        batch_size: samples per batch.
        batches: timed batches per loader.
        warmup: untimed batches first (the evaluation view also gets one untimed pass over the split).
        image_size: S (default: the dataset's ``data.image_size``).
        frames: T (default: the dataset's ``data.frames``).
        seed: loader seed.
        data: further ``data.*`` overrides for the cache loader (``resample``, ``resident``, ...).
        device: where the cache loader serves batches (the media loader always runs on the CPU, as published).

    Returns:
        A dict with both rates, the speed-up and the settings measured.
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
        loader = bundle.loader(split, batch_size=batch_size, train=train, seed=seed, device=target)
        if not train:
            for _ in loader:
                pass
        cache_rate, cache_n = _rate(loader, batches, warmup, target)
        items = items_from_cache(cache, bundle.splits[split], raw_dir)
        media = MediaDataset(items, audio_pipeline(cache), num_frames=hp.frames, image_size=hp.image_size, train=train,
                             frame_rule=hp.frame_rule, frames_per_second=cache.manifest["visual"]["per_second"],
                             seed=seed)
        media_loader = torch.utils.data.DataLoader(media, batch_size=batch_size, shuffle=train, num_workers=0,
                                                   generator=torch.Generator().manual_seed(seed))
        media_rate, media_n = _rate(media_loader, batches, warmup)
    finally:
        torch.set_num_threads(threads)
    return {"cache_samples_per_s": cache_rate, "media_samples_per_s": media_rate,
            "speedup": cache_rate / media_rate if media_rate else float("inf"),
            "timed_samples": {"cache": cache_n, "media": media_n}, "batch_size": batch_size, "batches": batches,
            "threads": 1, "split": split, "train": train, "dataset": cache.manifest["dataset"],
            "recipe": cache.manifest["recipe"], "audio_shape": cache.manifest["served_audio_shape"],
            "visual_source": cache.manifest["visual"]["source"], "stored_frame": cache.manifest["visual"]["frame_size"],
            "image_size": hp.image_size, "frames": hp.frames, "resample": hp.resample, "resident": hp.resident,
            "device": str(target)}


def extract_jpeg_frames(raw: Path, video_dir: str = "VideoFlash", frames_dir: str = "Image-01-FPS",
                        log: Callable[[str], None] = print) -> int:
    """Write the first frame of every second of each ``raw/video_dir/*`` video to ``raw/frames_dir/<id>/`` as
    ``{absolute frame index:05d}.jpg`` (OGM-GE ``video2frame_update``, docs/datasets/pitfalls.md); returns the clips
    written.

    A clip whose folder exists already is skipped, so an interrupted extraction resumes.
    """
    from PIL import Image

    from datasets.media.video import extract_frames

    videos = sorted(p for p in (raw / video_dir).iterdir() if p.is_file())
    written = 0
    for video in videos:
        folder = raw / frames_dir / video.stem
        if folder.is_dir():
            continue
        frames, info = extract_frames(video, None, 1)
        partial = folder.with_name(folder.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        for k, frame in enumerate(frames):
            Image.fromarray(frame).save(partial / f"{k * info['fps']:05d}.jpg", quality=JPEG_QUALITY)
        partial.rename(folder)
        written += 1
    log(f"extracted 1 fps JPEG frames of {written} clips into {raw / frames_dir}")
    return written


def bench_tree(work: Path, *, preset: str = "small", recipe: str = "aug", workers: int = 0,
               log: Callable[[str], None] = print, **generate_params: Any) -> Path:
    """A prepared cache to benchmark, made once under ``work`` and reused: AV-Digits (``preset``) generated into
    ``work/data``, JPEG frame folders extracted, prepared as ``cremad`` with ``recipe`` into ``work/cache``.

    Returns:
        The finished cache folder.
    """
    from datasets.av_digits import ROOT_NAME, generate
    from datasets.prepare import prepare
    from datasets.tables import PrepareOptions

    work = Path(work)
    raw = work / "data" / ROOT_NAME
    if not raw.is_dir():
        log(f"generating AV-Digits ({preset}) into {raw}")
        generate(work / "data", preset=preset, **({"workers": workers} if workers else {}), **generate_params)
    extract_jpeg_frames(raw, log=log)
    opts = PrepareOptions(recipe=recipe, splits_dir=raw / "annotations", label_order="stat", visual="frames",
                          workers=workers)
    # prepare reuses a finished cache built from the same media and options.
    return prepare(get_dataset("cremad"), raw, work / "cache", opts, log=log)
