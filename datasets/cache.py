"""The prepared cache (docs/datasets/cache.md): its on-disk layout and opening it. ``datasets.prepare`` writes it.

One folder per (dataset, recipe, options hash), the same layout for every dataset; the dataset declares its arrays
(``ArraySpec``: audio spectrograms and frames for the audio-visual datasets, token ids and images, feature sequences
or clips for the others)::

    <cache_dir>/<dataset>/<recipe>-<hash8>/
      index.csv                 one row per kept sample (columns ``INDEX_COLUMNS``; ``frame_start``/``frame_count``
                                locate the first ragged array, ``duration_s`` is NaN unless the dataset measures it)
      labels.npy                int64 [N]
      <array>.npy               one per ArraySpec: [N, *shape], or [total, *shape] for ragged arrays, which add
      <array>_start.npy, <array>_count.npy   int64 [N]: sample i owns rows start[i] : start[i] + count[i]
      splits/<name>.npy (+ .txt)  row indices (train, test, val, train_noval) and their ids; a split that came out
                                empty is not written (the manifest lists it under ``empty_splits``)
      split_files/              the verified split/annotation files that built it
      dropped.csv               id, split, reason, detail, where
      manifest.json             recipe, settings, arrays, versions, checksums, label map, counts, drops, policies
      DONE                      written last

Arrays are plain ``.npy`` read with ``np.load(mmap_mode="r")``: nothing is unpickled and a batch is one fancy index
per array.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from core.errors import InputError
from datasets.ram_copies import open_mapped

CACHE_VERSION = 1
INDEX_COLUMNS = ("row", "id", "split", "label", "label_name", "speaker", "duration_s", "frame_start", "frame_count",
                 "audio_path", "visual_path")
TRAIN_SPLITS = ("clean", "full")


class CacheError(InputError, RuntimeError):
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


@dataclass
class Cache:
    """An opened cache: memory-mapped arrays, ragged offsets, index, splits and manifest."""

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

    def __len__(self) -> int:
        return len(self.labels)


def array_specs(manifest: Mapping[str, Any]) -> tuple[ArraySpec, ...]:
    """The arrays a cache holds, as its manifest lists them. Audio-visual caches written before both cache kinds
    shared one writer list none: theirs are the spectrograms and the ragged 1 fps frames, with offsets in
    ``index.csv``."""
    if "arrays" in manifest:
        return tuple(ArraySpec(a["name"], a["dtype"], tuple(a["shape"]), a["ragged"]) for a in manifest["arrays"])
    return (ArraySpec("audio", "float16", tuple(manifest["audio_shape"])),
            ArraySpec("frames", "uint8", (*manifest["visual"]["frame_size"], 3), ragged=True))


def open_cache(path: Path | str) -> Cache:
    """Open a finished cache folder: every array memory-mapped, index, splits and manifest; nothing unpickled."""
    path = Path(path)
    if not (path / "DONE").is_file():
        hint = " (an interrupted prepare resumes when run again)" if path.with_name(path.name + ".partial").exists() \
            else ""
        raise CacheError(f"{path} is not a finished cache: no DONE file{hint}")
    manifest = read_manifest(path)
    if manifest.get("format") != CACHE_VERSION:
        raise CacheError(f"{path}: cache format {manifest.get('format')!r}, this code reads {CACHE_VERSION}; "
                         f"prepare again with --force")
    index = read_cache_file(path / "index.csv", read_index)
    arrays, starts, counts = {}, {}, {}
    # A manifest that parses but lacks the keys naming its arrays is as damaged as one that does not parse.
    for spec in read_cache_file(path / "manifest.json", lambda _: array_specs(manifest)):
        arrays[spec.name] = read_cache_file(path / f"{spec.name}.npy", open_mapped)
        if spec.ragged:
            start = path / f"{spec.name}_start.npy"
            starts[spec.name], counts[spec.name] = \
                (read_cache_file(start, np.load), read_cache_file(path / f"{spec.name}_count.npy", np.load)) \
                if start.is_file() else (index["frame_start"], index["frame_count"])
    splits = {p.stem: read_cache_file(p, np.load) for p in sorted((path / "splits").glob("*.npy"))}
    cache = Cache(path, manifest, index, read_cache_file(path / "labels.npy", np.load), arrays, starts, counts,
                  splits)
    check_cache_rows(cache)
    return cache


def _mismatch(path: Path, problem: str) -> CacheError:
    return CacheError(f"{path}: {problem}; the cache's files come from different builds or one was cut short, so "
                      f"prepare the cache again with --force")


def check_cache_rows(cache: Cache) -> None:
    """Every file of ``cache`` describes the same N samples. Each file can parse on its own and still disagree with
    the others (an ``index.csv`` cut at a line end, a ``labels.npy`` copied from another build): served, such a cache
    trains on wrong labels without a word, or fails with a bare IndexError in the middle of an epoch."""
    n, path = len(cache.labels), cache.path
    if len(cache.index["label"]) != n:
        raise _mismatch(path, f"index.csv has {len(cache.index['label'])} rows, labels.npy has {n}")
    wrong = np.flatnonzero(cache.index["label"] != cache.labels)
    if len(wrong):
        row = int(wrong[0])
        raise _mismatch(path / "labels.npy", f"row {row} ({cache.index['id'][row]}) has label {cache.labels[row]}, "
                                             f"index.csv says {cache.index['label'][row]} ({len(wrong)} row(s) differ)")
    for name, array in cache.arrays.items():
        if name in cache.starts:
            start, count = cache.starts[name], cache.counts[name]
            if len(start) != n or len(count) != n:
                raise _mismatch(path / f"{name}_start.npy", f"offsets for {len(start)}/{len(count)} samples, not {n}")
            if n and int((start + count).max()) > len(array):
                raise _mismatch(path / f"{name}.npy", f"{len(array)} rows, but the offsets reach "
                                                      f"{int((start + count).max())}")
        elif len(array) != n:
            raise _mismatch(path / f"{name}.npy", f"{len(array)} rows, but labels.npy has {n}")
    for name, rows in cache.splits.items():
        outside = rows[(rows < 0) | (rows >= n)]
        if len(outside):
            # name the offending index: a negative one leaves the maximum in range
            raise _mismatch(path / "splits" / f"{name}.npy", f"row index {int(outside[0])} is outside 0..{n - 1}")


def read_manifest(folder: Path) -> dict[str, Any]:
    """A cache folder's ``manifest.json``."""
    return read_cache_file(Path(folder) / "manifest.json", lambda f: json.loads(f.read_text(encoding="utf-8")))


