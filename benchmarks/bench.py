"""Speed benchmarks: per-step cost of every method against ``joint``, and pipeline efficiency of an epoch.

- ``step``: every registered method takes the same batches; the time of one ``update`` (median over a round after
  warm-up, best of rounds interleaved with ``joint``) is reported with its ratio to ``joint``'s. Epoch hooks
  (prototype passes, G-Blending's estimation, teacher pre-training) are not part of a step; their cost is stated in
  each method's docstring. Every step is taken at epoch 0, so a method that runs a cheaper branch during a warm-up
  (ARL, MIDAS, OPM, Remix, DI-MML's DUC term) is timed in that branch, not in its steady state.
- ``epoch``: one training epoch through the real loader (gather + transfer + augmentation + updates) against the same
  updates on batches already materialised on the device (model-only time). The ratio is the pipeline overhead.
- ``data``: the cache loader against the per-sample media loader (``benchmarks.bench_data``).
Execution options come from the run configuration: ``train.amp`` (bf16 autocast, on the CPU too),
``model.channels_last``, ``train.compile`` (``baselines.networks.compile_encoders``) and the ``data.*`` serving knobs
(``resident``, ``resample``, ``prefetch``). Figures are benchmark results (``augbench bench --publish`` records them in
``results/bench/``), never assertions in tests.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from baselines.base import Loaders, StepInfo
from baselines.registry import list_methods
from benchmarks.bench_data import load_average
from benchmarks.config import RUNNER_NAMESPACES, RunConfig, build_config
from benchmarks.runner import build_data, build_method, make_loaders, seed_everything, select_device
from core.hparams import HParamError

# CREMA-D as the AUG recipe serves it (1 frame, 20 s STFT 257x1250) but random: model cost without the dataset.
SHAPES: dict[str, dict[str, Any]] = {
    "cremad": {"data": {"num_classes": 6, "audio_shape": [1, 257, 1250], "visual_shape": [3, 1, 224, 224],
                        "n_train": 256, "n_val": 64, "n_test": 64},
               "model": {}, "train": {"batch_size": 64}},
    "small": {"data": {"num_classes": 6, "audio_shape": [1, 64, 128], "visual_shape": [3, 1, 64, 64],
                       "n_train": 128, "n_val": 32, "n_test": 32},
              "model": {"width": 8}, "train": {"batch_size": 16}},
}


# The projection of a full run from one timed epoch: CREMA-D's training clips in OGM-GE's train.csv, and the run
# length the speed target names (200 epochs of AUG on CREMA-D).
CREMAD_TRAIN_CLIPS = 6698
PROJECTED_EPOCHS = 200


def projects_to_cremad(cfg: RunConfig) -> bool:
    """Whether an epoch of ``cfg`` stands for an epoch on CREMA-D: served from a CREMA-D cache, or synthetic at
    CREMA-D's input shapes (``SHAPES["cremad"]``). A smaller shape's epoch (the CPU default, ``small``) says nothing
    of a CREMA-D run's length."""
    if cfg.dataset == "cremad":
        return True
    data = cfg.data.as_dict()
    return cfg.dataset == "synthetic" and all(data.get(k) == SHAPES["cremad"]["data"][k]
                                              for k in ("audio_shape", "visual_shape"))


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


class StepTimer:
    """One method built on the synthetic task, stepping through a fixed list of batches."""

    def __init__(self, name: str, overrides: dict, batches: list[dict] | None, count: int) -> None:
        cfg = build_config(name, "synthetic", overrides)
        self.cfg, self.device = cfg, select_device(cfg.train.device)
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        bundle = build_data(cfg)
        self.method = build_method(cfg, bundle, self.device)
        loaders = make_loaders(cfg, bundle, self.device)
        self.method.ctx.loaders = loaders
        self.batches = batches if batches is not None else [b for _, b in zip(range(count), loaders.train)]
        self.steps_per_epoch = len(loaders.train)
        self.method.train()
        self.step = 0

    def one(self) -> None:
        i, self.step = self.step, self.step + 1
        self.method.update(self.batches[i % len(self.batches)],
                           StepInfo(0, i % self.steps_per_epoch, self.steps_per_epoch, self.cfg.train.epochs))

    def median(self, repeats: int, warmup: int) -> float:
        return statistics.median(time_calls(self.one, self.device, repeats, warmup))


def own_overrides(overrides: dict, method: str) -> dict:
    """The overrides one method's timer takes: the runner's namespaces and the method's own, so that ``--set
    midas.warmup_epochs=0`` times MIDAS past its warm-up while ``joint``, its reference, is built without it."""
    return {ns: v for ns, v in overrides.items() if ns in RUNNER_NAMESPACES or ns == method}


