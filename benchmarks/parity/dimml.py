"""DI-MML stage 1 against GitHub fanyunfeng-bit/DI-MML: ``main_CFT.py`` ``train_epoch`` and ``get_indices`` run
unmodified on ``models/basic_model.py`` ``AClassifier``/``VClassifier`` and the shared ``nn.Linear`` head, with
``loss/contrast_loss.py`` ``SupConLoss`` as the DUC loss.

``train_epoch`` switches the DUC loss on at a hard-coded ``epoch >= 20`` and ``main`` computes the effective
dimensions at ``epoch == 20``; the harness runs the official epochs 19 and 20 as the project's epochs 0 and 1 with
``duc_start=1`` (the epoch number is used for nothing else), so the run crosses the DUC start, and ``stage2_epochs=0``
keeps both project epochs in stage 1 (stage 2, the separate script ``main_CFT_stage2.py``, is the case
``dimml_stage2`` below). Like
``main``, ``get_indices`` reads the training rows one at a time (batch size 1, in eval mode); its ``.to('cuda')``
calls are no-ops here. The stubbed packages (librosa, TensorBoard) belong to the dataset modules and logging that the
training step does not use. The effective dimensions are compared as ``q/duc_dims``; the project's untrained fusion
head and stage flags have no official counterpart in stage 1 and are left out.

The official side runs with the official CREMA-D configuration's values, not the project's, so that a project default
that drifts from them shows: ``OFFICIAL_DUC_TEMPERATURE`` (``run.sh``: ``main_CFT.py --dataset CREMAD --temperature
50``) and ``OFFICIAL_WEIGHT`` (``main_CFT.py``'s ``--weight`` default 1, which ``run.sh`` keeps), passed to
``train_epoch`` as ``main`` passes ``args.temperature`` and ``args.weight``; the project side runs with its resolved
CREMA-D defaults (``duc_temperature``, ``align_weight``). Only the schedule (``duc_start``, the epochs) is the case's.
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

from baselines.base import Loaders, StepInfo
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
STAGE2_EPOCHS = 2
LR, NUM_CLASSES, DUC_EPOCH = 1e-3, 6, 20
# The official CREMA-D settings (fanyunfeng-bit/DI-MML @83b9b7a: run.sh and the README's CREMA-D training commands,
# which agree, and the scripts' argparse defaults):
# main_CFT.py --temperature 50 (DUC) and --weight 1 (default); main_CFT_stage2.py --temperature 1 (certainty weighting).
OFFICIAL_DUC_TEMPERATURE, OFFICIAL_WEIGHT, OFFICIAL_FUSION_TEMPERATURE = 50.0, 1.0, 1.0
FEATURES = 512
OPTIONAL = ("torch.utils.tensorboard", "librosa")


# Entry of the official ``{model1, model2, classifier}`` (stage 1) or ``{model1, model2, fusion_module}`` (stage 2)
# -> the project's ``DIMML`` entry.
official_name = name_map((("model1.net.", "encoders.audio.trunk.", resnet_name),
                          ("model1.classifier.", "heads.audio.", None),
                          ("model2.net.", "encoders.visual.trunk.", resnet_name),
                          ("model2.classifier.", "heads.visual.", None), ("classifier.", "shared.", None),
                          ("fusion_module.fc_out.", "fusion.fc.", None)), "DI-MML")


def project_name(name: str) -> str | None:
    """The stage-2 fusion head and the stage flags have no stage-1 counterpart; ``duc_dims`` is compared as q."""
    return None if name.startswith("fusion.") or name in ("duc_dims", "duc_ready", "stage2") else name


class TrainRows:
    """The training rows for the project's effective-dimension pass (``BatchLoader.derived``)."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def derived(self, batch_size: int) -> list[dict]:
        return self.batches


