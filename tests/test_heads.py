"""Fusion heads: shapes for 2 and 3 modalities and the split-head identity."""

from __future__ import annotations

import pytest
import torch

from baselines.heads import build_head
from tests.numeric import close

K = 5


def features(dims):
    torch.manual_seed(0)
    return {n: torch.randn(4, d) for n, d in dims.items()}


@pytest.mark.parametrize("dims", [{"audio": 8, "visual": 6}, {"audio": 8, "visual": 6, "text": 3}])
@pytest.mark.parametrize("kind", ["concat", "sum", "weight", "film", "gated", "separate"])
def test_head_shapes(kind, dims):
    head = build_head(kind, dims, K)
    z, z_uni = head(features(dims))
    assert z.shape == (4, K)
    if head.has_unimodal:
        assert set(z_uni) == set(dims) and all(v.shape == (4, K) for v in z_uni.values())
    else:
        assert z_uni is None


@pytest.mark.parametrize("dims", [{"audio": 8, "visual": 6}, {"audio": 8, "visual": 6, "text": 3}])
def test_concat_split_head_logits_sum_to_fused(dims):
    head = build_head("concat", dims, K)
    h = features(dims)
    z, z_uni = head(h)
    close(sum(z_uni.values()), z)
    w, b = head.fc.weight, head.fc.bias
    close(z_uni["audio"], h["audio"] @ w[:, :8].t() + b / len(dims))
    close(z_uni["visual"], h["visual"] @ w[:, 8:14].t() + b / len(dims))


def test_sum_and_weight_heads_combine_unimodal_logits():
    dims = {"audio": 8, "visual": 6}
    h = features(dims)
    z, z_uni = build_head("sum", dims, K)(h)
    close(z, z_uni["audio"] + z_uni["visual"])
    head = build_head("weight", dims, K)
    with torch.no_grad():
        head.mix.copy_(torch.tensor([0.0, torch.log(torch.tensor(3.0))]))
    z, z_uni = head(h)
    close(z, 0.25 * z_uni["audio"] + 0.75 * z_uni["visual"])


def test_film_conditions_visual_on_audio():
    dims = {"audio": 8, "visual": 6}
    head = build_head("film", dims, K)
    h = features(dims)
    gamma, beta = head.film(h["audio"]).chunk(2, dim=1)
    close(head(h)[0], head.out(gamma * h["visual"] + beta))


def test_gated_head_gates_the_last_modality_by_a_sigmoid_of_the_others():
    dims = {"audio": 8, "visual": 6}
    head = build_head("gated", dims, K)
    h = features(dims)
    expected = head.out(torch.sigmoid(head.fc_x(h["audio"])) * head.fc_y(h["visual"]))
    close(head(h)[0], expected)
    tanh_gate = head.out(torch.tanh(head.fc_x(h["audio"])) * head.fc_y(h["visual"]))
    assert not torch.allclose(expected, tanh_gate), "the crafted features tell sigmoid from tanh"
