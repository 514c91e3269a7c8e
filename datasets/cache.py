"""The prepared cache (datasets.md §7): its layout, opening it, and the dataset base class that serves it.

One folder per (dataset, recipe preset, options hash), written by ``augbench prepare`` (``datasets.prepare``)::

    <cache_dir>/<dataset>/<recipe>-<hash8>/
      index.csv        one row per kept sample (columns ``INDEX_COLUMNS``)
      labels.npy       int64 [N]
      audio.npy        float16 [N, F, T]
      frames.npy       uint8 [total_frames, H, W, 3], clip i = rows frame_start[i] : frame_start[i] + frame_count[i]
      splits/<name>.npy  int64 row indices (train, test, val, train_noval) and splits/<name>.txt (their ids)
      split_files/     the verified split files that built it
      dropped.csv      id, split, reason, detail, where
      manifest.json    parameters, versions, checksums, label map, counts, drops, policies, deviations
      DONE             written last

Arrays are plain ``.npy`` read with ``np.load(mmap_mode="r")``: nothing is unpickled and a batch is one fancy index
per array. ``AVCacheDataset.build`` opens a cache and returns a ``DataBundle`` whose gather hands on the batch's rows
and frame ranges, and whose ``AVAugment`` reads the audio rows and chosen frames (from the memory map, RAM or the
device, ``data.resident``) and transforms them per batch on the device.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import numpy as np
import torch

from baselines.hparams import HParam, HParams
from datasets.augment import (FRAME_COUNT_KEY, FRAME_RULES, FRAME_START_KEY, RESAMPLE_MODES, RESIDENT_MODES,
                              ROWS_KEY, AVAugment)
from datasets.base import DataBundle, ModalitySpec, TaskSpec
from datasets.recipes.audio import AudioRecipe
from datasets.registry import Dataset

if TYPE_CHECKING:
    from datasets.prepare import Layout, PrepareOptions, Preset, SplitTables

CACHE_VERSION = 1
INDEX_COLUMNS = ("row", "id", "split", "label", "label_name", "speaker", "duration_s", "frame_start", "frame_count",
                 "audio_path", "visual_path")
TRAIN_SPLITS = ("clean", "full")


class CacheError(RuntimeError):
    """A cache folder that is missing, unfinished, ambiguous or from another dataset or format version."""


def default_cache_root() -> Path:
    """``$AUG_BENCH_CACHE`` if set, else ``./cache``."""
    return Path(os.environ.get("AUG_BENCH_CACHE") or "cache")


def options_hash(options: Mapping[str, Any]) -> str:
    """8 hex digits identifying every option that changes the cache's content."""
    blob = json.dumps(options, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def find_caches(root: Path, dataset: str, recipe: str) -> list[Path]:
    """Finished caches ``<root>/<dataset>/<recipe>-<hash8>/`` (with ``DONE``), sorted by name."""
    folder = Path(root) / dataset
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f"{recipe}-*") if p.is_dir() and (p / "DONE").is_file()
                  and not p.name.endswith(".partial"))


