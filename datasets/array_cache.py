"""Array caches for the datasets that are not audio + 1 fps frames: image-text, MOSEI features, NVGesture and
UCF-101 clips (datasets.md §7). The audio-visual datasets use ``datasets.cache`` / ``datasets.prepare``.

``prepare_arrays`` follows ``datasets.prepare.prepare`` step for step and reuses its parts (split
tables, duplicate policy, ``--skip-bad`` accounting and thresholds, the validation hold-out, the shard/resume/rename
protocol, the manifest layout), but the arrays are declared by the dataset (``ArraySpec``) instead of being audio +
1 fps frames::

    <cache_dir>/<dataset>/<recipe>-<hash8>/
      index.csv                 one row per kept sample (``datasets.cache.INDEX_COLUMNS``)
      labels.npy                int64 [N]
      <array>.npy               one per ArraySpec: [N, *shape], or [total, *shape] for ragged arrays, which add
      <array>_start.npy, <array>_count.npy   int64 [N]: sample i owns rows start[i] : start[i] + count[i]
      splits/<name>.npy (+ .txt), split_files/, dropped.csv, manifest.json, DONE (last)

A dataset subclasses ``ArrayCacheDataset`` and supplies: its annotation files, ``read_tables`` (parse them into
samples; bad rows are ``Dropped`` items), ``locate`` (a sample's media; ``MediaError`` when missing), ``arrays`` and
``load`` (one sample's arrays, decoded and resized once, at prepare time), and ``serve`` (task spec, gather and
per-batch augmentation). Prepare-time settings (tokenizer, sequence length, storage sizes, ...) are ``HParam``s in
``SETTINGS`` with named presets in ``RECIPES``; they are part of the cache's options hash and manifest
(``augbench prepare ... --option KEY=VALUE``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import multiprocessing
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from baselines.hparams import HParam, HParams, resolve
from benchmarks.records import git_commit
from datasets.base import Augment, DataBundle, Gather, TaskSpec
from datasets.cache import (PreparedDataset, CACHE_VERSION, TRAIN_SPLITS, CacheError, default_cache_root, options_hash,
                            read_index, write_index)
from datasets.prepare import (Dropped, PrepareError, PrepareOptions, Sample, SplitTables, check_bad, check_classes,
                              publish_cache, manifest_summary, validation_split, library_versions, write_split_records)
from datasets.recipes import MediaError, is_lfs_pointer, lfs_error
from datasets.sources import FetchedFile, fetch_split_files
from datasets.splits import DUPLICATE_POLICIES, ParsedList, SplitRow, resolve_duplicates

LAYOUT_TAG = "arrays"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


# ---------------------------------------------------------------------------------------------------------------------
# The array cache
# ---------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArraySpec:
    """One cached array ``<name>.npy``.

    Attributes:
        name: file stem.
        dtype: numpy dtype name.
        shape: shape of one row.
        ragged: samples own a variable number of rows (frames), located by ``<name>_start``/``<name>_count``.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    ragged: bool = False

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "ragged": self.ragged}


@dataclass(frozen=True)
class ArrayRecipe:
    """A named preset of prepare-time settings (``--recipe``), with what it reproduces."""

    doc: str
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Record:
    """A located sample: media paths relative to the raw root (role -> path) and what ``load`` needs besides."""

    pos: int
    sample: Sample
    media: Mapping[str, str]
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Parsed:
    """``read_tables`` output: the split tables plus each kept sample's row (keyed by ``Sample.where``)."""

    tables: SplitTables
    rows: dict[str, SplitRow] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardJob:
    """One shard's extraction work (picklable for worker processes)."""

    folder: Path
    dataset: type
    raw: Path
    records: tuple[Record, ...]
    settings: Mapping[str, Any]
    specs: tuple[ArraySpec, ...]
    skip_bad: bool


@dataclass
class ArrayCache:
    """An opened array cache: memory-mapped arrays, ragged offsets, index, splits and manifest."""

    path: Path
    manifest: dict[str, Any]
    index: dict[str, np.ndarray]
    labels: np.ndarray
    arrays: dict[str, np.ndarray]
    starts: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    splits: dict[str, np.ndarray]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest["classes"])

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.manifest["settings"])


