"""MIDAS: misaligned samples labelled by unimodal confidence, with weak-modality and hard-sample weighting.

Paper: Seong-Hyeon Hwang, Soyoung Choi, Steven Euijong Whang, "MIDAS: Misalignment-based Data Augmentation Strategy
for Imbalanced Multimodal Learning", NeurIPS 2025, arXiv 2509.25831 (§3, Algorithm 1 in App. A.1, settings in
App. A.3). Official code: an official README (in the search index without its repository name) documents a
``train.py --dataset {cremad,food101,ucf101,kinetics}`` release, but the repository itself could not be located, so
this is implemented from the paper alone. The copy of the paper
read here rendered Eqs. 2-11 as images; the forms below follow the text around them (quoted section by section), and
two details come from the text only as prose: see "Unverified" below.

Model: encoders, a concat fusion classifier g_f and one linear classifier g_m per modality ("We combine the features
from different modalities by concatenation", App. A.3; ``SeparateHeads``). Training (Algorithm 1):

* Warm-up, epochs < ``warmup_epochs``: L_uni = sum_m CE(g_m(f_m), y) only (encoders and unimodal classifiers).
* Then, per batch: L_align = CE(g_f(f), y) and L_uni as above on the aligned batch; a random permutation j = pi(i)
  of the batch gives, at the feature level (App. A.3), the misaligned samples (f^1_i, f^2_j) and (f^1_j, f^2_i)
  ("Symmetrically, we also generate and utilize", §3.2), kept only where y_i != y_j.
  - Label (§3.3): with q_m = softmax(g_m(f_m))[label of modality m's source] (no_grad), c_m = q_m / (q_1 + q_2) and
    y~ = c_1 onehot(label_1) + c_2 onehot(label_2).
  - Weak-modality weight (§3.4): L = -sum_m alpha_m c_m log softmax(g_f(f~))[label_m], alpha = (1, 1) at first.
  - Hard-sample weight (§3.5): s = cos(f^r_i, f^r_j) between the replaced modality r's original feature and the
    swapped-in one (no_grad); the loss is multiplied by 1 + (s + 1) / 2, which rises from 1 to 2 with s.
  - L_total = L_align + L_uni + lambda * L_mis, with L_mis the mean over the kept misaligned samples (0 if none).
  - After the step (Algorithm 1, lines 18-20): m^ = argmin_m mean(c_m) over the kept samples; delta = mean(c_m^) -
    mean(p~[label_m^] / (p~[label_1] + p~[label_2])), the fused model's normalised confidence for m^'s class; then
    alpha_m^ <- max(1, alpha_m^ + eta delta) and alpha_m = 1 for the other modality (Eq. 7).
  - alpha restarts at (1, 1) at the start of every post-warm-up epoch (Algorithm 1, line 9); ``alpha_reset: never``
    keeps it across epochs instead.

Prediction: fused logits g_f(f); per-modality outputs are the unimodal classifiers' logits.

Unverified (equation images not legible, no official code): the map 1 + (s + 1) / 2 from the cosine to the loss weight
and the alpha-weighted soft-label CE above are taken from a third-party rendering of Eq. 10 in a paper summary; the
paper's text states only that s is in [-1, 1], that "the harder the misaligned sample, the higher its loss weight" and
that alpha amplifies the weak modality's influence in the misaligned loss. The update signal is the plain batch-mean
difference, as the text describes Eq. 6 ("computed as the batch-averaged difference between the target label and this
normalized predicted confidence"); the same third-party rendering shows its sign instead, available as
``update_signal: sign``. Choices the paper leaves open: the two misaligned samples of each pair are averaged with all
others into one L_mis; pairs with equal labels are dropped rather than redrawn; ``warmup_epochs`` (E_w is not given in
the text) defaults to 5 [project].

Two modalities only: the paper's M > 2 scheme (App. A.2: permutations of M source samples) is not implemented.

Cost: one encoder pass per step; 2B extra rows through the linear fusion classifier and O(B d) cosines. Randomness:
the permutation is drawn from the global torch generator of the batch's device, which the runner seeds and
checkpoints. Data-parallel: pairs are drawn within each rank's slice (so the augmented batch differs from a single
process's); the alpha statistics are summed over ranks, so alpha stays equal on every rank.

Paper recipe (App. A.3): SGD momentum 0.9, weight decay 1e-4, batch 64, lr 1e-3 (1e-2 for UCF-101), 70 epochs (30 for
Food-101), StepLR step 50 (15 for Food-101); set through a config file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from baselines.base import (
    FusionModel,
    Loaders,
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


def misaligned_rows(h1: torch.Tensor, h2: torch.Tensor, y: torch.Tensor, perm: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 2B misaligned feature pairs (f^1_i, f^2_pi(i)) then (f^1_pi(i), f^2_i).

    Returns:
        (f1, f2, labels, keep): the rows' features (2B, d_1) and (2B, d_2), their source labels (2B, 2) as
        (modality 1's, modality 2's), and whether the two labels differ (2B,).
    """
    f1 = torch.cat([h1, h1[perm]])
    f2 = torch.cat([h2[perm], h2])
    labels = torch.stack([torch.cat([y, y[perm]]), torch.cat([y[perm], y])], dim=1)
    return f1, f2, labels, labels[:, 0] != labels[:, 1]


