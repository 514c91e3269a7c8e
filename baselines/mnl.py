"""MNL: Multimodal Negative Learning, the per-sample dominant modality teaches the weak one which classes it is not.

Paper: Baoquan Gong, Xiyuan Gao, Pengfei Zhu, Qinghua Hu, Bing Cao, "Multimodal Negative Learning", NeurIPS 2025,
arXiv 2510.20877 (abstract only was available to this implementation). Official code: GitHub
BaoquanGong/Multimodal-Negative-Learning, commit 64cea56 (2025-12-10): ``train_latefusion.py`` ``model_forward``
(train branch), ``src/models/latefusion.py`` ``MultimodalLateFusionClf``. The formulas below are the official code's;
the abstract describes the same idea in words (instead of pulling the weak modality's target-class prediction towards
the dominant one, the dominant modality guides the weak one to suppress non-target classes).

Model: late fusion, one encoder and one linear classifier per modality, fused logits z = (z_a + z_b) / 2. Per step,
for each sample with label y:

1. j = the most probable non-target class of softmax(z); margin xi_m = z_m[y] - z_m[j]; confidence p_m[y] =
   softmax(z_m)[y].
2. The first modality guides the second where xi_a > xi_b and p_a[y] > p_b[y]; the second guides the first where
   xi_a <= xi_b and p_a[y] <= p_b[y]; neither elsewhere (the two criteria disagree).
3. A guided (weak) modality w with guide s adds -sum_k [Y_k + lambda (1 - Y_k) p_s,k] log softmax(z_w)_k, with Y the
   one-hot label and p_s = softmax(z_s) detached: its own CE plus the guide's non-target distribution as a soft
   target, weighted by lambda (``weight``). The official code averages this matrix over all B x C entries
   (``torch.mean``), so the term is 1 / C of the per-sample sum; that is kept.
4. L = CE(z_a) + CE(z_b) + CE(z) + the negative-learning terms; one backward, one step.

Prediction: the fused logits z; per modality, z_m. No variants: the paper's equations were not read, so nothing of
the code could be checked against them. Two modalities only (the released code and the pairing rule are for two).

The official experiments fine-tune BERT + ResNet-152 on MVSA (Adam lr 2e-5, gradient accumulation 40, batch 16,
ReduceLROnPlateau on validation accuracy, early stopping), a recipe for pretrained encoders that this suite's
datasets do not share; no config is shipped.

Cost: as late-fusion joint training, plus O(B C) for the masks and soft targets; no extra parameters or passes.
Data-parallel: every term is a per-sample quantity averaged over the batch, so the averaged gradient is the global
batch's.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from baselines.base import (
    FusionModel,
    Method,
    Prediction,
    StepInfo,
    TrainContext,
    logged_values,
    loss_precision,
    read_logs,
)
from baselines.registry import register
from core.data import Batch, TaskSpec
from core.hparams import HParam, HParams


def guidance_masks(z_a: torch.Tensor, z_b: torch.Tensor, z: torch.Tensor, y: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(a guides b, b guides a) per sample, from margins against the fused prediction's strongest non-target class."""
    rows = torch.arange(y.shape[0], device=y.device)
    j = z.detach().masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).argmax(dim=1)
    xi_a, xi_b = (v[rows, y] - v[rows, j] for v in (z_a.detach(), z_b.detach()))
    p_a, p_b = (torch.softmax(v.detach(), dim=1)[rows, y] for v in (z_a, z_b))
    return (xi_a > xi_b) & (p_a > p_b), (xi_a <= xi_b) & (p_a <= p_b)


def negative_learning_term(z_weak: torch.Tensor, z_guide: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                           weight: float) -> torch.Tensor:
    """mean over B x C of -mask * [Y + weight (1 - Y) softmax(z_guide).detach()] * log softmax(z_weak)."""
    one_hot = F.one_hot(y, z_weak.shape[1]).to(z_weak.dtype)
    target = one_hot + weight * (1 - one_hot) * torch.softmax(z_guide.detach(), dim=1)
    return -(target * torch.log_softmax(z_weak, dim=1) * mask.to(z_weak.dtype).unsqueeze(1)).mean()


@register
class MNL(Method):
    """Late fusion (mean of unimodal logits); the per-sample dominant modality's non-target distribution guides the
    weak modality."""

    name = "mnl"
    title = "MNL"
    PAPER = ('Baoquan Gong, Xiyuan Gao, Pengfei Zhu, Qinghua Hu, Bing Cao, "Multimodal Negative Learning", NeurIPS '
             '2025, arXiv 2510.20877')
    CODE = ("GitHub BaoquanGong/Multimodal-Negative-Learning @64cea56, train_latefusion.py, model_forward (+ "
            "src/models/latefusion.py MultimodalLateFusionClf)")
    MODALITIES = (2,)
    DATA_PARALLEL = "exact"  # every loss term is a per-sample quantity averaged over the batch
    HPARAMS = (
        HParam("weight", 0.7, "lambda, the weight of the guide's non-target probabilities in the weak modality's soft "
                              "target: official --weight1 default 0.7 (train_MVSA_latefusion.sh keeps it). Tune on "
                              "validation elsewhere.", low=0.0),
    )

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """Whether a modality guided the other on some sample: an epoch whose mean ``guided_<m>`` (per step the
        fraction of samples that modality m was guided on, 0.0 exactly when none) is above 0. Where the two criteria
        disagree on every sample no negative-learning term enters the loss. None for a history without ``guided_``
        keys."""
        shares = logged_values(history, "train", "guided_")
        return any(v > 0.0 for v in shares) if shares else None

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        # The sum head holds one linear classifier per modality; MNL fuses their mean.
        self.model = FusionModel(task, ctx.model_hp, "sum").to(ctx.device)
        self.optimizer = ctx.make_optimizer(self.model.parameters())

    def forward_all(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with self.ctx.autocast():
            _, _, z_uni = self.model(self.inputs(batch))
        z_uni = {m: loss_precision(v) for m, v in z_uni.items()}
        return sum(z_uni.values()) / len(z_uni), z_uni

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        y = batch["label"]
        z, z_uni = self.forward_all(batch)
        (a, z_a), (b, z_b) = z_uni.items()
        a_guides_b, b_guides_a = guidance_masks(z_a, z_b, z, y)
        loss_ce = F.cross_entropy(z, y) + F.cross_entropy(z_a, y) + F.cross_entropy(z_b, y)
        loss_neg = (negative_learning_term(z_b, z_a, y, a_guides_b, self.hp.weight)
                    + negative_learning_term(z_a, z_b, y, b_guides_a, self.hp.weight))
        loss = loss_ce + loss_neg
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        # The counts are read and divided on the host: CUDA divides a tensor by a Python number as a multiplication by
        # its reciprocal, which can differ from the quotient in the last bit.
        logs = read_logs({"loss": loss, "loss_negative": loss_neg, f"guided_{b}": a_guides_b.sum(),
                          f"guided_{a}": b_guides_a.sum()})
        logs[f"guided_{b}"] /= a_guides_b.numel()
        logs[f"guided_{a}"] /= b_guides_a.numel()
        return logs

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        z, z_uni = self.forward_all(batch)
        return Prediction(z, z_uni)
