"""MNL against GitHub BaoquanGong/Multimodal-Negative-Learning: ``train_latefusion.py`` ``model_forward`` (train
branch: the guidance masks and the negative-learning loss) run unmodified, inside the loop of ``train`` (zero_grad,
``model_forward``, backward, step).

The released model is BERT + ResNet-152 late fusion on MVSA (``MultimodalLateFusionClf``: ``0.5 * txt_out + 0.5 *
img_out``), which needs pretrained weights and text data. The harness therefore feeds ``model_forward`` a stand-in
with the same call signature and outputs: a copy of the project's audio/visual encoders and per-modality linear heads,
returning (0.5 z_txt + 0.5 z_img, z_txt, z_img) with the audio modality in the text slot and the visual one in the
image slot (the released loop's first and second modality). The optimizer is the project's SGD (the released script
uses Adam with gradient accumulation; the optimizer is not part of the method). ``pytorch_pretrained_bert`` is
stubbed for the import; nothing of it runs.
"""

from __future__ import annotations

import argparse
import copy
import io
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.parity.core import (
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
    module_snapshot,
    patch,
    quantities,
)

EPOCHS, STEPS, BATCH = 2, 2, 8
LR, NUM_CLASSES, WEIGHT = 1e-2, 6, 0.7


class Project(StepProject):
    logged = ("loss",)

    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("cremad", NUM_CLASSES)
        method = build_method(case.method, task, {**case.hparams, **overrides},
                            epochs=EPOCHS, lr=LR)
        super().__init__(method, av_batches(task, EPOCHS * STEPS, BATCH, seed=5), EPOCHS, STEPS)


class LateFusion(nn.Module):
    """``MultimodalLateFusionClf``'s interface on the project's networks: forward(txt, mask, segment, img) ->
    (0.5 txt_out + 0.5 img_out, txt_out, img_out)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model)

    def forward(self, txt: torch.Tensor, mask: Any, segment: Any, img: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _, _, z = self.model({"audio": txt, "visual": img})
        return 0.5 * z["audio"] + 0.5 * z["visual"], z["audio"], z["visual"]


def official_batch(b: dict) -> tuple:
    """``(txt, segment, mask, img, tgt, idx)`` as the released collate function orders them; the stand-in model
    ignores the BERT segment ids and attention mask, which ``model_forward`` only moves to the device."""
    unused = torch.zeros(len(b["label"]), 1, dtype=torch.long)
    return b["audio"], unused, unused, b["visual"], b["label"], b["index"]


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        with cpu_patches(("pytorch_pretrained_bert", "pytorch_pretrained_bert.modeling")):
            (self.train,) = import_official(root, "train_latefusion")
        self.args = argparse.Namespace(n_classes=NUM_CLASSES, weight1=WEIGHT)
        self.net = LateFusion(project.method.model)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.batches = project.batches
        self.loss = 0.0

    def run(self, checkpoint: Checkpoint) -> None:
        criterion = nn.CrossEntropyLoss()
        for epoch in range(EPOCHS):
            loader = EpochLoader(self.batches[epoch * STEPS:(epoch + 1) * STEPS], epoch, checkpoint, official_batch)
            self.net.train()
            self.optimizer.zero_grad()
            # The loop of train_latefusion.py train(); model_forward is the released function.
            with cpu_patches(), patch(sys, "stdout", io.StringIO()):
                for batch in loader:
                    loss, _, _ = self.train.model_forward(epoch, self.net, self.args, criterion, self.optimizer,
                                                          batch, mode="train")
                    self.loss = loss.item()
                    self.optimizer.zero_grad()
                    loss.backward()
                    self.optimizer.step()

    def snapshot(self) -> Snapshot:
        # The stand-in holds the project's modules under the same names.
        return {**module_snapshot(self.net, [self.optimizer]), **quantities({"loss": self.loss})}


CASES = [
    Case(name="mnl", method="mnl", hparams={"weight": WEIGHT}, repo="BaoquanGong/Multimodal-Negative-Learning",
         commit="64cea5624d5894ade5f087ec8d72623b0adb9f13",
         entry="train_latefusion.py model_forward (mode='train') in train()'s loop; the late-fusion model is a "
               "stand-in with MultimodalLateFusionClf's interface",
         covers=f"{EPOCHS} epochs x {STEPS} steps (batch {BATCH}), weight1 {WEIGHT}: per-sample guidance masks in "
                f"both directions and the negative-learning terms every step; the loss every step",
         project=Project, official=Official, notes=__doc__),
]
