"""Encoders beyond the shared ResNet-18 trunks: BERT text, ResNet-50 images, an I3D-style 3-D CNN for clips and small
sequence encoders for feature datasets (docs/methods/README.md#encoders, docs/methods/aug.md#hyperparameters).

``baselines.networks.build_encoder`` dispatches here by modality kind and the ``model.*`` knobs:

- ``tokens`` -> ``BertTextEncoder`` (``model.text_encoder=bert``, the AUG paper's text encoder for Twitter-2015 and
  Sarcasm) or ``EmbeddingTextEncoder`` (``embedding``: masked mean of learned token embeddings, no extra needed).
  BERT comes from ``transformers`` (the ``[text]`` extra), built from a ``BertConfig`` (random init, the shape set by
  ``model.bert_*``) or, with ``model.text_pretrained``, loaded from the hub name ``model.bert_name`` on the user's
  machine. Features: the pooler output (AMSS ``AMSS_IT/ITModel.py``, ``BertEncoder``: ``_, out = self.bert(txt)``,
  then ``fea_fc`` Linear(768, 256)), or [CLS] / masked mean by ``model.text_pool``. AMSS passes no attention mask,
  so padding is attended; ``model.text_attention_mask=false`` reproduces that.
- ``frames`` -> ``ResNet50Encoder`` (``model.image_encoder`` / ``model.video_encoder`` = ``resnet50``): torchvision's
  ResNet-50 with its fc removed, optionally ImageNet weights (``IMAGENET1K_V2``, as AMSS ``ImageEncoder``) from
  torchvision's hub on the user's machine, then an optional projection (AMSS: Linear(2048, 256)). Frames are folded
  into the batch and averaged, as the shared ``FramesEncoder`` does.
- ``frames`` -> ``I3DEncoder`` (``i3d``): an inflated-ResNet-style 3-D CNN (3-D BasicBlocks, spatio-temporal
  downsampling, global average pooling) with the shared ``model.width``/``model.blocks`` knobs (64 and [2,2,2,2]:
  512-d). It is **not** the Inception-v1 I3D of the AUG paper (1024-d, ImageNet-inflated RGB and flow checkpoints),
  and no pretrained weights are provided here; input channels follow the modality (RGB 3, depth 1, flow 2).
- ``sequence`` -> ``GRUSequenceEncoder`` (``model.sequence_encoder=gru``) or ``TransformerSequenceEncoder``
  (``transformer``, BalanceBenchmark's MOSEI encoder, GitHub GeWu-Lab/BalanceBenchmark,
  ``balancemm/encoders/transformer_encoder.py``: Linear(D, 512) -> 1x1 conv to 1024 -> 2 post-norm layers, 4 heads,
  feed-forward 512, dropout 0.1, no positional encoding, output of the first time step).

Pretrained bodies keep their weights: modules with ``keeps_weights = True`` are skipped by
``baselines.networks.init_model`` (OGM-GE's ``weight_init`` would otherwise overwrite them). BERT keeps its own
initialisation (N(0, 0.02)) also when built from a config. 3-D convolutions, which ``weight_init`` does not cover,
get the same Kaiming-normal (fan_out) rule here.
"""

from __future__ import annotations

import torch
from torch import nn

from core.data import ModalitySpec
from core.extras import require_transformers

FRAME_ENCODERS = ("resnet18", "resnet50", "i3d")
TEXT_ENCODERS = ("bert", "embedding")
TEXT_POOLS = ("pooler", "cls", "mean")
SEQUENCE_ENCODERS = ("mlp", "gru", "transformer")


