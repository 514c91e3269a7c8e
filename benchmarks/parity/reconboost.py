"""ReconBoost against GitHub huacong/ReconBoost: ``train.py`` ``main`` run unmodified with ``--dataset CREMAD
--use_pretrain --common_space`` on ``models/CREMA/basic_model.py`` ``AudioNet``/``VisualNet`` and
``models/dynamic_net.py`` ``DynamicNet`` (``schedule.py``: audio, visual, ...).

The released training is one function, so the harness patches names in ``train``'s namespace: ``AudioNet`` and
``VisualNet`` build the official models and load the project's weights (their own ``fc`` from the project's
pre-training heads), ``init_pretrain`` returns the model it is given (the project side pre-trains for 0 epochs, so
both start from the same encoders), ``CramedDataset`` is a placeholder, ``DataLoader`` serves the same fixed batches
on every pass (one pass per phase, ``epochs_per_stage = correct_epoch = 1``), ``check_status`` stops after 2 stages,
``SummaryWriter`` and ``test`` (the per-stage test accuracy) are stubs, and the checkpoint folders go to a temporary
directory. ``optim.SGD`` is recorded so that the live optimizer's state is compared. ``DynamicNet`` gets the
project's shared head and is built with ``boost_rate`` on the CPU (its ``device="cuda"`` is dropped).

Precision-only workaround: ``main`` casts the ensemble's output with ``torch.as_tensor(out_join,
dtype=torch.float32)`` before the softmax of the reconcilement weight; with that cast alone the first step already
differs by 3.9e-8 (a momentum buffer), so here it keeps the working precision (float64). Every other step runs as
released.

The run crosses both stages: stage 0 trains audio with the visual learner still on its own pre-trained classifier
(``pretrain_head_until_stage``), stage 1 trains visual with the GA term against audio, whose second train-mode
forward moves its batch-norm statistics again (``ga_partner_second_pass``); each phase starts a fresh SGD. The
ensemble's member order changes after ``DynamicNet.add`` (rounding only).

The case ``reconboost_bb`` checks the variant bb against GitHub GeWu-Lab/BalanceBenchmark's ``ReconBoostTrainer``
instead (``BB_NOTES`` below).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from baselines.base import Loaders, StepInfo
from benchmarks.parity.balancebench import COMMIT as BB_COMMIT
from benchmarks.parity.balancebench import REPO as BB_REPO
from benchmarks.parity.balancebench import Hub, Metrics, SilentLogger, bb_model, bb_trainer, stubbed_imports
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
from benchmarks.runner import lr_factor

STAGES, STEPS, BATCH = 2, 2, 8
NUM_CLASSES = 6
OPTIONAL = ("torch.utils.tensorboard", "librosa", "h5py")
HEAD_LAYERS = {"fc1": 0, "fc2": 2}   # official Head -> the project's nn.Sequential(Linear, ReLU, Linear)
HPARAMS = {"pretrain": True, "pretrain_epochs": 0, "modality_epochs": 1, "correct_epochs": 1,
           "ga_partner_second_pass": True, "pretrain_head_until_stage": True}


def official_name(name: str) -> str | None:
    """Entry of the harness's official container -> the project's ``ReconBoost`` entry."""
    for m in ("audio", "visual"):
        if name.startswith(f"{m}."):
            return f"encoders.{m}.trunk." + resnet_name(name[len(m) + 1:])
        if name.startswith(f"fc_{m}."):
            return f"pretrain_heads.{m}." + name[len(m) + 4:]
    if name.startswith("head."):
        layer, rest = name[len("head."):].split(".", 1)
        return f"head.{HEAD_LAYERS[layer]}.{rest}"
    if name == "beta":
        return name
    raise KeyError(f"unmapped ReconBoost entry {name!r}")


def project_name(name: str) -> str | None:
    """``members`` and ``had_grad`` are the project's bookkeeping (the official ensemble list; under ``variant: bb``
    the zero gradients torch keeps, which BB does not store); they act through the outputs, parameters and optimizer
    state."""
    return None if name in ("members", "had_grad") else name


class Project:
    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("cremad", NUM_CLASSES)
        self.method = build_method(case.method, task, {**case.hparams, **overrides}, epochs=2 * STAGES, lr=0.01)
        self.batches = av_batches(task, STEPS, BATCH, seed=2)

    def steps(self) -> Iterator[str]:
        for epoch in range(2 * STAGES):
            self.method.on_epoch_start(epoch, Loaders(None))   # type: ignore[arg-type]  # 0 pre-training epochs
            for k in range(STEPS):
                self.method.update(self.batches[k], StepInfo(epoch, k, STEPS, 2 * STAGES))
                yield f"e{epoch}s{k}"

    def snapshot(self) -> Snapshot:
        rb = self.method
        pos = rb.position
        opt = rb.modality_opts[pos.modality] if pos.phase == "modality" else rb.correct_opt
        return module_snapshot(rb, [opt], project_name)


def official_batch(b: dict) -> tuple[torch.Tensor, ...]:
    return b["audio"][:, 0], b["visual"], b["label"]


class PassLoader:
    """``train_loader``: the same batches on every pass; pass p is the project's epoch p."""

    def __init__(self, batches: list[dict], checkpoint: Checkpoint) -> None:
        self.batches, self.checkpoint, self.passes = batches, checkpoint, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple]:
        epoch, self.passes = self.passes, self.passes + 1
        yield from EpochLoader(self.batches, epoch, self.checkpoint, official_batch)


