"""LFM against GitHub njustkmg/NeurIPS24-LFM, on ``model/AudioVideo.py`` ``AVClassifier`` (per-modality heads
``cls_a``/``cls_v``).

``lfm_fitted``: ``Crema_epoch.py`` ``train_audio_video`` run unmodified, with the epoch's
``cls_k = getAlpha_Learnable_Fitted(epoch)`` as its ``__main__`` computes it.

The harness supplies the in-memory loader in ``CramedDataset``'s format ``(spectrogram (B, F, T), frames, label)``, a
silent logger and the model config ``AVClassifier`` reads; ``geomloss`` and ``pandas`` (imported, never called by the
training step) are stubbed. The project evaluates the polynomial at ``epoch * fit_epochs / epochs``; the case sets
``fit_epochs`` to the run's epoch count so that it evaluates it at the epoch itself, as the code does for its 200-epoch
run; flipping ``fit_epochs`` back to 200 rescales the schedule and must differ from epoch 1 on.

``lfm_learnable``: ``Crema_epoch_learnable.py`` as its ``__main__`` loops, ``cls_k, lr_alpha =
getAlpha_Learnable(epoch, val_batch, model, cls_k, lr_alpha)`` then ``train_audio_video``, both unmodified, over
epochs 19-21: lr_alpha is 1e-4 at epoch 19, halves at 20 and stays halved at 21. The run resumes there with alpha_al
at 0.5 (the case's ``alpha_align_init``; from the code's 0.95 the first steps could be clipped away) and the model in
eval mode, as the preceding epoch's ``val`` leaves it (the harness calls ``model.eval()`` in place of ``val`` on a test
set); from epoch 1 on, this is the mode the project always uses. ``val_batch`` is the project's 16 held-out rows in
its draw order (the code draws them with ``torch.randperm``); the training batches are fixed, as for ``lfm_fitted``.
The hypergradient (the mean of the Hessian-vector product's first block) is compared as ``q/hvp_mean``: the code
prints it, the project's value is read at ``learnable_alpha_step``. Importing the script turns on
``torch.autograd.set_detect_anomaly`` (a global switch, slow, no effect on values); the harness restores the previous
setting after the import.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

import baselines.lfm
from baselines.base import Loaders, StepInfo
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
    load_mapped,
    module_snapshot,
    name_map,
    patch,
    quantities,
    resnet_name,
)
from core.data import BatchLoader

EPOCHS, STEPS, BATCH = 3, 2, 8
LR, NUM_CLASSES = 1e-3, 6
CONFIG = {"text": {"name": "resnet18"}, "visual": {"name": "resnet18"}, "fps": 1, "setting": {"num_class": NUM_CLASSES}}


# ``AudioVideo.AVClassifier`` entry -> the project's ``LFM`` entry.
official_name = name_map((("audio_encoder.audio_net.", "model.encoders.audio.trunk.", resnet_name),
                          ("video_encoder.video_net.", "model.encoders.visual.trunk.", resnet_name),
                          ("cls_a.", "model.head.heads.audio.", None), ("cls_v.", "model.head.heads.visual.", None)),
                         "AVClassifier")


class Project(StepProject):
    logged = ("alpha_cls",)

    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("cremad", NUM_CLASSES)
        method = build_method(case.method, task, {**case.hparams, **overrides}, epochs=EPOCHS, lr=LR)
        super().__init__(method, av_batches(task, EPOCHS * STEPS, BATCH, seed=4), EPOCHS, STEPS)

    def snapshot(self) -> Snapshot:
        snap = module_snapshot(self.method, [self.method.optimizer])
        del snap["buffer/alpha_align"]   # the learnable schedule's state; the fitted code has no counterpart
        return {**snap, **quantities(self.values)}


class SilentLogger:
    def info(self, *args: Any, **kwargs: Any) -> None:
        pass


def official_batch(b: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return b["audio"][:, 0], b["visual"], b["label"]


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        with cpu_patches(("geomloss", "pandas")):
            self.main, av = import_official(root, "Crema_epoch", "model.AudioVideo")
        self.net = av.AVClassifier(CONFIG)
        load_mapped(self.net, project.method.state_dict(), official_name)
        # Crema_epoch.py __main__: SGD(lr, momentum 0.9, weight_decay wc=1e-4 of data/crema.json)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.batches = project.batches
        self.cls_k: list[float] = []

    def run(self, checkpoint: Checkpoint) -> None:
        for epoch in range(EPOCHS):
            self.cls_k = self.main.getAlpha_Learnable_Fitted(epoch)
            loader = EpochLoader(self.batches[epoch * STEPS:(epoch + 1) * STEPS], epoch, checkpoint, official_batch)
            with cpu_patches(), patch(sys, "stderr", io.StringIO()):
                self.main.train_audio_video(epoch, loader, self.net, self.optimizer, SilentLogger(), self.cls_k)

    def snapshot(self) -> Snapshot:
        return {**module_snapshot(self.net, [self.optimizer], official_name),
                **quantities({"alpha_cls": self.cls_k[0]})}


# Learnable case: epochs 19-21 cross lr_alpha's halving at epoch 20; 24 rows hold the 16 held-out ones.
FIRST_EPOCH, POOL, ALPHA_ALIGN = 19, 24, 0.5


class LearnableProject:
    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("cremad", NUM_CLASSES)
        self.method = build_method(case.method, task, {**case.hparams, **overrides}, epochs=FIRST_EPOCH + EPOCHS,
                                   lr=LR)
        self.batches = av_batches(task, EPOCHS * STEPS, BATCH, seed=4)
        pool = {k: torch.cat([b[k] for b in av_batches(task, POOL // BATCH, BATCH, seed=5)])
                for k in ("audio", "visual", "label")}
        self.loader = BatchLoader(np.arange(POOL), pool["label"].numpy(),
                                  lambda rows: {m: pool[m][torch.as_tensor(rows)] for m in ("audio", "visual")},
                                  batch_size=BATCH, train=True, seed=0)
        held = self.method.holdout_rows(self.loader)[1]
        self.val_batch = (pool["audio"][held, 0], pool["visual"][held], pool["label"][held])
        self.values: dict[str, Any] = {}

    def steps(self) -> Iterator[str]:
        m = self.method
        hvp: list[float] = []
        step = baselines.lfm.learnable_alpha_step

        def recording_step(align: float, hvp_mean: float, *args: Any) -> float:
            """The method's alpha update, unchanged; records the hypergradient it is given (not logged)."""
            hvp.append(hvp_mean)
            return step(align, hvp_mean, *args)

        for i, epoch in enumerate(range(FIRST_EPOCH, FIRST_EPOCH + EPOCHS)):
            self.loader.set_epoch(epoch)
            with patch(baselines.lfm, "learnable_alpha_step", recording_step):
                m.on_epoch_start(epoch, Loaders(self.loader))
            cls, align = m.coefficients(epoch)
            self.values = {"alpha_cls": cls, "alpha_align": align, "hvp_mean": hvp[-1]}
            yield f"e{epoch}.alpha"
            for k in range(STEPS):
                m.update(self.batches[i * STEPS + k], StepInfo(epoch, k, STEPS, FIRST_EPOCH + EPOCHS))
                yield f"e{epoch}s{k}"

    def snapshot(self) -> Snapshot:
        snap = module_snapshot(self.method, [self.method.optimizer])
        del snap["buffer/alpha_align"]   # compared as q/alpha_align (the code keeps it in the list cls_k)
        return {**snap, **quantities(self.values)}


