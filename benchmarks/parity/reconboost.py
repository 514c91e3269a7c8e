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
"""

from __future__ import annotations

import argparse
import contextlib
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
    """``members`` is the project's bookkeeping (the official ensemble list); compared through the outputs."""
    return None if name == "members" else name


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
        hp = project.method.hp
        self.args = argparse.Namespace(
            dataset="CREMAD", dataset_path="", n_class=NUM_CLASSES, batch_size=BATCH, boost_rate=hp.boost_rate,
            n_worker=0, epochs_per_stage=1, correct_epoch=1, common_space=True, use_lr=True, m_lr=hp.m_lr,
            e_lr=hp.e_lr, use_br=True, use_pretrain=True, m1ckpt="", m2ckpt="", use_ga=True, weight1=hp.w1,
            weight2=hp.w2, alpha=hp.alpha, use_tensorboard=True)
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