class _Writer:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass


def _keep_float64(original: Any) -> Any:
    """``torch.as_tensor(out_join, dtype=torch.float32)`` keeps a float64 tensor float64 (precision only)."""
    def as_tensor(data: Any, dtype: torch.dtype | None = None, device: Any = None) -> torch.Tensor:
        if torch.is_tensor(data) and dtype == torch.float32 and data.dtype == torch.float64:
            dtype = torch.float64
        return original(data, dtype=dtype, device=device)
    return as_tensor


def _cpu_tensor(original: Any) -> Any:
    """``DynamicNet.__init__`` builds ``boost_rate`` with ``device="cuda"``."""
    def tensor(*args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.get("device") == "cuda":
            kwargs.pop("device")
        return original(*args, **kwargs)
    return tensor


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        with cpu_patches(OPTIONAL):
            self.train, basic, dynamic = import_official(root, "train", "models.CREMA.basic_model",
                                                         "models.dynamic_net")
        state = project.method.state_dict()
        self.models: dict[str, nn.Module] = {}
        self.own_fc: dict[str, nn.Module] = {}
        self.ensemble: Any = None
        self.optimizers: list[torch.optim.Optimizer] = []
        # train.py's argparse defaults (the official values, not the project's, so that a project default that drifts
        # from them shows); only the stage lengths are the case's, shortened on both sides.
        self.args = argparse.Namespace(
            dataset="CREMAD", dataset_path="", n_class=NUM_CLASSES, batch_size=BATCH, boost_rate=1.0,
            n_worker=0, epochs_per_stage=1, correct_epoch=1, common_space=True, use_lr=True, m_lr=0.01,
            e_lr=0.01, use_br=True, use_pretrain=True, m1ckpt="", m2ckpt="", use_ga=True, weight1=5.0,
            weight2=1.0, alpha=0.5, use_tensorboard=True)
        self.batches = project.batches

        harness = self

        def encoder(cls: type, m: str) -> Any:
            def build(dataset: str) -> nn.Module:
                net = cls(dataset=dataset)
                load_mapped(net, state, lambda n: official_name(f"fc_{m}." + n[3:] if n.startswith("fc.")
                                                                else f"{m}." + n.split(".", 1)[1]))
                harness.models[m], harness.own_fc[m] = net, net.fc
                return net
            return build

        class Ensemble(dynamic.DynamicNet):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                load_mapped(self.head, state, lambda n: official_name("head." + n))
                harness.ensemble = self

        class SGD(torch.optim.SGD):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                harness.optimizers.append(self)

        self.patches = {"AudioNet": encoder(basic.AudioNet, "audio"), "VisualNet": encoder(basic.VisualNet, "visual"),
                        "init_pretrain": lambda model, ckpt: model, "CramedDataset": lambda **kwargs: kwargs["mode"],
                        "SummaryWriter": _Writer, "check_status": lambda stage: stage < STAGES,
                        "test": lambda *args, **kwargs: 0.0, "DynamicNet": Ensemble}
        self.sgd = SGD

    def run(self, checkpoint: Checkpoint) -> None:
        loaders = {"train": PassLoader(self.batches, checkpoint), "test": PassLoader([], checkpoint)}

        def data_loader(dataset: str, **kwargs: Any) -> PassLoader:
            return loaders[dataset]

        with tempfile.TemporaryDirectory() as tmp, cpu_patches(), patch(sys, "stdout", io.StringIO()), \
                patch(torch, "as_tensor", _keep_float64(torch.as_tensor)), \
                patch(torch, "tensor", _cpu_tensor(torch.tensor)), patch(torch.optim, "SGD", self.sgd), \
                patch(self.train, "DataLoader", data_loader):
            self.args.ckpt_dir = self.args.tensorboard_dir = tmp
            with _patched(self.train, self.patches), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)   # stage 0's np.mean of the empty GA-loss list
                self.train.main(self.args, "CREMAD")

    def snapshot(self) -> Snapshot:
        box = nn.Module()
        for m, net in self.models.items():
            box.add_module(m, getattr(net, f"{m}_net"))
            box.add_module(f"fc_{m}", self.own_fc[m])
        box.add_module("head", self.ensemble.head)
        box.register_parameter("beta", self.ensemble.boost_rate)
        return module_snapshot(box, self.optimizers[-1:], official_name)


