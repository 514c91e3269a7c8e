"""LFM (fitted schedule) against GitHub njustkmg/NeurIPS24-LFM: ``Crema_epoch.py`` ``train_audio_video`` run
unmodified on ``model/AudioVideo.py`` ``AVClassifier`` (per-modality heads ``cls_a``/``cls_v``), with the epoch's
``cls_k = getAlpha_Learnable_Fitted(epoch)`` as its ``__main__`` computes it.

The harness supplies the in-memory loader in ``CramedDataset``'s format ``(spectrogram (B, F, T), frames, label)``, a
silent logger and the model config ``AVClassifier`` reads; ``geomloss`` and ``pandas`` (imported, never called by the
training step) are stubbed. The project evaluates the polynomial at ``epoch * fit_epochs / epochs``; the case sets
``fit_epochs`` to the run's epoch count so that it evaluates it at the epoch itself, as the code does for its 200-epoch
run; flipping ``fit_epochs`` back to 200 rescales the schedule and must differ from epoch 1 on.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

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
    resnet_name,
)

EPOCHS, STEPS, BATCH = 3, 2, 8
LR, NUM_CLASSES = 1e-3, 6
CONFIG = {"text": {"name": "resnet18"}, "visual": {"name": "resnet18"}, "fps": 1, "setting": {"num_class": NUM_CLASSES}}


def official_name(name: str) -> str:
    """``AudioVideo.AVClassifier`` entry -> the project's ``LFM`` entry."""
    for prefix, target in (("audio_encoder.audio_net.", "model.encoders.audio.trunk."),
                           ("video_encoder.video_net.", "model.encoders.visual.trunk."),
                           ("cls_a.", "model.head.heads.audio."), ("cls_v.", "model.head.heads.visual.")):
        if name.startswith(prefix):
            rest = name[len(prefix):]
            return target + (rest if prefix.startswith("cls") else resnet_name(rest))
    raise KeyError(f"unmapped AVClassifier entry {name!r}")


class Project:
    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("cremad", NUM_CLASSES)
        self.method = build_method(case.method, task, {**case.hparams, **overrides}, epochs=EPOCHS, lr=LR)
        self.batches = av_batches(task, EPOCHS * STEPS, BATCH, seed=4)
        self.values: dict[str, Any] = {}

    def steps(self) -> Iterator[str]:
        for epoch in range(EPOCHS):
            for k in range(STEPS):
                logs = self.method.update(self.batches[epoch * STEPS + k], StepInfo(epoch, k, STEPS, EPOCHS))
                self.values = {"alpha_cls": logs["alpha_cls"]}
                yield f"e{epoch}s{k}"

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


CASES = [
    Case(name="lfm_fitted", method="lfm", hparams={"schedule": "fitted", "fit_epochs": EPOCHS},
         repo="njustkmg/NeurIPS24-LFM", commit="ad44fa09fee471c9267a7cba526b222c54d45493",
         entry="Crema_epoch.py train_audio_video + getAlpha_Learnable_Fitted; model/AudioVideo.py AVClassifier",
         covers=f"{EPOCHS} epochs x {STEPS} steps (batch {BATCH}); the fitted alpha_cls changes every epoch",
         project=Project, official=Official, deviations={"fit_epochs": 200}, notes=__doc__),
]
