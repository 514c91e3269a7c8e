"""What ``augbench demo`` checks about its own result: the design targets its settings were chosen for, and whether
it reproduces an earlier (published) run.

Both work on the demo's ``summary.json`` contents (the convergence trend also on the runs' validation curves), so the
summary, the generated README and the tests see the same numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from benchmarks.records import read_json, read_jsonl
from core.hparams import is_number

# The rows the design targets are measured on: the two unimodal references and joint training (Concat).
AUDIO, VISUAL, JOINT = "unimodal_audio", "unimodal_visual", "joint"
# The late-fusion ensemble of the unimodal models, a row the demo adds.
ENSEMBLE_LABEL = "ensemble"
# Summary fields that must agree before two demo runs are compared row by row.
COMPARABLE = ("profile", "seeds", "epochs", "design")
# The design targets whose measure is a difference that can go either way; the others are sizes.
SIGNED_TARGETS = ("imbalance", "headroom")
# What a reader needs to know about the machine of the run compared against.
MACHINE_KEYS = ("cpu_model", "torch_cpu_capability", "torch", "numpy")
# The epoch each table protocol reports (``benchmarks.collect.PROTOCOL_CAPTIONS``), as the README names it.
EPOCH_WORDS = {"clean": "best-validation epoch", "last": "final epoch", "paper": "best test epoch"}


def last_quarter_trend(run_dirs: Sequence[Path], labels: Sequence[str]) -> dict[str, dict[int, float]]:
    """Row -> seed -> the change of validation accuracy over the last quarter of epochs, in accuracy units: the
    least-squares line through the epochs from the start of the last quarter to the last, times that span. Unlike the
    difference of two epochs, one epoch's jitter moves it little. Only the runs in ``run_dirs`` count: a work folder
    also keeps runs of earlier settings, whose curves are not this demo's. Runs with fewer than 4 validated epochs are
    left out. Rows come in the order of ``labels``, seeds in ascending order."""
    found: dict[str, dict[int, float]] = {}
    for run_dir in run_dirs:
        metrics, job_file = Path(run_dir) / "metrics.jsonl", Path(run_dir) / "job.json"
        if not (metrics.exists() and job_file.exists()):
            continue
        job = read_json(job_file)
        if job["label"] not in labels:
            continue
        vals = [r["val"]["acc"] for r in read_jsonl(metrics) if "val" in r]
        if len(vals) < 4:
            continue
        tail = np.asarray(vals[len(vals) - max(1, len(vals) // 4) - 1:], dtype=np.float64)
        span = len(tail) - 1
        slope = np.polyfit(np.arange(len(tail), dtype=np.float64), tail, 1)[0]
        found.setdefault(job["label"], {})[int(job["seed"])] = round(float(slope * span), 4)
    # In the order asked for, not the folders' (their names carry a settings hash), so reports read the same each run.
    return {label: dict(sorted(found[label].items())) for label in labels if label in found}


def imbalanced(gap: float, targets: Mapping[str, float]) -> bool:
    """Whether joint training under-uses the visual modality: its visual head is at least ``targets["imbalance"]``
    below the visual-only model (``gap``, in accuracy units). The design target and the README's findings both ask
    this, so they cannot disagree."""
    return gap >= targets["imbalance"]


def _check(name: str, text: str, measured: Mapping[str, float], met: bool) -> dict[str, Any]:
    return {"target": name, "text": text, "measured": dict(measured), "met": bool(met)}


def design_targets(summary: Mapping[str, Any], targets: Mapping[str, float]) -> list[dict[str, Any]]:
    """The demo's design targets (``targets`` from its config), each with what this run measured and whether it was
    met: the references and joint converge, joint under-uses the visual modality, the unimodal ensemble leaves
    headroom over joint training, and the reference rows (ensemble included) and joint vary little between seeds at
    the epoch the table reports (``summary["protocol"]``), with, under ``other_epoch``, the same spread at the final
    epoch (or, when the table reports the final epoch, at the best-validation one). A target whose rows were not run
    is left out."""
    rows, protocol = summary["rows"], summary["protocol"]

    def mean(row: str, key: str = "acc") -> float:
        return rows[row][key][0]

    checks = []
    trend = summary.get("convergence_trend") or {}
    if trend:
        limit = targets["trend"]
        # The size of each seed's trend, then the mean: signed trends of seeds moving in opposite directions would
        # cancel and read as converged.
        measured = {row: float(np.mean(np.abs(list(seeds.values())))) for row, seeds in trend.items()}
        checks.append(_check("converged", f"validation accuracy changes by at most {100 * limit:.0f} points over the "
                             "last quarter of epochs (size of the least-squares trend, mean over seeds)", measured,
                             all(v <= limit for v in measured.values())))
    if {JOINT, VISUAL} <= set(rows) and "acc:visual" in rows[JOINT]:
        gap = mean(VISUAL) - mean(JOINT, "acc:visual")
        checks.append(_check("imbalance", f"joint training's visual head at least {100 * targets['imbalance']:.0f} "
                             "points below the visual-only model", {"gap": gap}, imbalanced(gap, targets)))
    final = summary.get("rows_final", {})
    if {JOINT, ENSEMBLE_LABEL} <= set(final):
        # The ensemble fuses the unimodal models' final checkpoints, so joint training counts at its final epoch too.
        limit = targets["headroom"]
        headroom = final[ENSEMBLE_LABEL]["acc"][0] - final[JOINT]["acc"][0]
        checks.append(_check("headroom", f"the late-fusion ensemble of the unimodal models at least "
                             f"{100 * limit:.0f} points above joint training (both at the final epoch)",
                             {"headroom": headroom}, headroom >= limit))
    # The ensemble is one of the table's reference rows, so its spread is judged with theirs.
    spread = {row: rows[row]["acc"][1] for row in (AUDIO, VISUAL, ENSEMBLE_LABEL, JOINT)
              if row in rows and rows[row]["acc"][2] > 1}
    if spread:
        limit = targets["reference_std"]
        check = _check("seed spread", f"test accuracy of the reference rows (the unimodal models and their ensemble) "
                       f"and joint training varies by at most {100 * limit:.0f} points between seeds (sample std, at "
                       f"the epoch the table reports: the {EPOCH_WORDS[protocol]})", spread,
                       all(v <= limit for v in spread.values()))
        # Shown beside it, not judged: an epoch chosen on a few validation speakers adds spread of its own, and the
        # same runs at the other epoch tell that part from the training's (the ensemble is always final).
        other, other_rows = (("clean", summary.get("rows_best_val", {})) if protocol == "last"
                             else ("last", final))
        at_other = {row: other_rows[row]["acc"][1] for row in spread
                    if row != ENSEMBLE_LABEL and row in other_rows and other_rows[row]["acc"][2] > 1}
        if at_other:
            check["other_epoch"] = {"epoch": EPOCH_WORDS[other], "std": at_other}
        checks.append(check)
    return checks


def read_summary(path: Path, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """A demo's ``summary.json`` as a mapping, or None when the file is absent; one that cannot be read, or is not a
    mapping, is reported through ``log`` and skipped (what it would have been used for is then left out, never
    guessed)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        log(f"note: ignoring {path}: {type(err).__name__}: {err}")
        return None
    if not isinstance(data, dict):
        log(f"note: ignoring {path}: not a JSON object")
        return None
    return data


