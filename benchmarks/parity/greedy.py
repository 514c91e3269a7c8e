"""Greedy against its two official sources: the curation rule of GitHub nyukat/greedy_multimodal_learning
(``src/callbacks.py`` ``Bias_Mitigation_Strong``) and the audio-visual MMTM model of GitHub GeWu-Lab/BalanceBenchmark
(``balancemm/models/avclassify_model.py`` ``BaseClassifierGreedyModel`` and ``MMTM``, trained by
``balancemm/trainer/Greedy_trainer.py`` ``GreedyTrainer``).

The project follows the paper's code for the conditional-learning-speed rule (epsilon 0.01, a starting epoch) and BB
for the A/V architecture (the paper's code has ModelNet40 and NVGesture models only). So the paper-default case
``greedy`` drives ``Bias_Mitigation_Strong`` unmodified on BB's model: ``on_epoch_begin`` with the epoch counted from
1 as ``src/framework.py`` ``Model.train_loop`` does, then per step ``zero_grad``, BB's
``GreedyTrainer.training_step`` (the MMTM forward with the callback's curation mode and cared-for modality, the
cross-entropy, backward), ``on_backward_end`` and ``optimizer.step``, in ``Model.train_loop``'s order. The callback
finds the bypass and main parameters by BB's names (``MMTMnames`` and ``branchnames`` are the modality names in the
project's order) and sets the curation state on the BB trainer, whose ``training_step`` reads it. The case
``greedy_bb`` (variant bb) runs BB's ``GreedyTrainer.train_loop`` (its own copy of the rule, with no starting epoch)
unmodified.

Harness choices: both sides see the same batches of 64 clips (BB's ``MMTM.forward`` folds the frames back with a
hard-coded B = 64; the project takes B from the batch, which agrees at 64 only) of tiny inputs, an 8x8 spectrogram
and 2 frames of 8x8, so that 64 clips in float64 stay fast. Both use the runner's SGD (lr 1e-2, momentum 0.9, weight
decay 1e-4) instead of the paper's lr 0.1 without momentum, so that momentum buffers are compared too. The curation
window is shortened (2 steps in the paper case, 3 in the BB case, on both sides) so that a few steps cross a whole
window across an epoch boundary and a second trigger. Every other setting of the official side is the official
configuration's (``GIN_EPSILON``, ``GIN_STARTING_EPOCH``, ``BB_ALPHA``), not the project's, so a project default that
drifts from it shows. The project counts epochs from 0, the paper's ``Model.train_loop`` from 1: the callback's
official starting_epoch 2 is the project's default 1. On these inputs |d| is about 0.2 from the first step, with
the sign of BDR_visual - BDR_audio, so the modality order decides which branch of the rule runs: the paper case puts
visual first (d > 0, modality 0 cared for), the BB case audio first (d < 0, modality 1 cared for).

Project departures not visible here: B from the batch (the same at 64); running averages moved by training forwards
only (there are no evaluation forwards in the run); both sides follow BB's fix of the paper's ``MMTM_mitigate``, which
updates the second stream's running average from the first stream's gate (the paper's forward is not driven).

The paper's code imports gin, argh and pandas, which the project does not install: ``gin.configurable`` is stood in
by the identity (always: gin refuses to register a class twice), argh and pandas are stubbed where missing (the
callback never calls them); ``src/__init__.py`` (matplotlib and a root
logger set-up) is not executed, the ``src`` package is only given its path.

Workarounds for BB's released code (4c1482f), for the run only: ``MMTM.forward`` starts with
``self.running_avg_weight = {}`` (commit c1ce5a8) and then reads ``self.running_avg_weight[modality]``, which fails
with a KeyError at the first forward; the harness ignores that reset, keeping the running averages across forwards as
BB's earlier code (4909c17) and the paper's ``MMTM_mitigate`` do. ``resnet_process`` permutes the frames to
(B, T, C, H, W), casts them with ``.float()`` and unpacks their size as ``(_, C, H, W)``, which fails for any clip (the
fold to (B*T, C, H, W) it needs is commented out above that line); during BB's forward ``.float()`` of a 5-D tensor
returns it folded (``fold_frames``), after which the released lines run as written. ``training_step`` calls
``model.Unimodality_Calculate()``, which the model spells ``unimodality_calculate``: the former is bound to the
latter on the model instance.

Compared besides every parameter, BN buffer and momentum buffer: each block's running gate averages and step count
(BB keeps them as plain attributes), the cumulative speed sums (``buffer/speeds``: bypass and main of audio, visual),
d = BDR_0 - BDR_1 (``buffer/d_bdr``), the curation mode, the cared-for modality, and the window position while
curating.
"""

from __future__ import annotations

