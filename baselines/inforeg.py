"""InfoReg: slow down the information-sufficient modality during the prime learning window (docs/methods/inforeg.md).

Paper: Chengxiang Huang, Yake Wei, Zequn Yang, Di Hu, "Adaptive Unimodal Regulation for Balanced Multimodal
Information Acquisition", CVPR 2025, arXiv 2503.18595. Official code: GitHub GeWu-Lab/InfoReg_CVPR2025, ``main.py``,
``train_epoch``. Not in BalanceBenchmark.

Per epoch:
- theta_0 = the encoders' parameters at the start of the epoch (P11, snapshot taken in ``on_epoch_start``).
- Prime-window indicator k = (tr_1 - tr_2) / tr_1, k = 1 at epoch 0, where tr_1 is the mean of the last 10 per-epoch
  FIM traces of the first modality's encoder (audio for A/V data), tr_2 the same window shifted back one epoch, and a
  FIM trace is the sum over the encoder's Conv/Linear layers of mean(sum over the epoch's steps of grad^2). As in the
  official code the trace history starts with 10 zeros, and the squared gradients are taken after the proximal edit.

Per step:
1. L = CE(z) + CE(z_a) + CE(z_v) with split-head logits of the concat head; one backward (the official code runs three
   retained backward passes for its logging; the gradient is the same).
2. s_m = batch-summed true-class probabilities (P2).
3. If s_a > s_v and k > 0.05: beta_a = 0.95 exp(tanh(s_a - s_v)), beta_v = 0; if s_v > s_a and k > 0.05:
   beta_v = 0.1 exp(tanh(s_v - s_a)), beta_a = 0; otherwise both 0. Because s is a batch sum, tanh saturates and
   beta_a is close to 0.95 e = 2.58.
4. Proximal term (P4) on encoder m: g <- g + beta_m (theta - theta_0). Then one optimizer step.

The rule is defined for two modalities (the coefficients 0.95 / 0.1 follow the dataset's modality order), so
MODALITIES = (2,). Deviation: when the trace window sums to zero (nothing learnt yet), k is taken as 0 instead of the
official division by zero.

Cost: one forward and one backward per step; a copy of both encoders' parameters (theta_0); one accumulator per
Conv/Linear weight of the traced encoder; a few element-wise passes over encoder tensors per step.

Official recipe (CREMA-D): batch 64, 50 epochs, SGD lr 2e-3, StepLR(30, 0.1) (stepped every epoch), 3 frames, ``ogm``
front-end; set through a config file (``train.lr: 0.002``, ``train.epochs: 50``, ``train.lr_milestones: [30]``).
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
    logged_values,
    loss_precision,
    read_logs,
)
from baselines.registry import register
from core.data import Batch, TaskSpec
from core.hparams import HParam, HParams


def prime_window_indicator(traces: Sequence[float], window: int) -> float:
    """k = (tr_1 - tr_2) / tr_1 over the zero-padded history of per-epoch FIM traces; 1 before the first trace."""
    if not traces:
        return 1.0
    history = [0.0] * window + list(traces)
    tr1 = sum(history[-window:]) / window
    tr2 = sum(history[-window - 1:-1]) / window
    return (tr1 - tr2) / tr1 if tr1 > 0 else 0.0


def inforeg_betas(scores: Sequence[torch.Tensor], k: float, scales: Sequence[float], threshold: float
                  ) -> list[torch.Tensor]:
    """The official beta rule for two modalities: only the one with the larger score is regulated, and only while
    k > threshold. Returns 0-dim tensors (no host synchronisation)."""
    s0, s1 = scores
    zero = torch.zeros_like(s0)
    if k <= threshold:
        return [zero, zero.clone()]
    b0 = torch.where(s0 > s1, scales[0] * torch.exp(torch.tanh(s0 - s1)), zero)
    b1 = torch.where(s1 > s0, scales[1] * torch.exp(torch.tanh(s1 - s0)), zero)
    return [b0, b1]


def add_proximal_term(params: Sequence[nn.Parameter], anchor: Sequence[torch.Tensor], beta: torch.Tensor) -> None:
    """P4: g <- g + beta (theta - theta_0) on every parameter (each must already hold its gradient)."""
    for p, p0 in zip(params, anchor):
        p.grad.addcmul_(p.detach() - p0, beta)


@register
class InfoReg(FusionMethod):
    """Concat head with split-head unimodal CEs; a proximal pull toward the epoch-start encoder while in the window."""

    name = "inforeg"
    title = "InfoReg"
    DATA_PARALLEL = "approximate"  # proximal strength from each rank's confidence sums, FIM from local gradients
    PAPER = ('Chengxiang Huang, Yake Wei, Zequn Yang, Di Hu, "Adaptive Unimodal Regulation for Balanced Multimodal '
             'Information Acquisition", CVPR 2025, arXiv 2503.18595')
    CODE = "GitHub GeWu-Lab/InfoReg_CVPR2025, main.py, train_epoch"
    HEAD = "concat"
    MODALITIES = (2,)
    HPARAMS = (
        HParam("beta_scale", [0.95, 0.1], "beta_m = scale_m exp(tanh(s_m - s_other)) in the dataset's modality order: "
                                          "0.95 for audio, 0.1 for visual (official main.py train_epoch; "
                                          "docs/methods/inforeg.md step 3)."),
        HParam("k_threshold", 0.05, "Regulate only while the prime-window indicator k exceeds this (official main.py "
                                    "train_epoch, 'k > 0.05')."),
        HParam("window", 10, "Prime-window length in epochs: tr_1 = mean of the last 10 FIM traces; the official "
                             "history starts with 10 zeros (main.py main, audio_trace_list).", low=1),
        HParam("trace_modality", "", "Encoder whose FIM trace defines k; empty = the dataset's first modality "
                                     "(audio, as in official main.py fim_audio)."),
    )

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """Whether InfoReg's proximal pull was on: an epoch whose mean ``beta_<m>`` is above 0 for some modality
        (beta is exactly 0.0 outside the prime window, k <= k_threshold, and for the modality with the smaller
        score). The pull beta (theta - theta_0) is zero on an epoch's first step, where theta = theta_0, so an epoch
        of a single step counts although it changed nothing. None for a history without ``beta_`` keys."""
        betas = logged_values(history, "train", "beta_")
        return any(v > 0.0 for v in betas) if betas else None

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        if len(hp.beta_scale) != len(self.modalities):
            raise ValueError(f"inforeg.beta_scale needs one value per modality {self.modalities}, got "
                             f"{hp.beta_scale!r}")
        traced = hp.trace_modality or self.modalities[0]
        if traced not in self.modalities:
            raise ValueError(f"inforeg.trace_modality={traced!r} is not a modality of dataset {task.dataset!r}: "
                             f"{self.modalities}")
        self.encoder_params = {m: list(self.model.encoders[m].parameters()) for m in self.modalities}
        self.fim_weights = [mod.weight for mod in self.model.encoders[traced].modules()
                            if isinstance(mod, (nn.Conv2d, nn.Linear))]
        self.traces: list[float] = []
        self.k = 1.0
        self._start_epoch()

    def _start_epoch(self) -> None:
        # theta_0 and the FIM accumulators live for one epoch; the runner calls on_epoch_start after resuming from an
        # epoch-end checkpoint, so only the trace history has to be checkpointed.
        self.anchor = {m: [p.detach().clone() for p in ps] for m, ps in self.encoder_params.items()}
        self.fim = [torch.zeros_like(w) for w in self.fim_weights]
        self.k = prime_window_indicator(self.traces, self.hp.window)

    def on_epoch_start(self, epoch: int, loaders: Loaders) -> None:
        self._start_epoch()

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        with self.ctx.autocast():
            _, z, z_uni = self.model(self.inputs(batch))
        y = batch["label"]
        loss = F.cross_entropy(loss_precision(z), y) + sum(F.cross_entropy(loss_precision(z_uni[m]), y)
                                                           for m in self.modalities)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        scores = confidence_scores(z_uni, y)
        betas = inforeg_betas([scores[m] for m in self.modalities], self.k, self.hp.beta_scale, self.hp.k_threshold)
        if self.k > self.hp.k_threshold:
            for m, beta in zip(self.modalities, betas):
                add_proximal_term(self.encoder_params[m], self.anchor[m], beta)
        for acc, w in zip(self.fim, self.fim_weights):
            acc.addcmul_(w.grad, w.grad)
        self.optimizer.step()
        return read_logs({"loss": loss, **{f"beta_{m}": b for m, b in zip(self.modalities, betas)}})

    def on_epoch_end(self, epoch: int, loaders: Loaders) -> dict[str, float]:
        trace = float(sum(acc.mean() for acc in self.fim)) if self.fim else 0.0
        self.traces.append(trace)
        return {"inforeg_fim_trace": trace, "inforeg_k": self.k}

    def extra_state(self) -> dict[str, Any]:
        return {"traces": list(self.traces)}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.traces = [float(t) for t in state["traces"]]
        self.k = prime_window_indicator(self.traces, self.hp.window)
