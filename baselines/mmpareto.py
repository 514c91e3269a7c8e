"""MMPareto: Pareto integration of the multimodal and unimodal encoder gradients (docs/methods/mmpareto.md).

Paper: Yake Wei, Di Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance", ICML 2024,
arXiv 2405.17730. Official code: GitHub GeWu-Lab/MMPareto_ICML2024, ``code/MMPareto.py`` (``train_epoch``) and
``code/min_norm_solvers.py`` (``MinNormSolver``); model ``code/models/models.py`` ``AVClassifier`` (H-sep heads).

Per step, with L_mm = CE(z) and L_m = CE(z_m) on the separate unimodal heads:

1. Per-loss gradients (P5) by ``torch.autograd.grad``: g_mm for every encoder in one call, g_u = dL_m/d(encoder m).
   Encoder m is reached only by L_mm and L_m, so g_sum = g_mm + g_u is exactly its gradient of the summed loss, and
   the heads' gradients of the summed loss are the sums of the per-loss head gradients of the same calls. The
   official code instead runs three retained backward passes (zero_grad in between) plus a fourth for the sum.
2. Per encoder, c = cos(flat g_mm, flat g_u). If c > 0 the weights are (k0, k1) = (1/2, 1/2); otherwise the two-task
   min-norm (MGDA) solution k0 = (|g_u|^2 - g_mm.g_u) / |g_mm - g_u|^2, k1 = 1 - k0, unclipped: with g_mm.g_u <= 0
   it already lies in (0, 1). ``MinNormSolver._min_norm_element_from2`` returns 0.999 / 0.001 only in its two
   boundary branches (g_mm.g_u >= |g_mm|^2, resp. >= |g_u|^2), which with c <= 0 are reached only when g_mm = 0,
   resp. g_u = 0; those two values are kept. So at extreme norm ratios (a conflict with |g_u| / |g_mm| = 0.001
   gives k0 ~ 2e-4) the weight is not bounded by 0.001 / 0.999.
3. Per encoder tensor: new = 2 (k0 g_mm + k1 g_u); if |g_sum| / |new| > 1, new is rescaled to |g_sum|; the final
   gradient is gamma * new with gamma = 1.5. Heads keep the plain summed gradient. One optimizer step.

With no conflict (c > 0) new = g_sum, so MMPareto is the uniform baseline (``baselines/uniform.py``) with encoder
gradients x1.5. The two-task rule is per encoder and only ever involves L_mm and that encoder's own unimodal loss, so
it applies unchanged to 3 modalities.

Data-parallel runs (``core.distributed``): the per-loss gradients are averaged over ranks (one collective)
before the cosine test and the min-norm weights, so the gradients the rule combines, and the summed ones, are the
global batch's; the resulting gradients are equal on every rank and skip the pre-step average. A step on W ranks
with B/W samples each equals the single-process step on B (up to BatchNorm, which normalises each rank's slice).

Cost: each encoder is back-propagated twice per step (for L_mm and for its own L_m) instead of once; one extra copy
of the encoder gradients per loss is held during the step.

Variant ``bb_degenerate`` (BalanceBenchmark, GitHub GeWu-Lab/BalanceBenchmark, ``balancemm/trainer/MMPareto_trainer.py``
``training_step``, commit 4909c17): BB back-propagates all losses before copying any gradient, so both captured
copies equal g_sum, the cosine is 1, the min-norm branch is never reached and the final encoder gradient is
2 * gamma * g_sum = 3 x the gradient of the summed cross-entropy; its unimodal logits are the split-head logits of the
concat head. BB's MMPareto therefore collapses to "3x the summed cross-entropy" on the encoders. Use it only to compare
with BB's table (docs/methods/README.md#published-numbers).

Official recipe (CREMA-D): SGD lr 2e-3, momentum 0.9, weight decay 1e-4, batch 64, 50 epochs, ``fbank`` front-end with
2 frames; set through a config file (``train.lr: 0.002``, ``train.epochs: 50``, ``train.lr_milestones: [30]``). The
released ``MMPareto.py`` builds ``StepLR(30, 0.1)`` but never calls ``scheduler.step()``, so the released code
actually trains at a constant 2e-3 (``train.lr_milestones: []``). No Kinetics-Sounds script is released.
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
from core.hparams import HParam, HParams, variant_param

_TINY = torch.finfo(torch.float32).tiny


# ``MinNormSolver._min_norm_element_from2``'s boundary results (official code/min_norm_solvers.py).
_K_AT_MM_END, _K_AT_U_END = 0.999, 0.001


def pareto_weights(g_mm: Sequence[torch.Tensor], g_u: Sequence[torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official weight rule for one encoder: (1/2, 1/2) when cos(g_mm, g_u) > 0, else the two-task min-norm point.

    Args:
        g_mm: the encoder's gradient tensors of the multimodal loss.
        g_u: the same tensors' gradients of the encoder's own unimodal loss.

    Returns:
        (k0, k1, cos) as 0-dim tensors in the gradients' dtype; k0 weights g_mm. The min-norm point follows
        ``MinNormSolver._min_norm_element_from2`` branch by branch (0.999 if g_mm.g_u >= |g_mm|^2, else 0.001 if
        g_mm.g_u >= |g_u|^2, else the unclipped interior solution). Computed without host synchronisation.
    """
    a = torch.cat([g.reshape(-1) for g in g_mm])
    b = torch.cat([g.reshape(-1) for g in g_u])
    cos = F.cosine_similarity(a, b, dim=0)
    dot, aa, bb = a @ b, a @ a, b @ b
    # Where it is used (dot <= 0) the denominator is >= |g_mm|^2 + |g_u|^2: 0 only if both are 0, a first-branch case.
    interior = (bb - dot) / (aa + bb - 2 * dot).clamp_min(_TINY)
    min_norm = torch.where(dot >= aa, torch.full_like(interior, _K_AT_MM_END),
                           torch.where(dot >= bb, torch.full_like(interior, _K_AT_U_END), interior))
    k0 = torch.where(cos > 0, torch.full_like(min_norm, 0.5), min_norm)
    return k0, 1 - k0, cos


