"""Every method's training step keeps a float64 run in float64 (``augbench parity`` compares at 1e-10): losses and
scores go through ``loss_precision``, which promotes only half precision, instead of ``.float()``."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from baselines.base import StepInfo
from baselines.registry import list_methods
from tests.conftest import build_with, first_batch64, float64_default


class Float32Watch(TorchFunctionMode):
    """Records the name of every torch function that returns a float32 tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dtype == torch.float32:
            self.seen.append(getattr(func, "__name__", str(func)))
        return out


@pytest.mark.parametrize("cls", list(list_methods().values()), ids=lambda c: c.name)
def test_method_steps_in_float64_without_float32_tensors(cls, tiny_bundle):
    with float64_default():
        torch.manual_seed(0)
        method = build_with(cls, tiny_bundle)
        method.train()
        batch = first_batch64(tiny_bundle)
        with Float32Watch() as watch:
            logs = method.update(batch, StepInfo(1, 1, 2, 2))
    assert watch.seen == [] and isinstance(logs["loss"], float)
