"""CML (calibrating multimodal learning), as implemented in BalanceBenchmark (docs/methods/balancebenchmark.md#cml).

Paper: Huan Ma, Qingyang Zhang, Changqing Zhang, Bingzhe Wu, Huazhu Fu, Joey Tianyi Zhou, Qinghua Hu, "Calibrating
Multimodal Learning", ICML 2023, arXiv 2306.01265. Principle: the confidence should not increase when a modality is
removed. Implementation followed: BalanceBenchmark (GitHub GeWu-Lab/BalanceBenchmark, ``balancemm/trainer/
CML_trainer.py``, ``CMLTrainer.training_step`` and ``conf_loss``, commit 4909c17).

- Once per epoch the modality order is shuffled (here a permutation seeded by (run seed, epoch), so a resumed run
  draws the same order; BB uses Python's global ``random.shuffle``).
- Per step, with the concat head's split logits z_m = W_m h_m + b/M (so sum_m z_m = z) and z_s = z: for each of the
  first M-1 modalities in that order, z_p = z_s - z_removed + b/M; loss += CE(z_p);
  penalty += max(0, sum_batch[conf(z_p) - conf(z_s)]) with conf = max softmax (not detached, as in BB);
  z_s <- z_p.
- L = (CE(z) + sum CE(z_p)) / M + lambda * penalty, lambda = 0.1.

BB's removal pops the shuffled list from its end; which end is popped does not matter for a uniformly random order.
BB also gates CML by modulation_starts=0 / modulation_ends=80, which covers its 70-epoch runs; here CML is always on.

Cost: as joint training (one forward, one backward per step); the chain re-uses the split logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from baselines.base import FusionMethod, Loaders, StepInfo, TrainContext, loss_precision, read_logs
from baselines.registry import register
from core.data import Batch, TaskSpec, seed_for
from core.hparams import HParam, HParams


def cml_loss(z: torch.Tensor, z_uni: Mapping[str, torch.Tensor], bias: torch.Tensor, order: Sequence[str],
             labels: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The CML objective on split-head logits.

    Args:
        z: fused logits (B, K).
        z_uni: split-head logits per modality (each includes b/M).
        bias: the concat head's bias b (K,).
        order: modalities in removal order; the first M-1 are removed one after another.
        labels: class indices (B,).
        lam: weight of the confidence penalty.

    Returns:
        (L, penalty) with L = (CE(z) + sum CE(z_p)) / M + lam * penalty.
    """
    num = len(z_uni)
    ce = F.cross_entropy(z, labels)
    penalty = z.new_zeros(())
    z_s = z
    for m in order[:num - 1]:
        z_p = z_s - z_uni[m] + bias / num
        ce = ce + F.cross_entropy(z_p, labels)
        gain = torch.softmax(z_p, dim=1).amax(dim=1) - torch.softmax(z_s, dim=1).amax(dim=1)
        penalty = penalty + gain.sum().clamp_min(0)
        z_s = z_p
    return ce / num + lam * penalty, penalty


@register
class CML(FusionMethod):
    """Concat head; CE on the fused output and on each modality-removed chain element, plus a confidence penalty."""

    name = "cml"
    title = "CML (BB)"
    DATA_PARALLEL = "approximate"  # the confidence penalty clamps each rank's batch sum (a sum, not a mean)
    PAPER = ('Huan Ma, Qingyang Zhang, Changqing Zhang, Bingzhe Wu, Huazhu Fu, Joey Tianyi Zhou, Qinghua Hu, '
             '"Calibrating Multimodal Learning", ICML 2023, arXiv 2306.01265')
    CODE = "BalanceBenchmark: GitHub GeWu-Lab/BalanceBenchmark, balancemm/trainer/CML_trainer.py, training_step"
    HEAD = "concat"
    HPARAMS = (
        HParam("lam", 0.1, "Weight lambda of the confidence penalty: BB configs/trainer_config.yaml CML.lam = 0.1 "
                           "(docs/methods/balancebenchmark.md#cml; BB sweeps {0.2, 0.3, 0.5, 1})."),
    )

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        self.order = self.removal_order(0)

    def removal_order(self, epoch: int) -> tuple[str, ...]:
        """The epoch's modality order, a permutation drawn from (run seed, epoch)."""
        gen = torch.Generator().manual_seed(seed_for(self.ctx.train_hp.seed, epoch, "cml_order"))
        return tuple(self.modalities[i] for i in torch.randperm(len(self.modalities), generator=gen).tolist())

    def on_epoch_start(self, epoch: int, loaders: Loaders) -> None:
        self.order = self.removal_order(epoch)

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        with self.ctx.autocast():
            _, z, z_uni = self.model(self.inputs(batch))
        z_uni = {m: loss_precision(v) for m, v in z_uni.items()}
        loss, penalty = cml_loss(loss_precision(z), z_uni, self.model.head.fc.bias, self.order, batch["label"],
                                 self.hp.lam)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return read_logs({"loss": loss, "penalty": penalty})
