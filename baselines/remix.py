"""Data Remixing: decouple each sample to the modality that learns it worse, reassemble unimodal batches.

Paper: Xiaoyu Ma, Hao Chen, Yongjian Deng, "Improving Multimodal Learning Balance and Sufficiency through Data
Remixing", ICML 2025, arXiv 2506.11550. Official code: GitHub MatthewMaxy/Remix_ICML2025 @80898aa (read at that
commit), ``train.py`` (``kl_divergence``, ``remix``, ``train_epoch``, ``special_train_epoch``, ``main``; defaults
from ``get_arguments`` and ``scripts/run_train.sh``), ``models/models.py`` (``AVClassifier.forward`` with ``mode``)
and ``datasets/dataloader.py`` (``AV_CD_Dataset_Remix``).

Model: encoders + H-sep head (a concat head z over [h_a; h_v] plus one linear head per modality). Warm-up epochs
(epoch < ``warmup``) train every row with L = CE(z) + alpha CE(z_a) + beta CE(z_v). From then on, at the start of
every epoch:

1. Decoupling (``remix``): a no-grad eval-mode pass over the training rows (evaluation transforms) computes, per
   sample and modality, KL(p_m || U) = sum_k p_k log2(p_k K) with p_m = softmax(z_m) clipped to [1e-9, 1] and U the
   uniform distribution over the K classes. A sample goes to the first modality's subset if KL_first < KL_second
   (its first-modality prediction is the less confident one), otherwise (ties included) to the second's: every row
   is trained once per epoch, by exactly one modality. (The code passes K = 6, CREMA-D's class count, for every
   dataset; that shifts both KLs by log2(6/K) times their summed clipped probabilities, about 1, so no assignment
   changes but for near-ties within ~1e-8.)
2. Reassembling (``special_train_epoch``): the second modality's subset is trained first, then the first's, each
   shuffled, in batches of that subset alone. A row of modality m's subset is trained with the other modality's
   features zeroed (the official model's ``forward(mode=...)``) and loss CE(z) + gamma_m CE(z_m).

The selection is one ordered row list (``RowSelection(shuffle=False)``) with a per-row extra ``remix_modality`` (the
index of the modality that trains the row); ``update`` zeroes the other modalities' features and weights the losses
per row. A unimodal head none of the batch's rows is assigned to stays out of the loss (no gradient, so no weight
decay or momentum step), as the official unimodal batches leave the other head out.

Cost: as joint training with unimodal heads (one forward, one backward per step; every row once per epoch), plus one
no-grad pass over the training rows per epoch after warm-up.

The paper's full text could not be read while writing this module; it follows the official code, which agrees with
the paper's abstract and figure caption (sample-level decoupling to one modality, batch-level reassembly of
unimodal inputs). Deviations: the runner batches the one ordered list, so the batch at the boundary between the two
subsets holds the tail of the second modality's subset and the head of the first's (one optimizer step, each row
masked and weighted for its own modality); the official code ends each subset with its own partial batch. The
within-subset shuffles are seeded from (run seed, epoch), so a resumed run draws the same order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from baselines.base import (
    FusionMethod,
    Loaders,
    RowSelection,
    StepInfo,
    TrainContext,
    loss_precision,
)
from baselines.registry import register
from core.data import Batch, TaskSpec, seed_for
from core.hparams import HParam, HParams

# Probabilities are clipped below at this value before the log (official kl_divergence).
PROB_FLOOR = 1e-9
EXTRA_KEY = "remix_modality"


def kl_to_uniform(probs: np.ndarray) -> np.ndarray:
    """Per row, KL(p || U) in bits for (N, K) probabilities, after clipping them to [1e-9, 1]."""
    p = np.clip(np.asarray(probs, dtype=np.float64), PROB_FLOOR, 1.0)
    return (p * np.log2(p * p.shape[1])).sum(axis=1)


def decouple(kl_first: np.ndarray, kl_second: np.ndarray) -> np.ndarray:
    """Which modality trains each row: 0 (first) where its KL is strictly smaller, else 1 (second)."""
    return np.where(np.asarray(kl_first) < np.asarray(kl_second), 0, 1)


def remix_sequence(rows: np.ndarray, assigned: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's rows: the second modality's subset shuffled, then the first's shuffled, with the modality codes."""
    parts, codes = [], []
    for code in (1, 0):
        subset = rows[assigned == code]
        parts.append(subset[rng.permutation(len(subset))])
        codes.append(np.full(len(subset), code, dtype=np.int64))
    return np.concatenate(parts), np.concatenate(codes)


def remix_loss(z: torch.Tensor, z_uni: dict[str, torch.Tensor], labels: torch.Tensor, codes: torch.Tensor,
               gammas: list[float]) -> torch.Tensor:
    """Batch mean of CE(z) + gamma_m CE(z_m) with m = the row's code.

    A modality no row of the batch is assigned to stays out of the loss, so its unimodal head gets no gradient (None,
    not zeros): the optimizer skips it, without weight decay or momentum, as the official code's unimodal batches
    leave the other head out of the loss."""
    loss = F.cross_entropy(loss_precision(z), labels)
    for i, zm in enumerate(z_uni.values()):
        own = codes == i
        if bool(own.any()):
            ce = F.cross_entropy(loss_precision(zm[own]), labels[own], reduction="sum")
            loss = loss + gammas[i] * ce / len(labels)
    return loss


