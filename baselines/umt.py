"""UMT: uni-modal teachers distilling features into joint training, as in BalanceBenchmark
(docs/methods/balancebenchmark.md#umt).

Paper: Chenzhuang Du, Jiaye Teng, Tingle Li, Yichen Liu, Tianyuan Yuan, Yue Wang, Yang Yuan, Hang Zhao, "On
Uni-Modal Feature Learning in Supervised Multi-Modal Learning", ICML 2023 (arXiv 2305.01233; OpenReview HNbwCYFOZM).
Followed: BalanceBenchmark (GitHub GeWu-Lab/BalanceBenchmark, commit 4909c17,
``balancemm/trainer/UMT_trainer.py``, ``UMTTrainer.training_step``); the authors' own code was not reviewed.

1. Train one unimodal teacher per modality (encoder + Linear head, CE), for ``umt.teacher_epochs`` epochs over the
   training rows (0 = the run's own epoch count, as BalanceBenchmark trains its unimodal runs with the same recipe),
   following the run's optimizer and lr milestones. This happens in ``on_epoch_start(0)``.
2. Joint training of the concat model with L = CE(z, y) + s sum_m MSE(h_m^teacher, h_m), teachers frozen (no_grad);
   MSE is the element mean over (B, d). s = 10 (BalanceBenchmark's ``scaling``; at commit 4909c17 its trainer read
   ``alpha`` = 1 instead, later fixed to read ``scaling``).

The teachers are submodules, so they and a ``teachers_ready`` flag are in every checkpoint: a resumed run does not
retrain them. Their optimizers are created up front (one per modality, checkpointed like any other) and are idle
after step 1.

Cost: M extra trainings of ``teacher_epochs`` epochs before epoch 0 (with ``teacher_select`` val/test, one pass over
that split per teacher epoch), and M teacher forwards per step.

``umt.teacher_mode``: ``eval`` (default; frozen teachers use their running BN statistics) or ``train`` (preset
``bb_compat``: BalanceBenchmark never switches its loaded teachers to eval mode, so their BN layers use batch
statistics under no_grad). ``umt.teacher_select``: ``final`` (default) distils the teachers' last weights; ``val`` or
``test`` (preset ``bb_compat``: ``test``) those of each teacher's epoch with the best accuracy on that split, as BB
loads its unimodal runs' best-"validation" checkpoints (its test split on CREMA-D and KS).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import FusionMethod, Loaders, StepInfo, TrainContext, loss_precision
from baselines.networks import build_encoder, init_model
from baselines.registry import register
from core.data import Batch, BatchLoader, ModalitySpec, TaskSpec, seed_for
from core.hparams import HParam, HParams


def umt_loss(z: torch.Tensor, labels: torch.Tensor, h: dict[str, torch.Tensor], h_teacher: dict[str, torch.Tensor],
             scale: float) -> torch.Tensor:
    """CE(z, y) + s sum_m MSE(h_teacher_m, h_m) (element-mean MSE)."""
    return F.cross_entropy(z, labels) + scale * sum(F.mse_loss(h[m], h_teacher[m]) for m in h_teacher)


@torch.no_grad()
def teacher_accuracy(teacher: "Teacher", loader: BatchLoader, modality: str, ctx: TrainContext) -> float:
    """The teacher's accuracy over ``loader`` in eval mode; it is left in train mode, as it trains on."""
    teacher.eval()
    correct = total = 0
    for batch in loader:
        with ctx.autocast():
            _, logits = teacher(batch[modality])
        correct += int((logits.argmax(1) == batch["label"]).sum())
        total += len(batch["label"])
    teacher.train()
    return correct / max(total, 1)


class Teacher(nn.Module):
    """A unimodal model: encoder + Linear(d -> K)."""

    def __init__(self, spec: ModalitySpec, model_hp: HParams, num_classes: int) -> None:
        super().__init__()
        self.encoder = build_encoder(spec, model_hp)
        self.head = nn.Linear(self.encoder.out_dim, num_classes)
        init_model(self, model_hp)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return h, self.head(h)


