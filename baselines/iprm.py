"""IPRM: instantaneous probe-and-rebalance multimodal learning with geodesic multimodal mixup.

Paper: Yang Yang, Xixian Wu, Qing-Yuan Jiang, "Towards Equilibrium: An Instantaneous Probe-and-Rebalance Multimodal
Learning Approach", IJCAI 2025, pp. 3552-3560, doi 10.24963/ijcai.2025/395 (no arXiv version found). Official code:
GitHub njustkmg/IJCAI25-IPRM, commit 0bb457f (2025-05-08): ``main_av.py`` ``train_epoch`` / ``valid`` / ``slerp`` /
``compute_kl_divergence`` (two modalities), ``main_trimodal.py`` (three, ``--mixup_method tri_cls``),
``models/models.py`` ``Mixup_AVClassifier``. Only the paper's abstract was available to this implementation, so every
step below follows the official code; the abstract's outline (a first forward pass that probes modality strength
without learning, weights recalibrated at once, a second pass that learns under the rebalanced weights, fusion by
geodesic multimodal mixup) is what the code does.

Model: one encoder per modality, a linear head per modality (z_m) and, per modality pair (i, j), a linear "mixup" head
on the geodesic mixup of the two L2-normalised features, slerp(h_i, h_j; l_i, l_j) = sin(l_i t) / sin(t) h_i' +
sin(l_j t) / sin(t) h_j' with t = arccos(h_i' . h_j') and h' = h / |h| (``slerp``; sin t gets + 1e-8). The features
must have equal widths. Per step, for each pair:

1. Probe (no_grad). l = alpha * l_prev + (1 - alpha) * l_hat_prev (both start at 1/2); the mixup head on
   slerp(h_i, h_j; l) gives z_mix; KL_m = mean_b KL(softmax z_m || softmax z_mix) for m in (i, j). The recalibrated
   weights are l_hat_i = KL_j / (KL_i + KL_j), l_hat_j = KL_i / (KL_i + KL_j): the modality whose own prediction is
   closer to the probed fused prediction gets the larger share of the mixup.
2. Rebalance. L = sum_m CE(z_m) + sum_pairs CE(mixup head on slerp(h_i, h_j; l_hat)); one backward, one step.

Prediction: sum_m z_m + mean over pairs of the mixup head on slerp(h_i, h_j; l) with the last probe's l (official
``valid``: ``out_a + out_v + out_mm``; three modalities: the mean of the three pair heads). The per-modality outputs
are the unimodal heads' logits. Two modalities have one pair, which is ``main_av.py`` exactly; three modalities follow
``main_trimodal.py --mixup_method tri_cls`` (one mixup head and one weight pair per modality pair). Not reproduced: the
released trimodal script scores the third modality with the second modality's head (``out_m3 = model.head_m2(m3)``),
and its ``single_cls`` mode (one random pair per step through one shared head).

The weights are buffers, saved in checkpoints; the official code keeps them in module-level lists. When both KLs are
0 (identical predictions) the code's ratio is 0/0; here the weights are then 1/2 each. Features are normalised with
``F.normalize`` (eps 1e-12) instead of a plain division, so an all-zero feature gives a zero direction, not NaN.

Cost: one encoder pass per step; per pair one extra no_grad pass of a linear head and O(B d) for the two slerps.
Data-parallel: the KLs are batch means, all-reduced (one collective of 2 x pairs scalars) before the weights, so every
rank uses the global batch's weights and the loss is a plain batch mean.

Official recipe (CREMA-D): SGD lr 1e-2 (``--learning_rate`` default), momentum 0.9, weight decay 1e-4, batch 64,
100 epochs, ``StepLR(70, 0.1)``; set through a config file.
"""

from __future__ import annotations

from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import Method, Prediction, StepInfo, TrainContext, loss_precision, read_logs
from baselines.networks import build_encoders, init_model
from baselines.registry import register
from core.data import Batch, TaskSpec
from core.hparams import HParam, HParams


def slerp(x: torch.Tensor, y: torch.Tensor, lam_x: torch.Tensor, lam_y: torch.Tensor) -> torch.Tensor:
    """Geodesic mixup of the row-normalised x and y with weights (lam_x, lam_y) (official ``main_av.py`` ``slerp``)."""
    x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    theta = torch.acos((x * y).sum(dim=1, keepdim=True).clamp(-1.0, 1.0))
    sin_theta = torch.sin(theta) + 1e-8
    return torch.sin(lam_x * theta) / sin_theta * x + torch.sin(lam_y * theta) / sin_theta * y


def kl_to_fused(z_m: torch.Tensor, z_mix: torch.Tensor) -> torch.Tensor:
    """mean_b KL(softmax z_m || softmax z_mix) (official ``compute_kl_divergence``)."""
    log_p = torch.log_softmax(loss_precision(z_m), dim=1)
    return (log_p.exp() * (log_p - torch.log_softmax(loss_precision(z_mix), dim=1))).sum(dim=1).mean()


