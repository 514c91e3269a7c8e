"""AUG against GitHub njustkmg/NeurIPS25-AUG: ``train_CREMAD.py`` ``train_audio_video`` run unmodified on
``model/AudioVideo.py`` ``AVGBShareClassifier`` (default branch: ungated; commit 966dbf5: gated).

The official epoch function is called as released, once per epoch, on an in-memory loader in its batch format
(spectrogram (B, F, T), frames (B, 3, T, H, W), one-hot labels). Its ``__main__`` loop is not importable, so the
harness repeats only its ACA block after each epoch (``ratio_a > lam + 0.01`` -> ``add_layer(is_a=False)``,
``< lam - 0.01`` -> audio; ``check`` = 2, i.e. a 20-29-epoch run, so that the extra ``epoch == 0`` check is visible)
and skips ``val`` (eval mode, no state change) and ``StepLR(70)`` (constant lr this early). No check runs after the
last epoch (a documented project choice: the code would add a learner that is never trained). The code ran on
PyTorch 1.11, whose ``zero_grad()`` zero-fills gradients; the harness restores that default for the official side.
Loggers are stubbed: ``cfg['print_inteval']`` (the script's global config), a recording ``Averager`` (which yields the
per-step losses), printing to a buffer. Both sides draw each added learner from the same RNG seed.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

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
    name_map,
    patch,
    quantities,
    resnet_name,
)

EPOCHS, STEPS, BATCH = 3, 2, 8
CHECK = 2          # the official ``check``; the project's aug.aca_interval_epochs
LR, NUM_CLASSES, MERGE_ALPHA, LAM = 1e-3, 6, 0.4, 1.0
ACA_SEED = 1234


def next_layer(rest: str) -> str:
    """``k.<entry>`` of ``additional_layers_<a|v>`` -> the learner's layer k + 1 (layer 0 is ``embedding_<a|v>.0``)."""
    k, rest = rest.split(".", 1)
    return f"{int(k) + 1}.{rest}"


# ``AVGBShareClassifier`` entry -> the project's ``AUG`` entry.
official_name = name_map((("audio_encoder.audio_net.", "encoders.audio.trunk.", resnet_name),
                          ("video_encoder.video_net.", "encoders.visual.trunk.", resnet_name),
                          ("embedding_a.0.", "learners.audio.layers.0.", None),
                          ("additional_layers_a.", "learners.audio.layers.", next_layer),
                          ("embedding_v.0.", "learners.visual.layers.0.", None),
                          ("additional_layers_v.", "learners.visual.layers.", next_layer),
                          ("fc_out.", "head.", None), ("w_network.", "gate.net.", None)), "AVGBShareClassifier")


def ungated_name(name: str) -> str | None:
    """``official_name`` for a project without a gate: the official gate network has no counterpart."""
    return None if name.startswith("w_network.") else official_name(name)


class Project:
    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("cremad", NUM_CLASSES)
        self.method = build_method("aug", task, {**case.hparams, **overrides},
                                   epochs=EPOCHS, lr=LR)
        self.batches = av_batches(task, EPOCHS * STEPS, BATCH, seed=1)
        self.values: dict[str, Any] = {}

    def steps(self) -> Iterator[str]:
        m = self.method
        for epoch in range(EPOCHS):
            m.on_epoch_start(epoch, None)
            for k in range(STEPS):
                logs = m.update(self.batches[epoch * STEPS + k], StepInfo(epoch, k, STEPS, EPOCHS))
                self.values = {"loss": logs["loss"], "loss_audio": logs["loss_audio"],
                               "loss_visual": logs["loss_visual"]}
                if m.gate is not None:
                    self.values["gate_scores"] = m.running
                yield f"e{epoch}s{k}"
            if epoch < EPOCHS - 1:
                torch.manual_seed(ACA_SEED + epoch)
                diag = m.on_epoch_end(epoch, None)
                self.values = {"score_ratio": diag["score_ratio"], "extra_learners":
                               [diag["extra_learners/audio"], diag["extra_learners/visual"]]}
                yield f"e{epoch}.aca"

    def snapshot(self) -> Snapshot:
        return {**module_snapshot(self.method, [self.method.optimizer]), **quantities(self.values)}


