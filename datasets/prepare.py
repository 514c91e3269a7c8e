"""``augbench prepare``: raw media + verified split files -> a memory-mappable cache (docs/datasets/cache.md), one
pipeline for every ``PreparedDataset``.

Steps, each recorded in the manifest:

1. **Split files.** Pinned ones are downloaded from their raw URLs and SHA-256-verified, or read from ``--splits DIR``
   or the dataset's folder under the raw root (``datasets.sources``); copies go into the cache.
2. **Parse.** The dataset's ``read_splits`` turns them into samples per base split (train/test, some also val), with
   its label map; duplicate ids follow the duplicate policy; rows with unknown labels are bad items.
3. **Locate media.** Every sample's media must exist and must not be a Git LFS pointer. A fingerprint of the media
   (path, size, mtime of each file, and of each file inside a frame folder) guards against reusing a cache built
   from other media.
4. **Extract** in shards of ``shard_size`` samples (optionally in worker processes): the dataset's ``load`` computes
   each sample's arrays once. Each shard writes its own files and then a ``DONE`` marker, so an interrupted run
   resumes at the first unfinished shard. Media ``load`` cannot use (corrupt, too few frames, ...) are bad items.
5. **Finalise** into ``<recipe>-<hash8>.partial/``: concatenate the shards into ``<array>.npy`` (plus ragged offsets),
   write ``index.csv``, ``labels.npy``, ``splits/``, ``dropped.csv``, ``manifest.json`` and ``DONE`` last, then rename
   the folder to ``<recipe>-<hash8>/``. A finished cache is reused as is; ``force`` rebuilds it.

Bad items stop ``prepare`` with a message naming the row and file; with ``skip_bad`` they are dropped, written to
``dropped.csv`` with their reason and counted in the manifest and the printed summary. A class left without samples
in train or test is always an error.

Validation split: a published one (CREMA-D ``val.csv``, AVE ``valSet.txt``, a ``dev.tsv``, MOSEI ``valid``) when the
dataset has it, else a stratified hold-out of the parsed train rows (``val_fraction``, ``val_seed``), computed before
media checks so that missing downloads do not reshuffle it; its ids are written to ``splits/val.txt``. A split that
comes out empty (``val_fraction`` 0) is not written and is listed under ``empty_splits`` in the manifest, so training
runs without a validation loader.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import stat
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from core.hparams import HParams
from core.provenance import git_commit, library_versions
from datasets.base import groups_span_classes, stratified_holdout
from datasets.cache import CACHE_VERSION, ArraySpec, default_cache_root, options_hash, read_manifest, write_index
from datasets.media import MISSING_MEDIA, MediaError, is_lfs_pointer, lfs_error
from datasets.prepared import PreparedDataset, Record
from datasets.sources import FetchedFile, fetch_split_files
from datasets.splits import DUPLICATE_POLICIES
from datasets.tables import Dropped, PrepareError, PrepareOptions, SplitTables, StaleCacheError

# Counts every build has; the summary line also names a dataset's own counts (short audio, few-frame clips).
GENERIC_COUNTS = ("total", "rows_read", "splits")

# Where a user finds how to get a dataset and the raw layout prepare reads.
LAYOUT_HELP = "docs/datasets/README.md links each dataset's page: where to get it and the raw layout it must have"


@dataclass(frozen=True)
class Build:
    """The resolved inputs of one build, as ``_finalize`` records them."""

    recipe: str
    settings: HParams
    specs: tuple[ArraySpec, ...]
    digest: str
    files: dict[str, FetchedFile]
    fingerprint: str
    val_source: str
    val_record: dict[str, Any]


@dataclass(frozen=True)
class ShardJob:
    """One shard's extraction work (picklable for worker processes)."""

    folder: Path
    dataset: type[PreparedDataset]
    raw: Path
    records: tuple[Record, ...]
    settings: Mapping[str, Any]
    specs: tuple[ArraySpec, ...]
    skip_bad: bool


