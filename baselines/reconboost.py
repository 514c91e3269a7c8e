"""ReconBoost: alternating boosting with modality reconcilement (docs/methods/reconboost.md).

Paper: Cong Hua, Qianqian Xu, Shilong Bao, Zhiyong Yang, Qingming Huang, "ReconBoost: Boosting Can Achieve Modality
Reconcilement", ICML 2024, arXiv 2405.09321. Official code: GitHub huacong/ReconBoost, ``train.py`` (``main``),
``models/dynamic_net.py`` (``DynamicNet``, ``Head``), ``schedule.py`` (``schedule_model``: audio, visual, audio, ...).

Model: learners f_m = encoder_m followed by ONE shared head (Linear d -> 256, ReLU, Linear 256 -> K; the official
``common_space`` head), and the ensemble F = beta * sum_m f_m with a learnable scalar beta (``boost_rate``, 1.0).
Prediction is F; per-modality outputs are f_m.

Schedule (P10), a pure function of the epoch (``stage_at``): stage t trains modality t mod M for ``modality_epochs``
epochs, then runs ``correct_epochs`` epochs of correction. Each phase starts with fresh optimizer state (the optimizers
are built once and their state is cleared, so checkpoints always hold the same optimizers).
- Modality step: the configured optimizer (``train.optimizer``; SGD with momentum 0.9 as official) over encoder_m
  and the shared head, lr ``m_lr``. With q = softmax(F_-m), F_-m = beta * sum over
  the other ensemble members (no_grad), the per-sample loss is the official
  -w1 mean_c[e_y log p_m] + w2 mean_c[e_y q log p_m] = (1/K)(-w1 + w2 q_y) log p_m(y): CE down-weighted where the
  other learners are already right. From stage 1 on, the GA term alpha * MSE(softmax f_m, softmax f_o) against the
  previous stage's learner f_o is computed; the official code detaches both sides, so it has zero gradient
  (``ga_grad: false``, default: logged only). ``ga_grad: true`` lets the gradient flow through f_m (our reading of
  the paper's intent, unverified).
- Correction step: CE(F) over every ensemble member's encoder, the shared head and beta, lr ``e_lr``.
A learner joins the ensemble when its first modality step ends (the official ``DynamicNet.add``; until then F is
zero when nothing has joined); with ``pretrain`` all learners are members from the start. While F_-m has no member the
official ensemble returns a constant c0 whose
softmax over a single column is 1, so q_y = 1; this is kept.

Pre-training (``pretrain: true``, the official ``--use_pretrain`` recipe): the official code loads unimodally
pre-trained encoders (released CREMA-D checkpoints: 56.68% audio, 51.99% visual, picked on the test set at epochs 21
and 87 of unimodal runs). Here each encoder is trained with its own temporary Linear head and CE for
``pretrain_epochs`` epochs inside ``on_epoch_start(0)``; the temporary heads are then unused (the official code
replaces an encoder's fc by the shared head only when that modality's first stage starts, so in stage 0 the visual
learner in F still uses its own classifier: ``pretrain_head_until_stage: true``). Cost: M x pretrain_epochs extra
unimodal epochs, once. BB does no pre-training (``pretrain: false``); docs/methods/reconboost.md asks for both to be
reported.

Deviations and notes: the official stage-wise lr decay (x0.1 every 30 stages on CREMA-D) maps to
``train.lr_milestones`` at multiples of 30 * (modality_epochs + correct_epochs) epochs; the official test loader drops
the last batch and keeps the best stage >= 3 on test, while the runner evaluates every sample and reports its own
protocols. Other learners run in training mode during the no_grad forward (the official ``to_train``), so their
BatchNorm statistics move; each is run once per step (the official code runs the GA partner twice). With 3 modalities
the GA partner is the learner of the previous stage. BB (``balancemm/trainer/ReconBoost_trainer.py``) alternates one
boosting and one correction epoch per modality per epoch with a single Linear head and no pre-training.

Variant ``bb``: ReconBoost as GitHub GeWu-Lab/BalanceBenchmark runs it (commit 4c1482f,
``balancemm/trainer/ReconBoost_trainer.py`` ``ReconBoostTrainer``; model ``balancemm/models/avclassify_model.py``
``BaseClassifierReconBoostModel``). One BB epoch is, for every modality m in the encoder order (fit, l.77-87),
``T_epochs`` boosting passes of m (``training_step1``) then ``T_epochs`` correction passes (``training_step2``): with
``modality_epochs = correct_epochs = T_epochs`` that is M stages of this schedule, so one runner epoch is one pass, one
BB epoch is 2 * M * T_epochs passes, and BB's StepLR(s) maps to ``train.lr_milestones`` at multiples of
s * 2 * M * T_epochs. The differences from the paper
default, each its own knob: one optimizer over every parameter for both steps, built from ``train.*`` and never reset
(``shared_optimizer``; fit passes the same optimizer to every ``train_loop``, stepped at l.245 and l.291); under BB's
torch 1.12.1 (README Installation), ``zero_grad()`` leaves zero gradients, so a learner that once had a gradient keeps
taking momentum and weight-decay steps while another modality boosts (``zero_grads_persist``); the head is the single
Linear ``SharedHead.fc_out`` (``head: linear``); every learner is in F from the first step (``ensemble_from_start``: the
model sums all other modalities, there is no ``DynamicNet.add``); beta starts at 0.01 (avclassify_model.py l.742); the
GA term, and with it the partner's second train-mode forward, starts in BB's epoch 1 (l.340, ``ga_after_first_round``);
no pre-training. Evaluation: BB validates after its epoch (after the last correction pass); the runner evaluates
after every pass.

Cost: modality step = one grad forward of f_m plus no_grad forwards of the other learners; correction = joint
training. Optimizers: M modality + 1 correction (+ M pre-training); variant bb: one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import Loaders, Method, Prediction, StepInfo, TrainContext, logged_values, loss_precision, read_logs
from baselines.networks import build_encoders, init_model
from baselines.registry import register
from core.data import Batch, BatchLoader, TaskSpec
from core.hparams import HParam, HParams, variant_param

HEAD_HIDDEN = 256  # official models/dynamic_net.py, Head.fc1


@dataclass(frozen=True)
class StagePosition:
    """Where an epoch sits in ReconBoost's schedule."""

    stage: int
    modality: int
    phase: str
    phase_epoch: int