def confidence_labels(p1: torch.Tensor, p2: torch.Tensor, labels: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """c = (q_1, q_2) / (q_1 + q_2) per misaligned row, q_m = unimodal probability of modality m's source label.

    Args:
        p1, p2: the aligned batch's unimodal probabilities (B, K).
        labels, perm: as for ``misaligned_rows``.
    """
    p1_rows, p2_rows = torch.cat([p1, p1[perm]]), torch.cat([p2[perm], p2])
    q = torch.stack([p1_rows.gather(1, labels[:, :1]).squeeze(1), p2_rows.gather(1, labels[:, 1:]).squeeze(1)], 1)
    return q / q.sum(dim=1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)


def hard_sample_weights(h1: torch.Tensor, h2: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """1 + (s + 1) / 2 per row, s = cos(replaced modality's original feature, the swapped-in one)."""
    s = torch.cat([F.cosine_similarity(h2, h2[perm], dim=1), F.cosine_similarity(h1, h1[perm], dim=1)])
    return 1 + (s + 1) / 2


def misaligned_loss(z_mis: torch.Tensor, labels: torch.Tensor, conf: torch.Tensor, alpha: torch.Tensor,
                    weight: torch.Tensor) -> torch.Tensor:
    """Per row: weight * -sum_m alpha_m c_m log softmax(z_mis)[label_m], shape (rows,)."""
    log_p = torch.log_softmax(loss_precision(z_mis), dim=1).gather(1, labels)
    return -weight * (alpha * conf * log_p).sum(dim=1)


def normalised_fused_confidence(z_mis: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """p~[label_m] / (p~[label_1] + p~[label_2]) per row and modality, shape (rows, 2)."""
    p = torch.softmax(loss_precision(z_mis.detach()), dim=1).gather(1, labels)
    return p / p.sum(dim=1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)


def weak_modality_update(alpha: torch.Tensor, mean_conf: torch.Tensor, mean_fused: torch.Tensor, eta: float,
                         signal: str = "difference") -> torch.Tensor:
    """Eq. 5-7: raise the weight of the least confident modality by eta * delta (floored at 1); the other is 1.

    ``signal``: delta = mean_conf - mean_fused of that modality (``difference``) or its sign (``sign``).
    """
    weak = int(torch.argmin(mean_conf))
    delta = mean_conf[weak] - mean_fused[weak]
    if signal == "sign":
        delta = torch.sign(delta)
    out = torch.ones_like(alpha)
    out[weak] = torch.clamp(alpha[weak] + eta * delta, min=1.0)
    return out


@register
class MIDAS(Method):
    """Concat fusion + unimodal classifiers; misaligned feature pairs with confidence-based soft labels."""

    name = "midas"
    title = "MIDAS"
    PAPER = ('Seong-Hyeon Hwang, Soyoung Choi, Steven Euijong Whang, "MIDAS: Misalignment-based Data Augmentation '
             'Strategy for Imbalanced Multimodal Learning", NeurIPS 2025, arXiv 2509.25831')
    CODE = "paper only (§3, Algorithm 1): the official code could not be found"
    MODALITIES = (2,)
    DATA_PARALLEL = "approximate"  # misaligned pairs are drawn within each rank's slice
    HPARAMS = (
        HParam("lam", 1.0, "Weight lambda of L_mis: App. A.3 '5 for the Kinetics-Sounds dataset, and 1 for others' "
                           "(Table 6 sweeps 0.5-20).", per_dataset={"kinetics_sounds": 5.0}),
        HParam("eta", 0.05, "Step size of the weak-modality weight update: App. A.3 'eta of 5e-2 for all datasets'."),
        HParam("warmup_epochs", 5, "Warm-up epochs: the first warmup_epochs epochs train only the unimodal losses. "
                                   "Algorithm 1 warms up while epoch < E_w over epochs counted from 1, i.e. E_w - 1 "
                                   "epochs, so this is E_w - 1. The paper gives no value; 5 is this project's "
                                   "choice.", low=0),
        HParam("weak_modality", True, "Weak-modality weighting (§3.4); false = alpha fixed at 1 (Table 2 'WM')."),
        HParam("hard_sample", True, "Hard-sample weighting (§3.5); false = weight 1 (Table 2 'HS')."),
        HParam("update_signal", "difference", "Weak-modality update signal: 'difference' = batch-mean difference "
                                              "(§3.4 text); 'sign' = its sign (a third-party rendering of Eq. 6).",
               choices=("difference", "sign")),
        HParam("alpha_reset", "epoch", "'epoch' = alpha restarts at 1 every post-warm-up epoch (Algorithm 1, line 9); "
                                       "'never' = alpha carries across epochs.", choices=("epoch", "never")),
    )

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """MIDAS trained on misaligned samples: train ``misaligned_kept`` above 0 in some epoch (the share of
        misaligned rows with two different labels, which alone enter L_mis; warm-up steps log 0.0)."""
        values = logged_values(history, "train", "misaligned_kept")
        return any(v > 0 for v in values) if values else None

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        self.model = FusionModel(task, ctx.model_hp, "separate").to(ctx.device)
        self.optimizer = ctx.make_optimizer(self.model.parameters())
        self.register_buffer("alpha", torch.ones(2, device=ctx.device))

    def on_epoch_start(self, epoch: int, loaders: Loaders) -> None:
        if self.hp.alpha_reset == "epoch":
            self.alpha.fill_(1.0)

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        y = batch["label"]
        with self.ctx.autocast():
            h, z, z_uni = self.model(self.inputs(batch))
        loss_uni = {m: F.cross_entropy(loss_precision(v), y) for m, v in z_uni.items()}
        if step.epoch < self.hp.warmup_epochs:
            loss = sum(loss_uni.values())
            self._step(loss)
            return read_logs({"loss": loss, **{f"loss_{m}": v for m, v in loss_uni.items()}, "misaligned_kept": 0.0})

        first, second = self.modalities
        perm = torch.randperm(y.shape[0], device=y.device)
        f1, f2, labels, keep = misaligned_rows(h[first], h[second], y, perm)
        with torch.no_grad():
            probs = [torch.softmax(loss_precision(z_uni[m].detach()), dim=1) for m in self.modalities]
            conf = confidence_labels(*probs, labels, perm)
            weight = hard_sample_weights(loss_precision(h[first].detach()), loss_precision(h[second].detach()), perm)
        if not self.hp.hard_sample:
            weight = torch.ones_like(weight)
        with self.ctx.autocast():
            z_mis = self.model.head.fused(torch.cat([f1, f2], dim=1))
        per_row = misaligned_loss(z_mis, labels, conf, self.alpha.clone(), weight)
        kept = keep.to(per_row.dtype)
        loss_mis = (per_row * kept).sum() / kept.sum().clamp_min(1.0)
        loss_align = F.cross_entropy(loss_precision(z), y)
        loss = loss_align + sum(loss_uni.values()) + self.hp.lam * loss_mis
        self._step(loss)

        if self.hp.weak_modality:
            fused_conf = normalised_fused_confidence(z_mis, labels)
            sums = torch.cat([(conf * kept[:, None]).sum(0), (fused_conf * kept[:, None]).sum(0), kept.sum()[None]])
            sums = self.ctx.all_reduce_sum(sums)
            if sums[-1] > 0:
                self.alpha.copy_(weak_modality_update(self.alpha, sums[:2] / sums[-1], sums[2:4] / sums[-1],
                                                      self.hp.eta, self.hp.update_signal))
        return read_logs({"loss": loss, "loss_align": loss_align, "loss_mis": loss_mis, "misaligned_kept": kept.mean(),
                          **{f"loss_{m}": v for m, v in loss_uni.items()},
                          **{f"alpha_{m}": a for m, a in zip(self.modalities, self.alpha)}})

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        with self.ctx.autocast():
            _, z, z_uni = self.model(self.inputs(batch))
        return Prediction(loss_precision(z), {m: loss_precision(v) for m, v in z_uni.items()})