class Project:
    epochs = EPOCHS

    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        self.task = av_task("cremad", NUM_CLASSES)
        self.method = build_method(case.method, self.task, {**case.hparams, **overrides}, epochs=self.epochs, lr=LR)
        self.batches = av_batches(self.task, STEPS, BATCH, seed=2)   # the training set, one pass per epoch

    def steps(self) -> Iterator[str]:
        for epoch in range(EPOCHS):
            self.method.on_epoch_start(epoch, Loaders(TrainRows(self.batches)))
            for k in range(STEPS):
                self.method.update(self.batches[k], StepInfo(epoch, k, STEPS, EPOCHS))
                yield f"e{epoch}s{k}"

    def snapshot(self) -> Snapshot:
        dims = self.method.duc_dims.to(torch.get_default_dtype())
        return {**module_snapshot(self.method, [self.method.optimizer], project_name),
                **quantities({"duc_dims": dims})}


def official_batch(b: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return b["audio"][:, 0], b["visual"], b["label"]


def _to_except_cuda(original: Any) -> Any:
    def to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args and args[0] == "cuda":
            return self
        return original(self, *args, **kwargs)
    return to


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        with cpu_patches(OPTIONAL):
            self.main, basic = import_official(root, "main_CFT", "models.basic_model")
        self.args = argparse.Namespace(dataset="CREMAD", embed_dim=FEATURES)
        self.net = nn.ModuleDict({"model1": basic.AClassifier(self.args), "model2": basic.VClassifier(self.args),
                                  "classifier": nn.Linear(FEATURES, NUM_CLASSES)})
        load_mapped(self.net, project.method.state_dict(), official_name)
        # main: SGD over model1 + model2 + classifier (lr, momentum 0.9, weight_decay 1e-4), StepLR(70, 0.1)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, 70, 0.1)
        self.batches = project.batches
        self.indices: tuple[list[int], list[int]] = ([], [])
        self.duc_ready = False   # get_indices has run
        # main passes args.temperature and args.weight: the official values, not the project's.
        self.temperature = OFFICIAL_DUC_TEMPERATURE
        self.weight = OFFICIAL_WEIGHT

    def rows(self) -> list[tuple[torch.Tensor, ...]]:
        """``main``'s ``indice_dataloader``: the training rows at batch size 1."""
        return [tuple(x[i:i + 1] for x in official_batch(b)) for b in self.batches for i in range(BATCH)]

    def run(self, checkpoint: Checkpoint) -> None:
        m1, m2, head = self.net["model1"], self.net["model2"], self.net["classifier"]
        for epoch in range(EPOCHS):
            official_epoch = DUC_EPOCH - 1 + epoch
            loader = EpochLoader(self.batches, epoch, checkpoint, official_batch)
            with cpu_patches(), patch(sys, "stdout", io.StringIO()):
                if official_epoch == DUC_EPOCH:
                    with patch(torch.Tensor, "to", _to_except_cuda(torch.Tensor.to)):
                        self.indices = self.main.get_indices(self.args, m1, m2, torch.device("cpu"), 256,
                                                             self.rows())
                    self.duc_ready = True
                self.main.train_epoch(self.args, official_epoch, m1, m2, head, torch.device("cpu"), loader,
                                      self.optimizer, self.scheduler, *self.indices, self.temperature, self.weight)

    def snapshot(self) -> Snapshot:
        dims = torch.zeros(2, FEATURES)
        for row, chosen in enumerate(self.indices):
            dims[row, chosen] = 1.0
        return {**module_snapshot(self.net, [self.optimizer], official_name), **quantities({"duc_dims": dims})}



STAGE2_NOTES = """DI-MML stage 2 against ``main_CFT_stage2.py`` ``train_combine_classifier_epoch`` and
``valid_combine_classifier``, run unmodified after the stage-1 run of the case ``dimml`` (``main_CFT.py``, the
official epochs 19 and 20). The project runs both stages in one run: 4 epochs with ``stage2_epochs=2``, so its
epoch hook switches to stage 2 at epoch 2. The official side hands the stage-1 state over as the two scripts do:
``main_CFT.py`` saves ``{'model': model1.state_dict()}`` and ``{'model': model2.state_dict()}`` (here into memory,
after the last stage-1 epoch), and the stage-2 harness builds the stage-2 script's own ``AClassifier``,
``VClassifier`` and ``AVClassifier(fusion_method='concat')``, loads the two saved state dicts as its ``main`` does,
and passes ``.net`` (encoders), ``.classifier`` (unimodal heads) and ``AVClassifier.fusion_module`` (``ConcatFusion``)
with the stage-2 optimizer (SGD over the fusion module only, lr 1e-3, momentum 0.9, weight_decay 1e-4, StepLR(70,
0.1)). The fusion module starts from the project's initial concat head (weights follow ``model.init`` in the project,
a documented deviation; the script's ``weight_init`` draw is replaced by the mapped weights).

Stage-2 comparisons: every encoder parameter and BN buffer and every unimodal head after each step (the official
encoders run in eval mode under ``no_grad`` and are never stepped, so these checks show the project's frozen parts do
not move), the fusion head and its optimizer state, the step's fusion-head cross entropy (``q/loss``, read from the
script's one ``nn.CrossEntropyLoss`` call per step), and after each stage-2 epoch ``valid_combine_classifier`` on a
held-out batch: the audio, visual and fusion-head logits and the certainty-weighted fused logits are read from its
``nn.Softmax(dim=1)`` calls (out1, out2, out3, out, in that order) and compared with the project's ``predict``
(``q/valid_fused``, ``q/valid_audio``, ``q/valid_visual``) and its fusion head (``q/valid_fusion_head``); the returned
accuracy is ``q/acc_fused``; ``args.temperature`` is the official CREMA-D value ``OFFICIAL_FUSION_TEMPERATURE``
(``run.sh``: ``main_CFT_stage2.py --temperature 1``), not the project's ``fusion_temperature``. The shared
head W_s and the stage-1 optimizer state, which the stage-2 script no longer holds (``main_CFT.py`` does not save
W_s), are compared with the stage-1 run's final values, which nothing changes afterwards. The stage flags are
compared as buffers: ``duc_ready`` (``get_indices`` has run) and ``stage2`` (the stage-2 script runs). The fusion
head has no official counterpart before the switch and is left out there.

No knob to flip: the documented deviations that touch stage 2 are not knobs (the stage split of one run; the stage-2
lr following the run's schedule instead of restarting at 1e-3, which with no lr milestone is 1e-3 on both sides
here), and the project's CREMA-D ``fusion_temperature`` default is the official CREMA-D value (a drifted one, e.g. 3,
the AVE value, first differs at e2valid in ``q/valid_fused``).
"""


def stage2_project_name(stage2: bool):
    """The fusion head exists on the official side only once the stage-2 script runs; ``duc_dims`` is a q."""
    def rename(name: str) -> str | None:
        return None if name == "duc_dims" or (name.startswith("fusion.") and not stage2) else name
    return rename


class Stage2Project(Project):
    """Both stages in one run: stage 1 as in ``Project``, then ``STAGE2_EPOCHS`` epochs of the fusion head, each
    followed by ``predict`` on a held-out batch (the runner's train/eval switches around them)."""

    epochs = EPOCHS + STAGE2_EPOCHS

    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        super().__init__(case, overrides)
        self.held_out = av_batches(self.task, 1, BATCH, seed=3)[0]
        self.values: dict[str, Any] = {}

    def steps(self) -> Iterator[str]:
        method = self.method
        for epoch in range(self.epochs):
            method.train()
            method.on_epoch_start(epoch, Loaders(TrainRows(self.batches)))
            method.train()
            for k in range(STEPS):
                logs = method.update(self.batches[k], StepInfo(epoch, k, STEPS, self.epochs))
                self.values = {"loss": logs["loss"]} if bool(method.stage2) else {}
                yield f"e{epoch}s{k}"
            if bool(method.stage2):
                method.eval()
                with torch.no_grad():
                    pred = method.predict(self.held_out)
                    fusion_head = method.fusion(method.features(self.held_out))[0]
                y = self.held_out["label"]
                self.values = {"valid_fused": pred.fused, "valid_audio": pred.per_modality["audio"],
                               "valid_visual": pred.per_modality["visual"], "valid_fusion_head": fusion_head,
                               "acc_fused": (pred.fused.argmax(1) == y).double().mean()}
                yield f"e{epoch}valid"

    def snapshot(self) -> Snapshot:
        method = self.method
        rename = stage2_project_name(bool(method.stage2))
        dims = method.duc_dims.to(torch.get_default_dtype())
        return {**module_snapshot(method, [method.optimizer, method.fusion_optimizer], rename),
                **quantities({"duc_dims": dims, **self.values})}


class Stage2Official(Official):
    def __init__(self, case: Case, root: Path, project: Stage2Project) -> None:
        super().__init__(case, root, project)
        with cpu_patches(OPTIONAL):
            [self.stage2_main] = import_official(root, "main_CFT_stage2")
        self.stage2_args = argparse.Namespace(dataset="CREMAD", embed_dim=FEATURES, fusion_method="concat",
                                              learning_rate=LR, temperature=OFFICIAL_FUSION_TEMPERATURE)
        # Built now from the project's initial concat head; the stage-2 script builds it at its start, untrained.
        self.fusion_model = self.stage2_main.AVClassifier(self.stage2_args)
        load_mapped(nn.ModuleDict({"fusion_module": self.fusion_model.fusion_module}), project.method.state_dict(),
                    official_name)
        self.held_out = project.held_out
        self.stage2: nn.ModuleDict | None = None
        self.stage2_optimizer: torch.optim.Optimizer | None = None
        self.values: dict[str, Any] = {}

    def handoff(self) -> dict[str, dict]:
        """``main_CFT.py``'s saved checkpoints of model1 and model2, read back as ``main_CFT_stage2.py`` reads them."""
        saved = {}
        for name in ("model1", "model2"):
            buffer = io.BytesIO()
            torch.save({"model": self.net[name].state_dict()}, buffer)
            buffer.seek(0)
            saved[name] = torch.load(buffer)
        return saved

    def run(self, checkpoint: Checkpoint) -> None:
        super().run(checkpoint)
        saved = self.handoff()
        args, main = self.stage2_args, self.stage2_main
        # main_CFT_stage2.main: the stage-1 weights into fresh AClassifier / VClassifier, the concat fusion module of
        # AVClassifier, SGD over the fusion module only, StepLR(lr_decay_step 70, 0.1).
        audio_net, visual_net = main.AClassifier(args), main.VClassifier(args)
        audio_net.load_state_dict(saved["model1"]["model"])
        visual_net.load_state_dict(saved["model2"]["model"])
        classifier = self.fusion_model.fusion_module
        self.stage2 = nn.ModuleDict({"model1": audio_net, "model2": visual_net, "fusion_module": classifier})
        self.stage2_optimizer = torch.optim.SGD(classifier.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        scheduler = torch.optim.lr_scheduler.StepLR(self.stage2_optimizer, 70, 0.1)
        nets = (audio_net.net, visual_net.net, classifier, audio_net.classifier, visual_net.classifier)
        device = torch.device("cpu")
        for epoch in range(STAGE2_EPOCHS):
            loader = EpochLoader(self.batches, EPOCHS + epoch, checkpoint, official_batch)
            with cpu_patches(), patch(sys, "stdout", io.StringIO()), \
                    patch(nn.functional, "cross_entropy", self.recording_cross_entropy()):
                main.train_combine_classifier_epoch(args, epoch, *nets, device, loader, self.stage2_optimizer,
                                                    scheduler)
            calls: list[tuple[torch.Tensor, int]] = []
            with cpu_patches(), patch(sys, "stdout", io.StringIO()), \
                    patch(nn.functional, "softmax", self.recording_softmax(calls)):
                acc = main.valid_combine_classifier(args, *nets, device, [official_batch(self.held_out)])
            out1, out2, out3, out = (z for z, dim in calls if dim == 1)
            self.values = {"valid_fused": out, "valid_audio": out1, "valid_visual": out2, "valid_fusion_head": out3,
                           "acc_fused": acc}
            checkpoint(f"e{EPOCHS + epoch}valid")

    def recording_cross_entropy(self):
        """``nn.CrossEntropyLoss`` calls ``F.cross_entropy`` once per stage-2 step, on the fusion head's logits."""
        original = nn.functional.cross_entropy

        def cross_entropy(*args: Any, **kwargs: Any) -> torch.Tensor:
            loss = original(*args, **kwargs)
            self.values = {"loss": float(loss.detach())}
            return loss
        return cross_entropy

    @staticmethod
    def recording_softmax(calls: list[tuple[torch.Tensor, int]]):
        """``nn.Softmax`` calls ``F.softmax(input, dim)``: ``valid_combine_classifier`` applies it (dim 1) to out1,
        out2, out3, then (dim 0) to the certainties, then (dim 1) to the fused logits ``out``."""
        original = nn.functional.softmax

        def softmax(input: torch.Tensor, dim: int | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
            calls.append((input.detach().clone(), dim))
            return original(input, dim, *args, **kwargs)
        return softmax

    def snapshot(self) -> Snapshot:
        # Stage 1's objects first: after the switch they still hold W_s and the stage-1 optimizer state, while the
        # stage-2 script's copies of the encoders and heads (and its fusion module) replace theirs.
        out = super().snapshot()
        if self.stage2 is not None:
            out.update(module_snapshot(self.stage2, [self.stage2_optimizer], official_name))
        flags = {"duc_ready": self.duc_ready, "stage2": self.stage2 is not None}
        return {**out, **{f"buffer/{k}": torch.tensor(v) for k, v in flags.items()}, **quantities(self.values)}

CASES = [
    Case(name="dimml", method="dimml", hparams={"duc_start": 1, "stage2_epochs": 0}, repo="fanyunfeng-bit/DI-MML",
         commit="83b9b7acc47ac9f1666e72ed984eacd18cfd3d5c",
         entry="main_CFT.py train_epoch and get_indices; models/basic_model.py AClassifier, VClassifier; "
               "loss/contrast_loss.py SupConLoss",
         covers=f"stage 1, {EPOCHS} epochs x {STEPS} steps (batch {BATCH}): the official epochs {DUC_EPOCH - 1} and "
                f"{DUC_EPOCH}, i.e. the effective-dimension pass and the DUC loss switching on at epoch 1",
         project=Project, official=Official, notes=__doc__),
    Case(name="dimml_stage2", method="dimml", hparams={"duc_start": 1, "stage2_epochs": STAGE2_EPOCHS},
         repo="fanyunfeng-bit/DI-MML", commit="83b9b7acc47ac9f1666e72ed984eacd18cfd3d5c",
         entry="main_CFT.py train_epoch and get_indices, then main_CFT_stage2.py train_combine_classifier_epoch "
               "and valid_combine_classifier; models/basic_model.py AClassifier, VClassifier, AVClassifier "
               "(ConcatFusion)",
         covers=f"both stages in one run, {EPOCHS + STAGE2_EPOCHS} epochs x {STEPS} steps (batch {BATCH}): stage 1 as "
                f"in dimml (official epochs {DUC_EPOCH - 1}, {DUC_EPOCH}), the switch to stage 2 at epoch {EPOCHS} "
                f"(stage-1 weights handed over as main_CFT.py saves them), {STAGE2_EPOCHS} stage-2 epochs of the "
                f"concat fusion head with frozen eval-mode encoders, and valid_combine_classifier's "
                f"certainty-weighted prediction on a held-out batch after each",
         project=Stage2Project, official=Stage2Official, notes=STAGE2_NOTES),
]