import io
import sys
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from benchmarks.parity.balancebench import Hub, Metrics, bb_encoder, stubbed_imports
from benchmarks.parity.core import (
    DTYPE,
    Case,
    Checkpoint,
    EpochLoader,
    MissingCloneError,
    Snapshot,
    StepProject,
    av_batches,
    build_method,
    cpu_patches,
    import_official,
    load_mapped,
    module_snapshot,
    name_map,
    patch,
    resnet_name,
)
from core.data import ModalitySpec, TaskSpec

BATCH, SIZE, FRAMES = 64, 8, 2   # BB's MMTM.forward hard-codes B = 64
LR, NUM_CLASSES = 1e-2, 6
MODALITIES = ("audio", "visual")
SPECS = {"audio": ModalitySpec("audio", "spectrogram", (1, SIZE, SIZE)),
         "visual": ModalitySpec("visual", "frames", (3, FRAMES, SIZE, SIZE))}
# Per case: epochs, steps per epoch, the modality order (modality 0 first; see the module docstring).
SCHEDULES = {"greedy": (3, 2, ("visual", "audio")), "greedy_bb": (2, 3, ("audio", "visual"))}
WINDOW = {"greedy": 2, "greedy_bb": 3}
# The official settings the official side runs with: nyukat/greedy_multimodal_learning configs/training.gin
# (Bias_Mitigation_Strong.epsilon, .starting_epoch counted from 1) and BB configs/trainer_config.yaml (Greedy alpha).
GIN_EPSILON, GIN_STARTING_EPOCH, BB_ALPHA = 0.01, 2, 0.001


def greedy_task(order: tuple[str, ...]) -> TaskSpec:
    return TaskSpec(dataset="cremad", num_classes=NUM_CLASSES, modalities=tuple(SPECS[m] for m in order))


def mmtm_name(rest: str) -> str:
    """``<block>.<entry>`` of an official ``mmtm_layers.mmtm<block>`` -> the project's MMTM block entry."""
    block, rest = rest.split(".", 1)
    return f"{block}." + rest.replace("fc_squeeze.", "squeeze.").replace("fc_excites.", "excite.")


# ``BaseClassifierGreedyModel`` entry -> the project's ``Greedy`` entry.
official_name = name_map((*((f"modality_encoder.{m}.", f"net.trunks.{m}.", resnet_name) for m in MODALITIES),
                          ("mmtm_layers.mmtm", "net.mmtm.", mmtm_name),
                          ("fusion_module.fc_out.", "net.head.fc.", None)), "BaseClassifierGreedyModel")


def curation_state(speeds: list[float], d: float, curating: bool, caring: int | None, step: int) -> Snapshot:
    """The rule's state in the project's buffer names; the window position only while curating (both rules leave it
    stale outside a window)."""
    out = {"buffer/speeds": torch.tensor(speeds, dtype=DTYPE), "buffer/d_bdr": torch.tensor(d, dtype=DTYPE),
           "buffer/curating": torch.tensor(float(curating), dtype=DTYPE),
           "buffer/caring": torch.tensor(float(caring or 0), dtype=DTYPE)}
    if curating:
        out["buffer/curation_step"] = torch.tensor(float(step), dtype=DTYPE)
    return out


class Project(StepProject):
    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        epochs, steps, order = SCHEDULES[case.name]
        task = greedy_task(order)
        method = build_method(case.method, task, {**case.hparams, **overrides}, epochs=epochs, lr=LR)
        super().__init__(method, av_batches(task, epochs * steps, BATCH, seed=BATCH_SEED), epochs, steps)

    def snapshot(self) -> Snapshot:
        m = self.method
        out = {k: v for k, v in module_snapshot(m, [m.optimizer]).items()
               if k not in ("buffer/speeds", "buffer/d_bdr", "buffer/curating", "buffer/caring",
                            "buffer/curation_step")}
        return {**out, **curation_state(m.speeds.tolist(), m.d_bdr.item(), bool(m.curating), m.caring.item(),
                                        m.curation_step.item())}


class KeepRunningAverages:
    """Class attribute for BB's ``MMTM`` during the run: reads the instance's ``running_avg_weight`` and ignores the
    empty dict ``forward`` assigns first (see the module docstring)."""

    def __get__(self, obj: Any, owner: type) -> Any:
        return obj.__dict__["running_avg_weight"]

    def __set__(self, obj: Any, value: dict) -> None:
        if value:
            obj.__dict__["running_avg_weight"] = value


def fold_frames(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``Tensor.float()`` during BB's forward: the working precision (as ``cpu_patches``), and a 5-D clip
    (B, T, C, H, W) folded to (B*T, C, H, W) (see the module docstring)."""
    return (self.flatten(0, 1) if self.dim() == 5 else self).to(torch.get_default_dtype())


def bb_greedy_model(cls: type, order: tuple[str, ...]) -> Any:
    """BB's model with its modalities (``modalitys``: the encoders' keys) in the project's order."""
    with patch(sys, "stdout", io.StringIO()):
        model = cls({"n_classes": NUM_CLASSES, "fusion": "concat", "device": " ",
                     "encoders": {m: bb_encoder(m) for m in order},
                     "modality_size": {m: 512 for m in order}})
    model.Unimodality_Calculate = model.unimodality_calculate
    return model


