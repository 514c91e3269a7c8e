"""SMV (sample level) against GitHub GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation: ``code/sample_level.py``
``warmup_epoch``, ``train_epoch`` and ``execute_modulation`` run unmodified on ``code/models/models.py``
``AVClassifier`` wrapped in ``nn.DataParallel`` as ``main`` does, with ``code/datasets/dataloader.py``
``AV_KS_Dataset_sample_level`` doing the resampling.

``main``'s epoch loop is repeated by the harness: a warm-up epoch (``--warmup 1``), then after every epoch
``execute_modulation`` values each training row (eval-mode passes with either modality's features zeroed) and builds
the next epoch's resampled dataset. Its files are redirected: the dataset's list file is served from memory (one
line per row, ``os.path.exists`` true), the contribution ``.npy`` goes to a temporary folder, and ``DataLoader``
returns the dataset itself, whose ``data``/``drop`` lists give the resampled rows and their zeroing codes.

Workaround: ``execute_modulation`` calls ``AV_KS_Dataset_sample_level(mode=..., loader=args.loader,
contribution=...)`` but the class takes no ``loader`` argument (TypeError as released); the harness drops it.

Both sides serve the resampled multiset of (row, code) in one canonical order (sorted), so the batches are the same
(the project's loader shuffles its own, the official ``DataLoader`` shuffles with ``shuffle=True``); the resampled
rows and codes and the mean contributions are compared after each valuation: 8 rows -> 34 -> 30 on this schedule.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from baselines.base import Loaders, StepInfo
from benchmarks.parity.core import (
    Case,
    Checkpoint,
    EpochLoader,
    Snapshot,
    av_batches,
    av_task,
    build_method,
    cpu_patches,
    import_official,
    load_mapped,
    module_snapshot,
    patch,
    quantities,
)
from benchmarks.parity.ogm import official_name
from core.data import BatchLoader

EPOCHS, ROWS, BATCH, WARMUP = 3, 8, 16, 1
LR, NUM_CLASSES = 1e-3, 6


def canonical(rows: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (row, code) multiset sorted by row, then code: the order both sides train in."""
    order = np.lexsort((codes, rows))
    return rows[order], codes[order]


class Data:
    """The fixed training rows (float64 inputs) and their batches for given (row, code) lists."""

    def __init__(self) -> None:
        self.task = av_task("cremad", NUM_CLASSES)
        pool = av_batches(self.task, 1, ROWS, seed=5)[0]
        self.pool = {k: pool[k] for k in ("audio", "visual", "label")}

    def batches(self, rows: np.ndarray, codes: np.ndarray) -> list[dict[str, torch.Tensor]]:
        out = []
        for start in range(0, len(rows), BATCH):
            r = torch.as_tensor(rows[start:start + BATCH])
            b = {k: v[r] for k, v in self.pool.items()}
            b["index"] = r
            b["zero_modality"] = torch.as_tensor(codes[start:start + BATCH])
            out.append(b)
        return out

    def loader(self) -> BatchLoader:
        return BatchLoader(np.arange(ROWS), self.pool["label"].numpy(),
                           lambda rows: {m: self.pool[m][torch.as_tensor(rows)] for m in ("audio", "visual")},
                           batch_size=BATCH, train=True, seed=0)


class Project:
    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        self.data = Data()
        self.method = build_method(case.method, self.data.task, {**case.hparams, **overrides},
                                   epochs=EPOCHS, lr=LR)
        self.loaders = Loaders(self.data.loader(), None, None)
        self.values: dict[str, Any] = {}

    def steps(self) -> Iterator[str]:
        m = self.method
        rows, codes = np.arange(ROWS), np.zeros(ROWS, np.int64)
        for epoch in range(EPOCHS):
            selection = m.select_rows(epoch, self.loaders)
            if selection is not None:
                rows, codes = canonical(selection.rows, selection.extras["zero_modality"])
                diag = m.on_epoch_end(epoch, self.loaders)
                self.values = {"rows": rows, "codes": codes,
                               "contribution": [diag["smv_phi_audio"], diag["smv_phi_visual"]]}
                yield f"e{epoch - 1}.valuation"
            batches = self.data.batches(rows, codes)
            for k, batch in enumerate(batches):
                if epoch < WARMUP:
                    batch = {key: v for key, v in batch.items() if key != "zero_modality"}
                m.update(batch, StepInfo(epoch, k, len(batches), EPOCHS))
                yield f"e{epoch}s{k}"

    def snapshot(self) -> Snapshot:
        return {**module_snapshot(self.method, [self.method.optimizer]), **quantities(self.values)}


class ValuationLoader(list):
    """``main``'s ``train_val_dataloader``: the rows in order, with ``dataset`` (read for its length)."""

    def __init__(self, batches: list, size: int) -> None:
        super().__init__(batches)
        self.dataset = range(size)


