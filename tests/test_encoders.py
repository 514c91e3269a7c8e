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


def test_frames_encoder_pools_clips_as_ogm_ge_does():
    # OGM-GE models/basic_model.py: the trunk runs on frames folded into the batch, the maps are viewed back to
    # (B, T, C, H', W'), permuted to (B, C, T, H', W') and adaptive_avg_pool3d'ed. Built here frame by frame, so a
    # fold or unfold in the wrong order (which T = 1 cannot show) or another pooling over time fails.
    torch.manual_seed(0)
    encoder = FramesEncoder(4, (1, 1, 1, 1)).eval()
    x = torch.randn(2, 3, 3, 32, 32)
    x[:, :, 1] *= 3.0   # frames on different scales: a max over time is not their mean
    with torch.no_grad():
        maps = torch.stack([encoder.trunk(x[:, :, t]) for t in range(3)], dim=2)
        expected = torch.flatten(nn.functional.adaptive_avg_pool3d(maps, 1), 1)
        close(encoder(x), expected)
        assert not torch.allclose(encoder(x), encoder(x[:, :, :1]), **tol(torch.float32)), "every frame counts"


def test_resnet50_averages_a_clips_frames_per_sample():
    torch.manual_seed(0)
    encoder = ResNet50Encoder(pretrained=False, proj_dim=0).eval()
    x = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        expected = torch.stack([encoder.net(x[:, :, t]) for t in range(3)], dim=1).mean(dim=1)
        close(encoder(x), expected)


# torchvision names conv1/bn1/layerN; the trunk stem.0/stem.1/stages.N-1.
def _torchvision_name(key: str) -> str:
    return (key.replace("stem.0.", "conv1.").replace("stem.1.", "bn1.").replace("stages.0.", "layer1.")
            .replace("stages.1.", "layer2.").replace("stages.2.", "layer3.").replace("stages.3.", "layer4."))


def test_default_model_knobs_build_torchvisions_resnet18_trunks():
    import torchvision.models as tvm

    hp = resolve("model", MODEL_HPARAMS, "cremad", {})
    reference = {k: v.shape for k, v in tvm.resnet18().state_dict().items() if not k.startswith("fc.")}
    for spec, channels in ((ModalitySpec("visual", "frames", (3, 1, 32, 32)), 3),
                           (ModalitySpec("audio", "spectrogram", (1, 32, 32)), 1)):
        encoder = build_encoder(spec, hp)
        assert encoder.out_dim == 512
        renamed = {_torchvision_name(k): v.shape for k, v in encoder.trunk.state_dict().items()}
        # OGM-GE's audio stem takes 1 channel.
        assert renamed == {**reference, "conv1.weight": torch.Size([64, channels, 7, 7])}
    with pytest.raises(ValueError, match="4 stage depths"):
        build_encoder(ModalitySpec("audio", "spectrogram", (1, 32, 32)), model_hp(blocks=[2, 2, 2]))


def test_image_and_clip_encoders_follow_their_own_knobs():
    hp = model_hp(image_encoder="resnet50", video_encoder="resnet18")
    assert isinstance(build_encoder(ModalitySpec("image", "frames", (3, 1, 32, 32)), hp), ResNet50Encoder)
    assert isinstance(build_encoder(ModalitySpec("clip", "frames", (3, 4, 32, 32)), hp), FramesEncoder)


def test_model_defaults_are_the_cited_ones():
    sarcasm = resolve("model", MODEL_HPARAMS, "sarcasm", {})
    assert (sarcasm.image_encoder, sarcasm.image_pretrained, sarcasm.proj_dim, sarcasm.text_pretrained) == \
        ("resnet50", True, 256, True)
    default = resolve("model", MODEL_HPARAMS, None, {})
    assert default.text_attention_mask is True and default.text_pool == "pooler"
    # BalanceBenchmark's MOSEI encoder_config.yaml: n_features 512, dim 1024, n_head 4, n_layers 2.
    mosei = resolve("model", MODEL_HPARAMS, "mosei", {})
    assert (mosei.seq_hidden, mosei.seq_dim, mosei.seq_heads, mosei.seq_layers) == (512, 1024, 4, 2)