@register
class Remix(FusionMethod):
    name = "remix"
    title = "Data Remixing"
    PAPER = ('Xiaoyu Ma, Hao Chen, Yongjian Deng, "Improving Multimodal Learning Balance and Sufficiency through Data '
             'Remixing", ICML 2025, arXiv 2506.11550')
    CODE = "GitHub MatthewMaxy/Remix_ICML2025 @80898aa, train.py (remix, kl_divergence, special_train_epoch, main)"
    HEAD = "separate"
    MODALITIES = (2,)
    DATA_PARALLEL = "exact"  # batch-mean loss with per-row masks; every rank computes the same assignment
    HPARAMS = (
        HParam("warmup", 10, "Epochs of joint training before the first remix (--warmup 10, run_train.sh).", low=0),
        HParam("warmup_weights", [0.5, 0.5], "Warm-up weights of the first and second unimodal CE (--alpha 0.5 "
                                             "audio, --beta 0.5 video)."),
        HParam("remix_weights", [1.0, 1.0], "gamma of the first and second modality's unimodal CE after warm-up "
                                            "(--gamma2 1 audio, --gamma1 1 video)."),
    )

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """Remix trained past its warm-up: some step trained a remixed batch (train ``remixed`` above 0; 0.0 or 1.0
        per step) or an epoch decoupled its rows (diag ``remix_rows_*``, logged by older runs too). From then on
        every row trains with one modality's features zeroed."""
        judged = False
        for record in history:
            train, diag = record.get("train") or {}, record.get("diag") or {}
            if train.get("remixed", 0.0) > 0 or any(k.startswith("remix_rows_") for k in diag):
                return True
            judged = judged or "remixed" in train
        return False if judged else None

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        for key in ("warmup_weights", "remix_weights"):
            if len(hp[key]) != len(self.modalities):
                raise ValueError(f"remix.{key} needs one weight per modality {self.modalities}, got {hp[key]}")
        self._diag: dict[str, float] = {}

    @torch.no_grad()
    def assign(self, loaders: Loaders) -> np.ndarray:
        """The modality (0 or 1) that trains each row of ``loaders.train.base_rows``."""
        pass_loader = loaders.train.derived(batch_size=self.ctx.train_hp.eval_batch_size)
        self.model.eval()
        kl = {m: [] for m in self.modalities}
        for batch in pass_loader:
            with self.ctx.autocast():
                _, _, z_uni = self.model(self.inputs(batch))
            for m in self.modalities:
                kl[m].append(kl_to_uniform(torch.softmax(loss_precision(z_uni[m]), dim=1).cpu().numpy()))
        self.model.train()
        first, second = self.modalities
        return decouple(np.concatenate(kl[first]), np.concatenate(kl[second]))

    def select_rows(self, epoch: int, loaders: Loaders) -> RowSelection | None:
        if epoch < self.hp.warmup:
            self._diag = {}
            return None
        rows = loaders.train.base_rows
        assigned = self.assign(loaders)
        rng = np.random.default_rng(seed_for(self.ctx.train_hp.seed, epoch, "remix"))
        sequence, codes = remix_sequence(rows, assigned, rng)
        self._diag = {f"remix_rows_{m}": float((assigned == i).sum()) for i, m in enumerate(self.modalities)}
        return RowSelection(sequence, extras={EXTRA_KEY: codes}, shuffle=False)

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        labels = batch["label"]
        if step.epoch < self.hp.warmup:
            with self.ctx.autocast():
                _, z, z_uni = self.model(self.inputs(batch))
            loss = F.cross_entropy(loss_precision(z), labels) + sum(
                w * F.cross_entropy(loss_precision(z_uni[m]), labels)
                for w, m in zip(self.hp.warmup_weights, self.modalities))
        else:
            if EXTRA_KEY not in batch:
                raise KeyError(f"remix: epoch {step.epoch} is past warm-up but the batch has no {EXTRA_KEY!r}; the "
                               f"runner must apply Remix.select_rows to the train loader")
            codes = batch[EXTRA_KEY].long()
            with self.ctx.autocast():
                h = self.model.features(self.inputs(batch))
                # A row trains only its assigned modality: the other one's features are zeroed (the official
                # model's forward(mode=...)).
                h = {m: v * (codes == i).to(v.dtype)[:, None] for i, (m, v) in enumerate(h.items())}
                z, z_uni = self.model.head(h)
            loss = remix_loss(z, z_uni, labels, codes, self.hp.remix_weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "remixed": float(step.epoch >= self.hp.warmup)}

    def on_epoch_end(self, epoch: int, loaders: Loaders) -> dict[str, float]:
        return dict(self._diag)
