"""``Method.predict`` has no side effects: for every registered method, evaluating batches leaves its parameters,
buffers, optimizer states, Python attributes, module modes and the RNG streams exactly as they were."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from baselines.base import StepInfo
from baselines.registry import list_methods
from tests.conftest import first_batch, make_context, tiny_loaders
from tests.test_methods import build

MODULE_INTERNALS = set(vars(nn.Module())) | {"ctx", "task", "hp"}


def fingerprint(value: Any, depth: int = 0) -> Any:
    """A comparable copy of ``value``: tensors and arrays cloned, containers recursed, objects by their attributes."""
    if depth > 6:
        return repr(type(value))
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    if isinstance(value, dict):
        return {k: fingerprint(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [type(value).__name__, *(fingerprint(v, depth + 1) for v in items)]
    if isinstance(value, nn.Module):
        return {"training": [m.training for m in value.modules()],
                "tensors": {k: fingerprint(v) for k, v in [*value.named_parameters(), *value.named_buffers()]}}
    if isinstance(value, torch.optim.Optimizer):
        return fingerprint(value.state_dict(), depth + 1)
    if hasattr(value, "__dict__"):
        return [type(value).__name__, fingerprint(vars(value), depth + 1)]
    return repr(value)


def state(method: nn.Module) -> dict[str, Any]:
    return {
        "module": fingerprint(method),
        "attributes": {k: fingerprint(v) for k, v in vars(method).items() if k not in MODULE_INTERNALS},
        "optimizers": [fingerprint(opt.state_dict()) for opt in method.ctx.optimizers],
        "lr_factor": method.ctx.lr_factor,
        "rng": {"torch": torch.get_rng_state(), "numpy": fingerprint(np.random.get_state()),
                "python": fingerprint(random.getstate())},
    }


def assert_same(got: Any, want: Any, path: str = "") -> None:
    assert type(got) is type(want), f"{path}: {type(want).__name__} became {type(got).__name__}"
    if isinstance(want, torch.Tensor):
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=f"{path} changed")
    elif isinstance(want, np.ndarray):
        np.testing.assert_array_equal(got, want, err_msg=f"{path} changed")
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), f"{path}: keys {sorted(want)} became {sorted(got)}"
        for k in want:
            assert_same(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), f"{path}: length {len(want)} became {len(got)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{path}[{i}]")
    else:
        assert got == want or (got != got and want != want), f"{path}: {want!r} became {got!r}"


@pytest.mark.parametrize("name", sorted(list_methods()))
def test_predict_leaves_the_method_unchanged(name, tiny_bundle):
    ctx = make_context(epochs=2)
    method = build(name, tiny_bundle, ctx)
    loaders = tiny_loaders(tiny_bundle)
    ctx.loaders = loaders
    method.train()
    method.on_epoch_start(0, loaders)
    batch = first_batch(tiny_bundle)
    for step in range(2):
        method.update(batch, StepInfo(epoch=0, step=step, steps_per_epoch=4, epochs=2))
    method.eval()
    before = state(method)
    for eval_batch in loaders.val:
        method.predict(eval_batch)
    method.predict(batch)
    assert_same(state(method), before, name)


def test_the_check_sees_a_recorded_prediction(tiny_bundle):
    """A predict that keeps a note (as AUG's once did) is caught."""
    method = build("joint", tiny_bundle, make_context())
    method.notes = []
    method.eval()
    before = state(method)
    method.notes.append(method.predict(first_batch(tiny_bundle)).fused.argmax(1))
    with pytest.raises(AssertionError, match="notes"):
        assert_same(state(method), before)
