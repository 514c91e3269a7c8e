"""Registry-driven smoke tests: every registered method builds, steps, predicts and checkpoints on synthetic data."""

from __future__ import annotations

import math

import pytest
import torch

from baselines.base import StepInfo
from baselines.registry import list_methods
from benchmarks.config import method_hparams
from core.hparams import resolve
from tests.conftest import first_batch, make_context, tiny_loaders

METHODS = sorted(list_methods())


def build(name, bundle, ctx, **overrides):
    cls = list_methods()[name]
    hp = resolve(name, method_hparams(cls), bundle.task.dataset, overrides, variants=cls.VARIANTS)
    return cls(bundle.task, hp, ctx)


@pytest.mark.parametrize("name", METHODS)
def test_method_trains_a_step_and_predicts(name, tiny_bundle):
    ctx = make_context(epochs=2)
    method = build(name, tiny_bundle, ctx)
    loaders = tiny_loaders(tiny_bundle)
    ctx.loaders = loaders
    method.train()
    method.on_epoch_start(0, loaders)
    method.train()
    batch = first_batch(tiny_bundle)
    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    for step in range(2):
        logs = method.update(batch, StepInfo(epoch=0, step=step, steps_per_epoch=4, epochs=2))
        assert all(math.isfinite(v) for v in logs.values()), logs
    # A training step must move the model: this fails for an update() that never reaches optimizer.step().
    moved = [n for n, p in method.named_parameters() if n in before and not torch.equal(p.detach(), before[n])]
    assert moved, f"{name}: two update() calls changed no parameter"
    method.eval()
    pred = method.predict(batch)
    k = tiny_bundle.task.num_classes
    assert pred.fused.shape == (16, k)
    assert pred.per_modality, "every method reports at least one per-modality output"
    for z in pred.per_modality.values():
        assert z.shape == (16, k)
    method.train()
    method.on_epoch_end(0, loaders)
    state = method.checkpoint_state()
    clone = build(name, tiny_bundle, make_context(epochs=2))
    clone.load_checkpoint_state(state)
    clone.eval()
    method.eval()
    # The same parameters and the same batch: equal up to nothing but the (deterministic) CPU kernels.
    torch.testing.assert_close(clone.predict(batch).fused, method.predict(batch).fused, rtol=0, atol=0)
