"""Every registered method on CUDA (``pytest -m gpu``): the CUDA-only branches of the runner and the methods (bf16
autocast, channels_last, device-resident batches, compiled encoders) exercised end to end, and float32 CUDA steps
equal to the CPU's."""

from __future__ import annotations

import json
import math

import pytest
import torch

from baselines.base import StepInfo
from baselines.registry import list_methods
from benchmarks.config import build_config, merge_overrides
from benchmarks.demo import load_demo_config, scaled_schedule
from benchmarks.runner import build_data, build_method, make_loaders, seed_everything, train_run
from tests.conftest import tiny_overrides

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def quiet(*_args, **_kwargs) -> None:
    pass


EPOCHS = 5


@pytest.mark.parametrize("name", sorted(list_methods()))
def test_method_trains_on_cuda_with_bf16_autocast_and_channels_last(name, tmp_path):
    # The demo's epoch-count scaling, so that each method's later phases (stops, stage switches, re-estimates,
    # curation) run on the device too within a short run.
    schedule = scaled_schedule(load_demo_config()["schedule"].get(name, {}), name, EPOCHS)
    # The tiny inputs leave a 1x1 map at the last ResNet stage, on which BatchNorm cannot train with one sample, and
    # a method that resamples rows (SMV) can end an epoch with a batch of one: partial batches are dropped.
    cuda = {"train": {"device": "cuda", "amp": True, "epochs": EPOCHS, "drop_last": True},
            "model": {"channels_last": True}}
    cfg = build_config(name, "synthetic", merge_overrides(tiny_overrides(), cuda, schedule))
    summary = train_run(cfg, tmp_path / name, log=quiet)
    last = summary["protocols"]["last"]["test"]
    assert 0.0 <= last["acc"] <= 1.0 and last["per_modality"], last
    epochs = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == EPOCHS and all(math.isfinite(e["train"]["loss"]) for e in epochs), epochs


@pytest.mark.parametrize("name", ["joint", "aug"])
def test_compiled_encoders_train_on_cuda(name, tmp_path):
    cfg = build_config(name, "synthetic", merge_overrides(
        tiny_overrides(), {"train": {"device": "cuda", "amp": True, "compile": True, "epochs": 1}}))
    summary = train_run(cfg, tmp_path / name, log=quiet)
    assert 0.0 <= summary["protocols"]["last"]["test"]["acc"] <= 1.0


@pytest.fixture
def no_tf32():
    """TF32 rounds products to 10 mantissa bits; a CPU/CUDA comparison is of float32 arithmetic on both sides."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# OGM-GE's noise comes from the device's generator, so it is compared without GE (``ogm``).
@pytest.mark.parametrize("name", ["joint", "aug", "ogm", "pmr", "mmpareto"])
def test_float32_steps_on_cuda_equal_the_cpu_steps(name, no_tf32):
    params = {}
    for device in ("cpu", "cuda"):
        cfg = build_config(name, "synthetic", merge_overrides(tiny_overrides(), {"train": {"device": device}}))
        seed_everything(cfg.train.seed, deterministic=True)
        bundle = build_data(cfg)
        method = build_method(cfg, bundle, torch.device(device))
        loaders = make_loaders(cfg, bundle, torch.device(device))
        method.ctx.loaders = loaders
        method.train()
        method.on_epoch_start(0, loaders)
        method.train()
        batches = list(loaders.train)
        for i, batch in enumerate(batches[:3]):
            method.update(batch, StepInfo(0, i, len(batches), cfg.train.epochs))
        params[device] = {k: v.detach().cpu() for k, v in method.state_dict().items() if v.is_floating_point()}
    assert params["cpu"].keys() == params["cuda"].keys()
    for key, value in params["cpu"].items():
        torch.testing.assert_close(params["cuda"][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_a_run_on_cuda_resumes_from_its_checkpoint(tmp_path):
    # The checkpoint is read onto the GPU; its RNG states must go back to the CPU to be restored.
    overrides = merge_overrides(tiny_overrides(), {"train": {"device": "cuda", "epochs": 1}})
    train_run(build_config("joint", "synthetic", overrides), tmp_path / "run", log=quiet)
    extended = build_config("joint", "synthetic", merge_overrides(overrides, {"train": {"epochs": 2}}))
    resumed = train_run(extended, tmp_path / "run", resume=True, extend_epochs=True, log=quiet)
    assert [s["first_epoch"] for s in resumed["segments"]] == [0, 1]
    assert 0.0 <= resumed["protocols"]["last"]["test"]["acc"] <= 1.0
