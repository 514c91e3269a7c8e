"""MMPareto against GitHub GeWu-Lab/MMPareto_ICML2024: ``code/MMPareto.py`` ``train_epoch`` run unmodified on
``code/models/models.py`` ``AVClassifier`` (concat head plus ``head_audio`` / ``head_video``) wrapped in
``nn.DataParallel`` as ``main`` does (the function splits encoders from heads by the parameter names), with
``code/min_norm_solvers.py`` ``MinNormSolver`` for conflicting gradients.

``train_epoch`` takes everything it uses as arguments; the harness supplies an in-memory loader in
``AVDataset_CD``'s format (fbank (B, 1, F, T), frames (B, T, 3, H, W), labels) and ``main``'s SGD (momentum 0.9,
weight decay 1e-4) and StepLR (30, 0.1; never stepped by the released code). The per-encoder cosines and Pareto weights
are read by wrapping ``F.cosine_similarity`` and ``MinNormSolver.find_min_norm_element`` (results kept, not changed):
the step computes the audio then the visual cosine, then solves the audio pair if its cosine is <= 0, then the visual
one; a non-conflicting encoder gets (0.5, 0.5). ``valid`` is skipped (eval mode, no state change). The project's
audio head starts as the negated audio half of the fused head (copied into the official model like every weight), so
the audio encoder's gradients conflict at every step while the visual encoder's do not. lr is the official 2e-3: with
1e-1, rounding differences amplified by the BatchNorm statistics of these 8-sample batches grew to ~4e-8 in six steps.
"""

from __future__ import annotations

import io
import sys
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.parity.core import (
    AV_TRUNKS,
    FUSED_UNI_HEADS,
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

EPOCHS, STEPS, BATCH, LR, NUM_CLASSES = 3, 2, 8, 0.002, 6
MODALITIES = ("audio", "visual")


# ``AVClassifier`` entry -> the project's ``MMPareto`` entry.
official_name = name_map((*AV_TRUNKS, *FUSED_UNI_HEADS), "AVClassifier")


class Project(StepProject):
    logged = tuple(f"{key}_{m}" for m in MODALITIES for key in ("cos", "k_mm"))

    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("cremad", NUM_CLASSES)
        method = build_method(case.method, task, {**case.hparams, **overrides}, epochs=EPOCHS, lr=LR)
        head = method.model.head
        with torch.no_grad():
            # The audio head starts as the negated audio half of the fused head, so the audio encoder's two gradients
            # conflict (the min-norm weights) while the visual encoder's do not (the plain sum).
            head.uni.audio.weight.copy_(-head.fused.weight[:, :head.uni.audio.in_features])
        super().__init__(method, av_batches(task, EPOCHS * STEPS, BATCH, seed=5), EPOCHS, STEPS)


def official_batch(b: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``AVDataset_CD`` yields fbank (1, F, T) and frames (T, 3, H, W); the project's frames are (3, T, H, W)."""
    return b["audio"], b["visual"].transpose(1, 2), b["label"]


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        # The modules sit in the clone's code/ folder and import each other from there.
        with cpu_patches(("torchaudio", "sklearn")):
            self.main, models = import_official(root / "code", "MMPareto", "models.models")
        self.net = models.AVClassifier(Namespace(dataset="CREMAD"))
        load_mapped(self.net, project.method.state_dict(), official_name)
        self.model = nn.DataParallel(self.net)
        # main: SGD(learning_rate, momentum 0.9, weight_decay 1e-4), StepLR(lr_decay_step 30, lr_decay_ratio 0.1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, 30, 0.1)
        self.batches = project.batches
        self.cosines: list[torch.Tensor] = []
        self.solutions: list[Any] = []

    def cosine_similarity(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.original_cosine(*args, **kwargs)
        self.cosines.append(out.detach())
        return out

    def find_min_norm_element(self, vecs: list) -> Any:
        out = self.original_solver(vecs)
        self.solutions.append(out[0])
        return out

    def new_step(self, step: int) -> None:
        self.cosines, self.solutions = [], []

    def run(self, checkpoint: Checkpoint) -> None:
        solver = self.main.MinNormSolver
        self.original_cosine, self.original_solver = self.main.F.cosine_similarity, solver.find_min_norm_element
        for epoch in range(EPOCHS):
            loader = EpochLoader(self.batches[epoch * STEPS:(epoch + 1) * STEPS], epoch, checkpoint, official_batch,
                                 self.new_step)
            with cpu_patches(), patch(sys, "stdout", io.StringIO()), patch(sys, "stderr", io.StringIO()), \
                    patch(self.main.F, "cosine_similarity", self.cosine_similarity), \
                    patch(solver, "find_min_norm_element", self.find_min_norm_element):
                self.main.train_epoch(None, epoch, self.model, torch.device("cpu"), loader, self.optimizer,
                                      self.scheduler)

    def snapshot(self) -> Snapshot:
        values, solutions = {}, iter(self.solutions)
        for m, cos in zip(MODALITIES, self.cosines):
            values[f"cos_{m}"] = cos
        for m, cos in zip(MODALITIES, self.cosines):
            values[f"k_mm_{m}"] = 0.5 if cos > 0 else float(next(solutions)[0])
        return {**module_snapshot(self.net, [self.optimizer], official_name), **quantities(values)}


REPO = "GeWu-Lab/MMPareto_ICML2024"
COMMIT = "a339db39cc25b157df376b50bb894917dc6c01d6"
COVERS = (f"{EPOCHS} epochs x {STEPS} steps (batch {BATCH}, lr {LR}, the official default); every step the audio "
          "encoder's gradients conflict (cos -0.72 to -0.84: min-norm weights 0.455-0.524, some tensors rescaled to "
          "|g_sum|, others not) and the visual encoder's do not (cos 0.02-0.17: weights 1/2, the plain sum); "
          "per-encoder cosine and Pareto weight every step")

CASES = [
    Case(name="mmpareto", method="mmpareto", hparams={}, repo=REPO, commit=COMMIT,
         entry="code/MMPareto.py train_epoch; code/models/models.py AVClassifier; code/min_norm_solvers.py "
               "MinNormSolver",
         covers=COVERS, project=Project, official=Official, notes=__doc__),
]
