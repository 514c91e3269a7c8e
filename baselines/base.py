"""The method contract: a method owns its optimisation step(s); the runner owns the loop.

A method is one ``Method`` subclass in one file, registered with ``@register``. The runner calls, per epoch:
``on_epoch_start`` -> ``select_rows`` (the epoch's training rows) -> ``update(batch, step)`` for every training batch
-> evaluation through ``predict`` (which must leave the method unchanged) -> ``on_epoch_end`` -> checkpoint.
Everything a method may need from the runner (optimizers whose learning rate the runner schedules, autocast, the
loaders for epoch hooks) comes through ``TrainContext``; if a method seems to need the runner to know its name, the
contract is missing a hook.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines.heads import build_head
from baselines.networks import build_encoders, init_model
from core import distributed
from core.data import Batch, BatchLoader, TaskSpec
from core.hparams import HParam, HParams


@dataclass(frozen=True)
class StepInfo:
    """Where an ``update`` call sits in training."""

    epoch: int
    step: int
    steps_per_epoch: int
    epochs: int


@dataclass
class Prediction:
    """Fused logits (B, K) and per-modality logits (B, K) for the imbalance metrics.

    ``alternatives`` holds other fusions of the same outputs (B, K) whose metrics the runner reports beside the fused
    ones under ``<split>.alternatives.<name>`` (AUG's equal fusion weights), so a diagnostic needs no second pass and
    ``predict`` no state.
    """

    fused: torch.Tensor
    per_modality: dict[str, torch.Tensor]
    alternatives: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class RowSelection:
    """The training rows of one epoch (repeats allowed) and per-row extras the loader adds to each batch."""

    rows: np.ndarray
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    shuffle: bool = True   # False: serve the rows in the given order (curricula)


# How a method behaves under torchrun, declared by every method as ``DATA_PARALLEL`` (see ``Method``).
DATA_PARALLEL_LEVELS = ("exact", "approximate", "unsupported")


@dataclass
class Loaders:
    """The loaders epoch hooks may read (prototype passes, validation estimates, resampling)."""

    train: BatchLoader
    val: BatchLoader | None = None
    test: BatchLoader | None = None


@dataclass
class TrainContext:
    """What the runner hands a method.

    ``make_optimizer`` builds the configured optimizer (``train.optimizer``, lr, momentum, weight decay) and
    registers it so that the runner's epoch-wise LR schedule and checkpoints cover it, including parameter groups a
    method adds later through ``add_param_group`` (docs/methods/README.md#dynamic-modules). In a data-parallel run it
    also attaches ``step_pre_hook``, which averages gradients across ranks before every ``step()``
    (``core.distributed``).

    A method whose step depends nonlinearly on the batch (gradient edits from batch statistics, clipping, per-loss
    gradient geometry) calls ``sync_gradients`` after ``backward`` and reduces its statistics with
    ``all_reduce_sum`` / ``all_reduce_mean``, so that W ranks with B/W samples each take the single-process step on
    the global batch of B. All three are no-ops in a single process.
    """

    device: torch.device
    epochs: int
    train_hp: HParams
    model_hp: HParams
    amp: bool = False
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    lr_factor: float = 1.0
    loaders: Loaders | None = None
    # Data-parallel runs set this to core.distributed.average_gradients; None in a single process.
    step_pre_hook: Callable[[torch.optim.Optimizer, tuple, dict], None] | None = None

    def make_optimizer(self, params: Iterable, *, lr: float | None = None, name: str | None = None,
                       **overrides: Any) -> torch.optim.Optimizer:
        hp = self.train_hp
        base_lr = hp.lr if lr is None else lr
        kind = overrides.pop("optimizer", hp.optimizer)
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            g.setdefault("initial_lr", g.get("lr", base_lr))
            g["lr"] = g["initial_lr"] * self.lr_factor
        if kind == "sgd":
            # foreach: one call per group instead of a Python loop over the parameters; the same arithmetic
            # (bitwise, tests/test_runner.py) at ~0.3 ms less per step on a CPU. CUDA defaults to it.
            opt = torch.optim.SGD(groups, lr=base_lr, momentum=overrides.pop("momentum", hp.momentum),
                                  weight_decay=overrides.pop("weight_decay", hp.weight_decay), foreach=True)
        elif kind == "adam":
            opt = torch.optim.Adam(groups, lr=base_lr, weight_decay=overrides.pop("weight_decay", hp.weight_decay))
        elif kind == "adamw":
            opt = torch.optim.AdamW(groups, lr=base_lr, weight_decay=overrides.pop("weight_decay", hp.weight_decay))
        else:
            raise ValueError(f"train.optimizer={kind!r} is not one of sgd, adam, adamw")
        if overrides:
            raise TypeError(f"unexpected optimizer options {sorted(overrides)}")
        if self.step_pre_hook is not None:
            opt.register_step_pre_hook(self.step_pre_hook)
        self.optimizers.append(opt)
        return opt

    def add_param_group(self, optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter],
                        lr: float | None = None) -> None:
        """Register new parameters mid-training with the current (scheduled) lr and the optimizer's defaults."""
        initial = self.train_hp.lr if lr is None else lr
        optimizer.add_param_group({"params": list(params), "initial_lr": initial, "lr": initial * self.lr_factor})

    def set_lr_factor(self, factor: float) -> None:
        """Apply the schedule to every group of every registered optimizer, groups added later included."""
        self.lr_factor = factor
        for opt in self.optimizers:
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * factor

    @property
    def data_parallel(self) -> bool:
        """Whether gradients are averaged across ranks (the runner sets ``step_pre_hook`` under torchrun)."""
        return self.step_pre_hook is not None

    def sync_gradients(self, params: Iterable[nn.Parameter], how: str = "mean") -> None:
        """Make these parameters' gradients equal on every rank now; the pre-step hook then leaves them alone.

        Call it after the last ``backward`` before ``step`` and edit the synced gradients only with reduced
        statistics, identically on every rank. See ``core.distributed.sync_gradients``.

        Args:
            params: the parameters whose ``.grad`` to synchronise.
            how: ``"mean"`` (average over ranks: the global batch's gradient of a batch-mean loss), ``"main"``
                (rank 0's gradients, for edits drawn from the RNG) or ``"equal"`` (computed from reduced quantities,
                already equal on every rank: only exempt them from the pre-step average).
        """
        if how not in distributed.SYNC_MODES:
            raise ValueError(f"sync_gradients(how={how!r}): expected one of {distributed.SYNC_MODES}")
        if self.data_parallel:
            distributed.sync_gradients(params, how)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks in place and return it (batch sums such as P2's confidence scores)."""
        return distributed.all_reduce_sum(tensor) if self.data_parallel else tensor

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average a floating-point ``tensor`` over ranks in place and return it (batch means over equal slices)."""
        return distributed.all_reduce_mean(tensor) if self.data_parallel else tensor

    def autocast(self) -> contextlib.AbstractContextManager:
        # bf16 on the CPU too: slower there on most processors, but the same autocast branch a GPU run takes, so a
        # CPU test meets its dtype problems first.
        if self.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


class Method(nn.Module):
    """Base class. A subclass implements one published method and cites it (paper + official code) in its docstring.

    Class attributes:
        name: registry key and hyperparameter namespace.
        title: the row label in tables (e.g. "OGM-GE").
        PAPER: the citation (authors, title, venue, arXiv id), shown in the README's generated methods table.
        CODE: the official code ("GitHub owner/repo, file, function") or the re-implementation followed.
        HPARAMS: the method's knobs, declared once with their sources.
        VARIANTS: named presets, e.g. ``{"official_compat": {...}}``; adds a ``variant`` knob ("paper" default).
        MODALITIES: the numbers of modalities the method supports.
        HELD_OUT_KEY: the knob naming the split (``val``/``test``) the method's hooks read besides train, if any
            (another value of it, e.g. UMT's ``final``, reads none); the runner refuses a run whose data does not
            serve that split before training starts.
        DATA_PARALLEL: required, one of ``DATA_PARALLEL_LEVELS``, with a comment saying why. ``"exact"``: W ranks
            with B/W samples each take the single-process steps and decisions on the global batch B (up to
            BatchNorm batch statistics, see ``core.distributed``); ``"approximate"``: something in its step
            or hooks comes from each rank's slice (per-rank decisions, batch statistics, per-rank random draws);
            ``"unsupported"``: the runner refuses to run it under torchrun.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    PAPER: ClassVar[str] = ""
    CODE: ClassVar[str] = ""
    HPARAMS: ClassVar[tuple[HParam, ...]] = ()
    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {}
    MODALITIES: ClassVar[tuple[int, ...]] = (2, 3)
    HELD_OUT_KEY: ClassVar[str | None] = None
    DATA_PARALLEL: ClassVar[str]  # no default: ``register`` refuses a class that does not declare it

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__()
        if len(task.modalities) not in self.MODALITIES:
            raise ValueError(f"method {self.name!r} supports {self.MODALITIES} modalities; dataset "
                             f"{task.dataset!r} has {len(task.modalities)} ({', '.join(task.names)})")
        self.task = task
        self.hp = hp
        self.ctx = ctx
        self.modalities = task.names

    # --- the contract -------------------------------------------------------------------------------------------
    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        raise NotImplementedError

    def predict(self, batch: Batch) -> Prediction:
        """Outputs for one evaluation batch; no side effects (parameters, buffers, attributes and RNG unchanged)."""
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, loaders: Loaders) -> None:
        """Optional: schedules, prototype passes, weight estimation (the training rows come from ``select_rows``)."""

    def select_rows(self, epoch: int, loaders: Loaders) -> RowSelection | None:
        """Optional: the rows to train on this epoch; None trains on every training row (the default).

        Called right after ``on_epoch_start``. The runner serves the selection (shuffled, or in order with
        ``shuffle=False``; sharded across data-parallel ranks) and sizes the epoch from it; methods never change
        the training loader themselves. Randomness must be seeded from (run seed, epoch) or drawn from the global
        RNG, which checkpoints restore, so that a resumed run selects the same rows.
        """
        return None

    def on_epoch_end(self, epoch: int, loaders: Loaders) -> dict[str, float]:
        """Optional: structural changes (AUG's classifier assignment) and per-epoch diagnostics to log."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Optional: state outside parameters/buffers that a checkpoint must restore *before* the state dict
        (e.g. the number of learners AUG has grown)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Rebuild structure from ``extra_state`` so that ``load_state_dict`` finds every parameter."""

    # --- checkpoints (methods rarely override) -------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        return {"extra": self.extra_state(), "model": self.state_dict(),
                "optimizers": [opt.state_dict() for opt in self.ctx.optimizers]}

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        self.load_extra_state(state["extra"])
        self.load_state_dict(state["model"])
        if len(state["optimizers"]) != len(self.ctx.optimizers):
            raise RuntimeError(f"checkpoint has {len(state['optimizers'])} optimizers, method {self.name!r} built "
                               f"{len(self.ctx.optimizers)}: load_extra_state must rebuild the same structure")
        for opt, saved in zip(self.ctx.optimizers, state["optimizers"]):
            opt.load_state_dict(saved)

    # --- helpers shared by methods -------------------------------------------------------------------------------
    def inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {m: batch[m] for m in self.modalities}

    @classmethod
    def task_problems(cls, hp: HParams, modalities: tuple[str, ...]) -> list[str]:
        """What in ``hp`` cannot work with a dataset serving ``modalities`` (in order), found before any data is
        read: a sweep's preflight lists it instead of launching runs that fail as they start (the constructor raises
        the same). Methods whose settings name modalities override this."""
        return []

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """Whether this method's own mechanism changed training in a finished run, judged from the run's logged
        epochs (``metrics.jsonl``: each record's ``train``, the epoch means of ``update``'s logs, and ``diag``, what
        ``on_epoch_end`` returned). A mechanism behind a gate (a modulation that waits for an imbalance, a
        schedule's later stage, a decision taken on held-out data) may never open within a short schedule, and the
        run is then its base model under another name; reports flag such runs instead of ranking them.

        None: nothing to judge, the default for a method whose mechanism acts at every step by construction (a loss
        term, a fusion architecture). A method with a gate overrides this and logs what the judgement needs."""
        return None

    @classmethod
    def held_out_split(cls, hp: HParams) -> str | None:
        """The split the ``HELD_OUT_KEY`` knob names in ``hp``, or None where the method reads none (no such knob,
        or a value that names no split, such as UMT's ``final``)."""
        split = hp[cls.HELD_OUT_KEY] if cls.HELD_OUT_KEY else None
        return split if split in ("val", "test") else None

    def held_out_loader(self, loaders: Loaders) -> BatchLoader:
        """The loader of the split named by the ``HELD_OUT_KEY`` knob; ``ValueError`` naming it if there is none (the
        runner refuses such a run before training; this guards direct use)."""
        key, split = self.HELD_OUT_KEY, self.held_out_split(self.hp)
        loader = getattr(loaders, split) if split else None
        if loader is None:
            raise ValueError(f"{self.name}.{key}={self.hp[key]!r}, but dataset {self.task.dataset!r} serves no such "
                             f"split")
        return loader


def logged_values(history: Sequence[Mapping[str, Any]], section: str, key: str) -> list[float]:
    """What a run logged under ``key`` in the ``section`` (``"train"`` or ``"diag"``) of each epoch record, in epoch
    order, or under every key beginning with ``key`` where it ends in ``_`` (one per modality, e.g. ``coeff_``); empty
    when no record has it (a run logged by older code). What ``mechanism_acted`` overrides read."""
    return [value for record in history for name, value in (record.get(section) or {}).items()
            if (name.startswith(key) if key.endswith("_") else name == key)]


def judges_mechanism(cls: type[Method]) -> bool:
    """Whether ``cls`` overrides ``Method.mechanism_acted``: its runs' logs say whether its mechanism acted."""
    return cls.mechanism_acted.__func__ is not Method.mechanism_acted.__func__


def loss_precision(z: torch.Tensor) -> torch.Tensor:
    """Logits for a loss or score: half-precision autocast outputs promoted to float32, float64 kept (float64 runs,
    such as ``augbench parity``, must not round their losses to float32)."""
    return z.to(torch.promote_types(z.dtype, torch.float32))


def read_logs(values: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """A step's logged values as floats, in the given key order, read from the device at once.

    Tensor values (each of one element) are stacked and read with a single ``.tolist()``; an ``.item()`` per value
    would make the host wait for the GPU once per value. Python numbers pass through as ``float``.
    """
    keys = [k for k, v in values.items() if isinstance(v, torch.Tensor)]
    # float64 holds every float32, bfloat16 and float16 value exactly: the floats are those .item() gave.
    stacked = torch.stack([values[k].detach().reshape(()).double() for k in keys]) if keys else torch.zeros(0)
    read = dict(zip(keys, stacked.tolist()))
    return {k: read[k] if k in read else float(v) for k, v in values.items()}


def confidence_scores(logits: Mapping[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """docs/methods/README.md#confidence-score: s_m = sum over the batch of softmax(z_m)[y], under no_grad, vectorised
    with ``gather``, in ``loss_precision``."""
    with torch.no_grad():
        return {m: torch.softmax(loss_precision(z.detach()), dim=1).gather(1, labels[:, None]).sum()
                for m, z in logits.items()}


def conv_weights(module: nn.Module) -> list[nn.Parameter]:
    """docs/methods/README.md#param-groups: the 4-D parameters (conv kernels) of a module, as OGM-GE modulates them."""
    return [p for p in module.parameters() if p.dim() == 4]


def zero_grad(params: Iterable[nn.Parameter], set_to_none: bool = True) -> None:
    """``optimizer.zero_grad`` for an arbitrary parameter set; ``set_to_none=False`` is the PyTorch <= 1.13 default
    (zero-filled gradients, so SGD still applies momentum and weight decay to those parameters)."""
    for p in params:
        if p.grad is None:
            continue
        if set_to_none:
            p.grad = None
        else:
            p.grad.detach_()
            p.grad.zero_()


class FusionModel(nn.Module):
    """Encoders + one fusion head, with P1's ``drop`` option (zero the named modalities' inputs)."""

    def __init__(self, task: TaskSpec, model_hp: HParams, head: str,
                 head_factory: Callable[[dict[str, int], int], nn.Module] | None = None) -> None:
        super().__init__()
        self.names = task.names
        self.encoders = build_encoders(task, model_hp)
        dims = {m: enc.out_dim for m, enc in self.encoders.items()}
        self.head = head_factory(dims, task.num_classes) if head_factory else build_head(head, dims,
                                                                                          task.num_classes)
        init_model(self, model_hp)

    def features(self, x: Mapping[str, torch.Tensor], drop: Iterable[str] = ()) -> dict[str, torch.Tensor]:
        drop = set(drop)
        return {m: self.encoders[m](torch.zeros_like(x[m]) if m in drop else x[m]) for m in self.names}

    def unimodal_logits(self, h: Mapping[str, torch.Tensor], z_uni: dict[str, torch.Tensor] | None
                        ) -> dict[str, torch.Tensor]:
        """Per-modality logits: the head's own, or (heads without them: FiLM, gated) the fused output with every
        other modality's features zeroed."""
        if z_uni is not None:
            return z_uni
        out = {}
        for m in self.names:
            masked = {n: (v if n == m else torch.zeros_like(v)) for n, v in h.items()}
            out[m] = self.head(masked)[0]
        return out

    def forward(self, x: Mapping[str, torch.Tensor], drop: Iterable[str] = ()
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor] | None]:
        h = self.features(x, drop)
        z, z_uni = self.head(h)
        return h, z, z_uni


class FusionMethod(Method):
    """Joint training of encoders + a fusion head with L = CE(z, y): the Concat/Sum/Weight/Affine/Gated rows.

    Subclasses set ``HEAD``; methods that modulate joint training subclass this and override ``update``.
    """

    HEAD: ClassVar[str] = "concat"

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        self.model = FusionModel(task, ctx.model_hp, self.HEAD).to(ctx.device)
        self.optimizer = ctx.make_optimizer(self.model.parameters())

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        with self.ctx.autocast():
            _, z, _ = self.model(self.inputs(batch))
            loss = F.cross_entropy(loss_precision(z), batch["label"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        with self.ctx.autocast():
            h, z, z_uni = self.model(self.inputs(batch))
            z_uni = self.model.unimodal_logits(h, z_uni)
        return Prediction(loss_precision(z), {m: loss_precision(v) for m, v in z_uni.items()})
