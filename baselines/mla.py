"""MLA: multimodal learning with alternating unimodal adaptation (docs/methods/mla.md).

Paper: Xiaohui Zhang, Jaehong Yoon, Mohit Bansal, Huaxiu Yao, "Multimodal Representation Learning by Alternating
Unimodal Adaptation", CVPR 2024, arXiv 2311.10707. Official code: GitHub
Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation, ``main.py`` (``train_epoch`` with ``--gs_flag``,
``valid``, ``calculate_entropy``, ``calculate_gating_weights``) and ``utils/utils.py`` (``GSPlugin.before_update``).

Model: the shared encoders plus ONE shared Linear head W_s (d -> K) applied to each modality's features (H-shared), so
every encoder must have the same feature width. Per batch: one forward through all encoders, then one turn per
modality in the dataset's order: CE(W_s h_m).backward(); project the head-weight gradient; step; zero_grad. All
gradients are cleared after the last turn. The encoders never see a fused loss.

Gradient projection (orthogonal-weight-modification style, ``GSPlugin.before_update``): P (d x d) starts as I and is
method state. At every turn except the very first one of training: r = batch mean of the features fed to the head
(1 x d), k = P r^T, P <- P - k k^T / (a + r k) with a = 0.1^(1 + batch_idx / len(loader)), P <- P / ||P||_F, then
grad(W_s) <- grad(W_s) P^T; the bias is not projected. The Frobenius normalisation also shrinks the head gradient by
roughly 1/sqrt(d) (docs/methods/mla.md).

Inference (P14): ``fusion=entropy`` gates the per-modality logits with w_m = exp(H_max - H_m) / sum_j exp(H_max - H_j)
(``calculate_gating_weights``); ``fusion=fixed`` uses z = alpha z_1 + (1 - alpha) z_2 (3 modalities: 0.35/0.25/0.4).
``entropy_gate=per_sample`` (default, the project's reading of the paper's per-instance uncertainty) takes H over the
classes of each sample; ``per_batch`` reproduces ``calculate_entropy``, which applies softmax over dimension 0 (the
batch) and sums over everything, giving one scalar gate per modality and batch (so predictions depend on the
evaluation batch). Entropies use log_softmax instead of log(softmax), equal up to rounding and free of 0 * log 0.

Official code versus paper (``variant=official_compat``):
- the projection looks up a parameter named ``module.weight`` inside a bare Linear whose parameters are ``weight`` and
  ``bias``, so it never runs: released MLA is plain alternating unimodal training (``projection: false``);
- PyTorch 1.8.1 (requirements.txt) zero-fills gradients in ``zero_grad``, so the step of a later turn also applies
  momentum and weight decay to the earlier modalities' encoders (``zero_grad_set_to_none: false``;
  docs/methods/README.md#multi-step);
- the entropy gate is per batch.
The official and BB code write the denominator as ``torch.mm(k, r)``, an outer product divided elementwise; the
paper's OWM rule (and this implementation) uses the scalar r k. BalanceBenchmark (BB, GitHub GeWu-Lab/BalanceBenchmark,
``balancemm/trainer/MLA_trainer.py``) renames the parameter so its projection runs, but adds the projected gradient
(grad += grad P^T) instead of replacing it; ``projection_form=bb`` reproduces that form, outer-product denominator
included. It is not a default (docs/methods/mla.md).

Cost: M backward passes and M optimizer steps per batch (one forward); a d x d matrix update per turn.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import Method, Prediction, StepInfo, TrainContext, loss_precision, read_logs
from baselines.networks import build_encoders, init_model
from baselines.registry import register
from core.data import Batch, TaskSpec
from core.hparams import HParam, HParams


def owm_update(P: torch.Tensor, r: torch.Tensor, a: float, form: str = "paper") -> torch.Tensor:
    """One projector update P <- (P - k k^T / (a + r k)) / ||.||_F with k = P r^T.

    Args:
        P: the (d, d) projector.
        r: the (1, d) batch-mean feature of this turn.
        a: the regulariser 0.1^(1 + batch_idx / len(loader)).
        form: ``paper`` = scalar denominator a + r k; ``bb`` = the official/BB ``torch.mm(k, r)`` (a d x d outer
            product, divided elementwise).

    Returns:
        The new, Frobenius-normalised projector.
    """
    k = P @ r.t()
    denom = a + (r @ k if form == "paper" else k @ r)
    P = P - (k @ k.t()) / denom
    return P / torch.linalg.matrix_norm(P)


def entropy_gate(logits: Mapping[str, torch.Tensor], mode: str) -> dict[str, torch.Tensor]:
    """MLA's test-time weights w_m = softmax_m(-H_m), i.e. exp(H_max - H_m) / sum_j exp(H_max - H_j).

    Args:
        logits: {modality: (B, K) logits}.
        mode: ``per_sample`` = H_m,i over the classes of sample i, weights (B, 1); ``per_batch`` = the official
            ``calculate_entropy``: softmax over the batch dimension, entropy summed over all entries, weights of
            shape (1, 1) (one scalar per modality).

    Returns:
        {modality: weights broadcastable against (B, K)}, summing to 1 over modalities.
    """
    dim = 1 if mode == "per_sample" else 0
    ents = []
    for z in logits.values():
        logp = torch.log_softmax(loss_precision(z), dim=dim)
        h = -(logp.exp() * logp)
        ents.append(h.sum(dim=1, keepdim=True) if mode == "per_sample" else h.sum().reshape(1, 1))
    w = torch.softmax(-torch.stack(ents), dim=0)
    return {m: w[i] for i, m in enumerate(logits)}


@register
class MLA(Method):
    name = "mla"
    title = "MLA"
    DATA_PARALLEL = "approximate"  # the OWM projection P is updated from each rank's own feature means
    PAPER = ('Zhang, Yoon, Bansal, Yao, "Multimodal Representation Learning by Alternating Unimodal Adaptation", '
             'CVPR 2024, arXiv 2311.10707')
    CODE = ('GitHub Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation, main.py, train_epoch '
            '(--gs_flag); utils/utils.py, GSPlugin.before_update')
    MODALITIES = (2, 3)
    HPARAMS = (
        HParam("projection", True, "Project the shared head's weight gradient with P (paper, §3.2). The official "
                                   "code never runs it (parameter-name mismatch): false in official_compat."),
        HParam("projection_form", "paper", "paper = grad <- grad P^T with the scalar OWM denominator; bb = "
                                           "BalanceBenchmark's grad += grad P^T with the outer-product denominator.",
               choices=("paper", "bb")),
        HParam("fusion", "entropy", "Test-time fusion: entropy = uncertainty gating (paper, official --dynamic); "
                                    "fixed = alpha-weighted sum (official without --dynamic).",
               choices=("entropy", "fixed")),
        HParam("entropy_gate", "per_sample", "per_sample = entropy over classes per sample [project reading of the "
                                             "paper]; per_batch = official calculate_entropy (softmax over the batch "
                                             "dimension, one scalar per modality).",
               choices=("per_sample", "per_batch")),
        HParam("alpha", 0.55, "Fixed fusion weight of the first modality, 2 modalities: official main.py trains "
                              "through ``main(av_alpha=0.55)`` (its __main__ call), which passes 0.55 to train_epoch "
                              "and valid; the --av_alpha argument (default 0.5) is read only when evaluating a saved "
                              "checkpoint without --train."),
        HParam("alphas3", [0.35, 0.25, 0.4], "Fixed fusion weights for 3 modalities (official --a_alpha, --v_alpha, "
                                             "--t_alpha)."),
        HParam("zero_grad_set_to_none", True, "zero_grad between turns sets gradients to None (PyTorch >= 2.0). "
                                              "false = PyTorch 1.8 zero-fill of the official requirements, so later "
                                              "turns also apply momentum/weight decay to earlier encoders."),
    )
    VARIANTS = {"official_compat": {"projection": False, "entropy_gate": "per_batch",
                                    "zero_grad_set_to_none": False}}

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        self.encoders = build_encoders(task, ctx.model_hp)
        dims = {m: enc.out_dim for m, enc in self.encoders.items()}
        if len(set(dims.values())) != 1:
            raise ValueError(f"MLA's shared head needs equal feature widths, got {dims} for dataset "
                             f"{task.dataset!r}")
        d = next(iter(dims.values()))
        if len(self.modalities) == 3 and len(hp.alphas3) != 3:
            raise ValueError(f"mla.alphas3 needs 3 weights, got {hp.alphas3!r}")
        self.head = nn.Linear(d, task.num_classes)
        init_model(self, ctx.model_hp)
        self.register_buffer("P", torch.eye(d))
        self.register_buffer("turns", torch.zeros((), dtype=torch.long))
        self.to(ctx.device)
        self.optimizer = ctx.make_optimizer(self.parameters())

    @torch.no_grad()
    def project_head_grad(self, feats: torch.Tensor, a: float) -> None:
        """Update P from this turn's features and project the head-weight gradient (not at the very first turn)."""
        if not self.hp.projection or self.turns.item() == 0 or self.head.weight.grad is None:
            return
        r = loss_precision(feats.detach()).mean(0, keepdim=True)
        self.P.copy_(owm_update(self.P, r, a, self.hp.projection_form))
        g = self.head.weight.grad
        projected = g @ self.P.t()
        if self.hp.projection_form == "paper":
            g.copy_(projected)
        else:
            g.add_(projected)

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        labels = batch["label"]
        a = 0.1 ** (1 + step.step / step.steps_per_epoch)
        logs = {}
        with self.ctx.autocast():
            h = {m: self.encoders[m](batch[m]) for m in self.modalities}
        for m in self.modalities:
            with self.ctx.autocast():
                loss = F.cross_entropy(loss_precision(self.head(h[m])), labels)
            loss.backward()
            self.project_head_grad(h[m], a)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=self.hp.zero_grad_set_to_none)
            self.turns += 1
            logs[f"loss_{m}"] = loss.detach()
        # Official code deletes every gradient after the last turn (so zero-filled ones do not leak into the next).
        self.optimizer.zero_grad(set_to_none=True)
        logs = read_logs(logs)
        weights = self.fixed_weights()
        logs["loss"] = sum(weights[m] * logs[f"loss_{m}"] for m in self.modalities)
        return logs

    def fixed_weights(self) -> dict[str, float]:
        if len(self.modalities) == 2:
            return dict(zip(self.modalities, (self.hp.alpha, 1 - self.hp.alpha)))
        return dict(zip(self.modalities, self.hp.alphas3))

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        with self.ctx.autocast():
            z_uni = {m: loss_precision(self.head(self.encoders[m](batch[m]))) for m in self.modalities}
        weights = entropy_gate(z_uni, self.hp.entropy_gate) if self.hp.fusion == "entropy" else self.fixed_weights()
        fused = sum(weights[m] * z for m, z in z_uni.items())
        return Prediction(fused, z_uni)