def open_array_cache(path: Path) -> ArrayCache:
    """Open a finished array cache: every array memory-mapped, nothing unpickled."""
    path = Path(path)
    if not (path / "DONE").is_file():
        raise CacheError(f"{path} is not a finished cache: no DONE file (an interrupted prepare resumes when run "
                         f"again)")
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("format") != CACHE_VERSION or manifest.get("layout") != LAYOUT_TAG:
        raise CacheError(f"{path}: cache format {manifest.get('format')!r}/{manifest.get('layout')!r}, this code reads "
                         f"{CACHE_VERSION}/{LAYOUT_TAG!r}; prepare again with --force")
    arrays, starts, counts = {}, {}, {}
    for spec in manifest["arrays"]:
        name = spec["name"]
        arrays[name] = np.load(path / f"{name}.npy", mmap_mode="r")
        if spec["ragged"]:
            starts[name] = np.load(path / f"{name}_start.npy")
            counts[name] = np.load(path / f"{name}_count.npy")
    splits = {p.stem: np.load(p) for p in sorted((path / "splits").glob("*.npy"))}
    return ArrayCache(path, manifest, read_index(path / "index.csv"), np.load(path / "labels.npy"), arrays, starts,
                      counts, splits)


def array_cache_hparams(*, recipes: Sequence[str], recipe: str, recipe_doc: str) -> tuple[HParam, ...]:
    """The ``data.*`` knobs every array-cache dataset has: where its cache is and which training split to use."""
    return (
        HParam("cache_dir", "", "Cache root: the cache is <cache_dir>/<dataset>/<recipe>-<hash8>/ as written by "
                                "`augbench prepare`. Empty = $AUG_BENCH_CACHE, else ./cache."),
        HParam("cache", "", "Explicit cache folder; overrides cache_dir + recipe (needed when several caches of the "
                            "same recipe exist, e.g. built with different options)."),
        HParam("recipe", recipe, recipe_doc, choices=tuple(recipes)),
        HParam("train_split", "clean", "'clean': train on train minus the validation split and select on val "
                                       "(methods.md §6 protocol B); 'full': train on the whole published train list "
                                       "(protocol A); a validation split inside train is then left out.",
               choices=TRAIN_SPLITS),
    )


class ArrayCacheDataset(PreparedDataset):
    """Base of the array-cache datasets; see the module docstring for what a subclass supplies.

    Attributes:
        CLASSES: the declared label map in index order, if the dataset has a fixed one.
        RECIPES: preset name -> ``ArrayRecipe``.
        DEFAULT_RECIPE: the preset ``prepare`` builds when none is named.
        SETTINGS: the prepare-time knobs (declared once, with their sources).
        ANNOTATION_DIR: folder of the annotation files under the raw root ("" = the raw root itself).
        ANNOTATIONS: annotation files that must exist (none of them is pinned: they are read locally, SHA-256
            recorded and copied into the cache).
        OPTIONAL_ANNOTATIONS: annotation files read when present (published validation lists).
        LABEL_ORDERS: accepted ``--label-order`` values, the first being the default.
        SHARD_SIZE: samples per resumable shard (small for datasets with large samples).
    """

    CLASSES: ClassVar[tuple[str, ...]] = ()
    RECIPES: ClassVar[Mapping[str, ArrayRecipe]] = {}
    DEFAULT_RECIPE: ClassVar[str] = ""
    SETTINGS: ClassVar[tuple[HParam, ...]] = ()
    ANNOTATION_DIR: ClassVar[str] = ""
    ANNOTATIONS: ClassVar[tuple[str, ...]] = ()
    OPTIONAL_ANNOTATIONS: ClassVar[tuple[str, ...]] = ()
    LABEL_ORDERS: ClassVar[tuple[str, ...]] = ("declared",)
    SHARD_SIZE: ClassVar[int] = 64

    # --- what a subclass supplies ------------------------------------------------------------------------------------
    @classmethod
    def annotation_files(cls, settings: HParams) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(required, optional) annotation file names; by default the class constants."""
        return cls.ANNOTATIONS, cls.OPTIONAL_ANNOTATIONS

    @classmethod
    def read_tables(cls, files: Mapping[str, Path], raw: Path, opts: PrepareOptions, settings: HParams) -> Parsed:
        raise NotImplementedError

    @classmethod
    def locate(cls, raw: Path, sample: Sample, row: SplitRow, settings: HParams
               ) -> tuple[dict[str, str], dict[str, Any]]:
        """(media role -> path relative to ``raw``, extras for ``load``); ``MediaError`` when media are missing."""
        raise NotImplementedError

    @classmethod
    def arrays(cls, settings: HParams, info: Mapping[str, Any]) -> tuple[ArraySpec, ...]:
        """The cached arrays; ``info`` is ``read_tables``' ``SplitTables.info`` (e.g. feature shapes found there)."""
        raise NotImplementedError

    @classmethod
    def load(cls, raw: Path, record: Record, settings: HParams) -> dict[str, np.ndarray]:
        """One sample's arrays: ``shape`` for fixed arrays, ``(n, *shape)`` for ragged ones; ``MediaError`` if bad."""
        raise NotImplementedError

    @classmethod
    def serve(cls, cache: ArrayCache, hp: HParams) -> tuple[TaskSpec, Gather, Augment]:
        raise NotImplementedError

    @classmethod
    def deviations(cls, settings: HParams) -> list[str]:
        """Declared differences from the published pipelines, for the manifest."""
        return []

    # --- shared machinery --------------------------------------------------------------------------------------------
    @classmethod
    def resolve_settings(cls, recipe: str, overrides: Mapping[str, Any] | None = None) -> HParams:
        if recipe not in cls.RECIPES:
            raise ValueError(f"{cls.NAME} has no recipe {recipe!r}; valid: {sorted(cls.RECIPES)}")
        return resolve(f"{cls.NAME} prepare", cls.SETTINGS, None,
                       {**cls.RECIPES[recipe].settings, **dict(overrides or {})})

    @classmethod
    def build(cls, hp: HParams) -> DataBundle:
        cache = open_array_cache(cls.locate_cache(hp))
        if cache.manifest["dataset"] != cls.NAME:
            raise CacheError(f"{cache.path} holds dataset {cache.manifest['dataset']!r}, not {cls.NAME!r}")
        task, gather, augment = cls.serve(cache, hp)
        info = {"cache": str(cache.path), "recipe": cache.manifest["recipe"], "counts": cache.manifest["counts"],
                "dropped": cache.manifest["dropped"], "val_source": cache.manifest["val_source"]}
        return DataBundle(task, cache.labels, served_splits(cache, hp.train_split), gather, augment, info)


