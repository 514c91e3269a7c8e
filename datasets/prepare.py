"""``augbench prepare``: raw media + verified split files -> a memory-mappable cache (datasets.md §7).

Steps, each recorded in the manifest:

1. **Split files.** Downloaded from their pinned raw URLs and SHA-256-verified, or read from ``--splits DIR``
   (``datasets.sources``); copies go into the cache.
2. **Parse.** The dataset's ``read_splits`` turns them into samples per base split (train/test, AVE also val), with
   its label map; duplicate ids follow the duplicate policy; rows with unknown labels are bad items.
3. **Verify media.** Every sample's audio file and video file or frame folder must exist and must not be a Git LFS
   pointer. A fingerprint of the media (path, size, mtime) guards against reusing a cache built from other media.
4. **Extract** in shards of ``shard_size`` samples (optionally in worker processes): audio features with the recipe,
   frames at 1 fps resized to the storage size. Each shard writes its own files and then a ``DONE`` marker, so an
   interrupted run resumes at the first unfinished shard. Corrupt media and clips with fewer than ``min_frames``
   frames are bad items.
5. **Finalise** into ``<recipe>-<hash8>.partial/``: concatenate the shards into ``audio.npy``/``frames.npy``, write
   ``index.csv``, ``labels.npy``, ``splits/``, ``dropped.csv``, ``manifest.json`` and ``DONE`` last, then rename the
   folder to ``<recipe>-<hash8>/``. A finished cache is reused as is; ``force`` rebuilds it.

Bad items (missing, corrupt or LFS-pointer media, unknown labels, too few frames) stop ``prepare`` with a message
naming the row and file; with ``skip_bad`` they are dropped, written to ``dropped.csv`` with their reason and counted
in the manifest and the printed summary. A class left without samples in train or test is always an error.

Validation split: a published one (CREMA-D ``val.csv``, AVE ``valSet.txt``) when the dataset has it, else a
stratified hold-out of the parsed train rows (``val_fraction``, ``val_seed``), computed before media checks so that
missing downloads do not reshuffle it; its ids are written to ``splits/val.txt``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.metadata
import json
import multiprocessing
import shutil
import stat
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from benchmarks.records import git_commit
from datasets.base import stratified_holdout
from datasets.cache import (CACHE_VERSION, AVCacheDataset, default_cache_root, options_hash, write_index)
from datasets.recipes import MediaError, is_lfs_pointer, lfs_error
from datasets.recipes.audio import AudioRecipe, features_from_file, get_recipe, require_backend
from datasets.recipes.video import INTERPOLATION, extract_frames, load_frame_folder
from datasets.sources import RAW_URL, FetchedFile, fetch_split_files
from datasets.splits import DUPLICATE_POLICIES, ParsedList, SplitRow, resolve_duplicates

VISUAL_SOURCES = ("auto", "video", "frames")
LIBRARIES = ("numpy", "scipy", "librosa", "soundfile", "soxr", "av", "pillow", "torch", "torchvision", "torchaudio")


class PrepareError(RuntimeError):
    """``prepare`` cannot produce a valid cache; the message names the bad rows/files and what to do."""


class RowError(ValueError):
    """A split row that cannot become a sample (e.g. an unknown label); ``kind`` is the drop reason category."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@dataclass(frozen=True)
class Preset:
    """A named ``data.recipe``: which audio recipe, and the frame policy at prepare time.

    Attributes:
        audio: name in ``datasets.recipes.audio.RECIPES``.
        doc: what it reproduces, with the source.
        min_frames: clips with fewer 1 fps frames are bad items.
    """

    audio: str
    doc: str
    min_frames: int = 1