def _patched(module: Any, values: Mapping[str, Any]) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for name, value in values.items():
        stack.enter_context(patch(module, name, value))
    return stack


CASES = [
    Case(name="reconboost", method="reconboost", hparams=HPARAMS, repo="huacong/ReconBoost",
         commit="14ab57ac26e0ad7badb29c4e08ec4ca9d4bb0932",
         entry="train.py main (--dataset CREMAD --use_pretrain --common_space); models/CREMA/basic_model.py "
               "AudioNet, VisualNet; models/dynamic_net.py DynamicNet; schedule.py schedule_model",
         covers=f"{STAGES} stages x (modality phase + correction phase) x {STEPS} steps (batch {BATCH}): stage 0 "
                f"trains audio against the visual learner's own pre-trained classifier, stage 1 trains visual with "
                f"the GA term (partner audio run twice); a fresh SGD per phase, DynamicNet.add reorders the members",
         deviations={"ga_partner_second_pass": False, "pretrain_head_until_stage": False},
         project=Project, official=Official, notes=__doc__),
]


# --- reconboost_bb: the variant bb against BalanceBenchmark's ReconBoostTrainer ---------------------------------------
BB_NOTES = """
reconboost_bb (variant bb) runs GitHub GeWu-Lab/BalanceBenchmark's ``ReconBoostTrainer.fit`` unmodified
(``balancemm/trainer/ReconBoost_trainer.py``: per BB epoch ``model.train()``, then for audio and visual ``train_loop``,
i.e. T_epochs boosting passes of ``training_step1`` and T_epochs correction passes of ``training_step2`` with the one
optimizer, then the scheduler's step) on ``balancemm/models/avclassify_model.py`` ``BaseClassifierReconBoostModel``
(ResNet-18 encoders, ``fusion: shared``, i.e. ``SharedHead.fc_out``). Each pass over BB's ``train_loader`` is one
project epoch and serves that epoch's batches.

Harness, as for the other BalanceBenchmark cases (benchmarks/parity/balancebench.py): the same import stubs (Lightning,
dynaconf and the other packages the project does not install, ``balancemm.evaluation.complex``), the trainer made
without ``BaseTrainer.__init__`` (Fabric) and given the attributes fit and train_loop read (a Fabric callback hub whose
``setup_dataloaders`` returns the loader, one-step gradient accumulation, no progress bar, a metrics stub, a validation
loop that reports nothing, no checkpoint saving), and ``resnet`` bound to ``resnet_process`` on the model instance. Both
sides use SGD (momentum 0.9, weight decay 1e-4, lr 1e-2); the scheduler is StepLR(step_size 1, gamma 0.1) on the
official side, stepped by fit after each BB epoch, and ``train.lr_milestones`` at the first pass of BB epoch 1 on the
project side (the runner's lr factor, set before each epoch), so the lr drop lands mid-run; the lr is compared as
``q/lr``. BB's own initial boost_rate (0.01) is kept, not loaded from the project. BB's README (Installation) installs
torch 1.12.1, whose ``Optimizer.zero_grad()`` sets gradients to zero rather than None; the installed torch defaults to
None, so the official optimizer's ``zero_grad`` is called with ``set_to_none=False`` (torch 1.12.1's behaviour;
``zero_grads_persist: false`` is the installed torch's and is one of the case's flips).

The run is 2 BB epochs (8 passes): BB epoch 0 without the GA term, BB epoch 1 with it (the partner's second train-mode
forward moves its BN statistics), every learner in F from the first step with beta 0.01, the optimizer's momentum
carried across every phase boundary, the idle encoder stepped by its zero gradient while the other one boosts, and the
lr decay between the BB epochs.
"""

