"""G-Blending: gradient blending with weights from overfitting-to-generalisation ratios (docs/methods/gblending.md).

Paper: Weiyao Wang, Du Tran, Matt Feiszli, "What Makes Training Multi-modal Classification Networks Hard?", CVPR 2020,
arXiv 1905.12681 (online G-Blend, Algorithm 1). No official code was located; the only concrete implementation known
is BalanceBenchmark (BB, GitHub GeWu-Lab/BalanceBenchmark @4909c17, ``balancemm/trainer/GBlending_trainer.py``,
``super_epoch_origin``), which this follows.

Training step: L = sum_k w_k CE(z_k) over the heads k in {each modality, fused}, with the split-head logits of the
concat head (z_m = W[:, slice_m] h_m + b/M; the gradient flows into that slice, the bias and encoder m).

Estimation (P9, P11), in ``on_epoch_start`` of every epoch e with e mod ``super_epoch`` = 0 (epoch 0 included): for
each head k, the current model is copied into a scratch model, the scratch optimizer's state is reset, and the copy is
trained for ``estimate_epochs`` epochs on CE of the FUSED output with the other modalities' inputs zeroed (k = fused:
nothing zeroed; P1 ``drop`` mode input). Then g = L_val,end - L_val,start, O = (L_val,end - L_train,end) -
(L_val,start - L_train,start), w_k = |g / O^2|, normalised to sum to 1 (a zero O is replaced by a tiny number; if every
w_k is 0 the weights are uniform). The held-out losses are on the VALIDATION split (``held_out_split``), with the same
zeroing, in eval mode.

Where the interval starts (``interval_start``): the paper defines the overfitting O_N = L_val,N - L_train,N at epoch
(checkpoint) N and takes G and O between checkpoints N and N + n (its Fig. 3; online G-Blend re-estimates from the
current checkpoint every super-epoch), so by default (``checkpoint``) the start losses are those of the copy before its
first scratch step and the end losses those after its last, both training and held-out losses measured alike: one
evaluation pass over every training row and one over the held-out rows (MultiBench's re-implementation,
``training_structures/gradient_blend.py``, measures at the same two points, in train mode). BB records the training
loss accumulated during the first and the last scratch epoch and the held-out loss right after each (``first_epoch``),
so its interval starts one epoch late; at a high lr the first epoch's held-out loss can be several times its start
value, which then sets the weights (the AV-Digits demo at lr 0.1: 0.97-0.99 of the weight on the audio head, the one
that overfits, in 2 of 3 seeds).

Reductions: ``loss_reduction=mean`` (default, paper-consistent) averages the losses over samples;
``official_compat`` (= BB) sums batch-mean losses over batches, so the training and held-out losses have different
scales (the training split has far more batches), and uses the TEST split as its "validation" set for CREMA-D and
Kinetics-Sounds (``held_out_split=test``). By default the estimate never sees the test split, and a run whose data
serves no validation split (``data.train_split=full`` trains on it) is refused before it starts. BB's sums run over
its loaders' batches (``balancemm/utils/data_utils.py``: the test loader has the training batch size, and both drop
the last partial batch), so under ``sum`` the scratch epochs skip the training split's partial last batch and the
held-out pass is re-cut into batches of the training batch's rows, its remainder dropped.

Scratch lr (``scratch_lr``): the paper does not give it. By default the scratch copies train at the lr the schedule
gives the epoch they start (they estimate how the next ``super_epoch`` epochs of training would go); BB
(``balancemm/train.py``) builds its scratch optimizer once, attaches no scheduler to it and reloads its initial state
for every head, so its copies always train at the base lr (``scratch_lr=base``, part of ``official_compat``).

Cost: every ``super_epoch`` epochs, (M + 1) x ``estimate_epochs`` extra training epochs plus 2 (M + 1) held-out passes
(under ``checkpoint`` also 2 (M + 1) evaluation passes over the training rows), i.e. about (M + 1) + 1 = 4 times joint
training for M = 2 with the defaults. Memory: one scratch model, kept outside the module tree (it is reloaded from the
model at every estimation, so checkpoints do not carry it), and one scratch optimizer whose state is cleared after
each estimation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from baselines.base import (
    FusionMethod,
    FusionModel,
    Loaders,
    StepInfo,
    TrainContext,
    loss_precision,
    read_logs,
)
from baselines.registry import register
from core.data import Batch, TaskSpec
from core.hparams import HParam, HParams

FUSED = "fused"
# Stands in for a zero overfitting change O, which would otherwise divide by zero.
MIN_O_SQUARED = 1e-12


def blend_weight(train_start: float, train_end: float, val_start: float, val_end: float) -> float:
    """Unnormalised G-Blend weight |g / O^2| of one head from its first/last-epoch train and held-out losses."""
    g = val_end - val_start
    o = (val_end - train_end) - (val_start - train_start)
    return abs(g) / max(o * o, MIN_O_SQUARED)


def blending_weights(losses: Mapping[str, tuple[float, float, float, float]]) -> dict[str, float]:
    """Normalised weights from {head: (train_start, train_end, val_start, val_end)}; uniform if all are zero."""
    raw = {k: blend_weight(*v) for k, v in losses.items()}
    total = sum(raw.values())
    if total == 0 or not math.isfinite(total):
        return {k: 1 / len(raw) for k in raw}
    return {k: w / total for k, w in raw.items()}


def rebatch(batches: Iterable[Batch], rows: int, keys: Sequence[str]) -> Iterator[Batch]:
    """``batches`` (only ``keys``) re-cut, in order, into batches of exactly ``rows`` rows, the remainder dropped: a
    loader of batch size ``rows`` with ``drop_last``, as BB's test loader."""
    pending: Batch = {}
    for batch in batches:
        batch = {k: torch.cat([pending[k], batch[k]]) if pending else batch[k] for k in keys}
        start = 0
        while len(batch["label"]) - start >= rows:
            yield {k: v[start:start + rows] for k, v in batch.items()}
            start += rows
        pending = {k: v[start:] for k, v in batch.items()} if start < len(batch["label"]) else {}


