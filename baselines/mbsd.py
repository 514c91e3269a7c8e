"""MBSD, as in BalanceBenchmark (docs/methods/balancebenchmark.md#mbsd).

Paper: not identified; BalanceBenchmark (Shaoxuan Xu et al., "BalanceBenchmark: A Survey for Multimodal Imbalance
Learning", arXiv 2502.10816) lists the method as MBSD among its objective-based methods [citation unverified].
Followed: BalanceBenchmark (GitHub GeWu-Lab/BalanceBenchmark, commit 4909c17, ``balancemm/trainer/MBSD_trainer.py``,
``MBSDTrainer.training_step``, two-modality branch), vectorised.

Concat head with split-head unimodal logits z_a, z_v (the loss flows into their weight slices, the bias and the
encoders). Per sample i, with p_m = softmax(z_m) and q_m = p_m[y_i]:

    w_i  = |q_a - q_v| if either unimodal head predicts y_i, else 0     (not detached, as in BB)
    RS_i = (1/K) ||z_a,i - z_v,i||^2
    ps_i, pw_i = max(q_a, q_v), min(q_a, q_v)
    L = CE(z) + CE(z_a) + CE(z_v) + mean_i[w_i RS_i] + mean_i[w_i KL_i]

``mbsd.kl_form``: ``bb_literal`` (default) is BB's ``F.kl_div(ps, pw)`` = pw (log pw - ps), which passes a
probability where the library expects a log-probability; ``log_prob`` passes log ps, giving the pointwise KL term
pw (log pw - log ps). The paper could not be identified, so nothing says which it intends: the default stays BB's.

Cost: none beyond joint training. Two modalities only (BB's three-modality branch is a different formula, with RS on
probabilities and pairwise averages).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from baselines.base import FusionMethod, StepInfo, logged_values, loss_precision, read_logs
from baselines.registry import register
from core.data import Batch
from core.hparams import HParam


def mbsd_terms(z_a: torch.Tensor, z_v: torch.Tensor, labels: torch.Tensor, kl_form: str = "bb_literal"
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (w, RS, KL) of BB's two-modality MBSD, with gradients everywhere (w included)."""
    p_a, p_v = torch.softmax(z_a, dim=1), torch.softmax(z_v, dim=1)
    q_a, q_v = p_a.gather(1, labels[:, None])[:, 0], p_v.gather(1, labels[:, None])[:, 0]
    correct = (p_a.argmax(1) == labels) | (p_v.argmax(1) == labels)
    w = torch.where(correct, (q_a - q_v).abs(), torch.zeros_like(q_a))
    rs = ((z_a - z_v) ** 2).sum(1) / z_a.shape[1]
    ps, pw = torch.maximum(q_a, q_v), torch.minimum(q_a, q_v)
    if kl_form == "bb_literal":
        kl = F.kl_div(ps, pw, reduction="none")
    elif kl_form == "log_prob":
        kl = F.kl_div(ps.log(), pw, reduction="none")
    else:
        raise ValueError(f"mbsd.kl_form={kl_form!r} is not one of bb_literal, log_prob")
    return w, rs, kl


@register
class MBSD(FusionMethod):
    name = "mbsd"
    title = "MBSD (BB)"
    DATA_PARALLEL = "exact"  # per-sample weights and batch-mean terms: global batch's gradients
    PAPER = 'MBSD as listed in BalanceBenchmark (arXiv 2502.10816); original paper not identified'
    CODE = 'BalanceBenchmark (GitHub GeWu-Lab/BalanceBenchmark @4909c17), balancemm/trainer/MBSD_trainer.py'
    HEAD = "concat"
    MODALITIES = (2,)
    HPARAMS = (
        HParam("kl_form", "bb_literal", "KL term: BB's literal kl_div(ps, pw) or kl_div(log ps, pw) (MBSD_trainer.py; "
                                        "paper unidentified, so BB's form is the default).",
               choices=("bb_literal", "log_prob")),
    )

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """Whether the self-distillation terms weighed any sample: an epoch mean of w (``w_mean``) above 0 (w is 0
        for a sample neither unimodal head predicts, and the terms then leave the three cross-entropies alone)."""
        means = logged_values(history, "train", "w_mean")
        return any(m > 0 for m in means) if means else None

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        y = batch["label"]
        with self.ctx.autocast():
            _, z, z_uni = self.model(self.inputs(batch))
        z = loss_precision(z)
        z_a, z_v = (loss_precision(z_uni[m]) for m in self.modalities)
        w, rs, kl = mbsd_terms(z_a, z_v, y, self.hp.kl_form)
        ce = F.cross_entropy(z, y) + F.cross_entropy(z_a, y) + F.cross_entropy(z_v, y)
        loss = ce + (w * rs).mean() + (w * kl).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return read_logs({"loss": loss, "ce": ce, "w_mean": w.mean()})
