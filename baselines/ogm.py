"""OGM: on-the-fly gradient modulation (docs/methods/ogm.md), the scaling half of OGM-GE.

Paper: Xiaokang Peng, Yake Wei, Andong Deng, Dong Wang, Di Hu, "Balanced Multimodal Learning via On-the-fly Gradient
Modulation", CVPR 2022, arXiv 2203.15332, Eq. (10). Official code: GitHub GeWu-Lab/OGM-GE_CVPR2022, ``main.py``,
``train_epoch`` (``--modulation OGM``). AUG's Table 1 row is labelled "OGM".

Per step: joint training with L = CE(z, y) and one backward. The split-head logits (H-concat: W[:, slice_m] h_m + b/2;
H-sum: W_m h_m + b_m) give s_m = sum over the batch of softmax(z_m)[y], treated as constants (P2), and
rho_v = s_v / s_a, rho_a = 1 / rho_v. Only the dominant modality is slowed: if rho_v > 1 then k_v = 1 - tanh(alpha
rho_v), k_a = 1, otherwise k_a = 1 - tanh(alpha rho_a), k_v = 1 (a tie suppresses the first modality, as the code's
``else`` branch does). The argument is alpha * rho, not alpha * (rho - 1), so k jumps to about 1 - tanh(alpha) as rho
crosses 1. Inside the window mod_start <= epoch <= mod_end (inclusive, 0-based epochs as in the official loop) the
gradient of every 4-D parameter (conv kernel) of encoder m is multiplied by k_m between backward and step (P3, P4);
BatchNorm parameters, biases and the fusion head keep their gradients. OGM-GE (``baselines/ogm_ge.py``) adds Gaussian
noise on top.

Cost: as joint training (one forward, one backward), plus one pass over the encoders' conv gradients.

Data-parallel runs (``core.distributed``): the gradients are averaged over ranks right after ``backward`` and
the confidence sums are summed over ranks before k is computed, so a step on W ranks with B/W samples each equals
the single-process step on B (up to BatchNorm, which normalises each rank's slice). OGM-GE's noise is drawn from the
averaged gradient's std and rank 0's draw is broadcast, so it is not averaged away.

Paper and official code agree on the rule. Project choices: the head is a knob (``concat`` default, ``sum``); the
other official heads (FiLM, gated) have no split-head logits, and the official script then reads unrelated weights,
so they are not offered. ``grad_params=non_1d`` extends the edit to every >= 2-D encoder tensor, for encoders without
convolutions (feature-vector datasets); it is BB's filter and is off by default.

Where BalanceBenchmark (BB, GitHub GeWu-Lab/BalanceBenchmark @4909c17, ``balancemm/trainer/OGM_trainer.py``)
diverges: alpha 0.3 and modulation epochs 10-80 by default; it adds 1e-5 to the ratio's denominator; it edits every
non-1-D tensor whose name contains the modality (2-D weights too, not only conv kernels); at an exact tie neither
modality is suppressed. The TPAMI 2024 version (GitHub GeWu-Lab/BML_TPAMI2024, ``code/main.py``) applies the same rule
after a warm-up (no modulation for epochs 0-5), i.e. ``ogm_ge`` with mod_start=6.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import (
    FusionMethod,
    Loaders,
    StepInfo,
    TrainContext,
    confidence_scores,
    conv_weights,
    loss_precision,
    read_logs,
)
from baselines.registry import register
from core.data import Batch, TaskSpec
from core.hparams import HParam, HParams

# Added to the per-tensor std so that an all-zero gradient still gets a valid Normal scale (official main.py).
NOISE_STD_EPS = 1e-8


def ogm_coefficients(scores: Mapping[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """OGM's k_m (paper Eq. 10) from the batch confidence sums of two modalities, first modality = "a".

    Args:
        scores: {modality: s_m} for exactly two modalities, in the dataset's order (audio first).
        alpha: modulation strength.

    Returns:
        {modality: 0-dim tensor k_m}; the dominant modality gets 1 - tanh(alpha * rho), the other 1.
    """
    if len(scores) != 2:
        raise ValueError(f"OGM's ratio is defined for 2 modalities, got {sorted(scores)}")
    (first, s_a), (second, s_v) = scores.items()
    ratio_v = s_v / s_a
    one = torch.ones_like(ratio_v)
    v_dominant = ratio_v > 1
    k_v = torch.where(v_dominant, 1 - torch.tanh(alpha * ratio_v), one)
    k_a = torch.where(v_dominant, one, 1 - torch.tanh(alpha / ratio_v))
    return {first: k_a, second: k_v}


def modulated_params(encoder: nn.Module, kind: str) -> list[nn.Parameter]:
    """The encoder tensors OGM edits: conv kernels (``conv4d``, official) or every >= 2-D tensor (``non_1d``, BB)."""
    if kind == "conv4d":
        return conv_weights(encoder)
    if kind == "non_1d":
        return [p for p in encoder.parameters() if p.dim() > 1]
    raise ValueError(f"grad_params={kind!r} is not one of conv4d, non_1d")


@torch.no_grad()
def modulate_gradients(params: list[nn.Parameter], coeff: torch.Tensor, noise: bool) -> None:
    """g <- k g (OGM), or g <- k g + eps with eps ~ N(0, (std(g) + 1e-8)^2) elementwise (OGM-GE), in place.

    The std is that of the unscaled gradient of each tensor, as in the official code.
    """
    for p in params:
        if p.grad is None:
            continue
        g = p.grad
        if noise:
            std = g.std() + NOISE_STD_EPS
            g.mul_(coeff).add_(torch.randn_like(g) * std)
        else:
            g.mul_(coeff)


@register
class OGM(FusionMethod):
    name = "ogm"
    title = "OGM"
    DATA_PARALLEL = "exact"  # confidence sums all-reduced, gradients synced before the modulation
    PAPER = ('Peng, Wei, Deng, Wang, Hu, "Balanced Multimodal Learning via On-the-fly Gradient Modulation", CVPR 2022, '
             'arXiv 2203.15332')
    CODE = 'GitHub GeWu-Lab/OGM-GE_CVPR2022, main.py, train_epoch'
    MODALITIES = (2,)
    HPARAMS = (
        HParam("alpha", 0.8, "Modulation strength. Official README: 0.8 for CREMA-D, 0.1 for VGGSound; no value is "
                             "published for Kinetics-Sounds, which gets 0.8 untuned [project]; tune "
                             "0.1/0.3/0.5/0.8 on validation.",
               per_dataset={"cremad": 0.8, "vggsound": 0.1}, low=0),  # < 0: k = 1 - tanh(.) > 1 speeds it up
        HParam("mod_start", 0, "First modulated epoch, inclusive (official main.py --modulation_starts 0).", low=0),
        HParam("mod_end", 50, "Last modulated epoch, inclusive (official main.py --modulation_ends 50).", low=0),
        HParam("head", "concat", "Fusion head: concat (official default --fusion_method) or sum (split-head logits "
                                 "are the per-modality summands).", choices=("concat", "sum")),
        HParam("grad_params", "conv4d", "Which encoder gradients are edited: conv4d = 4-D conv kernels (official); "
                                        "non_1d = every >= 2-D tensor (BB's filter; needed for MLP encoders).",
               choices=("conv4d", "non_1d")),
    )
    # OGM-GE's generalisation enhancement (Gaussian noise); the only difference between the two registered methods.
    NOISE = False

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """Whether OGM scaled a conv gradient: an epoch inside the window (diag ``ogm_window`` 1.0) whose mean
        ``coeff_<m>`` is below 1 for some modality. An unsuppressed modality logs k = 1.0 exactly (a literal), and so
        does the suppressed one when 1 - tanh(alpha rho) rounds to 1 (alpha = 0), where the edit changes nothing.
        None for a history without ``ogm_window`` (logged by older code)."""
        epochs = [r for r in history if "ogm_window" in r.get("diag", {})]
        if not epochs:
            return None
        return any(r["diag"]["ogm_window"] == 1.0 and any(v < 1.0 for k, v in r.get("train", {}).items()
                                                          if k.startswith("coeff_"))
                   for r in epochs)

    @property
    def HEAD(self) -> str:  # noqa: N802 - FusionMethod reads HEAD; here it comes from the knob set by Method.__init__
        return self.hp.head

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        # An encoder without the selected tensors (conv4d on BERT or an MLP) would never be modulated: the run would
        # be joint training under OGM's name.
        for m, encoder in self.model.encoders.items():
            if not modulated_params(encoder, hp.grad_params):
                raise ValueError(f"{self.name}.grad_params={hp.grad_params!r} selects no tensor of the {m} encoder "
                                 f"({type(encoder).__name__}), so OGM would never modulate it; set "
                                 f"{self.name}.grad_params=non_1d to edit its >= 2-D tensors")

    def modulating(self, epoch: int) -> bool:
        return self.hp.mod_start <= epoch <= self.hp.mod_end

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        labels = batch["label"]
        with self.ctx.autocast():
            _, z, z_uni = self.model(self.inputs(batch))
            loss = F.cross_entropy(loss_precision(z), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Data-parallel: edit the global batch's gradient with the global batch's confidence sums (P2 sums, so SUM).
        self.ctx.sync_gradients(self.model.parameters())
        scores = confidence_scores(z_uni, labels)
        scores = dict(zip(scores, self.ctx.all_reduce_sum(torch.stack(list(scores.values()))).unbind()))
        coeffs = ogm_coefficients(scores, self.hp.alpha)
        if self.modulating(step.epoch):
            edited = {m: modulated_params(self.model.encoders[m], self.hp.grad_params) for m in coeffs}
            for m, k in coeffs.items():
                modulate_gradients(edited[m], k, self.NOISE)
            if self.NOISE:
                # Ranks' RNG streams need not agree (e.g. augmentation draws); rank 0's noise is the single-process one.
                self.ctx.sync_gradients([p for params in edited.values() for p in params], how="main")
        self.optimizer.step()
        return read_logs({"loss": loss, **{f"coeff_{m}": k for m, k in coeffs.items()}})

    def on_epoch_end(self, epoch: int, loaders: Loaders) -> dict[str, float]:
        # coeff_<m> is logged in every epoch; this says whether the epoch's steps applied it.
        return {"ogm_window": float(self.modulating(epoch))}
