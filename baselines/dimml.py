"""DI-MML: detached and interactive multimodal learning (docs/methods/dimml.md), following the official code.

Paper: Yunfeng Fan, Wenchao Xu, Haozhao Wang, Junhong Liu, Song Guo, "Detached and Interactive Multimodal Learning",
ACM MM 2024, arXiv 2407.19514. Official code: GitHub fanyunfeng-bit/DI-MML, ``main_CFT.py`` (``train_epoch``,
``get_indices``), ``loss/contrast_loss.py`` (``SupConLoss``, the DUC loss) and ``main_CFT_stage2.py``
(``train_combine_classifier_epoch``, ``valid_combine_classifier``); the README gives the per-dataset temperatures.

What was followed: only the paper's abstract could be read; every loss, schedule and constant below is the released
code's (its README commands), which matches the abstract's four components. Where the paper's method section might
differ is unknown [flagged]. The code runs two scripts; here they are the two stages of one run:

- Stage 1 (``main_CFT.py``), all but the last ``stage2_epochs`` epochs. Each encoder has its own Linear head, and one
  Linear head W_s is shared by all modalities:
  L = sum_m CE(head_m(h_m)) + w sum_m CE(W_s h_m) + 1[e >= duc_start] DUC. No loss mixes the modalities'
  gradients, so no modality competes with another ("detached").
- DUC (dimension-decoupled unidirectional contrastive): at epoch ``duc_start`` (20) one eval-mode pass over the
  training rows computes, per modality and feature dimension, how often the nearest class mean of that single
  dimension is the sample's class; dimensions above the modality's mean rate are "effective". D_a = effective for
  audio only, D_v = effective for visual only (fixed afterwards, as in the code). Then
  DUC = CE_B(h_v[:, D_a] sg(h_a[:, D_a])^T / tau) + CE_B(h_a[:, D_v] sg(h_v[:, D_v])^T / tau), an InfoNCE over the
  batch whose positive is the sample's own other-modality feature; the stronger modality's side is detached, so
  knowledge flows one way on each dimension set. (The code's per-sample loop of exp/sum ratios is this CE.)
- Stage 2 (``main_CFT_stage2.py``), the last ``stage2_epochs`` epochs: encoders frozen in eval mode, a concat head
  trained with CE(W_f [h_a; h_v]), the unimodal heads frozen.
- Inference (certainty-aware logit weighting): w = softmax_k(max softmax(z_k) / tau_2) per sample over
  k in {head_a, head_v, fusion}, z = sum_k w_k z_k. Before stage 2 the fusion head is untrained, so the weighting
  runs over the two unimodal heads only [project: the code reports only unimodal accuracy in stage 1].

Cost: one no-grad pass over the training rows at ``duc_start``; stage 2 trains only the fusion head (no encoder
backward). Per-modality outputs are the unimodal heads.

Deviations: the stage split of one run is a project rule (stage 2 = the last min(stage2_epochs, E // 2) epochs; the
code runs 150 + 20 epochs as separate scripts; a run extended after reaching stage 2 spends its extra epochs there);
the stage-2 optimizer follows the run's lr schedule instead of restarting at lr 1e-3; the effective-dimension pass
uses evaluation transforms (the code: training transforms, batch size 1); weights follow ``model.init`` (the code's
stage 1 keeps PyTorch default init). The code's recipe is SGD lr 1e-3, batch 16, StepLR(70, 0.1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import Loaders, Method, Prediction, StepInfo, TrainContext, loss_precision, read_logs
from baselines.heads import ConcatHead
from baselines.networks import build_encoders, init_model
from baselines.registry import register
from core.data import Batch, BatchLoader, TaskSpec
from core.hparams import HParam, HParams


def effective_dims(features: torch.Tensor, labels: torch.Tensor, num_classes: int, chunk: int = 1024
                   ) -> torch.Tensor:
    """``get_indices`` for one modality: dims whose per-dimension nearest-class-mean accuracy exceeds the mean.

    Args:
        features: (N, d) features of the training rows.
        labels: (N,) class indices.
        num_classes: K.
        chunk: rows per block, bounding the (chunk, K, d) distance tensor.

    Returns:
        (d,) bool mask.
    """
    features = loss_precision(features)
    counts = torch.bincount(labels, minlength=num_classes).to(features.dtype)
    means = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    means.index_add_(0, labels, features)
    means = means / counts.clamp(min=1)[:, None]
    # A class absent from the rows must never be the nearest mean.
    means[counts == 0] = float("inf")
    hits = torch.zeros(features.shape[1], dtype=features.dtype, device=features.device)
    for start in range(0, len(features), chunk):
        f, y = features[start:start + chunk], labels[start:start + chunk]
        nearest = (f[:, None, :] - means[None]).abs().argmin(dim=1)
        hits += (nearest == y[:, None]).to(features.dtype).sum(0)
    rate = hits / len(features)
    return rate > rate.mean()


def duc_loss(h_a: torch.Tensor, h_v: torch.Tensor, dims_a: torch.Tensor, dims_v: torch.Tensor, temperature: float
             ) -> torch.Tensor:
    """``SupConLoss``: visual pulled to detached audio on audio-only dims, audio to detached visual on visual-only
    dims; each term is a batch InfoNCE with the same sample as the positive."""
    target = torch.arange(len(h_a), device=h_a.device)
    v_loss = F.cross_entropy(h_v[:, dims_a] @ h_a[:, dims_a].detach().t() / temperature, target)
    a_loss = F.cross_entropy(h_a[:, dims_v] @ h_v[:, dims_v].detach().t() / temperature, target)
    return v_loss + a_loss


def certainty_fusion(logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """``valid_combine_classifier``: per-sample softmax over the heads of (max class probability / temperature)."""
    conf = torch.stack([torch.softmax(z, dim=1).max(dim=1).values for z in logits])
    w = torch.softmax(conf / temperature, dim=0)
    return sum(w[k][:, None] * z for k, z in enumerate(logits))


@register
class DIMML(Method):
    name = "dimml"
    title = "DI-MML"
    DATA_PARALLEL = "approximate"  # the DUC term is an in-batch InfoNCE whose negatives are the rank's slice only
    PAPER = ('Yunfeng Fan, Wenchao Xu, Haozhao Wang, Junhong Liu, Song Guo, "Detached and Interactive Multimodal '
             'Learning", ACM MM 2024, arXiv 2407.19514')
    CODE = ('GitHub fanyunfeng-bit/DI-MML, main_CFT.py (train_epoch, get_indices), loss/contrast_loss.py '
            '(SupConLoss), main_CFT_stage2.py (train_combine_classifier_epoch, valid_combine_classifier)')
    MODALITIES = (2,)
    HPARAMS = (
        HParam("align_weight", 1.0, "w on the shared-head CE terms (main_CFT.py --weight 1)."),
        HParam("duc_start", 20, "Epoch of the effective-dimension pass and first DUC term (main_CFT.py: epoch 20).",
               low=0),
        HParam("duc_temperature", 50.0, "DUC temperature (README: CREMAD 50, AVE 10, UCF 10 on RGB + TV-L1 flow; "
                                        "KS/VGGSound not released, the CREMA-D value is used).",
               per_dataset={"cremad": 50.0, "ave": 10.0, "ucf101": 10.0},
               low=0.0, open_low=True),
        HParam("stage2_epochs", 20, "Epochs of the fusion-head stage at the end of the run (main_CFT_stage2.py "
                                    "--epochs 20); at most half the run [project].", low=0),
        HParam("fusion_temperature", 1.0, "Certainty-weighting temperature (README stage 2: CREMAD 1, AVE 3, UCF 1).",
               per_dataset={"cremad": 1.0, "ave": 3.0, "ucf101": 1.0}, low=0.0, open_low=True),
    )

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """DI-MML's interaction, the DUC term, trained the encoders in some epoch: train ``duc`` logged (epochs from
        ``duc_start`` on, in stage 1) while an effective-dimension set was non-empty (diag ``dimml_duc_dims_*``, exact
        counts); with both sets empty every DUC logit is 0 and the term has no gradient. Without DUC the encoders
        train detached, each alone. The fusion stage is a fixed split of the epochs, not judged here."""
        judged = False
        for record in history:
            train, diag = record.get("train") or {}, record.get("diag") or {}
            if "dimml_duc_dims_first" not in diag:
                continue
            judged = True
            if "duc" in train and diag["dimml_duc_dims_first"] + diag["dimml_duc_dims_second"] > 0:
                return True
        return False if judged else None

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        self.encoders = build_encoders(task, ctx.model_hp)
        dims = {m: enc.out_dim for m, enc in self.encoders.items()}
        if len(set(dims.values())) != 1:
            raise ValueError(f"dimml needs equal feature widths for its shared head and DUC loss, got {dims}")
        d, k = next(iter(dims.values())), task.num_classes
        self.heads = nn.ModuleDict({m: nn.Linear(d, k) for m in self.modalities})
        self.shared = nn.Linear(d, k)
        self.fusion = ConcatHead(dims, k)
        init_model(self, ctx.model_hp)
        self.to(ctx.device)
        self.register_buffer("duc_dims", torch.zeros(2, d, dtype=torch.bool, device=ctx.device))
        self.register_buffer("duc_ready", torch.tensor(False, device=ctx.device))
        self.register_buffer("stage2", torch.tensor(False, device=ctx.device))
        self.optimizer = ctx.make_optimizer([*self.encoders.parameters(), *self.heads.parameters(),
                                             *self.shared.parameters()])
        self.fusion_optimizer = ctx.make_optimizer(self.fusion.parameters())

    @property
    def stage1_epochs(self) -> int:
        return self.ctx.epochs - min(self.hp.stage2_epochs, self.ctx.epochs // 2)

    def features(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {m: self.encoders[m](batch[m]) for m in self.modalities}

    @torch.no_grad()
    def compute_duc_dims(self, loader: BatchLoader) -> None:
        """The effective-dimension pass over the training rows (eval mode)."""
        pass_loader = loader.derived(batch_size=self.ctx.train_hp.eval_batch_size)
        self.eval()
        feats: dict[str, list[torch.Tensor]] = {m: [] for m in self.modalities}
        labels = []
        for batch in pass_loader:
            with self.ctx.autocast():
                h = self.features(batch)
            for m in self.modalities:
                feats[m].append(loss_precision(h[m]))
            labels.append(batch["label"])
        self.train()
        y = torch.cat(labels)
        top = [effective_dims(torch.cat(feats[m]), y, self.task.num_classes) for m in self.modalities]
        self.duc_dims.copy_(torch.stack([top[0] & ~top[1], top[1] & ~top[0]]))
        self.duc_ready.fill_(True)

    def on_epoch_start(self, epoch: int, loaders: Loaders) -> None:
        # Once reached, stage 2 stays: a run extended with --extend-epochs moves the split later, and would otherwise
        # train the encoders again after the fusion stage; its extra epochs train the fusion head.
        self.stage2.fill_(bool(self.stage2) or epoch >= self.stage1_epochs)
        if epoch >= self.hp.duc_start and not bool(self.duc_ready) and not bool(self.stage2):
            self.compute_duc_dims(loaders.train)

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        y = batch["label"]
        if bool(self.stage2):  # set by on_epoch_start, and kept once reached
            self.encoders.eval()
            with torch.no_grad(), self.ctx.autocast():
                h = self.features(batch)
            z = self.fusion({m: loss_precision(v) for m, v in h.items()})[0]
            loss = F.cross_entropy(z, y)
            self.fusion_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.fusion_optimizer.step()
            return {"loss": loss.item()}
        with self.ctx.autocast():
            h = self.features(batch)
        h = {m: loss_precision(v) for m, v in h.items()}
        uni = sum(F.cross_entropy(self.heads[m](h[m]), y) for m in self.modalities)
        shared = sum(F.cross_entropy(self.shared(h[m]), y) for m in self.modalities)
        loss = uni + self.hp.align_weight * shared
        logs = {"ce_unimodal": uni, "ce_shared": shared}
        if step.epoch >= self.hp.duc_start and bool(self.duc_ready):
            first, second = self.modalities
            duc = duc_loss(h[first], h[second], self.duc_dims[0], self.duc_dims[1], self.hp.duc_temperature)
            loss = loss + duc
            logs["duc"] = duc
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return read_logs({"loss": loss, **logs})

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        with self.ctx.autocast():
            h = self.features(batch)
        h = {m: loss_precision(v) for m, v in h.items()}
        z_uni = {m: self.heads[m](h[m]) for m in self.modalities}
        logits = list(z_uni.values())
        if bool(self.stage2):
            logits.append(self.fusion(h)[0])
        return Prediction(certainty_fusion(logits, self.hp.fusion_temperature), z_uni)

    def on_epoch_end(self, epoch: int, loaders: Loaders) -> dict[str, float]:
        return {"dimml_stage": 2.0 if bool(self.stage2) else 1.0,
                "dimml_duc_dims_first": float(self.duc_dims[0].sum()),
                "dimml_duc_dims_second": float(self.duc_dims[1].sum())}
