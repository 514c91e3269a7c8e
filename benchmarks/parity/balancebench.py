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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baselines.amco import class_mask, mask_ratio
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


def official_name(name: str) -> str:
    """``BaseClassifierModel`` entry -> the project's concat-head entry."""
    for m in ("audio", "visual"):
        prefix = f"modality_encoder.{m}."
        if name.startswith(prefix):
            return f"model.encoders.{m}.trunk." + resnet_name(name[len(prefix):])
    if name.startswith("fusion_module.fc_out."):
        return "model.head.fc." + name[len("fusion_module.fc_out."):]
    if name.startswith("linear_star."):
        return name
    raise KeyError(f"unmapped BaseClassifierModel entry {name!r}")


def teacher_name(modality: str) -> Any:
    """A one-encoder ``BaseClassifierModel`` entry -> the project's UMT teacher entry."""
    def rename(name: str) -> str:
        prefix = f"modality_encoder.{modality}."
        if name.startswith(prefix):
            return f"teachers.{modality}.encoder.trunk." + resnet_name(name[len(prefix):])
        if name.startswith("fusion_module.fc_out."):
            return f"teachers.{modality}.head." + name[len("fusion_module.fc_out."):]
        raise KeyError(f"unmapped teacher entry {name!r}")
    return rename


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


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        trainer_module, method_dict, model_class = TRAINERS[case.method]
        with stubbed_imports(), cpu_patches(), patch(sys, "stdout", io.StringIO()):
            trainer_mod, model_mod = import_official(root, f"balancemm.trainer.{trainer_module}",
                                                     "balancemm.models.avclassify_model")
        cls = getattr(trainer_mod, trainer_module.replace("_trainer", "Trainer"))
        self.trainer = cls.__new__(cls)
        for key, value in method_dict.items():
            setattr(self.trainer, key, value)
        self.trainer.fabric, self.trainer.PrecisionCalculatorType = Hub(), Metrics
        self.trainer.progbar_wrapper = lambda iterable, total, **kwargs: iterable
        self.trainer._format_iterable = lambda *args: None
        self.trainer.should_stop, self.trainer.global_step, self.trainer.grad_accum_steps = False, 0, 1
        self.trainer._current_train_return = None
        with patch(sys, "stdout", io.StringIO()):
            self.model = getattr(model_mod, model_class)({
                "n_classes": NUM_CLASSES, "fusion": "concat", "device": " ",
                "encoders": {"audio": bb_encoder("audio"), "visual": bb_encoder("visual")},
                "modality_size": {"audio": 512, "visual": 512}})
        self.model.resnet = self.model.resnet_process
        self.model.Unimodality_Calculate = lambda: self.model.unimodality_calculate()[1]
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

    def run(self, checkpoint: Checkpoint) -> None:
        self.model.train()
        for epoch in range(EPOCHS):
            self.trainer.current_epoch = epoch
            loader = EpochLoader(self.batches[epoch * STEPS:(epoch + 1) * STEPS], epoch, checkpoint, dict)
            order = list(reversed(self.order(epoch))) if self.order else None
            with cpu_patches(), patch(random, "shuffle", lambda x, order=order: x.__setitem__(slice(None), order)), \
                    patch(np.random, "shuffle", lambda x: x.__setitem__(slice(None), self.masks.pop(0))), \
                    patch(torch.Tensor, "expand", keep_row):
                self.trainer.train_loop(self.model, self.optimizer, loader)

    def snapshot(self) -> Snapshot:
        out = module_snapshot(self.model, [self.optimizer], official_name)
        for m, teacher in self.teachers.items():
            out.update(module_snapshot(teacher, [], teacher_name(m)))
        return out


# Per method: the trainer module and the trainer_config.yaml entries its train_loop reads.
TRAINERS = {"mbsd": ("MBSD_trainer", {"modulation_starts": 0, "modulation_ends": 80}, "BaseClassifierModel"),
            "cml": ("CML_trainer", {"modulation_starts": 0, "modulation_ends": 80, "lam": 0.1}, "BaseClassifierModel"),
            "umt": ("UMT_trainer", {"modulation_starts": 0, "modulation_ends": 80, "scaling": 10},
                    "BaseClassifierModel"),
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
                "a new removal order each epoch, the confidence penalty active (> 0) at e0s1; every parameter, BN buffer and momentum buffer each step",
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
]
