"""Shared encoders (methods.md §1.1): ResNet-18 trunks trained from scratch, plus small encoders for feature data.

The trunk is torchvision's ResNet-18 recipe (BasicBlock, stages [2, 2, 2, 2], 7x7/2 stem, 3x3/2 max-pool) assembled
from torchvision's ``BasicBlock`` so that width and depth are configurable: ``model.width=64`` and
``model.blocks=[2,2,2,2]`` give exactly ResNet-18 (512-d features); tests and the demo use tiny widths.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from baselines.hparams import HParam
from datasets.base import ModalitySpec

MODEL_HPARAMS = (
    HParam("width", 64, "ResNet stem width; 64 is ResNet-18 (methods.md §1.1). Feature dim = 8 x width."),
    HParam("blocks", [2, 2, 2, 2], "BasicBlocks per stage; [2,2,2,2] is ResNet-18 (methods.md §1.1)."),
    HParam("mlp_hidden", 256, "Hidden width of the MLP encoder for vector/sequence features [project]."),
    HParam("feature_dim", 512, "Output width of MLP/sequence encoders, matching ResNet-18's 512 [project]."),
    HParam("init", "ogm", "Weight init: 'ogm' = OGM-GE utils.weight_init (Kaiming conv, Xavier linear, BN 1/0), "
                          "used by OGM-GE/AUG/LFM; 'torch' = PyTorch defaults.", choices=("ogm", "torch")),
    HParam("channels_last", False, "Run conv trunks in channels_last memory format (faster on recent GPUs)."),
)


class ResNetTrunk(nn.Module):
    """ResNet stem + 4 BasicBlock stages, no pooling or fc; output (B, 8*width, H', W')."""

    def __init__(self, in_channels: int, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        if len(blocks) != 4:
            raise ValueError(f"model.blocks needs 4 stage depths, got {list(blocks)}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        stages, in_planes = [], width
        for i, depth in enumerate(blocks):
            planes, stride = width * 2 ** i, (1 if i == 0 else 2)
            layers = []
            for j in range(depth):
                down = None
                if j == 0 and (stride != 1 or in_planes != planes):
                    down = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(planes))
                layers.append(BasicBlock(in_planes, planes, stride=stride if j == 0 else 1, downsample=down))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.out_dim = in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class SpectrogramEncoder(nn.Module):
    """Audio: (B, 1, F, T) -> trunk with 1 input channel -> 2-D adaptive average pool -> (B, d)."""

    def __init__(self, width: int, blocks: tuple[int, ...], channels_last: bool = False) -> None:
        super().__init__()
        self.trunk = ResNetTrunk(1, width, blocks)
        self.out_dim = self.trunk.out_dim
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.trunk(x), 1), 1)


class FramesEncoder(nn.Module):
    """Visual: (B, 3, T, H, W) -> frames folded into the batch -> trunk -> mean over (T, H', W') -> (B, d).

    Mean over all of T, H', W' equals OGM-GE's permute + adaptive_avg_pool3d; there is no temporal modelling.
    """

    def __init__(self, width: int, blocks: tuple[int, ...], channels_last: bool = False) -> None:
        super().__init__()
        self.trunk = ResNetTrunk(3, width, blocks)
        self.out_dim = self.trunk.out_dim
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        if self.channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)
        fmap = self.trunk(frames)
        return fmap.reshape(b, t, fmap.shape[1], -1).mean(dim=(1, 3))


class MLPEncoder(nn.Module):
    """Vector features (B, D) or sequences (B, L, D, mean-pooled over L) -> Linear-ReLU-Linear-ReLU -> (B, d)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, out_dim), nn.ReLU(inplace=True))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.float().mean(dim=1)
        return self.net(x.float())


def build_encoder(spec: ModalitySpec, model_hp) -> nn.Module:
    """The encoder for one modality, chosen by its kind; every encoder exposes ``out_dim``."""
    blocks = tuple(model_hp.blocks)
    if spec.kind == "spectrogram":
        return SpectrogramEncoder(model_hp.width, blocks, model_hp.channels_last)
    if spec.kind == "frames":
        return FramesEncoder(model_hp.width, blocks, model_hp.channels_last)
    if spec.kind in ("vector", "sequence"):
        return MLPEncoder(spec.shape[-1], model_hp.mlp_hidden, model_hp.feature_dim)
    raise ValueError(f"no shared encoder for modality {spec.name!r} of kind {spec.kind!r}")


def build_encoders(task, model_hp) -> nn.ModuleDict:
    return nn.ModuleDict({m.name: build_encoder(m, model_hp) for m in task.modalities})


def weight_init(module: nn.Module) -> None:
    """OGM-GE ``utils.weight_init`` (also in AUG and LFM): Kaiming-normal convs, Xavier-normal linears, BN 1/0."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.Linear):
        nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_model(model: nn.Module, model_hp) -> None:
    if model_hp.init == "ogm":
        model.apply(weight_init)
