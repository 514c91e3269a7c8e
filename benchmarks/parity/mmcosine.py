"""MMCosine against GitHub GeWu-Lab/MMCosine_ICASSP23: ``main_CD.py`` ``train_epoch`` (``--mmcosine``) run unmodified
on ``models/basic_model.py`` ``AVClassifier`` (concat fusion) wrapped in ``nn.DataParallel`` as ``main`` does.

Workarounds for the released code: ``models/basic_model.py`` imports its backbones from a hard-coded
``sys.path.append('/home/ruize_xu/CD/models')``, so the clone's ``models`` folder is put on ``sys.path`` for the import,
and imports an ``Elementwise_addition`` that ``models/fusion_modules.py`` does not define (set to None: concat fusion
never uses it);
``main_CD.py`` imports ``utils.utils``, which the repository does not ship, and ``dataset/dataset.py`` imports
``soundfile``/``librosa``; none is called by ``train_epoch``, so they are stubbed. ``--lam 0`` (the README setting)
keeps the NCE term out of the loss, as the project does. The in-memory loader yields ``AVDataset_CD``'s
``(spectrogram (B, F, T), frames, label, name)``; the recording writer (``use_tensorboard=True``) yields the
per-step mean true-class cosine logit of each modality, which the project side recomputes on a copy of its model
before each step.
"""

from __future__ import annotations

import argparse
import copy
import io
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

from baselines.base import StepInfo
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
from benchmarks.parity.ogm import RecordingWriter, official_name

EPOCHS, STEPS, BATCH = 2, 3, 8
LR, NUM_CLASSES, SCALE = 1e-3, 6, 10.0
MISSING = ("torch.utils.tensorboard", "utils.utils", "soundfile", "librosa")


def true_class_logits(method: Any, batch: dict) -> dict[str, float]:
    """The official ``data/logit_a``/``data/logit_v``: batch mean of each modality's true-class cosine logit, from a
    copy of the model so the extra forward pass leaves the BatchNorm statistics of the trained one alone."""
    probe = copy.deepcopy(method)
    with torch.no_grad():
        _, z = probe.logits(batch)
    return {f"logit_{m}": z[m].gather(1, batch["label"][:, None]).mean().item() for m in ("audio", "visual")}


class Project:
    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("cremad", NUM_CLASSES)
        self.method = build_method(case.method, task, {**case.hparams, **overrides}, epochs=EPOCHS, lr=LR)
        self.batches = av_batches(task, EPOCHS * STEPS, BATCH, seed=3)
        self.values: dict[str, Any] = {}

    def steps(self) -> Iterator[str]:
        for epoch in range(EPOCHS):
            for k in range(STEPS):
                batch = self.batches[epoch * STEPS + k]
                self.values = true_class_logits(self.method, batch)
                self.method.update(batch, StepInfo(epoch, k, STEPS, EPOCHS))
                yield f"e{epoch}s{k}"

    def snapshot(self) -> Snapshot:
        return {**module_snapshot(self.method, [self.method.optimizer]), **quantities(self.values)}


def official_batch(b: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    return b["audio"][:, 0], b["visual"], b["label"], [""] * len(b["label"])


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        # basic_model imports an Elementwise_addition that fusion_modules does not define (unused by concat fusion)
        fusion, = import_official(root / "models", "fusion_modules")
        fusion.Elementwise_addition = None
        with cpu_patches(MISSING), patch(sys, "path", [str(root / "models"), *sys.path]), \
                mock.patch.dict(sys.modules, {"fusion_modules": fusion}):
            self.main, basic = import_official(root, "main_CD", "models.basic_model")
        self.args = argparse.Namespace(dataset="CREMAD", fusion_method="concat", mmcosine=True, scaling=SCALE,
                                       lam=0.0, use_tensorboard=True)
        self.net = basic.AVClassifier(self.args)
        load_mapped(self.net, project.method.state_dict(), official_name)
        self.model = nn.DataParallel(self.net)
        # main_CD.py --optimizer sgd: SGD(lr, momentum 0.9, weight_decay 1e-4)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.batches = project.batches
        self.writer = RecordingWriter()

    def run(self, checkpoint: Checkpoint) -> None:
        for epoch in range(EPOCHS):
            loader = EpochLoader(self.batches[epoch * STEPS:(epoch + 1) * STEPS], epoch, checkpoint, official_batch)
            with cpu_patches(), patch(sys, "stdout", io.StringIO()):
                self.main.train_epoch(self.args, epoch, self.model, torch.device("cpu"), loader, self.optimizer,
                                      self.writer)

    def snapshot(self) -> Snapshot:
        values = {"logit_audio": self.writer.last["data/logit_a"], "logit_visual": self.writer.last["data/logit_v"]}
        return {**module_snapshot(self.net, [self.optimizer], official_name), **quantities(values)}


CASES = [
    Case(name="mmcosine", method="mmcosine", hparams={}, repo="GeWu-Lab/MMCosine_ICASSP23",
         commit="00ba0a9cbd9b866b5017e972a1266d7b664bf86e",
         entry="main_CD.py train_epoch (--mmcosine, --scaling 10, --lam 0, concat); models/basic_model.py AVClassifier",
         covers=f"{EPOCHS} epochs x {STEPS} steps (batch {BATCH}), scale {SCALE:g}; the bias is outside the cosine "
                f"logits on both sides (no gradient, so SGD leaves it); true-class cosine logits every step",
         project=Project, official=Official, notes=__doc__),
]