def mmpareto_encoder_grads(g_mm: Sequence[torch.Tensor], g_u: Sequence[torch.Tensor], g_sum: Sequence[torch.Tensor],
                           k0: torch.Tensor, k1: torch.Tensor, gamma: float) -> list[torch.Tensor]:
    """Per tensor: new = 2 (k0 g_mm + k1 g_u), rescaled to |g_sum| when |g_sum| / |new| > 1, times gamma."""
    out = []
    for gm, gu, gs in zip(g_mm, g_u, g_sum):
        new = 2 * (k0 * gm + k1 * gu)
        ratio = gs.norm() / new.norm().clamp_min(_TINY)
        out.append(gamma * torch.where(ratio > 1, ratio, torch.ones_like(ratio)) * new)
    return out


def _mean_over_ranks(ctx: TrainContext, groups: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    """Average lists of gradients over data-parallel ranks in one collective; same structure back."""
    tensors = [g for group in groups for g in group]
    flat = ctx.all_reduce_mean(torch.cat([loss_precision(g.reshape(-1)) for g in tensors]))
    parts = iter(t.view(g.shape).to(g.dtype) for t, g in zip(flat.split([g.numel() for g in tensors]), tensors))
    return [[next(parts) for _ in group] for group in groups]


def _grads(loss: torch.Tensor, params: Sequence[torch.Tensor], retain: bool) -> list[torch.Tensor]:
    """P5: gradients of ``loss`` w.r.t. ``params`` without touching ``.grad``; unreached tensors get zeros."""
    grads = torch.autograd.grad(loss, list(params), retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


_VARIANTS = {"bb_degenerate": {"head": "concat", "capture": "accumulated"}}


@register
class MMPareto(Method):
    """Separate heads; encoder gradients integrated per encoder by the MMPareto rule; heads keep the summed gradient."""

    name = "mmpareto"
    title = "MMPareto"
    DATA_PARALLEL = "exact"  # per-loss gradients averaged over ranks before solving the Pareto weights
    PAPER = ('Yake Wei, Di Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance", ICML 2024, '
             'arXiv 2405.17730')
    CODE = ("GitHub GeWu-Lab/MMPareto_ICML2024, code/MMPareto.py, train_epoch (+ code/min_norm_solvers.py, "
            "MinNormSolver)")
    VARIANTS = _VARIANTS
    HPARAMS = (
        HParam("gamma", 1.5, "Final encoder-gradient multiplier, hard-coded gamma=1.5 in official code/MMPareto.py "
                             "train_epoch (docs/methods/mmpareto.md, step 3); BB's trainer_config alpha=1.5 is the "
                             "same."),
        HParam("head", "separate", "'separate' = H-sep heads as in official code/models/models.py AVClassifier; "
                                   "'concat' = split-head logits of the concat head (BB).",
               choices=("separate", "concat")),
        HParam("capture", "per_loss", "'per_loss' = each loss's encoder gradient on its own (official); "
                                      "'accumulated' = gradients copied after back-propagating all losses, so both "
                                      "copies equal g_sum (BB's order; cos = 1, final gradient 3 x g_sum).",
               choices=("per_loss", "accumulated")),
        variant_param(_VARIANTS, "paper = the paper/official code; bb_degenerate = BalanceBenchmark's MMPareto_trainer "
                                "(split head, accumulated capture: 3 x the summed CE on encoders), for BB's table."),
    )

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """Whether the Pareto integration departed from the summed gradient: an epoch whose mean ``k_mm_<m>`` is not
        1/2 for some encoder. Without a conflict (cos > 0) k0 is the literal 0.5 and the new gradient is g_sum (the
        uniform baseline with encoder gradients x gamma); a min-norm k0 of exactly 0.5 gives g_sum too. The
        ``bb_degenerate`` variant never departs (cos = 1). None for a history without ``k_mm_`` keys."""
        weights = logged_values(history, "train", "k_mm_")
        return any(v != 0.5 for v in weights) if weights else None

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        self.model = FusionModel(task, ctx.model_hp, hp.head).to(ctx.device)
        self.optimizer = ctx.make_optimizer(self.model.parameters())

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        with self.ctx.autocast():
            _, z, z_uni = self.model(self.inputs(batch))
        y = batch["label"]
        loss_mm = F.cross_entropy(loss_precision(z), y)
        loss_uni = {m: F.cross_entropy(loss_precision(z_uni[m]), y) for m in self.modalities}
        enc = {m: [p for p in self.model.encoders[m].parameters() if p.requires_grad] for m in self.modalities}
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        flat = [p for m in self.modalities for p in enc[m]]

        last = len(self.modalities) - 1
        g_all = _grads(loss_mm, flat + head, retain=True)
        g_uni = [_grads(loss_uni[m], enc[m] + head, retain=i < last) for i, m in enumerate(self.modalities)]
        if self.ctx.data_parallel:
            # The rule is nonlinear in the per-loss gradients: cosine, min-norm and norms must see the global batch's.
            g_all, *g_uni = _mean_over_ranks(self.ctx, [g_all, *g_uni])
        head_grads, g_mm, start = g_all[len(flat):], {}, 0
        for m in self.modalities:
            g_mm[m], start = g_all[start:start + len(enc[m])], start + len(enc[m])

        logs: dict[str, torch.Tensor] = {}
        new_grads: list[torch.Tensor] = []
        for m, g in zip(self.modalities, g_uni):
            g_u = g[:len(enc[m])]
            head_grads = [a + b for a, b in zip(head_grads, g[len(enc[m]):])]
            g_sum = [a + b for a, b in zip(g_mm[m], g_u)]
            pair = (g_sum, g_sum) if self.hp.capture == "accumulated" else (g_mm[m], g_u)
            k0, k1, cos = pareto_weights(*pair)
            new_grads += mmpareto_encoder_grads(*pair, g_sum, k0, k1, self.hp.gamma)
            logs[f"cos_{m}"], logs[f"k_mm_{m}"] = cos.detach(), k0.detach()

        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(flat + head, new_grads + head_grads):
            p.grad = g
        self.ctx.sync_gradients(flat + head, how="equal")
        self.optimizer.step()
        total = loss_mm + sum(loss_uni.values())
        return read_logs({"loss": total, "loss_fused": loss_mm, **{f"loss_{m}": v for m, v in loss_uni.items()},
                          **logs})

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        with self.ctx.autocast():
            _, z, z_uni = self.model(self.inputs(batch))
        return Prediction(loss_precision(z), {m: loss_precision(v) for m, v in z_uni.items()})
