"""``PreparedDataset``: the base of every dataset served from a cache that ``augbench prepare`` built.

A subclass declares its annotation files, recipes and prepare-time settings, and supplies the steps that differ per
dataset: ``read_splits`` (parse the files into samples; bad rows are ``Dropped`` items), ``locate`` (a sample's media;
``MediaError`` when missing), ``arrays`` and ``load`` (one sample's arrays, decoded and resized once, at prepare
time), and ``serve`` (task spec, gather and per-batch augmentation). ``datasets.prepare.prepare`` runs the rest (split
files, validation split, bad-item accounting, shards, resume, manifest) the same way for all of them, and ``build``
opens the cache and serves it. The audio-visual datasets share one subclass, ``datasets.audio_visual.AVCacheDataset``.

A **recipe** (``data.recipe``, ``augbench prepare --recipe``) is a dataset's named preset of prepare-time settings,
with what it reproduces; a cache folder is ``<recipe>-<hash8>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from core.data import Augment, Gather, TaskSpec
from core.hparams import HParam, HParams, resolve
from datasets.base import DataBundle
from datasets.cache import (
    TRAIN_SPLITS,
    ArraySpec,
    Cache,
    CacheError,
    default_cache_root,
    find_caches,
    first_per_class,
    open_cache,
    read_manifest,
    served_splits,
)
from datasets.registry import Dataset
from datasets.tables import PrepareOptions, Sample, SplitTables


@dataclass(frozen=True)
class Recipe:
    """A dataset's named preset of prepare-time settings (``data.recipe``), with what it reproduces."""

    doc: str
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Record:
    """A located sample: media paths relative to the raw root (role -> path) and what ``load`` needs besides."""

    pos: int
    sample: Sample
    media: Mapping[str, str]
    extra: Mapping[str, Any] = field(default_factory=dict)


def cache_hparams(*, recipes: Sequence[str], recipe: str, recipe_doc: str,
                  serving: tuple[HParam, ...] = ()) -> tuple[HParam, ...]:
    """The ``data.*`` knobs every prepared dataset has (where its cache is, which training split to use), with the
    dataset's own ``serving`` knobs after ``recipe``."""
    return (
        HParam("cache_dir", "", "Cache root: the cache is <cache_dir>/<dataset>/<recipe>-<hash8>/ as written by "
                                "`augbench prepare`. Empty = $AUG_BENCH_CACHE, else ./cache."),
        HParam("cache", "", "Explicit cache folder; overrides cache_dir + recipe (needed when several caches of the "
                            "same recipe exist, e.g. built with different options). The cache's own recipe is used "
                            "(its manifest.json names it), whatever data.recipe says; tables compare the cache "
                            "options of a row's runs."),
        HParam("recipe", recipe, recipe_doc, choices=tuple(recipes)),
        *serving,
        HParam("train_split", "clean", "'clean': train on train minus the validation split and select on val "
                                       "(docs/methods/README.md#protocols, clean protocol); 'full': train on the whole "
                                       "published train list "
                                       "(protocol A); a validation split inside train is then left out.",
               choices=TRAIN_SPLITS),
        HParam("subset", 0, "Serve at most this many samples of each class in every split (the first ones in the "
                            "cache's order; 0 = all): a small real-data subset for smoke runs and CI, whose accuracies "
                            "are not results. The project's choice, no paper's. Added after runs were recorded "
                            "without it: a run at 0 does not record it.", low=0, absent_value=0),
    )


