"""AMCo: adaptive mask co-optimisation, as in BalanceBenchmark (docs/methods/balancebenchmark.md#amco).

Paper: listed in BalanceBenchmark as AMCo (Zhou et al., 2023): Ying Zhou, Xuefeng Liang, ShiQuan Zheng, Huijun Xuan,
Takatsune Kumada, "Adaptive Mask Co-Optimization for Modal Dependence in Multimodal Learning", ICASSP 2023
(doi 10.1109/ICASSP49357.2023.10096641; the citation checked against the publisher's record, whose abstract names
the module AMCo; the paper itself not read).
Followed: BalanceBenchmark (GitHub GeWu-Lab/BalanceBenchmark, commit 4909c17, ``balancemm/trainer/AMCo_trainer.py``,
``AMCoTrainer.train_loop`` / ``training_step``, and ``balancemm/models/avclassify_model.py``,
``BaseClassifier_AMCoModel``).

Concat head with split-head logits z_m, plus ``linear_star``: Linear(K -> K). Per batch (step b of epoch e):

- mask ratio p = sin(pi/2 * min(eps, l)/eps) with l = b * e / 10 (BB adds e/10 to l after every batch and resets it
  each epoch, so p = 0 throughout epoch 0 and reaches 1 within a few batches later); floor(p K) random class
  positions of one K-vector mask are zeroed;
- z_m <- z_m * mask for every modality flagged "dependent"; fused z = linear_star(sum_m z_m);
- L = CE(z) + sum_m CE(z_m) (the masked z_m);
- after the step, modality m is flagged dependent iff the batch-mean mass of its block in softmax([z_1; ...; z_M])
  (masked logits) exceeds sigma; flags start False every epoch.

Evaluation: z = linear_star(sum_m z_m) without masks; per-modality outputs are the split-head logits.

``amco.linear_star``: the default trains and evaluates z = linear_star(sum_m mask_m z_m), as BB's model defines it.
In BalanceBenchmark's code the layer's output is computed and then overwritten by ``Unimodality_Calculate`` both in
training and in evaluation, so BB effectively trains and evaluates z = sum_m mask_m z_m with an unused
``linear_star``: preset ``bb_compat`` (``linear_star: false``). BB's later model (commit 4c1482f) trains on
``linear_star``'s output, i.e. the default, which ``augbench parity amco`` checks step by step; its evaluation,
though, still scores the plain sum: ``validation_step`` runs the forward and then ``unimodality_calculate``, which
overwrites the output with sum_m z_m. The default evaluates the model it trained; preset ``bb_4c1482f``
(``eval_linear_star: false``) scores as that commit does. Cost: none beyond joint training (one K x K layer).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

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
from baselines.networks import init_model
from baselines.registry import register
from core.data import Batch, TaskSpec, seed_for
from core.hparams import HParam, HParams


def mask_ratio(epoch: int, step: int, eps: float) -> float:
    """p_t = sin(pi/2 * min(eps, l)/eps) with l = step * epoch / 10."""
    level = step * epoch / 10.0
    return math.sin(math.pi / 2.0 * min(eps, level) / eps)


def masked_count(num_classes: int, ratio: float) -> int:
    """floor(ratio * K): how many class positions ``class_mask`` zeroes."""
    return int(ratio * num_classes)


def class_mask(num_classes: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """A K-vector of ones with floor(ratio * K) randomly chosen positions zeroed."""
    mask = torch.ones(num_classes)
    mask[torch.randperm(num_classes, generator=generator)[:masked_count(num_classes, ratio)]] = 0.0
    return mask


def block_mass(z_uni: list[torch.Tensor]) -> torch.Tensor:
    """Per modality: batch-mean mass of its block in softmax over the concatenated logits."""
    p = torch.softmax(torch.cat(z_uni, dim=1), dim=1)
    return p.reshape(len(p), len(z_uni), -1).sum(2).mean(0)


def dependence_flags(z_uni: list[torch.Tensor], sigma: float,
                     reduce: Callable[[torch.Tensor], torch.Tensor] = lambda mass: mass) -> torch.Tensor:
    """Per modality: whether its block's batch-mean mass (after ``reduce``: the mean over data-parallel ranks)
    exceeds sigma."""
    return reduce(block_mass(z_uni)) > sigma


@register
class AMCo(Method):
    name = "amco"
    title = "AMCo (BB)"
    DATA_PARALLEL = "exact"  # dependence flags from the all-reduced block mass; masks seeded per step
    PAPER = ('Ying Zhou et al., "Adaptive Mask Co-Optimization for Modal Dependence in Multimodal Learning", '
             'ICASSP 2023, doi 10.1109/ICASSP49357.2023.10096641')
    CODE = ('BalanceBenchmark (GitHub GeWu-Lab/BalanceBenchmark @4909c17), balancemm/trainer/AMCo_trainer.py '
            '(AMCoTrainer), balancemm/models/avclassify_model.py (BaseClassifier_AMCoModel)')
    VARIANTS = {"bb_compat": {"linear_star": False}, "bb_4c1482f": {"eval_linear_star": False}}
    HPARAMS = (
        HParam("sigma", 0.5, "Dependence threshold on a modality's softmax block mass (BB trainer_config sigma).",
               low=0.0, high=1.0),
        HParam("eps", 0.3, "Mask-ratio ramp length in l units (BB trainer_config eps).", low=0.0, open_low=True),
        HParam("linear_star", True, "Apply linear_star to the summed logits (docs/methods/balancebenchmark.md#amco); "
                                    "BB discards its output (bb_compat: false)."),
        HParam("eval_linear_star", True, "With linear_star: evaluate through it too, as trained; false = BB commit "
                                         "4c1482f, which trains through it but scores the plain sum (bb_4c1482f)."),
    )

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """Whether AMCo masked some logits: an epoch whose mean ``masked`` (per step 1.0 when a dependent modality's
        logits were multiplied by a mask with a zero, else 0.0) is above 0. The mask ratio is 0 throughout epoch 0,
        and no modality is dependent before an epoch's first step. None for a history without ``masked``."""
        shares = logged_values(history, "train", "masked")
        return any(v > 0.0 for v in shares) if shares else None

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        self.model = FusionModel(task, ctx.model_hp, "concat")
        self.linear_star = nn.Linear(task.num_classes, task.num_classes)
        init_model(self.linear_star, ctx.model_hp)
        self.to(ctx.device)
        self.optimizer = ctx.make_optimizer(self.parameters())
        self.register_buffer("dependent", torch.zeros(len(self.modalities), dtype=torch.bool, device=ctx.device))

    def fuse(self, z_uni: list[torch.Tensor], evaluating: bool = False) -> torch.Tensor:
        z = sum(z_uni)
        through = self.hp.linear_star and (self.hp.eval_linear_star or not evaluating)
        return self.linear_star(z) if through else z

    def on_epoch_start(self, epoch: int, loaders: Loaders) -> None:
        self.dependent.zero_()

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        y = batch["label"]
        ratio = mask_ratio(step.epoch, step.step, self.hp.eps)
        gen = torch.Generator().manual_seed(seed_for(self.ctx.train_hp.seed, step.epoch, step.step, "amco_mask"))
        mask = class_mask(self.task.num_classes, ratio, gen).to(self.ctx.device)
        with self.ctx.autocast():
            _, _, z_split = self.model(self.inputs(batch))
        dependent = [bool(self.dependent[i]) for i in range(len(self.modalities))]
        z_uni = [loss_precision(z_split[m]) * (mask if dependent[i] else 1.0) for i, m in enumerate(self.modalities)]
        loss = F.cross_entropy(self.fuse(z_uni), y) + sum(F.cross_entropy(z, y) for z in z_uni)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            # The global batch's mean over equal rank slices, so every rank masks the same modality next step.
            self.dependent.copy_(dependence_flags([z.detach() for z in z_uni], self.hp.sigma,
                                                  self.ctx.all_reduce_mean))
        masked = float(any(dependent) and masked_count(self.task.num_classes, ratio) > 0)
        return read_logs({"loss": loss, "mask_ratio": ratio,
                          **{f"dependent_{m}": self.dependent[i] for i, m in enumerate(self.modalities)},
                          "masked": masked})

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        with self.ctx.autocast():
            _, _, z_split = self.model(self.inputs(batch))
        z_uni = {m: loss_precision(z_split[m]) for m in self.modalities}
        return Prediction(self.fuse(list(z_uni.values()), evaluating=True), z_uni)