def stage_at(epoch: int, modality_epochs: int, correct_epochs: int, num_modalities: int) -> StagePosition:
    """The stage, trained modality (index), phase (``"modality"`` or ``"correct"``) and epoch within the phase.

    Each stage is ``modality_epochs`` epochs of the modality step followed by ``correct_epochs`` of correction;
    stage t trains modality t mod M (official ``schedule_model``, fixed mode).
    """
    length = modality_epochs + correct_epochs
    stage, offset = divmod(epoch, length)
    if offset < modality_epochs:
        return StagePosition(stage, stage % num_modalities, "modality", offset)
    return StagePosition(stage, stage % num_modalities, "correct", offset - modality_epochs)


def ensemble_members(epoch: int, modality_epochs: int, correct_epochs: int, num_modalities: int,
                     pretrained: bool) -> list[bool]:
    """Which learners are in F at the start of ``epoch``: all when pre-trained, else those whose first modality step
    (stage j for modality j) has finished."""
    length = modality_epochs + correct_epochs
    return [pretrained or epoch >= j * length + modality_epochs for j in range(num_modalities)]


def reconciled_loss(logits: torch.Tensor, labels: torch.Tensor, others: torch.Tensor | None, w1: float,
                    w2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The modality step's loss: batch mean of (1/K)(-w1 + w2 q_y) log p_m(y), q = softmax(others).

    Args:
        logits: f_m(x_m), (B, K), with gradient.
        labels: (B,) class indices.
        others: F_-m (B, K), or None when no other learner is in the ensemble (then q_y = 1, the official c0).
        w1, w2: the official ``--weight1``/``--weight2``.

    Returns:
        The loss and the per-sample weight (-w1 + w2 q_y) / K (for tests and logging).
    """
    k = logits.shape[1]
    log_p = torch.log_softmax(loss_precision(logits), dim=1).gather(1, labels[:, None]).squeeze(1)
    if others is None:
        q_y = torch.ones_like(log_p)
    else:
        q_y = torch.softmax(loss_precision(others.detach()), dim=1).gather(1, labels[:, None]).squeeze(1)
    weight = (-w1 + w2 * q_y) / k
    return (weight * log_p).mean(), weight


def ga_term(logits: torch.Tensor, partner: torch.Tensor, flow: bool) -> torch.Tensor:
    """MSE(softmax f_m, softmax f_o); ``flow=False`` detaches both sides as the official code does (zero gradient)."""
    p = torch.softmax(loss_precision(logits if flow else logits.detach()), dim=1)
    return F.mse_loss(p, torch.softmax(loss_precision(partner.detach()), dim=1))



@register
class ReconBoost(Method):
    name = "reconboost"
    title = "ReconBoost"
    DATA_PARALLEL = "exact"  # batch-mean losses, epoch-driven stages, pre-training in sharded global batches
    PAPER = ('Hua, Xu, Bao, Yang, Huang, "ReconBoost: Boosting Can Achieve Modality Reconcilement", ICML 2024, '
             'arXiv 2405.09321')
    CODE = 'GitHub huacong/ReconBoost, train.py, main; models/dynamic_net.py, DynamicNet; schedule.py'
    MODALITIES = (2, 3)
    VARIANTS = {"official_compat": {"ga_partner_second_pass": True, "pretrain_head_until_stage": True},
                # BB 4c1482f: configs/trainer_config.yaml ReconBoost (T_epochs 1, weight1 5, weight2 1, alpha 0.5),
                # balancemm/models/avclassify_model.py l.742 (boost_rate 0.01), ReconBoost_trainer.py (the rest).
                "bb": {"pretrain": False, "modality_epochs": 1, "correct_epochs": 1, "w1": 5.0, "w2": 1.0,
                       "alpha": 0.5, "boost_rate": 0.01, "ga_partner_second_pass": True, "head": "linear",
                       "shared_optimizer": True, "zero_grads_persist": True, "ensemble_from_start": True,
                       "ga_after_first_round": True}}
    HPARAMS = (
        variant_param(VARIANTS, "paper = one forward per step and the shared head from the start; official_compat "
                                "= official train.py main (a second partner pass in train mode, pre-training "
                                "classifiers kept until a learner's first stage); bb = GitHub "
                                "GeWu-Lab/BalanceBenchmark 4c1482f balancemm/trainer/ReconBoost_trainer.py (one "
                                "optimizer for both steps, a Linear head, every learner in F from the start, beta "
                                "0.01, GA from BB's epoch 1, no pre-training)."),
        HParam("modality_epochs", 4, "Epochs of the modality step per stage (official --epochs_per_stage 4).", low=1),
        HParam("correct_epochs", 4, "Epochs of the correction step per stage (official --correct_epoch 4); 0 skips "
                                    "correction.", low=0),
        HParam("w1", 5.0, "Weight of the CE term (official README, CREMA-D --weight1 5.0; AVE 4.0).",
               per_dataset={"ave": 4.0}),
        HParam("w2", 1.0, "Weight of the reconcilement term (official README --weight2 1.0)."),
        HParam("alpha", 0.5, "Weight of the GA term (official README --alpha 0.5)."),
        HParam("ga_grad", False, "false = the official GA term with both sides detached (zero gradient, logged "
                                 "only); true = gradient flows through f_m [project reading, unverified]."),
        HParam("ga_partner_second_pass", False, "false = the GA term reuses the partner's logits of the ensemble "
                                                "pass (one forward per step, as the paper's method needs); true = "
                                                "official train.py main, which runs pre_model again after "
                                                "DynamicNet.forward, both in train mode, so the partner's batch-norm "
                                                "running statistics move twice per step."),
        HParam("pretrain_head_until_stage", False, "false = every learner uses the shared head from the start; true = "
                                                   "official train.py main with --use_pretrain --common_space: a "
                                                   "pre-trained learner keeps its pre-training classifier (frozen in "
                                                   "the correction step) until its first modality stage sets "
                                                   "model.fc = net_ensemble.head."),
        HParam("boost_rate", 1.0, "Initial beta of F = beta * sum f_m (official --boost_rate 1.0)."),
        HParam("m_lr", 0.01, "Learning rate of the modality step (official README --m_lr 0.01).", low=0,
               open_low=True),
        HParam("e_lr", 0.01, "Learning rate of the correction step (official README --e_lr 0.01).", low=0,
               open_low=True),
        HParam("weight_decay", 5e-4, "Weight decay of both steps (official train.py, SGD weight_decay=5e-4).",
               low=0),
        HParam("pretrain", True, "Unimodal pre-training of the encoders (official --use_pretrain, the README "
                                 "recipe); false = BB's setting. Report both (docs/methods/reconboost.md)."),
        HParam("pretrain_epochs", 20, "Unimodal pre-training epochs per encoder [project]: the official run lengths "
                                      "are not published (checkpoints picked on test at epochs 21/87).", low=0),
        HParam("head", "mlp", "mlp = the official shared Head (models/dynamic_net.py: Linear d -> 256, ReLU, Linear "
                              "256 -> K); linear = BB's SharedHead, one Linear d -> K (GitHub "
                              "GeWu-Lab/BalanceBenchmark 4c1482f, balancemm/models/fusion_arch.py SharedHead.fc_out, "
                              "applied to each encoder by avclassify_model.py modality_model).",
               choices=("mlp", "linear")),
        HParam("shared_optimizer", False, "false = one optimizer per modality step and one for correction, each phase "
                                          "starting fresh (official train.py); true = BB 4c1482f "
                                          "ReconBoost_trainer.py: the single train.* optimizer over every parameter "
                                          "(encoders, head, beta) steps both phases and keeps its state across them "
                                          "(m_lr, e_lr and weight_decay are then unused)."),
        HParam("zero_grads_persist", False, "Only with shared_optimizer (ignored otherwise: the per-phase optimizers "
                                            "start fresh, so nothing persists, and the bb parity case flips "
                                            "shared_optimizer alone). false = a parameter without a gradient in "
                                            "this step is skipped by the optimizer (torch >= 2.0 zero_grad sets "
                                            "None); true = BB's torch 1.12.1 (BB 4c1482f README Installation, "
                                            "pip install torch==1.12.1), whose zero_grad() in ReconBoost_trainer.py "
                                            "l.247/l.293 leaves zeros: every parameter that once had a gradient "
                                            "keeps taking momentum and weight-decay steps in later phases that do "
                                            "not train it."),
        HParam("ensemble_from_start", False, "false = a learner joins F when its first modality step ends (official "
                                             "DynamicNet.add); true = BB 4c1482f avclassify_model.py "
                                             "BaseClassifierReconBoostModel.forward: F sums every learner from the "
                                             "first step. Only without pretrain: with pre-training every learner is "
                                             "in F from the start either way."),
        HParam("ga_after_first_round", False, "false = the GA term (and the partner's second pass) from stage 1 "
                                              "(official train.py); true = BB 4c1482f ReconBoost_trainer.py "
                                              "training_step1 (l.340): none in BB's epoch 0, i.e. before stage M."),
    )

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """ReconBoost's reconcilement weighted some modality step: train ``reconciled`` above 0 in some epoch, the
        share of modality steps whose loss saw other ensemble members (q_y from F_-m) with w2 != 0 (exactly 0.0 or
        1.0 per step). Without members q_y = 1 and the step is a uniformly scaled CE of one learner: only the
        first stage of a run without pre-training, unless learners are in F from the start."""
        values = logged_values(history, "train", "reconciled")
        return any(v > 0 for v in values) if values else None

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        self.encoders = build_encoders(task, ctx.model_hp)
        dims = {m: enc.out_dim for m, enc in self.encoders.items()}
        if len(set(dims.values())) != 1:
            raise ValueError(f"ReconBoost's shared head needs equal feature widths, got {dims} for dataset "
                             f"{task.dataset!r}")
        d = next(iter(dims.values()))
        if hp.head == "linear":
            self.head: nn.Module = nn.Linear(d, task.num_classes)
        else:
            self.head = nn.Sequential(nn.Linear(d, HEAD_HIDDEN), nn.ReLU(inplace=True),
                                      nn.Linear(HEAD_HIDDEN, task.num_classes))
        if hp.pretrain:
            self.pretrain_heads = nn.ModuleDict({m: nn.Linear(d, task.num_classes) for m in self.modalities})
        init_model(self, ctx.model_hp)
        self.beta = nn.Parameter(torch.tensor(float(hp.boost_rate)))
        self.register_buffer("members", torch.tensor([hp.pretrain or hp.ensemble_from_start] * len(self.modalities)))
        self.to(ctx.device)
        head = list(self.head.parameters())
        if hp.shared_optimizer:
            # BB's create_optimizer(model, ...) covers modality_encoder, fusion_module and boost_rate.
            self.shared_params = list(self.encoders.parameters()) + head + [self.beta]
            self.shared_opt = ctx.make_optimizer(self.shared_params)
            # Which parameters have had a gradient: under zero_grads_persist they keep a zero one from then on.
            self.register_buffer("had_grad", torch.zeros(len(self.shared_params), dtype=torch.bool, device=ctx.device))
            self.modality_opts = [self.shared_opt] * len(self.modalities)
            self.correct_opt = self.shared_opt
        else:
            self.modality_opts = [ctx.make_optimizer(list(self.encoders[m].parameters()) + head, lr=hp.m_lr,
                                                     weight_decay=hp.weight_decay) for m in self.modalities]
            self.correct_opt = ctx.make_optimizer(list(self.encoders.parameters()) + head + [self.beta],
                                                  lr=hp.e_lr, weight_decay=hp.weight_decay)
        self.pretrain_opts = [ctx.make_optimizer(list(self.encoders[m].parameters())
                                                 + list(self.pretrain_heads[m].parameters()))
                              for m in self.modalities] if hp.pretrain else []
        self.position = stage_at(0, hp.modality_epochs, hp.correct_epochs, len(self.modalities))

    def learner(self, m: str, x: torch.Tensor) -> torch.Tensor:
        return loss_precision(self.head_of(m)(self.encoders[m](x)))

    def head_of(self, m: str) -> nn.Module:
        """The shared head, or (``pretrain_head_until_stage``) learner m's pre-training head before stage m, its
        first modality stage; the correction optimizer leaves that head out, as the official one leaves out every
        ``fc`` entry."""
        if self.hp.pretrain and self.hp.pretrain_head_until_stage \
                and self.position.stage < self.modalities.index(m):
            return self.pretrain_heads[m]
        return self.head

    def ensemble(self, logits: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """beta * sum of the given learners' logits, or None when there are none."""
        if not logits:
            return None
        return self.beta * torch.stack(list(logits.values())).sum(0)

    def pretrain_encoders(self, loader: BatchLoader) -> None:
        max_steps = self.ctx.train_hp.max_steps_per_epoch
        for i, (m, opt) in enumerate(zip(self.modalities, self.pretrain_opts)):
            head = self.pretrain_heads[m]
            for j in range(self.hp.pretrain_epochs):
                for batch in loader.extra_pass(-1 - (i * self.hp.pretrain_epochs + j), max_steps):
                    with self.ctx.autocast():
                        loss = F.cross_entropy(loss_precision(head(self.encoders[m](batch[m]))), batch["label"])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            opt.state.clear()

    def on_epoch_start(self, epoch: int, loaders: Loaders) -> None:
        if epoch == 0 and self.hp.pretrain:
            self.pretrain_encoders(loaders.train)
        hp, n = self.hp, len(self.modalities)
        self.position = stage_at(epoch, hp.modality_epochs, hp.correct_epochs, n)
        self.members.copy_(torch.tensor(ensemble_members(epoch, hp.modality_epochs, hp.correct_epochs, n,
                                                         hp.pretrain or hp.ensemble_from_start)))
        if self.position.phase_epoch == 0 and not hp.shared_optimizer:
            opt = self.modality_opts[self.position.modality] if self.position.phase == "modality" \
                else self.correct_opt
            opt.state.clear()

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        pos = self.position
        labels = batch["label"]
        if pos.phase == "correct":
            with self.ctx.autocast():
                z = self.ensemble({m: self.learner(m, batch[m]) for i, m in enumerate(self.modalities)
                                   if self.members[i]})
            loss = F.cross_entropy(z, labels)
            self.step_optimizer(self.correct_opt, loss)
            return read_logs({"loss": loss, "beta": self.beta})
        m = self.modalities[pos.modality]
        first_ga = len(self.modalities) if self.hp.ga_after_first_round else 1
        partner = self.modalities[(pos.stage - 1) % len(self.modalities)] if pos.stage >= first_ga else None
        with torch.no_grad(), self.ctx.autocast():
            other = {j: self.learner(j, batch[j]) for i, j in enumerate(self.modalities)
                     if j != m and (self.members[i] or j == partner)}
            f_rest = self.ensemble({j: z for j, z in other.items() if self.members[self.modalities.index(j)]})
        with self.ctx.autocast():
            z_m = self.learner(m, batch[m])
        loss, _ = reconciled_loss(z_m, labels, f_rest, self.hp.w1, self.hp.w2)
        logs = {"loss_boost": loss.detach(), "reconciled": float(f_rest is not None and self.hp.w2 != 0)}
        if partner is not None:
            if self.hp.ga_partner_second_pass and self.members[self.modalities.index(partner)]:
                with torch.no_grad(), self.ctx.autocast():
                    other[partner] = self.learner(partner, batch[partner])
            ga = ga_term(z_m, other[partner], self.hp.ga_grad)
            logs["ga"] = ga.detach()
            if self.hp.ga_grad:
                loss = loss + self.hp.alpha * ga
        self.step_optimizer(self.modality_opts[pos.modality], loss)
        logs["loss"] = loss
        return read_logs(logs)

    def step_optimizer(self, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """backward and one step of ``opt``. With ``zero_grads_persist`` every parameter that has had a gradient
        gets a zero one where this loss gives it none, as BB's torch 1.12.1 ``zero_grad()`` leaves it; the flags are a
        buffer, so a resumed run steps the same parameters."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.hp.shared_optimizer and self.hp.zero_grads_persist:
            now = torch.tensor([p.grad is not None for p in self.shared_params], device=self.had_grad.device)
            self.had_grad |= now
            for p, had in zip(self.shared_params, self.had_grad.tolist()):
                if had and p.grad is None:
                    p.grad = torch.zeros_like(p)
        opt.step()

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        with self.ctx.autocast():
            z_uni = {m: self.learner(m, batch[m]) for m in self.modalities}
        fused = self.ensemble({m: z for i, (m, z) in enumerate(z_uni.items()) if self.members[i]})
        if fused is None:
            fused = torch.zeros_like(next(iter(z_uni.values())))
        return Prediction(loss_precision(fused), z_uni)

    def on_epoch_end(self, epoch: int, loaders: Loaders) -> dict[str, float]:
        return {"stage": float(self.position.stage), "modality_step": float(self.position.phase == "modality"),
                "beta": self.beta.item()}
