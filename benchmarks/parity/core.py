"""Parity cases and the lockstep runner: the official training code and the project's method, step by step.

A ``Case`` names one method configuration, the official repository and commit it is checked against, and two
builders. ``project(case, overrides)`` returns a ``ProjectSide`` (the registered method on a tiny task, seeded);
``official(case, root, project)`` imports the official code from the user's clone under ``root``, builds its model,
loads the project's initial weights into it (the weight map) and returns an ``OfficialSide``. The runner then drives
the official code, which calls ``checkpoint(label)`` after every optimizer step and at every decision point (an ACA
check, a window boundary); each call advances the project side to the same label and compares every parameter,
buffer, optimizer state and the method's characteristic quantities (``q/...``) in the project's naming.

Everything runs in float64 on the CPU: in float32 a 1-ulp difference in the initial weights grows to ~1e-2 within a
few steps of these networks, so only float64 separates a real difference from rounding. The official code is
imported unmodified; ``cpu_patches`` only turns ``.cuda()`` into a no-op and stands in for optional imports the
training functions never use (a dataset module's ``pandas``, TensorBoard).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from baselines.base import Method, StepInfo, TrainContext
from baselines.networks import MODEL_HPARAMS
from baselines.registry import get_method
from benchmarks.config import TRAIN_HPARAMS, method_hparams
from core.data import ModalitySpec, TaskSpec
from core.hparams import resolve

# |project - official| <= ATOL + RTOL * |official| for every compared value (float64 throughout).
ATOL = 1e-10
RTOL = 1e-10
DTYPE = torch.float64

Snapshot = dict[str, torch.Tensor]
Checkpoint = Callable[[str], None]


class MissingCloneError(FileNotFoundError):
    """The official clone a case needs is not under ``--official-root``."""


class ProjectSide(Protocol):
    def steps(self) -> Iterator[str]: ...          # runs the method, yields a label at every comparison point
    def snapshot(self) -> Snapshot: ...


class OfficialSide(Protocol):
    def run(self, checkpoint: Checkpoint) -> None: ...   # runs the official code, calling checkpoint(label)
    def snapshot(self) -> Snapshot: ...


@dataclass(frozen=True)
class Case:
    """One method configuration checked against one official commit.

    Attributes:
        name: case id (golden file stem, CLI argument), e.g. ``aug_official_compat``.
        method: registry name of the project's method.
        hparams: every method knob the case sets (the variant; values the official run is given too, such as a
            shortened schedule); the report lists them beside the method.
        repo: official ``owner/name`` on GitHub; ``clone`` is its folder name under ``--official-root``.
        folder: overrides that folder name (a second checkout at another commit).
        commit: the official commit the case was written and recorded against.
        entry: the official function(s) the case calls unmodified.
        covers: the steps and decision points the schedule crosses, in words.
        deviations: the documented departures of the paper default, knob -> the paper default's value; each is
            flipped alone on top of ``hparams`` and must show a difference.
        notes: harness choices and workarounds, for the report.
        golden_labels: the labels whose official values the golden record keeps (empty: every label), for a long
            run whose full record would be too large; the live run compares every label either way.
    """

    name: str
    method: str
    hparams: Mapping[str, Any]
    repo: str
    commit: str
    entry: str
    covers: str
    project: Callable[[Case, Mapping[str, Any]], ProjectSide]
    official: Callable[[Case, Path, ProjectSide], OfficialSide]
    deviations: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""
    folder: str = ""
    golden_labels: tuple[str, ...] = ()

    @property
    def clone(self) -> str:
        """The clone's folder under ``--official-root``: the repository name, or ``folder`` where a case needs a
        second checkout at another commit."""
        return self.folder or self.repo.split("/")[1]

    def clone_dir(self, root: Path) -> Path:
        path = Path(root) / self.clone
        if not path.is_dir():
            raise MissingCloneError(f"parity case {self.name!r} needs a clone of GitHub {self.repo} at commit "
                                    f"{self.commit[:7]} in {path} (git clone https://github.com/{self.repo} {path} "
                                    f"&& git -C {path} checkout {self.commit[:7]})")
        return path


# --- the comparison ---------------------------------------------------------------------------------------------------
def max_differences(project: Snapshot, official: Snapshot, label: str) -> dict[str, float]:
    """max |p - o| per key; a key on one side only (a structural difference: a learner, an optimizer state the
    other side lacks) counts as infinitely different; a shape mismatch is an error naming the key."""
    out = {key: math.inf for key in set(official) ^ set(project)}
    for key, o in official.items():
        if key not in project:
            continue
        p = project[key]
        if p.shape != o.shape:
            raise ValueError(f"at {label}: {key} has shape {tuple(p.shape)} (project) vs {tuple(o.shape)} (official)")
        out[key] = 0.0 if _identical(p, o) or not o.numel() else float(_differences(p, o).max())
    return out


def _differences(p: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """|p - o| per element, where equal infinities and NaN on both sides count as 0 and NaN on one side as inf: a
    NaN difference would drop out of the step's maximum (NaN compares False), and inf - inf is NaN."""
    p, o = p.double(), o.double()
    same = (p == o) | (torch.isnan(p) & torch.isnan(o))
    return torch.where(same, 0.0, (p - o).abs()).nan_to_num(nan=math.inf, posinf=math.inf)


