"""AGM against GitHub lihong2303/AGM_ICCV2023: ``run/CREMAD_main.py`` ``train`` run unmodified on
``model/CREMAD_net.py`` ``GradMod`` (late fusion, concat ``AVClassifier``, the backward hooks of ``Modality_out``).

``train`` takes everything it uses as arguments, so the harness supplies a config namespace (``--methods AGM``,
``--modality Multimodal``, ``--fusion_type late_fusion``), an in-memory loader in ``CreamdDataset``'s item format
(index, spectrogram (B, F, T), frames (B, 3, T, H, W), label), the official optimizer and StepLR
(``tasks/CREMAD_task.py``), a silent logger and a recording TensorBoard writer (which yields the per-step loss). The
official loop (``CREMAD_main``) is not importable as a per-epoch step, so the harness repeats only what it passes
between epochs: the 1-based epoch and the running scores ``train`` returns. ``test`` is skipped (no state change AGM
reads). The window is ``--modulation_ends 2`` on the official 1-based epochs (project ``mod_end`` 1) of 3, so epoch 3
runs past its end with the hooks' last scales.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baselines.base import Loaders, StepInfo
from benchmarks.parity.core import (
    AV_TRUNKS,
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
    name_map,
    quantities,
    resnet_name,
)

EPOCHS, STEPS, BATCH = 3, 2, 8
LR, NUM_CLASSES, ALPHA, MOD_END = 1e-3, 6, 1.5, 1
# What the official scripts import but ``train`` never calls.
OPTIONAL = ("torch.utils.tensorboard", "sklearn", "librosa")


# ``GradMod`` entry -> the project's ``AGM`` entry.
official_name = name_map((("net.audio_net.", "model.encoders.audio.trunk.", resnet_name),
                          ("net.visual_net.", "model.encoders.visual.trunk.", resnet_name),
                          ("net.fusion_module.fc_out.", "model.head.fc.", None)), "GradMod")


def project_name(name: str) -> str | None:
    """The project's hook scales and running means are compared as quantities, not as buffers."""
    return None if name.startswith("scalers.") or name in ("loss_mean", "iterations") else name


class Project:
    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("cremad", NUM_CLASSES)
        self.method = build_method(case.method, task, {**case.hparams, **overrides}, epochs=EPOCHS, lr=LR)
        self.batches = av_batches(task, EPOCHS * STEPS, BATCH, seed=3)
        self.values: dict[str, Any] = {}

    def steps(self) -> Iterator[str]:
        m = self.method
        for epoch in range(EPOCHS):
            for k in range(STEPS):
                logs = m.update(self.batches[epoch * STEPS + k], StepInfo(epoch, k, STEPS, EPOCHS))
                self.values = {"loss": logs["loss"],
                               "scale": [m.scalers["audio"].scale.item(), m.scalers["visual"].scale.item()]}
                yield f"e{epoch}s{k}"

    def snapshot(self) -> Snapshot:
        return {**module_snapshot(self.method, [self.method.optimizer], project_name), **quantities(self.values)}


