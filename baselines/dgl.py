"""DGL: disentangled gradient learning, encoders trained by unimodal losses, the fusion head by the fused loss only.

Paper: Shicai Wei, Chunbo Luo, Yang Luo, "Boosting Multimodal Learning via Disentangled Gradient Learning", ICCV
2025, arXiv 2507.10213 (abstract and Fig. 1; the equations were not available to this implementation). Official code:
GitHub shicaiwei123/ICCV2025-GDL, commit b72a55f (2025-07-21): ``main_dgl.py`` ``train_epoch``,
``models/fusion_modules.py`` ``ConcatFusion_DGL``, ``models/basic_model.py`` ``AVClassifier_DGL``, ``cramed_dgl.sh``.

The paper's argument: through the fusion module, the gradient a multimodal loss sends to each encoder is smaller than
a unimodal loss would send, so even the dominant modality is under-optimised. DGL therefore cuts the multimodal
loss's gradient to the encoders and replaces it with a unimodal loss's, and cuts the unimodal losses' gradient to the
fusion module. Per step, with h_m the encoders' features and W, b the concat classifier:

1. z = W [h_a; h_v].detach() + b (fused logits on detached features: no encoder gradient);
   z_m = W [h_m; 0] + b (unimodal logits through the same classifier with the other features zeroed, full bias).
2. Encoders: the gradient of alpha * sum_m CE(z_m). Classifier: the gradient of CE(z) only (the official code
   backpropagates the unimodal loss first, sets every ``fusion_module`` gradient to None, then backpropagates CE(z)).
3. The global gradient norm is clipped to ``clip_norm`` (official ``clip_grad_norm_(max_norm=40)``), then one step.

Prediction: the fused logits z; per modality, z_m. The paper and the official code agree on the rule as far as the
abstract and README state it (unimodal regularisation with the shared classifier, multimodal gradient truncation,
unimodal gradient truncation), so there are no variants; the clipping and alpha are the released script's. The
released ``ConcatFusion_DGL`` also builds an unused ``fc_auxi`` layer, not reproduced. Two modalities only, as every
released fusion module; the rule itself would extend to more.

Cost: as joint training plus one extra classifier pass per modality and a second (head-only) backward; no extra
parameters. Data-parallel: gradients are averaged before the global-norm clip, so the step is the global batch's.

Official recipe (CREMA-D, ``cramed_dgl.sh``): ResNet-18 encoders from scratch, SGD lr 2e-3, momentum 0.9, weight
decay 1e-4, batch 64, 100 epochs, ``MultiStepLR([70], 0.1)`` stepped at the start of each epoch; alpha 4 (and 5 in a
second line of the script): ``benchmarks/configs/dgl/cremad.yaml``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import (
    FusionModel,
    Method,
    Prediction,
    StepInfo,
    TrainContext,
    loss_precision,
    read_logs,
)
from baselines.registry import register
from core.data import Batch, TaskSpec
from core.hparams import HParam, HParams


@register
class DGL(Method):
    """Concat head on detached features; encoders learn from unimodal CEs through the shared classifier only."""

    name = "dgl"
    title = "DGL"
    PAPER = ('Shicai Wei, Chunbo Luo, Yang Luo, "Boosting Multimodal Learning via Disentangled Gradient Learning", '
             'ICCV 2025, arXiv 2507.10213')
    CODE = ("GitHub shicaiwei123/ICCV2025-GDL @b72a55f, main_dgl.py, train_epoch (+ models/fusion_modules.py "
            "ConcatFusion_DGL)")
    MODALITIES = (2,)
    DATA_PARALLEL = "exact"  # gradients are averaged before the global-norm clip; the losses are batch means
    HPARAMS = (
        HParam("alpha", 4.0, "Weight of the unimodal losses that train the encoders: official --alpha default 4.0 "
                             "and cramed_dgl.sh --alpha 4 (a second line runs 5); ks_dgl.sh runs 2 and 3, its "
                             "comments scoring 3 best (74.78 for 2; 75.10 and 76.28 for 3); vggsound.sh 2.0. The "
                             "README notes the best value depends on the software stack.",
               per_dataset={"cremad": 4.0, "kinetics_sounds": 3.0, "vggsound": 2.0}),
        HParam("clip_norm", 40.0, "Global gradient-norm clip every step; 0 disables. Official main_dgl.py "
                                  "nn.utils.clip_grad_norm_(max_norm=40).", low=0.0),
    )

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        self.model = FusionModel(task, ctx.model_hp, "concat").to(ctx.device)
        self.optimizer = ctx.make_optimizer(self.model.parameters())

    def forward_all(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Fused logits on detached features and the shared classifier's logits on each zero-masked modality."""
        with self.ctx.autocast():
            h = self.model.features(self.inputs(batch))
            z = self.model.head({m: v.detach() for m, v in h.items()})[0]
            z_uni = self.model.unimodal_logits(h, None)
        return loss_precision(z), {m: loss_precision(v) for m, v in z_uni.items()}

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        y = batch["label"]
        z, z_uni = self.forward_all(batch)
        loss_f = F.cross_entropy(z, y)
        loss_uni = {m: F.cross_entropy(v, y) for m, v in z_uni.items()}
        self.optimizer.zero_grad(set_to_none=True)
        (self.hp.alpha * sum(loss_uni.values())).backward(retain_graph=True)
        # Unimodal gradient truncation: the classifier keeps only the fused loss's gradient.
        for p in self.model.head.parameters():
            p.grad = None
        loss_f.backward()
        params = list(self.model.parameters())
        # The clip uses the global norm: it must act on the global batch's gradient.
        self.ctx.sync_gradients(params)
        if self.hp.clip_norm > 0:
            nn.utils.clip_grad_norm_(params, self.hp.clip_norm)
        self.optimizer.step()
        logs = read_logs({"loss_fused": loss_f, **{f"loss_{m}": v for m, v in loss_uni.items()}})
        return {"loss": logs["loss_fused"] + self.hp.alpha * sum(logs[f"loss_{m}"] for m in loss_uni), **logs}

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        z, z_uni = self.forward_all(batch)
        return Prediction(z, z_uni)