@register
class GBlending(FusionMethod):
    name = "gblending"
    title = "G-Blending"
    DATA_PARALLEL = "exact"  # scratch passes in sharded global batches, their losses all-reduced
    PAPER = ('Wang, Tran, Feiszli, "What Makes Training Multi-modal Classification Networks Hard?", CVPR 2020, '
             'arXiv 1905.12681')
    CODE = ('BB re-implementation: GitHub GeWu-Lab/BalanceBenchmark, balancemm/trainer/GBlending_trainer.py, '
            'super_epoch_origin')
    HEAD = "concat"
    HPARAMS = (
        HParam("super_epoch", 10, "Re-estimate the weights every S epochs, epoch 0 included (BB super_epoch 10).",
               low=1),
        HParam("estimate_epochs", 10, "Training epochs of each scratch copy per estimation (BB: = super_epoch); "
                                      ">= 2, since BB's first_epoch start needs a first and a last epoch.", low=2),
        HParam("loss_reduction", "mean", "mean = per-sample average (paper-consistent); sum = BB's sum of "
                                         "batch-mean losses over batches.", choices=("mean", "sum")),
        HParam("held_out_split", "val", "Split of the held-out losses: val (the estimate never sees test); test = "
                                        "BB, whose 'validation' set on CREMA-D and KS is the test split.",
               choices=("val", "test")),
        HParam("interval_start", "checkpoint",
               "Start of the interval G and O are measured over: checkpoint = the copy before its first scratch step "
               "(the paper: overfitting defined at epoch N, G and O between checkpoints N and N + n), training and "
               "held-out losses both from evaluation passes at either end; first_epoch = BB (GBlending_trainer.py, "
               "super_epoch_origin): the training loss accumulated during the first and the last scratch epoch, the "
               "held-out loss after each.", choices=("checkpoint", "first_epoch")),
        HParam("scratch_lr", "schedule", "lr of the scratch copies: schedule = the epoch's scheduled lr; base = BB "
                                         "(balancemm/train.py: temp_optimizer has no scheduler and is reloaded from "
                                         "its initial state for every head), always train.lr.",
               choices=("schedule", "base")),
    )
    VARIANTS = {"official_compat": {"loss_reduction": "sum", "held_out_split": "test", "scratch_lr": "base",
                                    "interval_start": "first_epoch"}}
    HELD_OUT_KEY = "held_out_split"

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        self.heads = (*self.modalities, FUSED)
        # A tuple keeps the scratch copy out of the module tree: it is reloaded from self.model at every estimation,
        # so saving it would only double the checkpoint.
        self._scratch = (FusionModel(task, ctx.model_hp, self.HEAD).to(ctx.device),)
        self.scratch_optimizer = ctx.make_optimizer(self._scratch[0].parameters())
        self.register_buffer("blend", torch.full((len(self.heads),), 1 / len(self.heads), device=ctx.device))
        self.estimate_log: dict[str, float] = {}

    def weights(self) -> dict[str, float]:
        return dict(zip(self.heads, self.blend.tolist()))

    def on_epoch_start(self, epoch: int, loaders: Loaders) -> None:
        if epoch % self.hp.super_epoch == 0:
            self.estimate(epoch, loaders)

    def _fused_loss(self, model: FusionModel, batch: Batch, drop: list[str]) -> torch.Tensor:
        with self.ctx.autocast():
            _, z, _ = model(self.inputs(batch), drop=drop)
            return F.cross_entropy(loss_precision(z), batch["label"])

    def _train_epoch(self, model: FusionModel, batches: Iterable[Batch], drop: list[str]) -> tuple[float, int]:
        """One scratch training epoch: its mean (or BB's batch-sum) fused CE, and the rows of its first global batch.

        Under ``sum`` a batch smaller than the first (the split's remainder) is skipped, as BB's drop_last loader never
        serves it; data-parallel ranks hold equal remainders, so they skip alike."""
        weighted, summed, n, rows = 0.0, 0.0, 0, 0
        for batch in batches:
            b = len(batch["label"])
            rows = rows or b
            if self.hp.loss_reduction == "sum" and b < rows:
                continue
            loss = self._fused_loss(model, batch, drop)
            self.scratch_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.scratch_optimizer.step()
            weighted, summed, n = weighted + loss.item() * b, summed + loss.item(), n + b
        if n == 0:
            raise ValueError("gblending: an estimation pass saw no batches")
        # Data-parallel ranks trained on their parts of each global batch: the global batches' figures, so every rank
        # sets the same weights (identity in one process).
        device = self.blend.device
        weighted, n, rows = self.ctx.all_reduce_sum(torch.tensor([weighted, n, rows], dtype=torch.float64,
                                                                 device=device)).tolist()
        summed = self.ctx.all_reduce_mean(torch.tensor(summed, dtype=torch.float64, device=device)).item()
        return (weighted / n if self.hp.loss_reduction == "mean" else summed), int(rows)

    def _eval_loss(self, model: FusionModel, batches: Iterable[Batch], drop: list[str], rows: int) -> float:
        """Mean (or BB's batch-sum) fused CE over a split (the held-out one, or the training rows under
        ``interval_start=checkpoint``), in eval mode; every rank makes the whole pass. BB's sum runs over its test
        loader's batches, which have the training batch's ``rows`` and drop the remainder."""
        if self.hp.loss_reduction == "sum":
            batches = rebatch(batches, rows, (*self.modalities, "label"))
        weighted, summed, n = 0.0, 0.0, 0
        with torch.no_grad():
            for batch in batches:
                loss, b = self._fused_loss(model, batch, drop).item(), len(batch["label"])
                weighted, summed, n = weighted + loss * b, summed + loss, n + b
        if n == 0:
            raise ValueError(f"gblending: an evaluation pass saw no batches (under loss_reduction=sum they are BB's "
                             f"batches of the training batch's {rows} rows)")
        return weighted / n if self.hp.loss_reduction == "mean" else summed

    def _checkpoint_losses(self, model: FusionModel, train_rows: Iterable[Batch], held_out: Iterable[Batch],
                           drop: list[str]) -> tuple[float, float]:
        """Training and held-out loss of ``model`` as it stands (``interval_start=checkpoint``): both ends of the
        interval are measured alike, under ``loss_reduction=sum`` cut into the global training batch."""
        rows = train_rows.batch_size
        return self._eval_loss(model, train_rows, drop, rows), self._eval_loss(model, held_out, drop, rows)

    def _reset_scratch_optimizer(self) -> None:
        """Clear the scratch optimizer's state; under ``scratch_lr=base`` also undo the runner's schedule, which
        rescales every optimizer made by ``make_optimizer`` (BB reloads its unscheduled initial state dict)."""
        self.scratch_optimizer.state.clear()
        if self.hp.scratch_lr == "base":
            for group in self.scratch_optimizer.param_groups:
                group["lr"] = group["initial_lr"]

    def estimate(self, epoch: int, loaders: Loaders) -> None:
        """Train one scratch copy per head and set the blend weights from its train/held-out losses."""
        held_out = self.held_out_loader(loaders)
        scratch, n_est = self._scratch[0], self.hp.estimate_epochs
        max_steps = self.ctx.train_hp.max_steps_per_epoch
        at_checkpoints = self.hp.interval_start == "checkpoint"
        # Every training row once, evaluation transforms, in global training batches: the training loss of the copy
        # as it stands (under loss_reduction=sum the start's passes are cut into those batches, as the end's are).
        train_rows = loaders.train.derived() if at_checkpoints else None
        losses, log = {}, {}
        for i, k in enumerate(self.heads):
            scratch.load_state_dict(self.model.state_dict())
            self._reset_scratch_optimizer()
            drop = [m for m in self.modalities if m != k] if k != FUSED else []
            if at_checkpoints:
                scratch.eval()
                start = self._checkpoint_losses(scratch, train_rows, held_out, drop)
            for j in range(n_est):
                scratch.train()
                tag = -1 - ((epoch // self.hp.super_epoch * len(self.heads) + i) * n_est + j)
                train_loss, rows = self._train_epoch(scratch, loaders.train.extra_pass(tag, max_steps), drop)
                if j == 0 and not at_checkpoints:
                    scratch.eval()
                    start = (train_loss, self._eval_loss(scratch, held_out, drop, rows))
            scratch.eval()
            end = (self._checkpoint_losses(scratch, train_rows, held_out, drop) if at_checkpoints
                   else (train_loss, self._eval_loss(scratch, held_out, drop, rows)))
            (t0, v0), (t1, v1) = start, end
            losses[k] = (t0, t1, v0, v1)
            log[f"g_{k}"] = v1 - v0
            log[f"o_{k}"] = (v1 - t1) - (v0 - t0)
        self.scratch_optimizer.state.clear()
        weights = blending_weights(losses)
        self.blend.copy_(torch.tensor([weights[k] for k in self.heads]))
        self.estimate_log = log

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        labels = batch["label"]
        with self.ctx.autocast():
            _, z, z_uni = self.model(self.inputs(batch))
        parts = {**{m: F.cross_entropy(loss_precision(z_uni[m]), labels) for m in self.modalities},
                 FUSED: F.cross_entropy(loss_precision(z), labels)}
        loss = sum(w * parts[k] for k, w in zip(self.heads, self.blend))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return read_logs({"loss": loss, **{f"loss_{k}": v for k, v in parts.items()}})

    def on_epoch_end(self, epoch: int, loaders: Loaders) -> dict[str, float]:
        diag = {f"w_{k}": w for k, w in self.weights().items()}
        diag.update(self.estimate_log)
        self.estimate_log = {}
        return diag
