"""ARL: Asymmetric Representation Learning, imbalanced optimisation by the inverse ratio of modality variances.

Paper: Shicai Wei, Chunbo Luo, Yang Luo, "Improving Multimodal Learning via Imbalanced Learning", ICCV 2025,
arXiv 2507.10203 (abstract, Fig. 2, §4 implementation details). Official code: GitHub shicaiwei123/ICCV2025-ARL,
commit 358af4f (2025-07-28): ``main_arl_variance.py`` ``train_epoch`` (modality analysis and the ARL weights),
``models/backbone.py`` ``GradScale`` and ``ResNet_weight.forward`` (asymmetric learning at each encoder's output),
``models/fusion_modules.py`` ``ConcatFusion_AUXI`` (unimodal outputs through the shared fusion classifier). The
paper's equations were not available to this implementation (only its abstract, figure captions and §4 settings), so
the formulas below are the official code's; the abstract and Fig. 2 describe the same three parts in words.

The paper's argument: with a fused prediction f = w_0 s_0 + w_1 s_1, the variance term of the generalisation error is
smallest when the dependence ratio on the modalities equals the inverse ratio of their prediction variances, so the
optimum is imbalanced learning, not balanced learning. Per step, with z_m the unimodal logits:

1. Modality analysis (no_grad). Dependence d_m = sum_k mean_b |z_m[b, k]|, normalised over modalities. Variance proxy:
   the mean softmax entropy H_m, normalised over modalities and floored at ``entropy_floor``; q_m = (1 / H_m)
   normalised over modalities (the inverse-variance share).
2. Asymmetric learning. Two modalities a, v: (w_a, w_v) = softmax(T [d_v q_a, d_a q_v]); a modality whose dependence
   share is below its inverse-variance share (d_a / d_v < q_a / q_v) gets the larger weight. The gradient reaching
   encoder m is g_m + w_m g_m (``GradScale``: the plain gradient is kept as a residual, so no encoder stops learning).
   The scale is applied to the encoder's parameter gradients after backward, which equals scaling the gradient at its
   output: the map from that gradient to the parameter gradients is linear.
3. Unimodal bias regularisation. L = CE(z) + gamma * sum_m CE(z_m), where z_m are the shared concat classifier's
   logits with every other modality's features zeroed (``ConcatFusion_AUXI``: W [h_m; 0] + b, the full bias). The
   regularisers share every parameter with the multimodal model.

Steps 1-2 and gamma start after a warm-up: for epochs <= ``start_epoch`` (0-based, official ``--start 5``) the loss is
CE(z) + sum_m CE(z_m) and no gradient is scaled (the official condition also requires a nonzero unimodal test accuracy
from the previous epoch, true in practice after the first epoch). Every step clips the global gradient norm to
``clip_norm`` (official ``clip_grad_norm_(max_norm=40)``).

Variant ``official_code``: in the released ``train_epoch`` the ARL weights are computed and printed but never written
to ``args.audio_weight`` / ``args.visual_weight``; those stay at the 0.5 set during the warm-up, so after it both
encoders' gradients are scaled by the same 1.5 and the asymmetric part has no effect. (The released script also raises
``EOFError`` right after building the ResNet model, so it does not run as published.) The variant reproduces the
released behaviour: a fixed weight of 0.5 on every modality.

Two modalities only: the coefficient rule pairs each modality with the other's dependence and variance, and neither
the paper nor the code states it for three.

Cost: as joint training plus two extra passes of the fusion classifier (one per zero-masked modality) and O(B K)
statistics per step; no extra parameters. Data-parallel: one all-reduce of four scalars and one gradient average
before the scaling and clipping (it replaces the pre-step average).

Official recipe: ResNet-18 encoders from scratch, SGD lr 1e-3, momentum 0.9, weight decay 1e-4, batch 64, 100 epochs,
``MultiStepLR([70, 150], 0.1)`` (paper §4 and ``main_arl_variance.py``, which steps the scheduler at the start of each
epoch, so its decay lands one epoch early); set through a config file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import (
    FusionModel,
    Method,
    Prediction,
    StepInfo,
    TrainContext,
    loss_precision,
    read_logs,
)
from baselines.registry import register
from core.data import Batch, TaskSpec
from core.hparams import HParam, HParams, variant_param

_TINY = torch.finfo(torch.float32).tiny
# official main_arl_variance.py sets args.audio_weight = args.visual_weight = 0.5 during the warm-up and never again.
_OFFICIAL_FIXED_WEIGHT = 0.5


def modality_statistics(z_uni: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per modality (in ``z_uni`` order): [d_m, H_m] = [sum_k mean_b |z_m|, mean_b entropy(softmax z_m)], shape (M, 2).

    Both are batch means, so in a data-parallel run their mean over equal rank slices is the global batch's.
    """
    rows = []
    for z in z_uni.values():
        z = loss_precision(z.detach())
        entropy = -(torch.softmax(z, dim=1) * torch.log_softmax(z, dim=1)).sum(dim=1).mean()
        rows.append(torch.stack([z.abs().mean(dim=0).sum(), entropy]))
    return torch.stack(rows)