BB_EPOCHS, BB_LR = 2, 1e-2
BB_PASSES = BB_EPOCHS * 2 * 2          # per BB epoch: 2 modalities x (1 boosting + 1 correction pass)
BB_HPARAMS = {"variant": "bb"}


# ``BaseClassifierReconBoostModel`` entry -> the project's ``ReconBoost`` entry.
bb_official_name = name_map((*((f"modality_encoder.{m}.", f"encoders.{m}.trunk.", resnet_name)
                                for m in ("audio", "visual")),
                             ("fusion_module.fc_out.", "head.", None), ("boost_rate", "beta", None)),
                            "BaseClassifierReconBoostModel")


def lr_quantity(opt: torch.optim.Optimizer) -> Snapshot:
    return quantities({"lr": opt.param_groups[0]["lr"]})


class BBProject:
    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("cremad", NUM_CLASSES)
        self.method = build_method(case.method, task, {**case.hparams, **overrides}, epochs=BB_PASSES, lr=BB_LR)
        self.batches = av_batches(task, BB_PASSES * STEPS, BATCH, seed=4)
        # BB's StepLR(1) after each BB epoch = a milestone at the first pass of every later BB epoch.
        self.milestones = [e * BB_PASSES // BB_EPOCHS for e in range(1, BB_EPOCHS)]

    def steps(self) -> Iterator[str]:
        rb = self.method
        for epoch in range(BB_PASSES):
            rb.ctx.set_lr_factor(lr_factor(epoch, self.milestones, 0.1))   # as benchmarks/runner.py does
            rb.train()
            rb.on_epoch_start(epoch, Loaders(None))   # type: ignore[arg-type]  # no pre-training
            for k in range(STEPS):
                rb.update(self.batches[epoch * STEPS + k], StepInfo(epoch, k, STEPS, BB_PASSES))
                yield f"e{epoch}s{k}"

    def snapshot(self) -> Snapshot:
        rb = self.method
        opt = rb.modality_opts[0] if rb.hp.shared_optimizer else \
            rb.modality_opts[rb.position.modality] if rb.position.phase == "modality" else rb.correct_opt
        return {**module_snapshot(rb, [opt], project_name), **lr_quantity(opt)}


class BBPasses:
    """BB's ``train_loader``: pass p over it serves the project's epoch p."""

    def __init__(self, batches: list[dict], checkpoint: Checkpoint) -> None:
        self.batches, self.checkpoint, self.passes = batches, checkpoint, 0

    def __len__(self) -> int:
        return STEPS

    def __iter__(self) -> Iterator[dict]:
        p, self.passes = self.passes, self.passes + 1
        yield from EpochLoader(self.batches[p * STEPS:(p + 1) * STEPS], p, self.checkpoint, dict)


class FabricHub(Hub):
    """Fabric as fit uses it: no callbacks, the loader as given."""

    def setup_dataloaders(self, loader: Any, **kwargs: Any) -> Any:
        return loader


class BBMetrics(Metrics):
    """fit also clears the train-set metrics after every BB epoch."""

    def ClearAll(self) -> None:  # noqa: N802  # BB's name
        pass


class BBLogger(SilentLogger):
    handlers: list = []


class BBOfficial:
    def __init__(self, case: Case, root: Path, project: BBProject) -> None:
        with stubbed_imports(), cpu_patches(), patch(sys, "stdout", io.StringIO()):
            trainer_mod, model_mod = import_official(root, "balancemm.trainer.ReconBoost_trainer",
                                                     "balancemm.models.avclassify_model")
        model = bb_model(model_mod.BaseClassifierReconBoostModel, fusion="shared")
        # The project's weights, except boost_rate: BB's own initial 0.01 is compared with the project's beta.
        load_mapped(model, project.method.state_dict(),
                    lambda n: None if n == "boost_rate" else bb_official_name(n))
        self.model = model
        # configs/trainer_config.yaml ReconBoost; the rest is what BaseTrainer.__init__ would set.
        trainer = bb_trainer(trainer_mod.ReconBoostTrainer, {
            "alpha": 0.5, "modulation_starts": 0, "modulation_ends": 80, "T_epochs": 1, "weight1": 5, "weight2": 1,
            "fabric": FabricHub(), "PrecisionCalculatorType": BBMetrics, "max_epochs": BB_EPOCHS, "current_epoch": 0,
            "limit_train_batches": float("inf"), "limit_val_batches": float("inf"), "should_train": True,
            "validation_frequency": 1, "should_save": False, "use_distributed_sampler": False,
            "checkpoint_dir": None})
        # fit validates after every BB epoch (model.eval(), no_grad forwards: no state moves); the project's
        # evaluation is the runner's, so the validation loop reports nothing here.
        trainer.val_loop = lambda model, loader, limit_batches: (0.0, {})
        self.trainer = trainer
        self.optimizer = torch.optim.SGD(model.parameters(), lr=BB_LR, momentum=0.9, weight_decay=1e-4)
        # BB's torch 1.12.1: zero_grad() fills zeros (BB_NOTES).
        self.optimizer.zero_grad = functools.partial(torch.optim.SGD.zero_grad, self.optimizer, set_to_none=False)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.1)
        self.batches = project.batches

    def run(self, checkpoint: Checkpoint) -> None:
        with cpu_patches(), patch(sys, "stdout", io.StringIO()):
            self.trainer.fit(self.model, BBPasses(self.batches, checkpoint), None, self.optimizer, self.scheduler,
                             BBLogger(), None)

    def snapshot(self) -> Snapshot:
        return {**module_snapshot(self.model, [self.optimizer], bb_official_name), **lr_quantity(self.optimizer)}


CASES.append(
    Case(name="reconboost_bb", method="reconboost", hparams=BB_HPARAMS, repo=BB_REPO, commit=BB_COMMIT,
         entry="balancemm/trainer/ReconBoost_trainer.py ReconBoostTrainer.fit/train_loop/training_step1/"
               "training_step2; balancemm/models/avclassify_model.py BaseClassifierReconBoostModel (fusion shared)",
         covers=f"{BB_EPOCHS} BB epochs = {BB_PASSES} passes x {STEPS} steps (batch {BATCH}): per BB epoch boosting "
                "audio, correction, boosting visual, correction with one SGD whose momentum carries across phases "
                "(the idle encoder stepped by its zero gradient); GA term and the partner's second forward from BB "
                "epoch 1; lr x0.1 after BB epoch 0; every parameter, BN buffer, momentum buffer and the lr each step",
         deviations={"shared_optimizer": False, "zero_grads_persist": False, "ensemble_from_start": False,
                     "ga_after_first_round": False, "ga_partner_second_pass": False, "boost_rate": 1.0},
         project=BBProject, official=BBOfficial, notes=BB_NOTES.strip()))
