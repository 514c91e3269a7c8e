"""PMR against GitHub fanyunfeng-bit/Modal-Imbalance-PMR: ``main_Prototype_grad.py`` ``train_epoch`` and
``calculate_prototype`` run unmodified on ``models/basic_model.py`` ``AVClassifier`` (concat fusion, the official
``models/backbone.py`` ResNet-18 with its compress/recover bottleneck).

The harness plays ``main``'s loop: prototypes from the training loader before epoch 0, ``train_epoch`` per epoch,
prototypes again after each epoch (the momentum branch from epoch 1 on), with the official SGD (momentum 0.9, weight
decay 1e-4) and StepLR (70, 0.1). ``calculate_prototype`` sees the epoch's own batches, as the project's pass does
(the official loader would reshuffle); with fewer than 10 batches both use the first one. Inputs are 193 x 193, the
smallest size the bottleneck accepts, and every batch holds each of the 6 CREMA-D classes once, because the official
prototype divides by the class count (a class absent from the first batch would make its prototype NaN). The
prototype-confidence ratio is read from the two ``EU_dist`` results of each step (wrapped, not changed) and the
batch's labels. One step per epoch (each epoch costs a prototype pass as well); the modulation window is epochs 0-2 of
4, so the run crosses its end.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from baselines.base import Loaders, StepInfo
from benchmarks.parity.core import (
    FC_OUT,
    Case,
    Checkpoint,
    EpochLoader,
    Snapshot,
    av_batches,
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
from core.data import ModalitySpec, TaskSpec

EPOCHS, STEPS, NUM_CLASSES, SIZE = 4, 1, 6, 193
LR, ALPHA, MU, MOD_END = 0.05, 1.0, 0.2, 2
PROTOTYPES = ("prototypes_audio", "prototypes_visual")


def trunk_name(name: str) -> str:
    """Official backbone entry -> ``ResNetTrunk`` entry with ``CompressRecover`` inserted as stage 2."""
    for official, stage in (("compress_layer.", "stages.2.compress."), ("recover_layer.", "stages.2.recover.")):
        if name.startswith(official):
            return stage + name[len(official):]
    mapped = resnet_name(name)
    for layer in (3, 4):   # layer3/layer4 sit after the bottleneck
        if name.startswith(f"layer{layer}."):
            return mapped.replace(f"stages.{layer - 1}.", f"stages.{layer}.", 1)
    return mapped


# ``AVClassifier`` entry -> the project's ``PMR`` entry.
official_name = name_map((("audio_net.", "model.encoders.audio.trunk.", trunk_name),
                          ("visual_net.", "model.encoders.visual.trunk.", trunk_name), FC_OUT), "AVClassifier")


def batches(task: TaskSpec) -> list[dict[str, torch.Tensor]]:
    out = av_batches(task, EPOCHS * STEPS, NUM_CLASSES, seed=3)
    gen = torch.Generator().manual_seed(7)
    for i, b in enumerate(out):
        b["label"] = torch.randperm(NUM_CLASSES, generator=gen)
        # A class-dependent offset makes one modality's features separable, hence its prototypes the confident ones:
        # audio in epoch 0, visual afterwards, so PMR's term goes to visual first and to audio later.
        m = "audio" if i < STEPS else "visual"
        b[m] += 2.0 * (b["label"] - 2.5).reshape(-1, *[1] * (b[m].dim() - 1))
    return out


class Project:
    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = TaskSpec(dataset="cremad", num_classes=NUM_CLASSES,
                        modalities=(ModalitySpec("audio", "spectrogram", (1, SIZE, SIZE)),
                                    ModalitySpec("visual", "frames", (3, 1, SIZE, SIZE))))
        self.method = build_method(case.method, task, {**case.hparams, **overrides}, epochs=EPOCHS, lr=LR)
        self.batches = batches(task)
        self.values: dict[str, Any] = {}

    def steps(self) -> Iterator[str]:
        for epoch in range(EPOCHS):
            loaders = Loaders(train=self.batches[epoch * STEPS:(epoch + 1) * STEPS])
            self.method.on_epoch_start(epoch, loaders)
            for k in range(STEPS):
                logs = self.method.update(loaders.train[k], StepInfo(epoch, k, STEPS, EPOCHS))
                self.values = {"proto_ratio": logs["proto_ratio"]} if "proto_ratio" in logs else {}
                yield f"e{epoch}s{k}"
            if epoch < EPOCHS - 1:
                self.method.on_epoch_end(epoch, loaders)

    def snapshot(self) -> Snapshot:
        return {**module_snapshot(self.method, [self.method.optimizer]), **quantities(self.values)}


def official_batch(b: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return b["audio"][:, 0], b["visual"], b["label"]


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        with cpu_patches(("torch.utils.tensorboard",)):
            self.main, basic = import_official(root, "main_Prototype_grad", "models.basic_model")
        self.args = argparse.Namespace(dataset="CREMAD", fusion_method="concat", modulation="Proto", alpha=ALPHA,
                                       modulation_starts=0, modulation_ends=MOD_END, momentum_coef=MU,
                                       embed_dim=512, optimizer="SGD")
        self.net = basic.AVClassifier(self.args)
        source = project.method.state_dict()
        self.rename = official_name
        if project.method.hp.backbone != "compress":
            # The flipped plain backbone has no bottleneck: entries that line up are copied and compared, the rest
            # keep the official init and count as one-sided (a structural difference).
            shapes = {name: value.shape for name, value in self.net.state_dict().items()}
            self.rename = lambda n: m if (m := official_name(n)) in source and source[m].shape == shapes[n] else None
        load_mapped(self.net, source, self.rename)
        # main: SGD(lr, momentum 0.9, weight_decay 1e-4), StepLR(lr_decay_step 70, lr_decay_ratio 0.1)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, 70, 0.1)
        self.batches = project.batches
        self.protos: tuple[torch.Tensor, torch.Tensor] | None = None
        self.sims: list[torch.Tensor] = []
        self.labels = torch.zeros(0, dtype=torch.long)
        self.epoch = 0

    def eu_dist(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """The official ``EU_dist``, keeping its result for the step's confidence ratio."""
        d = self.original_eu_dist(x1, x2)
        self.sims = [*self.sims[-1:], -d.detach()]
        return d

    def run(self, checkpoint: Checkpoint) -> None:
        self.original_eu_dist = self.main.EU_dist
        for epoch in range(EPOCHS):
            self.epoch = epoch
            own = self.batches[epoch * STEPS:(epoch + 1) * STEPS]
            plain = [official_batch(b) for b in own]
            with cpu_patches(), patch(sys, "stdout", io.StringIO()), patch(self.main, "EU_dist", self.eu_dist):
                if self.protos is None:
                    self.protos = self.main.calculate_prototype(self.args, self.net, plain, "cpu", 0)
                loader = EpochLoader(own, epoch, checkpoint, official_batch, self.record)
                self.main.train_epoch(self.args, epoch, self.net, "cpu", loader, self.optimizer, self.scheduler,
                                      *self.protos)
                if epoch < EPOCHS - 1:
                    self.protos = self.main.calculate_prototype(self.args, self.net, plain, "cpu", epoch,
                                                                *self.protos)

    def record(self, step: int) -> None:
        self.labels = self.batches[step]["label"]

    def snapshot(self) -> Snapshot:
        values = {}
        if self.epoch <= MOD_END:
            audio, visual = (torch.softmax(s, dim=1).gather(1, self.labels[:, None]).sum() for s in self.sims)
            values["proto_ratio"] = audio / visual
        protos = {f"buffer/{name}": p for name, p in zip(PROTOTYPES, self.protos)}
        return {**module_snapshot(self.net, [self.optimizer], self.rename), **protos,
                "buffer/prototypes_ready": torch.tensor(True), **quantities(values)}


REPO = "fanyunfeng-bit/Modal-Imbalance-PMR"
COMMIT = "3615e48983555089b0e693380087617c3797a641"
COVERS = (f"{EPOCHS} epochs x {STEPS} steps (batch {NUM_CLASSES}, lr {LR}); prototypes before epoch 0, replaced "
          f"after epoch 0 and momentum-smoothed (mu {MU}) after epoch 1; modulation window epochs 0-{MOD_END}, so "
          f"epoch {MOD_END + 1} runs past its end; prototype-confidence ratio every step inside the window")

CASES = [
    Case(name="pmr_official_compat", method="pmr",
         hparams={"variant": "official_compat", "alpha": ALPHA, "mu": MU, "mod_end": MOD_END, "head": "concat"},
         repo=REPO, commit=COMMIT,
         entry="main_Prototype_grad.py train_epoch, calculate_prototype (--modulation Proto, concat); "
               "models/basic_model.py AVClassifier (models/backbone.py resnet18, compress=True)",
         covers=COVERS, project=Project, official=Official, deviations={"backbone": "resnet18"}, notes=__doc__),
]
