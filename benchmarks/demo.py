"""``augbench demo``: the suite end to end on AV-Digits, offline, on a CPU.

generate AV-Digits (if absent) -> ``prepare`` it through the CREMA-D path -> train every registered method (plus the
unimodal references) over the seeds in long-lived worker processes, one intra-op thread each -> the late-fusion
ensemble of the unimodal models as an extra row -> tables (the config's protocol (the final epoch), then the
best-validation and best-test ones; mean ± std), ``curves.png`` (per-row test accuracy per epoch), ``bars.png`` (fused
and per-modality accuracy per row), ``summary.json`` and a README with the findings -> ``runs/demo/results/``
(``--publish``: the tracked ``results/demo/``). Every setting lives in ``benchmarks/configs/demo/av_digits.yaml``;
profiles (``--quick``, ``--smoke``) override parts of it. Each stage
reuses what a previous invocation finished (data, cache, finished runs), so an interrupted demo continues and a rerun
only redraws the report.

Reproducibility: the runs are seeded and use deterministic algorithms; the thread count is fixed at one per worker
(a count derived from the machine changes the order of float reductions, which a short, high-learning-rate schedule
amplifies into different results); AV-Digits generation is byte-identical for a seed (``datasets.av_digits``).
A row whose every seed equals an earlier row's, under every protocol, is flagged as having no effect, and one whose
runs' logs show its method's mechanism acting in no seed (``Method.mechanism_acted``) as such.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from baselines.registry import list_methods
from benchmarks import collect, plots, sweep
from benchmarks.config import merge_overrides
from benchmarks.data_identity import check_run_data, current_identity
from benchmarks.demo_checks import (
    AUDIO,
    ENSEMBLE_LABEL,
    EPOCH_WORDS,
    JOINT,
    VISUAL,
    compare_runs,
    design_targets,
    imbalanced,
    last_quarter_trend,
    load_reference,
    read_summary,
    reproduction_markdown,
    targets_markdown,
)
from benchmarks.metrics import classification_metrics
from benchmarks.records import atomic_write_text, read_checkpoint, read_config_yaml, read_json, read_jsonl
from benchmarks.run_folder import load_run_config
from benchmarks.runner import CHECKPOINT, build_data, build_method, seed_everything
from core.hparams import is_number
from core.provenance import cpu_model, git_commit
from datasets.prepare import prepare
from datasets.registry import get_dataset
from datasets.tables import PrepareOptions

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo" / "av_digits.yaml"
FIRST_ROWS = ("unimodal_audio", "unimodal_visual", "joint", "sum", "weight", "film", "gated", "uniform")


# The demo config's top-level keys (a misspelt one was kept unread); its profiles may set the first ones.
PROFILE_KEYS = ("name", "title", "protocol", "command", "seeds", "generate", "prepare", "defaults", "rows", "schedule")
DEMO_KEYS = (*PROFILE_KEYS, "targets", "profiles")


def check_demo_config(doc: Any, path: Path) -> None:
    """Refuse, naming the file and key, what the demo would otherwise ignore: an unknown top-level or profile key, or
    a ``schedule`` entry that names no registered method (its epoch counts would silently stay unscaled)."""
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(doc) - set(DEMO_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; the demo config has {list(DEMO_KEYS)}")
    for name, over in (doc.get("profiles") or {}).items():
        extra = sorted(set(over) - set(PROFILE_KEYS))
        if extra:
            raise ValueError(f"{path}: profiles.{name}: unknown key(s) {extra}")
    methods = set(list_methods())
    stray = sorted(set(doc.get("schedule") or {}) - methods)
    if stray:
        raise ValueError(f"{path}: schedule names {stray}, which are not registered methods")


def load_demo_config(path: Path = DEMO_CONFIG, profile: str | None = None) -> dict[str, Any]:
    """The demo config with ``profiles[profile]`` merged over it (``generate``/``defaults`` merged key by key); a key
    given twice in one mapping raises ``DuplicateKeyError`` naming the file and line."""
    doc = read_config_yaml(path)
    check_demo_config(doc, path)
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


# The parts of the demo config that decide its numbers; two runs with the same digest ran the same design.
DESIGN_KEYS = ("generate", "prepare", "defaults", "rows", "schedule", "seeds", "protocol")


def design_digest(demo: Mapping[str, Any]) -> str:
    """A short digest of the settings that decide the demo's numbers (not its title, targets or the timing hints)."""
    return _digest({k: demo.get(k) for k in DESIGN_KEYS})


def scaled_schedule(fractions: Mapping[str, Any], method: str, epochs: int) -> dict[str, dict[str, int]]:
    """Epoch-count knobs as the demo runs them: ``fraction`` of the run's ``epochs``, rounded, at least 1 (or at
    least ``minimum`` where the knob is given as ``[fraction, minimum]``). The published schedules assume 100-200
    epochs; scaled this way every mechanism acts within the demo (and within ``--quick``), at about the same point of
    the run as published."""
    def scale(value: Any) -> int:
        fraction, minimum = value if isinstance(value, (list, tuple)) else (value, 1)
        return max(minimum, round(fraction * epochs))

    return {method: {knob: scale(value) for knob, value in fractions.items()}} if fractions else {}


