"""MSES: modality-specific early stopping, as re-implemented in the AGM code (docs/methods/mses-mslr.md#mses).

Paper (abstract only checked): "Modality-Specific Learning Rate Control for Multimodal Classification", ACPR 2019
(authors not verified here): a multitask model with modality-specific and multimodal classifiers, detection of
overfitting per modality, and early stopping of each modality separately. The authors' code was not located. This
follows the third-party re-implementation in GitHub lihong2303/AGM_ICCV2023, ``run/CREMAD_main.py`` (functions
``train``, ``test`` and ``CREMAD_main``, branch ``methods == "MSES"``) with model ``model/CREMAD_net.py``
``AVClassifier_Sum``; hence the row label "MSES (AGM re-impl.)".

Model and loss: H-sum (z = z_a + z_v, z_m = W_m h_m + b_m), L = CE(z); after backward the gradients of each
modality's encoder and classifier are multiplied by its multiplier (1 until the modality stops).

Per epoch (``on_epoch_end``): the per-modality CE of z_m on the VALIDATION split (``eval_split``; the re-implementation
uses its test split: ``official_compat``), L_m(e). Smoothed L~_m(e) = 0.6 L_m(e-1) + 0.4 L_m(e) with the previous RAW
value (L~ = L at the first epoch). When L~_m improves on its best, e*_m = e and a snapshot of the model and the
optimizer is kept (the re-implementation writes one full checkpoint per improving epoch). When e - e*_m > patience (80)
the modality is stopped: its multiplier becomes 0 and the FULL snapshot of e*_m is reloaded, which also rewinds the
other modality (a quirk of the re-implementation, followed). Not followed: the re-implementation's reload also restores
the learning rate of e*_m (it is in the optimizer state; its StepLR then continues from it, so with its defaults, decay
at epoch 70 and patience 80, a stopped run goes on at the pre-decay rate); here the runner's schedule keeps the current
rate. With both stopped the re-implementation exits; here the runner owns the epoch count, so the remaining ``update``
calls are no-op steps and the model stays as reloaded.

Stopping mode: ``stop_mode=zero_grad`` (the re-implementation) multiplies the gradients by 0, so SGD's weight decay
and momentum still move the stopped parameters; ``freeze`` drops their gradients (None), so the optimizer skips them
[project option]. Details of the re-implementation kept: the validation CE is computed with the model in eval mode;
its epoch 1 is never snapshotted unless accuracy also improves (here the first epoch is snapshotted, so a stop can
always reload its best epoch). The re-implementation averages batch-mean losses; here it is the per-sample mean over
the split, which differs only through the last partial batch.

Modulation window (``modulation_ends``): the re-implementation multiplies the gradients only while
``modulation_starts <= epoch <= modulation_ends`` (``utils/config.py`` defaults 0 and 20, on its 1-based epochs) and
runs the plain backward outside it. With patience 80 the earliest stop is its epoch 82, so under those defaults a
stopped modality is reloaded from its best epoch but then keeps training: the multiplier 0 never applies. The project
default applies the stop in every epoch (``-1``); ``official_compat`` sets the re-implementation's window, 1-based
epochs 0-20 = 0-based epochs through 19. Epoch differences (patience, best epoch) do not depend on the base.

Cost: one extra no_grad pass over the evaluation split per epoch; memory: up to one model + optimizer snapshot per
modality, kept on the CPU in the checkpoint (``extra_state``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from baselines.base import (
    FusionMethod,
    Loaders,
    StepInfo,
    TrainContext,
    loss_precision,
    zero_grad,
)
from baselines.registry import register
from core.data import Batch, TaskSpec
from core.hparams import HParam, HParams


def smoothed_loss(previous_raw: float | None, raw: float, weight_previous: float) -> float:
    """L~(e) = w L(e-1) + (1 - w) L(e) with the previous RAW value; L(e) itself at the first epoch."""
    return raw if previous_raw is None else weight_previous * previous_raw + (1 - weight_previous) * raw


def should_stop(epoch: int, best_epoch: int, patience: int) -> bool:
    """The re-implementation's rule: stop when more than ``patience`` epochs have passed since the best one."""
    return epoch - best_epoch > patience