def test_ogm_init_draws_kaiming_normal_fan_out_convs_xavier_normal_linears_and_unit_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 64, 5), nn.BatchNorm2d(64), nn.Linear(300, 600))
    model[1].weight.data.fill_(3.0)
    init_model(model, model_hp(init="ogm"))
    conv, bn, linear = model
    # fan_out = 64 * 25 (fan_in would be 4 * 25: a 4x larger std).
    assert conv.weight.std().item() == pytest.approx((2 / (64 * 25)) ** 0.5, rel=0.05)
    assert torch.equal(bn.weight, torch.ones(64)) and torch.count_nonzero(bn.bias) == 0
    std = (2 / (300 + 600)) ** 0.5
    assert linear.weight.std().item() == pytest.approx(std, rel=0.05)
    # A normal draw passes xavier_uniform_'s bound sqrt(3) * std (about 8% of 180,000 draws do).
    assert linear.weight.abs().max().item() > 3 ** 0.5 * std


def test_mlp_encoder_mean_pools_sequences_and_ends_in_a_relu():
    torch.manual_seed(0)
    encoder = build_encoder(ModalitySpec("feat", "sequence", (5, 7)), model_hp(mlp_hidden=6, feature_dim=4))
    x = torch.randn(3, 5, 7)
    close(encoder(x), encoder(x.mean(dim=1)))
    lin1, lin2 = encoder.net[0], encoder.net[2]
    with torch.no_grad():
        lin2.bias[:2] = -50.0   # two outputs negative before the last ReLU
        close(encoder(x), torch.relu(lin2(torch.relu(lin1(x.mean(dim=1))))))
        assert torch.count_nonzero(encoder(x)[:, :2]) == 0