class Official:
    """BB's model and ``GreedyTrainer`` (its ``__init__`` run with ``BaseTrainer.__init__``, which sets up Fabric,
    skipped); the trainer attributes ``train_loop`` reads are set as in ``balancebench``."""

    def __init__(self, case: Case, root: Path, project: Project) -> None:
        with stubbed_imports(), cpu_patches(), patch(sys, "stdout", io.StringIO()):
            trainer_mod, base_mod, model_mod = import_official(
                root, "balancemm.trainer.Greedy_trainer", "balancemm.trainer.base_trainer",
                "balancemm.models.avclassify_model")
        self.mmtm_class = model_mod.MMTM
        # BB's trainer_config.yaml Greedy settings, not the project's (the official side must be able to disagree);
        # only the window is the case's, shortened on both sides.
        method_dict = {"alpha": BB_ALPHA, "modulation_starts": 0, "modulation_ends": 80, "modality": 2,
                       "window_size": WINDOW[case.name]}
        with patch(base_mod.BaseTrainer, "__init__", lambda self, *args, **kwargs: None):
            self.trainer = trainer_mod.GreedyTrainer(None, method_dict, {})
        self.trainer.fabric, self.trainer.PrecisionCalculatorType = Hub(), Metrics
        self.trainer.progbar_wrapper = lambda iterable, total, **kwargs: iterable
        self.trainer._format_iterable = lambda *args: None
        self.trainer.should_stop, self.trainer.global_step, self.trainer.grad_accum_steps = False, 0, 1
        self.trainer._current_train_return = None
        self.order = project.method.modalities
        self.model = bb_greedy_model(model_mod.BaseClassifierGreedyModel, self.order)
        load_mapped(self.model, project.method.state_dict(), official_name)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.batches, self.epochs, self.steps = project.batches, project.epochs, project.per_epoch

    @contextmanager
    def patches(self) -> Iterator[None]:
        with cpu_patches(), patch(torch.Tensor, "float", fold_frames), \
                patch(self.mmtm_class, "running_avg_weight", KeepRunningAverages()):
            yield

    def run(self, checkpoint: Checkpoint) -> None:
        self.model.train()
        for epoch in range(self.epochs):
            self.trainer.current_epoch = epoch
            loader = EpochLoader(self.batches[epoch * self.steps:(epoch + 1) * self.steps], epoch, checkpoint, dict)
            with self.patches():
                self.trainer.train_loop(self.model, self.optimizer, loader)

    def rule_state(self) -> Snapshot:
        t = self.trainer
        return curation_state([t.M_bypass_modal_0, t.M_bypass_modal_1, t.M_main_modal_0, t.M_main_modal_1],
                              float(t.speed), t.curation_mode, t.caring_modality, t.curation_step)

    def snapshot(self) -> Snapshot:
        out = module_snapshot(self.model, [self.optimizer], official_name)
        for key, block in self.model.mmtm_layers.items():
            i = key[len("mmtm"):]
            for m in MODALITIES:
                out[f"buffer/net.mmtm.{i}.avg_{m}"] = block.__dict__["running_avg_weight"][m]
            out[f"buffer/net.mmtm.{i}.steps"] = torch.tensor(block.step)
        return {**out, **self.rule_state()}


def gin_stand_in() -> dict[str, types.ModuleType]:
    """``gin`` as the paper's modules use it at import: ``@gin.configurable`` (identity) and ``gin.config``'s two
    registries."""
    gin, config = types.ModuleType("gin"), types.ModuleType("gin.config")
    gin.configurable = lambda obj: obj
    config._OPERATIVE_CONFIG, config._CONFIG = {}, {}
    gin.config = config
    return {"gin": gin, "gin.config": config}


@contextmanager
def paper_imports(root: Path) -> Iterator[None]:
    """The paper's ``src`` package by path only (its ``__init__`` is not run) and gin's stand-in, also where gin is
    installed (gin refuses a second registration of the same configurable, and every run imports the callbacks
    afresh)."""
    src = types.ModuleType("src")
    src.__path__ = [str(root / "src")]
    added = {"src": src, **gin_stand_in()}
    saved = {name: sys.modules[name] for name in added if name in sys.modules}
    sys.modules.update(added)
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