def demo_rows(demo: Mapping[str, Any], methods: Sequence[str] | None = None) -> dict[str, Any]:
    """Row label -> its method settings: every registered method (``unimodal`` as its audio and visual rows), or
    only ``methods`` (a name that is no row is refused)."""
    rows: dict[str, Any] = {label: dict(entry) for label, entry in demo["rows"].items()}
    epochs = demo["defaults"]["train"]["epochs"]
    for name in (m for m in list_methods() if m != "unimodal"):
        rows[name] = scaled_schedule(demo.get("schedule", {}).get(name, {}), name, epochs)
    if methods:
        unknown = sorted(set(methods) - set(rows))
        if unknown:
            raise ValueError(f"--methods {unknown} are not demo rows; rows: {sorted(rows)}")
        rows = {k: v for k, v in rows.items() if k in methods}
    return rows


def sweep_document(demo: Mapping[str, Any], cache: Path, methods: Sequence[str] | None = None) -> dict[str, Any]:
    """The sweep config of the demo: its rows (``demo_rows``) on ``cache``."""
    rows = demo_rows(demo, methods)
    ordered = [r for r in FIRST_ROWS if r in rows] + sorted(r for r in rows if r not in FIRST_ROWS and r != "aug")
    ordered += ["aug"] if "aug" in rows else []
    defaults = merge_overrides(demo["defaults"], {"data": {"cache": str(cache)}})
    return {"name": demo["name"], "title": demo["title"], "protocol": demo["protocol"], "seeds": demo["seeds"],
            "command": demo["command"], "defaults": defaults, "datasets": {"av_digits": {}},
            "methods": {label: rows[label] for label in ordered}}


ENSEMBLE_TITLE = "Ensemble of the unimodal models (late fusion, calibrated, final checkpoints)"
REFERENCES = {AUDIO: "audio", VISUAL: "visual"}
# Rows whose final-epoch test accuracy the summary keeps beside the selected epoch's: the ensemble and what it is
# compared with.
FINAL_ROWS = (AUDIO, VISUAL, JOINT, ENSEMBLE_LABEL)
# Seed std of test accuracy above which the README says a row's mean does not rank its method [project].
UNSTABLE_STD = 0.10
# What each table file holds, for the README's list of files.
TABLE_WORDS = {"clean": "test metrics at each run's best-validation epoch",
               "last": "test metrics after the final epoch",
               "paper": "best test epoch, optimistic, as the published code selects"}
# How far a run's final-epoch test accuracy may lie below the epoch the table reports before the README names the
# run [project]: the best-validation epoch can hide a model that collapsed later.
DEGRADED_DROP = 0.10