def media_fingerprint(raw: Path, records: Sequence[Record]) -> str:
    """SHA-256 over (path, size, mtime) of every media file, and of every file inside a media folder: changes when
    the raw media are replaced."""
    digest = hashlib.sha256()
    for rel in sorted({p for r in records for p in r.media.values()}):
        path = raw / rel
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            # A folder's own mtime stays put when a frame inside is rewritten in place, so its files are looked at.
            for entry in sorted(os.scandir(path), key=lambda e: e.name):
                # lstat: a dangling link is recorded (the frame loader skips it) instead of stopping prepare
                digest.update(_stat_line(f"{rel}/{entry.name}", entry.stat(follow_symlinks=False)))
        else:
            digest.update(_stat_line(rel, st))
    return digest.hexdigest()


def _stat_line(rel: str, st: os.stat_result) -> bytes:
    size = st.st_size if stat.S_ISREG(st.st_mode) else 0
    return f"{rel}\t{size}\t{st.st_mtime_ns}\n".encode()


def _check_shapes(job: ShardJob, record: Record, arrays: Mapping[str, np.ndarray]) -> None:
    for spec in job.specs:
        value = arrays.get(spec.name)
        want = spec.shape if not spec.ragged else (value.shape[0] if value is not None else 0, *spec.shape)
        if value is None or tuple(value.shape) != tuple(want):
            raise RuntimeError(f"{job.dataset.NAME}.load returned {None if value is None else value.shape} for "
                               f"{spec.name!r} of {record.sample.id}, expected {want}")


def run_shard(job: ShardJob) -> int:
    """Extract one shard into ``job.folder``: ``<array>.npy`` per spec (kept samples only), ``meta.json``, ``DONE``."""
    settings = HParams(f"{job.dataset.NAME} prepare", job.settings)
    collected: dict[str, list[np.ndarray]] = {s.name: [] for s in job.specs}
    meta: list[dict[str, Any]] = []
    for record in job.records:
        try:
            arrays, facts = job.dataset.load(job.raw, record, settings)
        except MediaError as err:
            if not job.skip_bad:
                raise PrepareError(f"{record.sample.where} ({record.sample.id}): {err}. Fix it, or pass --skip-bad "
                                   f"to drop and record bad items") from err
            meta.append({"pos": record.pos, "error": [err.kind, str(err)]})
            continue
        _check_shapes(job, record, arrays)
        for spec in job.specs:
            collected[spec.name].append(np.asarray(arrays[spec.name], dtype=spec.dtype))
        meta.append({"pos": record.pos, "counts": {s.name: int(len(arrays[s.name])) for s in job.specs if s.ragged},
                     "facts": facts})
    job.folder.mkdir(parents=True, exist_ok=True)
    for spec in job.specs:
        parts = collected[spec.name]
        join = np.concatenate if spec.ragged else np.stack
        np.save(job.folder / f"{spec.name}.npy", join(parts) if parts else np.zeros((0, *spec.shape), spec.dtype))
    (job.folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    (job.folder / "DONE").touch()
    return len(job.records)


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


def check_reused_drops(cache: Path, manifest: Mapping[str, Any], opts: PrepareOptions) -> None:
    """A finished cache answers a later ``prepare`` only under a bad-item policy that would have built it. Items that
    fail only while extracting (a corrupt frame) are found by a build, not before a reuse, so without this a strict
    ``prepare`` would be served a cache built with --skip-bad, minus the items it dropped."""
    bad, rows = manifest["dropped"]["bad"], manifest["counts"]["rows_read"]
    if not bad:
        return
    lacks = f"{cache} lacks {bad} bad item(s) (listed in {cache / 'dropped.csv'})"
    if not opts.skip_bad:
        raise PrepareError(f"{lacks}, dropped by the --skip-bad build that made it; pass --skip-bad to use it, or fix "
                           f"the media and pass --force to rebuild")
    if bad > opts.max_drop_fraction * rows:
        raise PrepareError(f"{lacks}: more than --max-drop-fraction {opts.max_drop_fraction} of {rows} rows")


def check_raw_layout(dataset: str, raw: Path, records: Sequence[Record], bad: Sequence[Dropped]) -> None:
    """Refuse a ``--raw`` folder where no split row found its media: the wrong folder or another layout, not damaged
    media, which --skip-bad would only drop to the last item."""
    if not records and bad and all(d.kind == MISSING_MEDIA for d in bad):
        raise PrepareError(f"{_bad_summary(dataset, bad)}\nno media found for any of the split files' rows: "
                           f"{raw} is not a {dataset} folder in its raw layout, or the layout's folders are named "
                           f"otherwise ({LAYOUT_HELP})")


def check_classes(dataset: str, classes: Sequence[str], labels_by_split: Mapping[str, np.ndarray]) -> None:
    for split, labels in labels_by_split.items():
        present = np.bincount(labels, minlength=len(classes)) if len(labels) else np.zeros(len(classes), int)
        empty = [classes[i] for i in np.flatnonzero(present == 0)]
        if empty:
            raise PrepareError(f"{dataset}: class(es) {empty} have no {split} samples; a model cannot learn or be "
                               f"scored on an empty class")


def check_parsed_classes(dataset: str, tables: SplitTables, opts: PrepareOptions) -> None:
    """Every class has train and test rows in the split files. When one has none because its rows are bad (an
    unknown label), the bad rows are the error: "class NEU has no test samples" alone sends the user looking for a
    missing class instead of the misspelt label on a named line."""
    samples = [s for split in tables.splits.values() for s in split]
    try:
        check_classes(dataset, tables.classes, _labels_by_split(samples))
    except PrepareError as err:
        bad = [d for d in tables.dropped if d.bad]
        if not bad:
            raise
        dropped = " (dropped by --skip-bad)" if opts.skip_bad else ""
        raise PrepareError(f"{_bad_summary(dataset, bad)}{dropped}\n{err}") from None


def _labels_by_split(samples: Iterable[Any]) -> dict[str, np.ndarray]:
    samples = list(samples)
    return {s: np.asarray([x.label for x in samples if x.split == s], dtype=np.int64) for s in ("train", "test")}


def validation_split(tables: SplitTables, opts: PrepareOptions) -> tuple[set[str] | None, str, dict[str, Any]]:
    """(validation ids within train, or None for a ``val`` base split; description; manifest record)."""
    if "val" in tables.splits:
        return None, tables.val_source or "published validation list", {}
    if tables.val_ids is not None:
        return set(tables.val_ids), tables.val_source, {}
    if not 0.0 <= opts.val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1) (0 = no validation split), got {opts.val_fraction}")
    train = tables.splits["train"]
    labels = np.asarray([s.label for s in train], dtype=np.int64)
    record: dict[str, Any] = {"fraction": opts.val_fraction, "seed": opts.val_seed}
    groups = None
    if tables.val_group is not None:
        key, record["groups"] = tables.val_group
        groups = np.asarray([key(s) for s in train])
    _, held = stratified_holdout(np.arange(len(train)), labels, opts.val_fraction, opts.val_seed, groups)
    # Groups that span classes are drawn from all groups, not per class: not stratified.
    kind = "hold-out" if groups is not None and groups_span_classes(groups, labels) else "stratified hold-out"
    whole = f" by whole {record['groups']}" if groups is not None else ""
    return ({train[i].id for i in held},
            f"{kind} of train{whole} (fraction {opts.val_fraction}, seed {opts.val_seed})", record)