class PaperOfficial(Official):
    """``Bias_Mitigation_Strong`` driving BB's model in ``Model.fit_generator``'s step order (module docstring)."""

    def __init__(self, case: Case, root: Path, project: Project) -> None:
        bb = root.parent / BB_CLONE
        if not bb.is_dir():
            raise MissingCloneError(f"parity case {case.name!r} also needs a clone of GitHub {REPO} at commit "
                                    f"{COMMIT[:7]} in {bb}")
        super().__init__(case, bb, project)
        with paper_imports(root), cpu_patches(("argh", "pandas")):
            (callbacks,) = import_official(root, "src.callbacks")
        # configs/training.gin: epsilon 0.01, starting_epoch 2, curation_windowsize 5 (shortened to the case's window
        # on both sides); the official values, not the project's, so that the two can disagree.
        self.callback = callbacks.Bias_Mitigation_Strong(
            epsilon=GIN_EPSILON, curation_windowsize=WINDOW[case.name], branchnames=list(self.order),
            starting_epoch=GIN_STARTING_EPOCH, MMTMnames=list(self.order))
        self.callback.set_model(self.model, ignore=False)   # as src/training_loop.py does
        self.callback.set_model_pytoune(self.trainer)       # the object whose curation state the forward reads
        self.callback.on_train_begin({})

    def run(self, checkpoint: Checkpoint) -> None:
        self.model.train()
        for epoch in range(1, self.epochs + 1):
            self.callback.on_epoch_begin(epoch, {})
            self.trainer.current_epoch = epoch - 1
            for k in range(self.steps):
                batch = dict(self.batches[(epoch - 1) * self.steps + k])
                with self.patches():
                    self.optimizer.zero_grad()
                    self.trainer.training_step(self.model, batch, k)
                    self.callback.on_backward_end(k)
                    self.optimizer.step()
                checkpoint(f"e{epoch - 1}s{k}")

    def rule_state(self) -> Snapshot:
        c, t = self.callback, self.trainer
        return curation_state([c.M_bypass_modal_0, c.M_bypass_modal_1, c.M_main_modal_0, c.M_main_modal_1],
                              float(c.d_BDR), t.curation_mode, t.caring_modality, getattr(c, "curation_step", 0))


BATCH_SEED = 3
REPO = "GeWu-Lab/BalanceBenchmark"
COMMIT = "4c1482fca5aaa8d4278af8e26020daa039e3ccf3"
BB_CLONE = "BalanceBenchmark"
PAPER_REPO = "nyukat/greedy_multimodal_learning"
PAPER_COMMIT = "a190e03755bd8d0883b2c5c0cd7921d2561ce2ee"
CASES = [
    Case(name="greedy", method="greedy", hparams={"window": WINDOW["greedy"]}, repo=PAPER_REPO, commit=PAPER_COMMIT,
         entry="src/callbacks.py Bias_Mitigation_Strong (on_train_begin/on_epoch_begin/on_backward_end) in "
               f"src/framework.py Model.train_loop's step order; GitHub {REPO} @{COMMIT[:7]} "
               "balancemm/models/avclassify_model.py BaseClassifierGreedyModel, MMTM and "
               "balancemm/trainer/Greedy_trainer.py GreedyTrainer.training_step",
         covers=f"{SCHEDULES['greedy'][0]} epochs x {SCHEDULES['greedy'][1]} steps (batch {BATCH} clips of "
                f"{FRAMES} frames; modality 0 = visual), epsilon 0.01, window {WINDOW['greedy']}: speeds summed "
                "without curation in epoch 0 (the callback's starting_epoch 2 counted from 1), the trigger at e1s0 "
                "(d > 0: visual cared for), a curation window across the epoch boundary (e1s1, e2s0; sums frozen), "
                "re-measurement and a second trigger at e2s1; parameters, BN buffers, momentum buffers, running gate "
                "averages, speed sums, d and the curation state each step",
         project=Project, official=PaperOfficial, notes=__doc__),
    Case(name="greedy_bb", method="greedy", hparams={"variant": "bb", "window": WINDOW["greedy_bb"]}, repo=REPO,
         commit=COMMIT, deviations={"starting_epoch": 1},
         entry="balancemm/trainer/Greedy_trainer.py GreedyTrainer.train_loop/training_step/compute_learning_speed; "
               "balancemm/models/avclassify_model.py BaseClassifierGreedyModel, MMTM",
         covers=f"{SCHEDULES['greedy_bb'][0]} epochs x {SCHEDULES['greedy_bb'][1]} steps (batch {BATCH} clips of "
                f"{FRAMES} frames; modality 0 = audio), alpha 0.001, window {WINDOW['greedy_bb']}: the trigger at "
                "the first step (d < 0: visual cared for), a window across the epoch boundary (e0s1-e1s0), "
                "re-measurement and a second trigger at e1s1; the same quantities as greedy. Epsilon's flip (0.01) "
                "is not observable here (|d| is about 0.2 at every measurement)",
         project=Project, official=Official, notes=__doc__),
]