class RecordingWriter:
    """TensorBoard ``SummaryWriter`` stand-in keeping the last value of each scalar tag."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def add_scalar(self, tag: str, value: Any, step: int) -> None:
        self.last[tag] = float(torch.as_tensor(value).detach())

    def add_scalars(self, tag: str, values: Mapping[str, Any], step: int) -> None:
        pass


class SilentLogger:
    def info(self, *args: Any, **kwargs: Any) -> None:
        pass


def official_batch(b: dict) -> tuple[torch.Tensor, ...]:
    return b["index"], b["audio"][:, 0], b["visual"], b["label"]


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        with cpu_patches(OPTIONAL):
            self.main, net = import_official(root, "run.CREMAD_main", "model.CREMAD_net")
        # utils/config.py names; --modulation_ends on the official 1-based epochs.
        self.cfgs = argparse.Namespace(dataset="CREMAD", modality="Multimodal", fusion_type="late_fusion",
                                       fusion="concat", methods="AGM", mode="train", alpha=ALPHA,
                                       modulation_starts=0, modulation_ends=MOD_END + 1, use_mgpu=False,
                                       EPOCHS=EPOCHS)
        self.model = net.GradMod(self.cfgs)
        load_mapped(self.model, project.method.state_dict(), official_name)
        # tasks/CREMAD_task.py build_optimizer: SGD(lr, momentum 0.9, weight_decay 1e-4), StepLR(70, 0.1).
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, 70, 0.1)
        self.batches = project.batches
        self.writer = RecordingWriter()

    def run(self, checkpoint: Checkpoint) -> None:
        score_a, score_v = 0.0, 0.0     # CREMAD_main's each_epoch_score_a/v before epoch 1
        for epoch in range(EPOCHS):
            loader = EpochLoader(self.batches[epoch * STEPS:(epoch + 1) * STEPS], epoch, checkpoint, official_batch)
            with cpu_patches():
                score_a, score_v = self.main.train(self.model, loader, self.optimizer, self.scheduler, SilentLogger(),
                                                   self.cfgs, epoch + 1, torch.device("cpu"), self.writer, score_a,
                                                   score_v, 1.0, 1.0)

    def snapshot(self) -> Snapshot:
        values = {"loss": self.writer.last["loss/step"], "scale": [self.model.scale_a, self.model.scale_v]}
        return {**module_snapshot(self.model, [self.optimizer], official_name), **quantities(values)}


# --- MSLR (methods == "MSLR", model AVClassifier_Sum) ----------------------------------------------------------------
# Ratios start moving after epoch 5 (memory 5); epoch 7 is past the window. One step per epoch keeps the record small.
MSLR_EPOCHS, MSLR_STEPS, MSLR_MOD_END = 8, 1, 6


# ``AVClassifier_Sum`` entry -> the project's ``MSLR`` entry.
sum_name = name_map((*AV_TRUNKS, ("audio_cls.", "model.head.heads.audio.", None),
                     ("visual_cls.", "model.head.heads.visual.", None)), "AVClassifier_Sum")


class MSLRProject:
    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("cremad", NUM_CLASSES)
        self.method = build_method(case.method, task, {**case.hparams, **overrides}, epochs=MSLR_EPOCHS, lr=LR)
        self.batches = av_batches(task, MSLR_EPOCHS * MSLR_STEPS, BATCH, seed=4)
        self.test = av_batches(task, 2, BATCH, seed=5)
        self.val = av_batches(task, 2, BATCH, seed=6)
        self.values: dict[str, Any] = {}

    def steps(self) -> Iterator[str]:
        m = self.method
        for epoch in range(MSLR_EPOCHS):
            for k in range(MSLR_STEPS):
                logs = m.update(self.batches[epoch * MSLR_STEPS + k], StepInfo(epoch, k, MSLR_STEPS,
                                                                                   MSLR_EPOCHS))
                self.values = {"loss": logs["loss"]}
                yield f"e{epoch}s{k}"
            diag = m.on_epoch_end(epoch, Loaders(train=None, val=self.val, test=self.test))
            self.values = {"acc": [diag["mslr_acc_audio"], diag["mslr_acc_visual"]],
                           "coeff": [diag["mslr_coeff_audio"], diag["mslr_coeff_visual"]]}
            yield f"e{epoch}.end"

    def snapshot(self) -> Snapshot:
        return {**module_snapshot(self.method, [self.method.optimizer]), **quantities(self.values)}


class MSLROfficial:
    def __init__(self, case: Case, root: Path, project: MSLRProject) -> None:
        with cpu_patches(OPTIONAL):
            self.main, net = import_official(root, "run.CREMAD_main", "model.CREMAD_net")
        self.cfgs = argparse.Namespace(dataset="CREMAD", modality="Multimodal", fusion_type="late_fusion",
                                       fusion="concat", methods="MSLR", mode="train", alpha=ALPHA,
                                       modulation_starts=0, modulation_ends=MSLR_MOD_END + 1, use_mgpu=False,
                                       EPOCHS=MSLR_EPOCHS, learning_rate=LR)
        self.model = net.AVClassifier_Sum(self.cfgs)
        load_mapped(self.model, project.method.state_dict(), sum_name)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, 70, 0.1)
        self.batches, self.test = project.batches, [official_batch(b) for b in project.test]
        self.writer = RecordingWriter()
        self.values: dict[str, Any] = {}

    def run(self, checkpoint: Checkpoint) -> None:
        def step_done(label: str) -> None:
            self.values = {"loss": self.writer.last["loss/step"]}
            checkpoint(label)

        # CREMAD_main's MSLR state and its end-of-epoch block (after test on the test split), repeated here.
        score_a, score_v, ratio_a, ratio_v, memory_a, memory_v = 0.0, 0.0, 1.0, 1.0, [], []
        device = torch.device("cpu")
        for epoch in range(MSLR_EPOCHS):
            loader = EpochLoader(self.batches[epoch * MSLR_STEPS:(epoch + 1) * MSLR_STEPS], epoch, step_done,
                                 official_batch)
            with cpu_patches():
                score_a, score_v = self.main.train(self.model, loader, self.optimizer, self.scheduler, SilentLogger(),
                                                   self.cfgs, epoch + 1, device, self.writer, score_a, score_v,
                                                   ratio_a, ratio_v)
                _, acc_a, acc_v, _, _ = self.main.test(self.model, self.test, SilentLogger(), self.cfgs, epoch + 1,
                                                       device, self.writer)
            if len(memory_a) < 5:
                memory_a.append(acc_a)
                memory_v.append(acc_v)
            else:
                ratio_a, ratio_v = acc_a / np.mean(memory_a), acc_v / np.mean(memory_v)
                memory_a, memory_v = [*memory_a[1:], acc_a], [*memory_v[1:], acc_v]
            self.values = {"acc": [acc_a, acc_v], "coeff": [0.9 * ratio_a, 1.1 * ratio_v]}
            checkpoint(f"e{epoch}.end")

    def snapshot(self) -> Snapshot:
        return {**module_snapshot(self.model, [self.optimizer], sum_name), **quantities(self.values)}


REPO = "lihong2303/AGM_ICCV2023"
COMMIT = "5a65542c70b1c7c15c5df291e77fa9cf2bbb9549"

CASES = [
    Case(name="agm", method="agm", hparams={"alpha": ALPHA, "mod_end": MOD_END}, repo=REPO, commit=COMMIT,
         entry="run/CREMAD_main.py train (--methods AGM, late_fusion); model/CREMAD_net.py GradMod",
         covers=f"{EPOCHS} epochs x {STEPS} steps (batch {BATCH}); modulation window official 1-based epochs "
                f"0-{MOD_END + 1} (project mod_end {MOD_END}), so epoch {MOD_END + 1} (0-based) runs past its end "
                f"with the last scales; hook scales and loss every step",
         project=Project, official=Official, notes=__doc__),
    Case(name="mslr_official_compat", method="mslr",
         hparams={"variant": "official_compat", "modulation_ends": MSLR_MOD_END}, repo=REPO, commit=COMMIT,
         entry="run/CREMAD_main.py train and test (--methods MSLR), CREMAD_main's MSLR block; model/CREMAD_net.py "
               "AVClassifier_Sum",
         covers=f"{MSLR_EPOCHS} epochs x {MSLR_STEPS} step (batch {BATCH}), unimodal test accuracies after every epoch "
                f"(2 batches); the 5-epoch memory fills, the ratios move from epoch 6 on; window official 1-based "
                f"epochs 0-{MSLR_MOD_END + 1} (project modulation_ends {MSLR_MOD_END}), so the last epoch is past it",
         project=MSLRProject, official=MSLROfficial,
         deviations={"eval_split": "val", "shared_accuracy": False, "modulation_ends": -1},
         notes=__doc__ + " MSLR: the harness repeats CREMAD_main's end-of-epoch block (test on the test split, the "
               "5-epoch accuracy memory, the ratios) after each official train epoch; --modulation_ends 7 instead of "
               "the default 20 so that a short run crosses the window's end."),
]
