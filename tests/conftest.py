"""Shared fixtures: tiny models, tiny synthetic data, W&B off, one CPU thread per test process."""

from __future__ import annotations

import contextlib
import json
import os

os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402
import torch  # noqa: E402

from baselines.base import Loaders, TrainContext  # noqa: E402
from baselines.networks import MODEL_HPARAMS  # noqa: E402
from baselines.registry import list_methods  # noqa: E402
from benchmarks.config import TRAIN_HPARAMS, build_config, method_hparams  # noqa: E402
from benchmarks.runner import train_run  # noqa: E402
from core.distributed import DistContext, init_from_env  # noqa: E402
from core.hparams import resolve  # noqa: E402
from datasets.registry import get_dataset  # noqa: E402

torch.set_num_threads(1)

# Small enough that a training step takes milliseconds on CPU, big enough to exercise the real encoder code.
TINY_MODEL = {"width": 4, "blocks": [1, 1, 1, 1]}
TINY_DATA = {"n_train": 64, "n_val": 16, "n_test": 16, "audio_shape": [1, 16, 16], "visual_shape": [3, 1, 16, 16]}
TINY_TRAIN = {"batch_size": 16, "eval_batch_size": 32, "epochs": 2, "lr": 0.01}


def tiny_overrides(method: str | None = None, **method_hp) -> dict:
    out = {"model": dict(TINY_MODEL), "data": dict(TINY_DATA), "train": dict(TINY_TRAIN)}
    if method and method_hp:
        out[method] = method_hp
    return out


def epoch_record(epoch: int, train: dict | None = None, diag: dict | None = None) -> dict:
    """One metrics.jsonl record with the parts ``Method.mechanism_acted`` reads (a training loss always logged)."""
    return {"epoch": epoch, "train": {"loss": 1.0, **(train or {})}, "diag": dict(diag or {})}


def acted(method: str, history: list[dict]) -> bool | None:
    """The registered ``method``'s verdict on ``history``."""
    return list_methods()[method].mechanism_acted(history)


def run_history(run_dir, method: str, epochs: int, **method_hp) -> list[dict]:
    """The metrics.jsonl records of a tiny synthetic run of ``method`` trained through the runner into
    ``run_dir / method``."""
    overrides = tiny_overrides(method, **method_hp)
    overrides["train"]["epochs"] = epochs
    train_run(build_config(method, "synthetic", overrides), run_dir / method, log=lambda *_: None)
    return [json.loads(line) for line in (run_dir / method / "metrics.jsonl").read_text().splitlines()]


def interrupted_run(run_dir, epochs: int = 3, **train):
    """A tiny synthetic joint run stopped (like a kill) right after its first epoch is checkpointed; its config."""
    overrides = tiny_overrides()
    overrides["train"].update(epochs=epochs, **train)
    cfg = build_config("joint", "synthetic", overrides)

    def stop(line: str) -> None:
        if line.startswith("epoch 0"):
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        train_run(cfg, run_dir, log=stop)
    return cfg


@pytest.fixture
def tiny_bundle():
    """A 2-modality synthetic bundle (audio dominant)."""
    cls = get_dataset("synthetic")
    return cls.build(resolve("data", cls.HPARAMS, "synthetic", TINY_DATA))


def make_context(epochs: int = 2, **train) -> TrainContext:
    """A CPU TrainContext with tiny-model knobs, for building a method directly in a unit test."""
    train_hp = resolve("train", TRAIN_HPARAMS, None, {**TINY_TRAIN, "epochs": epochs, **train})
    model_hp = resolve("model", MODEL_HPARAMS, None, TINY_MODEL)
    return TrainContext(device=torch.device("cpu"), epochs=epochs, train_hp=train_hp, model_hp=model_hp)


def first_batch(bundle, split: str = "train", batch_size: int = 16):
    return next(iter(bundle.loader(split, batch_size=batch_size, train=False, seed=0)))


def first_batch64(bundle, split: str = "train"):
    """``first_batch`` with its floating-point tensors in float64, for the float64 step tests."""
    return {k: (v.double() if v.is_floating_point() else v) for k, v in first_batch(bundle, split).items()}


@contextlib.contextmanager
def float64_default():
    """torch's default dtype float64 inside the block (modules built there get float64 parameters), restored after."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def tiny_loaders(bundle) -> Loaders:
    """Train (shuffled, batch 16), val and test (batch 32) loaders over a bundle, as the runner builds them."""
    return Loaders(bundle.loader("train", batch_size=16, train=True, seed=0),
                   bundle.loader("val", batch_size=32, train=False, seed=0),
                   bundle.loader("test", batch_size=32, train=False, seed=0))


def build_with(cls, bundle, **overrides):
    """Method class ``cls`` on ``bundle`` with its declared knobs plus ``overrides``, in a tiny CPU context."""
    hp = resolve(cls.name, method_hparams(cls), bundle.task.dataset, overrides, variants=cls.VARIANTS)
    return cls(bundle.task, hp, make_context())


def freeze_steps(method):
    """Keep the gradients ``update`` leaves behind by turning the optimizer step into a no-op."""
    method.optimizer.step = lambda *args, **kwargs: None
    return method


def join_gloo(rank: int, port: int, world: int) -> tuple[DistContext, bool]:
    """In a spawned test process: join a ``world``-rank gloo group on this machine as ``rank``, one thread each."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), WANDB_MODE="disabled", GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    return init_from_env("cpu")
