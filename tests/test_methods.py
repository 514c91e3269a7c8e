"""Registry-driven smoke tests: every registered method builds, steps, predicts and checkpoints on synthetic data."""

from __future__ import annotations

import json
import math

import pytest
import torch

from baselines.base import StepInfo, judges_mechanism, logged_values, zero_grad
from baselines.registry import list_methods
from benchmarks.config import build_config, merge_overrides, method_hparams
from benchmarks.demo import load_demo_config, scaled_schedule
from benchmarks.runner import train_run
from core.hparams import resolve
from tests.conftest import first_batch, make_context, tiny_loaders, tiny_overrides

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


def test_train_amp_autocasts_to_bf16_on_the_cpu_and_float32_without_it():
    linear, x = torch.nn.Linear(4, 2), torch.randn(3, 4)
    for amp, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        ctx = make_context()
        ctx.amp = amp
        with ctx.autocast():
            assert linear(x).dtype == dtype, amp


AMP_EPOCHS = 5


@pytest.mark.parametrize("name", METHODS)
def test_method_trains_through_the_runner_with_bf16_autocast_and_channels_last_on_the_cpu(name, tmp_path):
    # The CUDA check (tests/test_gpu_methods.py) on the CPU, where autocast runs the same bf16 branch: a dtype
    # mismatch in a method's hooks shows here before a GPU run. The demo's epoch scaling makes each method's later
    # phases (stops, stage switches, re-estimates) run within the short run.
    schedule = scaled_schedule(load_demo_config()["schedule"].get(name, {}), name, AMP_EPOCHS)
    # 32x32 inputs: at 16x16 the last ResNet stage convolves a 1x1 map, where torch 2.14's CPU bf16 kernel returns
    # garbage weight gradients (3x3 kernel, stride 2, padding 1; fp32 and CUDA are right). Its output is still 1x1,
    # on which BatchNorm cannot train with one sample, and a method that resamples rows (SMV) can end an epoch with
    # a batch of one: partial batches are dropped.
    bf16 = {"train": {"device": "cpu", "amp": True, "epochs": AMP_EPOCHS, "drop_last": True},
            "model": {"channels_last": True},
            "data": {"audio_shape": [1, 32, 32], "visual_shape": [3, 1, 32, 32]}}
    summary = train_run(build_config(name, "synthetic", merge_overrides(tiny_overrides(), bf16, schedule)),
                        tmp_path / name, log=lambda *_: None)
    assert summary["protocols"]["last"]["test"]["per_modality"]
    epochs = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == AMP_EPOCHS and all(math.isfinite(e["train"]["loss"]) for e in epochs), epochs
    # A method that judges its mechanism reads keys its own runs log: a misspelt key would leave every run unjudged.
    cls = list_methods()[name]
    verdict = cls.mechanism_acted(epochs)
    assert isinstance(verdict, bool) if judges_mechanism(cls) else verdict is None, (name, verdict)


def test_zero_grad_clears_every_gradient_past_a_missing_one_either_way():
    for set_to_none in (True, False):
        a, b, c = (torch.nn.Parameter(torch.ones(2)) for _ in range(3))
        a.grad, c.grad = torch.ones(2), torch.ones(2)   # b has none
        zero_grad([b, a, c], set_to_none=set_to_none)
        for p in (a, c):
            assert (p.grad is None) if set_to_none else torch.equal(p.grad, torch.zeros(2))
        assert b.grad is None


def test_a_checkpoint_with_another_number_of_optimizers_is_refused(tiny_bundle):
    method = build("joint", tiny_bundle, make_context())
    state = method.checkpoint_state()
    state["optimizers"] = [*state["optimizers"], state["optimizers"][0]]
    with pytest.raises(RuntimeError, match="checkpoint has 2 optimizers, method 'joint' built 1"):
        build("joint", tiny_bundle, make_context()).load_checkpoint_state(state)


def test_logged_values_reads_one_key_or_every_key_of_a_prefix_in_epoch_order():
    history = [{"epoch": 0, "train": {"coeff_audio": 0.5, "coeff_visual": 1.0, "coeff": 7.0}, "diag": {}},
               {"epoch": 1, "train": {"coeff_audio": 0.25}},
               {"epoch": 2, "train": {"coeff": 3.0}, "diag": {"coeff_audio": 9.0}}]
    assert logged_values(history, "train", "coeff_") == [0.5, 1.0, 0.25]
    assert logged_values(history, "train", "coeff") == [7.0, 3.0], "a key not ending in _ is matched exactly"
    assert logged_values(history, "diag", "coeff_") == [9.0]
    assert logged_values(history, "diag", "missing") == []
