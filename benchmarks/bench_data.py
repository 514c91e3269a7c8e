"""Data-pipeline speed: the cache loader against per-sample media loading, on the same prepared tree.

``benchmark_data`` times batches of one split through (a) the cache-backed ``DataBundle`` loader (memmap gather +
per-batch ``AVAugment``) and (b) ``datasets.media_loader.MediaDataset`` in a ``DataLoader`` with no workers (decode
WAV + STFT + decode JPEGs/video + PIL transforms per item, as the published loaders do), both on one CPU thread, and
reports samples per second. It reads the raw media the cache was built from (``raw_root`` in the manifest, or
``raw_dir``). Figures are benchmark results, never test assertions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

import torch

from baselines.hparams import resolve
from datasets.cache import open_cache
from datasets.media_loader import MediaDataset, items_from_cache
from datasets.registry import get_dataset


def _rate(batches: Iterable[dict], count: int, warmup: int) -> tuple[float, int]:
    """Samples per second over ``count`` batches after ``warmup`` untimed ones."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator, None)
    samples, start = 0, time.perf_counter()
    for _ in range(count):
        batch = next(iterator, None)
        if batch is None:
            break
        samples += len(batch["label"])
    elapsed = time.perf_counter() - start
    return (samples / elapsed if elapsed > 0 else float("inf")), samples


def benchmark_data(prepared_dir: Path | str, *, raw_dir: Path | str | None = None, split: str = "train",
                   train: bool = True, batch_size: int = 32, batches: int = 5, warmup: int = 1,
                   image_size: int | None = None, frames: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Samples/s of the cache loader vs the per-sample media loader, one CPU thread.

    Args:
        prepared_dir: a finished cache folder.
        raw_dir: the raw tree it was built from (default: the manifest's ``raw_root``).
        split: bundle split to read (``train``, ``val``, ``test``).
        train: training transforms (random crops, flips, frame choice) or the test view.
        batch_size: samples per batch.
        batches: timed batches per loader.
        warmup: untimed batches first.
        image_size: S (default: the dataset's ``data.image_size``).
        frames: T (default: the dataset's ``data.frames``).
        seed: loader seed.

    Returns:
        A dict with both rates, the speed-up and the settings measured.
    """
    cache = open_cache(Path(prepared_dir))
    dataset = get_dataset(cache.manifest["dataset"])
    overrides: dict[str, Any] = {"cache": str(prepared_dir)}
    if image_size is not None:
        overrides["image_size"] = image_size
    if frames is not None:
        overrides["frames"] = frames
    hp = resolve("data", dataset.HPARAMS, dataset.NAME, overrides)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bundle = dataset.build(hp)
        loader = bundle.loader(split, batch_size=batch_size, train=train, seed=seed)
        cache_rate, cache_n = _rate(loader, batches, warmup)
        items = items_from_cache(cache, bundle.splits[split], raw_dir)
        media = MediaDataset(items, cache.audio_recipe, num_frames=hp.frames, image_size=hp.image_size, train=train,
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
            "visual_source": cache.manifest["visual"]["source"], "image_size": hp.image_size, "frames": hp.frames}