def read_cache_file(path: Path, read: Callable[[Path], Any]) -> Any:
    """``read(path)``; a cache file that is missing, cut short or unparsable raises ``CacheError`` naming it (numpy's
    and json's own errors name neither the file nor the remedy)."""
    try:
        return read(path)
    except (OSError, EOFError, ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CacheError(f"{path} is damaged ({type(err).__name__}: {err}); prepare the cache again with "
                         f"--force") from None


def _served(cache: Cache, name: str) -> np.ndarray:
    """The rows of split ``name``, which the loaders cannot do without."""
    if name in cache.splits:
        return cache.splits[name]
    why = ("it came out empty when the cache was prepared; check the split files it was built from"
           if name in cache.manifest.get("empty_splits", ()) else "the file is missing; prepare the cache again with "
           "--force")
    raise CacheError(f"{cache.path / 'splits' / f'{name}.npy'}: no {name!r} split to serve ({why})")


def served_splits(cache: Cache, train_split: str) -> dict[str, np.ndarray]:
    """train/val/test rows: ``clean`` trains on train minus val; ``full`` on all of train, and a validation split
    inside train is then left out. A missing or empty validation split is left out too, so no loader serves it."""
    splits = {"train": _served(cache, "train_noval"), "test": _served(cache, "test")}
    if train_split == "full":
        splits["train"] = _served(cache, "train")
    val = cache.splits.get("val")
    if val is not None and len(val) and not (train_split == "full" and np.isin(val, splits["train"]).any()):
        splits = {"train": splits["train"], "val": val, "test": splits["test"]}
    return splits


def first_per_class(rows: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` of ``rows`` of each class (``labels[row]``), in their order: the same subset every run."""
    classes = labels[rows]
    order = np.argsort(classes, kind="stable")
    ordered = classes[order]
    rank = np.arange(len(order)) - np.searchsorted(ordered, ordered, side="left")
    return rows[np.sort(order[rank < n])]
