"""DI-MML stage 1 against GitHub fanyunfeng-bit/DI-MML: ``main_CFT.py`` ``train_epoch`` and ``get_indices`` run
unmodified on ``models/basic_model.py`` ``AClassifier``/``VClassifier`` and the shared ``nn.Linear`` head, with
``loss/contrast_loss.py`` ``SupConLoss`` as the DUC loss.

``train_epoch`` switches the DUC loss on at a hard-coded ``epoch >= 20`` and ``main`` computes the effective
dimensions at ``epoch == 20``; the harness runs the official epochs 19 and 20 as the project's epochs 0 and 1 with
``duc_start=1`` (the epoch number is used for nothing else), so the run crosses the DUC start, and ``stage2_epochs=0``
keeps both project epochs in stage 1 (stage 2 is the separate script ``main_CFT_stage2.py``, not covered). Like
``main``, ``get_indices`` reads the training rows one at a time (batch size 1, in eval mode); its ``.to('cuda')``
calls are no-ops here. The stubbed packages (librosa, TensorBoard) belong to the dataset modules and logging that the
training step does not use. The effective dimensions are compared as ``q/duc_dims``; the project's untrained fusion
head and stage flags have no official counterpart in stage 1 and are left out.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

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
    resnet_name,
)

EPOCHS, STEPS, BATCH = 2, 2, 8
LR, NUM_CLASSES, DUC_EPOCH = 1e-3, 6, 20
FEATURES = 512
OPTIONAL = ("torch.utils.tensorboard", "librosa")


def official_name(name: str) -> str:
    """Entry of the official ``{model1, model2, classifier}`` -> the project's ``DIMML`` entry."""
    for prefix, m in (("model1.", "audio"), ("model2.", "visual")):
        if name.startswith(prefix + "net."):
            return f"encoders.{m}.trunk." + resnet_name(name[len(prefix + "net."):])
        if name.startswith(prefix + "classifier."):
            return f"heads.{m}." + name[len(prefix + "classifier."):]
    if name.startswith("classifier."):
        return "shared." + name[len("classifier."):]
    raise KeyError(f"unmapped DI-MML entry {name!r}")


def project_name(name: str) -> str | None:
    """The stage-2 fusion head and the stage flags have no stage-1 counterpart; ``duc_dims`` is compared as q."""
    return None if name.startswith("fusion.") or name in ("duc_dims", "duc_ready", "stage2") else name


class TrainRows:
    """The training rows for the project's effective-dimension pass (``BatchLoader.derived``)."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def derived(self, batch_size: int) -> list[dict]:
        return self.batches


class Project:
    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("cremad", NUM_CLASSES)
        self.method = build_method(case.method, task, {**case.hparams, **overrides}, epochs=EPOCHS, lr=LR)
        self.batches = av_batches(task, STEPS, BATCH, seed=2)   # the training set, one pass per epoch

    def steps(self) -> Iterator[str]:
        for epoch in range(EPOCHS):
            self.method.on_epoch_start(epoch, Loaders(TrainRows(self.batches)))
            for k in range(STEPS):
                self.method.update(self.batches[k], StepInfo(epoch, k, STEPS, EPOCHS))
                yield f"e{epoch}s{k}"

    def snapshot(self) -> Snapshot:
        dims = self.method.duc_dims.to(torch.get_default_dtype())
        return {**module_snapshot(self.method, [self.method.optimizer], project_name),
                **quantities({"duc_dims": dims})}


def official_batch(b: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return b["audio"][:, 0], b["visual"], b["label"]


def _to_except_cuda(original: Any) -> Any:
    def to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args and args[0] == "cuda":
            return self
        return original(self, *args, **kwargs)
    return to


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        with cpu_patches(OPTIONAL):
            self.main, basic = import_official(root, "main_CFT", "models.basic_model")
        self.args = argparse.Namespace(dataset="CREMAD", embed_dim=FEATURES)
        self.net = nn.ModuleDict({"model1": basic.AClassifier(self.args), "model2": basic.VClassifier(self.args),
                                  "classifier": nn.Linear(FEATURES, NUM_CLASSES)})
        load_mapped(self.net, project.method.state_dict(), official_name)
        # main: SGD over model1 + model2 + classifier (lr, momentum 0.9, weight_decay 1e-4), StepLR(70, 0.1)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, 70, 0.1)
        self.batches = project.batches
        self.indices: tuple[list[int], list[int]] = ([], [])
        self.temperature = project.method.hp.duc_temperature
        self.weight = project.method.hp.align_weight

    def rows(self) -> list[tuple[torch.Tensor, ...]]:
        """``main``'s ``indice_dataloader``: the training rows at batch size 1."""
        return [tuple(x[i:i + 1] for x in official_batch(b)) for b in self.batches for i in range(BATCH)]

    def run(self, checkpoint: Checkpoint) -> None:
        m1, m2, head = self.net["model1"], self.net["model2"], self.net["classifier"]
        for epoch in range(EPOCHS):
            official_epoch = DUC_EPOCH - 1 + epoch
            loader = EpochLoader(self.batches, epoch, checkpoint, official_batch)
            with cpu_patches(), patch(sys, "stdout", io.StringIO()):
                if official_epoch == DUC_EPOCH:
                    with patch(torch.Tensor, "to", _to_except_cuda(torch.Tensor.to)):
                        self.indices = self.main.get_indices(self.args, m1, m2, torch.device("cpu"), 256,
                                                             self.rows())
                self.main.train_epoch(self.args, official_epoch, m1, m2, head, torch.device("cpu"), loader,
                                      self.optimizer, self.scheduler, *self.indices, self.temperature, self.weight)

    def snapshot(self) -> Snapshot:
        dims = torch.zeros(2, FEATURES)
        for row, chosen in enumerate(self.indices):
            dims[row, chosen] = 1.0
        return {**module_snapshot(self.net, [self.optimizer], official_name), **quantities({"duc_dims": dims})}


CASES = [
    Case(name="dimml", method="dimml", hparams={"duc_start": 1, "stage2_epochs": 0}, repo="fanyunfeng-bit/DI-MML",
         commit="83b9b7acc47ac9f1666e72ed984eacd18cfd3d5c",
         entry="main_CFT.py train_epoch and get_indices; models/basic_model.py AClassifier, VClassifier; "
               "loss/contrast_loss.py SupConLoss",
         covers=f"stage 1, {EPOCHS} epochs x {STEPS} steps (batch {BATCH}): the official epochs {DUC_EPOCH - 1} and "
                f"{DUC_EPOCH}, i.e. the effective-dimension pass and the DUC loss switching on at epoch 1",
         project=Project, official=Official, notes=__doc__),
]