@dataclass(frozen=True)
class Layout:
    """Where a dataset's media live under the raw root (paths relative to it).

    Attributes:
        audio_dir: folder of audio files; ``None`` decodes the audio track of the video file (AVE).
        audio_suffixes: audio file suffixes to try.
        video_dir: folder of video files.
        video_suffixes: video file suffixes to try.
        frames_dir: folder of per-clip frame folders (used instead of videos when it exists, or on request).
        frames_suffixes: suffixes of frame folder names (OGM-GE's VGGSound folders keep ``.mp4``).
    """

    audio_dir: str | None
    audio_suffixes: tuple[str, ...]
    video_dir: str
    video_suffixes: tuple[str, ...]
    frames_dir: str = "Image-01-FPS"
    frames_suffixes: tuple[str, ...] = ("",)

    def replace(self, overrides: Mapping[str, str]) -> "Layout":
        valid = ("audio_dir", "video_dir", "frames_dir")
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise ValueError(f"unknown layout setting(s) {unknown}; valid: {list(valid)}")
        return dataclasses.replace(self, **overrides)


@dataclass
class PrepareOptions:
    """Everything ``prepare`` can be told besides the dataset, raw folder and cache root.

    Attributes:
        recipe: preset name (``data.recipe``); empty = the dataset's default.
        audio: audio recipe parameter overrides (e.g. ``{"pad_mode": "reflect"}``).
        layout: raw layout overrides (``audio_dir``, ``video_dir``, ``frames_dir``).
        frame_size: stored frame (H, W); ``None`` = the dataset's ``FRAME_SIZE``.
        frames_per_second: frames kept per second of video.
        visual: ``auto`` (frame folders when ``frames_dir`` exists, else videos), ``video`` or ``frames``.
        min_frames: override the preset's minimum frames per clip.
        label_order: the dataset's label map convention; empty = its default.
        duplicates: policy for repeated ids within a split (``first``, ``last``, ``drop``).
        val_fraction: stratified hold-out fraction when there is no published validation split.
        val_seed: seed of that hold-out.
        skip_bad: drop and record bad items instead of stopping.
        max_drop_fraction: with ``skip_bad``, stop when more than this fraction of rows is bad.
        force: rebuild even if a finished cache exists.
        workers: extraction processes (0 or 1 = in this process).
        shard_size: samples per resumable shard.
        splits_dir: read split files from here instead of downloading them.
        splits_url: base URL replacing ``https://raw.githubusercontent.com``.
        strict_splits: refuse local split files that differ from the pinned ones.
    """

    recipe: str = ""
    audio: dict[str, Any] = field(default_factory=dict)
    layout: dict[str, str] = field(default_factory=dict)
    frame_size: tuple[int, int] | None = None
    frames_per_second: int = 1
    visual: str = "auto"
    min_frames: int | None = None
    label_order: str = ""
    duplicates: str = "first"
    val_fraction: float = 0.1
    val_seed: int = 0
    skip_bad: bool = False
    max_drop_fraction: float = 1.0
    force: bool = False
    workers: int = 0
    shard_size: int = 64
    splits_dir: Path | None = None
    splits_url: str = RAW_URL
    strict_splits: bool = False


@dataclass(frozen=True)
class Sample:
    """One split row that became a sample."""

    id: str
    split: str
    label: int
    label_name: str
    where: str
    speaker: str = ""


@dataclass(frozen=True)
class Dropped:
    """A row left out of the cache: ``bad`` items are input errors; the others follow a stated policy."""

    id: str
    split: str
    kind: str
    detail: str
    where: str
    bad: bool

    def row(self) -> dict[str, str]:
        return {"id": self.id, "split": self.split, "reason": self.kind, "detail": self.detail, "where": self.where}


@dataclass
class SplitTables:
    """What a dataset's ``read_splits`` returns.

    Attributes:
        classes: the label map in index order.
        splits: base split name (``train``, ``test``, optionally ``val``) -> samples in file order.
        dropped: rows dropped while parsing (duplicates by policy, bad rows).
        val_ids: published validation ids, a subset of train (CREMA-D ``val.csv``); ``None`` = hold-out (or a
            ``val`` base split).
        val_source: how the validation split was obtained, for the manifest.
        info: extra facts for the manifest (label map source, duplicate and overlap counts, parse skips).
    """

    classes: tuple[str, ...]
    splits: dict[str, list[Sample]]
    dropped: list[Dropped] = field(default_factory=list)
    val_ids: list[str] | None = None
    val_source: str = ""
    info: dict[str, Any] = field(default_factory=dict)


