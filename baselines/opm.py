"""OPM: on-the-fly prediction modulation (docs/methods/ogm.md#opm).

Paper: Yake Wei, Di Hu, Henghui Du, Ji-Rong Wen, "On-the-fly Modulation for Balanced Multimodal Learning", IEEE TPAMI
2024 (journal extension of OGM-GE, arXiv 2410.11582). Official code: GitHub GeWu-Lab/BML_TPAMI2024,
``code/models/Classifier.py`` (``calcu_q``, ``Modality_drop.execute_drop``, ``custom_autograd``,
``Classifier.forward``) and ``code/main.py`` (``train``; the warm-up and the skipped all-dropped batch).

Model: H-concat. Per training step after the warm-up (the official loop uses ``warm_up = 1 if epoch <= 5``, i.e.
epochs 0-5 are plain joint training):

1. Split-head logits with the head weights **detached**, z_m = h_m W[:, slice_m]^T + b/2, and s_m = sum over the batch
   of softmax(z_m)[y] (P2, constants).
2. r_1 = tanh(relu(s_1/s_2 - 1)), r_2 = tanh(relu(s_2/s_1 - 1)); q_m = q_base (1 + lambda r_m) if r_m > 0 else 0,
   clipped to [0, 1]. Only the dominant modality gets q > 0.
3. With probability p_exe (one draw per batch): every sample keeps modality m's features with probability 1 - q_m
   (per-sample Bernoulli mask); all features are rescaled by 1/(1 - theta), theta = sum_m d_m q_m / sum_m d_m
   (d_m = feature width), in the forward and the backward pass (a custom autograd function, as in the official code;
   mathematically the chain rule of the same constant factor); samples whose modalities are all dropped are removed.
   If every sample is removed the batch takes no optimiser step (official ``continue``).
   Official deviation (``theta_gradient``, variant ``official_compat``): the official backward returns theta as
   theta's own gradient and q is built from the confidence sums without detaching them (only W and b are), so the
   encoders also receive theta * d(theta)/d(params); the default keeps the paper's constant rescale.
   BB's form (``balancemm/trainer/OPM_trainer.py``): with ``rescale=bb`` the confidence sums come
   from the unimodal logits with the live W and b and the features are divided by (1 - theta + 1e-5) as a plain
   tensor operation, so autograd differentiates the loss through theta into the encoders, W and b; with
   ``ratio_form=bb`` r_1 = tanh(relu(s_1 / (s_2 + 1e-5) - 1)) and, through BB's in-place division,
   r_2 = tanh(relu(s_2 / (s_1 / (s_2 + 1e-5) + 1e-5) - 1)), so both modalities can be dropped on one step.
4. L = CE(z, y) on the kept samples. Nothing is dropped at evaluation.

Cost: as joint training. Randomness: the execution draw uses the global CPU generator, the masks the generator of the
features' device; the runner seeds and checkpoints both.

Defaults follow the official script (``code/scripts/train_opm.sh``: q_base 0.5, lambda 0.5, p_exe 0.7). BB
(``balancemm/trainer/OPM_trainer.py``) uses q_base 0.4 and no warm-up. The official recipe
(KS: AdamW lr 5e-5, wd 0.01, StepLR(40), 100 epochs, batch 32) belongs to the run config, not to this method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from baselines.base import (
    FusionMethod,
    StepInfo,
    TrainContext,
    confidence_scores,
    logged_values,
    loss_precision,
    read_logs,
)
from baselines.registry import register
from core.data import Batch, TaskSpec
from core.hparams import HParam, HParams, variant_param

# BB's OPM_trainer.py adds 1e-5 to the ratios' denominators (its comment: without it the GPU memory explodes) and to
# Modality_drop.execute_drop's 1 - theta.
BB_EPS = 1e-5


class FeatureRescale(torch.autograd.Function):
    """y = x * scale in the forward pass and dL/dx = scale * dL/dy in the backward pass (official
    ``custom_autograd`` with scale = 1/(1 - theta)); ``scale`` is a constant and receives no gradient.

    ``theta`` (optional) reproduces the official backward, which returns ``theta`` itself as theta's gradient
    (whatever dL/dy is): passed once per step, it adds theta * d(theta)/d(params) to every parameter theta depends on.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        ctx.save_for_backward(scale)
        ctx.theta = None if theta is None else theta.detach()
        return x * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor | None]:
        (scale,) = ctx.saved_tensors
        return grad * scale, None, ctx.theta


def bb_ratios(scores: torch.Tensor) -> torch.Tensor:
    """BB's score ratios (``OPM_trainer.py`` ``training_step``): ``ratios[m] = scores[m]`` then
    ``ratios[m] /= (scores[other] + 1e-5)`` divides ``scores[m]`` itself in place, so the second modality's ratio
    divides by the first one's ratio, s_2 / (s_1 / (s_2 + 1e-5) + 1e-5), not by s_1."""
    first = scores[0] / (scores[1] + BB_EPS)
    return torch.stack([first, scores[1] / (first + BB_EPS)])