def _identical(p: torch.Tensor, o: torch.Tensor) -> bool:
    """Bitwise equal (one pass, no temporaries): the common case of a matching run, where the full difference
    computation dominates the cost of a case with large models and many checkpoints."""
    return p.dtype == o.dtype and p.shape == o.shape and torch.equal(p, o)


def within_tolerance(project: Snapshot, official: Snapshot) -> list[str]:
    """Keys where some element misses |p - o| <= ATOL + RTOL |o| (or is NaN or infinite on one side only, or an
    infinity of the other sign), or that only one side has."""
    bad = sorted(set(official) ^ set(project))
    for key, o in official.items():
        if key not in project or _identical(project[key], o):
            continue
        # isclose, not the bare inequality: against an infinite official value the bound is inf, so any project
        # value, finite or the other infinity, would pass it.
        ok = torch.isclose(project[key].double(), o.double(), rtol=RTOL, atol=ATOL, equal_nan=True)
        if not bool(ok.all()):
            bad.append(key)
    return bad


@dataclass
class StepRecord:
    label: str
    max_diff: float
    worst: str
    failed: list[str]


@dataclass
class ParityResult:
    case: Case
    records: list[StepRecord]
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.records) and not any(r.failed for r in self.records)

    @property
    def max_diff(self) -> float:
        return max((r.max_diff for r in self.records), default=math.nan)

    @property
    def first_failure(self) -> StepRecord | None:
        return next((r for r in self.records if r.failed), None)


def compare(label: str, project: Snapshot, official: Snapshot) -> StepRecord:
    diffs = max_differences(project, official, label)
    if not diffs:
        raise ValueError(f"at {label}: neither side has anything to compare")
    worst = max(diffs, key=diffs.get)
    return StepRecord(label, diffs[worst], worst, within_tolerance(project, official))


class _FirstDifference(Exception):
    """Ends a run at its first difference (a flipped knob's signature is where it first shows)."""


def run_case(case: Case, root: Path, overrides: Mapping[str, Any] | None = None,
             on_step: Callable[[StepRecord], None] | None = None,
             record: Callable[[str, Snapshot], None] | None = None, stop_at_difference: bool = False
             ) -> ParityResult:
    """Run the official code and the project's method in lockstep; compare at every checkpoint.

    Args:
        case: the case.
        root: the folder holding the user's official clones.
        overrides: project knobs on top of ``case.hparams`` (a flipped deviation).
        on_step: called with each step's record (progress output).
        record: called with (label, official snapshot) at every checkpoint (the golden recorder).
        stop_at_difference: end the run at the first checkpoint that misses the tolerance.
    """
    overrides = dict(overrides or {})
    root = case.clone_dir(root)
    records: list[StepRecord] = []
    with float64():
        project = case.project(case, overrides)
        official = case.official(case, root, project)
        labels = project.steps()

        def checkpoint(label: str) -> None:
            with suspended():
                mine = next(labels, None)
            if mine != label:
                raise RuntimeError(f"{case.name}: the official code reached {label!r} where the project side is at "
                                   f"{mine!r}")
            theirs = official.snapshot()
            if record is not None:
                record(label, theirs)
            with suspended():
                rec = compare(label, project.snapshot(), theirs)
                records.append(rec)
                if on_step is not None:
                    on_step(rec)
            if rec.failed and stop_at_difference:
                raise _FirstDifference

        try:
            official.run(checkpoint)
        except _FirstDifference:
            return ParityResult(case, records, overrides)
        leftover = next(labels, None)
        if leftover is not None:
            raise RuntimeError(f"{case.name}: the official run ended while the project side continues at {leftover!r}")
    return ParityResult(case, records, overrides)


