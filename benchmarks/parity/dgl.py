"""DGL against GitHub shicaiwei123/ICCV2025-GDL: ``main_dgl.py`` ``train_epoch`` run unmodified on
``models/basic_model.py`` ``AVClassifier_DGL`` (concat fusion, ``ConcatFusion_DGL``) wrapped in ``nn.DataParallel``
as ``main`` does (the function reads ``model.module`` and finds the fusion head by the second component of the
``module.<net>`` parameter names).

The harness supplies an argparse-like namespace, an in-memory loader in ``CramedDataset``'s format (spectrogram
(B, F, T), frames (B, 3, T, H, W), labels) and the official optimizer and ``MultiStepLR([70], 0.1)`` (stepped at the
start of each ``train_epoch``, so the lr never changes within the run). ``train_epoch`` appends per-step gradient
sums to ``audio_visual_grad_vanilla.csv`` in the working directory; the harness runs it inside a temporary directory
so nothing is written elsewhere. ``valid`` is skipped (eval mode, no state change). ``ConcatFusion_DGL`` also builds
an ``fc_auxi`` layer that its forward never uses: it has no project counterpart, gets no gradient and is left out of
the comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.parity.core import (
    AV_TRUNKS,
    FC_OUT,
    Case,
    Checkpoint,
    EpochLoader,
    Snapshot,
    StepProject,
    av_batches,
    av_task,
    build_method,
    cpu_patches,
    import_official,
    load_mapped,
    module_snapshot,
    name_map,
    patch,
    quantities,
)

EPOCHS, STEPS, BATCH = 2, 2, 8
LR, NUM_CLASSES, ALPHA = 2e-3, 6, 4.0


# ``AVClassifier_DGL`` entry -> the project's ``DGL`` entry (None: the unused ``fc_auxi``).
official_name = name_map((*AV_TRUNKS, FC_OUT, ("fusion_module.fc_auxi.", None, None)), "AVClassifier_DGL")


class Project(StepProject):
    logged = ("loss_fused",)

    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("cremad", NUM_CLASSES)
        method = build_method(case.method, task, {**case.hparams, **overrides},
                            epochs=EPOCHS, lr=LR)
        super().__init__(method, av_batches(task, EPOCHS * STEPS, BATCH, seed=3), EPOCHS, STEPS)


def official_batch(b: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return b["audio"][:, 0], b["visual"], b["label"]


@contextlib.contextmanager
def scratch_directory() -> Iterator[None]:
    """Run in a temporary working directory: ``train_epoch`` appends a CSV to the current one every step."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(old)


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        with cpu_patches(("torch.utils.tensorboard", "skimage", "timm", "timm.models", "timm.models.layers")):
            self.main, basic = import_official(root, "main_dgl", "models.basic_model")
        self.args = argparse.Namespace(dataset="CREMAD", fusion_method="concat", modality="full", alpha=ALPHA,
                                       epochs=EPOCHS)
        self.net = basic.AVClassifier_DGL(self.args)
        load_mapped(self.net, project.method.state_dict(), official_name)
        self.model = nn.DataParallel(self.net)
        # main_dgl.py: SGD(lr, momentum 0.9, weight_decay 1e-4), MultiStepLR(lr_decay_step [70], 0.1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, [70], 0.1)
        self.batches = project.batches
        self.loss_f = 0.0

    def run(self, checkpoint: Checkpoint) -> None:
        for epoch in range(EPOCHS):
            loader = EpochLoader(self.batches[epoch * STEPS:(epoch + 1) * STEPS], epoch, checkpoint, official_batch)
            # stdout: the script's prints; stderr: its tqdm bars.
            with scratch_directory(), cpu_patches(), patch(sys, "stdout", io.StringIO()), \
                    patch(sys, "stderr", io.StringIO()), \
                    patch(nn.functional, "cross_entropy", self.recording_cross_entropy()):
                self.main.train_epoch(self.args, epoch, self.model, torch.device("cpu"), loader, self.optimizer,
                                      self.scheduler)

    def recording_cross_entropy(self):
        """``nn.CrossEntropyLoss`` calls ``F.cross_entropy``; the third call of a step is the fused loss."""
        original = nn.functional.cross_entropy
        calls = []

        def cross_entropy(*args: Any, **kwargs: Any) -> torch.Tensor:
            loss = original(*args, **kwargs)
            calls.append(loss)
            if len(calls) % 3 == 0:
                self.loss_f = float(loss.detach())
            return loss
        return cross_entropy

    def snapshot(self) -> Snapshot:
        return {**module_snapshot(self.net, [self.optimizer], official_name),
                **quantities({"loss_fused": self.loss_f})}


REPO = "shicaiwei123/ICCV2025-GDL"
COMMIT = "b72a55f0fe1bd7fde6354fda9613e2a88a2d695e"
CASES = [
    Case(name="dgl", method="dgl", hparams={"alpha": ALPHA}, repo=REPO, commit=COMMIT,
         entry="main_dgl.py train_epoch (concat); models/basic_model.py AVClassifier_DGL, "
               "models/fusion_modules.py ConcatFusion_DGL",
         covers=f"{EPOCHS} epochs x {STEPS} steps (batch {BATCH}), alpha {ALPHA}: both gradient truncations and "
                f"clip_grad_norm_(max_norm=40) every step; the fused loss every step",
         project=Project, official=Official, notes=__doc__),
]