def warmup_batch(b: dict) -> tuple[torch.Tensor, ...]:
    """``AV_KS_Dataset`` items: frames (B, 3, T, H, W), spectrogram (B, 1, F, T), label, index."""
    return b["visual"], b["audio"], b["label"], b["index"]


def train_batch(b: dict) -> tuple[torch.Tensor, ...]:
    return (*warmup_batch(b), b["zero_modality"])


@contextlib.contextmanager
def own_datasets_package(folder: Path) -> Iterator[None]:
    """The script imports its ``datasets`` folder (a namespace package), which the project's regular ``datasets``
    package would shadow: for the import, ``datasets`` is that folder."""
    project = sys.modules.pop("datasets", None)
    official = types.ModuleType("datasets")
    official.__path__ = [str(folder)]
    sys.modules["datasets"] = official
    try:
        yield
    finally:
        if project is None:
            sys.modules.pop("datasets", None)
        else:
            sys.modules["datasets"] = project


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        root = root / "code"
        with cpu_patches(("torch.utils.tensorboard", "h5py")), own_datasets_package(root / "datasets"):
            self.script, self.datasets, models = import_official(root, "sample_level", "datasets.dataloader",
                                                                  "models.models")
        self.args = types.SimpleNamespace(n_classes=NUM_CLASSES, warmup=WARMUP, loader=0, batch_size=BATCH)
        self.net = models.AVClassifier(self.args)
        load_mapped(self.net, project.method.state_dict(), official_name)
        self.model = nn.DataParallel(self.net)
        # main: SGD(lr, momentum 0.9, weight_decay 1e-4)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.data = project.data
        self.values: dict[str, Any] = {}

    @contextlib.contextmanager
    def files(self, folder: str) -> Iterator[None]:
        """The dataset's list file from memory, every sample present, ``np.save`` into ``folder``, ``DataLoader``
        handing back the dataset, ``loader=`` dropped (see the notes)."""
        listing = "".join(f"row{i} {int(y)}\n" for i, y in enumerate(self.data.pool["label"]))
        fs = types.SimpleNamespace(path=types.SimpleNamespace(exists=lambda path: True))
        dataset_cls = self.datasets.AV_KS_Dataset_sample_level
        self.args.log_path = folder
        # A module-level ``open`` shadows the builtin for that module only.
        self.datasets.open = lambda path: io.StringIO(listing)
        try:
            with patch(self.datasets, "os", fs), patch(self.script, "DataLoader", lambda dataset, **kwargs: dataset), \
                    patch(self.script, "AV_KS_Dataset_sample_level",
                          lambda mode, loader, contribution: dataset_cls(mode, contribution)):
                yield
        finally:
            del self.datasets.open

    def run(self, checkpoint: Checkpoint) -> None:
        s = self.script
        rows, codes = np.arange(ROWS), np.zeros(ROWS, np.int64)
        valuation = ValuationLoader([warmup_batch(b) for b in self.data.batches(rows, codes)], ROWS)
        with tempfile.TemporaryDirectory() as folder, cpu_patches(), self.files(folder), \
                patch(sys, "stdout", io.StringIO()), patch(sys, "stderr", io.StringIO()):
            for epoch in range(EPOCHS):
                batches = self.data.batches(rows, codes)
                if epoch < WARMUP:
                    s.warmup_epoch(self.args, epoch, self.model, "cpu",
                                   EpochLoader(batches, epoch, checkpoint, warmup_batch), self.optimizer)
                else:
                    loader = EpochLoader(batches, epoch, checkpoint, train_batch)
                    loader.dataset = range(len(rows))    # train_epoch logs len(dataloader.dataset)
                    s.train_epoch(self.args, epoch, self.model, "cpu", loader, self.optimizer)
                if epoch == EPOCHS - 1:
                    break
                cona, conv, dataset = s.execute_modulation(self.args, self.model, "cpu", valuation, "run", epoch)
                rows, codes = canonical(np.array([int(name[3:]) for name in dataset.data]), np.array(dataset.drop))
                self.values = {"rows": rows, "codes": codes, "contribution": [cona, conv]}
                checkpoint(f"e{epoch}.valuation")

    def snapshot(self) -> Snapshot:
        return {**module_snapshot(self.net, [self.optimizer], official_name), **quantities(self.values)}


CASES = [
    Case(name="smv", method="smv", hparams={"level": "sample", "warmup": WARMUP},
         repo="GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation",
         commit="7ed12b07ee7d233aa835089185c909aaa3ff6b1e",
         entry="code/sample_level.py warmup_epoch, train_epoch, execute_modulation; code/models/models.py "
               "AVClassifier; code/datasets/dataloader.py AV_KS_Dataset_sample_level",
         covers=f"{EPOCHS} epochs ({WARMUP} warm-up epoch, then two resampled epochs; batch {BATCH}); valuation after "
                f"epochs 0 and 1 (resampled rows, zeroing codes, mean contributions); training steps with either "
                f"modality's features zeroed",
         project=Project, official=Official, notes=__doc__),
]
