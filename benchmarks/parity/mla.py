"""MLA against GitHub Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation: ``main.py`` ``train_epoch``
with ``gs_flag=True`` (``--lorb base``, ``--gs_flag``, concat fusion, CREMA-D) run unmodified on
``models/basic_model.py`` ``AVClassifier`` wrapped in ``nn.DataParallel`` as ``main`` does, with
``utils/utils.py`` ``GSPlugin`` as the gradient projector.

The harness supplies an argparse-like namespace, an in-memory loader in ``AVDataset``'s format (spectrogram
(B, F, T), frames (B, 3, T, H, W), label, index), the official SGD and StepLR, and PyTorch 1.8's ``zero_grad``
(zero-fill; requirements.txt pins 1.8.1). Importing ``main`` pulls in the CAV-MAE/M3AE/CLIP model files, whose
packages (timm, einops, ml_collections, torchaudio, pandas) the ``--lorb base`` path never uses: they are stubbed,
and ``transformers`` is imported before the stubs because its import probes torchaudio. ``GSPlugin`` builds its
projector with ``torch.cuda.FloatTensor``, here the working precision's CPU tensor type.

The projector ``GSPlugin.Pl`` and ``exp_count`` are compared with the project's ``P`` and ``turns``: the projection
looks up a parameter named ``module.weight`` in the bare ``fc_out`` Linear, so it never runs in the released code
and ``Pl`` stays the identity. After every step both sides also fuse the logits of one fixed evaluation batch in eval
mode (``q/fused``), the official side with ``calculate_gating_weights`` as ``valid`` does with ``--dynamic``.
"""

from __future__ import annotations

import argparse
import importlib
import io
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from baselines.base import StepInfo
from benchmarks.parity.aug import pytorch1_zero_grad
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

EPOCHS, STEPS, BATCH = 2, 2, 8
LR, NUM_CLASSES = 1e-3, 6
OPTIONAL = ("torch.utils.tensorboard", "einops", "ml_collections", "ml_collections.config_dict", "timm", "timm.data",
            "timm.models", "timm.models.layers", "timm.models.vision_transformer", "torchaudio", "pandas")


# ``AVClassifier`` entry -> the project's ``MLA`` entry.
official_name = name_map((("audio_net.", "encoders.audio.trunk.", resnet_name),
                          ("visual_net.", "encoders.visual.trunk.", resnet_name),
                          ("fusion_module.fc_out.", "head.", None)), "AVClassifier")


class Project:
    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("cremad", NUM_CLASSES)
        self.method = build_method(case.method, task, {**case.hparams, **overrides}, epochs=EPOCHS, lr=LR)
        self.batches = av_batches(task, EPOCHS * STEPS + 1, BATCH, seed=2)
        self.eval_batch = self.batches[-1]

    def steps(self) -> Iterator[str]:
        for epoch in range(EPOCHS):
            for k in range(STEPS):
                self.method.update(self.batches[epoch * STEPS + k], StepInfo(epoch, k, STEPS, EPOCHS))
                yield f"e{epoch}s{k}"

    def snapshot(self) -> Snapshot:
        self.method.eval()
        fused = self.method.predict(self.eval_batch).fused
        self.method.train()
        return {**module_snapshot(self.method, [self.method.optimizer]), **quantities({"fused": fused})}


def official_batch(b: dict) -> tuple[torch.Tensor, ...]:
    return b["audio"][:, 0], b["visual"], b["label"], b["index"]


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        importlib.import_module("transformers")
        with cpu_patches(OPTIONAL):
            self.main, basic, utils = import_official(root, "main", "models.basic_model", "utils.utils")
        self.args = argparse.Namespace(dataset="CREMAD", fusion_method="concat", modulation="Normal", gs_flag=True,
                                       lorb="base", modal3=False, clip=False, dynamic=True)
        self.net = basic.AVClassifier(self.args)
        load_mapped(self.net, project.method.state_dict(), official_name)
        self.model = nn.DataParallel(self.net)
        with patch(torch.cuda, "FloatTensor", torch.DoubleTensor):
            self.gs = utils.GSPlugin()
        # main.py: SGD(lr, momentum 0.9, weight_decay 1e-4), StepLR(lr_decay_step, lr_decay_ratio)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, 70, 0.1)
        self.batches = project.batches
        self.eval_batch = official_batch(project.eval_batch)

    def run(self, checkpoint: Checkpoint) -> None:
        for epoch in range(EPOCHS):
            loader = EpochLoader(self.batches[epoch * STEPS:(epoch + 1) * STEPS], epoch, checkpoint, official_batch)
            with cpu_patches(), pytorch1_zero_grad(), patch(sys, "stdout", io.StringIO()):
                # main(av_alpha=0.55) passes 0.55 to train_epoch; it only weights the logged loss
                self.main.train_epoch(self.args, epoch, self.model, torch.device("cpu"), loader, self.optimizer,
                                      self.scheduler, gs_plugin=self.gs, gs_flag=True, av_alpha=0.55)

    @torch.no_grad()
    def fused(self) -> torch.Tensor:
        """``valid``'s ``gs_flag`` and ``--dynamic`` branch on the evaluation batch."""
        spec, image, _, _ = self.eval_batch
        self.model.eval()
        a, v = self.model(spec.unsqueeze(1), image)
        out_a, out_v = self.net.fusion_module.fc_out(a), self.net.fusion_module.fc_out(v)
        w_a, w_v = self.main.calculate_gating_weights(out_a, out_v)
        self.model.train()
        return out_a * w_a + out_v * w_v

    def snapshot(self) -> Snapshot:
        state = {"buffer/P": self.gs.Pl, "buffer/turns": torch.tensor(self.gs.exp_count)}
        return {**module_snapshot(self.net, [self.optimizer], official_name), **state,
                **quantities({"fused": self.fused()})}


CASES = [
    Case(name="mla_official_compat", method="mla", hparams={"variant": "official_compat"},
         repo="Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation",
         commit="ab6c184579f9ff390e9c9b8216c9900c2a43545b",
         entry="main.py train_epoch (gs_flag, --lorb base, concat) and calculate_gating_weights (--dynamic); "
               "models/basic_model.py AVClassifier; utils/utils.py GSPlugin",
         covers=f"{EPOCHS} epochs x {STEPS} steps (batch {BATCH}), each step an audio then a visual turn (two "
                f"optimizer steps, zero-filled gradients in between); projector, turn count and the entropy-gated "
                f"fusion of a fixed evaluation batch every step",
         deviations={"projection": True, "entropy_gate": "per_sample", "zero_grad_set_to_none": True},
         project=Project, official=Official, notes=__doc__),
]
