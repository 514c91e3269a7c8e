"""PMR: prototypical modal rebalance (docs/methods/pmr.md).

Paper: Yunfeng Fan, Wenchao Xu, Haozhao Wang, Junxiao Wang, Song Guo, "PMR: Prototypical Modal Rebalance for
Multimodal Learning", CVPR 2023, arXiv 2211.07089. Official code: GitHub fanyunfeng-bit/Modal-Imbalance-PMR,
``main_Prototype_grad.py`` (``calculate_prototype``, ``train_epoch``, ``EU_dist``).

Prototypes (P9): c_m^k = mean of h_m over the class-k samples of the first floor(N_batches / 10) batches (at least
one) of the training loader, computed in eval mode under no_grad once before training and again after every epoch.
For AVE the official code computes them from every batch of the validation split instead (``calculate_prototype``
with ``val_dataloader``, its 10% cut skipped for AVE); ``prototype_split: val`` does that, on any dataset with a
validation split. The default keeps the paper's training-set class means.
After epochs >= 1 they are smoothed, c <- (1 - mu) c_new + mu c_old; the computations before training and after
epoch 0 are used as they are (the official ``if epoch <= 0`` branch). A class absent from those batches keeps its
previous prototype (zero before the first computation); the official code divides by a zero count there and gets NaN.
The batches are the first batches of the epoch's shuffled order (the runner's loader), so the pass after epoch e sees
the first batches epoch e trained on, where the official code draws a fresh shuffle.

Per step: L = CE(z, y). Inside mod_start <= epoch <= mod_end (inclusive): prototype logits pi_m,k = -||h_m - c_m^k||_2
(Euclidean, not squared; ``torch.cdist``), s_m^p = sum over the batch of softmax(pi_m)[y], rho = s_a^p / s_v^p; if
rho > 1 the visual (weaker) modality gets + alpha CE(pi_v, y), if rho < 1 the audio one gets + alpha CE(pi_a, y), at
rho = 1 nothing. Prototypes are constants, so the term's gradient flows into h_weak and its encoder only.

Not implemented: the paper's prototype-based entropy regulariser for the dominant modality ("during the early
training stage to prevent premature convergence", abstract). The released ``main_Prototype_grad.py`` does not contain
it (``bash.sh`` calls a ``main_Proto_PER.py`` that is not in the repository), and the paper's method section, which
would pin down its distribution, coefficient and duration, could not be read here; only the abstract was available.

Heads: the loss does not use per-modality logits, so any head works (``head`` knob). With FiLM/gated heads the
official code falls back to z_m = z for its logging; evaluation here uses the shared per-modality logits instead
(split head, or the fused output with the other modality's features zeroed).

Cost: a B x K distance matrix per modality per step, plus a no-grad pass over 10% of the training batches per epoch
(over the whole validation split with ``prototype_split: val``).

BB (``balancemm/trainer/PMR_trainer.py``) uses alpha 0.6, mu 0.5 and modulation epochs 0-80, with the same rule;
it smooths the prototypes one epoch earlier (``ema_from: 0``).

Backbone (``backbone`` knob; variant ``official_compat``): the official ``models/basic_model.py`` ``AVClassifier``
builds ``models/backbone.py`` ``resnet18`` with its default ``compress=True``, which inserts a bottleneck between
``layer2`` and ``layer3`` of both encoders: ``compress_layer`` = four 3x3 stride-2 convolutions (C -> C -> ReLU -> C ->
4C -> ReLU, C = layer2's 128 channels, with bias, padding 1, 1, 0, 0) that squeeze the feature map to about 1 x 1,
and ``recover_layer`` = four transposed convolutions (4C -> C -> C -> C -> C, no activation) that re-expand it to the
layer2 size of the official inputs: 28 x 28 for 224 x 224 frames (kernels 3/1, 3/2, 2/2, 2/2 as size/stride) and
33 x 38 for the 257 x 299 CREMA-D spectrogram (kernels 4/1, 2/2, (2,4)/2, (3,4)/2). The paper describes a plain
ResNet-18, so ``backbone=resnet18`` is the default and ``backbone=compress`` rebuilds the official encoders: the same
layers scaled to ``model.width`` (C = 2 x width) on the shared trunk, audio (spectrogram) and visual (frames) kinds as
in the official code; the official init (Kaiming-normal fan-out on the convolutions, PyTorch defaults on the
transposed ones) is ``model.init=ogm``'s. The bottleneck needs a layer2 map of at least 25 x 25 (inputs of about
193 x 193 and more); the recovered map has the official fixed size for inputs whose bottleneck is 1 x 1 and is larger
otherwise, as in the official code.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import (
    FusionMethod,
    FusionModel,
    Loaders,
    Method,
    StepInfo,
    TrainContext,
    confidence_scores,
    logged_values,
    loss_precision,
    read_logs,
)
from baselines.networks import FramesEncoder, SpectrogramEncoder, init_model
from baselines.registry import register
from core.data import Batch, BatchLoader, TaskSpec
from core.hparams import HParam, HParams, variant_param


def prototype_logits(h: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """pi_k = -||h - c_k||_2 for features (B, d) and prototypes (K, d), as (B, K); exact distances (no mm trick)."""
    return -torch.cdist(loss_precision(h), loss_precision(prototypes), compute_mode="donot_use_mm_for_euclid_dist")


def weaker_modality(scores: Mapping[str, torch.Tensor]) -> str | None:
    """The modality that gets PMR's prototypical CE: the second if s_1^p / s_2^p > 1, the first if < 1, else None."""
    if len(scores) != 2:
        raise ValueError(f"PMR's ratio is defined for 2 modalities, got {sorted(scores)}")
    (first, s_a), (second, s_v) = scores.items()
    ratio = (s_a / s_v).item()
    if ratio > 1:
        return second
    if ratio < 1:
        return first
    return None


