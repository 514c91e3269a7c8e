"""AUG: sustained boosting with adaptive classifier assignment (docs/methods/aug.md).

Paper: Qing-Yuan Jiang, Longfei Huang, Yang Yang, "Rethinking Multimodal Learning from the Perspective of
Mitigating Classification Ability Disproportion", NeurIPS 2025, arXiv 2502.20120. Official code: GitHub
njustkmg/NeurIPS25-AUG, ``train_CREMAD.py`` (``train_audio_video``, ``val``, ``__main__``) and
``model/AudioVideo.py`` (``AVGBShareClassifier``); the gated variant follows ``train_CREMAD.py``, ``train_KS.py``
and ``train_NVGesture.py`` at commit 966dbf5 (all gated, lambda 0.2; ced44c6 removed the gate from CREMA-D).

Each modality has its own encoder and a growing ensemble of ReLU(Linear(d -> 256)) learners feeding one head
256 -> K shared by all modalities and learners (``aug/model.py``). An iteration runs every encoder once, then per
modality in a fixed order (audio first): sustained-boosting loss, backward, optimizer step, zero_grad; the shared
head is therefore stepped once per modality and later modalities see the updated head. After every t_N epochs the
weaker modality by training confidence gets one more learner (``aug/aca.py``). Test time: z = sum_m w_m z_m^all.

Costs against joint training: one backward and one optimizer step per modality (one more for the gate), at most
one extra learner of d*256 + 256 parameters per ACA check and modality (about 10 on CREMA-D), and no extra forward
passes. In data-parallel runs one small all-reduce per step sums the batch's confidence and loss statistics, so every
rank takes the same decisions.

Deviations and choices (docs/methods/aug.md#paper-vs-code; ``official_compat`` selects the code's behaviour where they
differ):

- ``paper`` registers each new learner with the optimizer (a new parameter group at the current lr); the code never
  does, so its added learners stay random projections (``register_new_learners: false``).
- ``paper`` compares s_a - sigma * s_v with s = S / N against +-tau and checks every t_N epochs; the code compares
  S_a / S_v against sigma +- tau and also checks after epoch 0. No check runs after the last epoch, where the code
  would add a learner that is never used. With three modalities both variants use the old NVGesture rule.
- ``zero_grad_set_to_none: false`` reproduces PyTorch 1.11's zero-filled gradients (an extra momentum and
  weight-decay step for modalities stepped earlier in the iteration).
- The gate (``variant: official_gated``, with lambda 0.2) is in every script of commit 966dbf5, CREMA-D included;
  the default branch's ungated ``train_CREMAD.py`` (ced44c6, lambda 0.5) dropped it. It is off by default.
- [project] The equal-weight fusion is evaluated as a diagnostic next to the published 0.4 / 0.6 weights
  (``val/test.alternatives.equal_fusion`` in ``metrics.jsonl``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from aug.aca import ACA_RULES, aca_check_epochs, aca_decision, default_interval, gate_targets, running_scores
from aug.model import RESIDUAL_TARGETS, GateNet, LearnerStack, learner_logits, sustained_boosting_loss
from baselines.base import Loaders, Method, Prediction, StepInfo, TrainContext, confidence_scores, loss_precision
from baselines.networks import build_encoders, init_model
from baselines.registry import register
from core.data import Batch, TaskSpec
from core.hparams import HParam, HParamError, HParams, variant_param

# The official scripts' test-time weights by number of modalities: --merge_alpha 0.4 (CREMA-D, KS) and
# --merge_alpha1/2 0.33 (NVGesture). The paper does not state them.
PUBLISHED_FUSION = {2: [0.4, 0.6], 3: [0.33, 0.33, 0.34]}


def _order_problem(order: list, modalities: tuple[str, ...]) -> str | None:
    """Why ``aug.modality_order`` cannot order these modalities, or None (empty: the dataset's order)."""
    if order and sorted(order) != sorted(modalities):
        return f"aug.modality_order={order!r} must list each of {list(modalities)} once"
    return None


def _weights_problem(weights: list, modalities: tuple[str, ...]) -> str | None:
    """Why ``aug.fusion_weights`` cannot weight these modalities, or None (empty: the published weights)."""
    if not weights and len(modalities) not in PUBLISHED_FUSION:
        return f"aug.fusion_weights: no published weights for {len(modalities)} modalities; give one per modality"
    if weights and (len(weights) != len(modalities) or not all(isinstance(w, (int, float)) for w in weights)):
        return f"aug.fusion_weights={weights!r} needs one number per modality {list(modalities)}"
    return None


ACCUMULATORS = ("score_sum", "loss_sum", "ce_sum")


@register
class AUG(Method):
    """AUG, docs/methods/aug.md: per-modality learner ensembles on a shared head, stepped modality by modality."""

    name = "aug"
    title = "AUG"
    PAPER = ('Qing-Yuan Jiang, Longfei Huang, Yang Yang, "Rethinking Multimodal Learning from the Perspective of '
             'Mitigating Classification Ability Disproportion", NeurIPS 2025, arXiv 2502.20120')
    CODE = ('GitHub njustkmg/NeurIPS25-AUG, train_CREMAD.py, train_audio_video / __main__; model/AudioVideo.py, '
            'AVGBShareClassifier (gated variant: train_CREMAD.py / train_KS.py @966dbf5)')
    MODALITIES = (2, 3)
    DATA_PARALLEL = "exact"  # confidence and loss sums all-reduced: same ACA and gate decisions everywhere
    score_sum: torch.Tensor
    loss_sum: torch.Tensor
    ce_sum: torch.Tensor
    VARIANTS = {
        # aca_interval_epochs 0 is the code's t_N = epochs // 10 at any epoch count (the paper's t_N is per dataset).
        "official_compat": {"register_new_learners": False, "aca_rule": "ratio", "aca_check_after_first_epoch": True,
                            "zero_grad_set_to_none": False, "residual_target": "ensemble_softmax", "gate": False,
                            "aca_interval_epochs": 0},
        "official_gated": {"register_new_learners": False, "aca_rule": "ratio", "aca_check_after_first_epoch": True,
                           "zero_grad_set_to_none": False, "residual_target": "ensemble_softmax", "gate": True,
                           "residual_lambda": 0.2, "aca_interval_epochs": 0},
    }
    HPARAMS = (
        variant_param(VARIANTS, "paper = the paper (docs/methods/aug.md#paper-vs-code, column 'default (`paper`)'); "
                                "official_compat = "
                                "train_CREMAD.py on the default branch; official_gated = the gated train_CREMAD.py / "
                                "train_KS.py / train_NVGesture.py of commit 966dbf5 (lambda 0.2)."),
        HParam("residual_lambda", 0.5, "lambda of the residual label e_y - lambda*q_y*e_y (paper eq. (2); searched "
                                       "in {0.1,0.2,0.33,0.5,1.0}, value not reported). Code: 0.5 in "
                                       "train_CREMAD.py, 0.2 in every gated script @966dbf5; other "
                                       "datasets 0.5 [project], tune on validation (docs/methods/aug.md#loss, "
                                       "#hyperparameters).",
               per_dataset={"cremad": 0.5, "kinetics_sounds": 0.2, "nvgesture": 0.2}),
        HParam("residual_target", "ensemble_softmax", "q in the residual label: softmax of the previous ensemble's "
                                                      "summed logits (code) or the sum of each previous learner's "
                                                      "softmax (paper eq. (2) literally), "
                                                      "docs/methods/aug.md#paper-vs-code, row 6.",
               choices=RESIDUAL_TARGETS),
        HParam("sigma", 1.0, "ACA balance point sigma (paper: 1.0 for all datasets; code: --lam 1.0).", low=0,
               open_low=True),  # a score ratio's balance point: <= 0 would add learners at every check
        HParam("tau", 0.01, "ACA dead-zone half-width tau (paper: 0.01; code: the 0.01 in lam +- 0.01).", low=0),
        HParam("aca_rule", "difference", "Two-modality ACA test: s_a - sigma*s_v vs +-tau (paper) or S_a/S_v vs "
                                         "sigma +- tau (code), docs/methods/aug.md#aca.", choices=ACA_RULES),
        HParam("aca_interval_epochs", 0, "t_N in epochs (paper: 20 CREMA-D, 10 KS/VGGSound/NVGesture, 5 Twitter, "
                                         "1 Sarcasm); 0 = the code's max(epochs // 10, 1).",
               per_dataset={"cremad": 20, "kinetics_sounds": 10, "vggsound": 10, "nvgesture": 10,
                            "twitter2015": 5, "sarcasm": 1}, low=0),
        HParam("aca_check_after_first_epoch", False, "Also run ACA after epoch 0, as the code does "
                                                     "((epoch+1) % check == 0 or epoch == 0), "
                                                     "docs/methods/aug.md#aca."),
        HParam("register_new_learners", True, "Train added learners (paper: every Theta_t is learned) by adding "
                                              "them to the optimizer as a new group; false = the code, which never "
                                              "registers them (docs/methods/aug.md#paper-vs-code, row 1)."),
        HParam("zero_grad_set_to_none", True, "zero_grad between the per-modality steps sets gradients to None "
                                              "(PyTorch >= 2.0); false = PyTorch 1.11 zero-fill as the code ran "
                                              "(docs/methods/README.md#multi-step)."),
        HParam("modality_order", [], "Per-modality step order; empty = the dataset's declared order (audio first, "
                                     "as train_audio_video).", element=str),
        HParam("fusion_weights", [], "Test-time weights w_m, dataset order; empty = the code's 0.4/0.6 (2 "
                                     "modalities, --merge_alpha) or 0.33/0.33/0.34 (3); not in the paper.",
               element=float),
        HParam("three_modal_threshold", 0.4, "ACA with 3 modalities: grow every m with S_m / sum_{j!=m} S_j below "
                                             "this (train_NVGesture.py --lam 0.4; no rule in the paper)."),
        HParam("learner_dim", 256, "Width of every weak learner and the shared head's input (AudioVideo.py: "
                                   "Linear(512, 256)).", low=1),
        HParam("gate", False, "Gate network scaling the extra learners' logits (train_KS.py @966dbf5 w_network), "
                              "docs/methods/aug.md#gated."),
        HParam("gate_lr_scale", 0.1, "Gate learning rate relative to train.lr (train_KS.py: lr_adjust / 10)."),
        HParam("log_equal_fusion", True, "Also log val/test accuracy with equal fusion weights "
                                         "(docs/methods/aug.md#aca: equal-weight fusion evaluated as a diagnostic) "
                                         "[project]."),
    )

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        self.order = self._step_order(hp.modality_order)
        self.fusion = self._fusion_weights(hp.fusion_weights)
        interval = hp.aca_interval_epochs or default_interval(ctx.epochs)
        self.check_epochs = set(aca_check_epochs(ctx.epochs, interval, hp.aca_check_after_first_epoch))
        self.encoders = build_encoders(task, ctx.model_hp)
        self.learners = nn.ModuleDict({m: LearnerStack(self.encoders[m].out_dim, hp.learner_dim)
                                       for m in self.modalities})
        self.head = nn.Linear(hp.learner_dim, task.num_classes)
        self.gate = GateNet() if hp.gate else None
        init_model(self, ctx.model_hp)
        self.to(ctx.device)
        gate_params = set(self.gate.parameters()) if self.gate is not None else set()
        groups = [{"params": [p for p in self.parameters() if p not in gate_params]}]
        if gate_params:
            groups.append({"params": list(self.gate.parameters()), "lr": ctx.train_hp.lr * hp.gate_lr_scale})
        self.optimizer = ctx.make_optimizer(groups)
        self.history: list[str] = []
        m = len(self.modalities)
        self.running = torch.zeros(m, device=ctx.device)
        self._reset_epoch()

    @classmethod
    def task_problems(cls, hp: HParams, modalities: tuple[str, ...]) -> list[str]:
        return [p for p in (_order_problem(hp.modality_order, modalities),
                            _weights_problem(hp.fusion_weights, modalities)) if p]

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """Whether ACA added a learner that then trained: an ``added/<modality>`` of 1 in any epoch but the last
        (ACA decides after the epoch's evaluation, so a learner added at the last epoch changed no step). None for a
        history without ``added/`` keys."""
        added = [[v for k, v in record.get("diag", {}).items() if k.startswith("added/")] for record in history]
        if not any(added):
            return None
        return any(v == 1.0 for flags in added[:-1] for v in flags)

    def _step_order(self, order: list) -> tuple[str, ...]:
        problem = _order_problem(order, self.modalities)
        if problem:
            raise HParamError(problem)
        return tuple(order) if order else self.modalities

    def _fusion_weights(self, weights: list) -> list[float]:
        problem = _weights_problem(weights, self.modalities)
        if problem:
            raise HParamError(problem)
        return [float(w) for w in weights or PUBLISHED_FUSION[len(self.modalities)]]

    def _reset_epoch(self) -> None:
        """Per-epoch sums per modality over training samples: ACA's confidence S_m, the boosting loss and the
        ensemble's CE (both batch means weighted by the batch size), and N."""
        for name in ACCUMULATORS:
            setattr(self, name, torch.zeros(len(self.modalities), dtype=torch.float64, device=self.ctx.device))
        self.count = 0

    # --- structure -------------------------------------------------------------------------------------------------
    def add_learner(self, modality: str) -> None:
        """Append one learner to ``modality``: a new parameter group (paper) or frozen (official code)."""
        layer = self.learners[modality].grow()
        if self.hp.register_new_learners:
            self.ctx.add_param_group(self.optimizer, layer.parameters())
        else:
            layer.requires_grad_(False)
        self.history.append(modality)

    def extra_learners(self) -> dict[str, int]:
        return {m: len(self.learners[m]) - 1 for m in self.modalities}

    def gate_values(self) -> torch.Tensor | None:
        if self.gate is None:
            return None
        with torch.no_grad():
            return self.gate(self.running)

    def modality_logits(self, modality: str, h: torch.Tensor, gates: torch.Tensor | None) -> torch.Tensor:
        """Per-learner logits (B, n + 1, K) of one modality, with the shared head as it is now."""
        gate = None if gates is None else gates[self.modalities.index(modality)]
        return learner_logits(self.learners[modality], self.head, h, gate)

    # --- the contract ----------------------------------------------------------------------------------------------
    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        y = batch["label"]
        gates = self.gate_values()
        with self.ctx.autocast():
            h = {m: self.encoders[m](batch[m]) for m in self.modalities}
        losses = torch.zeros(len(self.modalities), device=y.device)
        ensemble_ce = torch.zeros(len(self.modalities), device=y.device)
        confidence = torch.zeros(len(self.modalities), dtype=torch.float64, device=y.device)
        for m in self.order:
            i = self.modalities.index(m)
            with self.ctx.autocast():
                z = self.modality_logits(m, h[m], gates)
            loss, z_all = sustained_boosting_loss(z, y, self.hp.residual_lambda, self.hp.residual_target)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=self.hp.zero_grad_set_to_none)
            losses[i] = loss.detach()
            ensemble_ce[i] = F.cross_entropy(z_all.detach(), y)
            confidence[i] = confidence_scores({m: z_all}, y)[m]
        # A fill on the device, not torch.tensor of a host list: that copies from pageable memory and waits for
        # the device to finish the step.
        size = torch.full((1,), len(y), dtype=torch.float64, device=y.device)
        batch_stats = torch.cat([confidence, losses.double() * size, ensemble_ce.double() * size, size])
        # Data-parallel ranks train on disjoint slices: summing them makes ACA and the gate see the global batch,
        # so every rank grows the same learners (identity in a single process).
        sums = self.ctx.all_reduce_sum(batch_stats)
        confidence, loss_sums, ce_sums, size = sums.split([len(self.modalities)] * 3 + [1])
        self.score_sum += confidence
        self.loss_sum += loss_sums
        self.ce_sum += ce_sums
        # The global batch's size: summed over ranks when data-parallel, this rank's own batch (no device read) in
        # one process.
        self.count += int(size.item()) if self.ctx.data_parallel else len(y)
        if self.gate is not None:
            self._gate_step(confidence, step.step)
        # The official loop deletes every gradient at the end of an iteration, whatever zero_grad left behind.
        self.zero_grad(set_to_none=True)
        values = losses.tolist()
        logs = {f"loss_{m}": values[i] for i, m in enumerate(self.modalities)}
        logs["loss"] = sum(w * v for w, v in zip(self.fusion, values))
        return logs

    def _gate_step(self, confidence: torch.Tensor, step_in_epoch: int) -> None:
        """The third backward/step of the gated scripts: MSE of g(previous running scores) to 0/1 targets set by
        the updated running scores (docs/methods/aug.md#gated)."""
        inputs = self.running
        self.running = running_scores(confidence, self.score_sum, step_in_epoch).to(self.running.dtype)
        loss = F.mse_loss(self.gate(inputs), gate_targets(self.running))
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=self.hp.zero_grad_set_to_none)

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        gates = self.gate_values()
        with self.ctx.autocast():
            out = {m: loss_precision(self.modality_logits(m, self.encoders[m](batch[m]), gates).sum(dim=1))
                   for m in self.modalities}
        fused = sum(w * out[m] for w, m in zip(self.fusion, self.modalities))
        # The runner reports the metrics of this second fusion beside the fused ones, so it costs no second pass. The
        # mean, not the sum: mAP and confidence read softmax(logits), which a scale changes.
        alternatives = {"equal_fusion": sum(out.values()) / len(out)} if self.hp.log_equal_fusion else {}
        return Prediction(fused, out, alternatives)

    def on_epoch_start(self, epoch: int, loaders: Loaders) -> None:
        self._reset_epoch()

    def on_epoch_end(self, epoch: int, loaders: Loaders) -> dict[str, float]:
        """ACA after evaluation (the runner checkpoints afterwards), plus the epoch's diagnostics."""
        sums, n = self.score_sum.tolist(), self.count
        losses = [v / max(n, 1) for v in self.loss_sum.tolist()]
        ces = [v / max(n, 1) for v in self.ce_sum.tolist()]
        diag: dict[str, float] = {}
        for i, m in enumerate(self.modalities):
            diag[f"score/{m}"] = sums[i] / n if n else float("nan")
            diag[f"train_loss/{m}"] = losses[i]
            diag[f"ensemble_ce/{m}"] = ces[i]
        if len(self.modalities) == 2:
            diag["score_ratio"] = sums[0] / sums[1] if sums[1] else float("nan")
            diag["score_difference"] = (sums[0] - self.hp.sigma * sums[1]) / n if n else float("nan")
            # Proxies of the paper's cross-modal gap G = L^a - L^v (Theorem 1), which no released code computes:
            # on the full per-modality objective and on the ensemble's CE alone (comparable across learner counts).
            diag["loss_gap"] = losses[0] - losses[1]
            diag["ensemble_ce_gap"] = ces[0] - ces[1]
        else:
            for i, m in enumerate(self.modalities):
                rest = sum(sums) - sums[i]
                diag[f"score_rho/{m}"] = sums[i] / rest if rest else float("nan")
        if self.gate is not None:
            for m, w in zip(self.modalities, self.gate_values().tolist()):
                diag[f"gate/{m}"] = w
        checked = epoch in self.check_epochs
        grown = aca_decision(sums, n, self.hp.aca_rule, self.hp.sigma, self.hp.tau,
                             self.hp.three_modal_threshold) if checked else []
        for i in grown:
            self.add_learner(self.modalities[i])
        diag["aca_check"] = float(checked)
        for i, (m, count) in enumerate(self.extra_learners().items()):
            diag[f"added/{m}"] = float(i in grown)
            diag[f"extra_learners/{m}"] = float(count)
        return diag

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"history": list(self.history), "count": self.count,
                "running": self.running.tolist(), **{name: getattr(self, name).tolist() for name in ACCUMULATORS}}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Replay the learner additions in their original order, so parameter groups line up with the saved
        optimizer state, then restore the epoch accumulators and the gate's running scores."""
        history = list(state["history"])
        unknown = sorted(set(history) - set(self.modalities))
        if unknown:
            raise RuntimeError(f"checkpoint grew learners for modalities {unknown}; this dataset has "
                               f"{list(self.modalities)}")
        if history[:len(self.history)] != self.history:
            raise RuntimeError(f"checkpoint learner history {history} does not extend this model's {self.history}")
        for m in history[len(self.history):]:
            self.add_learner(m)
        device = self.ctx.device
        for name in ACCUMULATORS:
            setattr(self, name, torch.tensor(state[name], dtype=torch.float64, device=device))
        self.count = int(state["count"])
        self.running = torch.tensor(state["running"], dtype=self.running.dtype, device=device)
