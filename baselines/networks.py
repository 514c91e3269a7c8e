"""Shared encoders (docs/methods/README.md#encoders): ResNet-18 trunks trained from scratch, plus small encoders for
feature data.

The trunk is torchvision's ResNet-18 recipe (BasicBlock, stages [2, 2, 2, 2], 7x7/2 stem, 3x3/2 max-pool) assembled
from torchvision's ``BasicBlock`` so that width and depth are configurable: ``model.width=64`` and
``model.blocks=[2,2,2,2]`` give exactly ResNet-18 (512-d features); tests and the demo use tiny widths.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from baselines.encoders import (
    FRAME_ENCODERS,
    SEQUENCE_ENCODERS,
    TEXT_ENCODERS,
    TEXT_POOLS,
    build_frames_encoder,
    build_sequence_encoder,
    build_text_encoder,
)
from core.data import ModalitySpec
from core.hparams import HParam

MODEL_HPARAMS = (
    HParam("width", 64, "ResNet stem width; 64 is ResNet-18 (docs/methods/README.md#encoders). Feature dim = "
                        "8 x width.", low=1),
    HParam("blocks", [2, 2, 2, 2], "BasicBlocks per stage; [2,2,2,2] is ResNet-18 (docs/methods/README.md#encoders).",
           low=1),
    HParam("mlp_hidden", 256, "Hidden width of the MLP encoder for vector/sequence features [project].", low=1),
    HParam("feature_dim", 512, "Output width of MLP/sequence encoders, matching ResNet-18's 512 [project].", low=1),
    HParam("init", "ogm", "Weight init: 'ogm' = OGM-GE utils.weight_init (Kaiming conv, Xavier linear, BN 1/0), "
                          "used by OGM-GE/AUG/LFM; 'bb' = BalanceBenchmark's resnet_arch (Kaiming conv, BN weight "
                          "N(1, 0.02) and bias 0, linears left at PyTorch's default); 'torch' = PyTorch defaults.",
           choices=("ogm", "bb", "torch")),
    HParam("channels_last", False, "Run conv trunks in channels_last memory format (faster on recent GPUs)."),
    HParam("image_encoder", "resnet18", "Encoder of 'frames' modalities with T = 1 (images): 'resnet18' = the shared "
                                        "trunk above; 'resnet50' = torchvision ResNet-50 (AUG paper for Twitter and "
                                        "Sarcasm, docs/methods/aug.md#hyperparameters); 'i3d' (baselines.encoders).",
           per_dataset={"twitter2015": "resnet50", "sarcasm": "resnet50"}, choices=FRAME_ENCODERS),
    HParam("video_encoder", "resnet18", "Encoder of 'frames' modalities with T > 1 (clips): 'resnet18' = the shared "
                                        "trunk per frame (OGM-GE; BalanceBenchmark UCF-101); 'i3d' = the I3D-style "
                                        "3-D CNN (AUG uses I3D for NVGesture, docs/methods/aug.md#hyperparameters); "
                                        "'resnet50'.",
           per_dataset={"nvgesture": "i3d"}, choices=FRAME_ENCODERS),
    HParam("image_pretrained", False, "Load ImageNet weights (torchvision IMAGENET1K_V2, as AMSS AMSS_IT/ITModel.py "
                                      "ImageEncoder) into a resnet50 encoder, downloaded by torchvision on first use. "
                                      "The AUG paper uses an ImageNet-pretrained ResNet-50 for Twitter and Sarcasm.",
           per_dataset={"twitter2015": True, "sarcasm": True}),
    HParam("proj_dim", 0, "Linear projection after the BERT and ResNet-50 features; 0 = none. AMSS "
                          "AMSS_IT/ITModel.py: fea_fc 768 -> 256 and fc 2048 -> 256 (the data preparation AUG "
                          "points to).", per_dataset={"twitter2015": 256, "sarcasm": 256}),
    HParam("text_encoder", "bert", "Encoder of 'tokens' modalities: 'bert' (transformers; AUG paper for Twitter and "
                                   "Sarcasm, BalanceBenchmark for Food-101) or 'embedding' (masked mean of learned "
                                   "embeddings, no extra needed) [project].", choices=TEXT_ENCODERS),
    HParam("text_pretrained", False, "Load BERT weights from the hub name model.bert_name (on the user's machine); "
                                     "false = a randomly initialised BertConfig with the model.bert_* shape. The AUG "
                                     "paper (Twitter, Sarcasm) and BalanceBenchmark (Food-101) use pretrained BERT.",
           per_dataset={"twitter2015": True, "sarcasm": True, "food101": True}),
    HParam("bert_name", "bert-base-uncased", "Hub name or local folder of the pretrained BERT (AMSS --bert_model "
                                             "default; BalanceBenchmark google-bert/bert-base-uncased)."),
    HParam("bert_vocab_size", 30522, "Vocabulary of a config-built BERT (and of the 'embedding' text encoder); "
                                     "bert-base-uncased has 30522. Must cover the cache's tokenizer."),
    HParam("bert_hidden", 768, "Hidden size of a config-built BERT (bert-base: 768)."),
    HParam("bert_layers", 12, "Layers of a config-built BERT (bert-base: 12)."),
    HParam("bert_heads", 12, "Attention heads of a config-built BERT (bert-base: 12)."),
    HParam("bert_intermediate", 3072, "Feed-forward width of a config-built BERT (bert-base: 3072)."),
    HParam("bert_max_positions", 512, "Position embeddings of a config-built BERT (bert-base: 512)."),
    HParam("text_pool", "pooler", "BERT sentence feature: 'pooler' (AMSS BertEncoder uses the pooled output), "
                                  "'cls' (last layer [CLS] state) or 'mean' (masked mean).", choices=TEXT_POOLS),
    HParam("text_attention_mask", True, "Mask padding tokens (id 0) in BERT attention; false = AMSS, which passes "
                                        "no mask so padding is attended."),
    HParam("sequence_encoder", "mlp", "Encoder of 'sequence' modalities: 'mlp' (mean over time, the MLP above), "
                                      "'gru', or 'transformer' (BalanceBenchmark's MOSEI encoder, "
                                      "balancemm/encoders/transformer_encoder.py).",
           per_dataset={"mosei": "transformer"}, choices=SEQUENCE_ENCODERS),
    HParam("seq_hidden", 512, "Transformer sequence encoder: input embedding and feed-forward width "
                              "(BalanceBenchmark encoder_config.yaml n_features 512)."),
    HParam("seq_dim", 1024, "Transformer sequence encoder model width = feature size (BalanceBenchmark dim 1024)."),
    HParam("seq_heads", 4, "Transformer sequence encoder heads (BalanceBenchmark n_head 4)."),
    HParam("seq_layers", 2, "Layers of the transformer (BalanceBenchmark n_layers 2) and GRU sequence encoders."),
)


class StemMaxPool(nn.MaxPool2d):
    """The ResNet stem's 3x3 / stride 2 / pad 1 max pool. Where no gradient is needed on a CPU (evaluation), the
    values come from 3-tap maxima of strided row slices, then column slices: bitwise the values of ``max_pool2d``
    (a maximum is exact) at 4-5x its speed on the small-channel maps of CPU runs (one thread, a 256x4x65x24 map:
    3.1 ms against 13.8 ms). Training steps keep ``max_pool2d``, whose backward fixes which entry of a tied window
    gets the gradient; other devices use it too."""

    def __init__(self) -> None:
        super().__init__(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4 or (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        x = nn.functional.pad(x, (1, 1, 1, 1), value=float("-inf"))
        rows = torch.maximum(torch.maximum(x[:, :, 0:-2:2], x[:, :, 1:-1:2]), x[:, :, 2::2])
        return torch.maximum(torch.maximum(rows[..., 0:-2:2], rows[..., 1:-1:2]), rows[..., 2::2])


class ResNetTrunk(nn.Module):
    """ResNet stem + 4 BasicBlock stages, no pooling or fc; output (B, 8*width, H', W')."""

    def __init__(self, in_channels: int, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        if len(blocks) != 4:
            raise ValueError(f"model.blocks needs 4 stage depths, got {list(blocks)}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True), StemMaxPool())
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


def channels_last_trunk(trunk: ResNetTrunk, channels_last: bool) -> ResNetTrunk:
    """The trunk with its conv weights in channels_last when asked. A convolution's output layout follows its input's
    or its weight's; a 1-channel input (a spectrogram) is contiguous in both layouts and counts as the default one,
    so with the weights left as they were, the audio trunk would run in the default layout throughout."""
    return trunk.to(memory_format=torch.channels_last) if channels_last else trunk


class SpectrogramEncoder(nn.Module):
    """Audio: (B, 1, F, T) -> trunk with 1 input channel -> 2-D adaptive average pool -> (B, d)."""

    def __init__(self, width: int, blocks: tuple[int, ...], channels_last: bool = False) -> None:
        super().__init__()
        self.trunk = channels_last_trunk(ResNetTrunk(1, width, blocks), channels_last)
        self.out_dim = self.trunk.out_dim
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.trunk(x), 1), 1)


class FramesEncoder(nn.Module):
    """Visual: (B, C, T, H, W) -> frames folded into the batch -> trunk -> mean over (T, H', W') -> (B, d).

    Mean over all of T, H', W' equals OGM-GE's permute + adaptive_avg_pool3d; there is no temporal modelling.
    ``in_channels`` is 3 for RGB; BalanceBenchmark's UCF-101 flow trunk takes 2 (u, v), NVGesture depth 1.
    """

    def __init__(self, width: int, blocks: tuple[int, ...], channels_last: bool = False, in_channels: int = 3
                 ) -> None:
        super().__init__()
        self.trunk = channels_last_trunk(ResNetTrunk(in_channels, width, blocks), channels_last)
        self.out_dim = self.trunk.out_dim
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        # Frames stored (H, W, C) arrive channels-last strided, and the trunk would run channels-last unasked; on CPU
        # its 1x1 stride-2 shortcut's backward then crashes the process (segfault, or a hang) with <= 4 input channels
        # on large maps (torch 2.14.1: width 4 on 224-pixel UCF-101 frames). The layout is the model.channels_last
        # knob's alone.
        frames = frames.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
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
        # Cached features may be stored in half precision or as integers; the first layer's dtype is the run's.
        x = x.to(self.net[0].weight.dtype)
        return self.net(x.mean(dim=1) if x.dim() == 3 else x)


def build_encoder(spec: ModalitySpec, model_hp) -> nn.Module:
    """The encoder for one modality, chosen by its kind; every encoder exposes ``out_dim``."""
    blocks = tuple(model_hp.blocks)
    if spec.kind == "spectrogram":
        return SpectrogramEncoder(model_hp.width, blocks, model_hp.channels_last)
    if spec.kind == "frames":
        choice = model_hp.image_encoder if spec.shape[1] == 1 else model_hp.video_encoder
        if choice == "resnet18":
            return FramesEncoder(model_hp.width, blocks, model_hp.channels_last, in_channels=spec.shape[0])
        return build_frames_encoder(choice, spec, model_hp)
    if spec.kind == "vector" or (spec.kind == "sequence" and model_hp.sequence_encoder == "mlp"):
        return MLPEncoder(spec.shape[-1], model_hp.mlp_hidden, model_hp.feature_dim)
    if spec.kind == "sequence":
        return build_sequence_encoder(spec, model_hp)
    if spec.kind == "tokens":
        return build_text_encoder(spec, model_hp)
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


def bb_weight_init(module: nn.Module) -> None:
    """BalanceBenchmark's ``resnet_arch.ResNet.__init__`` (4909c17): Kaiming-normal convs, BN weight N(1, 0.02) and
    bias 0; its fusion and unimodal heads are plain ``nn.Linear`` with PyTorch's default init."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, mean=1.0, std=0.02)
        nn.init.zeros_(module.bias)


