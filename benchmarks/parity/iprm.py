"""IPRM against GitHub njustkmg/IJCAI25-IPRM: ``main_av.py`` ``train_epoch`` and ``valid`` run unmodified on
``models/models.py`` ``Mixup_AVClassifier`` (two ResNet-18s, ``head_audio``, ``head_video``, ``head_mixup``), as
``main`` calls them: one ``train_epoch`` then one ``valid`` per epoch.

The harness supplies an argparse-like namespace, in-memory loaders in ``cremad_dataset``'s format (spectrogram
(B, F, T), frames (B, 3, T, H, W), labels), the official optimizer and ``StepLR(70, 0.1)`` (never reached). The
mixup weights live in ``main_av``'s module-level lists (``lam_a_list`` ... ``lam_hat_v_list``); the module is
imported afresh for every run, so each run starts from empty lists as the script does, and the lists carry over from
one epoch to the next. Their last entries are compared with the project's ``lam`` / ``lam_hat`` buffers. The
per-step losses are read from the three ``cross_entropy`` calls of a step (audio, visual, mixup). ``valid`` returns
accuracies only; its fused, audio and visual rows are read from its ``np.argmax`` calls (three per sample, in that
order) and compared with the project's ``predict`` on the same held-out batch, which checks that prediction uses
the last probe's weights ``l``. ``pandas`` and ``cv2`` (dataset modules only) are stubbed.

No knob to flip: IPRM's documented departures change no two-modality step. The weights are buffers instead of
module-level lists (storage only, compared here entry for entry), the 0/0 guard only acts when both KLs are exactly 0
(never on these batches), ``F.normalize`` equals the plain division for nonzero features, and the trimodal items
concern ``main_trimodal.py``. Its one knob, ``alpha``, is the official value 0.8 (``--alpha 0.8`` in the README
commands); 0.5 instead first shows at e0s1 (the first probe starts at 1/2 either way).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from baselines.base import StepInfo
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

EPOCHS, STEPS, BATCH = 2, 3, 8
LR, NUM_CLASSES, ALPHA = 1e-2, 6, 0.8
LOSSES = ("loss_audio", "loss_visual", "loss_mixup")
PREDICTIONS = ("valid_fused", "valid_audio", "valid_visual")


# ``Mixup_AVClassifier`` entry -> the project's ``IPRM`` entry.
official_name = name_map((("audio_net.", "encoders.audio.trunk.", resnet_name),
                          ("visual_net.", "encoders.visual.trunk.", resnet_name),
                          ("head_audio.", "uni_heads.audio.", None), ("head_video.", "uni_heads.visual.", None),
                          ("head_mixup.", "mixup_heads.audio+visual.", None)), "Mixup_AVClassifier")


class Project(StepProject):
    logged = LOSSES

    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("cremad", NUM_CLASSES)
        method = build_method(case.method, task, {**case.hparams, **overrides}, epochs=EPOCHS, lr=LR)
        super().__init__(method, av_batches(task, EPOCHS * STEPS, BATCH, seed=5), EPOCHS, STEPS)
        self.held_out = av_batches(task, 1, BATCH, seed=6)[0]

    def steps(self) -> Iterator[str]:
        for epoch in range(EPOCHS):
            self.method.train()
            for k in range(STEPS):
                logs = self.method.update(self.batches[epoch * STEPS + k], StepInfo(epoch, k, STEPS, EPOCHS))
                self.values = {key: logs[key] for key in LOSSES}
                yield f"e{epoch}s{k}"
            self.method.eval()
            with torch.no_grad():
                pred = self.method.predict(self.held_out)
            fused, audio, visual = pred.fused, pred.per_modality["audio"], pred.per_modality["visual"]
            y = self.held_out["label"]
            self.values = {"valid_fused": fused, "valid_audio": audio, "valid_visual": visual,
                           **{f"acc_{name}": (z.argmax(1) == y).double().mean()
                              for name, z in (("fused", fused), ("audio", audio), ("visual", visual))}}
            yield f"e{epoch}valid"


def official_batch(b: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return b["audio"][:, 0], b["visual"], b["label"]


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        with cpu_patches(("pandas", "cv2")):
            self.main, models = import_official(root, "main_av", "models.models")
        self.args = argparse.Namespace(dataset="CREMAD", n_classes=NUM_CLASSES, alpha=ALPHA)
        self.net = models.Mixup_AVClassifier(self.args)
        load_mapped(self.net, project.method.state_dict(), official_name)
        # main_av.py: SGD(lr, momentum 0.9, weight_decay 1e-4), StepLR(lr_decay_step 70, 0.1)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, 70, 0.1)
        self.batches, self.held_out = project.batches, project.held_out
        self.values: dict[str, Any] = {}

    def run(self, checkpoint: Checkpoint) -> None:
        device = torch.device("cpu")
        for epoch in range(EPOCHS):
            loader = EpochLoader(self.batches[epoch * STEPS:(epoch + 1) * STEPS], epoch, checkpoint, official_batch)
            # stdout: the script's prints; stderr: its tqdm bars.
            with cpu_patches(), patch(sys, "stdout", io.StringIO()), patch(sys, "stderr", io.StringIO()), \
                    patch(nn.functional, "cross_entropy", self.recording_cross_entropy()):
                self.main.train_epoch(self.args, epoch, self.net, device, loader, self.optimizer, self.scheduler)
            rows: list[np.ndarray] = []
            with cpu_patches(), patch(sys, "stdout", io.StringIO()), patch(sys, "stderr", io.StringIO()), \
                    patch(np, "argmax", self.recording_argmax(rows)):
                accuracies = self.main.valid(self.args, self.net, device, [official_batch(self.held_out)])
            self.values = {name: torch.from_numpy(np.stack(rows[i::3])) for i, name in enumerate(PREDICTIONS)}
            self.values.update(zip(("acc_fused", "acc_audio", "acc_visual"), accuracies))
            checkpoint(f"e{epoch}valid")

    def recording_cross_entropy(self):
        """``nn.CrossEntropyLoss`` calls ``F.cross_entropy``: audio, visual, then mixup in every step."""
        original = nn.functional.cross_entropy
        calls = []

        def cross_entropy(*args: Any, **kwargs: Any) -> torch.Tensor:
            loss = original(*args, **kwargs)
            calls.append(float(loss.detach()))
            if len(calls) % 3 == 0:
                self.values = dict(zip(LOSSES, calls[-3:]))
            return loss
        return cross_entropy

    @staticmethod
    def recording_argmax(rows: list[np.ndarray]):
        """``valid`` takes ``np.argmax`` of each sample's fused, audio and visual row, in that order."""
        original = np.argmax

        def argmax(a: Any, *args: Any, **kwargs: Any) -> Any:
            rows.append(np.array(a, copy=True))
            return original(a, *args, **kwargs)
        return argmax

    def snapshot(self) -> Snapshot:
        main = self.main
        weights = {"lam": (main.lam_a_list[-1], main.lam_v_list[-1]),
                   "lam_hat": (main.lam_hat_a_list[-1], main.lam_hat_v_list[-1])}
        buffers = {f"buffer/{name}": torch.tensor([[float(a), float(v)]]) for name, (a, v) in weights.items()}
        return {**module_snapshot(self.net, [self.optimizer], official_name), **buffers, **quantities(self.values)}


REPO = "njustkmg/IJCAI25-IPRM"
COMMIT = "0bb457fe69320948bf37061c836b516bbcb236e9"
CASES = [
    Case(name="iprm", method="iprm", hparams={"alpha": ALPHA}, repo=REPO, commit=COMMIT,
         entry="main_av.py train_epoch / valid (slerp, compute_kl_divergence); models/models.py Mixup_AVClassifier",
         covers=f"{EPOCHS} epochs x {STEPS} steps (batch {BATCH}), alpha {ALPHA}: every step's probe (EMA of the "
                f"module-level weight lists, first step at 1/2), KL-rebalanced weights and the geodesic-mixup loss; "
                f"valid after each epoch (fused, audio, visual logits at the last probe's weights, accuracies); the "
                f"weight lists carried across the epoch boundary",
         project=Project, official=Official, notes=__doc__),
]