# --- environment ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def float64() -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


class _Unavailable(types.ModuleType):
    """Stands in for an optional package an official module imports but the parity run never calls."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"{self.__name__}.{name} is not installed; the parity harness stubbed it because "
                               f"the official training step does not use it")
        return unavailable


# (owner, attribute, original, replacement) of every patch in force, innermost last.
_ACTIVE: list[tuple[Any, str, Any, Any]] = []


@contextlib.contextmanager
def patch(owner: Any, attr: str, value: Any) -> Iterator[None]:
    """Set ``owner.attr`` for the duration; ``suspended`` lifts every active patch while the project side runs."""
    original = owner.__dict__.get(attr, _ABSENT) if isinstance(owner, type) else getattr(owner, attr)
    entry = (owner, attr, original, value)
    setattr(owner, attr, value)
    _ACTIVE.append(entry)
    try:
        yield
    finally:
        _ACTIVE.remove(entry)
        _restore(owner, attr, original)


_ABSENT = object()


def _restore(owner: Any, attr: str, original: Any) -> None:
    if original is _ABSENT:
        delattr(owner, attr)
    else:
        setattr(owner, attr, original)


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Run the project's code without the official side's patches (the lockstep callback runs inside them)."""
    saved = list(_ACTIVE)
    for owner, attr, original, _ in reversed(saved):
        _restore(owner, attr, original)
    try:
        yield
    finally:
        for owner, attr, _, value in saved:
            setattr(owner, attr, value)


def _same(self: Any, *args: Any, **kwargs: Any) -> Any:
    return self