def _locate(dataset: type[PreparedDataset], raw: Path, tables: SplitTables, settings: HParams
            ) -> tuple[list[Record], list[Dropped]]:
    records: list[Record] = []
    dropped = list(tables.dropped)
    for split_samples in tables.splits.values():
        for sample in split_samples:
            try:
                media, extra = dataset.locate(raw, sample, settings)
                for rel in media.values():
                    if is_lfs_pointer(raw / rel):
                        raise lfs_error(raw / rel)
            except MediaError as err:
                dropped.append(Dropped(sample.id, sample.split, err.kind, str(err), sample.where, bad=True))
                continue
            records.append(Record(len(records), sample, media, extra))
    return records, dropped


def prepare(dataset: type[PreparedDataset], raw: Path | str, out: Path | str | None = None,
            opts: PrepareOptions | None = None, settings: Mapping[str, Any] | None = None,
            log: Callable[[str], None] = print) -> Path:
    """Build (or reuse) the cache of ``dataset`` from the raw folder ``raw`` under the cache root ``out``.

    Args:
        dataset: a registered ``PreparedDataset`` subclass.
        raw: the dataset folder as distributed.
        out: cache root (default ``$AUG_BENCH_CACHE`` or ``./cache``).
        opts: see ``PrepareOptions``.
        settings: overrides of the dataset's ``SETTINGS`` (e.g. ``{"tokenizer": "path/to/vocab.txt"}``).
        log: progress and summary lines.

    Returns:
        The finished cache folder.

    Raises:
        PrepareError: bad items (without ``skip_bad``), an empty class, or nothing left.
        SplitFileError: a split file is missing or fails verification.
        SplitParseError: a split file is malformed (the message names the file and line).
        FileNotFoundError: the raw folder does not exist.
    """
    opts = opts or PrepareOptions()
    raw = Path(raw)
    if not raw.is_dir():
        raise FileNotFoundError(f"raw {dataset.NAME} folder {raw} not found ({LAYOUT_HELP})")
    root = Path(out) if out is not None else default_cache_root()
    name = dataset.NAME
    recipe = opts.recipe or dataset.DEFAULT_RECIPE
    label_order = opts.label_order or dataset.LABEL_ORDERS[0]
    if label_order not in dataset.LABEL_ORDERS:
        raise ValueError(f"{name}: unknown label order {label_order!r}; valid: {list(dataset.LABEL_ORDERS)}")
    if opts.duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"unknown duplicate policy {opts.duplicates!r}; valid: {DUPLICATE_POLICIES}")
    opts = dataclasses.replace(opts, label_order=label_order, recipe=recipe)
    conf = dataset.resolve_settings(recipe, dict(settings or {}), opts, raw)

    required, optional = dataset.split_files(conf)
    files: dict[str, FetchedFile] = {}
    if required or optional:
        local = opts.splits_dir or (raw / dataset.SPLITS_IN_RAW if dataset.SPLITS_IN_RAW is not None else None)
        files = fetch_split_files(name, required + optional, root / name / ".split_files", local_dir=local,
                                  base_url=opts.splits_url, optional=optional, strict=opts.strict_splits, log=log)
    tables = dataset.read_splits({n: f.path for n, f in files.items()}, raw, opts, conf)
    check_parsed_classes(name, tables, opts)
    val_ids, val_source, val_record = validation_split(tables, opts)

    records, dropped = _locate(dataset, raw, tables, conf)
    bad = [d for d in dropped if d.bad]
    check_raw_layout(name, raw, records, bad)
    rows_read = len(records) + len(dropped)
    check_bad(name, bad, rows_read, opts)
    check_classes(name, tables.classes, _labels_by_split(r.sample for r in records))

    specs = tuple(dataset.arrays(conf, tables.info))
    options = {"format": CACHE_VERSION, "dataset": name, "recipe": recipe, **dataset.cache_options(conf, specs),
               "label_order": label_order, "duplicates": opts.duplicates, "val": val_record,
               "split_files": {n: f.sha256 for n, f in sorted(files.items())}}
    digest = options_hash(options)
    final = root / name / f"{recipe}-{digest}"
    partial = final.with_name(final.name + ".partial")
    fingerprint = media_fingerprint(raw, records)
    if opts.force:
        shutil.rmtree(final, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)
    if (final / "DONE").is_file():
        manifest = read_manifest(final)
        if manifest["raw_fingerprint"] != fingerprint:
            raise StaleCacheError(f"{final} was built from different raw media (files changed since, or the cache "
                                  f"predates fingerprinting the files inside frame folders); pass --force to rebuild "
                                  f"it")
        check_reused_drops(final, manifest, opts)
        log(f"{final}: up to date ({manifest_summary(manifest)})")
        return final

    if (partial / "DONE").is_file() and read_manifest(partial).get("raw_fingerprint") == fingerprint:
        # Killed between writing DONE and the rename: the build is complete, only the rename is missing.
        return publish_cache(partial, final, log)

    size = max(int(opts.shard_size or dataset.SHARD_SIZE), 1)
    # The shard size decides which samples each finished shard holds, so a resume with another one must start over.
    plan = {"options": options, "raw_fingerprint": fingerprint, "skip_bad": opts.skip_bad, "shard_size": size,
            "records": [[r.sample.split, r.sample.id, sorted(r.media.items())] for r in records]}
    plan_text = json.dumps(plan, sort_keys=True, default=str)
    if partial.exists() and (not (partial / "plan.json").is_file()
                             or (partial / "plan.json").read_text(encoding="utf-8") != plan_text):
        log(f"{partial}: discarding an unfinished build made with other inputs")
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "plan.json").write_text(plan_text, encoding="utf-8")

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

    build = Build(recipe, conf, specs, digest, files, fingerprint, val_source, val_record)
    _finalize(dataset, partial, raw, jobs, tables, dropped, rows_read, val_ids, opts, build)
    return publish_cache(partial, final, log)