def samples_from_rows(parsed: ParsedList, split: str, classes: Sequence[str], *,
                      label_name: Callable[[SplitRow], str], duplicates: str,
                      speaker: Callable[[str], str] | None = None) -> tuple[list[Sample], list[Dropped]]:
    """Turn parsed rows into samples: apply the duplicate policy, map labels (``RowError`` -> a bad row)."""
    kept, dups = resolve_duplicates(parsed.rows, duplicates)
    dropped = [Dropped(r.id, split, "duplicate id", reason, parsed.where(r), bad=False) for r, reason in dups]
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for r in kept:
        try:
            name = label_name(r)
            if name not in index:
                raise RowError("unknown label", f"unknown label {r.label!r}; valid: {list(classes)}")
        except RowError as err:
            dropped.append(Dropped(r.id, split, err.kind, str(err), parsed.where(r), bad=True))
            continue
        samples.append(Sample(r.id, split, index[name], name, parsed.where(r), speaker(r.id) if speaker else ""))
    return samples, dropped


@dataclass(frozen=True)
class Item:
    """A sample with its media, paths relative to the raw root."""

    pos: int
    sample: Sample
    audio: str
    visual_kind: str
    visual: str


@dataclass(frozen=True)
class Build:
    """The resolved settings of one build, as ``_finalize`` records them."""

    preset: str
    preset_doc: str
    digest: str
    options: dict[str, Any]
    recipe: AudioRecipe
    layout: Layout
    frame_size: tuple[int, int]
    min_frames: int
    visual_kind: str
    fingerprint: str
    files: dict[str, FetchedFile]
    val_source: str
    val_record: dict[str, Any]


@dataclass(frozen=True)
class ShardJob:
    """One shard's extraction work (picklable for worker processes)."""

    folder: Path
    raw: Path
    items: tuple[Item, ...]
    recipe: AudioRecipe
    frame_size: tuple[int, int]
    frames_per_second: int
    min_frames: int
    skip_bad: bool


def _first_existing(raw: Path, folder: str, names: Sequence[str], suffixes: Sequence[str], want_dir: bool
                    ) -> Path | None:
    for name in names:
        for suffix in suffixes:
            path = raw / folder / f"{name}{suffix}"
            if (path.is_dir() if want_dir else path.is_file()):
                return path
    return None


def locate_media(dataset: type[AVCacheDataset], raw: Path, layout: Layout, visual_kind: str, sample: Sample
                 ) -> tuple[Path, Path]:
    """The sample's audio file and video file / frame folder; ``MediaError`` if missing or an LFS pointer."""
    names = dataset.media_names(sample.id)
    if visual_kind == "frames":
        visual = _first_existing(raw, layout.frames_dir, names, layout.frames_suffixes, want_dir=True)
        expected = raw / layout.frames_dir / names[0]
    else:
        visual = _first_existing(raw, layout.video_dir, names, layout.video_suffixes, want_dir=False)
        expected = raw / layout.video_dir / f"{names[0]}{layout.video_suffixes[0]}"
    if visual is None:
        raise MediaError(expected, "missing media", f"{visual_kind} not found for {sample.id}")
    # Datasets distributed as videos only (AVE) take the audio track of the video file.
    audio_dir, audio_suffixes = (layout.audio_dir, layout.audio_suffixes) if layout.audio_dir is not None \
        else (layout.video_dir, layout.video_suffixes)
    audio = _first_existing(raw, audio_dir, names, audio_suffixes, want_dir=False)
    if audio is None:
        raise MediaError(raw / audio_dir / f"{names[0]}{audio_suffixes[0]}", "missing media",
                         f"audio not found for {sample.id}")
    for path in (audio, visual):
        if is_lfs_pointer(path):
            raise lfs_error(path)
    return audio, visual