def apply_unless_kept(module: nn.Module, fn) -> None:
    """``module.apply(fn)`` (same post-order, so the same random draws) minus every subtree whose root sets
    ``keeps_weights = True``: pretrained bodies (BERT, ImageNet ResNet-50) keep their weights."""
    if getattr(module, "keeps_weights", False):
        return
    for child in module.children():
        apply_unless_kept(child, fn)
    fn(module)


# model.init -> the function applied to every module; "torch" keeps PyTorch's defaults.
INITS = {"ogm": weight_init, "bb": bb_weight_init}


def init_model(model: nn.Module, model_hp) -> None:
    if model_hp.init in INITS:
        apply_unless_kept(model, INITS[model_hp.init])


def compile_encoders(model: nn.Module, mode: str = "default") -> list[str]:
    """``torch.compile`` every modality encoder of ``model`` in place (``train.compile``); returns their names.

    Encoders are the outermost submodules that expose ``out_dim`` (every encoder built here or in
    ``baselines.encoders`` does). ``nn.Module.compile`` keeps parameter names, so state dicts and checkpoints are
    those of the eager model; an encoder compiled already is left as it is.
    """
    compiled: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if hasattr(child, "out_dim"):
                if getattr(child, "_compiled_call_impl", None) is None:
                    child.compile(mode=mode)
                compiled.append(path)
            else:
                visit(path, child)

    visit("", model)
    return compiled