def arl_weights(stats: torch.Tensor, temperature: float, entropy_floor: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ARL weights of two modalities from ``modality_statistics``.

    Returns:
        (w, d, q), each of shape (2,): the gradient weights softmax(T [d_1 q_0, d_0 q_1]), the normalised dependences
        and the normalised inverse-entropy shares.
    """
    if stats.shape[0] != 2:
        raise ValueError(f"ARL weights are defined for 2 modalities, got {stats.shape[0]}")
    d = stats[:, 0] / stats[:, 0].sum().clamp_min(_TINY)
    h = (stats[:, 1] / stats[:, 1].sum().clamp_min(_TINY)).clamp_min(entropy_floor)
    q = (1 / h) / (1 / h).sum()
    w = torch.softmax(temperature * torch.stack([d[1] * q[0], d[0] * q[1]]), dim=0)
    return w, d, q


_VARIANTS = {"official_code": {"coefficients": "fixed"}}


@register
class ARL(Method):
    """Concat head; unimodal CEs through the shared classifier; encoder gradients scaled by 1 + w_m after a warm-up."""

    name = "arl"
    title = "ARL"
    PAPER = ('Shicai Wei, Chunbo Luo, Yang Luo, "Improving Multimodal Learning via Imbalanced Learning", ICCV 2025, '
             'arXiv 2507.10203')
    CODE = ("GitHub shicaiwei123/ICCV2025-ARL @358af4f, main_arl_variance.py, train_epoch (+ models/backbone.py "
            "GradScale, models/fusion_modules.py ConcatFusion_AUXI)")
    MODALITIES = (2,)
    DATA_PARALLEL = "exact"  # all-reduced batch statistics; gradients averaged before scaling and clipping
    VARIANTS = _VARIANTS
    HPARAMS = (
        HParam("gamma", 4.0, "Unimodal bias regularisation weight after the warm-up: paper §4 'gamma is set as 4 for "
                             "all datasets' (official scripts: cramed_arl.sh 4.0, ks_arl.sh 3.0, ave_arl.sh 5.0)."),
        HParam("temperature", 4.0, "T in softmax(T [d_v q_a, d_a q_v]): paper §4 'T is set 8, 4, 4, 4, 4 for "
                                   "CREMA-D, AVE, KS, MOSI and UCF101' (official --T: cramed_arl.sh 8, ks/ave_arl.sh "
                                   "4).",
               per_dataset={"cremad": 8.0}, low=0, open_low=True),
        HParam("start_epoch", 5, "Warm-up: ARL weights and gamma apply from epoch index > start_epoch (0-based); "
                                 "before, L = CE + sum of unimodal CEs, unscaled. Official --start default 5."),
        HParam("entropy_floor", 0.3, "Floor on each normalised entropy share before inverting it: official "
                                     "main_arl_variance.py torch.clamp(H_n, 0.3).", low=0, open_low=True),
        HParam("clip_norm", 40.0, "Global gradient-norm clip every step; 0 disables. Official "
                                  "nn.utils.clip_grad_norm_(max_norm=40).", low=0),
        HParam("coefficients", "asymmetric", "'asymmetric' = the ARL weights softmax(T [d_v q_a, d_a q_v]); 'fixed' "
                                             "= 0.5 on every modality, what the released train_epoch applies (the "
                                             "computed weights are never assigned).", choices=("asymmetric", "fixed")),
        variant_param(_VARIANTS, "paper = asymmetric ARL weights; official_code = the released main_arl_variance.py, "
                                 "whose gradient weights stay at 0.5 (a uniform 1.5x encoder gradient)."),
    )

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """ARL trained past its warm-up: train ``arl_active`` above 0 in some epoch (0.0 or 1.0 per step), or the
        ARL weights ``w_*`` logged (older runs). Every such step scales each encoder's gradient by 1 + w_m, w_m > 0,
        and weights the unimodal CEs by gamma."""
        judged = False
        for record in history:
            train = record.get("train") or {}
            if train.get("arl_active", 0.0) > 0 or any(k.startswith("w_") for k in train):
                return True
            judged = judged or "arl_active" in train
        return False if judged else None

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        self.model = FusionModel(task, ctx.model_hp, "concat").to(ctx.device)
        self.optimizer = ctx.make_optimizer(self.model.parameters())

    def forward_all(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Fused logits and the shared classifier's logits with every other modality's features zeroed."""
        with self.ctx.autocast():
            h = self.model.features(self.inputs(batch))
            z = self.model.head(h)[0]
            z_uni = self.model.unimodal_logits(h, None)
        return loss_precision(z), {m: loss_precision(v) for m, v in z_uni.items()}

    def gradient_weights(self, z_uni: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.hp.coefficients == "fixed":
            return {m: torch.tensor(_OFFICIAL_FIXED_WEIGHT, device=self.ctx.device) for m in self.modalities}
        stats = self.ctx.all_reduce_mean(modality_statistics(z_uni))
        w, _, _ = arl_weights(stats, self.hp.temperature, self.hp.entropy_floor)
        return dict(zip(self.modalities, w))

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        y = batch["label"]
        z, z_uni = self.forward_all(batch)
        loss_f = F.cross_entropy(z, y)
        loss_uni = {m: F.cross_entropy(v, y) for m, v in z_uni.items()}
        active = step.epoch > self.hp.start_epoch
        loss = loss_f + (self.hp.gamma if active else 1.0) * sum(loss_uni.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = list(self.model.parameters())
        # The scaling is linear and the clip uses the global norm: both must act on the global batch's gradient.
        self.ctx.sync_gradients(params)
        logs: dict[str, torch.Tensor] = {}
        if active:
            for m, w in self.gradient_weights(z_uni).items():
                for p in self.model.encoders[m].parameters():
                    if p.grad is not None:
                        p.grad.mul_(1 + w)
                logs[f"w_{m}"] = w
        if self.hp.clip_norm > 0:
            nn.utils.clip_grad_norm_(params, self.hp.clip_norm)
        self.optimizer.step()
        return read_logs({"loss": loss, "loss_fused": loss_f, **{f"loss_{m}": v for m, v in loss_uni.items()}, **logs,
                          "arl_active": float(active)})

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        z, z_uni = self.forward_all(batch)
        return Prediction(z, z_uni)