def served_splits(cache: ArrayCache, train_split: str) -> dict[str, np.ndarray]:
    """train/val/test rows: ``clean`` trains on train minus val; ``full`` on all of train (val dropped if inside)."""
    splits = {"train": cache.splits["train_noval"], "val": cache.splits["val"], "test": cache.splits["test"]}
    if train_split == "full":
        splits["train"] = cache.splits["train"]
        if np.isin(splits["val"], splits["train"]).any():
            del splits["val"]
    return splits


def samples_from_parsed(parsed: ParsedList, split: str, classes: Sequence[str], label_name: Callable[[SplitRow], str],
                        duplicates: str, out: Parsed, speaker: Callable[[SplitRow], str] | None = None) -> None:
    """Add one parsed list's rows to ``out`` as samples: duplicate policy, then labels (unknown -> a bad row)."""
    kept, dups = resolve_duplicates(parsed.rows, duplicates)
    out.tables.dropped += [Dropped(r.id, split, "duplicate id", reason, parsed.where(r), bad=False)
                           for r, reason in dups]
    index = {name: i for i, name in enumerate(classes)}
    samples = out.tables.splits.setdefault(split, [])
    for r in kept:
        name = label_name(r)
        if name not in index:
            out.tables.dropped.append(Dropped(r.id, split, "unknown label", f"unknown label {r.label!r}; valid: "
                                              f"{list(classes)[:10]}{' ...' if len(classes) > 10 else ''}",
                                              parsed.where(r), bad=True))
            continue
        sample = Sample(r.id, split, index[name], name, parsed.where(r), speaker(r) if speaker else "")
        samples.append(sample)
        out.rows[sample.where] = r


def malformed_rows(parsed: ParsedList, split: str) -> list[Dropped]:
    """Lines a lenient parser skipped for a format error (not blank lines or the header), as bad items naming the
    file and line, so that ``--skip-bad`` drops and counts them and its absence stops ``prepare`` with the list."""
    return [Dropped(f"L{line}", split, "malformed row", reason, f"{parsed.path.name}:{line}", bad=True)
            for line, _, reason in parsed.skipped if reason not in ("blank line", "header")]


