"""Every method's training step and prediction keep a float64 run in float64 (``augbench parity`` compares at
1e-10), on image, spectrogram and vector modalities: losses and scores go through ``loss_precision``, which promotes
only half precision, instead of ``.float()``."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.overrides import TorchFunctionMode

from baselines.base import StepInfo
from baselines.encoders import GRUSequenceEncoder, TransformerSequenceEncoder
from baselines.networks import MODEL_HPARAMS, MLPEncoder
from baselines.registry import list_methods
from benchmarks.config import method_hparams
from core.hparams import resolve
from datasets.registry import get_dataset
from tests.conftest import TINY_DATA, TINY_MODEL, build_with, first_batch64, float64_default, make_context


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
def test_method_steps_and_predicts_in_float64_without_float32_tensors(cls, tiny_bundle):
    with float64_default():
        torch.manual_seed(0)
        method = build_with(cls, tiny_bundle)
        method.train()
        batch = first_batch64(tiny_bundle)
        with Float32Watch() as watch:
            logs = method.update(batch, StepInfo(1, 1, 2, 2))
        assert watch.seen == [] and isinstance(logs["loss"], float)
        # Predictions had been cast to float32 (``.float()``) in several methods.
        method.eval()
        with Float32Watch() as watch:
            pred = method.predict(batch)
    assert watch.seen == []
    assert pred.fused.dtype == torch.float64 and all(z.dtype == torch.float64 for z in pred.per_modality.values())


@pytest.mark.parametrize("cls", [c for c in list_methods().values() if 3 in c.MODALITIES], ids=lambda c: c.name)
def test_a_vector_modality_steps_in_float64(cls):
    # The third synthetic modality is a feature vector (MLPEncoder), which cast its input to float32 and failed.
    data = get_dataset("synthetic")
    bundle = data.build(resolve("data", data.HPARAMS, "synthetic", {**TINY_DATA, "modalities": 3}))
    ctx = dataclasses.replace(make_context(), model_hp=resolve("model", MODEL_HPARAMS, None,
                                                                {**TINY_MODEL, "feature_dim": 32}))
    with float64_default():
        torch.manual_seed(0)
        # feature_dim: the vector encoder's width equals the others', as shared-head methods need
        method = cls(bundle.task, resolve(cls.name, method_hparams(cls), "synthetic", {}, variants=cls.VARIANTS), ctx)
        method.train()
        batch = first_batch64(bundle)
        with Float32Watch() as watch:
            logs = method.update(batch, StepInfo(1, 1, 2, 2))
    assert watch.seen == [] and isinstance(logs["loss"], float)


@pytest.mark.parametrize("encoder", [
    lambda: MLPEncoder(6, 8, 4),
    lambda: GRUSequenceEncoder(6, 8, 1),
    lambda: TransformerSequenceEncoder(6, 8, 4, 2, 1),
], ids=["mlp", "gru", "transformer"])
def test_vector_and_sequence_encoders_keep_the_runs_dtype_and_read_half_precision_inputs(encoder):
    with float64_default():
        enc = encoder()
        assert enc(torch.randn(3, 5, 6)).dtype == torch.float64
    assert encoder()(torch.randn(3, 5, 6).half()).dtype == torch.float32, "a half-precision cache serves float32 runs"
