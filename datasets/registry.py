"""The dataset registry: one class per dataset, registered with a decorator and listed explicitly below.

A dataset class declares ``NAME``, ``DESCRIPTION`` and its ``data.*`` knobs (``HPARAMS``), and builds a
``DataBundle`` (task spec, splits, batch gathering) from the resolved knobs.
"""

from __future__ import annotations

from typing import ClassVar

from core.hparams import HParam, HParams
from core.listed_modules import import_listed
from datasets.base import DataBundle

DATASET_MODULES = (
    "datasets.synthetic",
    "datasets.cremad",
    "datasets.kinetics_sounds",
    "datasets.ave",
    "datasets.vggsound",
    "datasets.av_digits_cache",
    "datasets.twitter2015",
    "datasets.sarcasm",
    "datasets.food101",
    "datasets.mosei",
    "datasets.nvgesture",
    "datasets.ucf101",
)


class Dataset:
    """Base class for dataset entries (class constants + ``build``)."""

    NAME: ClassVar[str] = ""
    DESCRIPTION: ClassVar[str] = ""
    HPARAMS: ClassVar[tuple[HParam, ...]] = ()

    @classmethod
    def build(cls, hp: HParams) -> DataBundle:
        raise NotImplementedError

    # The modalities every bundle of the dataset serves, in their order (``TaskSpec.modalities``).
    MODALITY_NAMES: ClassVar[tuple[str, ...]] = ("audio", "visual")

    @classmethod
    def modality_names(cls, hp: HParams) -> tuple[str, ...]:
        """The modalities these knobs serve, in order, known before any data is read: a sweep checks each method's
        ``MODALITIES`` and settings against them, and the runner checks the built bundle serves exactly these."""
        return cls.MODALITY_NAMES

    @classmethod
    def modality_count(cls, hp: HParams) -> int:
        return len(cls.modality_names(hp))

    @classmethod
    def identity(cls, hp: HParams) -> dict[str, str]:
        """What makes the data these knobs serve, beyond the knobs themselves: a run records it and is never
        continued or reused on data whose identity differs (``benchmarks.data_identity``). Empty: the knobs alone
        determine the data (generated datasets)."""
        return {}


_DATASETS: dict[str, type[Dataset]] = {}
_loaded = False


class UnknownDatasetError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register_dataset(cls: type[Dataset]) -> type[Dataset]:
    if cls.NAME in _DATASETS and _DATASETS[cls.NAME] is not cls:
        raise ValueError(f"dataset name {cls.NAME!r} registered twice")
    _DATASETS[cls.NAME] = cls
    return cls


def list_datasets() -> dict[str, type[Dataset]]:
    global _loaded
    if not _loaded:
        for module in DATASET_MODULES:
            import_listed(module, "DATASET_MODULES in datasets/registry.py")
        _loaded = True
    return dict(sorted(_DATASETS.items()))


def get_dataset(name: str) -> type[Dataset]:
    datasets = list_datasets()
    if name not in datasets:
        raise UnknownDatasetError(f"unknown dataset {name!r}; valid datasets: {', '.join(datasets)}")
    return datasets[name]