def media_fingerprint(raw: Path, items: Sequence[Item]) -> str:
    """SHA-256 over (path, size, mtime) of every media file/folder: changes when the raw media are replaced."""
    digest = hashlib.sha256()
    for rel in sorted({p for item in items for p in (item.audio, item.visual)}):
        st = (raw / rel).stat()
        size = st.st_size if stat.S_ISREG(st.st_mode) else 0
        digest.update(f"{rel}\t{size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def read_visual(raw: Path, item: Item, frame_size: tuple[int, int], per_second: int) -> tuple[np.ndarray, dict]:
    if item.visual_kind == "frames":
        return load_frame_folder(raw / item.visual, frame_size), {}
    return extract_frames(raw / item.visual, frame_size, per_second)


def run_shard(job: ShardJob) -> int:
    """Extract one shard into ``job.folder`` (``audio.npy``, ``frames.npy``, ``meta.json``, then ``DONE``)."""
    f, t = job.recipe.output_shape()
    audio = np.zeros((len(job.items), f, t), dtype=np.float16)
    frames: list[np.ndarray] = []
    meta: list[dict[str, Any]] = []
    for i, item in enumerate(job.items):
        try:
            features, duration, short = features_from_file(job.recipe, job.raw / item.audio)
            half = features.astype(np.float16)
            if not np.isfinite(half).all():
                raise MediaError(job.raw / item.audio, "corrupt audio", "features overflow float16")
            clip, vinfo = read_visual(job.raw, item, job.frame_size, job.frames_per_second)
            if len(clip) < job.min_frames:
                raise MediaError(job.raw / item.visual, "too few frames",
                                 f"{len(clip)} frame(s) at {job.frames_per_second} fps, fewer than min_frames "
                                 f"{job.min_frames}")
        except MediaError as err:
            if not job.skip_bad:
                raise PrepareError(f"{item.sample.where} ({item.sample.id}): {err}. Fix it, or pass --skip-bad to "
                                   f"drop and record bad items") from err
            meta.append({"pos": item.pos, "frames": 0, "error": [err.kind, str(err)]})
            continue
        audio[i] = half
        frames.append(clip)
        meta.append({"pos": item.pos, "frames": len(clip), "duration_s": round(duration, 6), "short": short,
                     **vinfo})
    h, w = job.frame_size
    stacked = np.concatenate(frames) if frames else np.zeros((0, h, w, 3), dtype=np.uint8)
    job.folder.mkdir(parents=True, exist_ok=True)
    np.save(job.folder / "audio.npy", audio)
    np.save(job.folder / "frames.npy", stacked)
    (job.folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    (job.folder / "DONE").touch()
    return len(job.items)


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _bad_summary(dataset: str, bad: Sequence[Dropped]) -> str:
    lines = "\n".join(f"  {d.where} {d.id}: {d.detail}" for d in bad[:10])
    more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
    return f"{len(bad)} bad item(s) in {dataset}:\n{lines}{more}"


def check_bad(dataset: str, bad: Sequence[Dropped], rows: int, opts: PrepareOptions) -> None:
    if not bad:
        return
    if not opts.skip_bad:
        raise PrepareError(f"{_bad_summary(dataset, bad)}\nFix them, or pass --skip-bad to drop and record them in "
                           f"dropped.csv")
    if len(bad) > opts.max_drop_fraction * rows:
        raise PrepareError(f"{_bad_summary(dataset, bad)}\nthat is more than --max-drop-fraction "
                           f"{opts.max_drop_fraction} of {rows} rows")


def check_classes(dataset: str, classes: Sequence[str], labels_by_split: Mapping[str, np.ndarray]) -> None:
    for split, labels in labels_by_split.items():
        present = np.bincount(labels, minlength=len(classes)) if len(labels) else np.zeros(len(classes), int)
        empty = [classes[i] for i in np.flatnonzero(present == 0)]
        if empty:
            raise PrepareError(f"{dataset}: class(es) {empty} have no {split} samples; a model cannot learn or be "
                               f"scored on an empty class")


def _holdout_ids(tables: SplitTables, opts: PrepareOptions) -> list[str]:
    train = tables.splits["train"]
    labels = np.asarray([s.label for s in train], dtype=np.int64)
    _, held = stratified_holdout(np.arange(len(train)), labels, opts.val_fraction, opts.val_seed)
    return [train[i].id for i in held]


def validation_split(tables: SplitTables, opts: PrepareOptions) -> tuple[set[str] | None, str, dict[str, Any]]:
    """(validation ids within train, or None for a ``val`` base split; description; manifest record)."""
    if "val" in tables.splits:
        return None, tables.val_source or "published validation list", {}
    if tables.val_ids is not None:
        return set(tables.val_ids), tables.val_source, {}
    return (set(_holdout_ids(tables, opts)),
            f"stratified hold-out of train (fraction {opts.val_fraction}, seed {opts.val_seed})",
            {"fraction": opts.val_fraction, "seed": opts.val_seed})


def prepare(dataset: type[AVCacheDataset], raw: Path | str, out: Path | str | None = None,
            opts: PrepareOptions | None = None, log: Callable[[str], None] = print) -> Path:
    """Build (or reuse) the cache of ``dataset`` from the raw folder ``raw`` under the cache root ``out``.

    Args:
        dataset: a registered ``AVCacheDataset`` subclass.
        raw: the dataset folder as distributed.
        out: cache root (default ``$AUG_BENCH_CACHE`` or ``./cache``).
        opts: see ``PrepareOptions``.
        log: progress and summary lines.

    Returns:
        The finished cache folder.

    Raises:
        PrepareError: bad items (without ``skip_bad``), an empty class, or nothing left.
        SplitFileError: a split file is missing or fails verification.
        FileNotFoundError: the raw folder does not exist.
    """
    opts = opts or PrepareOptions()
    raw = Path(raw)
    if not raw.is_dir():
        raise FileNotFoundError(f"raw {dataset.NAME} folder {raw} not found")
    root = Path(out) if out is not None else default_cache_root()
    name = dataset.NAME
    preset_name = opts.recipe or dataset.DEFAULT_RECIPE
    if preset_name not in dataset.RECIPES:
        raise ValueError(f"{name} has no recipe {preset_name!r}; valid: {sorted(dataset.RECIPES)}")
    preset = dataset.RECIPES[preset_name]
    recipe = get_recipe(preset.audio).replace(opts.audio)
    require_backend(recipe)
    layout = dataset.LAYOUT.replace(opts.layout)
    frame_size = tuple(int(x) for x in (opts.frame_size or dataset.FRAME_SIZE))
    min_frames = preset.min_frames if opts.min_frames is None else opts.min_frames
    if min_frames < 1:
        raise ValueError(f"min_frames must be >= 1 (a clip without frames cannot be served), got {min_frames}")
    label_order = opts.label_order or dataset.LABEL_ORDERS[0]
    if label_order not in dataset.LABEL_ORDERS:
        raise ValueError(f"{name}: unknown label order {label_order!r}; valid: {list(dataset.LABEL_ORDERS)}")
    if opts.duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"unknown duplicate policy {opts.duplicates!r}; valid: {DUPLICATE_POLICIES}")
    if opts.visual not in VISUAL_SOURCES:
        raise ValueError(f"unknown visual source {opts.visual!r}; valid: {VISUAL_SOURCES}")
    opts = dataclasses.replace(opts, label_order=label_order)

    splits_dir = opts.splits_dir or (raw / dataset.SPLITS_IN_RAW if dataset.SPLITS_IN_RAW else None)
    files = fetch_split_files(name, dataset.SPLIT_FILES + dataset.OPTIONAL_SPLIT_FILES, root / name / ".split_files",
                              local_dir=splits_dir, base_url=opts.splits_url, optional=dataset.OPTIONAL_SPLIT_FILES,
                              strict=opts.strict_splits, log=log)
    tables = dataset.read_splits({n: f.path for n, f in files.items()}, opts)
    classes = tables.classes
    val_ids, val_source, val_record = validation_split(tables, opts)

    visual_kind = opts.visual if opts.visual != "auto" else \
        ("frames" if (raw / layout.frames_dir).is_dir() else "video")
    items: list[Item] = []
    dropped = list(tables.dropped)
    for split_samples in tables.splits.values():
        for sample in split_samples:
            try:
                audio, visual = locate_media(dataset, raw, layout, visual_kind, sample)
            except MediaError as err:
                dropped.append(Dropped(sample.id, sample.split, err.kind, str(err), sample.where, bad=True))
                continue
            items.append(Item(len(items), sample, audio.relative_to(raw).as_posix(), visual_kind,
                              visual.relative_to(raw).as_posix()))
    rows_read = len(items) + len(dropped)
    check_bad(name, [d for d in dropped if d.bad], rows_read, opts)
    check_classes(name, classes, {s: np.asarray([it.sample.label for it in items if it.sample.split == s],
                                                 dtype=np.int64) for s in ("train", "test")})

    options = {"format": CACHE_VERSION, "dataset": name, "recipe": preset_name, "audio": recipe.params(),
               "visual": {"source": visual_kind, "frame_size": list(frame_size), "per_second": opts.frames_per_second,
                          "min_frames": min_frames, "interpolation": INTERPOLATION},
               "label_order": label_order, "duplicates": opts.duplicates, "val": val_record,
               "split_files": {n: f.sha256 for n, f in sorted(files.items())}}
    digest = options_hash(options)
    final = root / name / f"{preset_name}-{digest}"
    partial = final.with_name(final.name + ".partial")
    fingerprint = media_fingerprint(raw, items)
    if opts.force:
        shutil.rmtree(final, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)
    if (final / "DONE").is_file():
        manifest = json.loads((final / "manifest.json").read_text(encoding="utf-8"))
        if manifest["raw_fingerprint"] != fingerprint:
            raise PrepareError(f"{final} was built from different raw media (files changed since); pass --force to "
                               f"rebuild it")
        log(f"{final}: up to date ({manifest_summary(manifest)})")
        return final

    if (partial / "DONE").is_file() and json.loads((partial / "manifest.json").read_text(encoding="utf-8")).get(
            "raw_fingerprint") == fingerprint:
        # Killed between writing DONE and the rename: the build is complete, only the rename is missing.
        return publish_cache(partial, final, log)

    plan = {"options": options, "raw_fingerprint": fingerprint, "skip_bad": opts.skip_bad,
            "items": [[it.sample.split, it.sample.id, it.audio, it.visual] for it in items]}
    plan_text = json.dumps(plan, sort_keys=True)
    if partial.exists() and (not (partial / "plan.json").is_file()
                             or (partial / "plan.json").read_text(encoding="utf-8") != plan_text):
        log(f"{partial}: discarding an unfinished build made with other inputs")
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "plan.json").write_text(plan_text, encoding="utf-8")

    size = max(int(opts.shard_size), 1)
    jobs = [ShardJob(partial / "shards" / f"{k:05d}", raw, tuple(items[start:start + size]), recipe, frame_size,
                     opts.frames_per_second, min_frames, opts.skip_bad)
            for k, start in enumerate(range(0, len(items), size))]
    pending = [job for job in jobs if not (job.folder / "DONE").is_file()]
    if len(pending) < len(jobs):
        log(f"{name}: resuming, {len(jobs) - len(pending)} of {len(jobs)} shards already done")
    if opts.workers > 1 and len(pending) > 1:
        with ProcessPoolExecutor(opts.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for done, _ in enumerate(pool.map(run_shard, pending), start=1):
                log(f"{name}: shard {done}/{len(pending)} extracted")
    else:
        for done, job in enumerate(pending, start=1):
            run_shard(job)
            log(f"{name}: shard {done}/{len(pending)} extracted")

    build = Build(preset_name, preset.doc, digest, options, recipe, layout, frame_size, min_frames, visual_kind,
                  fingerprint, files, val_source, val_record)
    _finalize(dataset, partial, raw, jobs, tables, dropped, rows_read, val_ids, opts, build)
    return publish_cache(partial, final, log)


def publish_cache(partial: Path, final: Path, log: Callable[[str], None]) -> Path:
    """Remove the build's scratch files and rename the finished ``.partial`` folder to its final name."""
    shutil.rmtree(partial / "shards", ignore_errors=True)
    (partial / "plan.json").unlink(missing_ok=True)
    partial.rename(final)
    manifest = json.loads((final / "manifest.json").read_text(encoding="utf-8"))
    log(f"{final}: built ({manifest_summary(manifest)})")
    return final


def manifest_summary(manifest: Mapping[str, Any]) -> str:
    splits = ", ".join(f"{k} {v['n']}" for k, v in manifest["counts"]["splits"].items())
    drops = manifest["dropped"]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(drops["by_reason"].items()))
    return f"{manifest['counts']['total']} samples: {splits}; dropped {drops['total']}" + \
        (f" ({reasons})" if reasons else "")