def publish_cache(partial: Path, final: Path, log: Callable[[str], None]) -> Path:
    """Remove the build's scratch files and rename the finished ``.partial`` folder to its final name."""
    shutil.rmtree(partial / "shards", ignore_errors=True)
    (partial / "plan.json").unlink(missing_ok=True)
    partial.rename(final)
    manifest = read_manifest(final)
    log(f"{final}: built ({manifest_summary(manifest)})")
    return final


def manifest_summary(manifest: Mapping[str, Any]) -> str:
    splits = ", ".join(f"{k} {v['n']}" for k, v in manifest["counts"]["splits"].items())
    drops = manifest["dropped"]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(drops["by_reason"].items()))
    notes = "".join(f"; {name} {_count_text(value)}" for name, value in manifest["counts"].items()
                    if name not in GENERIC_COUNTS and value)
    return f"{manifest['counts']['total']} samples: {splits}; dropped {drops['total']}" + \
        (f" ({reasons})" if reasons else "") + notes


def _count_text(value: Any) -> str:
    return "(" + ", ".join(f"{k}: {v}" for k, v in value.items()) + ")" if isinstance(value, Mapping) else str(value)


def _write_arrays(partial: Path, jobs: Sequence[ShardJob], specs: Sequence[ArraySpec],
                  kept: Sequence[tuple[Record, dict]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Concatenate the shards' arrays into ``<name>.npy`` (and ragged offsets); returns (starts, counts) per ragged
    array."""
    offsets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for spec in specs:
        total = len(kept)
        if spec.ragged:
            counts = np.asarray([entry["counts"][spec.name] for _, entry in kept], dtype=np.int64)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            offsets[spec.name] = (starts, counts)
            np.save(partial / f"{spec.name}_start.npy", starts)
            np.save(partial / f"{spec.name}_count.npy", counts)
            total = int(counts.sum())
        target = np.lib.format.open_memmap(partial / f"{spec.name}.npy", mode="w+", dtype=spec.dtype,
                                           shape=(total, *spec.shape))
        pos = 0
        for job in jobs:
            part = np.load(job.folder / f"{spec.name}.npy", mmap_mode="r")
            target[pos:pos + len(part)] = part
            pos += len(part)
        target.flush()
        del target
    return offsets


def _shard_meta(job: ShardJob) -> list[dict[str, Any]]:
    """A finished shard's per-sample results, checked to be this shard's samples in order: records and results are
    paired by position, so a shard made for other samples would give rows another clip's arrays and labels."""
    path = job.folder / "meta.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    found, wanted = [entry.get("pos") for entry in meta], [record.pos for record in job.records]
    if found != wanted:
        raise PrepareError(f"{path}: holds the results of samples {_span(found)}, but this build's shard "
                           f"{job.folder.name} is samples {_span(wanted)}; it was made by another build. Pass --force "
                           f"to rebuild from scratch")
    return meta


def _span(positions: Sequence[Any]) -> str:
    return f"{positions[0]}..{positions[-1]} ({len(positions)})" if positions else "none"


def _finalize(dataset: type[PreparedDataset], partial: Path, raw: Path, jobs: Sequence[ShardJob],
              tables: SplitTables, dropped: list[Dropped], rows_read: int, val_ids: set[str] | None,
              opts: PrepareOptions, build: Build) -> None:
    """Concatenate the shards into the final arrays and write index, splits, drops, manifest and DONE."""
    name = dataset.NAME
    metas = [_shard_meta(job) for job in jobs]
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

    offsets = _write_arrays(partial, jobs, build.specs, kept)
    np.save(partial / "labels.npy", labels)
    first_ragged = next((s.name for s in build.specs if s.ragged), None)
    index_rows = []
    for i, (record, entry) in enumerate(kept):
        start, count = (offsets[first_ragged][0][i], offsets[first_ragged][1][i]) if first_ragged else (0, 0)
        index_rows.append({"row": i, "id": record.sample.id, "split": record.sample.split,
                           "label": record.sample.label, "label_name": record.sample.label_name,
                           "speaker": record.sample.speaker, "duration_s": entry["facts"].get("duration_s", math.nan),
                           "frame_start": int(start), "frame_count": int(count),
                           "audio_path": record.media.get("audio", ""),
                           "visual_path": next((v for k, v in record.media.items() if k != "audio"), "")})
    write_index(partial / "index.csv", index_rows)

    splits, empty = write_split_records(partial, ids, split_of, tables.splits, val_ids, build.files.values(),
                                        dropped)
    own = dataset.manifest_entries(build.settings, [entry["facts"] for _, entry in kept],
                                   {s.name: int(offsets[s.name][1].sum()) if s.ragged else len(kept)
                                    for s in build.specs})
    manifest = {
        **own, "format": CACHE_VERSION, "dataset": name, "recipe": build.recipe,
        "recipe_doc": dataset.RECIPES[build.recipe].doc, "options_hash": build.digest,
        "arrays": [s.record() for s in build.specs],
        "raw_root": str(raw.resolve()), "raw_fingerprint": build.fingerprint,
        "classes": list(classes), "label_order": opts.label_order,
        "split_files": {n: fetched.record() for n, fetched in sorted(build.files.items())},
        "val_source": build.val_source, "val": build.val_record,
        "policies": {"duplicates": opts.duplicates, "skip_bad": opts.skip_bad,
                     "max_drop_fraction": opts.max_drop_fraction, **own.get("policies", {})},
        "counts": {"total": len(kept), "rows_read": rows_read, **own.get("counts", {}),
                   **({"ids_in_two_splits": ids_in_two_splits(ids, split_of)} if dataset.IDS_NAME_SAMPLES else {}),
                   "splits": {s: {"n": int(len(r)), "per_class": dict(zip(classes, np.bincount(
                       labels[r], minlength=len(classes)).tolist()))} for s, r in splits.items()}},
        "empty_splits": empty,
        "dropped": {"total": len(dropped), "by_reason": dict(Counter(d.kind for d in dropped)),
                    "bad": sum(d.bad for d in dropped)},
        "versions": library_versions(), "git_commit": git_commit(),
        "deviations": dataset.deviations(build.settings), "info": tables.info,
    }
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n",
                                           encoding="utf-8")
    (partial / "DONE").touch()


BASE_SPLIT_ORDER = ("train", "val", "test")


def ids_in_two_splits(ids: Sequence[str], split_of: np.ndarray) -> dict[str, int]:
    """``{"train&test": k}``: kept ids listed in two base splits, pairs with none left out. Such a sample is scored on
    after training on it, so the count goes into the manifest and the build line: AVE publishes a few, but in a custom
    split file it is a mistake that inflates test accuracy without a word."""
    members: dict[str, set[str]] = {}
    for sample_id, split in zip(ids, split_of):
        members.setdefault(str(split), set()).add(sample_id)
    # train, val, test first, as the datasets name pairs themselves (AVE's published-file counts: "train&test")
    names = sorted(members, key=lambda s: (BASE_SPLIT_ORDER.index(s) if s in BASE_SPLIT_ORDER else 3, s))
    pairs = {f"{a}&{b}": len(members[a] & members[b]) for i, a in enumerate(names) for b in names[i + 1:]}
    return {pair: n for pair, n in pairs.items() if n}


def write_split_records(partial: Path, ids: Sequence[str], split_of: np.ndarray, split_names: Iterable[str],
                        val_ids: set[str] | None, split_files: Iterable[FetchedFile], dropped: Sequence[Dropped]
                        ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Write the split row lists (``splits/<name>.npy`` + ``.txt``; ``val`` and ``train_noval`` carved from train by
    ``val_ids``), copies of the split files, and ``dropped.csv``. Returns the written row lists and the names of the
    splits left out because they came out empty."""
    rows = np.arange(len(ids), dtype=np.int64)
    splits = {s: rows[split_of == s] for s in split_names}
    if val_ids is not None:
        in_val = np.asarray([sid in val_ids for sid in ids], dtype=bool) & (split_of == "train")
        splits["val"] = rows[in_val]
        splits["train_noval"] = rows[(split_of == "train") & ~in_val]
    else:
        splits["train_noval"] = splits["train"]
    empty = sorted(s for s, r in splits.items() if not len(r))
    splits = {s: r for s, r in splits.items() if len(r)}
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
    return splits, empty