def check_method_namespaces(overrides: dict, methods: list[str]) -> None:
    """Refuse a method namespace that no benchmarked method would take (a typo would otherwise be dropped)."""
    stray = sorted(set(overrides) - set(RUNNER_NAMESPACES) - set(methods))
    if stray:
        raise HParamError(f"--set namespace(s) {stray} name no method benchmarked here ({', '.join(methods)}); "
                          f"valid: {', '.join((*RUNNER_NAMESPACES, *methods))}")


def bench_steps(overrides: dict, methods: list[str] | None = None, repeats: int = 5, warmup: int = 2,
                rounds: int = 3, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Seconds per ``update`` of each method on the same batches, and the ratio to ``joint`` (always timed).

    Each method is timed in ``rounds`` rounds interleaved with ``joint`` (median of ``repeats`` steps after
    ``warmup`` per round; the fastest round counts), so load from other processes and the process's own warm-up
    (allocator, kernel and library caches) shift both figures of a ratio alike.
    """
    names = methods or list(list_methods())
    names = ["joint"] + [n for n in names if n != "joint"]
    check_method_namespaces(overrides, names)
    joint = StepTimer("joint", own_overrides(overrides, "joint"), None, warmup + repeats)
    joint.median(repeats, warmup)
    rows: list[dict[str, Any]] = []
    for name in names:
        timer = joint if name == "joint" else StepTimer(name, own_overrides(overrides, name), joint.batches, 0)
        step = base = float("inf")
        for _ in range(rounds):
            base = min(base, joint.median(repeats, warmup))
            if timer is not joint:
                step = min(step, timer.median(repeats, warmup))
        step = base if timer is joint else step
        rows.append({"method": name, "title": type(timer.method).title, "step_s": step, "joint_step_s": base,
                     "ratio_to_joint": step / base, "device": str(timer.device), "repeats": repeats,
                     "warmup": warmup, "rounds": rounds, "load_average": load_average()})
        log(f"  {name:<14} {step * 1e3:9.1f} ms/step  {step / base:5.2f} x joint")
    return rows


def bench_epoch(cfg: RunConfig, log: Callable[[str], None] = print, repeats: int = 2) -> dict[str, Any]:
    """One epoch through the loader vs the same updates on device-resident batches (best of ``repeats``)."""
    device = select_device(cfg.train.device)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
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
    # What an epoch trains on: under train.drop_last fewer samples than the split holds.
    samples = sum(len(batch["label"]) for batch in resident)

    def model_only() -> None:
        for i, batch in enumerate(resident):
            method.update(batch, StepInfo(0, i, n, cfg.train.epochs))

    t_loader = min(time_calls(loader_only, device, repeats, 1))
    full_epoch()
    model_only()
    t_full = t_model = float("inf")
    # Interleaved, best of each: load from other processes and warm caches favour neither figure.
    for _ in range(repeats):
        t_full = min(t_full, time_calls(full_epoch, device, 1, 0)[0])
        t_model = min(t_model, time_calls(model_only, device, 1, 0)[0])
    data = {k: cfg.data.as_dict()[k] for k in ("resident", "resample", "prefetch") if k in cfg.data.as_dict()}
    projected = (PROJECTED_EPOCHS * CREMAD_TRAIN_CLIPS * t_full / samples
                 if projects_to_cremad(cfg) else None)
    # A cache serves its own recipe, whatever data.recipe says (synthetic data has none).
    out = {"method": cfg.method, "dataset": cfg.dataset, "recipe": bundle.info.get("recipe"), "device": str(device),
           "batches": n, "samples": samples, "batch_size": cfg.train.batch_size, "amp": cfg.train.amp,
           "channels_last": cfg.model.channels_last, "compile": cfg.train.compile,
           "model": f"width {cfg.model.width}, blocks {list(cfg.model.blocks)}", "data": data,
           "loader_only_s": t_loader, "epoch_s": t_full, "model_only_s": t_model, "repeats": repeats,
           "epoch_over_model": t_full / t_model, "step_s": t_full / n,
           "samples_per_s": samples / t_full,
           # Training steps only (evaluation passes excluded), at this epoch's per-sample time.
           "projected_cremad_run_s": projected, "load_average": load_average()}
    projection = (f"; {PROJECTED_EPOCHS} CREMA-D epochs ({CREMAD_TRAIN_CLIPS} clips, training only) projected "
                  f"{projected / 60:.1f} min" if projected is not None else "")
    log(f"  epoch {t_full:.2f}s, model-only {t_model:.2f}s, loader-only {t_loader:.2f}s "
        f"-> epoch/model {out['epoch_over_model']:.2f}; {out['step_s'] * 1e3:.1f} ms/step, "
        f"{out['samples_per_s']:.0f} samples/s{projection}")
    return out


def markdown_steps(rows: list[dict[str, Any]], caption: str) -> str:
    """Each method's ms per step beside the ``joint`` ms per step of the rounds interleaved with it, the ratio's
    denominator (re-timed for every row)."""
    lines = [f"**{caption}**", "", "| method | ms / step | joint ms / step, same rounds | × joint |",
             "|---|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['ratio_to_joint']:.2f}" if r["ratio_to_joint"] is not None else "–"
        lines.append(f"| {r['title']} (`{r['method']}`) | {r['step_s'] * 1e3:.1f} | {r['joint_step_s'] * 1e3:.1f} | "
                     f"{ratio} |")
    return "\n".join(lines) + "\n"


def markdown_epoch(rows: list[dict[str, Any]], caption: str) -> str:
    lines = [f"**{caption}**", "", "| method | dataset | model | batches × size | data serving | epoch s | "
             "model-only s | loader-only s | epoch / model | ms / step | samples/s | "
             f"{PROJECTED_EPOCHS} CREMA-D epochs, min (training steps only, evaluation excluded; CREMA-D inputs) |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        serving = ", ".join(f"{k}={v}" for k, v in r.get("data", {}).items()) or "–"
        projected = r["projected_cremad_run_s"]
        dataset = f"{r['dataset']} (recipe {r['recipe']})" if r.get("recipe") else r["dataset"]
        lines.append(f"| {r['method']} | {dataset} | {r['model']} | {r['batches']} × {r['batch_size']} | "
                     f"{serving} | {r['epoch_s']:.2f} | {r['model_only_s']:.2f} | {r['loader_only_s']:.2f} | "
                     f"{r['epoch_over_model']:.2f} | {r['step_s'] * 1e3:.1f} | {r['samples_per_s']:.0f} | "
                     f"{f'{projected / 60:.1f}' if projected is not None else '–'} |")
    return "\n".join(lines) + "\n"


def markdown_data(rows: list[dict[str, Any]], caption: str) -> str:
    """The data benchmark's rates and ratios in CPU time, the wall-time ratios alongside, then each view's serving
    profile (ms per sample) with the timed rounds' ms per sample beside its total."""
    note = ("Rates and ratios in the process's CPU time (time not given to this process on a shared machine does "
            "not count); the same ratios in wall time in the last ratio column.")
    header = ("| view | cache loader samples/s | per-sample media loader samples/s | cache / media | "
              "bandwidth floor samples/s | floor / cache | GPU path host share samples/s | host share / media | "
              "wall: cache / media, floor / cache, host share / media | crop filter | resident |")
    lines = [f"**{caption}**", "", note, "", header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        view = "train (random crop + flip)" if r["train"] else "test (Resize, views kept)"
        cpu = r["cpu_samples_per_s"]
        lines.append(f"| {view} | {cpu['cache']:.0f} | {cpu['media']:.1f} | {r['cpu_speedup']:.1f} | "
                     f"{cpu['floor']:.0f} | {r['cpu_floor_ratio']:.2f} | {cpu['host']:.0f} | "
                     f"{r['cpu_host_speedup']:.0f} | {r['speedup']:.1f}, {r['floor_ratio']:.2f}, "
                     f"{r['host_speedup']:.0f} | {r['resample'] if r['train'] else '–'} | {r['resident']} |")
    lines += ["", *_profile_table(rows)]
    return "\n".join(lines) + "\n"


def timed_ms_per_sample(row: dict[str, Any]) -> float:
    """The cache loader's ms per sample in the data benchmark's timed rounds, on the profile's clock (CPU time on a
    CPU, wall time on CUDA), so that it can stand beside the profile's total."""
    rate = row["cache_samples_per_s"] if row["device"].startswith("cuda") else row["cpu_samples_per_s"]["cache"]
    return 1e3 / rate


def _profile_table(rows: list[dict[str, Any]]) -> list[str]:
    """The serving profile's caption and table, the timed rounds' ms per sample beside the profile's total."""
    found = dict.fromkeys(k for r in rows for k in r["profile_ms_per_sample"])
    stages = [k for k in found if k != "total"] + ["total"]
    passes, batches = (rows[0]["rounds"], rows[0]["batches"]) if rows else (0, 0)
    caption = (f"Serving profile, ms per sample ({passes} extra passes of the cache loader after the timed rounds, "
               f"as many as there were rounds, each of {batches} batches with every stage timed; the median per "
               "stage; CPU time on a CPU, wall time on CUDA). The passes are separate from the timed rounds: "
               "`python overhead` (the Python between the timed stages) and `loader` (the loader's own work) are the "
               "remainders of a pass's own time, so the stages add up to the profile's total (up to the medians), "
               "not to the timed rounds' figure; `timed ms / sample` is the timed rounds' (1000 / the cache loader's "
               "samples/s above, on the same clock as the profile).")
    header = [{"total": "profile total"}.get(k, k) for k in stages] + ["timed ms / sample"]
    lines = [caption, "", "| view | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    for r in rows:
        view = "train" if r["train"] else "test"
        cells = [f"{r['profile_ms_per_sample'][k]:.3f}" if k in r["profile_ms_per_sample"] else "–" for k in stages]
        lines.append(f"| {view} | " + " | ".join(cells + [f"{timed_ms_per_sample(r):.3f}"]) + " |")
    return lines
