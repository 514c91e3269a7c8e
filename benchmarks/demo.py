"""``augbench demo``: the suite end to end on AV-Digits, offline, in minutes on a CPU.

generate AV-Digits (if absent) -> ``prepare`` it through the CREMA-D path -> train every registered method (plus the
unimodal references) over the seeds in long-lived worker processes -> tables (both protocols, mean ± std) and a plot
of per-modality accuracy and the audio/visual confidence ratio over epochs -> ``results/demo/``. Every setting lives
in ``benchmarks/configs/demo/av_digits.yaml``; profiles (``--quick``, ``--smoke``) override parts of it. Each stage
reuses what a previous invocation finished (data, cache, finished runs), so an interrupted demo continues.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from baselines.registry import list_methods
from benchmarks import collect, plots, sweep
from benchmarks.config import merge_overrides
from benchmarks.records import atomic_write_text, git_commit
from datasets.prepare import PrepareOptions, prepare
from datasets.registry import get_dataset

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo" / "av_digits.yaml"
FIRST_ROWS = ("unimodal_audio", "unimodal_visual", "joint", "sum", "weight", "film", "gated", "uniform")


def load_demo_config(path: Path = DEMO_CONFIG, profile: str | None = None) -> dict[str, Any]:
    """The demo config with ``profiles[profile]`` merged over it (``generate``/``defaults`` merged key by key)."""
    with open(path) as f:
        doc = yaml.safe_load(f)
    profiles = doc.pop("profiles", {})
    if profile is None:
        return doc
    if profile not in profiles:
        raise ValueError(f"{path}: no demo profile {profile!r}; it has {sorted(profiles)}")
    over = profiles[profile]
    for key, value in over.items():
        if key == "generate":
            doc["generate"] = {**doc["generate"], **value}
        elif key == "defaults":
            doc["defaults"] = merge_overrides(doc["defaults"], value)
        else:
            doc[key] = value
    return doc


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def sweep_document(demo: Mapping[str, Any], cache: Path, methods: Sequence[str] | None = None) -> dict[str, Any]:
    """The sweep config of the demo: every registered method (``unimodal`` as its audio and visual rows)."""
    registered = [m for m in list_methods() if m != "unimodal"]
    rows: dict[str, Any] = {}
    for label, entry in demo["rows"].items():
        rows[label] = dict(entry)
    for name in registered:
        rows[name] = dict(demo.get("method_overrides", {}).get(name, {}))
    if methods:
        unknown = sorted(set(methods) - set(rows))
        if unknown:
            raise ValueError(f"--methods {unknown} are not demo rows; rows: {sorted(rows)}")
        rows = {k: v for k, v in rows.items() if k in methods}
    ordered = [r for r in FIRST_ROWS if r in rows] + sorted(r for r in rows if r not in FIRST_ROWS and r != "aug")
    ordered += ["aug"] if "aug" in rows else []
    defaults = merge_overrides(demo["defaults"], {"data": {"cache": str(cache)}})
    return {"name": demo["name"], "title": demo["title"], "protocol": demo["protocol"], "seeds": demo["seeds"],
            "command": demo["command"], "defaults": defaults, "datasets": {"av_digits": {}},
            "methods": {label: rows[label] for label in ordered}}


def imbalance_summary(records: Sequence[collect.RunRecord], protocol: str = "clean") -> dict[str, Any]:
    """Mean test accuracies of the fused output and each modality per row: the numbers the imbalance is read from."""
    out: dict[str, dict[str, list[float]]] = {}
    for rec in records:
        values = rec.values(protocol)
        row = out.setdefault(rec.label, {})
        for key in ("acc", "acc:audio", "acc:visual"):
            if key in values:
                row.setdefault(key, []).append(values[key])
    return {label: {k: sum(v) / len(v) for k, v in row.items()} for label, row in out.items()}


def run_demo(*, results: Path, work: Path, profile: str | None = None, workers: int = 2,
             methods: Sequence[str] | None = None, config_path: Path = DEMO_CONFIG,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo; returns what it wrote. See the module docstring."""
    started = time.perf_counter()
    demo = load_demo_config(config_path, profile)
    work = Path(work)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    data_dir = work / f"data-{_digest(demo['generate'])}"
    raw = data_dir / "AV-Digits"
    if (raw / "manifest.json").exists():
        log(f"[1/4] AV-Digits: reusing {raw}")
    else:
        log(f"[1/4] AV-Digits: generating into {raw} ...")
        from datasets.av_digits import generate

        generate(data_dir, workers=workers, **demo["generate"])
    timings["generate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    prep = demo["prepare"]
    opts = PrepareOptions(recipe=prep["recipe"], audio=dict(prep.get("audio", {})),
                          frame_size=tuple(prep["frame_size"]), workers=workers)
    log("[2/4] prepare: the CREMA-D path on AV-Digits ...")
    cache = prepare(get_dataset("av_digits"), raw, work / "cache", opts, log=lambda line: None)
    timings["prepare_s"] = time.perf_counter() - t

    t = time.perf_counter()
    config = sweep.parse_config(sweep_document(demo, cache, methods))
    runs_dir = work / "runs" / (profile or "full")
    jobs = sweep.expand(config, runs_dir, log=lambda line: None)
    log(f"[3/4] training {len(jobs)} runs ({len(config.methods)} rows x {len(config.seeds)} seed(s)) in {workers} "
        f"worker process(es); runs in {runs_dir}")
    report = sweep.run_pool(jobs, workers=workers, threads_per_worker=max(1, (os.cpu_count() or 1) // workers),
                            out=runs_dir, config=config, log=log)
    timings["train_s"] = time.perf_counter() - t

    log("[4/4] tables and plot ...")
    records = collect.load_runs(runs_dir)
    order = list(config.methods)
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    written = []
    for protocol in ("clean", "paper"):
        for fmt in ("md", "csv"):
            text = collect.render(records, fmt, protocol=protocol, metrics=("acc", "macro_f1"), per_modality=True,
                                  methods=order, title=demo["title"])
            path = results / f"table_{protocol}.{fmt}"
            atomic_write_text(path, text)
            written.append(path)
    png = plots.plot_demo(runs_dir, results / "curves.png", order=order)
    written.append(png)
    timings["total_s"] = time.perf_counter() - started
    summary = {"profile": profile or "full", "runs": len(jobs), "failed": sorted(report.failed),
               "timings_s": {k: round(v, 1) for k, v in timings.items()},
               "imbalance": imbalance_summary(records), "commit": git_commit(),
               "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                           "cpus": os.cpu_count()}}
    atomic_write_text(results / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    atomic_write_text(results / "README.md", _readme(demo, summary, profile))
    written += [results / "summary.json", results / "README.md"]
    return {"written": written, "summary": summary, "table": (results / "table_clean.md").read_text()}


def _readme(demo: Mapping[str, Any], summary: Mapping[str, Any], profile: str | None) -> str:
    command = "augbench demo" + (f" --{profile}" if profile else "")
    imb = summary["imbalance"]
    lines = [f"# {demo['title']}", "", "Generated by `benchmarks/demo.py`; do not edit by hand.", "",
             f"- command: `{command}`", f"- commit: `{summary['commit']}`",
             f"- machine: {summary['machine']['processor']}, {summary['machine']['cpus']} CPUs, "
             f"{summary['machine']['platform']}",
             f"- runs: {summary['runs']} ({len(summary['failed'])} failed); wall time "
             f"{summary['timings_s']['total_s']:.0f} s (generate {summary['timings_s']['generate_s']:.0f} s, "
             f"prepare {summary['timings_s']['prepare_s']:.0f} s, train {summary['timings_s']['train_s']:.0f} s)",
             "- settings: `benchmarks/configs/demo/av_digits.yaml`"
             + (f", profile `{profile}`" if profile else ""), "",
             "## The imbalance", ""]
    if "joint" in imb and "unimodal_visual" in imb:
        j, v, a = imb["joint"], imb["unimodal_visual"], imb.get("unimodal_audio", {})
        nan = float("nan")
        lines.append(f"Joint training (Concat): fused {j['acc']:.3f}, audio head {j.get('acc:audio', nan):.3f}, "
                     f"visual head {j.get('acc:visual', nan):.3f}; a visual-only model reaches "
                     f"{v['acc']:.3f} and an audio-only model {a.get('acc', nan):.3f} (clean protocol, mean "
                     "over seeds).")
    lines += ["", "Files: `table_clean.md`/`.csv` (best validation epoch; the conclusions), `table_paper.md`/`.csv` "
              "(best test epoch, optimistic, as the published code selects), `curves.png` (per-modality test "
              "accuracy and the audio/visual confidence ratio per epoch, mean over seeds), `summary.json`.", ""]
    return "\n".join(lines)