def official_batch(b: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``CramedDataset``'s items: spectrogram (B, F, T), frames (B, 3, T, H, W), one-hot labels."""
    return b["audio"][:, 0], b["visual"], F.one_hot(b["label"], NUM_CLASSES).to(torch.float64)


class RecordingAverager:
    """``utils.utils.Averager`` stand-in that keeps the values added (the script's per-step losses)."""

    created: ClassVar[list[RecordingAverager]] = []

    def __init__(self) -> None:
        self.values: list[float] = []
        RecordingAverager.created.append(self)

    def add(self, x: float) -> None:
        self.values.append(x)

    def item(self) -> float:
        return sum(self.values) / max(len(self.values), 1)


def pytorch1_zero_grad() -> contextlib.AbstractContextManager:
    """PyTorch <= 1.13's ``Optimizer.zero_grad()`` default (zero-fill), which the released code ran with."""
    original = torch.optim.Optimizer.zero_grad

    def zero_fill(self: torch.optim.Optimizer, set_to_none: bool = False) -> None:
        original(self, set_to_none=set_to_none)

    return patch(torch.optim.Optimizer, "zero_grad", zero_fill)


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        with cpu_patches(("pandas",)):
            self.train, av = import_official(root, "train_CREMAD", "model.AudioVideo")
        self.model = av.AVGBShareClassifier({"fps": 1, "setting": {"num_class": NUM_CLASSES}})
        # The official side is gated when its commit's model is (966dbf5), whatever the project runs: with the gate
        # flipped off, the project has no gate weights to map and the official gate keeps its own initialisation.
        self.gated = hasattr(self.model, "w_network")
        load_mapped(self.model, project.method.state_dict(), official_name if project.method.hp.gate else ungated_name)
        if self.gated:
            gate = set(self.model.w_network.parameters())
            groups = [{"params": [p for p in self.model.parameters() if p not in gate], "lr": LR},
                      {"params": list(self.model.w_network.parameters()), "lr": LR / 10}]
        else:
            groups = [{"params": list(self.model.parameters())}]
        # train_CREMAD.py __main__: SGD(lr, momentum 0.9, weight_decay 'wc' 1e-4) from data/crema.json.
        self.optimizer = torch.optim.SGD(groups, lr=LR, momentum=0.9, weight_decay=1e-4)
        self.batches = project.batches
        self.values: dict[str, Any] = {}

    def run(self, checkpoint: Checkpoint) -> None:
        t = self.train
        t.cfg = {"print_inteval": 1}
        t.Averager = RecordingAverager
        t.s_a, t.s_v = 0.0, 0.0         # __main__'s initial running scores (read by the gated script only)

        def step_done(label: str) -> None:
            tl, ta, tv = RecordingAverager.created[-3:]
            self.values = {"loss": tl.values[-1], "loss_audio": ta.values[-1], "loss_visual": tv.values[-1]}
            if self.gated:
                self.values["gate_scores"] = [float(t.s_a), float(t.s_v)]
            checkpoint(label)

        for epoch in range(EPOCHS):
            loader = EpochLoader(self.batches[epoch * STEPS:(epoch + 1) * STEPS], epoch, step_done, official_batch)
            with cpu_patches(), pytorch1_zero_grad(), patch(sys, "stdout", io.StringIO()):
                self.model, ratio_a = t.train_audio_video(epoch, loader, self.model, self.optimizer, MERGE_ALPHA)
            if epoch < EPOCHS - 1:
                torch.manual_seed(ACA_SEED + epoch)
                if (epoch + 1) % CHECK == 0 or epoch == 0:
                    with cpu_patches():
                        if ratio_a > LAM + 0.01:
                            self.model.add_layer(is_a=False)
                        elif ratio_a < LAM - 0.01:
                            self.model.add_layer(is_a=True)
                self.values = {"score_ratio": float(ratio_a), "extra_learners":
                               [len(self.model.additional_layers_a), len(self.model.additional_layers_v)]}
                checkpoint(f"e{epoch}.aca")

    def snapshot(self) -> Snapshot:
        return {**module_snapshot(self.model, [self.optimizer], official_name), **quantities(self.values)}


REPO = "njustkmg/NeurIPS25-AUG"
COVERS = (f"{EPOCHS} epochs x {STEPS} steps (batch {BATCH}; audio step, visual step, gate step when gated); ACA "
          f"checks after epochs 0 and 1 (t_N = {CHECK}, plus the code's epoch-0 check); epoch 2 trains with the "
          f"added learners (residual loss, untrained added learners)")
PAPER_DEFAULTS = {"register_new_learners": True, "aca_rule": "difference", "aca_check_after_first_epoch": False,
                  "zero_grad_set_to_none": True}

CASES = [
    Case(name="aug_official_compat", method="aug",
         hparams={"variant": "official_compat", "aca_interval_epochs": CHECK}, repo=REPO,
         commit="841d079eff52a1f381d15da3a702ac8440e9db61",
         entry="train_CREMAD.py train_audio_video; model/AudioVideo.py AVGBShareClassifier (add_layer, classfier)",
         covers=COVERS, project=Project, official=Official, deviations=PAPER_DEFAULTS, notes=__doc__),
    Case(name="aug_official_gated", method="aug",
         hparams={"variant": "official_gated", "aca_interval_epochs": CHECK}, repo=REPO,
         commit="966dbf514c84763e229defcae66d59f1b12cddfc",
         entry="train_CREMAD.py train_audio_video (gated, lambda 0.2); model/AudioVideo.py AVGBShareClassifier "
               "(w_network)",
         covers=COVERS, project=Project, official=Official,
         deviations={**PAPER_DEFAULTS, "gate": False, "residual_lambda": 0.5}, notes=__doc__,
         folder="NeurIPS25-AUG-966dbf5"),
]
