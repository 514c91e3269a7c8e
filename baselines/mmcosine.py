"""MMCosine: modality-wise cosine logits on the concat head (docs/methods/mmcosine.md).

Paper: Ruize Xu, Ruoxuan Feng, Shi-Xiong Zhang, Di Hu, "MMCosine: Multi-Modal Cosine Loss Towards Balanced
Audio-Visual Fine-Grained Learning", ICASSP 2023, arXiv 2303.05338. Official code: GitHub GeWu-Lab/MMCosine_ICASSP23,
``main_CD.py``, ``train_epoch`` / ``valid`` (``--mmcosine True``). BalanceBenchmark: ``balancemm/trainer/
MMCosine_trainer.py`` (commit 4909c17).

z_m = s * cos(h_m, W_m): the feature h_m and every class row of the concat head's weight slice W_m (the columns that
multiply h_m) are L2-normalised; the bias is not used. z = sum_m z_m, L = CE(z). Evaluation uses the same cosine
logits, fused and per modality, as the paper's classifier and BB's ``validation_step`` do. The official ``valid``
scores the per-modality cosines but takes the fused prediction from the concat layer itself, W [h_a; h_v] + b (its
``out`` is never replaced by the cosine sum there, and b keeps its initial value: training never uses it);
``eval_linear: true`` (``variant=official``) scores that way. Defined for any number of modalities (BB runs it with
three).

Scale s: 10 by default, the value of the official README's example command; BB's trainer_config uses 15
(``mmcosine.variant=bb``). The README example pairs s = 10 with the repository's symmetric "gated" fusion; this module
uses plain concatenation, the official ``--fusion_method`` default and BB's setting. The official auxiliary NCE loss
(``--lam``, default 0) is not included.

Cost: as joint training (one forward, one backward per step).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from baselines.base import FusionMethod, Prediction, StepInfo, loss_precision
from baselines.registry import register
from core.data import Batch
from core.hparams import HParam, variant_param


def cosine_logits(h: Mapping[str, torch.Tensor], weight: torch.Tensor, bounds: Mapping[str, tuple[int, int]],
                  scale: float) -> dict[str, torch.Tensor]:
    """z_m = scale * normalize(h_m) @ normalize(W[:, a_m:b_m], per class row)^T for every modality m."""
    return {m: scale * F.normalize(h[m], dim=1) @ F.normalize(weight[:, a:b], dim=1).t()
            for m, (a, b) in bounds.items()}


_VARIANTS = {"bb": {"scale": 15.0}, "official": {"eval_linear": True}}


@register
class MMCosine(FusionMethod):
    """Concat head read as per-modality cosine classifiers; fused logits are the sum of the scaled cosines."""

    name = "mmcosine"
    title = "MMCosine"
    DATA_PARALLEL = "exact"  # batch-mean CE of per-sample cosine logits: global batch's gradients
    PAPER = ('Ruize Xu, Ruoxuan Feng, Shi-Xiong Zhang, Di Hu, "MMCosine: Multi-Modal Cosine Loss Towards Balanced '
             'Audio-Visual Fine-Grained Learning", ICASSP 2023, arXiv 2303.05338')
    CODE = "GitHub GeWu-Lab/MMCosine_ICASSP23, main_CD.py, train_epoch (mmcosine branch)"
    HEAD = "concat"
    VARIANTS = _VARIANTS
    HPARAMS = (
        HParam("scale", 10.0, "Cosine scale s: 10 in the official README example (main_CD.py --scaling 10); "
                              "BalanceBenchmark configs/trainer_config.yaml uses 15 (variant 'bb').",
               low=0.0, open_low=True),
        HParam("eval_linear", False, "Fused prediction at evaluation from the concat layer, W [h; ...] + b, as the "
                                     "official main_CD.py valid scores it (its out); false = the summed cosine logits "
                                     "the method trains on (paper, BalanceBenchmark validation_step)."),
        variant_param(_VARIANTS, "paper = the official code's README setting (s = 10), evaluated through the cosines; "
                                 "bb = BalanceBenchmark's MMCosine_trainer setting (s = 15), for BB's table; official "
                                 "= the official valid's fused score (eval_linear)."),
    )

    def logits(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with self.ctx.autocast():
            h = self.model.features(self.inputs(batch))
            z_uni = cosine_logits(h, self.model.head.fc.weight, self.model.head.bounds, self.hp.scale)
        z_uni = {m: loss_precision(v) for m, v in z_uni.items()}
        return torch.stack(list(z_uni.values())).sum(0), z_uni

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        z, _ = self.logits(batch)
        loss = F.cross_entropy(z, batch["label"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        if not self.hp.eval_linear:
            z, z_uni = self.logits(batch)
            return Prediction(z, z_uni)
        with self.ctx.autocast():
            h = self.model.features(self.inputs(batch))
            z, _ = self.model.head(h)
            z_uni = cosine_logits(h, self.model.head.fc.weight, self.model.head.bounds, self.hp.scale)
        return Prediction(loss_precision(z), {m: loss_precision(v) for m, v in z_uni.items()})