def opm_drop_probabilities(scores: torch.Tensor, q_base: float, lam: float, bb_ratio: bool = False
                           ) -> torch.Tensor:
    """OPM's q = (q_1, q_2) from the confidence sums s = (s_1, s_2) (official ``calcu_q``).

    Args:
        scores: (2,) tensor of batch confidence sums.
        q_base: base drop probability.
        lam: lambda, the gain on the discrepancy r_m.
        bb_ratio: use BB's ratios (``bb_ratios``) instead of s_m / s_other.

    Returns:
        (2,) tensor of drop probabilities in [0, 1]; zero where r_m = 0 (for the official ratios, the non-dominant
        modality).
    """
    if scores.shape != (2,):
        raise ValueError(f"OPM's discrepancy is defined for 2 modalities, got scores of shape {tuple(scores.shape)}")
    r = torch.tanh(torch.relu((bb_ratios(scores) if bb_ratio else scores / scores.flip(0)) - 1))
    q = torch.where(r > 0, q_base * (1 + lam * r), torch.zeros_like(r))
    return q.clamp(0.0, 1.0)


def drop_features(h: Mapping[str, torch.Tensor], q: torch.Tensor, theta_gradient: bool = False
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Per-sample modality dropping with the 1/(1 - theta) rescale (official ``Modality_drop.execute_drop``).

    Args:
        h: {modality: (B, d_m) features}, in the order of ``q``.
        q: (M,) drop probabilities.
        theta_gradient: give theta the official gradient (see ``FeatureRescale``) once, through the first modality's
            rescale; it reaches the parameters only where ``q`` carries a graph (the confidence sums of ``update``).

    Returns:
        (dropped and rescaled features, keep mask (B,) of samples with at least one modality left, theta).
    """
    theta, mask = theta_and_mask(h, q)
    first = next(iter(h.values()))
    scale = (1 / (1 - theta)).to(device=first.device, dtype=first.dtype)
    out = {m: FeatureRescale.apply(h[m] * mask[:, i:i + 1], scale, theta if theta_gradient and i == 0 else None)
           for i, m in enumerate(h)}
    return out, mask.sum(dim=1) > 0, theta


def bb_drop_features(h: Mapping[str, torch.Tensor], q: torch.Tensor
                     ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """BB's ``Modality_drop.execute_drop``: as ``drop_features``, but the features are divided by
    (1 - theta + ``BB_EPS``) as a plain tensor operation, so autograd runs through theta into whatever ``q`` was
    built from."""
    theta, mask = theta_and_mask(h, q)
    first = next(iter(h.values()))
    denominator = (1 - theta + BB_EPS).to(device=first.device, dtype=first.dtype)
    out = {m: h[m] * mask[:, i:i + 1] / denominator for i, m in enumerate(h)}
    return out, mask.sum(dim=1) > 0, theta


def theta_and_mask(h: Mapping[str, torch.Tensor], q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """theta = sum_m d_m q_m / sum_m d_m (keeping q's graph) and the per-sample keep mask (B, M), drawn with
    probability 1 - q_m from the features' device generator."""
    first = next(iter(h.values()))
    q = loss_precision(q)
    dims = torch.tensor([v.shape[1] for v in h.values()], dtype=q.dtype, device=q.device)
    theta = (dims * q).sum() / dims.sum()
    if not bool(theta < 1):
        raise ValueError(f"OPM drop probabilities {q.tolist()} give theta={theta.item():.3f}; the 1/(1-theta) "
                         "rescale needs theta < 1")
    mask = (torch.rand(first.shape[0], len(h), device=first.device) < (1 - q).to(first.device)).to(first.dtype)
    return theta, mask


_VARIANTS = {"official_compat": {"theta_gradient": True}}


@register
class OPM(FusionMethod):
    name = "opm"
    title = "OPM"
    DATA_PARALLEL = "approximate"  # drop probabilities from each rank's confidence sums, drops from its own RNG
    PAPER = ('Wei, Hu, Du, Wen, "On-the-fly Modulation for Balanced Multimodal Learning", IEEE TPAMI 2024, '
             'arXiv 2410.11582')
    CODE = 'GitHub GeWu-Lab/BML_TPAMI2024, code/models/Classifier.py, calcu_q / Modality_drop.execute_drop'
    MODALITIES = (2,)
    HEAD = "concat"
    HPARAMS = (
        HParam("q_base", 0.5, "Base drop probability of the dominant modality (official train_opm.sh --q_base 0.5; "
                              "BB uses 0.4).", low=0, high=1),
        HParam("lam", 0.5, "lambda: gain of the discrepancy r_m on q_m (official train_opm.sh --lam 0.5)."),
        HParam("p_exe", 0.7, "Probability that dropping is executed on a batch (official train_opm.sh --p_exe 0.7).",
               low=0, high=1),
        HParam("warmup_epochs", 6, "Epochs of plain joint training before dropping starts (official main.py: "
                                   "warm_up = 1 if epoch <= 5, so dropping starts at 0-based epoch 6; BB: 0).",
               low=0),
        HParam("theta_gradient", False, "Give theta the official gradient on dropping steps: official "
                                        "code/models/Classifier.py custom_autograd.backward returns theta itself as "
                                        "theta's gradient, and calcu_q fills q from the non-detached confidence "
                                        "sums, so the encoders get an extra theta * d(theta)/d(params). False = the "
                                        "paper's constant rescale."),
        HParam("rescale", "official", "official = the official custom_autograd rescale by 1/(1 - theta) (theta's "
                                    "gradient as theta_gradient says); bb = BB's OPM_trainer.py: scores from the "
                                    "live W and b, features divided by (1 - theta + 1e-5), autograd through theta "
                                    "(needs theta_gradient false).", choices=("official", "bb")),
        HParam("ratio_form", "official", "official = r_m from s_m / s_other; bb = BB's OPM_trainer.py, whose "
                                         "in-place division makes the second modality's ratio s_2 / "
                                         "(s_1 / (s_2 + 1e-5) + 1e-5): it is dropped roughly whenever s_2^2 > s_1.",
               choices=("official", "bb")),
        variant_param(_VARIANTS, "paper = constant 1/(1 - theta) rescale; official_compat = the official "
                                 "theta gradient (theta_gradient=True)."),
    )
    VARIANTS = _VARIANTS

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """OPM modulated some step: train ``drop_executed`` above 0 in some epoch, the share of steps on which the
        drop was executed with theta > 0 (0.0 or 1.0 per step; warm-up steps log 0.0). Such a step masks features
        with probability q_m and rescales them by 1 / (1 - theta) != 1; an executed drop with q = 0 changes nothing."""
        values = logged_values(history, "train", "drop_executed")
        return any(v > 0 for v in values) if values else None

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        if self.hp.rescale == "bb" and self.hp.theta_gradient:
            raise ValueError("opm.rescale=bb differentiates through theta by autograd; it excludes the official "
                             "theta_gradient=true")

    def drop_probabilities(self, h: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """q from the batch's split-head confidence sums: constants by default; keeping their graph for the official
        theta gradient (only W and b detached) and for BB (nothing detached)."""
        head, bb = self.model.head, self.hp.rescale == "bb"
        weight, bias = (head.fc.weight, head.fc.bias) if bb else (head.fc.weight.detach(), head.fc.bias.detach())
        z_split = head.split_logits(h, weight, bias)
        if self.hp.theta_gradient or bb:
            scores = {m: torch.softmax(loss_precision(z), dim=1).gather(1, labels[:, None]).sum()
                      for m, z in z_split.items()}
        else:
            scores = confidence_scores(z_split, labels)
        return opm_drop_probabilities(torch.stack([scores[m] for m in self.modalities]), self.hp.q_base,
                                      self.hp.lam, self.hp.ratio_form == "bb")

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        if step.epoch < self.hp.warmup_epochs:
            return {**super().update(batch, step), "drop_executed": 0.0}
        labels = batch["label"]
        head = self.model.head
        with self.ctx.autocast():
            h = self.model.features(self.inputs(batch))
            q = self.drop_probabilities(h, labels)
            logs = {f"q_{m}": q[i].detach() for i, m in enumerate(self.modalities)}
            keep, theta = None, None
            if bool(torch.rand(()) < self.hp.p_exe):
                if self.hp.rescale == "bb":
                    h, keep, theta = bb_drop_features(h, q)
                else:
                    h, keep, theta = drop_features(h, q, self.hp.theta_gradient)
                h = {m: v[keep] for m, v in h.items()}
                labels = labels[keep]
            logs["kept"] = 1.0 if keep is None else keep.float().mean()
            # Read with the other logged values: no extra host read.
            logs["drop_executed"] = 0.0 if theta is None else (theta > 0).float()
            if not self._kept_anywhere(labels):
                return read_logs(logs)
            z, _ = head(h)
            loss = F.cross_entropy(loss_precision(z), labels) if len(labels) else None
        self.optimizer.zero_grad(set_to_none=True)
        if loss is None:
            # Ranks draw their own drops: this one kept nothing, but the others step, and the pre-step average needs
            # every rank (its missing gradients count as zeros).
            self.optimizer.step()
            return read_logs(logs)
        loss.backward()
        self.optimizer.step()
        return read_logs({"loss": loss, **logs})

    def _kept_anywhere(self, labels: torch.Tensor) -> bool:
        """Whether any rank kept a sample: the step is skipped only when no rank has one, and every rank must call
        this, dropping or not, so that the collectives line up."""
        count = torch.tensor([float(len(labels))], device=labels.device)
        return bool(self.ctx.all_reduce_sum(count).item() > 0)