def rebalanced_weights(kl: torch.Tensor) -> torch.Tensor:
    """(KL_i, KL_j) -> (KL_j, KL_i) / (KL_i + KL_j) along the last axis; (1/2, 1/2) where both are 0."""
    total = kl.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, kl.flip(-1) / total.clamp_min(torch.finfo(kl.dtype).tiny), torch.full_like(kl, 0.5))


@register
class IPRM(Method):
    """Unimodal heads + one geodesic-mixup head per modality pair, mixed with weights probed on the same batch."""

    name = "iprm"
    title = "IPRM"
    PAPER = ('Yang Yang, Xixian Wu, Qing-Yuan Jiang, "Towards Equilibrium: An Instantaneous Probe-and-Rebalance '
             'Multimodal Learning Approach", IJCAI 2025, doi 10.24963/ijcai.2025/395')
    CODE = ("GitHub njustkmg/IJCAI25-IPRM @0bb457f, main_av.py, train_epoch / valid / slerp (+ main_trimodal.py "
            "tri_cls for 3 modalities)")
    DATA_PARALLEL = "exact"  # the probe's KLs are all-reduced batch means; the loss is a batch mean
    HPARAMS = (
        HParam("alpha", 0.8, "EMA weight of the previous mixup weights: l = alpha l_prev + (1 - alpha) l_hat_prev. "
                             "Official README commands pass --alpha 0.8 (a required flag) for CREMA-D and NVGesture.",
               low=0.0, high=1.0),
    )

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        self.encoders = build_encoders(task, ctx.model_hp)
        dims = {m: enc.out_dim for m, enc in self.encoders.items()}
        if len(set(dims.values())) != 1:
            raise ValueError(f"IPRM's geodesic mixup needs equal feature widths, got {dims} for dataset "
                             f"{task.dataset!r}")
        d, k = next(iter(dims.values())), task.num_classes
        self.pairs = tuple(combinations(self.modalities, 2))
        self.uni_heads = nn.ModuleDict({m: nn.Linear(d, k) for m in self.modalities})
        self.mixup_heads = nn.ModuleDict({f"{i}+{j}": nn.Linear(d, k) for i, j in self.pairs})
        init_model(self, ctx.model_hp)
        # Per pair: the weights the last probe used (l) and the ones it produced (l_hat), both starting at 1/2.
        self.register_buffer("lam", torch.full((len(self.pairs), 2), 0.5))
        self.register_buffer("lam_hat", torch.full((len(self.pairs), 2), 0.5))
        self.to(ctx.device)
        self.optimizer = ctx.make_optimizer(self.parameters())

    def encode(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        with self.ctx.autocast():
            h = {m: self.encoders[m](batch[m]) for m in self.modalities}
            z_uni = {m: self.uni_heads[m](h[m]) for m in self.modalities}
        return {m: loss_precision(v) for m, v in h.items()}, {m: loss_precision(v) for m, v in z_uni.items()}

    def mixup_logits(self, h: dict[str, torch.Tensor], weights: torch.Tensor) -> list[torch.Tensor]:
        """The pair heads' logits on slerp(h_i, h_j; weights[p]) for every pair p."""
        return [loss_precision(self.mixup_heads[f"{i}+{j}"](slerp(h[i], h[j], weights[p, 0], weights[p, 1])))
                for p, (i, j) in enumerate(self.pairs)]

    @torch.no_grad()
    def probe(self, h: dict[str, torch.Tensor], z_uni: dict[str, torch.Tensor]) -> None:
        """Advance l by the EMA, run the pair heads on slerp(l) and set l_hat from the unimodal-to-fused KLs."""
        self.lam.mul_(self.hp.alpha).add_((1 - self.hp.alpha) * self.lam_hat)
        h = {m: v.detach() for m, v in h.items()}
        z_mix = self.mixup_logits(h, self.lam)
        kl = torch.stack([torch.stack([kl_to_fused(z_uni[i], z), kl_to_fused(z_uni[j], z)])
                          for (i, j), z in zip(self.pairs, z_mix)])
        # Batch means over equal rank slices average to the global batch's.
        self.lam_hat.copy_(rebalanced_weights(self.ctx.all_reduce_mean(kl)))

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        y = batch["label"]
        h, z_uni = self.encode(batch)
        loss_uni = {m: F.cross_entropy(z, y) for m, z in z_uni.items()}
        self.probe(h, z_uni)
        with self.ctx.autocast():
            z_mix = self.mixup_logits(h, self.lam_hat)
        loss_mix = sum(F.cross_entropy(z, y) for z in z_mix)
        loss = loss_mix + sum(loss_uni.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        logs = {"loss": loss, "loss_mixup": loss_mix, **{f"loss_{m}": v for m, v in loss_uni.items()}}
        for p, (i, j) in enumerate(self.pairs):
            logs[f"lam_hat_{i}_{i}+{j}"], logs[f"lam_hat_{j}_{i}+{j}"] = self.lam_hat[p]
        return read_logs(logs)

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        h, z_uni = self.encode(batch)
        with self.ctx.autocast():
            z_mix = torch.stack(self.mixup_logits(h, self.lam)).mean(dim=0)
        return Prediction(sum(z_uni.values()) + loss_precision(z_mix), z_uni)
