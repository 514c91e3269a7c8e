"""OGM-GE and OGM against GitHub GeWu-Lab/OGM-GE_CVPR2022: ``main.py`` ``train_epoch`` run unmodified on
``models/basic_model.py`` ``AVClassifier`` (concat fusion) wrapped in ``nn.DataParallel`` as ``main`` does (the
function reads ``model.module`` and the ``module.<net>`` parameter names).

``train_epoch`` takes everything it uses as arguments, so the harness only supplies an argparse-like namespace, an
in-memory loader in ``CramedDataset``'s format (spectrogram (B, F, T), frames (B, 3, T, H, W), labels), the
official optimizer and StepLR, and a recording TensorBoard writer (``use_tensorboard=True``), which yields the
per-step coefficients. ``valid`` is skipped (eval mode, no state change). Both sides seed the RNG identically before
every step, so OGM-GE's Gaussian noise is the same draw on both sides. The modulation window is epochs 0-1
(``--modulation_ends 1``) of 3, so the run crosses the window's end.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Mapping
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

EPOCHS, STEPS, BATCH = 3, 2, 8
LR, NUM_CLASSES, ALPHA, MOD_END = 1e-3, 6, 0.8, 1
NOISE_SEED = 4321


# ``AVClassifier`` entry -> the project's ``OGM`` entry.
official_name = name_map((*AV_TRUNKS, FC_OUT), "AVClassifier")


class Project(StepProject):
    logged = ("coeff_audio", "coeff_visual")

    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("cremad", NUM_CLASSES)
        method = build_method(case.method, task, {**case.hparams, **overrides},
                            epochs=EPOCHS, lr=LR)
        super().__init__(method, av_batches(task, EPOCHS * STEPS, BATCH, seed=2), EPOCHS, STEPS)

    def before_step(self, epoch: int, step: int) -> None:
        torch.manual_seed(NOISE_SEED + epoch * STEPS + step)


class RecordingWriter:
    """TensorBoard ``SummaryWriter`` stand-in keeping the last value of each tag."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def add_scalar(self, tag: str, value: Any, step: int) -> None:
        self.last[tag] = float(torch.as_tensor(value).detach())


def official_batch(b: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return b["audio"][:, 0], b["visual"], b["label"]


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        with cpu_patches(("torch.utils.tensorboard",)):
            self.main, basic = import_official(root, "main", "models.basic_model")
        self.args = argparse.Namespace(dataset="CREMAD", fusion_method="concat", modulation=MODULATION[case.method],
                                       alpha=ALPHA, modulation_starts=0, modulation_ends=MOD_END,
                                       use_tensorboard=True)
        self.net = basic.AVClassifier(self.args)
        load_mapped(self.net, project.method.state_dict(), official_name)
        self.model = nn.DataParallel(self.net)
        # main.py: SGD(lr, momentum 0.9, weight_decay 1e-4), StepLR(lr_decay_step 70, 0.1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, 70, 0.1)
        self.batches = project.batches
        self.writer = RecordingWriter()

    def run(self, checkpoint: Checkpoint) -> None:
        for epoch in range(EPOCHS):
            loader = EpochLoader(self.batches[epoch * STEPS:(epoch + 1) * STEPS], epoch, checkpoint, official_batch,
                                 lambda step: torch.manual_seed(NOISE_SEED + step))
            with cpu_patches(), patch(sys, "stdout", io.StringIO()):
                self.main.train_epoch(self.args, epoch, self.model, torch.device("cpu"), loader, self.optimizer,
                                      self.scheduler, self.writer)

    def snapshot(self) -> Snapshot:
        values = {"coeff_audio": self.writer.last["data/coefficient a"],
                  "coeff_visual": self.writer.last["data/coefficient v"]}
        return {**module_snapshot(self.net, [self.optimizer], official_name), **quantities(values)}


MODULATION = {"ogm_ge": "OGM_GE", "ogm": "OGM"}
REPO = "GeWu-Lab/OGM-GE_CVPR2022"
COMMIT = "343dc1d95c9bda88f105c0da8d24f185e0e98b54"
COVERS = (f"{EPOCHS} epochs x {STEPS} steps (batch {BATCH}); modulation window epochs 0-{MOD_END} (--modulation_ends "
          f"{MOD_END}), so epoch {MOD_END + 1} runs past its end; coefficients every step")

CASES = [
    Case(name="ogm_ge", method="ogm_ge", hparams={"mod_end": MOD_END}, repo=REPO, commit=COMMIT,
         entry="main.py train_epoch (--modulation OGM_GE, concat); models/basic_model.py AVClassifier",
         covers=COVERS, project=Project, official=Official, notes=__doc__),
    Case(name="ogm", method="ogm", hparams={"mod_end": MOD_END}, repo=REPO, commit=COMMIT,
         entry="main.py train_epoch (--modulation OGM, concat); models/basic_model.py AVClassifier",
         covers=COVERS, project=Project, official=Official, notes=__doc__),
]
