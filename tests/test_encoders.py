"""``baselines.encoders`` and the ``build_encoder`` dispatch: a config-built tiny BERT (no downloads), ResNet-50
without weights on a tiny image, the I3D-style 3-D CNN, sequence encoders, and the init rule that spares pretrained
bodies."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from baselines.encoders import (
    BertTextEncoder,
    EmbeddingTextEncoder,
    GRUSequenceEncoder,
    I3DEncoder,
    ResNet50Encoder,
    TransformerSequenceEncoder,
)
from baselines.networks import (
    MODEL_HPARAMS,
    FramesEncoder,
    MLPEncoder,
    StemMaxPool,
    apply_unless_kept,
    build_encoder,
    init_model,
    weight_init,
)
from core.data import ModalitySpec
from core.hparams import resolve
from tests.more_fixtures import TINY_TEXT_MODEL, VOCAB
from tests.numeric import close, tol

pytest.importorskip("transformers")


def model_hp(dataset: str | None = None, **overrides):
    return resolve("model", MODEL_HPARAMS, dataset, {**TINY_TEXT_MODEL, **overrides})


TOKENS = ModalitySpec("text", "tokens", (6,))


def test_tiny_bert_forward_masks_padding_unless_told_not_to():
    torch.manual_seed(0)
    masked = build_encoder(TOKENS, model_hp(text_pool="mean")).eval()
    assert isinstance(masked, BertTextEncoder) and masked.out_dim == 16
    padded = torch.tensor([[5, 8, 11, 0, 0, 0]])
    short = padded[:, :3]
    # With the mask, padding changes nothing: the mean over real tokens equals that of the unpadded sequence.
    close(masked(padded), masked(short))
    unmasked = build_encoder(TOKENS, model_hp(text_pool="mean", text_attention_mask=False)).eval()
    unmasked.load_state_dict(masked.state_dict())
    assert not torch.allclose(unmasked(padded), unmasked(short), **tol(torch.float32)), "AMSS attends to padding"
    pooled = build_encoder(TOKENS, model_hp(proj_dim=5)).eval()
    assert pooled(padded).shape == (1, 5) and pooled.bert.pooler is not None


def test_bert_rejects_ids_beyond_its_vocabulary():
    encoder = build_encoder(TOKENS, model_hp())
    with pytest.raises(ValueError, match=f"outside the BERT vocabulary of {len(VOCAB)}"):
        encoder(torch.tensor([[3, 40]]))


def test_init_model_spares_bert_and_pretrained_resnet_but_follows_apply_order_elsewhere():
    torch.manual_seed(0)
    encoder = BertTextEncoder(model_hp(proj_dim=4))
    before = {k: v.clone() for k, v in encoder.bert.state_dict().items()}
    init_model(encoder, model_hp(proj_dim=4))
    for key, value in encoder.bert.state_dict().items():
        close(value, before[key])
    assert torch.count_nonzero(encoder.proj.bias) == 0, "the projection gets OGM-GE's Xavier/zero-bias init"
    # Without flags the traversal consumes random numbers exactly as nn.Module.apply does.
    a, b = FramesEncoder(4, (1, 1, 1, 1)), FramesEncoder(4, (1, 1, 1, 1))
    torch.manual_seed(1)
    a.apply(weight_init)
    torch.manual_seed(1)
    apply_unless_kept(b, weight_init)
    for (_, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        close(pa, pb)


def test_resnet50_builds_without_weights_and_runs_on_a_tiny_image():
    spec = ModalitySpec("visual", "frames", (3, 1, 32, 32))
    encoder = build_encoder(spec, model_hp(image_encoder="resnet50", proj_dim=8))
    assert isinstance(encoder, ResNet50Encoder) and not getattr(encoder.net, "keeps_weights", False)
    encoder.eval()
    out = encoder(torch.randn(2, 3, 1, 32, 32))
    assert out.shape == (2, 8) and encoder.out_dim == 8
    with pytest.raises(ValueError, match="3-channel"):
        build_encoder(ModalitySpec("flow", "frames", (2, 1, 32, 32)), model_hp(image_encoder="resnet50"))


def test_resnet50_pretrained_asks_torchvision_for_imagenet_v2_and_keeps_them(monkeypatch):
    import torchvision.models as tvm

    seen, real = {}, tvm.resnet50

    def fake_resnet50(weights=None):
        seen["weights"] = weights
        return real(weights=None)

    monkeypatch.setattr(tvm, "resnet50", fake_resnet50)
    encoder = ResNet50Encoder(pretrained=True, proj_dim=0)
    assert seen["weights"] == tvm.ResNet50_Weights.IMAGENET1K_V2 and encoder.net.keeps_weights
    assert encoder.out_dim == 2048


def test_twitter_and_sarcasm_default_to_the_papers_encoders():
    hp = resolve("model", MODEL_HPARAMS, "twitter2015", {})
    assert (hp.image_encoder, hp.image_pretrained, hp.text_encoder, hp.text_pretrained, hp.proj_dim) == \
        ("resnet50", True, "bert", True, 256)
    assert resolve("model", MODEL_HPARAMS, "nvgesture", {}).video_encoder == "i3d"
    assert resolve("model", MODEL_HPARAMS, "mosei", {}).sequence_encoder == "transformer"
    default = resolve("model", MODEL_HPARAMS, "cremad", {})
    assert isinstance(build_encoder(ModalitySpec("visual", "frames", (3, 1, 32, 32)), default), FramesEncoder)
    assert isinstance(build_encoder(ModalitySpec("feat", "sequence", (5, 7)), default), MLPEncoder)


def test_i3d_encoder_shapes_for_rgb_depth_and_flow():
    torch.manual_seed(0)
    for channels in (3, 1, 2):
        spec = ModalitySpec("clip", "frames", (channels, 8, 32, 32))
        encoder = build_encoder(spec, model_hp(video_encoder="i3d"))
        assert isinstance(encoder, I3DEncoder) and encoder.out_dim == 32   # 8 x width 4
        x = torch.randn(2, channels, 8, 32, 32)
        assert encoder.stem(x).shape == (2, 4, 4, 8, 8), "stem halves time and space, the pool halves space"
        out = encoder(x)
        assert out.shape == (2, 32)
        out.sum().backward()
        assert encoder.stem[0].weight.grad is not None
    # Inflation is 3-D: reversing time changes the features (a per-frame 2-D trunk would not notice).
    encoder.eval()
    clip = torch.randn(1, 2, 8, 32, 32)
    assert not torch.allclose(encoder(clip), encoder(clip.flip(2)), **tol(torch.float32))


def test_frames_encoder_reads_its_channels_from_the_spec():
    encoder = build_encoder(ModalitySpec("flow", "frames", (2, 3, 32, 32)), model_hp())
    assert isinstance(encoder, FramesEncoder) and encoder.trunk.stem[0].in_channels == 2
    assert encoder(torch.randn(2, 2, 3, 32, 32)).shape == (2, 32)


def test_sequence_encoders():
    spec = ModalitySpec("audio", "sequence", (7, 74))
    x = torch.randn(3, 7, 74)
    gru = build_encoder(spec, model_hp(sequence_encoder="gru", feature_dim=6, seq_layers=1))
    assert isinstance(gru, GRUSequenceEncoder)
    _, h_n = gru.gru(x)
    close(gru(x), h_n[-1])
    close(gru(x), gru.gru(x)[0][:, -1])
    bb = build_encoder(spec, model_hp(sequence_encoder="transformer", seq_hidden=8, seq_dim=12, seq_heads=2,
                                      seq_layers=1)).eval()
    assert isinstance(bb, TransformerSequenceEncoder) and bb.out_dim == 12 and bb.lift.bias is None
    out = bb(x)
    assert out.shape == (3, 12)
    # Only the first time step is read: the output equals the encoder's first position, and no positional encoding
    # means permuting the later steps leaves it unchanged.
    close(out, bb.encoder(bb.lift(bb.embed(x)))[:, 0])
    torch.testing.assert_close(bb(x[:, [0, 3, 1, 6, 2, 5, 4]]), out, rtol=1e-4, atol=1e-5)


def test_embedding_text_encoder_is_a_masked_mean():
    encoder = build_encoder(TOKENS, model_hp(text_encoder="embedding", mlp_hidden=4, feature_dim=3))
    assert isinstance(encoder, EmbeddingTextEncoder)
    ids = torch.tensor([[3, 4, 0, 0]])
    mean = encoder.embed.weight[[3, 4]].mean(0, keepdim=True)
    close(encoder(ids), encoder.net(mean))
    assert isinstance(encoder.net[0], nn.Linear)


@pytest.mark.parametrize("shape", [(4, 3, 65, 24), (2, 4, 1, 1), (3, 2, 8, 9), (1, 1, 2, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stem_max_pool_equals_max_pool2d_in_evaluation_and_training(shape, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=dtype)
    x[..., :2, :2] = 0.5  # a tied window
    expected = nn.functional.max_pool2d(x, 3, 2, 1)
    with torch.no_grad():
        for layout in (torch.contiguous_format, torch.channels_last):
            assert torch.equal(StemMaxPool()(x.contiguous(memory_format=layout)), expected)
    ours, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = StemMaxPool()(ours)
    nn.functional.max_pool2d(ref, 3, 2, 1).backward(torch.ones_like(expected))
    out.backward(torch.ones_like(expected))
    assert torch.equal(out.detach(), expected) and torch.equal(ours.grad, ref.grad)


def test_bb_init_draws_bn_weights_around_one_and_leaves_linears_at_the_torch_default():
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, 64, 3), nn.BatchNorm2d(64), nn.Linear(64, 6))
    default_linear = nn.Linear(64, 6)
    init_model(trunk, model_hp(init="bb"))
    bn, linear = trunk[1], trunk[2]
    # BalanceBenchmark's resnet_arch: BN weight ~ N(1, 0.02), bias 0 (a draw, not OGM-GE's constant 1).
    assert bool((bn.weight != 1).any()) and abs(bn.weight.mean().item() - 1) < 0.01
    assert 0.01 < bn.weight.std().item() < 0.03 and torch.count_nonzero(bn.bias) == 0
    # nn.Linear's default: uniform in +-1/sqrt(fan_in), biases included (OGM-GE's init zeroes them).
    bound = 1 / 64 ** 0.5
    assert torch.count_nonzero(linear.bias) == 6 and linear.weight.abs().max().item() <= bound
    assert linear.weight.std().item() == pytest.approx(default_linear.weight.std().item(), rel=0.2)
