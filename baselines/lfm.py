"""LFM: facilitating multimodal classification via dynamically learning the modality gap (docs/methods/lfm.md).

Paper: Yang Yang, Fengqiang Wan, Qing-Yuan Jiang, Yi Xu, "Facilitating Multimodal Classification via Dynamically
Learning Modality Gap", NeurIPS 2024 (Advances in NeurIPS 37, pp. 62108-62122; proceedings page
``71b17f00017da0d73823ccf7fbce2d4f-Abstract-Conference``; authors and pages as the authors' lab page and later papers
cite them; no arXiv id in any source checked). Official code: GitHub njustkmg/NeurIPS24-LFM, ``Crema_epoch.py``
(``train_audio_video``, ``getAlpha_Learnable_Fitted``, ``Alignment``), ``Crema_epoch_learnable.py``
(``getAlpha_Learnable``) and ``model/AudioVideo.py`` (``AVClassifier``).

Model: two encoders with separate Linear heads (the sum head's per-modality heads); no concat head. Training loss, as
the released code computes it::

    L = 2 [alpha_cls(e) CE(z_a/2 + z_v/2, y) + alpha_al(e) Align(p_a, p_v)]
    Align = 1/2 [KL(m || p_a) + KL(m || p_v)],  m = (p_a + p_v)/2,  batch-mean

``Align`` is *not* the Jensen-Shannon divergence (1/2 [KL(p_a || m) + KL(p_v || m)]): the code passes ``log p`` as
the input and ``m`` as the target of ``F.kl_div``, which computes KL(m || p). Both vanish only at p_a = p_v. The
paper's abstract speaks of an unsupervised contrastive term; which term produced the published numbers is unknown
(an open question; see docs/methods/lfm.md), so this follows the released code. Test-time fusion: softmax(z_a/2 +
z_v/2).

Schedules (``lfm.schedule``):

- ``fitted`` (the default script): alpha_cls(e) = sum_i c_i e^i with the code's coefficients, alpha_al = 1 - alpha_cls.
  The polynomial was fitted for 200 CREMA-D epochs; a run of E epochs evaluates it at e * fit_epochs / E
  [project, flagged: the code defines no schedule for other lengths].
- ``learnable``: 16 random training rows are held out (never trained on: ``select_rows`` leaves them out); at the
  start of every epoch the first 8 give L_tot = alpha_cls CE + alpha_al Align, its gradient (with graph) and the
  Hessian-vector product with the CE gradient; a = the mean of that product over the *first parameter tensor only*
  (the first modality's conv1); alpha_al <- clip(alpha_al - lr_alpha a, 0.05, 0.95), alpha_cls = 1 - alpha_al, with
  lr_alpha = 1e-4 halved at epochs 20, 40, ... Cost: one double-backward on 8 samples per epoch (only the product's
  first block is formed, which equals the code's ``hessian_vector_prod[0]``).

Deviations: the code computes the product in train mode at epoch 0 and in eval mode afterwards (its ``val`` leaves
the model in eval mode); this always uses eval mode. The held-out rows are served with evaluation transforms.
BalanceBenchmark's LFM differs (alpha starts at {0.95, 0.05}, the hypergradient uses a quarter of a "validation"
batch, pairwise JS): it is not reproduced here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from baselines.base import (
    FusionModel,
    Loaders,
    Method,
    Prediction,
    RowSelection,
    StepInfo,
    TrainContext,
    loss_precision,
    read_logs,
)
from baselines.registry import register
from core.data import Batch, BatchLoader, TaskSpec, seed_for
from core.hparams import HParam, HParams

# Crema_epoch.py getAlpha_Learnable_Fitted, coef_alpha1 (alpha_cls); coef_alpha2 is exactly 1 minus it.
FITTED_COEFFICIENTS = (2.04623704e-01, 3.35472727e-03, 1.22989557e-04, -2.92947416e-06, 2.23835486e-08,
                       -5.39717505e-11)


def fitted_alpha_cls(epoch: float) -> float:
    """The code's fitted polynomial alpha_cls(e) (0.205 at e=0, 0.437 at 50, 0.539 at 100)."""
    return float(sum(c * epoch ** i for i, c in enumerate(FITTED_COEFFICIENTS)))


