"""Training curves as PNG files (matplotlib's Agg canvas; no display, no pyplot state).

- ``plot_run(run_dir)``: fused and per-modality accuracy per epoch on val and test, each modality's confidence
  (``conf``) and, with two modalities, their ratio (the imbalance diagnostic), the training loss, and every
  numeric series the method logged from ``on_epoch_end`` (the ``diag`` entries of ``metrics.jsonl``: AUG's learner
  counts and confidence scores, OGM's ratios, ...), one panel each.
- ``plot_sweep(sweep_dir)``: per dataset, the test accuracy of the fused output and of each modality over epochs,
  one line per method row (mean over seeds), from every run folder under ``sweep_dir``.
- ``plot_demo`` / ``plot_demo_bars``: the demo's figures, per-row learning curves and a bar chart of fused and
  per-modality accuracy with the seeds' spread.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from benchmarks.collect import check_one_config_per_row, row_of
from benchmarks.errors import UsageError
from benchmarks.records import read_json, read_jsonl
from benchmarks.run_folder import recorded_config

SPLITS = ("val", "test")
# y-axis label of a run plot's panels; a diagnostic panel is labelled "value".
PANEL_UNITS = {"accuracy": "accuracy", "confidence": "mean true-class probability",
               "confidence ratio": "ratio of the modalities' conf", "loss": "training loss (epoch mean)",
               "train": "logged by update()"}


def run_series(history: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Panel -> series -> one value per epoch (NaN where an epoch lacks it), from ``metrics.jsonl`` records.

    Panels: ``accuracy`` (``val``/``test`` fused and ``<split>/<modality>``), ``confidence`` (each modality's
    ``conf``, ``<split>/<modality>``) and, with two modalities, ``confidence ratio`` (``<split> <first>/<second>``, the
    imbalance diagnostic, docs/methods/README.md#metrics), ``loss`` (the mean training losses,
    keys starting with ``loss``), ``train`` (any other value a method's ``update`` logs, e.g. OGM-GE's coefficients,
    which would distort the loss axis) and one ``diag/<key>`` panel per numeric diagnostic.
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
                per_modality = record[split].get("per_modality", {})
                for modality, metrics in per_modality.items():
                    put("accuracy", f"{split}/{modality}", i, metrics.get("acc"))
                    put("confidence", f"{split}/{modality}", i, metrics.get("conf"))
                conf = [metrics.get("conf") for metrics in per_modality.values()]
                if len(conf) == 2 and all(isinstance(c, (int, float)) for c in conf) and conf[1]:
                    put("confidence ratio", f"{split} {'/'.join(per_modality)}", i, conf[0] / conf[1])
        for key, value in record.get("train", {}).items():
            put("loss" if key.startswith("loss") else "train", key, i, value)
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
    if not panels:  # an empty file (killed before its first epoch ended) leaves nothing to draw
        raise UsageError(f"{metrics} holds no epoch's metrics to plot (no epoch finished yet, or the file was "
                         "emptied)")
    rows, cols = _grid(len(panels))
    fig = Figure(figsize=(5 * cols, 3.4 * rows), layout="constrained")
    for k, (panel, series) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, k + 1)
        for name, values in series.items():
            style = "--" if name.startswith("val") else "-"
            ax.plot(epochs, values, style, marker="." if len(epochs) < 30 else None, label=name)
        ax.set_title(panel)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_ylabel(PANEL_UNITS.get(panel, "value"))
        # A diagnostic's panel is titled by its one key; another panel's single line still needs its split or key.
        if not panel.startswith("diag/"):
            ax.legend(fontsize="small")
    config = recorded_config(run_dir)
    fig.suptitle(f"{row_of(run_dir, config['method'])[1]} on {config['dataset']}, seed {config['train']['seed']}: "
                 f"{run_dir.name}" if config else run_dir.name)
    out = Path(out_png) if out_png else run_dir / "plots" / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def _sweep_curves(sweep_dir: Path) -> tuple[dict[str, dict[str, dict[str, list[list[float]]]]], list[Path]]:
    """(dataset -> output (``fused`` or a modality) -> row label -> per-seed test-accuracy curves, the run folders
    with nothing to draw yet: no test accuracy in metrics.jsonl (no finished epoch) or no config.yaml)."""
    curves: dict[str, dict[str, dict[str, list[list[float]]]]] = defaultdict(lambda: defaultdict(dict))
    found, series_of, undrawn = [], [], []
    for metrics in sorted(Path(sweep_dir).rglob("metrics.jsonl")):
        run_dir = metrics.parent
        cfg = recorded_config(run_dir)
        accuracy = run_series(read_jsonl(metrics)).get("accuracy", {})
        # Only test accuracy is drawn: records without it (none, or a validation split's alone) have no line.
        if cfg is None or not any(name.partition("/")[0] == "test" for name in accuracy):
            undrawn.append(run_dir)
            continue
        # Rows are the sweep's labels (two rows may run one method); the legend shows their titles.
        row, title = row_of(run_dir, cfg["method"])
        dataset = cfg["dataset"]
        found.append((row, dataset, cfg["train"]["seed"], run_dir, cfg))
        series_of.append((row, title, dataset, accuracy))
    check_one_config_per_row(found)
    rows_titled: dict[str, set[str]] = defaultdict(set)
    for row, title, _, _ in series_of:
        rows_titled[title].add(row)
    for row, title, dataset, series in series_of:
        shown = title if len(rows_titled[title]) == 1 else f"{title} ({row})"
        for name, values in series.items():
            split, _, modality = name.partition("/")
            if split == "test":
                curves[dataset][modality or "fused"].setdefault(shown, []).append(values)
    return curves, undrawn


def padded_runs(runs: Sequence[Sequence[float]]) -> np.ndarray:
    """``(runs, longest)`` float64, NaN after each run's last epoch."""
    padded = np.full((len(runs), max(len(x) for x in runs)), np.nan)
    for i, x in enumerate(runs):
        padded[i, :len(x)] = x
    return padded


