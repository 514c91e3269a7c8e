"""Uniform auxiliary-loss baseline: L = CE(z) + sum_m CE(z_m) with separate unimodal heads (docs/methods/unimodal.md).

Paper: the "uniform baseline" of Yake Wei, Di Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal
Assistance", ICML 2024, arXiv 2405.17730, where every loss is summed with equal weight.
Official code: GitHub GeWu-Lab/MMPareto_ICML2024, ``code/uniform_baseline.py``, ``train_epoch``; the model is
``code/models/models.py`` ``AVClassifier`` (concat head over [h_a; h_v] plus ``head_audio`` and ``head_video``),
i.e. the H-sep head here (``SeparateHeads``).

Cost: one forward and one backward per step, like joint training. Several "rebalancing" gains in the literature are
really gains from this unimodal supervision (docs/methods/README.md#published-numbers), so the row belongs in
every table. It is defined for any number of modalities (one unimodal CE per modality).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from baselines.base import FusionMethod, StepInfo, loss_precision, read_logs
from baselines.registry import register
from core.data import Batch


def uniform_loss(z: torch.Tensor, z_uni: Mapping[str, torch.Tensor], labels: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = CE(z, y) + sum_m CE(z_m, y), every term a batch mean.

    Returns:
        The total loss and its parts (``"fused"`` and one entry per modality) for logging.
    """
    parts = {"fused": F.cross_entropy(loss_precision(z), labels)}
    for m, logits in z_uni.items():
        parts[m] = F.cross_entropy(loss_precision(logits), labels)
    return torch.stack(list(parts.values())).sum(), parts


@register
class Uniform(FusionMethod):
    """Joint training plus one unimodal CE per modality on separate heads, all weighted equally."""

    name = "uniform"
    title = "Uniform (CE + unimodal CEs)"
    DATA_PARALLEL = "exact"  # sum of batch-mean CEs of per-sample outputs: global batch's gradients
    PAPER = ('Yake Wei, Di Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance", ICML 2024, '
             'arXiv 2405.17730 (uniform baseline)')
    CODE = "GitHub GeWu-Lab/MMPareto_ICML2024, code/uniform_baseline.py, train_epoch"
    HEAD = "separate"

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        with self.ctx.autocast():
            _, z, z_uni = self.model(self.inputs(batch))
        loss, parts = uniform_loss(z, z_uni, batch["label"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return read_logs({"loss": loss, **{f"loss_{k}": v for k, v in parts.items()}})