@register
class UMT(FusionMethod):
    name = "umt"
    title = "UMT (BB)"
    DATA_PARALLEL = "exact"  # teachers trained on every rank over the whole split in global batches
    PAPER = ('Chenzhuang Du et al., "On Uni-Modal Feature Learning in Supervised Multi-Modal Learning", ICML 2023, '
             'arXiv 2305.01233')
    CODE = ('BalanceBenchmark (GitHub GeWu-Lab/BalanceBenchmark @4909c17), balancemm/trainer/UMT_trainer.py, '
            'UMTTrainer.training_step')
    HEAD = "concat"
    VARIANTS = {"bb_compat": {"teacher_mode": "train", "teacher_select": "test"}}
    HPARAMS = (
        HParam("scale", 10.0, "s on the feature-distillation MSE (BB trainer_config UMT scaling 10, read from "
                              "c7d2ae5 on; 4909c17's trainer weights it by alpha = 1; sweep 0.1, 1, 10, 50).", low=0),
        HParam("teacher_epochs", 0, "Epochs per unimodal teacher; 0 = train.epochs (BB trains its unimodal runs "
                                    "with the main recipe).", low=0),
        HParam("teacher_mode", "eval", "Mode of the frozen teachers during distillation: 'eval' (frozen, running BN "
                                       "statistics) or 'train' (BB leaves them in train mode).",
               choices=("eval", "train")),
        HParam("teacher_select", "final", "Teacher weights distilled: 'final' = after the teacher's last epoch; "
                                          "'val'/'test' = its epoch with the best accuracy on that split, the first "
                                          "of equals (BB loads its unimodal run's checkpoint, saved at each new best "
                                          "'validation' accuracy, which is the test split on CREMA-D and KS).",
               choices=("final", "val", "test")),
    )
    HELD_OUT_KEY = "teacher_select"

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        self.teachers = nn.ModuleDict({m.name: Teacher(m, ctx.model_hp, task.num_classes) for m in task.modalities})
        self.teachers.to(ctx.device)
        self.teacher_optimizers = {m: ctx.make_optimizer(t.parameters()) for m, t in self.teachers.items()}
        self.register_buffer("teachers_ready", torch.tensor(False, device=ctx.device))
        self._teacher_diag: dict[str, float] = {}

    def train_teachers(self, loaders: Loaders) -> dict[str, float]:
        """Step 1: train every teacher alone with CE, keeping its final or best held-out weights
        (``teacher_select``); returns each teacher's last-epoch mean loss (and the epoch kept)."""
        hp = self.ctx.train_hp
        epochs = self.hp.teacher_epochs or self.ctx.epochs
        loader = loaders.train
        held_out = self.held_out_loader(loaders) if self.held_out_split(self.hp) else None
        out = {}
        for m, teacher in self.teachers.items():
            best = (-1.0, -1, None)  # accuracy, epoch, weights
            opt = self.teacher_optimizers[m]
            own = loader.derived(train=True, seed=seed_for(loader.seed, "umt_teacher", m))
            steps = min(hp.max_steps_per_epoch, len(own)) if hp.max_steps_per_epoch else len(own)
            teacher.train()
            for epoch in range(epochs):
                own.set_epoch(epoch)
                factor = hp.lr_gamma ** sum(epoch >= mil for mil in hp.lr_milestones)
                for group in opt.param_groups:
                    group["lr"] = group["initial_lr"] * factor
                total = 0.0
                for i, batch in enumerate(own):
                    if i >= steps:
                        break
                    with self.ctx.autocast():
                        _, logits = teacher(batch[m])
                        loss = F.cross_entropy(loss_precision(logits), batch["label"])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += loss.item()
                out[f"umt_teacher_loss_{m}"] = total / max(steps, 1)
                if held_out is not None:
                    acc = teacher_accuracy(teacher, held_out, m, self.ctx)
                    if acc > best[0]:
                        best = (acc, epoch, copy.deepcopy(teacher.state_dict()))
            if held_out is not None:
                teacher.load_state_dict(best[2])
                out[f"umt_teacher_epoch_{m}"] = float(best[1])
        self.ctx.set_lr_factor(self.ctx.lr_factor)
        self.teachers_ready.fill_(True)
        return out

    def on_epoch_start(self, epoch: int, loaders: Loaders) -> None:
        if not bool(self.teachers_ready):
            self._teacher_diag = self.train_teachers(loaders)

    def on_epoch_end(self, epoch: int, loaders: Loaders) -> dict[str, float]:
        diag, self._teacher_diag = self._teacher_diag, {}
        return diag

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        self.teachers.train(self.hp.teacher_mode == "train")
        with torch.no_grad(), self.ctx.autocast():
            h_teacher = {m: loss_precision(t(batch[m])[0]) for m, t in self.teachers.items()}
        with self.ctx.autocast():
            h, z, _ = self.model(self.inputs(batch))
        h = {m: loss_precision(v) for m, v in h.items()}
        loss = umt_loss(loss_precision(z), batch["label"], h, h_teacher, self.hp.scale)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}