def _mean_and_std(stats: Any) -> bool:
    """Whether a summary row holds its accuracy as [mean, std, ...] numbers, as ``compare_runs`` reads it."""
    acc = stats.get("acc") if isinstance(stats, dict) else None
    return isinstance(acc, list) and len(acc) >= 2 and all(is_number(v) for v in acc[:2])


def load_reference(path: Path, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """A previous demo's summary to compare against (``read_summary``), or None; one without a ``rows`` mapping, with
    a row whose accuracy is not [mean, std, n], or with a ``machine`` that is not a mapping is reported and not
    compared with."""
    data = read_summary(path, log)
    if data is None:
        return None
    if not isinstance(data.get("rows"), dict):
        log(f"note: not comparing with {path}: not a demo summary (no 'rows' mapping)")
        return None
    # Checked here, before the runs train: compare_runs meets such a row only after the whole demo has trained, and
    # its bare TypeError/KeyError then lost the report.
    bad = [row for row, stats in data["rows"].items() if not _mean_and_std(stats)]
    if bad:
        log(f"note: not comparing with {path}: rows {bad} have no 'acc' [mean, std, n]")
        return None
    if not isinstance(data.get("machine", {}), dict):
        log(f"note: not comparing with {path}: its 'machine' is not a mapping")
        return None
    return data


def compare_runs(reference: Mapping[str, Any], summary: Mapping[str, Any], source: str) -> dict[str, Any]:
    """This run's rows against ``reference`` (another demo's summary, read from ``source``): how many rows are
    identical in every number, how many have a mean test accuracy within the reference's reported std (with one seed
    the std is 0, so only identical rows count), and the rows outside it. Runs whose profile, seeds, epochs or
    settings digest differ are not compared (``comparable`` false, ``differs`` names the fields); a field the
    reference does not record (older summaries have no digest) is listed in ``unchecked``. How many of this run's
    runs it trained and how many it reused from ``runs_dir`` come along, for ``reuse_note``."""
    differs = [k for k in COMPARABLE if k in reference and reference[k] != summary.get(k)]
    head = {"source": source, "reference_commit": reference.get("commit"),
            "reference_machine": {k: reference.get("machine", {}).get(k) for k in MACHINE_KEYS},
            "unchecked": [k for k in COMPARABLE if k not in reference],
            **{k: summary.get(k) for k in ("runs_trained", "runs_reused", "runs_dir")},
            "machine_differs": [k for k in MACHINE_KEYS
                                if reference.get("machine", {}).get(k) != summary.get("machine", {}).get(k)]}
    if differs:
        return {**head, "comparable": False, "differs": differs}
    common = [r for r in summary["rows"] if r in reference["rows"]]
    outside: dict[str, list[float]] = {}
    deltas = []
    for row in common:
        ref_mean, ref_std = reference["rows"][row]["acc"][:2]
        new_mean = summary["rows"][row]["acc"][0]
        deltas.append(abs(new_mean - ref_mean))
        if abs(new_mean - ref_mean) > ref_std:
            outside[row] = [ref_mean, ref_std, new_mean]
    identical = sum(reference["rows"][r] == summary["rows"][r] for r in common)
    return {**head, "comparable": True, "rows": len(common), "identical": identical,
            "only_here": [r for r in summary["rows"] if r not in reference["rows"]],
            "only_there": [r for r in reference["rows"] if r not in summary["rows"]],
            "within_std": len(common) - len(outside), "outside_std": outside,
            "max_abs_delta": round(max(deltas), 4) if deltas else 0.0}


def targets_markdown(checks: Sequence[Mapping[str, Any]], titles: Mapping[str, str], seeds: int) -> list[str]:
    """README lines: one table row per design target, measured over this run's ``seeds`` seeds."""
    if not checks:
        return []

    def value(key: str, v: float, signed: bool) -> str:
        number = f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"
        return number if key in ("gap", "headroom") else f"{titles.get(key, key)} {number}"

    # A sample std's standard error is about std / sqrt(2 (n - 1)) for normal data: over 3 seeds a row whose true
    # std is 1.5 points shows more than 2 in about one run of six, which a reader of a "no" needs to know.
    spread = (f", and a std over {seeds} seeds by about {100 / math.sqrt(2 * (seeds - 1)):.0f}% of itself"
              if seeds > 1 else "")
    lines = ["## Design targets", "",
             f"What the demo's settings were chosen for, measured on this run's {seeds} seed(s) (accuracy in points; "
             f"a mean over n seeds is uncertain by about its std / sqrt(n){spread}; the settings were chosen on the "
             "data of generator seed 0, and the demo config records the design measured over more seeds and on other "
             "draws of the data, where the headroom differs):", "",
             "| target | measured | met |", "|---|---|---|"]
    for c in checks:
        measured = ", ".join(value(k, v, c["target"] in SIGNED_TARGETS) for k, v in c["measured"].items())
        if c.get("other_epoch"):
            at_other = ", ".join(value(k, v, False) for k, v in c["other_epoch"]["std"].items())
            measured += f" ({c['other_epoch']['epoch']}, not judged: {at_other})"
        lines.append(f"| {c['target']}: {c['text']} | {measured} | {'yes' if c['met'] else '**no**'} |")
    return lines + [""]


def reuse_note(comparison: Mapping[str, Any]) -> str:
    """The opening of the comparison when this invocation reused finished runs: their rows are the earlier numbers
    read again, so agreeing with them reproduces nothing."""
    reused, trained = comparison.get("runs_reused") or 0, comparison.get("runs_trained") or 0
    if not reused:
        return ""
    where = f"{reused} finished run{'s' * (reused != 1)} from the work folder's `{comparison['runs_dir']}`"
    if not trained:
        return (f"This invocation trained no run: it reused {where}: not an independent reproduction (a new `--work` "
                "folder retrains every run). ")
    return (f"This invocation trained {trained} run{'s' * (trained != 1)} and reused {where}: the rows of the reused "
            "runs are not independently reproduced. ")


def reproduction_markdown(comparison: Mapping[str, Any] | None, titles: Mapping[str, str]) -> list[str]:
    """README lines: how this run compares with the run it was checked against."""
    if comparison is None:
        return []
    machine = comparison["reference_machine"]
    against = (f"`{comparison['source']}` (commit `{comparison['reference_commit']}`, {machine['cpu_model']}, kernels "
               f"{machine['torch_cpu_capability']}, torch {machine['torch']}, numpy {machine['numpy']})")
    lines = ["## Against an earlier run", ""]
    if not comparison["comparable"]:
        return lines + [f"Not compared with {against}: it differs in {', '.join(comparison['differs'])}.", ""]
    text = (f"{reuse_note(comparison)}Compared with {against}: {comparison['identical']} of {comparison['rows']} rows "
            f"identical in every number, {comparison['within_std']} with a mean test accuracy within that run's "
            f"reported std; the largest difference of a row's mean accuracy is "
            f"{100 * comparison['max_abs_delta']:.2f} points.")
    if comparison.get("machine_differs"):
        text += (f" The runs differ in {', '.join(comparison['machine_differs'])}: float rounding then differs, and a "
                 "short high-lr schedule can move a row by about its seed spread; identical numbers are expected only "
                 "with the same CPU kind, kernels (torch_cpu_capability) and library versions.")
    if comparison.get("only_here") or comparison.get("only_there"):
        text += (" Rows not compared: " + "; ".join(
            f"{label} {', '.join(titles.get(r, r) for r in comparison[key])}"
            for key, label in (("only_here", "new in this run:"), ("only_there", "only in that run:"))
            if comparison.get(key)) + ".")
    if comparison["unchecked"]:
        text += f" (That run does not record its {', '.join(comparison['unchecked'])}: not checked to be the same.)"
    if comparison["outside_std"]:
        text += " Outside the std: " + "; ".join(
            f"{titles.get(r, r)} {100 * new:.1f}% (was {100 * m:.1f} ± {100 * s:.1f})"
            for r, (m, s, new) in comparison["outside_std"].items()) + "."
    return lines + [text, ""]