def alignment(z_a: torch.Tensor, z_v: torch.Tensor) -> torch.Tensor:
    """The code's ``Alignment``: 1/2 [KL(m || p_a) + KL(m || p_v)], m = (p_a + p_v)/2, batch-mean (not JS)."""
    p_a, p_v = torch.softmax(z_a, dim=1), torch.softmax(z_v, dim=1)
    m = 0.5 * (p_a + p_v)
    return 0.5 * (F.kl_div(F.log_softmax(z_a, dim=1), m, reduction="batchmean")
                  + F.kl_div(F.log_softmax(z_v, dim=1), m, reduction="batchmean"))


def first_block_hvp(total: torch.Tensor, direction_loss: torch.Tensor, params: Sequence[torch.nn.Parameter]
                    ) -> torch.Tensor:
    """(Hessian of ``total``) x (gradient of ``direction_loss``), restricted to the block of ``params[0]``.

    Equals ``torch.autograd.grad(grad(total), params, grad_outputs=grad(direction_loss))[0]`` of the official code
    without forming the other blocks.
    """
    g_total = torch.autograd.grad(total, params, create_graph=True)
    g_dir = torch.autograd.grad(direction_loss, params, retain_graph=True)
    pairs = [(g, v) for g, v in zip(g_total, g_dir) if g.requires_grad]
    (hvp,) = torch.autograd.grad([g for g, _ in pairs], [params[0]], grad_outputs=[v for _, v in pairs],
                                 allow_unused=True)
    return torch.zeros_like(params[0]) if hvp is None else hvp


