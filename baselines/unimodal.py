"""Unimodal model: one encoder + Linear(d -> K), trained alone with CE (the "Unimodal-1/2" rows;
docs/methods/unimodal.md).

The modality is selected with ``unimodal.modality`` (default: the dataset's first modality, audio for A/V data).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import Method, Prediction, StepInfo, loss_precision
from baselines.networks import build_encoder, init_model
from baselines.registry import register
from core.hparams import HParam


@register
class Unimodal(Method):
    name = "unimodal"
    title = "Unimodal"
    DATA_PARALLEL = "exact"  # batch-mean CE of per-sample outputs: averaged gradients are the global batch's
    PAPER = 'Unimodal baseline (docs/methods/unimodal.md)'
    CODE = '-'
    MODALITIES = (1, 2, 3)
    HPARAMS = (
        HParam("modality", "", "Which modality to train; empty = the dataset's first modality "
                                "(docs/methods/unimodal.md)."),
    )

    def __init__(self, task, hp, ctx) -> None:
        super().__init__(task, hp, ctx)
        self.modality = hp.modality or task.names[0]
        spec = task.modality(self.modality)
        self.encoder = build_encoder(spec, ctx.model_hp)
        self.head = nn.Linear(self.encoder.out_dim, task.num_classes)
        init_model(self, ctx.model_hp)
        self.to(ctx.device)
        self.optimizer = ctx.make_optimizer(self.parameters())

    def update(self, batch, step: StepInfo) -> dict[str, float]:
        with self.ctx.autocast():
            loss = F.cross_entropy(loss_precision(self.head(self.encoder(batch[self.modality]))), batch["label"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def predict(self, batch) -> Prediction:
        with self.ctx.autocast():
            z = loss_precision(self.head(self.encoder(batch[self.modality])))
        return Prediction(z, {self.modality: z})
