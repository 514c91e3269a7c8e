"""BalanceBenchmark trainers against GitHub GeWu-Lab/BalanceBenchmark: the method's ``<Method>Trainer.train_loop``
(which calls its ``training_step``) run unmodified on ``balancemm/models/avclassify_model.py``
``BaseClassifierModel`` (ResNet-18 encoders from ``balancemm/encoders``, concat fusion).

BalanceBenchmark builds on Lightning Fabric and several dataset and profiling packages the project does not install;
only their names are needed at import time (annotations, base classes never instantiated on this path), so packages
that do not import are replaced by permissive stubs for the import, as is ``balancemm.evaluation.complex`` (FLOPs
hooks that star-import ``thop``). The trainer object is made without ``BaseTrainer.__init__`` (it sets up Fabric);
the harness gives it the attributes ``train_loop`` reads: a no-op Fabric callback hub, a one-step gradient
accumulation, no progress bar and a metrics stub. Both sides use SGD (momentum 0.9, weight decay 1e-4): the optimizer
is the runner's, not the method's.

Workarounds for the released code, set on the model instance only: ``BaseClassifierModel.encoder_process`` calls
``self.resnet``, which the class does not define (its method is ``resnet_process``), and the trainers call
``model.Unimodality_Calculate()`` and use its result as the unimodal-logit dict, while the defined
``unimodality_calculate`` returns the tuple (encoder results, unimodal logits, predictions): ``resnet`` is bound to
``resnet_process`` and ``Unimodality_Calculate`` to the tuple's unimodal-logit dict.

CML draws its modality removal order with ``random.shuffle`` at each epoch start and removes from the list's end; the
project draws the order from (seed, epoch) and removes from the front, so the official shuffle is replaced by one that
puts the project's epoch order, reversed, in place.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import io
import random
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baselines.amco import class_mask, mask_ratio
from baselines.base import Loaders, StepInfo
from benchmarks.parity.core import (
    FC_OUT,
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
from core.data import seed_for

EPOCHS, STEPS, BATCH = 2, 2, 8
LR, NUM_CLASSES = 1e-2, 6
OPTIONAL = ("lightning", "lightning.fabric", "lightning.fabric.loggers", "lightning.fabric.accelerators",
            "lightning.fabric.strategies", "lightning.fabric.wrappers", "lightning.pytorch",
            "lightning.pytorch.loggers", "lightning.pytorch.utilities", "lightning.pytorch.utilities.model_helpers",
            "lightning_utilities", "dynaconf", "torchaudio", "pandas", "h5py",
            # ReLearning_trainer.py imports ``models.avclassify_model`` as a top-level package, which does not exist.
            "models", "models.avclassify_model")
ALWAYS_STUBBED = ("balancemm.evaluation.complex",)


class Permissive(types.ModuleType):
    """Stand-in for a package that is only named: every attribute is another stand-in, callable and subscriptable,
    so that annotations such as ``Optional[L.fabric.utilities.types.LRScheduler]`` evaluate. It carries a module spec
    because installed libraries probe optional packages with ``importlib.util.find_spec``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return Permissive(f"{self.__name__}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return Permissive(f"{self.__name__}()")

    def __getitem__(self, key: Any) -> Any:
        return self

    def __mro_entries__(self, bases: tuple) -> tuple:
        return (object,)


@contextmanager
def stubbed_imports() -> Iterator[None]:
    added = []
    for name in OPTIONAL:
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = Permissive(name)
            added.append(name)
    for name in ALWAYS_STUBBED:
        sys.modules[name] = Permissive(name)
        added.append(name)
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


# ``BaseClassifierModel`` entry -> the project's concat-head entry.
official_name = name_map((("modality_encoder.audio.", "model.encoders.audio.trunk.", resnet_name),
                          ("modality_encoder.visual.", "model.encoders.visual.trunk.", resnet_name), FC_OUT,
                          ("linear_star.", "linear_star.", None)), "BaseClassifierModel")


def teacher_name(modality: str) -> Callable[[str], str | None]:
    """A one-encoder ``BaseClassifierModel`` entry -> the project's UMT teacher entry."""
    return name_map(((f"modality_encoder.{modality}.", f"teachers.{modality}.encoder.trunk.", resnet_name),
                     ("fusion_module.fc_out.", f"teachers.{modality}.head.", None)), "teacher")


class Project:
    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("cremad", NUM_CLASSES)
        self.method = build_method(case.method, task, {**case.hparams, **overrides}, epochs=EPOCHS,
                                   lr=LR)
        self.batches = av_batches(task, EPOCHS * STEPS, BATCHES.get(case.method, BATCH),
                                  seed=BATCH_SEED.get(case.name, 3))
        self.logs: list[dict[str, float]] = []
        if case.method == "umt":
            # The distillation phase only: BB loads teachers from separate unimodal runs.
            self.method.teachers_ready.fill_(True)

    def steps(self) -> Iterator[str]:
        self.method.train()
        for epoch in range(EPOCHS):
            self.method.on_epoch_start(epoch, None)   # none of these methods reads the loaders here
            for k in range(STEPS):
                self.logs.append(self.method.update(self.batches[epoch * STEPS + k], StepInfo(epoch, k, STEPS, EPOCHS)))
                yield f"e{epoch}s{k}"

    def snapshot(self) -> Snapshot:
        # Project-only bookkeeping: AMCo's dependence flags are a local of AMCoTrainer.train_loop (they act through
        # the masked logits, hence through every parameter), UMT's teachers_ready has no official counterpart.
        return {k: v for k, v in module_snapshot(self.method, [self.method.optimizer]).items()
                if k not in ("buffer/dependent", "buffer/teachers_ready")}


def amco_mask(method: Any, epoch: int, step: int) -> Any:
    """The class mask the project's AMCo draws at this step, as the numpy vector AMCoTrainer shuffles in place."""
    if method.name != "amco":
        return None
    gen = torch.Generator().manual_seed(seed_for(method.ctx.train_hp.seed, epoch, step, "amco_mask"))
    ratio = mask_ratio(epoch, step, method.hp.eps)
    return class_mask(method.task.num_classes, ratio, gen).numpy()


_expand = torch.Tensor.expand


def keep_row(self: torch.Tensor, *sizes: Any) -> torch.Tensor:
    """``Tensor.expand`` except that AMCoTrainer's ``mask_t.expand(2, -1)`` of a (1, K) mask keeps it (1, K)."""
    if sizes == (2, -1) and self.dim() == 2 and self.shape[0] == 1:
        return self
    return _expand(self, *sizes)


class Metrics:
    """``BatchMetricsCalculator`` stand-in: train-set metrics are logging only."""

    def __init__(self, *args: Any) -> None:
        pass

    def update(self, **kwargs: Any) -> None:
        pass

    def compute_metrics(self) -> dict:
        return {}


class Hub:
    """Fabric's callback hub with no callbacks."""

    def call(self, *args: Any, **kwargs: Any) -> None:
        pass


def bb_encoder(modality: str) -> dict:
    return {"name": "ResNet18", "if_pretrain": False, "pretrain_path": "", "modality": modality}


def bb_model(cls: type, fusion: str = "concat") -> Any:
    """The two-modality classifier (``fusion``: BB's fusion module name) with the workarounds of the module
    docstring."""
    with patch(sys, "stdout", io.StringIO()):
        model = cls({"n_classes": NUM_CLASSES, "fusion": fusion, "device": " ",
                     "encoders": {"audio": bb_encoder("audio"), "visual": bb_encoder("visual")},
                     "modality_size": {"audio": 512, "visual": 512}})
    model.resnet = model.resnet_process
    model.Unimodality_Calculate = lambda: model.unimodality_calculate()[1]
    return model


def bb_trainer(cls: type, settings: Mapping[str, Any]) -> Any:
    """A BB trainer made without ``BaseTrainer.__init__`` (Fabric, loggers): ``settings`` (its trainer_config block
    and what ``__init__`` would set) on top of a fresh loop's bookkeeping, without a progress bar."""
    trainer = cls.__new__(cls)
    for key, value in {"should_stop": False, "global_step": 0, "grad_accum_steps": 1, "_current_train_return": None,
                       **settings}.items():
        setattr(trainer, key, value)
    trainer.progbar_wrapper = lambda iterable, total, **kwargs: iterable
    trainer._format_iterable = lambda *args: None
    return trainer


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        trainer_module, method_dict, model_class = TRAINERS[case.method]
        with stubbed_imports(), cpu_patches(), patch(sys, "stdout", io.StringIO()):
            trainer_mod, model_mod = import_official(root, f"balancemm.trainer.{trainer_module}",
                                                     "balancemm.models.avclassify_model")
        cls = getattr(trainer_mod, trainer_module.replace("_trainer", "Trainer"))
        self.trainer = bb_trainer(cls, {**method_dict, "fabric": Hub(), "PrecisionCalculatorType": Metrics})
        self.model = bb_model(getattr(model_mod, model_class))
        load_mapped(self.model, project.method.state_dict(), official_name)
        self.teachers = {}
        if case.method == "umt":
            # UMTTrainer.__init__ loads each unimodal teacher from a finished unimodal run as a one-encoder
            # BaseClassifierModel (then MultiModalParallel on two GPUs); here they start from the project's teachers.
            for m in ("audio", "visual"):
                with patch(sys, "stdout", io.StringIO()):
                    teacher = model_mod.BaseClassifierModel({
                        "n_classes": NUM_CLASSES, "fusion": "concat", "device": " ",
                        "encoders": {m: bb_encoder(m)}, "modality_size": {m: 512}})
                teacher.resnet = teacher.resnet_process
                load_mapped(teacher, project.method.state_dict(), teacher_name(m))
                self.teachers[m] = teacher
            self.trainer.loaded_model = self.teachers
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.batches = project.batches
        self.order = getattr(project.method, "removal_order", None)
        self.masks = [amco_mask(project.method, e, k) for e in range(EPOCHS) for k in range(STEPS)]
        if case.method == "amco":
            self.check_mask_ratio(project.method.hp.eps)

    def check_mask_ratio(self, eps: float) -> None:
        """Compare the mask ratio pt AMCoTrainer passes to training_step at every step with the project's schedule: the
        mask counts agree whenever int(pt * K) does, which a drifted eps can keep for the few steps covered."""
        official_step, ratios = self.trainer.training_step, [mask_ratio(e, k, eps) for e in range(EPOCHS)
                                                                  for k in range(STEPS)]

        def training_step(*args: Any, pt: float, **kwargs: Any) -> Any:
            expected = ratios.pop(0)
            if abs(pt - expected) > 1e-12:
                raise RuntimeError(f"AMCo's mask ratio: the official schedule gives {pt!r}, the project {expected!r}")
            return official_step(*args, pt=pt, **kwargs)

        self.trainer.training_step = training_step

    def shuffle_mask(self, x: np.ndarray) -> None:
        """AMCoTrainer's ``np.random.shuffle`` of the class mask it built: the project's draw replaces only the order.
        How many classes the official schedule masks stays the official code's, and must agree."""
        mask = self.masks.pop(0)
        if sorted(x.tolist()) != sorted(mask.tolist()):
            raise RuntimeError(f"AMCo's class mask: the official schedule masks {int((x == 0).sum())} of {len(x)} "
                               f"classes, the project {int((mask == 0).sum())}")
        x[:] = mask

    def run(self, checkpoint: Checkpoint) -> None:
        self.model.train()
        for epoch in range(EPOCHS):
            self.trainer.current_epoch = epoch
            loader = EpochLoader(self.batches[epoch * STEPS:(epoch + 1) * STEPS], epoch, checkpoint, dict)
            order = list(reversed(self.order(epoch))) if self.order else None
            with cpu_patches(), patch(random, "shuffle", lambda x, order=order: x.__setitem__(slice(None), order)), \
                    patch(np.random, "shuffle", self.shuffle_mask), \
                    patch(torch.Tensor, "expand", keep_row):
                self.trainer.train_loop(self.model, self.optimizer, loader)

    def snapshot(self) -> Snapshot:
        out = module_snapshot(self.model, [self.optimizer], official_name)
        for m, teacher in self.teachers.items():
            out.update(module_snapshot(teacher, [], teacher_name(m)))
        return out


# G-Blending: 3 epochs with estimations at epochs 0 and 2 (super_epoch 2, BB's smallest with distinct first and last
# estimation epochs; BB trains each scratch copy for super_epoch epochs, so estimate_epochs = super_epoch). One held-out
# batch against two training batches, so that BB's batch-sum losses differ from per-sample means in their ratio
# (with as many held-out as training batches, the sums scale g and O alike and the normalised weights would agree).
GB_EPOCHS, GB_SUPER, GB_VAL = 3, 2, 1
GB_HEADS = {"audio": "audio", "visual": "visual", "output": "fused"}

# Per method: the trainer module and the trainer_config.yaml entries its train_loop reads.
TRAINERS = {"mbsd": ("MBSD_trainer", {"modulation_starts": 0, "modulation_ends": 80}, "BaseClassifierModel"),
            "cml": ("CML_trainer", {"modulation_starts": 0, "modulation_ends": 80, "lam": 0.1}, "BaseClassifierModel"),
            "umt": ("UMT_trainer", {"modulation_starts": 0, "modulation_ends": 80, "scaling": 10},
                    "BaseClassifierModel"),
            "gblending": ("GBlending_trainer", {"method": "online", "modulation_starts": 0, "modulation_ends": 80,
                                                "super_epoch": GB_SUPER, "modality": 2}, "BaseClassifierModel"),
            "amco": ("AMCo_trainer", {"alpha": 0.1, "method": "None", "modulation_starts": 0, "modulation_ends": 80,
                                      "sigma": 0.5, "U": 512, "eps": 0.3, "modality": 2}, "BaseClassifierAMCoModel")}
# AMCoTrainer expands its class mask to shape (2, K) before multiplying it into (B, K) logits, so the released code
# runs only with batches of 2 (or 1), and batch-normalising 1x1 stage-4 maps over 2 samples is so badly conditioned
# that float64 rounding grows to 1e-7 within two steps (MBSD, which matches at batch 8, departs the same way at batch
# 2). The official run therefore keeps the mask at (1, K), which broadcasts over any batch (``keep_row``).
BATCHES: dict[str, int] = {}
# CML's confidence penalty is clamped at 0 and stays there on most random batches at initialisation; these batches make
# it active at step e0s1.
BATCH_SEED = {"cml": 5}
AMCO_NOTES = """
AMCo: the default variant (linear_star applied) is the official behaviour. BaseClassifierAMCoModel.forward returns
linear_star's output as the training output (unimodal_result['output']), so linear_star is trained; the variant
bb_compat (linear_star unused) differs from the official code at the first step.
"""
REPO = "GeWu-Lab/BalanceBenchmark"
COMMIT = "4c1482fca5aaa8d4278af8e26020daa039e3ccf3"



class Pass:
    """The training split of one epoch for the project's scratch passes: every pass serves that epoch's batches, as
    the official estimation iterates the same ``train_loader`` as the epoch's training."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def extra_pass(self, tag: int, max_steps: int = 0) -> Iterator[dict]:
        return iter(self.batches)


class GBlendingProject(Project):
    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("cremad", NUM_CLASSES)
        self.method = build_method(case.method, task, {**case.hparams, **overrides}, epochs=GB_EPOCHS, lr=LR)
        batches = av_batches(task, GB_EPOCHS * STEPS + GB_VAL, BATCH, seed=3)
        self.batches, self.val = batches[:GB_EPOCHS * STEPS], batches[GB_EPOCHS * STEPS:]

    def steps(self) -> Iterator[str]:
        m = self.method
        for epoch in range(GB_EPOCHS):
            part = self.batches[epoch * STEPS:(epoch + 1) * STEPS]
            m.train()
            # BB's held-out set (its "validation" is the test split; official_compat reads test).
            m.on_epoch_start(epoch, Loaders(train=Pass(part), test=self.val))  # type: ignore[arg-type]
            if epoch % GB_SUPER == 0:
                yield f"e{epoch}w"
            m.train()
            for k in range(STEPS):
                m.update(part[k], StepInfo(epoch, k, STEPS, GB_EPOCHS))
                yield f"e{epoch}s{k}"

    def snapshot(self) -> Snapshot:
        # The blend weights are compared as q/w_<head>; BB keeps them in a local of fit, not in the model.
        out = {k: v for k, v in module_snapshot(self.method, [self.method.optimizer]).items() if k != "buffer/blend"}
        return {**out, **quantities({f"w_{k}": w for k, w in self.method.weights().items()})}


class SilentLogger:
    def info(self, *args: Any, **kwargs: Any) -> None:
        pass


class GBlendingOfficial(Official):
    """``GBlendingTrainer.fit``'s epoch loop, which needs Fabric: at every epoch divisible by super_epoch
    ``super_epoch_origin`` on a scratch copy of the model (BB's ``temp_model``, a second ``create_model``, loaded from
    the model at each estimation) and an SGD optimizer reset to its initial state dict, then ``train_loop`` with the
    weights. fit's epoch-wise LR scheduler is left out (constant LR on both sides)."""

    def __init__(self, case: Case, root: Path, project: GBlendingProject) -> None:
        super().__init__(case, root, project)
        self.temp_model = bb_model(type(self.model))
        self.temp_optimizer = torch.optim.SGD(self.temp_model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.temp_origin = self.temp_optimizer.state_dict()
        self.val = project.val
        self.weights: dict[str, float] = {}

    def run(self, checkpoint: Checkpoint) -> None:
        for epoch in range(GB_EPOCHS):
            self.trainer.current_epoch = epoch
            part = self.batches[epoch * STEPS:(epoch + 1) * STEPS]
            with cpu_patches(), patch(sys, "stdout", io.StringIO()):
                if epoch % self.trainer.super_epoch == 0:
                    self.model.train()
                    self.weights = self.trainer.super_epoch_origin(
                        self.model, self.temp_model, float("inf"), [dict(b) for b in part],
                        [dict(b) for b in self.val], self.temp_optimizer, SilentLogger(), self.temp_origin)
                    checkpoint(f"e{epoch}w")
                self.model.train()
                loader = EpochLoader(part, epoch, checkpoint, dict)
                self.trainer.train_loop(self.model, self.optimizer, loader, weights=self.weights)

    def snapshot(self) -> Snapshot:
        return {**super().snapshot(), **quantities({f"w_{GB_HEADS[k]}": w for k, w in self.weights.items()})}


GBLENDING_NOTES = """
G-Blending: the variant official_compat (loss_reduction=sum, interval_start=first_epoch) is BB's:
GBlendingTrainer.super_epoch_origin sums batch-mean losses over batches and measures from the end of the first scratch
epoch. BB's fit (Fabric) is replaced by its epoch loop in the harness (GBlendingOfficial);
both sides estimate on the same held-out batches (BB passes its val_loader, the test split for CREMA-D; the project
always uses the validation split) and train each scratch copy on the epoch's training batches. Not exercised here:
scratch_lr=base (the lr is constant on both sides) and the sum form's dropped partial batches (every batch, held-out
included, has the same 8 rows); crafted-tensor tests pin those.
"""

CASES = [
    Case(name="mbsd", method="mbsd", hparams={}, repo=REPO, commit=COMMIT,
         entry="balancemm/trainer/MBSD_trainer.py MBSDTrainer.train_loop/training_step; "
               "balancemm/models/avclassify_model.py BaseClassifierModel (concat)",
         covers=f"{EPOCHS} epochs x {STEPS} steps (batch {BATCH}), inside trainer_config's modulation window "
                "(epochs 0-80), two-modality branch; every parameter, BN buffer and momentum buffer each step",
         project=Project, official=Official, notes=__doc__),
    Case(name="cml", method="cml", hparams={}, repo=REPO, commit=COMMIT,
         entry="balancemm/trainer/CML_trainer.py CMLTrainer.train_loop/training_step; "
               "balancemm/models/avclassify_model.py BaseClassifierModel (concat)",
         covers=f"{EPOCHS} epochs x {STEPS} steps (batch {BATCH}), inside the modulation window (epochs 0-80), "
                "a new removal order each epoch, the confidence penalty active (> 0) at e0s1; every parameter, BN "
                "buffer and momentum buffer each step",
         project=Project, official=Official, notes=__doc__),
    Case(name="amco", method="amco", hparams={}, repo=REPO, commit=COMMIT,
         entry="balancemm/trainer/AMCo_trainer.py AMCoTrainer.train_loop/training_step; "
               "balancemm/models/avclassify_model.py BaseClassifierAMCoModel (concat)",
         covers=f"{EPOCHS} epochs x {STEPS} steps (batch {BATCH}): mask ratio 0 in epoch 0 and 0.5 at e1s1 with visual "
                "flagged dependent at e1s0, so the mask acts at e1s1; dependence "
                "flags reset each epoch; every parameter, BN buffer and momentum buffer each step",
         project=Project, official=Official, notes=__doc__ + AMCO_NOTES),
    Case(name="umt_bb_compat", method="umt", hparams={"variant": "bb_compat"}, repo=REPO, commit=COMMIT,
         deviations={"teacher_mode": "eval"},
         entry="balancemm/trainer/UMT_trainer.py UMTTrainer.train_loop/training_step; "
               "balancemm/models/avclassify_model.py BaseClassifierModel (concat; one-encoder teachers)",
         covers=f"the distillation phase: {EPOCHS} epochs x {STEPS} steps (batch {BATCH}) with teachers in train mode "
                "(their BN statistics move); student and teacher parameters, buffers, momentum buffers each step",
         project=Project, official=Official, notes=__doc__),
    Case(name="gblending_official_compat", method="gblending",
         hparams={"variant": "official_compat", "super_epoch": GB_SUPER, "estimate_epochs": GB_SUPER},
         repo=REPO, commit=COMMIT, deviations={"loss_reduction": "mean"},
         entry="balancemm/trainer/GBlending_trainer.py GBlendingTrainer.super_epoch_origin/train_loop/training_step; "
               "balancemm/models/avclassify_model.py BaseClassifierModel (concat)",
         covers=f"{GB_EPOCHS} epochs x {STEPS} steps (batch {BATCH}), super_epoch {GB_SUPER}: weight estimations at "
                "epochs 0 and 2 (3 heads x 2 scratch epochs each, held-out losses after the first and last), the "
                "blend weights (q/w_*) after each estimation and every step; every parameter, BN buffer and "
                "momentum buffer each step",
         project=GBlendingProject, official=GBlendingOfficial, notes=__doc__ + GBLENDING_NOTES),
]