def _final_outputs(run_dir: Path, splits: Sequence[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """Split -> logits (float64, rows in index order), labels and class count of a finished run's final checkpoint
    on that split, for each of ``splits`` (the data and the model are built once)."""
    cfg = load_run_config(run_dir)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    check_run_data(run_dir, current_identity(cfg), "evaluate it on that data")
    bundle = build_data(cfg)
    for split in splits:
        if not len(bundle.splits.get(split, ())):
            raise ValueError(f"{run_dir}: its data has no {split!r} rows; the demo's ensemble needs them")
    device = torch.device("cpu")
    method = build_method(cfg, bundle, device)
    state = read_checkpoint(run_dir / CHECKPOINT, map_location=device)
    method.load_checkpoint_state(state["method"])
    method.eval()
    out = {}
    for split in splits:
        loader = bundle.loader(split, batch_size=cfg.train.eval_batch_size, train=False, seed=cfg.train.seed,
                               device=device)
        loader.set_epoch(state["epoch"])
        logits, labels, rows = [], [], []
        with torch.no_grad():
            for batch in loader:
                logits.append(method.predict(batch).fused.double())
                labels.append(batch["label"])
                rows.append(batch["index"])
        order = torch.argsort(torch.cat(rows))
        out[split] = (torch.cat(logits)[order], torch.cat(labels)[order], bundle.task.num_classes)
    return out


# Search range of the inverse temperature (log scale) and golden-section steps: 60 steps narrow the bracket of width
# ln(1e6) to ~4e-12 [project].
INVERSE_TEMPERATURE_RANGE = (1e-3, 1e3)
TEMPERATURE_STEPS = 60


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T minimising the mean cross-entropy of ``softmax(logits / T)`` against ``labels``:
    temperature scaling (Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks", ICML 2017). The
    loss is convex in 1/T, so a golden-section search over log(1/T) finds its minimum; an optimum beyond
    ``INVERSE_TEMPERATURE_RANGE`` (a split the logits separate perfectly, or one they carry no information on) is
    clipped to it."""
    def loss(log_beta: float) -> float:
        return torch.nn.functional.cross_entropy(logits.double() * np.exp(log_beta), labels).item()

    low, high = np.log(INVERSE_TEMPERATURE_RANGE[0]), np.log(INVERSE_TEMPERATURE_RANGE[1])
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(TEMPERATURE_STEPS):
        left, right = high - ratio * (high - low), low + ratio * (high - low)
        if loss(left) < loss(right):
            high = right
        else:
            low = left
    return float(np.exp(-(low + high) / 2.0))


def ensemble_records(records: Sequence[collect.RunRecord]) -> list[collect.RunRecord]:
    """Per seed, the late-fusion ensemble of the separately trained unimodal models, from each model's final
    checkpoint: the mean of their softmax outputs on test, each model's logits divided by its own temperature
    (``fit_temperature``) fitted on the validation split. It is the headroom a balancing method could reach: each
    modality trained to its own optimum, then fused. Without the temperatures the mean weighs each model by its
    confidence, not its accuracy: the demo's audio-only models, which fit their training speakers, are confidently
    wrong on test (cross-entropy ~2.2 against the visual-only models' ~0.4), and their uncalibrated mean scored ~8
    points below the visual-only model alone. Seeds lacking either reference are skipped. The records are references
    (``RunRecord.reference``): final checkpoints whatever a table's protocol, so never a column's best."""
    by_seed: dict[int, dict[str, collect.RunRecord]] = {}
    for rec in records:
        if rec.label in REFERENCES:
            by_seed.setdefault(rec.seed, {})[REFERENCES[rec.label]] = rec
    out = []
    for seed, refs in sorted(by_seed.items()):
        if len(refs) != len(REFERENCES):
            continue
        # In REFERENCES' order whatever the records' order, so the temperatures read audio then visual everywhere.
        outputs = {m: _final_outputs(refs[m].run_dir, ("val", "test")) for m in REFERENCES.values()}
        for split in ("val", "test"):
            labels, classes = next(iter(outputs.values()))[split][1:]
            # Fusing needs the same rows in the same order; models of other data would fuse unrelated samples.
            if any(not torch.equal(o[split][1], labels) or o[split][2] != classes for o in outputs.values()):
                raise ValueError(f"seed {seed}: the unimodal runs {[str(rec.run_dir) for rec in refs.values()]} "
                                 f"were not evaluated on the same {split} rows and classes; their ensemble is "
                                 "undefined")
        temperatures = {m: fit_temperature(*o["val"][:2]) for m, o in outputs.items()}
        fused = sum(torch.softmax(o["test"][0] / temperatures[m], dim=1) for m, o in outputs.items()) / len(outputs)
        test = classification_metrics(torch.log(fused), labels, classes)
        # Each model's head as it scored alone (a temperature moves its confidence, not its decisions).
        test["per_modality"] = {m: classification_metrics(o["test"][0], labels, classes) for m, o in outputs.items()}
        protocol = {"selection": "final checkpoints of the unimodal runs", "temperatures": temperatures, "test": test}
        # Every protocol reads the final checkpoints (the only ones kept); "last" is the one it truly is.
        first = next(iter(refs.values()))
        out.append(collect.RunRecord(run_dir=first.run_dir.parent, label=ENSEMBLE_LABEL, title=ENSEMBLE_TITLE,
                                     method=ENSEMBLE_LABEL, dataset=first.dataset, seed=seed,
                                     protocols={"clean": protocol, "paper": protocol, "last": protocol},
                                     reference=True))
    return out


def ensemble_temperatures(records: Sequence[collect.RunRecord]) -> dict[str, float]:
    """Modality -> the mean over seeds of the temperature the ensemble row divided that model's logits by."""
    fitted = [rec.protocols["last"]["temperatures"] for rec in records if rec.label == ENSEMBLE_LABEL]
    return {m: float(np.mean([t[m] for t in fitted])) for m in (fitted[0] if fitted else {})}


# One intra-op thread per training process, whatever the machine: the thread count sets how oneDNN/ATen split and
# sum reductions, so a count derived from os.cpu_count() made the same seed train differently on another machine.
THREADS_PER_WORKER = 1


# Environment variables that choose torch's CPU kernels, recorded with the machine. The demo leaves the choice to
# torch: on a 2-core AMD EPYC, AVX2 instead of AVX-512 kernels moved 8 of 39 rows outside their reported std (float
# rounding, amplified by a short high-lr schedule) and took 9% longer. Setting ATEN_CPU_CAPABILITY=avx2 and
# ONEDNN_MAX_CPU_ISA=AVX2 on both machines makes an AVX-512 machine compute what an AVX2 one does; data generation
# and preparation gave identical bytes either way.
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def machine_record(workers: int) -> dict[str, Any]:
    """What the numbers may depend on: library versions, the CPU and its kernel ISA, and the thread settings."""
    return {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "kernel_env": {key: os.environ[key] for key in KERNEL_ENV if key in os.environ}, "workers": workers,
            "threads_per_worker": THREADS_PER_WORKER, "deterministic_algorithms": True}


def identical_rows(records: Sequence[collect.RunRecord], order: Sequence[str]) -> dict[str, str]:
    """Row -> an earlier row (in ``order``) whose every seed has exactly the same test metrics under every protocol:
    its mechanism never changed a prediction within the demo's schedule, so it is not a result of its own."""
    per_row: dict[str, dict[int, tuple]] = {}
    for rec in records:
        # Every protocol, not one: a mechanism that acts only after the best-validation epoch leaves the clean
        # numbers equal but not the best-on-test or last ones, and both tables carry the "no effect" title.
        per_row.setdefault(rec.label, {})[rec.seed] = tuple(
            (protocol, tuple(sorted(rec.values(protocol).items()))) for protocol in sorted(rec.protocols))
    out: dict[str, str] = {}
    labels = [r for r in order if r in per_row]
    for i, label in enumerate(labels):
        for other in labels[:i]:
            if other not in out and per_row[other] == per_row[label]:
                out[label] = other
                break
    return out


def mechanism_verdicts(records: Sequence[collect.RunRecord], order: Sequence[str]) -> dict[str, dict[str, list[int]]]:
    """``collect.idle_mechanisms`` of the rows in ``order``, in that order: per row whose method judges its mechanism,
    the seeds in which it acted and those in which it never did."""
    found = collect.idle_mechanisms(records)
    return {label: found[label] for label in order if label in found}


def never_acted(verdicts: Mapping[str, Mapping[str, Sequence[int]]]) -> list[str]:
    """The rows of ``mechanism_verdicts`` whose mechanism acted in no judged seed: their method's base model under
    its name, not a result of the method."""
    return [label for label, v in verdicts.items() if v["idle"] and not v["acted"]]


def unstable_rows(records: Sequence[collect.RunRecord], order: Sequence[str], protocol: str = "clean",
                  threshold: float = UNSTABLE_STD) -> dict[str, list[float]]:
    """Row -> its test accuracy per seed (in seed order), for the rows whose sample std over seeds exceeds
    ``threshold``: at the demo's shared settings such a row's mean does not rank the method."""
    per_row: dict[str, dict[int, float]] = {}
    for rec in records:
        per_row.setdefault(rec.label, {})[rec.seed] = rec.values(protocol)["acc"]
    out: dict[str, list[float]] = {}
    for label in (r for r in order if r in per_row):
        accs = [per_row[label][seed] for seed in sorted(per_row[label])]
        if len(accs) > 1 and float(np.std(accs, ddof=1)) > threshold:
            out[label] = [round(a, 4) for a in accs]
    return out


def degraded_runs(records: Sequence[collect.RunRecord], order: Sequence[str], protocol: str = "clean",
                  threshold: float = DEGRADED_DROP) -> dict[str, list[dict[str, Any]]]:
    """Row -> its runs (in seed order) whose final-epoch test accuracy lies more than ``threshold`` below the
    accuracy of the epoch ``protocol`` reports: the table shows an earlier, better model than the one training
    ended with (a collapse after the selected epoch)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in sorted((r for r in records if not r.reference and r.label in order), key=lambda r: r.seed):
        reported, final = rec.values(protocol)["acc"], rec.values("last")["acc"]
        if reported - final > threshold:
            out.setdefault(rec.label, []).append({"seed": rec.seed, "epoch": rec.protocols[protocol]["epoch"],
                                                  "reported": round(reported, 4), "final": round(final, 4)})
    return {label: out[label] for label in order if label in out}


def row_stats(records: Sequence[collect.RunRecord], protocol: str = "clean") -> dict[str, dict[str, tuple]]:
    """Row -> metric -> (mean, sample std, n) over seeds."""
    values: dict[str, dict[str, list[float]]] = {}
    for rec in records:
        for k, v in rec.values(protocol).items():
            values.setdefault(rec.label, {}).setdefault(k, []).append(v)
    return {label: {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
                    for k, v in row.items()} for label, row in values.items()}


def aug_diagnostics(records: Sequence[collect.RunRecord], protocol: str = "clean") -> dict[str, Any] | None:
    """AUG's mechanism as it ran, mean over seeds: learners added per modality, the final train-score ratio
    s_audio / s_visual, the test-time fusion weights, and the equal-weight fusion's test accuracy at the epoch
    ``protocol`` selects (the runner's ``alternatives.equal_fusion``)."""
    runs = [r for r in records if r.method == "aug"]
    if not runs:
        return None
    learners: dict[str, list[float]] = {}
    ratios, equal, weighted, weights = [], [], [], None
    for rec in runs:
        history = read_jsonl(rec.run_dir / "metrics.jsonl")
        diag = history[-1].get("diag", {})
        for key, value in diag.items():
            if key.startswith("extra_learners/"):
                learners.setdefault(key.split("/", 1)[1], []).append(value)
        if "score_ratio" in diag:
            ratios.append(diag["score_ratio"])
        test = rec.protocols[protocol]["test"]
        weighted.append(test["acc"])
        if "equal_fusion" in test.get("alternatives", {}):
            equal.append(test["alternatives"]["equal_fusion"]["acc"])
        cfg = load_run_config(rec.run_dir)
        weights = list(cfg.method_hp.fusion_weights) or [0.4, 0.6]
    def mean(xs: list[float]) -> float:
        return float(np.mean(xs)) if xs else float("nan")

    return {"extra_learners": {m: mean(v) for m, v in learners.items()}, "score_ratio": mean(ratios),
            "fusion_weights": weights, "weighted_acc": mean(weighted), "equal_fusion_acc": mean(equal)}


def run_summaries(records: Sequence[collect.RunRecord]) -> list[tuple[str, dict[str, Any]]]:
    """(row label, ``summary.json``) of every trained run, the ensemble row excepted."""
    return [(rec.label, read_json(rec.run_dir / "summary.json")) for rec in records
            if rec.label != ENSEMBLE_LABEL]


def run_seconds(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, list[float]]:
    """Each row's training seconds per run (the runs' ``wall_time_s``)."""
    seconds: dict[str, list[float]] = {}
    for label, summary in runs:
        seconds.setdefault(label, []).append(summary["wall_time_s"])
    return seconds


def run_commits(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, int]:
    """How many runs each commit trained, most first. A rerun reuses finished runs, and each holds the numbers of the
    code that trained it, not of the invocation's commit."""
    return collect.commit_counts(collect.trained_by(summary) for _, summary in runs)


def previous_row_seconds(summaries: Sequence[Path], log: Callable[[str], None] = print
                         ) -> tuple[dict[str, float], Path | None]:
    """``row_run_s`` of the first of ``summaries`` that records it, and that file; ({}, None) when none does. Only a
    scheduling hint: an unreadable file is reported and skipped (``read_summary``)."""
    for path in summaries:
        seconds = (read_summary(path, log) or {}).get("row_run_s")
        # Numbers only: longest_first negates each, and a null there stopped the demo with a TypeError naming no file.
        if isinstance(seconds, dict) and seconds and all(is_number(v) for v in seconds.values()):
            return seconds, path
    return {}, None


def longest_first(jobs: Sequence[sweep.Job], seconds: Mapping[str, float]) -> list[sweep.Job]:
    """``jobs`` ordered by their row's expected seconds, longest first; rows with no estimate go first, in their
    order. The pool hands runs out in this order, so the last to start are short and the workers finish together
    (the numbers do not depend on the order)."""
    return sorted(jobs, key=lambda job: -seconds.get(job.label, float("inf")))


def table_protocols(protocol: str) -> list[str]:
    """The protocols the demo tabulates: ``protocol`` (the config's, whose numbers the README reports) first, then
    the best-validation and the optimistic best-test ones for comparison."""
    return list(dict.fromkeys((protocol, "clean", "paper")))


def default_results(profile: str | None, publish: bool) -> Path:
    """Where tables and plots go: under ``runs/`` (untracked) unless ``--publish`` refreshes ``results/``."""
    name = "demo" if profile is None else f"demo-{profile}"
    return Path("results") / name if publish else Path("runs") / name / "results"


@dataclass
class ShownRows:
    """What the demo's tables and plots show: the rows in order, their display names, the titles shown (a row equal
    to an earlier one in every number marked "no effect", one whose mechanism acted in no seed marked so), those
    rows, the mechanism verdicts per seed, each row's statistics over seeds at the epoch the tables report
    (``stats``), for the references, joint training and their ensemble at the final epoch (``final``), for the
    references and joint training at the best-validation epoch (``best_val``), and the files written."""

    order: list[str]
    names: dict[str, str]
    titles: dict[str, str]
    identical: dict[str, str]
    mechanism: dict[str, dict[str, list[int]]]
    stats: dict[str, dict[str, tuple]]
    final: dict[str, dict[str, tuple]]
    best_val: dict[str, dict[str, tuple]]
    written: list[Path]


def write_report(records: list[collect.RunRecord], methods: Sequence[str], runs_dir: Path, results: Path,
                 title: str, protocol: str = "clean") -> ShownRows:
    """The demo's tables (``protocol``'s, whose numbers the bars and findings show, then the clean and paper ones;
    Markdown and CSV), ``curves.png`` and ``bars.png`` from its ``records`` (the runs and the ensemble row), in the
    order of ``methods`` with the ensemble after the two unimodal references; the records take the titles shown."""
    names = {r.label: r.title for r in records}
    order = [r for r in methods if r in names]
    order = order[:2] + ([ENSEMBLE_LABEL] if ENSEMBLE_LABEL in names else []) + order[2:]
    identical = identical_rows(records, order)
    verdicts = mechanism_verdicts(records, order)
    titles = dict(names)
    for label in never_acted(verdicts):
        titles[label] = f"{names[label]} [mechanism never acted]"
    for label, other in identical.items():
        titles[label] = f"{names[label]} [no effect: = {names[other]}]"
    for rec in records:
        rec.title = titles[rec.label]
    results.mkdir(parents=True, exist_ok=True)
    written = []
    for table in table_protocols(protocol):
        for fmt in ("md", "csv"):
            text = collect.render(records, fmt, protocol=table, metrics=("acc", "macro_f1"), per_modality=True,
                                  methods=order, title=title)
            path = results / f"table_{table}.{fmt}"
            atomic_write_text(path, text)
            written.append(path)
    stats = row_stats(records, protocol)
    final = row_stats([r for r in records if r.label in FINAL_ROWS], protocol="last")
    best_val = row_stats([r for r in records if r.label in FINAL_ROWS and not r.reference], protocol="clean")
    written.append(plots.plot_demo(runs_dir, results / "curves.png", order=order, titles=titles,
                                   references={m: final[r]["acc"][0] for r, m in REFERENCES.items() if r in final},
                                   runs=[r.run_dir for r in records if r.label != ENSEMBLE_LABEL]))
    # One seed has no spread: no error bar rather than one of zero length (summary.json keeps its std as 0).
    written.append(plots.plot_demo_bars(
        {r: {k: (mean, std if n > 1 else np.nan) for k, (mean, std, n) in stats[r].items() if k.startswith("acc")}
         for r in order}, results / "bars.png",
        titles=titles, references={ENSEMBLE_LABEL: "unimodal ensemble", JOINT: titles.get(JOINT, JOINT),
                                   VISUAL: "visual-only model"}))
    return ShownRows(order, names, titles, identical, verdicts, stats, final, best_val, written)


def rounded_rows(stats: Mapping[str, Mapping[str, tuple]]) -> dict[str, dict[str, list]]:
    """``row_stats`` as summary.json keeps them: [mean, std, n], rounded to 4 decimals."""
    return {label: {k: [round(m, 4), round(sd, 4), n] for k, (m, sd, n) in row.items()} for label, row in stats.items()}


def mean_row_seconds(seconds: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Mean seconds per run of each row, to the millisecond: the next demo starts the longest rows first
    (``longest_first``), and a smoke run on a fast machine takes a few hundredths of a second."""
    return {label: round(float(np.mean(v)), 3) for label, v in seconds.items()}


def run_demo(*, results: Path, work: Path, profile: str | None = None, workers: int = 2,
             methods: Sequence[str] | None = None, config_path: Path = DEMO_CONFIG,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo; returns what it wrote. See the module docstring."""
    started = time.perf_counter()
    demo = load_demo_config(config_path, profile)
    demo_rows(demo, methods)  # a misspelt --methods is refused before minutes of data generation, not after
    work = Path(work)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    data_dir = work / f"data-{_digest(demo['generate'])}"
    raw = data_dir / "AV-Digits"
    from datasets.av_digits import check_tree, generate

    if (raw / "manifest.json").exists():
        check_tree(raw, **demo["generate"])
        log(f"[1/4] AV-Digits: reusing {raw}")
    else:
        log(f"[1/4] AV-Digits: generating into {raw} ...")
        generate(data_dir, workers=workers, **demo["generate"])
    timings["generate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    prep = demo["prepare"]
    opts = PrepareOptions(recipe=prep["recipe"], audio=dict(prep.get("audio", {})),
                          frame_size=tuple(prep["frame_size"]), workers=workers)
    log("[2/4] prepare: the CREMA-D path on AV-Digits ...")
    # The cache lives beside the media it was built from: settings that change only the media (noise, SNR) keep
    # the split files and so the cache's name, and a shared cache folder would refuse the new media.
    cache = prepare(get_dataset("av_digits"), raw, data_dir / "cache", opts, log=lambda line: None)
    timings["prepare_s"] = time.perf_counter() - t

    t = time.perf_counter()
    config = sweep.parse_config(sweep_document(demo, cache, methods))
    runs_dir = work / "runs" / (profile or "full")
    jobs = sweep.expand(config, runs_dir, log=lambda line: None)
    published = default_results(profile, True) / "summary.json"
    # Read before this run overwrites it: with --publish the run is compared with the one it replaces.
    reference = load_reference(published, log)
    expected, source = previous_row_seconds([Path(results) / "summary.json", published], log)
    order_note = f"; longest first by the run times in {source}" if source else ""
    log(f"[3/4] training {len(jobs)} runs ({len(config.methods)} rows x {len(config.seeds)} seed(s)) in {workers} "
        f"worker process(es), {THREADS_PER_WORKER} thread each; runs in {runs_dir}{order_note}")
    report = sweep.run_pool(longest_first(jobs, expected), workers=workers, threads_per_worker=THREADS_PER_WORKER,
                            out=runs_dir, config=config, log=log)
    timings["train_s"] = time.perf_counter() - t

    log("[4/4] tables and plots ...")
    t = time.perf_counter()
    wanted = {job.run_dir.resolve() for job in jobs}
    records = [r for r in collect.load_runs(runs_dir) if r.run_dir.resolve() in wanted]
    records += ensemble_records(records)
    results = Path(results)
    protocol = demo["protocol"]
    shown = write_report(records, config.methods, runs_dir, results, demo["title"], protocol)
    timings["report_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    runs = run_summaries(records)
    seconds = run_seconds(runs)
    skipped = [r for r in sweep_document(demo, cache)["methods"] if r not in config.methods]
    summary = {"profile": profile or "full", "runs": len(jobs), "failed": sorted(report.failed),
               # Runs finished by an earlier invocation are reused, not retrained: agreeing with an earlier run then
               # shows nothing about reproducibility, so the README says how many of each.
               "runs_trained": len(report.launched), "runs_reused": len(report.skipped),
               # Below the work folder: an absolute path would publish this machine's folders and mean nothing to a
               # reader of the committed report.
               "runs_dir": runs_dir.relative_to(work).as_posix(),
               "rows_not_run": skipped,
               "timings_s": {k: round(v, 1) for k, v in timings.items()},
               # Training time the runs took, whichever invocation trained them (a rerun reuses finished runs).
               "run_time_s": round(sum(map(sum, seconds.values())), 1),
               "row_run_s": mean_row_seconds(seconds),
               "protocol": protocol, "rows": rounded_rows(shown.stats),
               # The ensemble exists only for the final checkpoints: what it is compared with is final too.
               "rows_final": rounded_rows(shown.final), "rows_best_val": rounded_rows(shown.best_val),
               "identical_rows": shown.identical, "mechanism": shown.mechanism,
               "unstable_rows": unstable_rows(records, shown.order, protocol),
               "degraded_runs": degraded_runs(records, shown.order, protocol),
               # The finished runs only, as the tables: a run that failed part-way leaves a curve that stops
               # mid-training.
               "convergence_trend": last_quarter_trend([r.run_dir for r in records if not r.reference],
                                                       [AUDIO, VISUAL, JOINT]),
               "aug": aug_diagnostics(records, protocol), "ensemble_temperatures": ensemble_temperatures(records),
               "epochs": demo["defaults"]["train"]["epochs"],
               "seeds": list(config.seeds), "design": design_digest(demo), "commit": git_commit(),
               "run_commits": run_commits(runs),
               "runs_dirty": sum(collect.had_changes(collect.trained_by(summary)) for _, summary in runs),
               "machine": machine_record(workers)}
    summary["targets"] = design_targets(summary, demo["targets"])
    if reference is not None:
        summary["reproduction"] = compare_runs(reference, summary, str(published))
        log(reproduction_markdown(summary["reproduction"], shown.titles)[2])
    atomic_write_text(results / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    atomic_write_text(results / "README.md", _readme(demo, summary, profile, shown.names))
    written = [*shown.written, results / "summary.json", results / "README.md"]
    return {"written": written, "summary": summary, "table": (results / f"table_{protocol}.md").read_text()}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def findings(summary: Mapping[str, Any], titles: Mapping[str, str], targets: Mapping[str, float]) -> list[str]:
    """The demo's three findings, from the measured numbers (the table's protocol, means over seeds); ``targets`` (the
    demo config's) decides when joint training counts as leaning on audio."""
    rows = summary["rows"]
    if not {JOINT, VISUAL, AUDIO} <= set(rows):
        return []
    def mean(row: str, key: str = "acc") -> float:
        return rows[row][key][0] if key in rows[row] else float("nan")

    joint, visual, audio = mean(JOINT), mean(VISUAL), mean(AUDIO)
    visual_gap, audio_gap = visual - mean(JOINT, "acc:visual"), audio - mean(JOINT, "acc:audio")
    # Leaning on audio means the visual head lags while the audio head keeps up; both lagging is under-training.
    lags = (imbalanced(audio_gap, targets), imbalanced(visual_gap, targets))
    leans = {(True, True): "under-trains both heads", (False, True): "leans on audio",
             (True, False): "leans on visual", (False, False): "uses both modalities"}[lags]
    out = [f"Joint training (Concat, {_pct(joint)}) {leans}: its visual head reaches "
           f"{_pct(mean(JOINT, 'acc:visual'))} where a visual-only model reaches {_pct(visual)}, its audio head "
           f"{_pct(mean(JOINT, 'acc:audio'))} where an audio-only model reaches {_pct(audio)}."]
    final = summary.get("rows_final", {})
    if ENSEMBLE_LABEL in rows and {ENSEMBLE_LABEL, JOINT} <= set(final):
        ens, joint_final = final[ENSEMBLE_LABEL]["acc"][0], final[JOINT]["acc"][0]
        idle = never_acted(summary.get("mechanism", {}))
        methods = [r for r in rows if r not in REFERENCES and r != ENSEMBLE_LABEL
                   and r not in summary["identical_rows"] and r not in idle]
        best = max(methods, key=mean)
        headroom = ("that is the headroom balancing methods compete for" if ens > joint_final else
                    "so this run shows no headroom for balancing")
        temperatures = summary.get("ensemble_temperatures") or {}
        calibrated = ", ".join(f"{m} {t:.2f}" for m, t in temperatures.items())
        calibrated = f" (each calibrated on the validation split; mean temperature {calibrated})" if calibrated else ""
        # The highest mean, with its spread: with three seeds the next methods are often within it.
        _, std, n = rows[best]["acc"]
        spread = f" ± {100 * std:.1f}" if n > 1 else ""
        out.append(f"Averaging the two separately trained unimodal models{calibrated} gives {_pct(ens)}, "
                   f"{100 * (ens - joint_final):+.1f} points against joint training (both at the final epoch; joint "
                   f"{_pct(joint_final)}): {headroom}; the highest method mean here is {titles.get(best, best)}'s "
                   f"{100 * mean(best):.1f}{spread}% ({EPOCH_WORDS[summary['protocol']]}).")
    aug = summary.get("aug")
    if aug and "aug" in rows:
        learners = ", ".join(f"{v:.1f} {m}" for m, v in aug["extra_learners"].items())
        weights = "/".join(f"{w:g}" for w in aug["fusion_weights"])
        verdict = "above" if mean("aug") > joint else "below" if mean("aug") < joint else "level with"
        out.append(f"AUG reaches {_pct(mean('aug'))}, {verdict} joint training: it added {learners} learner(s) on "
                   f"average (final train-score ratio audio/visual {aug['score_ratio']:.2f}), and its fixed "
                   f"{weights} audio/visual test-time weights, chosen for CREMA-D, give {_pct(aug['weighted_acc'])} "
                   f"where equal weights give {_pct(aug['equal_fusion_acc'])}.")
    return out


def commits_line(summary: Mapping[str, Any]) -> str:
    """Which code trained the runs: the invocation's commit, or the commits of reused runs too, and how many runs
    a tree with uncommitted changes trained (not the commit's code)."""
    commits = summary["run_commits"]
    dirty = summary.get("runs_dirty", 0)
    changes = f"; {dirty} of the runs with uncommitted changes" if dirty else ""
    if list(commits) == [summary["commit"] or "unknown"]:
        reused = summary.get("runs_reused", 0)
        return "- code: every run was trained at this commit" + (
            f" ({reused} of them by an earlier invocation, reused from the work folder's `{summary['runs_dir']}`)"
            if reused else ""
        ) + changes
    listed = ", ".join(f"`{c[:12]}` ({n} run{'s' * (n != 1)})" for c, n in commits.items())
    return (f"- code: runs trained at {listed}; a rerun reuses finished runs, so their numbers are those of the code "
            f"that trained them (a new `--work` folder retrains every run at this commit){changes}")


def _readme(demo: Mapping[str, Any], summary: Mapping[str, Any], profile: str | None,
            titles: Mapping[str, str]) -> str:
    command = "augbench demo" + (f" --{profile}" if profile else "")
    machine, t = summary["machine"], summary["timings_s"]
    partial = ([f"- **partial**: only some rows were run (`--methods`); not run: "
                f"{', '.join(summary['rows_not_run'])}"] if summary["rows_not_run"] else [])
    lines = [f"# {demo['title']}", "", "Generated by `benchmarks/demo.py`; do not edit by hand.", "",
             "## Findings", "",
             *([f"(Profile `{profile}`: a shortened run in which nothing has converged; the numbers below show the "
                "pipeline working, not the methods' merits. `augbench demo` runs the measured design.)", ""]
               if profile else []),
             " ".join(findings(summary, titles, demo["targets"])) or "(too few rows for findings)", "",
             "## Run", "",
             f"- command: `{command}`; commit `{summary['commit']}`; settings "
             f"`benchmarks/configs/demo/av_digits.yaml`" + (f", profile `{profile}`" if profile else ""),
             commits_line(summary),
             f"- {summary['runs']} runs ({len(summary['failed'])} failed; this invocation trained "
             f"{summary['runs_trained']} and reused {summary['runs_reused']} finished in the work folder's "
             f"`{summary['runs_dir']}`), "
             f"{summary['epochs']} epochs, seeds "
             f"{summary['seeds']}; the runs took {summary['run_time_s']:.0f} s of training summed over runs "
             f"(whichever invocations trained them); this invocation {t['total_s']:.0f} s (generate "
             f"{t['generate_s']:.0f} s, prepare {t['prepare_s']:.0f} s, train {t['train_s']:.0f} s, report "
             f"{t['report_s']:.0f} s)", *partial,
             f"- machine: {machine['cpu_model']} ({machine['cpus']} CPUs, kernels {machine['torch_cpu_capability']}"
             f"{' (set by ATEN_CPU_CAPABILITY)' if machine.get('kernel_env', {}).get('ATEN_CPU_CAPABILITY') else ''}), "
             f"torch {machine['torch']}, numpy {machine['numpy']}, {machine['workers']} worker process(es) x "
             f"{machine['threads_per_worker']} thread, deterministic algorithms",
             "- reproducibility: every run is seeded and uses one intra-op thread and deterministic algorithms; "
             "the data is byte-identical for its seed. The numbers do not depend on the worker count or run order "
             "(tests/test_demo.py checks this); another CPU type or library version can change float rounding "
             "and so the numbers, within about the reported std where the rows have converged.", "",
             *targets_markdown(summary.get("targets", []), titles, len(summary["seeds"])),
             *reproduction_markdown(summary.get("reproduction"), titles)]
    if summary["identical_rows"]:
        lines += ["## Rows without an effect", "",
                  "These rows equal another row in every seed: their mechanism never changed a prediction within "
                  "the demo's schedule, so they are not results of their own: "
                  + "; ".join(f"{titles.get(r, r)} = {titles.get(o, o)}" for r, o in summary["identical_rows"].items())
                  + ".", ""]
    verdicts = summary.get("mechanism") or {}
    idle, partly = never_acted(verdicts), [r for r, v in verdicts.items() if v["idle"] and v["acted"]]
    if idle or partly:
        lines += ["## Rows whose mechanism did not act", "",
                  "Judged from each run's logs (the method's own test of what its mechanism changed, "
                  "`mechanism_acted` in its file)."]
        if idle:
            lines[-1] += (" In no seed did the mechanism of these rows change training, so each is its base model "
                          "under the method's name, not a result of the method: "
                          + ", ".join(titles.get(r, r) for r in idle) + ".")
        if partly:
            lines[-1] += (" It acted in some seeds only (seeds without it): " + "; ".join(
                f"{titles.get(r, r)} {', '.join(map(str, verdicts[r]['idle']))}" for r in partly) + ".")
        lines.append("")
    if summary.get("unstable_rows"):
        train = demo["defaults"]["train"]
        lines += ["## Rows that vary between seeds", "",
                  f"These rows' test accuracy varies by more than {100 * UNSTABLE_STD:.0f} points (sample std) "
                  f"between seeds at the demo's shared settings (SGD, lr {train['lr']:g} for every method, "
                  f"{train['epochs']} epochs), so their means do not rank them (accuracy per seed): "
                  + "; ".join(f"{titles.get(r, r)} " + "/".join(f"{100 * a:.1f}" for a in accs) + "%"
                              for r, accs in summary["unstable_rows"].items()) + ".", ""]
    if summary.get("degraded_runs"):
        lines += ["## Runs that ended far below the epoch the table reports", "",
                  f"The table reports each run at its {EPOCH_WORDS[summary['protocol']]}; these runs ended training "
                  f"more than {100 * DEGRADED_DROP:.0f} points of test accuracy below it, so the method's final "
                  f"model is worse than its row says (test accuracy at the reported epoch, then at the final epoch): "
                  + "; ".join(f"{titles.get(r, r)} seed {run['seed']} {100 * run['reported']:.1f}% (epoch "
                              f"{run['epoch']}), {100 * run['final']:.1f}%"
                              for r, runs in summary["degraded_runs"].items() for run in runs) + ".", ""]
    tables = ", ".join(f"`table_{p}.md`/`.csv` ({TABLE_WORDS[p]}{'; the conclusions' * (p == summary['protocol'])})"
                       for p in table_protocols(summary["protocol"]))
    lines += ["## Files", "",
              f"{tables}, `bars.png` "
              "(fused and per-modality accuracy per method, mean ± std over seeds), `curves.png` (test accuracy per "
              "epoch for every row), `summary.json` (every number above, the machine and the timings). The "
              "ensemble row averages the softmax outputs of the final unimodal checkpoints of the same seed, each "
              "model's logits divided by a temperature fitted on the validation split (cross-entropy; temperature "
              "scaling): the mean of uncalibrated outputs weighs the models by their confidence, not their "
              "accuracy.", ""]
    return "\n".join(lines)