def seed_mean(runs: Sequence[Sequence[float]]) -> np.ndarray:
    """Per epoch, the mean over the runs that reached it (and have a value there); as long as the longest run."""
    return column_mean(padded_runs(runs))


def column_mean(padded: np.ndarray) -> np.ndarray:
    """Per column (epoch) of ``padded_runs``' array, the mean of the runs with a value there."""
    with warnings.catch_warnings():  # an epoch no run has a value for stays NaN: a gap in the line
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(padded, axis=0)


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


# A sweep plot's line styles: matplotlib's 10 colours, then again dashed, dotted and dash-dotted (40 rows apart).
ROW_LINESTYLES = ("-", "--", ":", "-.")


def row_styles(labels: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Row label -> (colour, line style), one style per row and the same in every panel; a panel's own colour cycle
    would repeat after 10 rows and shift where a row has no line (a unimodal row has no head of the other
    modality)."""
    return {label: (f"C{i % 10}", ROW_LINESTYLES[i // 10 % len(ROW_LINESTYLES)]) for i, label in enumerate(labels)}


def plot_sweep(sweep_dir: Path, out_png: Path | None = None, log: Callable[[str], None] = _to_stderr) -> Path:
    """Per dataset (rows) and output (columns: fused, then each modality): test accuracy per epoch on one shared 0-1
    axis, one line per method row, the mean over the seeds that reached each epoch (a row whose runs are unfinished
    or of different lengths is drawn to its longest run; n counts its runs). Run folders with nothing to draw yet are
    counted in a note through ``log``, so that a row's n is not short without a word."""
    sweep_dir = Path(sweep_dir)
    curves, undrawn = _sweep_curves(sweep_dir)
    if undrawn:
        log(f"note: {len(undrawn)} run folder(s) with no finished epoch or no config.yaml are not drawn, such as "
            f"{undrawn[0]}")
    if not curves:
        raise FileNotFoundError(f"no run with metrics.jsonl under {sweep_dir}")
    outputs = {ds: ["fused"] + sorted(k for k in per if k != "fused") for ds, per in curves.items()}
    rows, cols = len(curves), max(len(v) for v in outputs.values())
    style = row_styles(sorted({label for per in curves.values() for lines in per.values() for label in lines}))
    # Each panel's legend stands beside it, a line per row: a row of panels is as tall as its longest legend.
    entries = max(len(lines) for per in curves.values() for lines in per.values())
    fig = Figure(figsize=(7 * cols, max(3.4, 0.9 + 0.16 * entries) * rows), layout="constrained")
    for r, dataset in enumerate(sorted(curves)):
        for c, output in enumerate(outputs[dataset]):
            ax = fig.add_subplot(rows, cols, r * cols + c + 1)
            for label, runs in sorted(curves[dataset][output].items()):
                mean = seed_mean(runs)
                color, linestyle = style[label]
                ax.plot(range(len(mean)), mean, color=color, linestyle=linestyle,
                        marker="." if len(mean) < 30 else None, label=f"{label} (n={len(runs)})")
            ax.set_title(f"{dataset}: {output} test acc")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            ax.set_ylabel("test accuracy")
            ax.set_ylim(0, 1)
            ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    out = Path(out_png) if out_png else sweep_dir / "plots" / "sweep.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def _demo_curves(sweep_dir: Path, runs: Collection[Path] | None = None) -> dict[str, dict[str, list[list[float]]]]:
    """Row label -> output (``fused`` and each modality's head) -> per-seed test-accuracy curves, from every run folder
    under ``sweep_dir`` with a ``job.json`` (only those in ``runs`` when given)."""
    curves: dict[str, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    wanted = {Path(r).resolve() for r in runs} if runs is not None else None
    for metrics in sorted(Path(sweep_dir).rglob("metrics.jsonl")):
        run_dir = metrics.parent
        if not (run_dir / "job.json").exists() or (wanted is not None and run_dir.resolve() not in wanted):
            continue
        label = read_json(run_dir / "job.json")["label"]
        tests = [r["test"] for r in read_jsonl(metrics) if "test" in r]
        if not tests:
            continue
        curves[label]["fused"].append([t["acc"] for t in tests])
        for m in tests[0].get("per_modality", {}):
            curves[label][m].append([t["per_modality"][m]["acc"] for t in tests])
    return curves


# One colour per output, the same in every demo figure.
OUTPUT_STYLE = {"fused": ("black", "fused output"), "audio": ("tab:blue", "audio head"),
                "visual": ("tab:orange", "visual head")}


REFERENCE_STYLES = (("tab:green", "--"), ("black", ":"), ("tab:orange", "-."))


def _output_style(name: str) -> tuple[str, str]:
    return OUTPUT_STYLE.get(name, ("tab:gray", f"{name} head"))


def plot_demo(sweep_dir: Path, out_png: Path, order: Sequence[str] | None = None,
              titles: Mapping[str, str] | None = None, references: Mapping[str, float] | None = None,
              runs: Collection[Path] | None = None) -> Path:
    """One panel per method row: test accuracy (%) of the fused output and of each modality's head per epoch, mean
    over the seeds that reached each epoch, with the seeds' range shaded. Every panel shares the same linear axes;
    one legend names the lines.
    ``references``: modality -> accuracy in [0, 1] of the model trained on that modality alone, drawn as a dashed
    line of the modality's colour in every panel (a head below its line is under-trained). ``runs``: plot only these
    run folders (default: every finished or unfinished run under ``sweep_dir``)."""
    curves = _demo_curves(sweep_dir, runs)
    if not curves:
        raise FileNotFoundError(f"no sweep run (job.json + metrics.jsonl) under {sweep_dir}")
    titles = titles or {}
    labels = [r for r in (order or []) if r in curves] + sorted(r for r in curves if r not in (order or []))
    rows, cols = _grid(len(labels), cols=6)
    # At least three panels wide: the legend and its title need the room when few rows are plotted.
    fig = Figure(figsize=(2.9 * max(cols, 3), 2.3 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    seen: dict[str, Any] = {}
    for k, label in enumerate(labels):
        ax = axes[k // cols][k % cols]
        for name, runs in curves[label].items():
            # A seed still training ends early: each epoch averages the seeds that reached it, as plot_sweep does.
            padded = 100 * padded_runs(runs)
            epochs = np.arange(padded.shape[1])  # 0-based, as metrics.jsonl and the run and sweep plots number them
            color, legend = _output_style(name)
            (line,) = ax.plot(epochs, column_mean(padded), color=color, marker="." if len(epochs) < 25 else None)
            ax.fill_between(epochs, np.nanmin(padded, axis=0), np.nanmax(padded, axis=0), color=color, alpha=0.15,
                            linewidth=0)
            seen.setdefault(legend, line)
        for name, acc in (references or {}).items():
            color, legend = _output_style(name)
            seen.setdefault(f"{name}-only model", ax.axhline(100 * acc, color=color, linestyle="--", linewidth=0.8))
        ax.set_title(titles.get(label, label), fontsize="small")
        ax.set_ylim(0, 100)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize="x-small")
    for k in range(len(labels), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    for r in range(rows):
        axes[r][0].set_ylabel("test accuracy (%)", fontsize="small")
    # Each column's epoch axis goes on its lowest panel: where the last row is short, on the row above (the bottom
    # row's empty places are hidden, and the shared x axis keeps tick labels off every panel but the one named here).
    for c in range(cols):
        lowest = axes[(len(labels) - 1 - c) // cols][c]
        lowest.set_xlabel("epoch", fontsize="small")
        lowest.xaxis.set_tick_params(labelbottom=True)
    fig.legend(list(seen.values()), list(seen), loc="outside upper center", ncols=len(seen) if cols > 3 else 3,
               fontsize="small",
               title="test accuracy, mean over seeds (band: min-max over seeds); dashed: a unimodal model's mean at "
                     "the final epoch",
               title_fontsize="small")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    return out


def plot_demo_bars(stats: Mapping[str, Mapping[str, tuple[float, float]]], out_png: Path,
                   titles: Mapping[str, str] | None = None, references: Mapping[str, str] | None = None) -> Path:
    """Horizontal bars per method row: test accuracy (%) of the fused output and of each modality's head, mean with
    the seeds' standard deviation as error bars. ``stats``: row -> ``acc`` / ``acc:<modality>`` -> (mean, std) in
    [0, 1], in display order (top to bottom). ``references``: row -> line label; those rows' fused means are drawn as
    vertical lines across the chart (at most three)."""
    titles, references = titles or {}, references or {}
    if len(references) > len(REFERENCE_STYLES):
        # zip() below would drop the extra ones without a word.
        raise ValueError(f"at most {len(REFERENCE_STYLES)} reference lines have a style; got {list(references)}")
    labels = list(stats)
    outputs = ["fused"] + sorted({k.split(":", 1)[1] for row in stats.values() for k in row if ":" in k})
    height = 0.8 / len(outputs)
    fig = Figure(figsize=(9, 0.42 * len(labels) + 1.6), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(labels))[::-1]
    for j, output in enumerate(outputs):
        key = "acc" if output == "fused" else f"acc:{output}"
        # A one-modality row's head is its fused output: drawn once, as the fused bar.
        shown = [r for r in labels if key in stats[r] and (output == "fused" or sum(":" in k for k in stats[r]) > 1)]
        mean = np.array([stats[r][key][0] if r in shown else np.nan for r in labels]) * 100
        std = np.array([stats[r][key][1] if r in shown else np.nan for r in labels]) * 100
        color, legend = _output_style(output)
        ax.barh(y + (len(outputs) / 2 - j - 0.5) * height, mean, height, xerr=std, color=color, alpha=0.8,
                label=legend, error_kw={"elinewidth": 0.8, "capsize": 1.5})
    for (row, name), (color, style) in zip(references.items(), REFERENCE_STYLES):
        if row in stats and "acc" in stats[row]:
            ax.axvline(100 * stats[row]["acc"][0], color=color, linestyle=style, linewidth=1.2, label=name)
    ax.set_yticks(y, [titles.get(r, r) for r in labels], fontsize="small")
    ax.set_xlim(0, 100)
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.set_xlabel("test accuracy (%), mean ± std over seeds")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside upper center", ncols=3, fontsize="small")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    return out