def _to_cpu(obj: Any) -> Any:
    """A deep copy of a (nested) state dict with every tensor on the CPU."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


@register
class MSES(FusionMethod):
    name = "mses"
    title = "MSES (AGM re-impl.)"
    DATA_PARALLEL = "exact"  # stopping decisions from whole-split losses, equal on every rank
    PAPER = '"Modality-Specific Learning Rate Control for Multimodal Classification", ACPR 2019 (authors unverified)'
    CODE = 'Re-implementation: GitHub lihong2303/AGM_ICCV2023, run/CREMAD_main.py, CREMAD_main (methods == "MSES")'
    HEAD = "sum"
    MODALITIES = (2, 3)
    HPARAMS = (
        HParam("patience", 80, "Stop a modality when epoch - best epoch > patience (AGM re-impl. CREMAD_main.py).",
               low=0),
        HParam("smoothing", 0.6, "Weight of the previous raw loss in the smoothed loss (AGM re-impl.: 0.6/0.4).",
               low=0, high=1),
        HParam("eval_split", "val", "Split of the per-modality CE: val (clean protocol); test = the AGM "
                                    "re-implementation's choice.", choices=("val", "test")),
        HParam("stop_mode", "zero_grad", "zero_grad = multiply a stopped modality's gradients by 0 (AGM re-impl.; "
                                         "weight decay and momentum still act); freeze = drop them [project].",
               choices=("zero_grad", "freeze")),
        HParam("modulation_ends", -1, "Last epoch (0-based, inclusive) in which a stopped modality's gradients are "
                                      "scaled; -1 = all epochs. The AGM re-impl. scales them while 0 <= epoch <= 20 "
                                      "on its 1-based epochs (utils/config.py defaults), i.e. through 0-based epoch "
                                      "19, and runs the plain backward afterwards."),
    )
    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {"official_compat": {"eval_split": "test", "modulation_ends": 19}}
    HELD_OUT_KEY = "eval_split"

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """MSES's early stop fired: some epoch ended with fewer active modalities than the run has (diag
        ``active_modalities`` below the count of its ``best_epoch_*`` keys, or 0 once every modality stopped). A stop
        reloads the best epoch's snapshot, so it changes the parameters even outside the modulation window. The
        counts are exact small integers as floats."""
        judged = False
        for record in history:
            diag = record.get("diag") or {}
            if "active_modalities" not in diag:
                continue
            judged = True
            total = sum(key.startswith("best_epoch_") for key in diag)
            if diag["active_modalities"] == 0 or diag["active_modalities"] < total:
                return True
        return False if judged else None

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        n = len(self.modalities)
        self.register_buffer("stopped", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("best_loss", torch.full((n,), float("inf"), dtype=torch.float64))
        self.register_buffer("best_epoch", torch.zeros(n, dtype=torch.long))
        self.register_buffer("last_raw", torch.full((n,), float("nan"), dtype=torch.float64))
        self.snapshots: dict[int, dict[str, Any]] = {}

    def modality_params(self, m: str) -> list[torch.nn.Parameter]:
        return list(self.model.encoders[m].parameters()) + list(self.model.head.heads[m].parameters())

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        if bool(self.stopped.all()):
            return {}
        with self.ctx.autocast():
            _, z, _ = self.model(self.inputs(batch))
            loss = F.cross_entropy(loss_precision(z), batch["label"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        modulating = self.hp.modulation_ends < 0 or step.epoch <= self.hp.modulation_ends
        for i, m in enumerate(self.modalities):
            if self.stopped[i] and modulating:
                if self.hp.stop_mode == "freeze":
                    zero_grad(self.modality_params(m))
                else:
                    for p in self.modality_params(m):
                        if p.grad is not None:
                            p.grad.mul_(0.0)
        self.optimizer.step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def modality_losses(self, loaders: Loaders) -> list[float]:
        """Per-sample mean CE of each z_m over the evaluation split, in eval mode."""
        loader = self.held_out_loader(loaders)
        self.eval()
        sums, n = torch.zeros(len(self.modalities), dtype=torch.float64, device=self.ctx.device), 0
        for batch in loader:
            with self.ctx.autocast():
                _, _, z_uni = self.model(self.inputs(batch))
            labels = batch["label"]
            sums += torch.stack([F.cross_entropy(loss_precision(z_uni[m]), labels, reduction="sum")
                                 for m in self.modalities]).double()
            n += len(labels)
        self.train()
        return (sums / n).tolist()

    def snapshot(self) -> dict[str, Any]:
        return {"model": _to_cpu(self.model.state_dict()), "optimizer": _to_cpu(self.optimizer.state_dict())}

    def restore(self, epoch: int) -> None:
        snap = self.snapshots[epoch]
        self.model.load_state_dict(snap["model"])
        self.optimizer.load_state_dict(snap["optimizer"])
        # The snapshot carries the lr of its epoch; the runner's schedule owns the current one.
        self.ctx.set_lr_factor(self.ctx.lr_factor)

    def on_epoch_end(self, epoch: int, loaders: Loaders) -> dict[str, float]:
        if bool(self.stopped.all()):
            return {"active_modalities": 0.0}
        raw = self.modality_losses(loaders)
        diag = {}
        improved = False
        for i, m in enumerate(self.modalities):
            prev = self.last_raw[i].item()
            smooth = smoothed_loss(None if math.isnan(prev) else prev, raw[i], self.hp.smoothing)
            self.last_raw[i] = raw[i]
            if smooth < self.best_loss[i].item():
                self.best_loss[i] = smooth
                self.best_epoch[i] = epoch
                improved = improved or not bool(self.stopped[i])
            diag[f"held_out_ce_{m}"], diag[f"smoothed_ce_{m}"] = raw[i], smooth
        if improved:
            self.snapshots[epoch] = self.snapshot()
        for i, m in enumerate(self.modalities):
            if not self.stopped[i] and should_stop(epoch, self.best_epoch[i].item(), self.hp.patience):
                self.stopped[i] = True
                self.restore(self.best_epoch[i].item())
        # Only a modality that can still stop needs its best snapshot.
        keep = {int(e) for e, done in zip(self.best_epoch, self.stopped) if not done}
        self.snapshots = {e: s for e, s in self.snapshots.items() if e in keep}
        diag.update({f"best_epoch_{m}": float(self.best_epoch[i]) for i, m in enumerate(self.modalities)})
        diag["active_modalities"] = float((~self.stopped).sum())
        return diag

    def extra_state(self) -> dict[str, Any]:
        return {"snapshots": self.snapshots}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        # The runner maps the checkpoint onto the training device; snapshots live on the CPU.
        self.snapshots = _to_cpu(dict(state.get("snapshots", {})))