def test_bert_pools_cls_and_masked_mean_and_reports_its_projected_width():
    torch.manual_seed(0)
    encoder = build_encoder(TOKENS, model_hp(text_pool="cls")).eval()
    ids = torch.tensor([[5, 8, 11, 7, 0, 0], [0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        hidden = encoder.bert(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
        close(encoder(ids), hidden[:, 0])
        mean = build_encoder(TOKENS, model_hp(text_pool="mean")).eval()
        mean.load_state_dict(encoder.state_dict())
        out = mean(ids)
        close(out[0], hidden[0, :4].mean(0))
        # A row of padding only has no token to average: zeros, not 0/0.
        assert torch.equal(out[1], torch.zeros(16))
    assert build_encoder(TOKENS, model_hp(proj_dim=5)).out_dim == 5
    # The last valid id passes; the vocabulary size itself is refused before BERT's embedding fails on it.
    encoder(torch.tensor([[len(VOCAB) - 1]]))
    with pytest.raises(ValueError, match="outside the BERT vocabulary"):
        encoder(torch.tensor([[len(VOCAB)]]))


def test_embedding_text_encoder_reports_its_width_and_survives_an_all_padding_row():
    encoder = build_encoder(TOKENS, model_hp(text_encoder="embedding", mlp_hidden=4, feature_dim=3))
    out = encoder(torch.tensor([[3, 4, 0], [0, 0, 0]]))
    assert encoder.out_dim == 3 and out.shape == (2, 3) and bool(torch.isfinite(out).all())


def test_i3d_keeps_time_through_the_stem_pool_and_halves_it_from_stage_two():
    torch.manual_seed(0)
    encoder = build_encoder(ModalitySpec("clip", "frames", (3, 8, 32, 32)), model_hp(video_encoder="i3d")).eval()
    conv = encoder.stem[0]
    assert conv.kernel_size == (5, 7, 7) and conv.stride == (2, 2, 2)
    spike = torch.zeros(1, 1, 4, 8, 8)
    spike[0, 0, 0, 3, 3] = 1.0
    assert torch.count_nonzero(encoder.stem[3](spike)[:, :, 1:]) == 0, "the stem max-pool is 1 frame deep"
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        h = encoder.stem(x)
        shapes = []
        for stage in encoder.stages:
            h = stage(h)
            shapes.append(tuple(h.shape[1:]))
            assert bool((h >= 0).all()), "every block ends in a ReLU"
        assert shapes == [(4, 4, 16, 16), (8, 2, 8, 8), (16, 1, 4, 4), (32, 1, 2, 2)]
        close(encoder(x), h.mean(dim=(2, 3, 4)))   # an average over 4 positions, not their maximum
    # Kaiming normal with fan_out = out_channels * kernel volume.
    wide = I3DEncoder(3, width=64, blocks=(1, 1, 1, 1))
    weight = wide.stages[3][0].conv1.weight
    assert weight.std().item() == pytest.approx((2 / (512 * 27)) ** 0.5, rel=0.05)


def test_resnet50_features_are_the_pooled_relu_maps_without_torchvisions_fc():
    torch.manual_seed(0)
    encoder = ResNet50Encoder(pretrained=False, proj_dim=0).eval()
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, 1, 32, 32))
    assert out.shape == (2, 2048) and bool((out >= 0).all())


def test_sequence_encoders_read_the_last_gru_layer_and_run_balancebenchmarks_post_norm_layers():
    spec = ModalitySpec("audio", "sequence", (7, 10))
    torch.manual_seed(0)
    x = torch.randn(3, 7, 10)
    gru = build_encoder(spec, model_hp(sequence_encoder="gru", feature_dim=6, seq_layers=2))
    assert gru.gru.num_layers == 2
    close(gru(x), gru.gru(x)[0][:, -1])   # the top layer's output at the last step is h_n[-1], not h_n[0]
    bb = build_encoder(spec, model_hp(sequence_encoder="transformer", seq_hidden=8, seq_dim=12, seq_heads=2,
                                      seq_layers=1))
    layer = bb.encoder.layers[0]
    assert layer.activation is nn.functional.relu and layer.linear1.out_features == 8
    # Post-norm: the output is the last LayerNorm's (weight 1, bias 0 at init), zero mean and unit variance per step.
    bb.eval()
    with torch.no_grad():
        out = bb.encoder(bb.lift(bb.embed(x)))
    close(out.mean(-1), torch.zeros(3, 7), atol=1e-5)
    close(out.var(-1, unbiased=False), torch.ones(3, 7), atol=1e-3)
    # Dropout 0.1 in training: two passes differ; evaluation is deterministic.
    bb.train()
    assert not torch.equal(bb(x), bb(x))
    assert layer.dropout.p == 0.1


# --- the shared ResNet-18 trunk computes torchvision's ResNet-18 ------------------------------------------------------
def _torchvision_maps(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def test_resnet18_trunk_computes_torchvisions_resnet18_maps_and_batchnorm_statistics():
    # docs/methods/README.md#encoders: model.width=64, blocks=[2,2,2,2] is exactly torchvision's ResNet-18 (OGM-GE's
    # backbone). Same weights, same input: the same maps in training (max_pool2d, batch statistics, the running
    # statistics' momentum) and in evaluation (StemMaxPool's fast path, running statistics), so a stem stride or
    # padding, a stage stride, a ReLU, a BatchNorm eps/momentum or the pool's window that differs shows. The state
    # dict's shapes (test above) cannot tell those apart.
    import torchvision.models as tvm

    from baselines.networks import ResNetTrunk

    torch.manual_seed(0)
    trunk = ResNetTrunk(3).double()
    with torch.no_grad():
        for module in trunk.modules():
            if isinstance(module, nn.BatchNorm2d):   # affine and running statistics away from 1/0
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    ref = tvm.resnet18().double()
    ref.load_state_dict({**{_torchvision_name(k): v for k, v in trunk.state_dict().items()},
                         "fc.weight": ref.fc.weight, "fc.bias": ref.fc.bias})
    x = torch.randn(2, 3, 45, 38, dtype=torch.float64)   # odd sizes: a padding or stride off by one changes shapes
    trunk.train()
    ref.train()
    maps = trunk(x.clone().requires_grad_())
    with torch.no_grad():
        expected = _torchvision_maps(ref, x)
    assert maps.shape == expected.shape == (2, 512, 2, 2)
    close(maps.detach(), expected)
    ours, theirs = trunk.state_dict(), ref.state_dict()
    for key, value in ours.items():   # running means/vars after one step: torchvision's momentum 0.1
        close(value, theirs[_torchvision_name(key)], msg=key)
    trunk.eval()
    ref.eval()
    with torch.no_grad():
        close(trunk(x), _torchvision_maps(ref, x))


def test_spectrogram_encoder_averages_the_trunks_map_over_frequency_and_time():
    # OGM-GE models/basic_model.py: a_feature = F.adaptive_avg_pool2d(a, 1), a mean (not a max) over (F', T').
    torch.manual_seed(0)
    encoder = build_encoder(ModalitySpec("audio", "spectrogram", (1, 40, 36)), model_hp(width=4, blocks=[1, 1, 1, 1]))
    encoder.eval()
    x = torch.randn(2, 1, 40, 36)
    with torch.no_grad():
        maps = encoder.trunk(x)
        assert maps.shape[2:] == (2, 2)
        close(encoder(x), maps.mean(dim=(2, 3)))


def test_bb_init_draws_kaiming_normal_fan_out_convs_and_torch_init_keeps_pytorchs_defaults():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 64, 5), nn.BatchNorm2d(64), nn.Linear(300, 600))
    init_model(model, model_hp(init="bb"))
    # BalanceBenchmark resnet_arch: kaiming_normal_(mode="fan_out", nonlinearity="relu"), fan_out = 64 * 25.
    assert model[0].weight.std().item() == pytest.approx((2 / (64 * 25)) ** 0.5, rel=0.05)
    # model.init=torch: nothing is re-drawn (OGM-GE's rule would zero the linear bias and set BN weights to 1).
    model = nn.Sequential(nn.Conv2d(4, 64, 5), nn.BatchNorm2d(64), nn.Linear(300, 600))
    with torch.no_grad():
        model[1].weight.fill_(3.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init_model(model, model_hp(init="torch"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_mlp_encoder_hidden_and_output_widths_follow_their_knobs():
    encoder = build_encoder(ModalitySpec("feat", "vector", (7,)), model_hp(mlp_hidden=6, feature_dim=4))
    assert (encoder.net[0].in_features, encoder.net[0].out_features) == (7, 6)
    assert (encoder.net[2].in_features, encoder.net[2].out_features, encoder.out_dim) == (6, 4, 4)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("spec, stored", [(ModalitySpec("visual", "frames", (3, 2, 32, 32)), "contiguous"),
                                          (ModalitySpec("visual", "frames", (3, 2, 32, 32)), "hwc"),
                                          (ModalitySpec("audio", "spectrogram", (1, 32, 24)), "contiguous")],
                         ids=["frames", "frames-hwc", "spectrogram"])
def test_model_channels_last_runs_every_trunk_stage_in_channels_last(spec, stored, channels_last):
    # A 1-channel spectrogram is contiguous in both layouts, so converting the input alone left the audio trunk in
    # the default layout: what each stage receives shows the layout the trunk runs in. Frames served from an (H, W, C)
    # cache are channels-last strided; the trunk ran channels-last on them unasked, where torch 2.14.1's CPU backward
    # of the width-4 1x1 stride-2 shortcut crashes the process on 224-pixel frames.
    encoder = build_encoder(spec, model_hp(width=4, blocks=[1, 1, 1, 1], channels_last=channels_last))
    seen = []
    for stage in encoder.trunk.stages:
        stage.register_forward_pre_hook(lambda _, args: seen.append(
            args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous()))
    x = torch.randn(2, *spec.shape)
    if stored == "hwc":  # (B, C, T, H, W) viewed from (B, T, H, W, C) memory, as the frame caches serve it
        x = x.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3)
    encoder(x)
    assert seen == [channels_last] * 4
    reference = build_encoder(spec, model_hp(width=4, blocks=[1, 1, 1, 1]))
    reference.load_state_dict(encoder.state_dict())
    # The layout changes the kernels (their float32 rounding), not what they compute; in eval mode, as batch
    # statistics of 2 samples would magnify the rounding.
    close(encoder.eval()(x), reference.eval()(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("in_planes, planes, stride", [(4, 4, 1), (4, 8, 2)])
def test_i3d_block_adds_its_identity_or_projection_shortcut_before_the_last_relu(in_planes, planes, stride):
    from baselines.encoders import BasicBlock3d

    torch.manual_seed(0)
    block = BasicBlock3d(in_planes, planes, stride).eval()
    x = torch.randn(2, in_planes, 4, 6, 6)
    with torch.no_grad():
        branch = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        shortcut = x if block.down is None else block.down[1](block.down[0](x))
        assert (block.down is None) == (stride == 1 and in_planes == planes)
        close(block(x), torch.relu(branch + shortcut))