class BertTextEncoder(nn.Module):
    """Token ids (B, L) -> BERT -> pooled (B, hidden) -> optional Linear(hidden, proj_dim)."""

    def __init__(self, model_hp) -> None:
        super().__init__()
        transformers = require_transformers()
        pooler = model_hp.text_pool == "pooler"
        if model_hp.text_pretrained:
            self.bert = transformers.BertModel.from_pretrained(model_hp.bert_name, add_pooling_layer=pooler)
        else:
            config = transformers.BertConfig(
                vocab_size=model_hp.bert_vocab_size, hidden_size=model_hp.bert_hidden,
                num_hidden_layers=model_hp.bert_layers, num_attention_heads=model_hp.bert_heads,
                intermediate_size=model_hp.bert_intermediate, max_position_embeddings=model_hp.bert_max_positions)
            self.bert = transformers.BertModel(config, add_pooling_layer=pooler)
        self.bert.keeps_weights = True
        config = self.bert.config
        self.vocab_size = config.vocab_size
        self.pad_id = config.pad_token_id if config.pad_token_id is not None else 0
        self.pool = model_hp.text_pool
        self.use_mask = model_hp.text_attention_mask
        self.proj = nn.Linear(config.hidden_size, model_hp.proj_dim) if model_hp.proj_dim else None
        self.out_dim = model_hp.proj_dim or config.hidden_size

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        if ids.numel() and int(ids.max()) >= self.vocab_size:
            raise ValueError(f"token id {int(ids.max())} is outside the BERT vocabulary of {self.vocab_size}; the "
                             f"cache was tokenised with a larger vocabulary than model.bert_vocab_size / "
                             f"model.bert_name")
        keep = ids != self.pad_id
        mask = keep.long() if self.use_mask else torch.ones_like(ids)
        out = self.bert(input_ids=ids, attention_mask=mask)
        if self.pool == "pooler":
            h = out.pooler_output
        elif self.pool == "cls":
            h = out.last_hidden_state[:, 0]
        else:
            weights = keep.to(out.last_hidden_state.dtype)[..., None]
            h = (out.last_hidden_state * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.proj(h) if self.proj is not None else h


class EmbeddingTextEncoder(nn.Module):
    """Token ids (B, L) -> masked mean of learned embeddings (pad id 0) -> Linear -> ReLU; no ``transformers``."""

    def __init__(self, vocab_size: int, embed_dim: int, out_dim: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.net = nn.Sequential(nn.Linear(embed_dim, out_dim), nn.ReLU(inplace=True))
        self.out_dim = out_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        if ids.numel() and int(ids.max()) >= self.vocab_size:
            raise ValueError(f"token id {int(ids.max())} is outside model.bert_vocab_size={self.vocab_size}")
        keep = (ids != 0).float()[..., None]
        h = (self.embed(ids) * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.net(h)


def fold_frames(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(B, C, T, H, W) -> (B*T, C, H, W), B, T."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), b, t


class ResNet50Encoder(nn.Module):
    """Frames (B, 3, T, H, W) -> torchvision ResNet-50 per frame (fc removed) -> mean over T -> optional Linear."""

    def __init__(self, pretrained: bool, proj_dim: int, in_channels: int = 3) -> None:
        super().__init__()
        from torchvision.models import ResNet50_Weights, resnet50

        if in_channels != 3:
            raise ValueError(f"model image/video encoder resnet50 needs 3-channel frames, the modality has "
                             f"{in_channels}; use resnet18 or i3d")
        self.net = resnet50(weights=ResNet50_Weights.IMAGENET1K_V2 if pretrained else None)
        self.net.fc = nn.Identity()
        if pretrained:
            self.net.keeps_weights = True
        self.proj = nn.Linear(2048, proj_dim) if proj_dim else None
        self.out_dim = proj_dim or 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames, b, t = fold_frames(x)
        h = self.net(frames).reshape(b, t, -1).mean(dim=1)
        return self.proj(h) if self.proj is not None else h


class BasicBlock3d(nn.Module):
    """3x3x3 conv-BN-ReLU-conv-BN plus a (1x1x1 conv-BN when the shape changes) shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or in_planes != planes:
            self.down = nn.Sequential(nn.Conv3d(in_planes, planes, 1, stride=stride, bias=False),
                                      nn.BatchNorm3d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (self.down(x) if self.down is not None else x))


class I3DEncoder(nn.Module):
    """Clips (B, C, T, H, W) -> inflated-ResNet-style 3-D CNN -> global average pool -> (B, 8 * width).

    Stem: Conv3d (5, 7, 7) with stride 2 in time and space, BN, ReLU, MaxPool (1, 3, 3) / (1, 2, 2); then four
    stages of ``blocks[i]`` 3-D BasicBlocks of width ``width * 2**i``, stages 2-4 halving time and space.
    """

    def __init__(self, in_channels: int, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        if len(blocks) != 4:
            raise ValueError(f"model.blocks needs 4 stage depths, got {list(blocks)}")
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, width, kernel_size=(5, 7, 7), stride=2, padding=(2, 3, 3), bias=False),
            nn.BatchNorm3d(width), nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)))
        stages, in_planes = [], width
        for i, depth in enumerate(blocks):
            planes = width * 2 ** i
            layers = [BasicBlock3d(in_planes if j == 0 else planes, planes, 2 if (i > 0 and j == 0) else 1)
                      for j in range(depth)]
            stages.append(nn.Sequential(*layers))
            in_planes = planes
        self.stages = nn.Sequential(*stages)
        self.out_dim = in_planes
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool3d(self.stages(self.stem(x.float())), 1), 1)


class GRUSequenceEncoder(nn.Module):
    """Sequences (B, L, D) -> GRU -> the last layer's final hidden state (B, hidden)."""

    def __init__(self, in_dim: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.gru = nn.GRU(in_dim, hidden, num_layers=layers, batch_first=True)
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h_n = self.gru(x.to(self.gru.weight_ih_l0.dtype))
        return h_n[-1]


class TransformerSequenceEncoder(nn.Module):
    """BalanceBenchmark's MOSEI ``TransformerEncoder``: Linear(D, hidden) -> bias-free 1x1 projection to ``dim`` ->
    post-norm encoder layers (feed-forward ``hidden``, ReLU, dropout 0.1) -> the first time step (B, dim)."""

    def __init__(self, in_dim: int, hidden: int, dim: int, heads: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, hidden)
        self.lift = nn.Linear(hidden, dim, bias=False)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=hidden, dropout=0.1, activation="relu",
                                           batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.lift(self.embed(x.to(self.embed.weight.dtype))))[:, 0]


def build_text_encoder(spec: ModalitySpec, model_hp) -> nn.Module:
    """The ``tokens`` encoder selected by ``model.text_encoder``."""
    if model_hp.text_encoder == "bert":
        return BertTextEncoder(model_hp)
    return EmbeddingTextEncoder(model_hp.bert_vocab_size, model_hp.mlp_hidden, model_hp.feature_dim)


def build_frames_encoder(choice: str, spec: ModalitySpec, model_hp) -> nn.Module:
    """A ``frames`` encoder other than the shared ResNet-18 trunk: ``resnet50`` or ``i3d``."""
    channels = spec.shape[0]
    if choice == "resnet50":
        return ResNet50Encoder(model_hp.image_pretrained, model_hp.proj_dim, channels)
    if choice == "i3d":
        return I3DEncoder(channels, model_hp.width, tuple(model_hp.blocks))
    raise ValueError(f"modality {spec.name!r}: unknown frames encoder {choice!r}; valid: {FRAME_ENCODERS}")


def build_sequence_encoder(spec: ModalitySpec, model_hp) -> nn.Module:
    """A ``sequence`` encoder other than the mean-pooled MLP: ``gru`` or ``transformer``."""
    in_dim = spec.shape[-1]
    if model_hp.sequence_encoder == "gru":
        return GRUSequenceEncoder(in_dim, model_hp.feature_dim, model_hp.seq_layers)
    if model_hp.sequence_encoder == "transformer":
        return TransformerSequenceEncoder(in_dim, model_hp.seq_hidden, model_hp.seq_dim, model_hp.seq_heads,
                                          model_hp.seq_layers)
    raise ValueError(f"modality {spec.name!r}: unknown sequence encoder {model_hp.sequence_encoder!r}; valid: "
                     f"{SEQUENCE_ENCODERS}")