def write_index(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=INDEX_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def read_index(path: Path) -> dict[str, np.ndarray]:
    """``index.csv`` as column arrays (ints for the integer columns)."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != INDEX_COLUMNS:
            raise CacheError(f"{path}: columns {reader.fieldnames} differ from {list(INDEX_COLUMNS)}")
        rows = list(reader)
    out: dict[str, np.ndarray] = {}
    for col in INDEX_COLUMNS:
        values = [r[col] for r in rows]
        if col in ("row", "label", "frame_start", "frame_count"):
            out[col] = np.asarray(values, dtype=np.int64)
        elif col == "duration_s":
            out[col] = np.asarray(values, dtype=np.float64)
        else:
            out[col] = np.asarray(values, dtype=object)
    return out


@dataclass
class Cache:
    """An opened cache: memory-mapped arrays plus the index and manifest."""

    path: Path
    manifest: dict[str, Any]
    index: dict[str, np.ndarray]
    labels: np.ndarray
    audio: np.ndarray
    frames: np.ndarray
    splits: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest["classes"])

    @property
    def audio_recipe(self) -> AudioRecipe:
        return AudioRecipe(**self.manifest["audio"])

    def __len__(self) -> int:
        return len(self.labels)


def open_cache(path: Path) -> Cache:
    """Open a finished cache folder (datasets.md §7.3 ``open``): memmapped arrays, index, splits, manifest."""
    path = Path(path)
    if not (path / "DONE").is_file():
        hint = " (an interrupted prepare resumes when run again)" if path.with_name(path.name + ".partial").exists() \
            else ""
        raise CacheError(f"{path} is not a finished cache: no DONE file{hint}")
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("format") != CACHE_VERSION:
        raise CacheError(f"{path}: cache format {manifest.get('format')!r}, this code reads {CACHE_VERSION}; "
                         f"prepare again with --force")
    splits = {p.stem: np.load(p) for p in sorted((path / "splits").glob("*.npy"))}
    return Cache(path=path, manifest=manifest, index=read_index(path / "index.csv"),
                 labels=np.load(path / "labels.npy"), audio=np.load(path / "audio.npy", mmap_mode="r"),
                 frames=np.load(path / "frames.npy", mmap_mode="r"), splits=splits)


def cache_hparams(*, recipes: Sequence[str], recipe: str, recipe_doc: str, frames: int, frames_doc: str,
                  image_size: int = 224) -> tuple[HParam, ...]:
    """The ``data.*`` knobs of a cache-backed audio-visual dataset, with that dataset's defaults."""
    return (
        HParam("cache_dir", "", "Cache root: the cache is <cache_dir>/<dataset>/<recipe>-<hash8>/ as written by "
                                "`augbench prepare`. Empty = $AUG_BENCH_CACHE, else ./cache."),
        HParam("cache", "", "Explicit cache folder; overrides cache_dir + recipe (needed when several caches of the "
                            "same recipe exist, e.g. built with different options)."),
        HParam("recipe", recipe, recipe_doc, choices=tuple(recipes)),
        HParam("image_size", image_size, "S of the served visual (3, T, S, S): RandomResizedCrop(S) for training, "
                                         "Resize((S, S)) for evaluation (224 in OGM-GE, AUG, AMSS, PMR loaders)."),
        HParam("frames", frames, frames_doc),
        HParam("frame_rule", "segments", "How T frames are chosen from a clip's sorted 1 fps frames: 'segments' = "
                                         "random frame of each of T segments for training, the middle one for "
                                         "evaluation (MMPareto/KS loaders, AMSS AVE); 'first_k' = the first T "
                                         "(what OGM-GE/AUG do on a listing, made deterministic by sorting).",
               choices=FRAME_RULES),
        HParam("train_split", "clean", "'clean': train on train minus the validation split and select on val "
                                       "(methods.md §6 protocol B); 'full': train on the whole published train list "
                                       "(protocol A); a val that is a subset of train is then left out.",
               choices=TRAIN_SPLITS),
        HParam("resample", "fast", "Training crop filter: 'fast' = one batched torchvision roi_align (bilinear, "
                                   "area-averaged when shrinking; datasets.md §7.3 names grid_sample/roi_align); "
                                   "'exact' = PIL's antialiased bilinear as torchvision resized_crop(antialias=True) "
                                   "computes it, the crop about 4x slower on a CPU [project; deviation bounded in "
                                   "tests/test_speed_paths.py].", choices=RESAMPLE_MODES),
        HParam("resident", "auto", "Where batches are gathered from: 'none' = the memory-mapped cache; 'memory' = "
                                   "loaded once into RAM; 'device' = copied once to the training device (no "
                                   "per-batch host->device copy); 'auto' = 'device' on CUDA when the arrays take at "
                                   "most half of its free memory, else 'none' [project].", choices=RESIDENT_MODES),
        HParam("eval_cache_mb", 2048, "Test-time Resize((S, S)) frame views are computed once and kept, up to this "
                                      "many MiB of uint8 (0 = resize on every use) [project]."),
        HParam("prefetch", 0, "Batches a background thread prepares ahead of the training loop (0 = none, the "
                              "single-thread loader); the batch sequence is the same either way [project]."),
    )


class PreparedDataset(Dataset):
    """A dataset served from a cache that ``augbench prepare`` built: finding that cache, or saying how to build it.
    Base of ``AVCacheDataset`` and ``datasets.array_cache.ArrayCacheDataset``."""

    @classmethod
    def prepare_command(cls, recipe: str, root: Path | str) -> str:
        return f"augbench prepare {cls.NAME} --raw <raw {cls.NAME} folder> --out {root} --recipe {recipe}"

    @classmethod
    def locate_cache(cls, hp: HParams) -> Path:
        """The cache folder named by ``data.cache``, or the single finished ``<recipe>-*`` one under the root."""
        if hp.cache:
            path = Path(hp.cache)
            if not (path / "DONE").is_file():
                raise FileNotFoundError(f"data.cache={hp.cache!r} is not a finished cache (no DONE file); build it "
                                        f"with: {cls.prepare_command(hp.recipe, path.parent.parent)}")
            return path
        root = Path(hp.cache_dir) if hp.cache_dir else default_cache_root()
        found = find_caches(root, cls.NAME, hp.recipe)
        if not found:
            raise FileNotFoundError(f"no prepared {cls.NAME} cache for recipe {hp.recipe!r} under {root / cls.NAME}; "
                                    f"build it with: {cls.prepare_command(hp.recipe, root)}")
        if len(found) > 1:
            raise ValueError(f"several {cls.NAME} caches for recipe {hp.recipe!r}: {[str(p) for p in found]}; set "
                             f"data.cache to the one to use")
        return found[0]


class AVCacheDataset(PreparedDataset):
    """Base of the cache-backed audio-visual datasets (CREMA-D, Kinetics-Sounds, AVE, VGGSound).

    Subclasses declare the raw layout, the split files and how to read them (``read_splits``); ``prepare`` does the
    rest, and ``build`` serves the cache. Class constants:

    Attributes:
        CLASSES: label map in index order (its source is documented per dataset).
        RECIPES: preset name -> ``Preset`` (audio recipe + frame policy), selectable as ``data.recipe``.
        DEFAULT_RECIPE: the preset ``prepare`` builds when none is named.
        SPLIT_FILES: split files read (pinned in ``datasets.sources`` unless local-only).
        OPTIONAL_SPLIT_FILES: split files that may be absent from a local ``--splits`` folder.
        SPLITS_IN_RAW: sub-folder of the raw root holding the split files (AV-Digits: ``annotations``); ``None``
            means download the pinned files unless ``--splits`` is given.
        LAYOUT: where the media live under the raw root.
        FRAME_SIZE: stored frame (H, W); datasets.md §7.2: short side 256, CREMA-D's 4:3 -> 256x341.
        LABEL_ORDERS: accepted ``--label-order`` values, the first being the default.
    """

    CLASSES: ClassVar[tuple[str, ...]] = ()
    RECIPES: ClassVar[Mapping[str, "Preset"]] = {}
    DEFAULT_RECIPE: ClassVar[str] = ""
    SPLIT_FILES: ClassVar[tuple[str, ...]] = ()
    OPTIONAL_SPLIT_FILES: ClassVar[tuple[str, ...]] = ()
    SPLITS_IN_RAW: ClassVar[str | None] = None
    LAYOUT: ClassVar["Layout"]
    FRAME_SIZE: ClassVar[tuple[int, int]] = (256, 341)
    LABEL_ORDERS: ClassVar[tuple[str, ...]] = ("declared",)

    @classmethod
    def read_splits(cls, files: Mapping[str, Path], opts: "PrepareOptions") -> "SplitTables":
        """Parse the verified split files into samples per base split (see ``datasets.prepare.SplitTables``)."""
        raise NotImplementedError

    @classmethod
    def media_names(cls, sample_id: str) -> tuple[str, ...]:
        """File stems to try for a sample's media, in order (VGGSound adds a zero-padded start)."""
        return (sample_id,)

    @classmethod
    def family(cls) -> set[str]:
        """This dataset's name and its ancestors' (a subclass such as AV-Digits reads a cache built as CREMA-D)."""
        return {c.NAME for c in cls.__mro__ if isinstance(c, type) and issubclass(c, AVCacheDataset) and c.NAME}

    @classmethod
    def build(cls, hp: HParams) -> DataBundle:
        cache = open_cache(cls.locate_cache(hp))
        manifest = cache.manifest
        if manifest["dataset"] not in cls.family():
            raise CacheError(f"{cache.path} holds dataset {manifest['dataset']!r}, not {cls.NAME!r}")
        recipe = cache.audio_recipe
        f, t = recipe.served_shape()
        task = TaskSpec(cls.NAME, len(cache.classes),
                        (ModalitySpec("audio", "spectrogram", (1, f, t)),
                         ModalitySpec("visual", "frames", (3, hp.frames, hp.image_size, hp.image_size))),
                        cache.classes)
        splits = {"train": cache.splits["train_noval"], "val": cache.splits["val"], "test": cache.splits["test"]}
        if hp.train_split == "full":
            splits["train"] = cache.splits["train"]
            if np.isin(splits["val"], splits["train"]).any():
                del splits["val"]
        if "val" in splits and not len(splits["val"]):
            del splits["val"]
        starts = cache.index["frame_start"]
        counts = cache.index["frame_count"]
        if hp.eval_cache_mb < 0 or hp.prefetch < 0:
            raise ValueError(f"data.eval_cache_mb={hp.eval_cache_mb} and data.prefetch={hp.prefetch} must be >= 0")

        def gather(rows: np.ndarray) -> dict[str, torch.Tensor]:
            # Row metadata only: AVAugment reads audio and frames where the arrays are resident (host or device).
            return {ROWS_KEY: torch.from_numpy(rows), FRAME_START_KEY: torch.from_numpy(starts[rows]),
                    FRAME_COUNT_KEY: torch.from_numpy(counts[rows])}

        view_bytes = hp.image_size * hp.image_size * 3
        augment = AVAugment(cache.frames, num_frames=hp.frames, image_size=hp.image_size, frame_rule=hp.frame_rule,
                            audio_frames=recipe.serve_frames, audio=cache.audio, resample=hp.resample,
                            resident=hp.resident, eval_cache_frames=int(hp.eval_cache_mb * 2**20) // view_bytes)
        info = {"cache": str(cache.path), "recipe": manifest["recipe"], "counts": manifest["counts"],
                "dropped": manifest["dropped"], "val_source": manifest["val_source"]}
        return DataBundle(task, cache.labels, splits, gather, augment, info, prefetch=hp.prefetch)