def indexed_label(classes: Sequence[str]) -> Callable[[SplitRow], str]:
    """Label fields holding the class index (``0`` .. ``K-1``, as AMSS's one-hot ``np.eye(K)[label]``) -> name; any
    other value is returned as written and then reported as an unknown label."""
    def name(row: SplitRow) -> str:
        text = row.label.strip()
        return classes[int(text)] if text.isdigit() and int(text) < len(classes) else text
    return name


def _fingerprint(raw: Path, records: Sequence[Record]) -> str:
    """SHA-256 over (path, size, mtime) of every media file/folder: changes when the raw media are replaced."""
    digest = hashlib.sha256()
    for rel in sorted({p for r in records for p in r.media.values()}):
        st = (raw / rel).stat()
        digest.update(f"{rel}\t{st.st_size if (raw / rel).is_file() else 0}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _check_shapes(job: ShardJob, record: Record, arrays: Mapping[str, np.ndarray], specs: Sequence[ArraySpec]) -> None:
    for spec in specs:
        value = arrays.get(spec.name)
        want = spec.shape if not spec.ragged else (value.shape[0] if value is not None else 0, *spec.shape)
        if value is None or tuple(value.shape) != tuple(want):
            raise RuntimeError(f"{job.dataset.NAME}.load returned {None if value is None else value.shape} for "
                               f"{spec.name!r} of {record.sample.id}, expected {want}")


def run_shard(job: ShardJob) -> int:
    """Extract one shard into ``job.folder``: ``<array>.npy`` per spec (kept samples only), ``meta.json``, ``DONE``."""
    settings = HParams(f"{job.dataset.NAME} prepare", job.settings)
    specs = job.specs
    collected: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    meta: list[dict[str, Any]] = []
    for record in job.records:
        try:
            arrays = job.dataset.load(job.raw, record, settings)
        except MediaError as err:
            if not job.skip_bad:
                raise PrepareError(f"{record.sample.where} ({record.sample.id}): {err}. Fix it, or pass --skip-bad "
                                   f"to drop and record bad items") from err
            meta.append({"pos": record.pos, "error": [err.kind, str(err)]})
            continue
        _check_shapes(job, record, arrays, specs)
        for spec in specs:
            collected[spec.name].append(np.asarray(arrays[spec.name], dtype=spec.dtype))
        meta.append({"pos": record.pos, "counts": {s.name: int(len(arrays[s.name])) for s in specs if s.ragged}})
    job.folder.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        parts = collected[spec.name]
        if spec.ragged:
            stacked = np.concatenate(parts) if parts else np.zeros((0, *spec.shape), dtype=spec.dtype)
        else:
            stacked = np.stack(parts) if parts else np.zeros((0, *spec.shape), dtype=spec.dtype)
        np.save(job.folder / f"{spec.name}.npy", stacked)
    (job.folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    (job.folder / "DONE").touch()
    return len(job.records)


def prepare_arrays(dataset: type[ArrayCacheDataset], raw: Path | str, out: Path | str | None = None,
                   opts: PrepareOptions | None = None, settings: Mapping[str, Any] | None = None,
                   log: Callable[[str], None] = print) -> Path:
    """Build (or reuse) the array cache of ``dataset`` from the raw folder ``raw`` under the cache root ``out``.

    Args:
        dataset: a registered ``ArrayCacheDataset`` subclass.
        raw: the dataset folder as distributed.
        out: cache root (default ``$AUG_BENCH_CACHE`` or ``./cache``).
        opts: the common prepare options (``datasets.prepare.PrepareOptions``: recipe, label order, duplicates,
            validation hold-out, ``skip_bad``, ``force``, workers, shard size, ``splits_dir``); audio, layout and
            frame options do not apply.
        settings: overrides of the dataset's ``SETTINGS`` (e.g. ``{"tokenizer": "path/to/vocab.txt"}``).
        log: progress and summary lines.

    Returns:
        The finished cache folder.

    Raises:
        PrepareError: bad items (without ``skip_bad``), an empty class, or nothing left.
        SplitFileError: an annotation file is missing.
        SplitParseError: an annotation file is malformed (the message names the file and line).
        FileNotFoundError: the raw folder does not exist.
    """
    opts = opts or PrepareOptions()
    raw = Path(raw)
    if not raw.is_dir():
        raise FileNotFoundError(f"raw {dataset.NAME} folder {raw} not found")
    root = Path(out) if out is not None else default_cache_root()
    name = dataset.NAME
    recipe = opts.recipe or dataset.DEFAULT_RECIPE
    conf = dataset.resolve_settings(recipe, settings)
    label_order = opts.label_order or dataset.LABEL_ORDERS[0]
    if label_order not in dataset.LABEL_ORDERS:
        raise ValueError(f"{name}: unknown label order {label_order!r}; valid: {list(dataset.LABEL_ORDERS)}")
    if opts.duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"unknown duplicate policy {opts.duplicates!r}; valid: {DUPLICATE_POLICIES}")
    opts = dataclasses.replace(opts, label_order=label_order, recipe=recipe)

    required, optional = dataset.annotation_files(conf)
    files: dict[str, FetchedFile] = {}
    if required or optional:
        local = opts.splits_dir or (raw / dataset.ANNOTATION_DIR if dataset.ANNOTATION_DIR else raw)
        files = fetch_split_files(name, required + optional, root / name / ".split_files", local_dir=local,
                                  optional=optional, strict=opts.strict_splits, log=log)
    parsed = dataset.read_tables({n: f.path for n, f in files.items()}, raw, opts, conf)
    tables = parsed.tables
    classes = tables.classes
    check_classes(name, classes, {s: np.asarray([x.label for x in tables.splits.get(s, [])], dtype=np.int64)
                                   for s in ("train", "test")})
    val_ids, val_source, val_record = validation_split(tables, opts)

    records: list[Record] = []
    dropped = list(tables.dropped)
    for split_samples in tables.splits.values():
        for sample in split_samples:
            try:
                media, extra = dataset.locate(raw, sample, parsed.rows[sample.where], conf)
                for rel in media.values():
                    if is_lfs_pointer(raw / rel):
                        raise lfs_error(raw / rel)
            except MediaError as err:
                dropped.append(Dropped(sample.id, sample.split, err.kind, str(err), sample.where, bad=True))
                continue
            records.append(Record(len(records), sample, media, extra))
    rows_read = len(records) + len(dropped)
    check_bad(name, [d for d in dropped if d.bad], rows_read, opts)

    specs = dataset.arrays(conf, tables.info)
    options = {"format": CACHE_VERSION, "layout": LAYOUT_TAG, "dataset": name, "recipe": recipe,
               "settings": conf.as_dict(), "arrays": [s.record() for s in specs], "label_order": label_order,
               "duplicates": opts.duplicates, "val": val_record,
               "split_files": {n: f.sha256 for n, f in sorted(files.items())}}
    digest = options_hash(options)
    final = root / name / f"{recipe}-{digest}"
    partial = final.with_name(final.name + ".partial")
    fingerprint = _fingerprint(raw, records)
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

    plan = {"options": options, "raw_fingerprint": fingerprint, "skip_bad": opts.skip_bad,
            "records": [[r.sample.split, r.sample.id, sorted(r.media.items())] for r in records]}
    plan_text = json.dumps(plan, sort_keys=True, default=str)
    if partial.exists() and (not (partial / "plan.json").is_file()
                             or (partial / "plan.json").read_text(encoding="utf-8") != plan_text):
        log(f"{partial}: discarding an unfinished build made with other inputs")
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "plan.json").write_text(plan_text, encoding="utf-8")

    # PrepareOptions' generic default (64) gives way to the dataset's, which is small for large clips (NVGesture).
    size = max(int(dataset.SHARD_SIZE if opts.shard_size == PrepareOptions.shard_size else opts.shard_size), 1)
    jobs = [ShardJob(partial / "shards" / f"{k:05d}", dataset, raw, tuple(records[start:start + size]),
                     conf.as_dict(), specs, opts.skip_bad) for k, start in enumerate(range(0, len(records), size))]
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

    _finalize(dataset, partial, raw, jobs, specs, tables, dropped, rows_read, val_ids, opts,
              {"recipe": recipe, "conf": conf, "digest": digest, "files": files, "fingerprint": fingerprint,
               "val_source": val_source, "val_record": val_record})
    return publish_cache(partial, final, log)