def _working_precision(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return self.to(torch.get_default_dtype())


@contextlib.contextmanager
def cpu_patches(optional: tuple[str, ...] = ()) -> Iterator[None]:
    """What a CPU float64 run of official code needs: ``.cuda()`` on tensors and modules returns them unchanged,
    ``Tensor.float()`` (the scripts' input casts) casts to the working precision, and ``optional`` packages that do
    not import are replaced by stubs for the duration."""
    stubbed = []
    for name in optional:
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = _Unavailable(name)
            stubbed.append(name)
    try:
        with patch(torch.Tensor, "cuda", _same), patch(nn.Module, "cuda", _same), \
                patch(torch.Tensor, "float", _working_precision):
            yield
    finally:
        for name in stubbed:
            sys.modules.pop(name, None)


def import_official(root: Path, *modules: str) -> list[types.ModuleType]:
    """Import modules of the user's official clone at ``root`` (the clone is put first on ``sys.path`` for the
    import only). Official repositories reuse top-level names (``models``, ``utils``, ``dataset``), so every module
    the import adds is dropped from ``sys.modules`` again; the returned module objects keep working."""
    before = set(sys.modules)
    sys.path.insert(0, str(root))
    try:
        return [importlib.import_module(m) for m in modules]
    finally:
        sys.path.remove(str(root))
        # Decide which modules are the clone's before deleting any (a namespace package's ``__path__`` is recomputed
        # from its parent in sys.modules), then delete children before their parent.
        added = sorted((name for name in set(sys.modules) - before if _inside(sys.modules[name], Path(root))),
                       reverse=True)
        for name in added:
            del sys.modules[name]


def _inside(module: types.ModuleType, root: Path) -> bool:
    paths = [getattr(module, "__file__", None), *list(getattr(module, "__path__", []) or [])]
    return any(p is not None and Path(p).resolve().is_relative_to(root.resolve()) for p in paths)


# --- building the project side ----------------------------------------------------------------------------------------
# The official networks are full-size ResNet-18s; inputs are tiny so that float64 on a CPU stays fast. On a 32x32
# input the trunk's last stage runs at 1x1, which still exercises every layer.
AUDIO = ModalitySpec("audio", "spectrogram", (1, 32, 32))
VISUAL = ModalitySpec("visual", "frames", (3, 1, 32, 32))


def av_task(dataset: str, num_classes: int) -> TaskSpec:
    return TaskSpec(dataset=dataset, num_classes=num_classes, modalities=(AUDIO, VISUAL))


def build_method(method: str, task: TaskSpec, hparams: Mapping[str, Any], *, epochs: int, lr: float,
                 momentum: float = 0.9, weight_decay: float = 1e-4, seed: int = 0) -> Method:
    """The registered method at full ResNet-18 width, seeded, in the current default dtype (float64)."""
    cls = get_method(method)
    hp = resolve(method, method_hparams(cls), task.dataset, dict(hparams), variants=cls.VARIANTS)
    train_hp = resolve("train", TRAIN_HPARAMS, None, {"epochs": epochs, "lr": lr, "momentum": momentum,
                                                      "weight_decay": weight_decay, "optimizer": "sgd"})
    model_hp = resolve("model", MODEL_HPARAMS, task.dataset, {"width": 64, "blocks": [2, 2, 2, 2]})
    ctx = TrainContext(device=torch.device("cpu"), epochs=epochs, train_hp=train_hp, model_hp=model_hp)
    torch.manual_seed(seed)
    return cls(task, hp, ctx)


def av_batches(task: TaskSpec, count: int, batch_size: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Fixed random batches in the project's format (float64 inputs, int64 labels), the same for both sides."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        batch = {m.name: torch.randn((batch_size, *m.shape), generator=gen, dtype=DTYPE) for m in task.modalities}
        batch["label"] = torch.randint(task.num_classes, (batch_size,), generator=gen)
        batch["index"] = torch.arange(i * batch_size, (i + 1) * batch_size)
        out.append(batch)
    return out


class EpochLoader:
    """One epoch of batches for an official training function, converted to its format by ``convert``; it reports
    each finished step (``checkpoint("e{epoch}s{k}")``) when the loop asks for the next batch or ends, and calls
    ``before_step(global_step)`` before serving a batch (seeding the RNG the step draws from)."""

    def __init__(self, batches: list[dict], epoch: int, checkpoint: Checkpoint, convert: Callable[[dict], tuple],
                 before_step: Callable[[int], None] = lambda step: None) -> None:
        self.batches, self.epoch, self.checkpoint = batches, epoch, checkpoint
        self.convert, self.before_step = convert, before_step

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple]:
        for k, b in enumerate(self.batches):
            if k:
                self.checkpoint(f"e{self.epoch}s{k - 1}")
            self.before_step(self.epoch * len(self.batches) + k)
            yield self.convert(b)
        self.checkpoint(f"e{self.epoch}s{len(self.batches) - 1}")


class StepProject:
    """The usual project side: the method's ``update`` on ``batches``, ``steps`` per epoch, a checkpoint after each;
    the update logs named in ``logged`` are compared as ``q/`` quantities beside every tensor of the method."""

    logged: tuple[str, ...] = ()

    def __init__(self, method: Method, batches: list[dict], epochs: int, steps: int) -> None:
        self.method, self.batches, self.epochs, self.per_epoch = method, batches, epochs, steps
        self.values: dict[str, Any] = {}

    def before_step(self, epoch: int, step: int) -> None:
        """Runs before each update (a case seeds a random draw the official side makes here)."""

    def steps(self) -> Iterator[str]:
        for epoch in range(self.epochs):
            for k in range(self.per_epoch):
                self.before_step(epoch, k)
                logs = self.method.update(self.batches[epoch * self.per_epoch + k],
                                          StepInfo(epoch, k, self.per_epoch, self.epochs))
                self.values = {key: logs[key] for key in self.logged}
                yield f"e{epoch}s{k}"

    def snapshot(self) -> Snapshot:
        return {**module_snapshot(self.method, [self.method.optimizer]), **quantities(self.values)}


# --- snapshots and weight maps ----------------------------------------------------------------------------------------
def module_snapshot(module: nn.Module, optimizers: list[torch.optim.Optimizer],
                    rename: Callable[[str], str | None] = lambda n: n) -> Snapshot:
    """Parameters, buffers and per-parameter optimizer state under the project's names (``rename`` maps an official
    name to the project's; None leaves it out). The tensors are the live ones: compare or fingerprint them before the
    next step."""
    out: Snapshot = {}
    names = {}
    for name, p in module.named_parameters():
        mapped = rename(name)
        if mapped is not None:
            out[f"param/{mapped}"] = p.detach()
            names[p] = mapped
    for name, b in module.named_buffers():
        mapped = rename(name)
        if mapped is not None:
            out[f"buffer/{mapped}"] = b.detach()
    for opt in optimizers:
        for p, state in opt.state.items():
            if p in names:
                for key, value in state.items():
                    if torch.is_tensor(value):
                        out[f"optim/{names[p]}/{key}"] = value.detach()
    return out


def quantities(values: Mapping[str, float | torch.Tensor]) -> Snapshot:
    return {f"q/{k}": torch.as_tensor(v, dtype=DTYPE).detach().clone().reshape(-1) for k, v in values.items()}


def resnet_name(name: str) -> str:
    """Official ResNet-18 (OGM-GE ``models/backbone.py`` and its copies) -> ``baselines.networks.ResNetTrunk``."""
    if name.startswith("conv1."):
        return "stem.0." + name[len("conv1."):]
    if name.startswith("bn1."):
        return "stem.1." + name[len("bn1."):]
    if name.startswith("layer"):
        stage, rest = name[len("layer"):].split(".", 1)
        return f"stages.{int(stage) - 1}.{rest}"
    raise KeyError(f"unexpected ResNet-18 entry {name!r}")


# A weight-map rule: (official prefix, the project's prefix or None for an entry with no project counterpart, a
# rename of the rest of the name or None to keep it).
NameRule = tuple[str, str | None, Callable[[str], str] | None]


def name_map(rules: Sequence[NameRule], model: str) -> Callable[[str], str | None]:
    """The weight map ``official entry -> project entry`` of the official ``model``: the first rule whose official
    prefix starts the entry gives the project's prefix plus the (renamed) rest, or None; an entry no rule matches is
    an error naming the model."""
    def rename(name: str) -> str | None:
        for prefix, target, rest_name in rules:
            if name.startswith(prefix):
                if target is None:
                    return None
                rest = name[len(prefix):]
                return target + (rest_name(rest) if rest_name else rest)
        raise KeyError(f"unmapped {model} entry {name!r}")
    return rename


# OGM-GE's ``AVClassifier`` (and its copies): the ResNet-18 trunks, the concat head, the fused and unimodal heads.
AV_TRUNKS: tuple[NameRule, ...] = (("audio_net.", "model.encoders.audio.trunk.", resnet_name),
                                   ("visual_net.", "model.encoders.visual.trunk.", resnet_name))
FC_OUT: NameRule = ("fusion_module.fc_out.", "model.head.fc.", None)
FUSED_UNI_HEADS: tuple[NameRule, ...] = (("head.", "model.head.fused.", None),
                                         ("head_audio.", "model.head.uni.audio.", None),
                                         ("head_video.", "model.head.uni.visual.", None))


def load_mapped(module: nn.Module, source: Mapping[str, torch.Tensor], rename: Callable[[str], str | None]) -> None:
    """Copy every entry of ``module``'s state dict from ``source`` (project names) through ``rename``; every
    official entry must be found and match in shape."""
    state = module.state_dict()
    for name, value in state.items():
        mapped = rename(name)
        if mapped is None:
            continue
        if mapped not in source:
            raise KeyError(f"official entry {name!r} maps to {mapped!r}, which the project model does not have")
        if source[mapped].shape != value.shape:
            raise ValueError(f"official {name!r} {tuple(value.shape)} vs project {mapped!r} "
                             f"{tuple(source[mapped].shape)}")
        state[name] = source[mapped].detach().clone()
    module.load_state_dict(state)
