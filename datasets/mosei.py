"""``mosei``: CMU-MOSEI sentiment as binary classification from audio, visual and text feature sequences
(docs/datasets/mosei.md), as BalanceBenchmark reads it.

Raw data: the MulT-style pickle (GitHub: GeWu-Lab/BalanceBenchmark, ``balancemm/datasets/Mosei_dataset.py``)::

    mosei_senti_data_noalign.pkl   (recipe ``unaligned``, BalanceBenchmark's ``if_align: false``), or
    mosei_senti_data.pkl           (recipe ``aligned``)
      {"train" | "valid" | "test": {"vision": (N, Lv, 35), "audio": (N, La, 74), "text": (N, Lt, 300),
                                    "labels": (N, 1, 1) sentiment in [-3, 3], "id": (N, 3) (optional)}}

The pickle is read with an unpickler that only admits NumPy arrays and plain containers, so a tampered file cannot
run code. Splits are the published ``train``/``valid``/``test`` (MulT: 16,326 / 1,871 / 4,659 [R]); ``valid`` is the
validation split. Sample ids are ``<split>-<position>``; the ``speaker`` column holds the video id when the pickle
has ``id``. Features are cached as ``float16`` (``feature_dtype``) after BalanceBenchmark's one cleaning step, audio
``-inf`` -> 0; any other non-finite value, or a value beyond the storage dtype's range, makes the sample a bad item.

Labels (``acc2``): ``zero_positive`` (default, BalanceBenchmark ``acc2``: y < 0 -> 0, else 1, so zero sentiment
counts as positive) or ``exclude_zero`` (the conventional binary accuracy [R]: y == 0 samples are dropped by policy,
y > 0 -> 1). The choice is in the manifest. Modalities are served in the order (audio, visual, text) as
``sequence`` (L, D) float tensors.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from core.data import Augment, Gather, ModalitySpec, TaskSpec, identity_augment
from core.hparams import HParam, HParams
from datasets.cache import ArraySpec, Cache
from datasets.media import MediaError
from datasets.prepared import PreparedDataset, Recipe, Record, cache_hparams
from datasets.registry import register_dataset
from datasets.sources import sha256_file
from datasets.splits import SplitParseError, SplitRow
from datasets.tables import Dropped, PrepareOptions, Sample, SplitTables

SPLITS = {"train": "train", "valid": "val", "test": "test"}
MODALITIES = (("audio", "audio"), ("visual", "vision"), ("text", "text"))  # (served name, pickle key)
ACC2_POLICIES = ("zero_positive", "exclude_zero")
PICKLE_FILES = {"unaligned": "mosei_senti_data_noalign.pkl", "aligned": "mosei_senti_data.pkl"}
# (module, name) pairs a MulT/MOSEI pickle legitimately references: NumPy array reconstruction and plain containers.
ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"), ("builtins", "bytearray"), ("_codecs", "encode"),
}


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Refuses every global outside ``ALLOWED_GLOBALS``."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a MOSEI feature pickle holds only NumPy "
                                         f"arrays and containers")
        return super().find_class(module, name)


def read_feature_pickle(path: str) -> dict[str, dict[str, np.ndarray]]:
    """The MOSEI pickle as ``{split: {key: array}}``, validated; ``SplitParseError`` names the file and key.

    Read once per process and file version (the cache key includes size and mtime).
    """
    st = Path(path).stat()
    return _read_feature_pickle(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _read_feature_pickle(path: str, size: int, mtime_ns: int) -> dict[str, dict[str, np.ndarray]]:
    try:
        with open(path, "rb") as f:
            doc = ArraysOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise SplitParseError(f"{path}: not a readable MOSEI feature pickle ({type(err).__name__}: {err})") from err
    if not isinstance(doc, dict):
        raise SplitParseError(f"{path}: expected a dict with keys {list(SPLITS)}, got {type(doc).__name__}")
    missing = [s for s in SPLITS if s not in doc]
    if missing:
        raise SplitParseError(f"{path}: missing split(s) {missing}; it has {sorted(doc)}")
    for split in SPLITS:
        part = doc[split]
        if not isinstance(part, dict):
            raise SplitParseError(f"{path}: split {split!r} should be a dict of arrays, got {type(part).__name__}")
        keys = [k for _, k in MODALITIES] + ["labels"]
        absent = [k for k in keys if k not in part]
        if absent:
            raise SplitParseError(f"{path}: split {split!r} lacks {absent}; it has {sorted(part)}")
        keys += ["id"] if "id" in part else []
        sizes = {k: _sample_count(path, split, k, part[k]) for k in keys}
        if len(set(sizes.values())) != 1:
            raise SplitParseError(f"{path}: split {split!r} has different sample counts per key {sizes}")
        for _, key in MODALITIES:
            features = _array(path, split, key, part[key])
            if features.ndim != 3:
                raise SplitParseError(f"{path}: {split}/{key} should be (N, L, D), got shape {features.shape}")
            # the cache holds one (L, D) per modality, read from the train split (checked first)
            train_shape = np.shape(doc["train"][key])[1:]
            if features.shape[1:] != train_shape:
                raise SplitParseError(f"{path}: {split}/{key} has samples of shape {features.shape[1:]}, "
                                      f"train/{key} {train_shape}")
        labels = _array(path, split, "labels", part["labels"])
        # one sentiment score per sample (the release's (N, 1, 1)): a wider label array would be read from its
        # first column only
        if labels.dtype.kind not in "biuf" or labels.size != len(labels):
            raise SplitParseError(f"{path}: {split}/labels should hold one number per sample, got dtype "
                                  f"{labels.dtype} and shape {labels.shape}")
    return doc


def _sample_count(path: str, split: str, key: str, value: Any) -> int:
    try:
        return len(value)
    except TypeError:
        raise SplitParseError(f"{path}: {split}/{key} should hold one entry per sample, got "
                              f"{type(value).__name__}") from None


def _array(path: str, split: str, key: str, value: Any) -> np.ndarray:
    try:
        return np.asarray(value)
    except ValueError as err:  # ragged lists of arrays
        raise SplitParseError(f"{path}: {split}/{key} is not one array ({err})") from None


def video_id(part: Mapping[str, Any], i: int) -> str:
    if "id" not in part:
        return ""
    value = np.asarray(part["id"][i]).reshape(-1)
    first = value[0] if len(value) else ""
    return first.decode("utf-8", "replace") if isinstance(first, bytes) else str(first)


@register_dataset
class Mosei(PreparedDataset):
    NAME = "mosei"
    DESCRIPTION = "CMU-MOSEI acc2: audio/visual/text feature sequences, from `augbench prepare` (MulT pickle)"
    MODALITY_NAMES = tuple(name for name, _ in MODALITIES)
    CLASSES = ("negative", "positive")
    RECIPES = {
        "unaligned": Recipe("BalanceBenchmark Mosei_dataset.py with if_align false: mosei_senti_data_noalign.pkl "
                            "(MulT: text 50, audio/vision 500 steps [R])", {"aligned": False}),
        "aligned": Recipe("mosei_senti_data.pkl (word-aligned features)", {"aligned": True}),
    }
    DEFAULT_RECIPE = "unaligned"
    SHARD_SIZE = 1024
    # ids are "<split>-<row>" positions in the pickle: they never repeat between splits, so nothing to count
    IDS_NAME_SAMPLES = False
    SETTINGS = (
        HParam("aligned", False, "Read mosei_senti_data.pkl (aligned) instead of mosei_senti_data_noalign.pkl."),
        HParam("acc2", "zero_positive", "Binary labels: 'zero_positive' = BalanceBenchmark acc2 (y < 0 -> 0, else 1; "
                                        "zeros are positive); 'exclude_zero' = drop y == 0, y > 0 -> 1 [R].",
               choices=ACC2_POLICIES),
        HParam("feature_dtype", "float16", "Storage dtype of the feature sequences (docs/datasets/cache.md#layout: "
                                           "float16).",
               choices=("float16", "float32")),
    )
    HPARAMS = cache_hparams(recipes=("unaligned", "aligned"), recipe="unaligned",
                            recipe_doc="Prepared preset: 'unaligned' (BalanceBenchmark) or 'aligned'.")

    @classmethod
    def pickle_path(cls, raw: Path, settings: HParams) -> Path:
        path = raw / PICKLE_FILES["aligned" if settings.aligned else "unaligned"]
        if not path.is_file():
            raise SplitParseError(f"{path} not found: the MOSEI feature pickle (MulT release) must be in the raw "
                                  f"folder")
        return path

    @classmethod
    def read_splits(cls, files: Mapping[str, Path], raw: Path, opts: PrepareOptions, settings: HParams
                    ) -> SplitTables:
        path = cls.pickle_path(raw, settings)
        doc = read_feature_pickle(str(path))
        tables = SplitTables(cls.CLASSES)
        zeros = 0
        for key, split in SPLITS.items():
            part = doc[key]
            y = np.asarray(part["labels"], dtype=np.float64).reshape(-1)  # one score per sample (checked)
            samples = tables.splits.setdefault(split, [])
            for i, value in enumerate(y):
                sid, where = f"{split}-{i:05d}", f"{path.name}:{key}[{i}]"
                if not np.isfinite(value):
                    tables.dropped.append(Dropped(sid, split, "bad label", f"label {value} is not finite", where,
                                                  bad=True))
                    continue
                if value == 0 and settings.acc2 == "exclude_zero":
                    zeros += 1
                    tables.dropped.append(Dropped(sid, split, "zero sentiment (acc2 exclude_zero)",
                                                  "y == 0 is neither class under exclude_zero", where, bad=False))
                    continue
                label = int(value >= 0) if settings.acc2 == "zero_positive" else int(value > 0)
                samples.append(Sample(sid, split, label, cls.CLASSES[label], where, video_id(part, i),
                                      SplitRow(sid, str(value), i, (key, str(i)))))
        tables.val_source = "published valid split of the pickle"
        shapes = {name: list(np.shape(doc["train"][key])[1:]) for name, key in MODALITIES}
        # The pickle is the split file too; it is not pinned, so the manifest records which one was read.
        tables.info = {"acc2": settings.acc2, "zero_labels_dropped": zeros, "feature_shapes": shapes,
                       "pickle": path.name, "pickle_sha256": sha256_file(path)}
        return tables

    @classmethod
    def locate(cls, raw: Path, sample: Sample, settings: HParams) -> tuple[dict[str, str], dict[str, Any]]:
        return ({"features": cls.pickle_path(raw, settings).relative_to(raw).as_posix()},
                {"key": sample.row.fields[0], "index": int(sample.row.fields[1])})

    @classmethod
    def arrays(cls, settings: HParams, info: Mapping[str, Any]) -> tuple[ArraySpec, ...]:
        return tuple(ArraySpec(name, settings.feature_dtype, tuple(info["feature_shapes"][name]))
                     for name, _ in MODALITIES)

    @classmethod
    def load(cls, raw: Path, record: Record, settings: HParams) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        path = raw / record.media["features"]
        part = read_feature_pickle(str(path))[record.extra["key"]]
        i = record.extra["index"]
        limit = np.finfo(settings.feature_dtype).max
        out = {}
        for name, key in MODALITIES:
            x = np.array(part[key][i], dtype=np.float32)
            if name == "audio":
                x[x == -np.inf] = 0.0  # BalanceBenchmark: self.audio[self.audio == -np.inf] = 0
            if not np.isfinite(x).all():
                raise MediaError(path, "non-finite features", f"{record.extra['key']}/{key}[{i}] holds NaN or inf")
            if np.abs(x).max(initial=0.0) > limit:
                raise MediaError(path, "feature overflow", f"{record.extra['key']}/{key}[{i}] exceeds "
                                 f"{settings.feature_dtype}; prepare with feature_dtype=float32")
            out[name] = x.astype(settings.feature_dtype)
        return out, {}

    @classmethod
    def serve(cls, cache: Cache, hp: HParams) -> tuple[TaskSpec, Gather, Augment]:
        arrays = {name: cache.arrays[name] for name, _ in MODALITIES}
        task = TaskSpec(cls.NAME, len(cache.classes),
                        tuple(ModalitySpec(name, "sequence", tuple(arrays[name].shape[1:])) for name, _ in MODALITIES),
                        cache.classes)

        def gather(rows: np.ndarray) -> dict[str, torch.Tensor]:
            return {name: torch.from_numpy(np.ascontiguousarray(a[rows]).astype(np.float32))
                    for name, a in arrays.items()}

        return task, gather, identity_augment