def _finalize(dataset: type[ArrayCacheDataset], partial: Path, raw: Path, jobs: Sequence[ShardJob],
              specs: Sequence[ArraySpec], tables: SplitTables, dropped: list[Dropped], rows_read: int,
              val_ids: set[str] | None, opts: PrepareOptions, build: Mapping[str, Any]) -> dict[str, Any]:
    """Concatenate the shards into the final arrays and write index, splits, drops, manifest and DONE."""
    name = dataset.NAME
    metas = [json.loads((job.folder / "meta.json").read_text(encoding="utf-8")) for job in jobs]
    for job, meta in zip(jobs, metas):
        for record, entry in zip(job.records, meta):
            if "error" in entry:
                kind, detail = entry["error"]
                dropped.append(Dropped(record.sample.id, record.sample.split, kind, detail, record.sample.where,
                                       bad=True))
    check_bad(name, [d for d in dropped if d.bad], rows_read, opts)
    kept = [(record, entry) for job, meta in zip(jobs, metas) for record, entry in zip(job.records, meta)
            if "error" not in entry]
    if not kept:
        raise PrepareError(f"{name}: no samples left after dropping bad items")
    classes = tables.classes
    labels = np.asarray([r.sample.label for r, _ in kept], dtype=np.int64)
    split_of = np.asarray([r.sample.split for r, _ in kept])
    ids = [r.sample.id for r, _ in kept]
    check_classes(name, classes, {s: labels[split_of == s] for s in ("train", "test")})

    offsets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for spec in specs:
        if spec.ragged:
            counts = np.asarray([entry["counts"][spec.name] for _, entry in kept], dtype=np.int64)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            offsets[spec.name] = (starts, counts)
            np.save(partial / f"{spec.name}_start.npy", starts)
            np.save(partial / f"{spec.name}_count.npy", counts)
            total = int(counts.sum())
        else:
            total = len(kept)
        target = np.lib.format.open_memmap(partial / f"{spec.name}.npy", mode="w+", dtype=spec.dtype,
                                           shape=(total, *spec.shape))
        pos = 0
        for job in jobs:
            part = np.load(job.folder / f"{spec.name}.npy", mmap_mode="r")
            target[pos:pos + len(part)] = part
            pos += len(part)
        target.flush()
        del target

    np.save(partial / "labels.npy", labels)
    first_ragged = next((s.name for s in specs if s.ragged), None)
    index_rows = []
    for i, (record, _) in enumerate(kept):
        start, count = (offsets[first_ragged][0][i], offsets[first_ragged][1][i]) if first_ragged else (0, 0)
        index_rows.append({"row": i, "id": record.sample.id, "split": record.sample.split,
                           "label": record.sample.label, "label_name": record.sample.label_name,
                           "speaker": record.sample.speaker, "duration_s": math.nan, "frame_start": int(start),
                           "frame_count": int(count), "audio_path": record.media.get("audio", ""),
                           "visual_path": next((v for k, v in record.media.items() if k != "audio"), "")})
    write_index(partial / "index.csv", index_rows)

    splits = write_split_records(partial, ids, split_of, tables.splits, val_ids, build["files"].values(), dropped)

    conf: HParams = build["conf"]
    manifest = {
        "format": CACHE_VERSION, "layout": LAYOUT_TAG, "dataset": name, "recipe": build["recipe"],
        "recipe_doc": dataset.RECIPES[build["recipe"]].doc, "options_hash": build["digest"],
        "settings": conf.as_dict(), "arrays": [s.record() for s in specs],
        "raw_root": str(raw.resolve()), "raw_fingerprint": build["fingerprint"],
        "classes": list(classes), "label_order": opts.label_order,
        "split_files": {n: fetched.record() for n, fetched in sorted(build["files"].items())},
        "val_source": build["val_source"], "val": build["val_record"],
        "policies": {"duplicates": opts.duplicates, "skip_bad": opts.skip_bad,
                     "max_drop_fraction": opts.max_drop_fraction},
        "counts": {"total": len(kept), "rows_read": rows_read,
                   "splits": {s: {"n": int(len(r)), "per_class": dict(zip(classes, np.bincount(
                       labels[r], minlength=len(classes)).tolist()))} for s, r in splits.items()}},
        "dropped": {"total": len(dropped), "by_reason": dict(Counter(d.kind for d in dropped)),
                    "bad": sum(d.bad for d in dropped)},
        "versions": {**library_versions(), **_optional_versions()}, "git_commit": git_commit(),
        "deviations": dataset.deviations(conf), "info": tables.info,
    }
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n",
                                           encoding="utf-8")
    (partial / "DONE").touch()
    return manifest


def _optional_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for lib in ("transformers", "tokenizers"):
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = None
    return out