def _finalize(dataset: type[AVCacheDataset], partial: Path, raw: Path, jobs: Sequence[ShardJob],
              tables: SplitTables, dropped: list[Dropped], rows_read: int, val_ids: set[str] | None,
              opts: PrepareOptions, build: Build) -> None:
    """Concatenate the shards into the final arrays and write index, splits, drops, manifest and DONE."""
    name = dataset.NAME
    metas = [json.loads((job.folder / "meta.json").read_text(encoding="utf-8")) for job in jobs]
    for job, meta in zip(jobs, metas):
        for item, entry in zip(job.items, meta):
            if "error" in entry:
                kind, detail = entry["error"]
                dropped.append(Dropped(item.sample.id, item.sample.split, kind, detail, item.sample.where, bad=True))
    check_bad(name, [d for d in dropped if d.bad], rows_read, opts)
    kept = [(item, entry) for job, meta in zip(jobs, metas) for item, entry in zip(job.items, meta)
            if "error" not in entry]
    if not kept:
        raise PrepareError(f"{name}: no samples left after dropping bad items")
    classes = tables.classes
    labels = np.asarray([item.sample.label for item, _ in kept], dtype=np.int64)
    split_of = np.asarray([item.sample.split for item, _ in kept])
    ids = [item.sample.id for item, _ in kept]
    check_classes(name, classes, {s: labels[split_of == s] for s in ("train", "test")})

    recipe = build.recipe
    f, t = recipe.output_shape()
    h, w = build.frame_size
    counts = np.asarray([entry["frames"] for _, entry in kept], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    audio = np.lib.format.open_memmap(partial / "audio.npy", mode="w+", dtype=np.float16, shape=(len(kept), f, t))
    frames = np.lib.format.open_memmap(partial / "frames.npy", mode="w+", dtype=np.uint8,
                                       shape=(int(counts.sum()), h, w, 3))
    row, frame = 0, 0
    for job, meta in zip(jobs, metas):
        ok = np.asarray(["error" not in e for e in meta], dtype=bool)
        per_item = np.asarray([e["frames"] for e in meta], dtype=np.int64)
        shard_audio = np.load(job.folder / "audio.npy", mmap_mode="r")
        shard_frames = np.load(job.folder / "frames.npy", mmap_mode="r")
        n_ok, n_frames = int(ok.sum()), int(per_item[ok].sum())
        audio[row:row + n_ok] = shard_audio[ok]
        frames[frame:frame + n_frames] = shard_frames[np.repeat(ok, per_item)]
        row, frame = row + n_ok, frame + n_frames
    audio.flush()
    frames.flush()
    del audio, frames

    np.save(partial / "labels.npy", labels)
    index_rows = [{"row": i, "id": item.sample.id, "split": item.sample.split, "label": item.sample.label,
                   "label_name": item.sample.label_name, "speaker": item.sample.speaker,
                   "duration_s": entry["duration_s"], "frame_start": int(starts[i]), "frame_count": int(counts[i]),
                   "audio_path": item.audio, "visual_path": item.visual}
                  for i, (item, entry) in enumerate(kept)]
    write_index(partial / "index.csv", index_rows)

    splits = write_split_records(partial, ids, split_of, tables.splits, val_ids, build.files.values(), dropped)

    short = sum(bool(entry.get("short")) for _, entry in kept)
    manifest = {
        "format": CACHE_VERSION, "dataset": name, "recipe": build.preset, "recipe_doc": build.preset_doc,
        "options_hash": build.digest,
        "audio": recipe.params(), "audio_shape": [f, t], "served_audio_shape": list(recipe.served_shape()),
        "visual": {**build.options["visual"], "frame_order": "natural numeric sort of frame file names (folders); "
                                                              "decode order (videos)",
                   "second_boundaries": "int(average frame rate) decoded frames, as OGM-GE's int(CAP_PROP_FPS)"},
        "layout": dataclasses.asdict(build.layout), "raw_root": str(raw.resolve()),
        "raw_fingerprint": build.fingerprint,
        "classes": list(classes), "label_order": opts.label_order,
        "split_files": {n: fetched.record() for n, fetched in sorted(build.files.items())},
        "val_source": build.val_source, "val": build.val_record,
        "policies": {"duplicates": opts.duplicates, "skip_bad": opts.skip_bad, "min_frames": build.min_frames,
                     "max_drop_fraction": opts.max_drop_fraction,
                     "short_audio": "clips shorter than 1 s are tiled until the recipe length",
                     "frame_top_up": "none at prepare time; clips with fewer than T frames repeat frames at load"},
        "counts": {"total": len(kept), "rows_read": rows_read, "frames": int(counts.sum()),
                   "short_audio_clips": short,
                   "splits": {s: {"n": int(len(r)), "per_class": dict(zip(classes, np.bincount(
                       labels[r], minlength=len(classes)).tolist()))} for s, r in splits.items()}},
        "dropped": {"total": len(dropped), "by_reason": dict(Counter(d.kind for d in dropped)),
                    "bad": sum(d.bad for d in dropped)},
        "versions": library_versions(), "git_commit": git_commit(),
        "deviations": [d for d in (recipe.deviation,
                                   "video frames go to storage without the published JPEG round trip"
                                   if build.visual_kind == "video" else "") if d],
        "info": tables.info,
    }
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n",
                                           encoding="utf-8")
    (partial / "DONE").touch()