class PreparedDataset(Dataset):
    """Base of the cache-backed datasets; see the module docstring for what a subclass supplies.

    Attributes:
        CLASSES: the declared label map in index order, if the dataset has a fixed one.
        RECIPES: recipe name -> ``Recipe``.
        DEFAULT_RECIPE: the recipe ``prepare`` builds when none is named.
        SETTINGS: the prepare-time knobs (declared once, with their sources); ``--option KEY=VALUE`` sets them.
        SPLIT_FILES: split/annotation files that must exist.
        OPTIONAL_SPLIT_FILES: files read when present (published validation lists).
        SPLITS_IN_RAW: folder under the raw root holding those files ("" = the raw root itself); ``None`` = download
            the files pinned in ``datasets.sources`` unless ``--splits`` is given.
        LABEL_ORDERS: accepted ``--label-order`` values, the first being the default.
        SHARD_SIZE: samples per resumable shard (small for datasets with large samples).
        IDS_NAME_SAMPLES: whether an id names the same sample in every split file (a clip or image name), so that an
            id listed in two splits is one sample trained and scored on (counted as ``ids_in_two_splits``); False
            where ids are each file's own row numbers.
    """

    CLASSES: ClassVar[tuple[str, ...]] = ()
    RECIPES: ClassVar[Mapping[str, Recipe]] = {}
    DEFAULT_RECIPE: ClassVar[str] = ""
    SETTINGS: ClassVar[tuple[HParam, ...]] = ()
    SPLIT_FILES: ClassVar[tuple[str, ...]] = ()
    OPTIONAL_SPLIT_FILES: ClassVar[tuple[str, ...]] = ()
    SPLITS_IN_RAW: ClassVar[str | None] = ""
    LABEL_ORDERS: ClassVar[tuple[str, ...]] = ("declared",)
    SHARD_SIZE: ClassVar[int] = 64
    IDS_NAME_SAMPLES: ClassVar[bool] = True

    # --- prepare: what a subclass supplies ---------------------------------------------------------------------------
    @classmethod
    def resolve_settings(cls, recipe: str, overrides: Mapping[str, Any], opts: PrepareOptions, raw: Path) -> HParams:
        """The prepare-time settings of ``recipe`` with ``overrides`` (``--option``); they go into the cache hash."""
        if recipe not in cls.RECIPES:
            raise ValueError(f"{cls.NAME} has no recipe {recipe!r}; valid: {sorted(cls.RECIPES)}")
        return resolve(f"{cls.NAME} prepare", cls.SETTINGS, None, {**cls.RECIPES[recipe].settings, **overrides})

    @classmethod
    def split_files(cls, settings: HParams) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(required, optional) split/annotation file names; by default the class constants."""
        return cls.SPLIT_FILES, cls.OPTIONAL_SPLIT_FILES

    @classmethod
    def read_splits(cls, files: Mapping[str, Path], raw: Path, opts: PrepareOptions, settings: HParams
                    ) -> SplitTables:
        """Parse the verified files into samples per base split (``train``, ``test``, optionally ``val``)."""
        raise NotImplementedError

    @classmethod
    def locate(cls, raw: Path, sample: Sample, settings: HParams) -> tuple[dict[str, str], dict[str, Any]]:
        """(media role -> path relative to ``raw``, extras for ``load``); ``MediaError`` when media are missing."""
        raise NotImplementedError

    @classmethod
    def arrays(cls, settings: HParams, info: Mapping[str, Any]) -> tuple[ArraySpec, ...]:
        """The cached arrays; ``info`` is ``read_splits``' ``SplitTables.info`` (e.g. feature shapes found there)."""
        raise NotImplementedError

    @classmethod
    def load(cls, raw: Path, record: Record, settings: HParams) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """One sample's arrays (``shape`` for fixed arrays, ``(n, *shape)`` for ragged ones) and facts about it
        (``duration_s`` goes to ``index.csv``; ``manifest_entries`` summarises the rest); ``MediaError`` if bad."""
        raise NotImplementedError

    @classmethod
    def cache_options(cls, settings: HParams, specs: Sequence[ArraySpec]) -> dict[str, Any]:
        """This dataset's part of the options that name the cache (``<recipe>-<hash8>``). The ``layout`` tag only
        keeps the names of caches built before the audio-visual datasets shared this pipeline."""
        return {"layout": "arrays", "settings": settings.as_dict(), "arrays": [s.record() for s in specs]}

    @classmethod
    def manifest_entries(cls, settings: HParams, facts: Sequence[Mapping[str, Any]],
                         totals: Mapping[str, int]) -> dict[str, Any]:
        """This dataset's manifest entries; ``policies`` and ``counts`` are merged into the shared ones. ``facts``
        are ``load``'s per kept sample, ``totals`` the rows of each array."""
        return {"settings": settings.as_dict()}

    @classmethod
    def deviations(cls, settings: HParams) -> list[str]:
        """Declared differences from the published pipelines, for the manifest."""
        return []

    # --- serving -----------------------------------------------------------------------------------------------------
    @classmethod
    def serve(cls, cache: Cache, hp: HParams) -> tuple[TaskSpec, Gather, Augment]:
        raise NotImplementedError

    @classmethod
    def prefetch(cls, hp: HParams) -> int:
        """Batches a background thread prepares ahead (``DataBundle.prefetch``)."""
        return 0

    @classmethod
    def family(cls) -> set[str]:
        """This dataset's name and its ancestors' (a subclass such as AV-Digits reads a cache built as CREMA-D)."""
        return {c.NAME for c in cls.__mro__ if isinstance(c, type) and issubclass(c, PreparedDataset) and c.NAME}

    @classmethod
    def build(cls, hp: HParams) -> DataBundle:
        cache = open_cache(cls.locate_cache(hp))
        manifest = cache.manifest
        if manifest["dataset"] not in cls.family():
            raise CacheError(f"{cache.path} holds dataset {manifest['dataset']!r}, not {cls.NAME!r}")
        task, gather, augment = cls.serve(cache, hp)
        info = {"cache": str(cache.path), "recipe": manifest["recipe"], "counts": manifest["counts"],
                "dropped": manifest["dropped"], "val_source": manifest["val_source"],
                # pinned (the published file) or custom, per split file: what a run says it was compared on
                "split_files": {name: record.get("status", "unknown") if isinstance(record, dict) else "unknown"
                                for name, record in manifest.get("split_files", {}).items()}}
        splits = served_splits(cache, hp.train_split)
        if hp.subset:
            splits = {name: first_per_class(rows, cache.labels, hp.subset) for name, rows in splits.items()}
            info["subset"] = {"per_class": hp.subset, "served": {name: len(rows) for name, rows in splits.items()}}
        return DataBundle(task, cache.labels, splits, gather, augment, info, prefetch=cls.prefetch(hp))

    @classmethod
    def identity(cls, hp: HParams) -> dict[str, str]:
        """The served cache's build: its options hash, the fingerprint of the raw media it was built from and the
        commit that built it. The knobs name a cache folder, not its contents: ``prepare --force`` after the media
        changed, or a cache deleted and built again (an empty ``data.cache`` finds whichever is there), keeps them."""
        manifest = read_manifest(cls.locate_cache(hp))
        return {"cache_options_hash": str(manifest["options_hash"]),
                "raw_fingerprint": str(manifest["raw_fingerprint"]),
                "prepared_at_commit": str(manifest.get("git_commit"))}

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
