"""Greedy: balancing the conditional learning speed of MMTM-fused streams (docs/methods/greedy.md).

Paper: Nan Wu, Stanislaw Jastrzebski, Kyunghyun Cho, Krzysztof J. Geras, "Characterizing and Overcoming the Greedy
Nature of Learning in Multi-modal Deep Neural Networks", ICML 2022, arXiv 2202.05306. Official code: GitHub
nyukat/greedy_multimodal_learning, ``src/balanced_mmtm.py`` (``MMTM_mitigate``) and ``src/callbacks.py``
(``Bias_Mitigation_Strong``); it covers ModelNet40 and NVGesture only, so the audio-visual placement follows
BalanceBenchmark (BB, GitHub GeWu-Lab/BalanceBenchmark @4909c17, ``balancemm/models/avclassify_model.py``,
``BaseClassifier_GreedyModel`` and ``MMTM``; ``balancemm/trainer/Greedy_trainer.py``).

Architecture (P13): two ResNet trunks built from ``baselines.networks.ResNetTrunk`` (stem + 4 stages) with an MMTM
block after each of stages 1-4 (BB placement, ratio 4; the official ModelNet40 model ``src/model.py``
``MMTM_MVCNN`` has blocks after stages 2-4 only, ``mmtm_stages=[2,3,4]``, and averages two per-view fc outputs
instead of a concat head). MMTM: squeeze = channel means of both streams, concatenated;
excitation = ReLU(Linear(sum d -> 2 sum d / ratio)); per-modality gate sigmoid(Linear(. -> d_m)) multiplies that
stream's channels. Frames (B, 3, T, H, W) are folded into the batch, so the visual squeeze is the mean over (T, H', W')
and the visual gate (one per clip) is broadcast over its T frames. The pooled features go to a concat head; the
per-modality outputs are its split-head logits. Each block keeps the running (cumulative) mean of each gate.

Conditional learning speed (after backward, before the step): for each modality, r = sum ||g||^2 / sum ||w||^2 over
the MMTM ("bypass") parameters attributed to it (its excitation layer plus the shared squeeze layer of every block)
and over its main branch (its trunk); cumulative sums M_bypass,m and M_main,m; BDR_m = log10(M_bypass,m / M_main,m)
and d = BDR_0 - BDR_1. Before ``starting_epoch`` (counted from 0; the official callback's starting_epoch=2 counts from
1, as its ``Model.train_loop`` does, so curation starts in the second epoch) the sums accumulate and nothing is curated.
From then on, when not in curation mode: if |d| > epsilon, enter curation mode for ``window`` steps caring for modality
1 if d < 0 and modality 0 if d > 0; the sums are not updated during curation. In curation mode the cared-for modality's
gates are replaced by their running averages, cutting the cross-modal flow into it.

Deviations [project]: running averages are updated only by training forwards (official and BB update them in every
forward, evaluation included); prediction uses the live gates (BB's validation call). The official
``MMTM_mitigate`` updates the second stream's running average from the FIRST stream's gate (a bug BB fixes); this
follows BB. BB hard-codes B = 64 in the visual reshape (docs/methods/greedy.md); here B comes from the batch. Official
recipe: epsilon 0.01, window 5, lr 0.1, batch 8, momentum 0 (the lr/batch/momentum are ``train.*`` settings); BB uses
epsilon 0.001 and no starting epoch (``variant=bb``). BB's released A/V Greedy model does not run as released (the
frames are unpacked as 4-D, the running averages are reset to an empty dict in every forward; docs/methods/greedy.md).
Only spectrogram and frames modalities are supported (the MMTM blocks sit between conv stages).

Cost: one forward/backward as joint training plus 4 small MMTM blocks, and one pass over all parameter and gradient
norms per step (outside curation).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import Method, Prediction, StepInfo, TrainContext, logged_values, loss_precision, read_logs
from baselines.heads import ConcatHead
from baselines.networks import ResNetTrunk, init_model
from baselines.registry import register
from core.data import Batch, TaskSpec
from core.hparams import HParam, HParams


def speed_ratio(params: Iterable[nn.Parameter]) -> torch.Tensor:
    """sum ||g||^2 / sum ||w||^2 over a parameter group (0-dim tensor); a missing gradient counts as zero."""
    params = list(params)
    with torch.no_grad():
        w = torch.stack([loss_precision(p.detach()).pow(2).sum() for p in params]).sum()
        grads = [loss_precision(p.grad).pow(2).sum() for p in params if p.grad is not None]
        g = torch.stack(grads).sum() if grads else torch.zeros_like(w)
    return g / w


def bdr_gap(bypass: Sequence[float], main: Sequence[float]) -> float:
    """d = BDR_0 - BDR_1 with BDR_m = log10(bypass_m / main_m) of the cumulative speed sums; 0 while any is 0."""
    if min(*bypass, *main) <= 0:
        return 0.0
    return math.log10(bypass[0] / main[0]) - math.log10(bypass[1] / main[1])


def curation_target(d: float, epsilon: float) -> int | None:
    """The modality to care for (official ``Bias_Mitigation_Strong``): 1 if d < -eps, 0 if d > eps, else None."""
    if abs(d) <= epsilon:
        return None
    return 1 if d < 0 else 0


class MMTM(nn.Module):
    """Cross-modal squeeze-and-excitation for two or more streams, with running averages of the gates."""

    def __init__(self, dims: dict[str, int], ratio: int) -> None:
        super().__init__()
        total = sum(dims.values())
        hidden = int(2 * total / ratio)
        self.names = tuple(dims)
        self.squeeze = nn.Linear(total, hidden)
        self.excite = nn.ModuleDict({m: nn.Linear(hidden, d) for m, d in dims.items()})
        for m, d in dims.items():
            self.register_buffer(f"avg_{m}", torch.zeros(d))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        # ``steps`` on the host, so the average divides by a Python int as before without a device read per forward
        # (dividing by the device tensor instead changes the last bit on CUDA, which divides by a Python number
        # through its reciprocal); None after a checkpoint load until the next forward reads ``steps`` once.
        self._host_steps: int | None = 0

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._host_steps = None

    def forward(self, squeezed: dict[str, torch.Tensor], care: str | None = None) -> dict[str, torch.Tensor]:
        """Gates (B, d_m) from the channel means; the cared-for modality gets its running average instead."""
        e = F.relu(self.squeeze(torch.cat([squeezed[m] for m in self.names], dim=1)))
        gates = {m: torch.sigmoid(self.excite[m](e)) for m in self.names}
        if self.training:
            with torch.no_grad():
                if self._host_steps is None:
                    self._host_steps = int(self.steps)
                n = self._host_steps
                for m in self.names:
                    avg = getattr(self, f"avg_{m}")
                    avg.copy_((loss_precision(gates[m].detach()).mean(0) + avg * n) / (n + 1))
                self.steps += 1
                self._host_steps = n + 1
        if care is not None:
            gates[care] = getattr(self, f"avg_{care}").to(gates[care].dtype).expand_as(gates[care])
        return gates


class GreedyNet(nn.Module):
    """Two ResNet trunks with an MMTM block after each stage and a concat head."""

    def __init__(self, task: TaskSpec, model_hp: HParams, ratio: int, stages: Sequence[int] = (1, 2, 3, 4)) -> None:
        super().__init__()
        if not stages or not set(stages) <= {1, 2, 3, 4}:
            raise ValueError(f"greedy.mmtm_stages must be a non-empty subset of [1, 2, 3, 4], got {list(stages)}")
        for spec in task.modalities:
            if spec.kind not in ("spectrogram", "frames"):
                raise ValueError(f"greedy puts MMTM blocks between conv stages; modality {spec.name!r} of dataset "
                                 f"{task.dataset!r} is {spec.kind!r}, only spectrogram and frames are supported")
        self.names = task.names
        width, blocks = model_hp.width, tuple(model_hp.blocks)
        self.trunks = nn.ModuleDict({s.name: ResNetTrunk(s.shape[0], width, blocks) for s in task.modalities})
        # Keyed by the 1-based stage the block follows.
        self.mmtm = nn.ModuleDict({str(i): MMTM({m: width * 2 ** (i - 1) for m in self.names}, ratio)
                                   for i in sorted(stages)})
        self.head = ConcatHead({m: t.out_dim for m, t in self.trunks.items()}, task.num_classes)
        init_model(self, model_hp)

    def forward(self, x: dict[str, torch.Tensor], care: str | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feats, frames = {}, {}
        batch = x[self.names[0]].shape[0]
        for m in self.names:
            inp = x[m]
            frames[m] = inp.shape[2] if inp.dim() == 5 else 1
            if inp.dim() == 5:
                inp = inp.permute(0, 2, 1, 3, 4).flatten(0, 1)
            feats[m] = self.trunks[m].stem(inp)

        def pooled(m: str) -> torch.Tensor:
            f = feats[m]
            return f.reshape(batch, frames[m], f.shape[1], -1).mean(dim=(1, 3))

        for i in range(4):
            for m in self.names:
                feats[m] = self.trunks[m].stages[i](feats[m])
            if str(i + 1) not in self.mmtm:
                continue
            gates = self.mmtm[str(i + 1)]({m: pooled(m) for m in self.names}, care)
            for m in self.names:
                feats[m] = feats[m] * gates[m].repeat_interleave(frames[m], dim=0)[:, :, None, None]
        z, z_uni = self.head({m: pooled(m) for m in self.names})
        return z, z_uni


@register
class Greedy(Method):
    name = "greedy"
    title = "Greedy"
    DATA_PARALLEL = "approximate"  # curation decisions from each rank's local gradient speeds
    PAPER = ('Wu, Jastrzebski, Cho, Geras, "Characterizing and Overcoming the Greedy Nature of Learning in '
             'Multi-modal Deep Neural Networks", ICML 2022, arXiv 2202.05306')
    CODE = ('GitHub nyukat/greedy_multimodal_learning, src/callbacks.py, Bias_Mitigation_Strong; src/balanced_mmtm.py, '
            'MMTM_mitigate (A/V placement: BB balancemm/models/avclassify_model.py, BaseClassifier_GreedyModel)')
    MODALITIES = (2,)
    HPARAMS = (
        HParam("epsilon", 0.01, "Curation threshold on |d| (official configs; BB 0.001).", low=0.0),
        HParam("window", 5, "Curation steps per trigger (official curation_windowsize 5; BB window_size 5).", low=1),
        HParam("starting_epoch", 1, "First epoch with curation, counted from 0 (official Bias_Mitigation_Strong "
                                    "starting_epoch=2 counts from 1: Model.train_loop runs epochs 1..n; BB has none, "
                                    "i.e. 0).", low=0),
        HParam("ratio", 4, "MMTM reduction ratio: hidden = 2 (d_0 + d_1) / ratio (BB and official ratio 4).", low=1),
        HParam("mmtm_stages", [1, 2, 3, 4], "ResNet stages followed by an MMTM block: BB's A/V model uses 1-4; the "
                                            "official ModelNet40 model (src/model.py, MMTM_MVCNN) uses 2-4."),
    )
    VARIANTS = {"bb": {"epsilon": 0.001, "starting_epoch": 0}}

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """Whether Greedy curated: an epoch whose mean ``curating`` (per step 1.0 when the cared-for modality's MMTM
        gates were replaced by their running averages, else 0.0) is above 0. Curation waits for ``starting_epoch``
        and for |d| > epsilon. None for a history without ``curating``."""
        shares = logged_values(history, "train", "curating")
        return any(v > 0.0 for v in shares) if shares else None

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        self.net = GreedyNet(task, ctx.model_hp, hp.ratio, hp.mmtm_stages)
        # Cumulative speeds: bypass_0, bypass_1, main_0, main_1 (float64: they grow over the whole run).
        self.register_buffer("speeds", torch.zeros(4, dtype=torch.float64))
        self.register_buffer("d_bdr", torch.zeros((), dtype=torch.float64))
        self.register_buffer("curating", torch.zeros((), dtype=torch.bool))
        self.register_buffer("caring", torch.zeros((), dtype=torch.long))
        self.register_buffer("curation_step", torch.zeros((), dtype=torch.long))
        self.to(ctx.device)
        self.optimizer = ctx.make_optimizer(self.parameters())
        squeeze = [p for block in self.net.mmtm.values() for p in block.squeeze.parameters()]
        self.bypass = {m: squeeze + [p for block in self.net.mmtm.values() for p in block.excite[m].parameters()]
                       for m in self.modalities}
        self.main = {m: list(self.net.trunks[m].parameters()) for m in self.modalities}

    def measure(self) -> float:
        """Add this step's speeds to the cumulative sums and return d = BDR_0 - BDR_1."""
        groups = [self.bypass[m] for m in self.modalities] + [self.main[m] for m in self.modalities]
        self.speeds += torch.stack([speed_ratio(g) for g in groups]).double()
        s = self.speeds.tolist()
        d = bdr_gap(s[:2], s[2:])
        self.d_bdr.fill_(d)
        return d

    def after_backward(self, epoch: int) -> None:
        """The official ``on_backward_end``: measure, then enter, continue or leave curation mode."""
        if epoch < self.hp.starting_epoch:
            self.measure()
            self.curating.fill_(False)
            self.caring.fill_(0)
        elif not self.curating:
            target = curation_target(self.measure(), self.hp.epsilon)
            self.curating.fill_(target is not None)
            self.caring.fill_(target or 0)
            self.curation_step.fill_(0)
        else:
            self.curation_step += 1
            if self.curation_step.item() == self.hp.window:
                self.curating.fill_(False)

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        care = self.modalities[self.caring.item()] if self.curating else None
        with self.ctx.autocast():
            z, _ = self.net(self.inputs(batch), care)
            loss = F.cross_entropy(loss_precision(z), batch["label"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.after_backward(step.epoch)
        self.optimizer.step()
        return read_logs({"loss": loss, "d_bdr": self.d_bdr, "curating": float(care is not None)})

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        with self.ctx.autocast():
            z, z_uni = self.net(self.inputs(batch))
        return Prediction(loss_precision(z), {m: loss_precision(v) for m, v in z_uni.items()})