class LearnableOfficial:
    def __init__(self, case: Case, root: Path, project: LearnableProject) -> None:
        anomaly = torch.is_anomaly_enabled()
        try:
            with cpu_patches(("pandas",)):
                self.main, av = import_official(root, "Crema_epoch_learnable", "model.AudioVideo")
        finally:
            torch.autograd.set_detect_anomaly(anomaly)
        self.net = av.AVClassifier(CONFIG)
        load_mapped(self.net, project.method.state_dict(), official_name)
        # Crema_epoch_learnable.py __main__: SGD(lr, momentum 0.9, weight_decay wc=1e-4 of data/crema.json)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.batches, self.val_batch = project.batches, project.val_batch
        align = float(project.method.hp.alpha_align_init)
        self.cls_k, self.values = [1.0 - align, align], {}

    def run(self, checkpoint: Checkpoint) -> None:
        lr_alpha = 1e-4   # __main__'s initial value, not yet halved before epoch 20
        self.net.eval()   # the previous epoch's val(...) leaves the model in eval mode
        for i, epoch in enumerate(range(FIRST_EPOCH, FIRST_EPOCH + EPOCHS)):
            printed = io.StringIO()
            with cpu_patches(), patch(sys, "stdout", printed):
                self.cls_k, lr_alpha = self.main.getAlpha_Learnable(epoch, self.val_batch, self.net, self.cls_k,
                                                                    lr_alpha)
            self.values = {"alpha_cls": self.cls_k[0], "alpha_align": self.cls_k[1],
                           "hvp_mean": float(printed.getvalue())}
            checkpoint(f"e{epoch}.alpha")
            loader = EpochLoader(self.batches[i * STEPS:(i + 1) * STEPS], epoch, checkpoint, official_batch)
            with cpu_patches(), patch(sys, "stderr", io.StringIO()):
                self.main.train_audio_video(epoch, loader, self.net, self.optimizer, SilentLogger(), self.cls_k)
            self.net.eval()

    def snapshot(self) -> Snapshot:
        return {**module_snapshot(self.net, [self.optimizer], official_name), **quantities(self.values)}


CASES = [
    Case(name="lfm_fitted", method="lfm", hparams={"schedule": "fitted", "fit_epochs": EPOCHS},
         repo="njustkmg/NeurIPS24-LFM", commit="ad44fa09fee471c9267a7cba526b222c54d45493",
         entry="Crema_epoch.py train_audio_video + getAlpha_Learnable_Fitted; model/AudioVideo.py AVClassifier",
         covers=f"{EPOCHS} epochs x {STEPS} steps (batch {BATCH}); the fitted alpha_cls changes every epoch",
         project=Project, official=Official, deviations={"fit_epochs": 200}, notes=__doc__),
    Case(name="lfm_learnable", method="lfm", hparams={"schedule": "learnable", "alpha_align_init": ALPHA_ALIGN},
         repo="njustkmg/NeurIPS24-LFM", commit="ad44fa09fee471c9267a7cba526b222c54d45493",
         entry="Crema_epoch_learnable.py getAlpha_Learnable + train_audio_video; model/AudioVideo.py AVClassifier",
         covers=f"epochs {FIRST_EPOCH}-{FIRST_EPOCH + EPOCHS - 1} x {STEPS} steps (batch {BATCH}); alpha_al updated by "
                f"the hypergradient before each epoch, its lr_alpha halved at epoch 20",
         project=LearnableProject, official=LearnableOfficial, notes=__doc__),
]
