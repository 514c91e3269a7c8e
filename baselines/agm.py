"""AGM: adaptive gradient modulation (docs/methods/agm.md).

Paper: Hong Li, Xingyu Li, Pengbo Hu, Yinuo Lei, Chunxiao Li, Yi Zhou, "Boosting Multi-modal Model Performance with
Adaptive Gradient Modulation", ICCV 2023, arXiv 2308.07686. Official code: GitHub lihong2303/AGM_ICCV2023,
``model/CREMAD_net.py`` (``GradMod``, ``Modality_Audio``, ``Modality_Visual``, ``Modality_out``) and
``run/CREMAD_main.py`` (``train``); issues are filed on lihongcs/AGM.

Model: H-concat. Per step:

1. Forwards on the same batch, all with autograd: the full input in train mode, and every proper non-empty subset of
   modalities (the others' *inputs* zeroed, P1 ``input`` mode) in **eval mode** (BatchNorm uses running statistics and
   is not updated), as ``GradMod.forward`` does. For A/V: z_full, z_ao (visual zeroed), z_vo (audio zeroed).
2. Shapley-style outputs with v(empty set) = 0: m_a = 1/2 (z_full - z_vo + z_ao), m_v = 1/2 (z_full - z_ao + z_vo);
   for M modalities phi_m = sum over S not containing m of |S|!(M-|S|-1)!/M! (v(S + m) - v(S)), so sum_m phi_m =
   z_full. Each phi_m passes through an identity module whose full backward hook multiplies its gradient by k_m (P6);
   the loss is CE(sum_m phi_m, y), numerically CE(z_full, y). Hence z_full receives 1/2 (k_a + k_v) g, z_ao
   1/2 (k_a - k_v) g and z_vo 1/2 (k_v - k_a) g.
3. Coefficients, before backward: s_m = mean_i -log max(p(phi_m,i)[y_i], 1e-8) (per-modality CE);
   r_m = exp(M/(M-1) (mean_j s_j - s_m)) (A/V: r_a = exp(s_v - s_a)); r_bar_m likewise from s_bar_m, the running
   mean of s_m over **all iterations since training began**, updated after k is computed (zero before the first
   step, as in the official code); k_m = exp(alpha min(r_bar_m - r_m, 10)). A modality whose current ratio r exceeds
   its running mean gets k < 1 (is slowed), a lagging one k > 1.
4. After backward: if any entry of the fusion-head weight gradient exceeds 1 in absolute value, clip the total
   gradient norm of all parameters to 1.0.

The hooks' scales are set only inside the modulation window mod_start <= epoch <= mod_end; outside it they keep their
last value (1.0 if never set), as the official ``update_scale`` does. The window is in the runner's 0-based epochs;
the official loop (``run/CREMAD_main.py``, ``for epoch in range(start_epoch, cfgs.EPOCHS + 1)`` with
``start_epoch = 1``) is 1-based, so its ``--modulation_starts s --modulation_ends e`` is mod_start = s - 1,
mod_end = e - 1 here (the defaults are the author's window 0-1500 shifted so). Running means and scales are
buffers, so they survive checkpoints. Evaluation reports z_full as the fused output and phi_m as the per-modality
outputs (official ``test``).

Data-parallel runs (``core.distributed``): s_m is averaged over ranks before k and the running means are
computed, and the gradients are averaged right after ``backward`` (the hook-scaled backward is linear in the loss),
so the clip decision and the clipped norm are those of the global batch: a step on W ranks with B/W samples each
equals the single-process step on B (up to BatchNorm, which normalises each rank's slice in the train-mode pass).

Cost: 2^M - 1 forwards with graph per step (3 for A/V; two in eval mode) and one backward through all of them; the
same forwards without graph at evaluation. Deviation: the official code also runs the all-zeroed input (a fourth
forward) whose output is unused; it is skipped here, which changes no value (eval mode does not touch BatchNorm
statistics and nothing random runs in it).

BB (``balancemm/trainer/AGM_trainer.py``) is functionally different and not a reference: it runs the sub-model passes
under no_grad and scales encoder gradients directly, drops z_ao from m_a, **flips the sign of the ratio**, clips the
exponent at 7 and the gradient norm at 5, and uses alpha 0.1.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import (
    FusionMethod,
    Loaders,
    Prediction,
    StepInfo,
    TrainContext,
    loss_precision,
    read_logs,
)
from baselines.registry import register
from core.data import Batch, TaskSpec
from core.hparams import HParam, HParams

# Probabilities are clamped here before the log in s_m (official CREMAD_main.py train).
PROB_FLOOR = 1e-8
# Cap on r_bar - r inside the exponent (official: min(optimal_ratio - ratio, 10)).
EXPONENT_CAP = 10.0


class GradScale(nn.Module):
    """P6: identity in the forward pass; a full backward hook multiplies the incoming gradient by ``scale``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_full_backward_hook(self._scale_grad)

    def _scale_grad(self, module: nn.Module, grad_input: tuple[torch.Tensor | None, ...],
                    grad_output: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor | None, ...]:
        return tuple(None if g is None else g * self.scale.to(g.dtype) for g in grad_input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def shapley_outputs(outputs: Mapping[frozenset[str], torch.Tensor], names: tuple[str, ...]
                    ) -> dict[str, torch.Tensor]:
    """phi_m from the outputs of every non-empty modality subset, with v(empty set) = 0 (so sum_m phi_m = z_full).

    Args:
        outputs: {frozenset of present modalities: (B, K) logits} for every non-empty subset of ``names``.
        names: the modalities.
    """
    m_count = len(names)
    phi = {}
    for m in names:
        others = [n for n in names if n != m]
        total = torch.zeros_like(outputs[frozenset(names)])
        for size in range(m_count):
            weight = math.factorial(size) * math.factorial(m_count - size - 1) / math.factorial(m_count)
            for subset in combinations(others, size):
                base = frozenset(subset)
                gain = outputs[base | {m}] - (outputs[base] if base else 0)
                total = total + weight * gain
        phi[m] = total
    return phi


def modality_losses(phi: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """s_m = mean_i -log max(softmax(phi_m)_i[y_i], 1e-8), stacked in the order of ``phi``, without graph."""
    with torch.no_grad():
        logp = torch.stack([torch.log_softmax(loss_precision(z.detach()), dim=1) for z in phi.values()])
        true = logp.gather(2, labels.view(1, -1, 1).expand(len(phi), -1, 1)).squeeze(2)
        return -true.clamp_min(math.log(PROB_FLOOR)).mean(dim=1)


def agm_coefficients(s: torch.Tensor, s_bar: torch.Tensor, alpha: float) -> torch.Tensor:
    """k_m = exp(alpha min(r_bar_m - r_m, 10)), r_m = exp(M/(M-1) (mean(s) - s_m)), r_bar_m from ``s_bar``.

    Args:
        s: (M,) current per-modality losses.
        s_bar: (M,) running means of the losses.
        alpha: modulation strength.
    """
    m_count = s.numel()
    gain = m_count / (m_count - 1)
    r = torch.exp(gain * (s.mean() - s))
    r_bar = torch.exp(gain * (s_bar.mean() - s_bar))
    return torch.exp(alpha * torch.clamp(r_bar - r, max=EXPONENT_CAP))


@register
class AGM(FusionMethod):
    name = "agm"
    title = "AGM"
    DATA_PARALLEL = "exact"  # modality losses all-reduced, gradients synced before clipping
    PAPER = ('Li, Li, Hu, Lei, Li, Zhou, "Boosting Multi-modal Model Performance with Adaptive Gradient Modulation", '
             'ICCV 2023, arXiv 2308.07686')
    CODE = 'GitHub lihong2303/AGM_ICCV2023, model/CREMAD_net.py GradMod; run/CREMAD_main.py, train'
    HEAD = "concat"
    HPARAMS = (
        HParam("alpha", 1.0, "Modulation strength. Official main.py default 1.0; CREMA-D 1.5 (author, lihongcs/AGM "
                             "issues #3, #5, #10; another user could not reproduce, #17); AV-MNIST 2.5 (README).",
               per_dataset={"cremad": 1.5}),
        HParam("mod_start", 0, "First modulated epoch, inclusive, 0-based (the official loop counts from 1: "
                               "official s = s - 1 here). The author's window starts at 0 (lihongcs/AGM issue #10), "
                               "i.e. at the first epoch.", low=0),
        HParam("mod_end", 1499, "Last modulated epoch, inclusive, 0-based: the author's CREMA-D window 0-1500 "
                                "(lihongcs/AGM issues #3, #10; 'a continuous process of modulation', i.e. every epoch) "
                                "on the official 1-based epochs ends at 0-based epoch 1499."),
        HParam("clip_trigger", 1.0, "Clip when some |fusion-head weight gradient| exceeds this (official train).",
               low=0.0),
        HParam("clip_norm", 1.0, "Total gradient-norm bound applied when triggered (official train: max_norm=1.0).",
               low=0.0, open_low=True),
    )

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """Whether AGM's hooks scaled a gradient: an epoch inside the window (diag ``agm_window`` 1.0), where the
        hooks take each step's k, whose mean ``k_<m>`` differs from 1 for some modality (k = exp(alpha min(r_bar - r,
        10)) is exactly 1.0 when alpha = 0 or r_bar = r; outside the window the hooks keep their last scale, 1.0
        until a window epoch set it). None for a history without ``agm_window`` (logged by older code)."""
        epochs = [r for r in history if "agm_window" in r.get("diag", {})]
        if not epochs:
            return None
        return any(r["diag"]["agm_window"] == 1.0 and any(v != 1.0 for k, v in r.get("train", {}).items()
                                                          if k.startswith("k_"))
                   for r in epochs)

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        self.scalers = nn.ModuleDict({m: GradScale() for m in self.modalities}).to(ctx.device)
        self.register_buffer("loss_mean", torch.zeros(len(self.modalities), device=ctx.device))
        self.register_buffer("iterations", torch.zeros((), dtype=torch.long, device=ctx.device))

    def subset_outputs(self, x: Mapping[str, torch.Tensor]) -> dict[frozenset[str], torch.Tensor]:
        """Logits for every non-empty modality subset: the full set in the current mode, the others in eval mode."""
        names = self.modalities
        _, z_full, _ = self.model(x)
        outputs = {frozenset(names): loss_precision(z_full)}
        was_training = self.model.training
        self.model.eval()
        for size in range(1, len(names)):
            for subset in combinations(names, size):
                _, z, _ = self.model(x, drop=[n for n in names if n not in subset])
                outputs[frozenset(subset)] = loss_precision(z)
        self.model.train(was_training)
        return outputs

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        labels = batch["label"]
        with self.ctx.autocast():
            outputs = self.subset_outputs(self.inputs(batch))
        phi = shapley_outputs(outputs, self.modalities)
        # Data-parallel: batch means over equal slices average to the global batch's mean.
        s = self.ctx.all_reduce_mean(modality_losses(phi, labels))
        k = agm_coefficients(s, self.loss_mean, self.hp.alpha)
        if self.modulating(step.epoch):
            for i, m in enumerate(self.modalities):
                self.scalers[m].scale.copy_(k[i])
        self.iterations += 1
        self.loss_mean += (s - self.loss_mean) / self.iterations
        loss = F.cross_entropy(sum(self.scalers[m](phi[m]) for m in self.modalities), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # The hooks scale linearly, so the averaged gradient is the global batch's; clip on it, as one process would.
        self.ctx.sync_gradients(self.model.parameters())
        head_grads = [p.grad for p in self.model.head.parameters() if p.dim() > 1 and p.grad is not None]
        if any(bool((g.abs() > self.hp.clip_trigger).any()) for g in head_grads):
            nn.utils.clip_grad_norm_(self.model.parameters(), self.hp.clip_norm)
        self.optimizer.step()
        return read_logs({"loss": loss, **{f"k_{m}": k[i] for i, m in enumerate(self.modalities)}})

    def modulating(self, epoch: int) -> bool:
        return self.hp.mod_start <= epoch <= self.hp.mod_end

    def on_epoch_end(self, epoch: int, loaders: Loaders) -> dict[str, float]:
        # k_<m> is logged in every epoch; this says whether the epoch's steps handed it to the hooks.
        return {"agm_window": float(self.modulating(epoch))}

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        with self.ctx.autocast():
            outputs = self.subset_outputs(self.inputs(batch))
        phi = shapley_outputs(outputs, self.modalities)
        return Prediction(outputs[frozenset(self.modalities)], phi)