# Transposed-convolution (kernel, stride) per stage of the official recover_layer, per modality kind.
_RECOVER = {"audio": ((4, 1), (2, 2), ((2, 4), 2), ((3, 4), 2)), "visual": ((3, 1), (3, 2), (2, 2), (2, 2))}
_MIN_BOTTLENECK_INPUT = 25


class CompressRecover(nn.Module):
    """The official PMR ``compress_layer`` + ``recover_layer`` on a (N, C, H, W) layer2 map (``models/backbone.py``)."""

    def __init__(self, channels: int, kind: str) -> None:
        super().__init__()
        c = channels
        self.compress = nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1), nn.Conv2d(c, c, 3, stride=2, padding=1),
                                      nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, stride=2, padding=0),
                                      nn.Conv2d(c, 4 * c, 3, stride=2, padding=0), nn.ReLU(inplace=True))
        widths = (4 * c, c, c, c, c)
        self.recover = nn.Sequential(*(nn.ConvTranspose2d(widths[i], widths[i + 1], kernel, stride=stride)
                                       for i, (kernel, stride) in enumerate(_RECOVER[kind])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < _MIN_BOTTLENECK_INPUT:
            raise ValueError(f"pmr.backbone=compress needs a layer2 feature map of at least {_MIN_BOTTLENECK_INPUT} x "
                             f"{_MIN_BOTTLENECK_INPUT}, got {tuple(x.shape[-2:])}: inputs of about 193 x 193 or more "
                             "(the official code runs 224 x 224 frames and 257 x 299 spectrograms)")
        return self.recover(self.compress(x))


def add_compress_recover(model: nn.Module, model_hp: HParams) -> None:
    """Insert ``CompressRecover`` after the second stage of every encoder's ResNet trunk (official PMR backbone)."""
    for name, enc in model.encoders.items():
        if isinstance(enc, SpectrogramEncoder):
            kind = "audio"
        elif isinstance(enc, FramesEncoder):
            kind = "visual"
        else:
            raise ValueError(f"pmr.backbone=compress needs ResNet-18 trunks (spectrogram or resnet18 frames "
                             f"encoders); modality {name!r} has {type(enc).__name__}")
        stages = enc.trunk.stages
        channels = stages[1][-1].conv2.out_channels
        block = CompressRecover(channels, kind).to(next(stages.parameters()).device)
        init_model(block, model_hp)
        stages.insert(2, block)


_VARIANTS = {"official_compat": {"backbone": "compress"}}


@register
class PMR(FusionMethod):
    name = "pmr"
    title = "PMR"
    # The first prototypes come from each rank's own shard (used through epoch 0), later ones from rank 0's after the
    # runner's epoch-end broadcast.
    DATA_PARALLEL = "approximate"  # weaker modality picked per rank from its slice; prototypes per rank, see above
    PAPER = ('Fan, Xu, Wang, Wang, Guo, "PMR: Prototypical Modal Rebalance for Multimodal Learning", CVPR 2023, '
             'arXiv 2211.07089')
    CODE = 'GitHub fanyunfeng-bit/Modal-Imbalance-PMR, main_Prototype_grad.py, train_epoch / calculate_prototype'
    MODALITIES = (2,)
    HPARAMS = (
        HParam("alpha", 1.0, "Weight of the prototypical CE on the weaker modality. Official default 1.0; CREMA-D "
                             "and AVE concat runs in bash.sh use 2.0 (CREMA-D FiLM/gated runs 3.0); BB 0.6.",
               per_dataset={"cremad": 2.0, "ave": 2.0}),
        HParam("mu", 0.2, "Prototype EMA coefficient on the old prototypes (official --momentum_coef 0.2; CREMA-D "
                          "and AVE bash.sh 0.0; BB 0.5).", per_dataset={"cremad": 0.0, "ave": 0.0}),
        HParam("ema_from", 1, "First epoch after which the new prototypes are smoothed with the old: 1 = official "
                              "(calculate_prototype(epoch) after epoch e, smoothing for e > 0); 0 = BB, whose "
                              "PMR_trainer computes them at epoch e's start, smoothing for e > 0, so the prototypes "
                              "after epoch 0 already blend with the untrained model's.", low=0),
        HParam("mod_start", 0, "First epoch with the prototypical term, inclusive (official --modulation_starts 0)."),
        HParam("mod_end", 100, "Last epoch with the prototypical term, inclusive (official default 100; CREMA-D "
                               "and AVE bash.sh 70; BB 80).", per_dataset={"cremad": 70, "ave": 70}),
        HParam("prototype_split", "train", "Split of the prototype pass: train = the first floor(N_batches/10) "
                                           "batches of the training loader (paper: training-set class means; the "
                                           "official code for CREMA-D); val = every batch of the validation split, "
                                           "as the official main_Prototype_grad.py does for AVE.",
               choices=("train", "val")),
        HParam("head", "concat", "Fusion head (official --fusion_method: concat in the CREMA-D runs).",
               choices=("concat", "sum", "film", "gated")),
        HParam("backbone", "resnet18", "'resnet18' = the plain ResNet-18 the paper describes; 'compress' = the "
                                       "official models/backbone.py resnet18(compress=True): a conv bottleneck "
                                       "(compress_layer + recover_layer) between layer2 and layer3 of each encoder.",
               choices=("resnet18", "compress")),
        variant_param(_VARIANTS, "paper = plain ResNet-18 encoders; official_compat = the official backbone with "
                                 "compress/recover layers (GitHub fanyunfeng-bit/Modal-Imbalance-PMR, "
                                 "models/backbone.py)."),
    )
    VARIANTS = _VARIANTS
    HELD_OUT_KEY = "prototype_split"

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """Whether PMR's prototypical CE entered some step's loss: an epoch whose mean ``proto_applied`` (per step
        1.0 with the term, 0.0 without: outside the window, at rho = 1 or with alpha = 0) is above 0. None for a
        history without ``proto_applied`` (logged by older code)."""
        shares = logged_values(history, "train", "proto_applied")
        return any(v > 0.0 for v in shares) if shares else None

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        # FusionMethod's model and optimizer, with the official bottleneck inserted before the optimizer is built.
        Method.__init__(self, task, hp, ctx)
        self.model = FusionModel(task, ctx.model_hp, hp.head).to(ctx.device)
        if hp.backbone == "compress":
            add_compress_recover(self.model, ctx.model_hp)
        self.optimizer = ctx.make_optimizer(self.model.parameters())
        for m in self.modalities:
            dim = self.model.encoders[m].out_dim
            self.register_buffer(f"prototypes_{m}", torch.zeros(task.num_classes, dim, device=ctx.device))
        self.register_buffer("prototypes_ready", torch.zeros((), dtype=torch.bool, device=ctx.device))

    def prototypes(self, m: str) -> torch.Tensor:
        return getattr(self, f"prototypes_{m}")

    @torch.no_grad()
    def update_prototypes(self, loader: BatchLoader, ema: bool, n_batches: int | None = None) -> None:
        """Class means of the features over the first ``n_batches`` batches (all by default), in eval mode."""
        k = self.task.num_classes
        n_batches = len(loader) if n_batches is None else n_batches
        sums = {m: torch.zeros_like(self.prototypes(m)) for m in self.modalities}
        counts = torch.zeros(k, dtype=self.prototypes(self.modalities[0]).dtype, device=self.prototypes_ready.device)
        was_training = self.model.training
        self.model.eval()
        for i, batch in enumerate(loader):
            if i >= n_batches:
                break
            with self.ctx.autocast():
                h = self.model.features(self.inputs(batch))
            # Per-class sums as one matrix product instead of a loop over samples.
            onehot = F.one_hot(batch["label"], k).to(sums[self.modalities[0]].dtype)
            counts += onehot.sum(dim=0)
            for m in self.modalities:
                sums[m] += onehot.t() @ h[m].to(sums[m].dtype)
        self.model.train(was_training)
        seen = counts > 0
        for m in self.modalities:
            old = self.prototypes(m)
            new = torch.where(seen[:, None], sums[m] / counts.clamp_min(1)[:, None], old)
            old.copy_((1 - self.hp.mu) * new + self.hp.mu * old if ema else new)
        self.prototypes_ready.fill_(True)

    def prototype_pass(self, loaders: Loaders, ema: bool) -> None:
        if self.hp.prototype_split == "val":
            self.update_prototypes(self.held_out_loader(loaders), ema)
        else:
            self.update_prototypes(loaders.train, ema, n_batches=max(1, len(loaders.train) // 10))

    def on_epoch_start(self, epoch: int, loaders: Loaders) -> None:
        if not bool(self.prototypes_ready):
            self.prototype_pass(loaders, ema=False)

    def on_epoch_end(self, epoch: int, loaders: Loaders) -> dict[str, float]:
        self.prototype_pass(loaders, ema=epoch >= self.hp.ema_from)
        return {}

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        labels = batch["label"]
        logs: dict[str, torch.Tensor] = {}
        applied = 0.0
        with self.ctx.autocast():
            h, z, _ = self.model(self.inputs(batch))
            loss = F.cross_entropy(loss_precision(z), labels)
            if self.hp.mod_start <= step.epoch <= self.hp.mod_end:
                pi = {m: prototype_logits(h[m], self.prototypes(m)) for m in self.modalities}
                scores = confidence_scores(pi, labels)
                weak = weaker_modality(scores)
                if weak is not None:
                    proto_loss = F.cross_entropy(pi[weak], labels)
                    loss = loss + self.hp.alpha * proto_loss
                    logs["proto_loss"] = proto_loss.detach()
                    applied = float(self.hp.alpha != 0)  # a zero weight leaves the loss's gradient unchanged
                first, second = self.modalities
                logs["proto_ratio"] = scores[first] / scores[second]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return read_logs({"loss": loss, **logs, "proto_applied": applied})
