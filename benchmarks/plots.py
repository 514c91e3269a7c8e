"""Training curves as PNG files (matplotlib's Agg canvas; no display, no pyplot state).

- ``plot_run(run_dir)``: fused and per-modality accuracy per epoch on val and test, the training loss, and every
  numeric series the method logged from ``on_epoch_end`` (the ``diag`` entries of ``metrics.jsonl``: AUG's learner
  counts and confidence scores, OGM's ratios, ...), one panel each.
- ``plot_sweep(sweep_dir)``: per dataset, the test accuracy of the fused output and of each modality over epochs,
  one line per method row (mean over seeds), from every run folder under ``sweep_dir``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml
from matplotlib.figure import Figure

from baselines.registry import list_methods
from benchmarks.records import read_jsonl

SPLITS = ("val", "test")


def run_series(history: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Panel -> series -> one value per epoch (NaN where an epoch lacks it), from ``metrics.jsonl`` records.

    Panels: ``accuracy`` (``val``/``test`` fused and ``<split>/<modality>``), ``loss`` (the mean training logs) and
    one ``diag/<key>`` panel per numeric diagnostic.
    """
    panels: dict[str, dict[str, list[float]]] = defaultdict(dict)
    n = len(history)

    def put(panel: str, name: str, i: int, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        panels[panel].setdefault(name, [math.nan] * n)[i] = float(value)

    for i, record in enumerate(history):
        for split in SPLITS:
            if split in record:
                put("accuracy", split, i, record[split].get("acc"))
                for modality, metrics in record[split].get("per_modality", {}).items():
                    put("accuracy", f"{split}/{modality}", i, metrics.get("acc"))
        for key, value in record.get("train", {}).items():
            put("loss", key, i, value)
        for key, value in record.get("diag", {}).items():
            put(f"diag/{key}", key, i, value)
    return dict(panels)


def _grid(count: int, cols: int = 3) -> tuple[int, int]:
    cols = min(cols, count)
    return -(-count // cols), cols


def plot_run(run_dir: Path, out_png: Path | None = None) -> Path:
    """One figure of a run's curves; default file ``<run>/plots/curves.png``."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl (not a run folder, or no epoch finished yet)")
    history = read_jsonl(metrics)
    epochs = [r["epoch"] for r in history]
    panels = run_series(history)
    rows, cols = _grid(len(panels))
    fig = Figure(figsize=(5 * cols, 3.4 * rows), layout="constrained")
    for k, (panel, series) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, k + 1)
        for name, values in series.items():
            style = "--" if name.startswith("val") else "-"
            ax.plot(epochs, values, style, marker="." if len(epochs) < 30 else None, label=name)
        ax.set_title(panel)
        ax.set_xlabel("epoch")
        if len(series) > 1:
            ax.legend(fontsize="small")
    fig.suptitle(run_dir.name)
    out = Path(out_png) if out_png else run_dir / "plots" / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def _sweep_curves(sweep_dir: Path) -> dict[str, dict[str, dict[str, list[list[float]]]]]:
    """dataset -> output (``fused`` or a modality) -> row label -> per-seed test-accuracy curves."""
    curves: dict[str, dict[str, dict[str, list[list[float]]]]] = defaultdict(lambda: defaultdict(dict))
    titles = {name: cls.title for name, cls in list_methods().items()}
    for metrics in sorted(Path(sweep_dir).rglob("metrics.jsonl")):
        run_dir = metrics.parent
        history = read_jsonl(metrics)
        if not history or not (run_dir / "config.yaml").exists():
            continue
        with open(run_dir / "config.yaml") as f:
            cfg = yaml.safe_load(f)
        job = json.loads((run_dir / "job.json").read_text()) if (run_dir / "job.json").exists() else {}
        dataset, label = cfg["dataset"], job.get("title") or titles.get(cfg["method"]) or cfg["method"]
        series = run_series(history)["accuracy"]
        for name, values in series.items():
            split, _, modality = name.partition("/")
            if split == "test":
                curves[dataset][modality or "fused"].setdefault(label, []).append(values)
    return curves


def plot_sweep(sweep_dir: Path, out_png: Path | None = None) -> Path:
    """Per dataset (rows) and output (columns: fused, then each modality): test accuracy per epoch, one line per
    method row, averaged over seeds (runs of different lengths are averaged over their common epochs)."""
    sweep_dir = Path(sweep_dir)
    curves = _sweep_curves(sweep_dir)
    if not curves:
        raise FileNotFoundError(f"no run with metrics.jsonl under {sweep_dir}")
    outputs = {ds: ["fused"] + sorted(k for k in per if k != "fused") for ds, per in curves.items()}
    rows, cols = len(curves), max(len(v) for v in outputs.values())
    fig = Figure(figsize=(4.5 * cols, 3.4 * rows), layout="constrained")
    for r, dataset in enumerate(sorted(curves)):
        for c, output in enumerate(outputs[dataset]):
            ax = fig.add_subplot(rows, cols, r * cols + c + 1)
            for label, runs in sorted(curves[dataset][output].items()):
                length = min(len(x) for x in runs)
                mean = np.nanmean(np.array([x[:length] for x in runs]), axis=0)
                ax.plot(range(length), mean, label=f"{label} (n={len(runs)})")
            ax.set_title(f"{dataset}: {output} test acc")
            ax.set_xlabel("epoch")
            ax.legend(fontsize="x-small")
    out = Path(out_png) if out_png else sweep_dir / "plots" / "sweep.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def _demo_curves(sweep_dir: Path) -> dict[str, dict[str, list[list[float]]]]:
    """Row label -> series (``fused``, each modality's accuracy, ``ratio`` = conf_first / conf_second) -> per-seed
    test curves."""
    curves: dict[str, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for metrics in sorted(Path(sweep_dir).rglob("metrics.jsonl")):
        run_dir = metrics.parent
        if not (run_dir / "job.json").exists():
            continue
        label = json.loads((run_dir / "job.json").read_text())["label"]
        history = read_jsonl(metrics)
        tests = [r["test"] for r in history if "test" in r]
        curves[label]["fused"].append([t["acc"] for t in tests])
        modalities = list(tests[0]["per_modality"]) if tests else []
        for m in modalities:
            curves[label][m].append([t["per_modality"][m]["acc"] for t in tests])
        if len(modalities) >= 2 and all("conf" in t["per_modality"][modalities[0]] for t in tests):
            first, second = modalities[:2]
            curves[label]["ratio"].append([t["per_modality"][first]["conf"] / max(t["per_modality"][second]["conf"],
                                                                               1e-12) for t in tests])
    return curves


def plot_demo(sweep_dir: Path, out_png: Path, order: Sequence[str] | None = None) -> Path:
    """One panel per method row: test accuracy of the fused output and of each modality per epoch (left axis) and
    the confidence ratio conf_audio / conf_visual (right axis, log scale), each the mean over seeds."""
    curves = _demo_curves(sweep_dir)
    if not curves:
        raise FileNotFoundError(f"no sweep run (job.json + metrics.jsonl) under {sweep_dir}")
    labels = [r for r in (order or []) if r in curves] + sorted(r for r in curves if r not in (order or []))
    rows, cols = _grid(len(labels), cols=6)
    fig = Figure(figsize=(3.2 * cols, 2.5 * rows), layout="constrained")
    styles = {"fused": ("k", "-"), "audio": ("tab:blue", "-"), "visual": ("tab:orange", "-")}
    for k, label in enumerate(labels):
        ax = fig.add_subplot(rows, cols, k + 1)
        for name, runs in curves[label].items():
            if name == "ratio":
                continue
            length = min(len(x) for x in runs)
            color, style = styles.get(name, (None, "--"))
            ax.plot(range(length), np.mean([x[:length] for x in runs], axis=0), style, color=color, label=name,
                    marker="." if length < 15 else None)
        ax.set_ylim(0, 1)
        ax.set_title(label, fontsize="small")
        if "ratio" in curves[label]:
            runs = curves[label]["ratio"]
            length = min(len(x) for x in runs)
            twin = ax.twinx()
            twin.plot(range(length), np.exp(np.mean(np.log([x[:length] for x in runs]), axis=0)), ":",
                      color="tab:green", label="conf ratio")
            twin.set_yscale("log")
            twin.axhline(1.0, color="tab:green", linewidth=0.5)
            twin.tick_params(labelsize="x-small")
        ax.tick_params(labelsize="x-small")
        if k == 0:
            ax.legend(fontsize="x-small", loc="lower right")
    fig.suptitle("test accuracy per epoch (fused, audio, visual; left) and conf_audio / conf_visual (dotted, right)",
                 fontsize="small")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    return out
