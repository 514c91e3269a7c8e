"""ARL against GitHub shicaiwei123/ICCV2025-ARL: ``main_arl_variance.py`` ``train_epoch`` run unmodified on
``models/basic_model.py`` ``AVClassifier_AUXI_Weight`` (concat fusion, ``ConcatFusion_AUXI``; ``models/backbone.py``
``ResNet_weight`` encoders with ``GradScale`` at their outputs) wrapped in ``nn.DataParallel`` as ``main`` does (the
function reads ``model.module.args``).

The harness supplies an argparse-like namespace (the model's and the function's ``args`` are one object, as in
``main``), an in-memory loader in ``CramedDataset``'s format (spectrogram (B, F, T), frames (B, 3, T, H, W), labels)
and the official optimizer and ``MultiStepLR([70, 150], 0.1)`` (stepped at the start of each ``train_epoch``, so the
lr never changes within the run). ``valid`` is skipped (eval mode, no state change); the unimodal accuracies passed to
``train_epoch`` are ``main``'s initial zeros at epoch 0 and a nonzero stand-in afterwards (the project assumes a
nonzero unimodal accuracy after the first epoch). The audio half of the shared classifier's initial weight is scaled
by 10 (on both sides) so that the audio entropy share falls below the 0.3 floor and the visual one stays above it.
``--start 0`` puts the warm-up in epoch 0, so the run crosses from the warm-up into the ARL phase and, within it, an
epoch boundary.

Compared beside every tensor: the total loss (the tensor ``train_epoch`` calls ``backward`` on) and the three
cross-entropies every step; from the first ARL step on, the gradient weights ``GradScale`` applies
(``args.audio_weight`` / ``args.visual_weight``, the project's logged ``w_m``) and the ARL weights
softmax(T [d_v q_a, d_a q_v]) that ``train_epoch`` computes (the ``F.softmax`` call with ``--T``), against the
project's ``arl_weights(modality_statistics(z_uni))`` on the same step's unimodal logits. The released code computes
those weights but never assigns them, which is the project's ``official_code`` variant; flipping ``coefficients`` to
the paper's ``asymmetric`` applies them and must differ from the first ARL step on.

Workaround: ``GradScale.backward`` reads ``weight = ctx.saved_tensors`` (a one-tuple) and multiplies the gradient by
it, which raises ``TypeError`` under the project's PyTorch; the harness hands the unmodified ``backward`` a context
whose ``saved_tensors`` is the saved tensor itself. (``main`` also raises ``EOFError`` right after building the
model; the harness does not call ``main``.)
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

from baselines.arl import arl_weights, modality_statistics
from baselines.base import StepInfo
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
LR, NUM_CLASSES, GAMMA, T, START = 1e-3, 6, 4.0, 8.0, 0
# valid's unimodal accuracies after an epoch: any nonzero pair opens the ARL branch of train_epoch.
ACC_STAND_IN = 0.5
AUDIO_HEAD_SCALE = 10.0
LOSSES = ("loss", "loss_fused", "loss_audio", "loss_visual")


# ``AVClassifier_AUXI_Weight`` entry -> the project's ``ARL`` entry.
official_name = name_map((*AV_TRUNKS, FC_OUT), "AVClassifier_AUXI_Weight")


class Project(StepProject):
    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("cremad", NUM_CLASSES)
        method = build_method(case.method, task, {**case.hparams, **overrides}, epochs=EPOCHS, lr=LR)
        super().__init__(method, av_batches(task, EPOCHS * STEPS, BATCH, seed=5), EPOCHS, STEPS)
        with torch.no_grad():
            # A confident audio classifier: its entropy share (~0.1) falls below the 0.3 floor, the visual one's
            # does not, so both sides of the floor run at every ARL step (the official model loads these weights).
            start, end = method.model.head.bounds["audio"]
            method.model.head.fc.weight[:, start:end] *= AUDIO_HEAD_SCALE
        self.z_uni: dict[str, torch.Tensor] = {}
        forward_all = method.forward_all

        def recording_forward_all(batch: Mapping[str, torch.Tensor]) -> Any:
            z, z_uni = forward_all(batch)
            self.z_uni = z_uni
            return z, z_uni
        # The instance attribute shadows the method: the unimodal logits of each update, for the ARL weights.
        method.forward_all = recording_forward_all

    def steps(self) -> Iterator[str]:
        for epoch in range(self.epochs):
            for k in range(self.per_epoch):
                logs = self.method.update(self.batches[epoch * self.per_epoch + k],
                                          StepInfo(epoch, k, self.per_epoch, self.epochs))
                self.values = {key: logs[key] for key in LOSSES}
                if epoch > self.method.hp.start_epoch:
                    hp = self.method.hp
                    w, _, _ = arl_weights(modality_statistics(self.z_uni), hp.temperature, hp.entropy_floor)
                    self.values.update(w_audio=logs["w_audio"], w_visual=logs["w_visual"], arl_weights=w)
                yield f"e{epoch}s{k}"


def official_batch(b: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return b["audio"][:, 0], b["visual"], b["label"]


class _OneSaved:
    """A ``GradScale`` context whose ``saved_tensors`` is the one saved tensor (the released code indexes nothing)."""

    def __init__(self, ctx: Any) -> None:
        self.saved_tensors = ctx.saved_tensors[0]


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        with cpu_patches(("torch.utils.tensorboard", "skimage", "timm", "timm.models", "timm.models.layers")):
            self.main, basic, backbone = import_official(root, "main_arl_variance", "models.basic_model",
                                                         "models.backbone")
        self.args = argparse.Namespace(dataset="CREMAD", fusion_method="concat", modality="full", epochs=EPOCHS,
                                       gamma=GAMMA, T=T, start=START, current_epoch=0)
        self.net = basic.AVClassifier_AUXI_Weight(self.args)
        load_mapped(self.net, project.method.state_dict(), official_name)
        self.model = nn.DataParallel(self.net)
        # main_arl_variance.py: SGD(lr, momentum 0.9, weight_decay 1e-4), MultiStepLR(lr_decay_step [70, 150], 0.1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, [70, 150], 0.1)
        self.batches = project.batches
        self.grad_scale = backbone.GradScale
        self.calls: dict[str, list] = {}

    def run(self, checkpoint: Checkpoint) -> None:
        scale_backward = self.grad_scale.backward

        def backward(ctx: Any, grad_output: torch.Tensor) -> Any:
            return scale_backward(_OneSaved(ctx), grad_output)

        for epoch in range(EPOCHS):
            acc = ACC_STAND_IN if epoch else 0.0
            loader = EpochLoader(self.batches[epoch * STEPS:(epoch + 1) * STEPS], epoch, checkpoint, official_batch,
                                 lambda step: self.calls.clear())
            # stdout: the script's prints; stderr: its tqdm bars and F.softmax's implicit-dim warning.
            with cpu_patches(), patch(sys, "stdout", io.StringIO()), patch(sys, "stderr", io.StringIO()), \
                    patch(self.grad_scale, "backward", staticmethod(backward)), \
                    patch(nn.functional, "cross_entropy",
                          self.recording(nn.functional.cross_entropy, "cross_entropy")), \
                    patch(nn.functional, "softmax", self.recording(nn.functional.softmax, "softmax")), \
                    patch(torch.Tensor, "backward", self.recording_backward()):
                self.main.train_epoch(self.args, epoch, self.model, torch.device("cpu"), loader, self.optimizer,
                                      self.scheduler, acc, acc)

    def recording(self, original: Any, kind: str) -> Any:
        """Keeps each call's result of the step, under ``kind``."""
        def call(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            self.calls.setdefault(kind, []).append(out.detach().clone())
            return out
        return call

    def recording_backward(self) -> Any:
        original = torch.Tensor.backward

        def backward(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> None:
            self.calls["loss"] = [tensor.detach().clone()]
            if self.args.current_epoch > self.args.start:
                # the weights GradScale multiplies into this backward pass
                self.calls["w"] = [self.args.audio_weight, self.args.visual_weight]
            return original(tensor, *args, **kwargs)
        return backward

    def snapshot(self) -> Snapshot:
        # nn.CrossEntropyLoss calls F.cross_entropy for the visual, audio and fused losses, in that order;
        # train_epoch's first F.softmax of an ARL step is the ARL weights with --T (the second, without it, is only
        # printed).
        loss_visual, loss_audio, loss_fused = self.calls["cross_entropy"]
        values = {"loss": self.calls["loss"][0], "loss_fused": loss_fused, "loss_audio": loss_audio,
                  "loss_visual": loss_visual}
        if "w" in self.calls:
            values.update(w_audio=self.calls["w"][0], w_visual=self.calls["w"][1],
                          arl_weights=self.calls["softmax"][0])
        return {**module_snapshot(self.net, [self.optimizer], official_name), **quantities(values)}


REPO = "shicaiwei123/ICCV2025-ARL"
COMMIT = "358af4f6782781ac3821527beae3321e77f9d31e"
CASES = [
    Case(name="arl_official_code", method="arl",
         hparams={"variant": "official_code", "gamma": GAMMA, "temperature": T, "start_epoch": START},
         repo=REPO, commit=COMMIT,
         entry="main_arl_variance.py train_epoch (concat, --T 8, --gamma 4, --start 0); models/basic_model.py "
               "AVClassifier_AUXI_Weight, models/backbone.py ResNet_weight + GradScale, models/fusion_modules.py "
               "ConcatFusion_AUXI",
         covers=f"{EPOCHS} epochs x {STEPS} steps (batch {BATCH}): warm-up epoch 0 (L = CE + unimodal CEs, no "
                f"GradScale), ARL phase epochs 1-2 (gamma {GAMMA}, GradScale on both encoders) across an epoch "
                f"boundary; the ARL weights (T {T}) every ARL step, audio entropy share below the 0.3 floor and "
                f"visual above it; clip_grad_norm_(max_norm=40) binding every step; total and three CE losses every "
                "step",
         project=Project, official=Official, deviations={"coefficients": "asymmetric"}, notes=__doc__),
]