def learnable_alpha_step(alpha_align: float, hvp_mean: float, epoch: int, lr: float, halve_every: int,
                         clip: Sequence[float]) -> float:
    """One ``getAlpha_Learnable`` update: lr halves every ``halve_every`` epochs; the result is clipped."""
    step_lr = lr * 0.5 ** (epoch // halve_every)
    return float(min(max(alpha_align - step_lr * hvp_mean, clip[0]), clip[1]))


@register
class LFM(Method):
    name = "lfm"
    title = "LFM"
    PAPER = ('Yang Yang et al., "Facilitating Multimodal Classification via Dynamically Learning Modality Gap", '
             'NeurIPS 2024')
    CODE = ('GitHub njustkmg/NeurIPS24-LFM, Crema_epoch.py (train_audio_video, getAlpha_Learnable_Fitted, Alignment); '
            'Crema_epoch_learnable.py (getAlpha_Learnable)')
    MODALITIES = (2,)
    DATA_PARALLEL = "exact"  # batch-mean losses; alpha from the same held-out rows on every rank
    HPARAMS = (
        HParam("schedule", "fitted", "alpha schedule: 'fitted' polynomial (Crema_epoch.py, the default script) or "
                                     "'learnable' hypergradient (Crema_epoch_learnable.py).",
               choices=("fitted", "learnable")),
        HParam("fit_epochs", 200, "Epoch count the fitted polynomial was fitted for (CREMA-D, 200). A run of E epochs "
                                  "evaluates it at e*fit_epochs/E [project, flagged]; E=200 gives the code exactly.",
               low=1),
        HParam("holdout", 16, "Learnable: training rows held out and removed from training "
                              "(Crema_epoch_learnable.py, randperm(n)[:16])."),
        HParam("hvp_samples", 8, "Learnable: the first rows of the hold-out used each epoch (half_size = 16 // 2).",
               low=1),
        HParam("alpha_align_init", 0.95, "Learnable: initial alpha_al (cls_k = [0.05, 0.95])."),
        HParam("alpha_lr", 1e-4, "Learnable: lr_alpha (getAlpha_Learnable default 1e-4)."),
        HParam("alpha_lr_halve_every", 20, "Learnable: lr_alpha halves at epochs 20, 40, ... (epoch % 20 == 0).",
               low=1),
        HParam("alpha_clip", [0.05, 0.95], "Learnable: alpha_al is clipped to this range (getAlpha_Learnable)."),
    )

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        # The sum head's per-modality Linear heads are AVClassifier's cls_a / cls_v; its fused output is unused.
        self.model = FusionModel(task, ctx.model_hp, "sum").to(ctx.device)
        self.optimizer = ctx.make_optimizer(self.model.parameters())
        self.register_buffer("alpha_align", torch.tensor(float(hp.alpha_align_init), device=ctx.device))

    def coefficients(self, epoch: int) -> tuple[float, float]:
        """(alpha_cls, alpha_al) for ``epoch``."""
        if self.hp.schedule == "learnable":
            align = float(self.alpha_align)
            return 1.0 - align, align
        cls = fitted_alpha_cls(epoch * self.hp.fit_epochs / self.ctx.epochs)
        return cls, 1.0 - cls

    def holdout_rows(self, loader: BatchLoader) -> tuple[np.ndarray, np.ndarray]:
        """(kept, held-out in draw order), reproducible for the run seed."""
        rng = np.random.default_rng(seed_for(self.ctx.train_hp.seed, "lfm_holdout"))
        rows = loader.base_rows
        if self.hp.holdout >= len(rows):
            raise ValueError(f"lfm.holdout={self.hp.holdout} leaves no training rows (train split has {len(rows)})")
        held = rows[rng.permutation(len(rows))[:self.hp.holdout]]
        return np.setdiff1d(rows, held), held

    def select_rows(self, epoch: int, loaders: Loaders) -> RowSelection | None:
        if self.hp.schedule != "learnable":
            return None
        return RowSelection(self.holdout_rows(loaders.train)[0])

    def on_epoch_start(self, epoch: int, loaders: Loaders) -> None:
        if self.hp.schedule != "learnable":
            return
        _, held = self.holdout_rows(loaders.train)
        batch = self._gather(loaders.train, held[:self.hp.hvp_samples])
        self.model.eval()
        with torch.enable_grad():
            _, _, z_uni = self.model(self.inputs(batch))
            z_a, z_v = (loss_precision(z_uni[m]) for m in self.modalities)
            ce = F.cross_entropy(0.5 * z_a + 0.5 * z_v, batch["label"])
            cls, align = self.coefficients(epoch)
            total = cls * ce + align * alignment(z_a, z_v)
            params = [p for p in self.model.parameters() if p.requires_grad]
            hvp_mean = first_block_hvp(total, ce, params).mean().item()
        self.model.train()
        new = learnable_alpha_step(align, hvp_mean, epoch, self.hp.alpha_lr, self.hp.alpha_lr_halve_every,
                                   self.hp.alpha_clip)
        self.alpha_align.fill_(new)

    def _gather(self, loader: BatchLoader, rows: np.ndarray) -> Batch:
        batch = loader.gather(rows)
        batch["label"] = torch.from_numpy(loader.labels[rows])
        batch = {k: v.to(self.ctx.device) for k, v in batch.items()}
        return loader.augment(batch, loader.generator("lfm_alpha"), False)

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        cls, align = self.coefficients(step.epoch)
        with self.ctx.autocast():
            _, _, z_uni = self.model(self.inputs(batch))
        z_a, z_v = (loss_precision(z_uni[m]) for m in self.modalities)
        ce = F.cross_entropy(0.5 * z_a + 0.5 * z_v, batch["label"])
        al = alignment(z_a, z_v)
        loss = 2.0 * (cls * ce + align * al)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return read_logs({"loss": loss, "ce": ce, "align": al, "alpha_cls": cls})

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        with self.ctx.autocast():
            _, _, z_uni = self.model(self.inputs(batch))
        z_uni = {m: loss_precision(v) for m, v in z_uni.items()}
        return Prediction(0.5 * sum(z_uni.values()), z_uni)

    def on_epoch_end(self, epoch: int, loaders: Loaders) -> dict[str, float]:
        cls, _ = self.coefficients(epoch)
        return {"lfm_alpha_cls": cls}
