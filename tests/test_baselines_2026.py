"""Crafted-tensor checks for DGL (ICCV 2025) and MNL (NeurIPS 2025): each test pins the method's characteristic
computation on hand-computed values or against an autograd reference of the stated rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from baselines.base import StepInfo
from baselines.dgl import DGL
from tests.conftest import build_with, first_batch, freeze_steps

STEP = StepInfo(epoch=0, step=0, steps_per_epoch=4, epochs=10)


# --- DGL ----------------------------------------------------------------------------------------------------------
def dgl_reference_grads(method, batch, alpha):
    """Encoders: autograd of alpha * sum_m CE(z_m); classifier: autograd of CE(z) on the (fixed) features."""
    h = method.model.features(method.inputs(batch))
    y = batch["label"]
    head = method.model.head
    z_uni = [head({n: v if n == m else torch.zeros_like(v) for n, v in h.items()})[0] for m in h]
    enc = [p for m in h for p in method.model.encoders[m].parameters()]
    g_enc = torch.autograd.grad(alpha * sum(F.cross_entropy(v, y) for v in z_uni), enc)
    z = head({m: v.detach() for m, v in h.items()})[0]
    heads = list(head.parameters())
    g_head = torch.autograd.grad(F.cross_entropy(z, y), heads)
    return dict(zip(enc + heads, g_enc + g_head))


def test_dgl_encoders_learn_only_from_unimodal_losses_and_the_head_only_from_the_fused_loss(tiny_bundle):
    method = freeze_steps(build_with(DGL, tiny_bundle, clip_norm=0.0, alpha=3.0))
    batch = first_batch(tiny_bundle)
    reference = dgl_reference_grads(method, batch, alpha=3.0)
    method.update(batch, STEP)
    params = list(method.model.parameters())
    assert set(params) == set(reference)
    for p in params:
        torch.testing.assert_close(p.grad, reference[p], rtol=1e-4, atol=1e-6)


def test_dgl_unimodal_logits_keep_the_full_bias_and_the_fused_logits_carry_no_encoder_gradient(tiny_bundle):
    method = build_with(DGL, tiny_bundle)
    batch = first_batch(tiny_bundle)
    z, z_uni = method.forward_all(batch)
    h = method.model.features(method.inputs(batch))
    fc, (a, b) = method.model.head.fc, method.model.head.bounds["visual"]
    torch.testing.assert_close(z_uni["visual"], h["visual"] @ fc.weight[:, a:b].t() + fc.bias, rtol=1e-5, atol=1e-6)
    enc = list(method.model.encoders["audio"].parameters())
    assert all(g is None for g in torch.autograd.grad(z.sum(), enc, allow_unused=True))


def test_dgl_clips_the_global_gradient_norm(tiny_bundle):
    method = freeze_steps(build_with(DGL, tiny_bundle, clip_norm=1e-3))
    method.update(first_batch(tiny_bundle), STEP)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in method.model.parameters()]))
    assert norm.item() == pytest.approx(1e-3, rel=1e-4)


def test_dgl_keeps_float64_losses(tiny_bundle):
    method = build_with(DGL, tiny_bundle).double()
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in first_batch(tiny_bundle).items()}
    z, z_uni = method.forward_all(batch)
    assert z.dtype == torch.float64 and all(v.dtype == torch.float64 for v in z_uni.values())