def write_split_records(partial: Path, ids: Sequence[str], split_of: np.ndarray, split_names: Iterable[str],
                        val_ids: set[str] | None, split_files: Iterable[FetchedFile], dropped: Sequence[Dropped]
                        ) -> dict[str, np.ndarray]:
    """Write a cache's split row lists (``splits/<name>.npy`` + ``.txt``; ``val`` and ``train_noval`` carved from
    train by ``val_ids``), copies of the split files it was built from, and ``dropped.csv``. Shared by the
    audio-visual cache and ``datasets.array_cache``; returns the row lists."""
    rows = np.arange(len(ids), dtype=np.int64)
    splits = {s: rows[split_of == s] for s in split_names}
    if val_ids is not None:
        in_val = np.asarray([sid in val_ids for sid in ids], dtype=bool) & (split_of == "train")
        splits["val"] = rows[in_val]
        splits["train_noval"] = rows[(split_of == "train") & ~in_val]
    else:
        splits["train_noval"] = splits["train"]
    (partial / "splits").mkdir(exist_ok=True)
    for split, split_rows in splits.items():
        np.save(partial / "splits" / f"{split}.npy", split_rows)
        (partial / "splits" / f"{split}.txt").write_text("".join(f"{ids[r]}\n" for r in split_rows),
                                                         encoding="utf-8")
    (partial / "split_files").mkdir(exist_ok=True)
    for fetched in split_files:
        shutil.copyfile(fetched.path, partial / "split_files" / fetched.name)
    with (partial / "dropped.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=("id", "split", "reason", "detail", "where"), lineterminator="\n")
        writer.writeheader()
        writer.writerows(d.row() for d in dropped)
    return splits
