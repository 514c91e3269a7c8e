"""Speed benchmarks: per-step cost of every method against ``joint``, and pipeline efficiency of an epoch.

- ``step``: every registered method takes the same batches; the median time of one ``update`` (after warm-up) is
  reported beside ``joint``'s. Epoch hooks (prototype passes, G-Blending's estimation, teacher pre-training) are not
  part of a step; their cost is stated in each method's docstring.
- ``epoch``: one training epoch through the real loader (gather + transfer + augmentation + updates) against the same
  updates on batches already materialised on the device (model-only time). The ratio is the pipeline overhead.
Figures are benchmark results written to ``results/bench/``, never assertions in tests.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from baselines.base import Loaders, StepInfo
from baselines.registry import list_methods
from benchmarks.config import RunConfig, build_config
from benchmarks.runner import build_data, build_method, make_loaders, seed_everything, select_device

# CREMA-D as the AUG recipe serves it (1 frame, 20 s STFT 257x1250) but random: model cost without the dataset.
SHAPES: dict[str, dict[str, Any]] = {
    "cremad": {"data": {"num_classes": 6, "audio_shape": [1, 257, 1250], "visual_shape": [3, 1, 224, 224],
                        "n_train": 256, "n_val": 64, "n_test": 64},
               "model": {}, "train": {"batch_size": 64}},
    "small": {"data": {"num_classes": 6, "audio_shape": [1, 64, 128], "visual_shape": [3, 1, 64, 64],
                       "n_train": 128, "n_val": 32, "n_test": 32},
              "model": {"width": 8}, "train": {"batch_size": 16}},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def bench_steps(overrides: dict, methods: list[str] | None = None, repeats: int = 5, warmup: int = 2,
                log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Median seconds per ``update`` for each method on the same batches, and the ratio to ``joint``."""
    names = methods or list(list_methods())
    if "joint" in names:
        names = ["joint"] + [n for n in names if n != "joint"]
    rows: list[dict[str, Any]] = []
    for name in names:
        cfg = build_config(name, "synthetic", overrides)
        device = select_device(cfg.train.device)
        seed_everything(cfg.train.seed, deterministic=False)
        bundle = build_data(cfg)
        method = build_method(cfg, bundle, device)
        loaders = make_loaders(cfg, bundle, device)
        method.ctx.loaders = loaders
        batches = [b for _, b in zip(range(warmup + repeats), loaders.train)]
        method.train()
        step = iter(range(10 ** 9))

        def one() -> None:
            i = next(step)
            method.update(batches[i % len(batches)], StepInfo(0, i, len(loaders.train), cfg.train.epochs))

        times = time_calls(one, device, repeats, warmup)
        rows.append({"method": name, "title": type(method).title, "step_s": statistics.median(times),
                     "device": str(device)})
        log(f"  {name:<14} {rows[-1]['step_s'] * 1e3:9.1f} ms/step")
    base = next((r["step_s"] for r in rows if r["method"] == "joint"), None)
    for r in rows:
        r["ratio_to_joint"] = r["step_s"] / base if base else None
    return rows


def bench_epoch(cfg: RunConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """One epoch through the loader vs the same updates on device-resident batches."""
    device = select_device(cfg.train.device)
    seed_everything(cfg.train.seed, deterministic=False)
    bundle = build_data(cfg)
    method = build_method(cfg, bundle, device)
    loaders: Loaders = make_loaders(cfg, bundle, device)
    method.ctx.loaders = loaders
    method.train()
    n = len(loaders.train)

    def loader_only() -> None:
        for _ in loaders.train:
            pass

    def full_epoch() -> None:
        for i, batch in enumerate(loaders.train):
            method.update(batch, StepInfo(0, i, n, cfg.train.epochs))

    resident = list(loaders.train)

    def model_only() -> None:
        for i, batch in enumerate(resident):
            method.update(batch, StepInfo(0, i, n, cfg.train.epochs))

    t_loader = min(time_calls(loader_only, device, 2, 1))
    t_full = min(time_calls(full_epoch, device, 2, 1))
    t_model = min(time_calls(model_only, device, 2, 1))
    out = {"method": cfg.method, "dataset": cfg.dataset, "device": str(device), "batches": n,
           "samples": loaders.train.num_samples, "loader_only_s": t_loader, "epoch_s": t_full,
           "model_only_s": t_model, "epoch_over_model": t_full / t_model}
    log(f"  epoch {t_full:.2f}s, model-only {t_model:.2f}s, loader-only {t_loader:.2f}s "
        f"-> epoch/model {out['epoch_over_model']:.2f}")
    return out


def markdown_steps(rows: list[dict[str, Any]], caption: str) -> str:
    lines = [f"**{caption}**", "", "| method | ms / step | × joint |", "|---|---:|---:|"]
    for r in rows:
        ratio = f"{r['ratio_to_joint']:.2f}" if r["ratio_to_joint"] is not None else "–"
        lines.append(f"| {r['title']} (`{r['method']}`) | {r['step_s'] * 1e3:.1f} | {ratio} |")
    return "\n".join(lines) + "\n"


def markdown_epoch(rows: list[dict[str, Any]], caption: str) -> str:
    lines = [f"**{caption}**", "", "| method | dataset | batches | epoch s | model-only s | loader-only s | "
             "epoch / model |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['dataset']} | {r['batches']} | {r['epoch_s']:.2f} | "
                     f"{r['model_only_s']:.2f} | {r['loader_only_s']:.2f} | {r['epoch_over_model']:.2f} |")
    return "\n".join(lines) + "\n"
