"""Tables from run folders: mean ± sample std over seeds, best per column in bold, published numbers beside.

``load_runs`` reads every finished run under a folder (``summary.json`` + ``config.yaml``, and the sweep's
``job.json`` for the row label); ``build_table`` groups them into rows = method rows (the registered class's
``title``, or the sweep row's title) and columns = datasets x metrics; ``render`` formats that one table as Markdown,
CSV or LaTeX. Cells are percentages: "mean ± std (n)" with the sample standard deviation (ddof 1) over the n seeds; a
single seed shows no std; the bold marks a column's best method, not a reference row (``RunRecord.reference``). With a
paper file (``results/paper/<paper>.csv``), each cell gets the published value († = not verified against the paper,
see ``results/paper/README.md``) and the difference ours − paper in points.

The caption names the protocol, i.e. which epoch's test metrics a run contributes (``benchmarks.runner.
select_protocols``): ``paper`` = best-on-test (optimistic, as the published code selects), ``clean`` = the best
validation epoch, ``last`` = the final epoch; ``paper`` and ``clean`` take the earliest of tied epochs.
Missing-modality columns (``missing=True``) come from each run's ``missing_modality.json`` (final checkpoint,
``benchmarks.evaluate``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from baselines.base import judges_mechanism
from baselines.registry import list_methods
from benchmarks.data_identity import SAME_DATA_HINT, recorded_identity
from benchmarks.records import (
    DamagedFileError,
    listed,
    read_config_yaml,
    read_json,
    read_jsonl,
    read_yaml,
    runs_phrase,
)
from benchmarks.run_folder import (
    MISSING_RESULT,
    missing_result_problem,
    rate_percent,
    read_extensions,
    recorded_config,
)
from datasets.sources import pinned_files

METRIC_NAMES = {"acc": "Acc", "macro_f1": "Macro-F1", "map": "MAP"}
# How far above 1 a recorded fraction may be: average precision sums its recall steps in floating point, so a perfect
# ranking can give 1.0000000000000002.
FRACTION_SLACK = 1e-9
# After the title of a row whose runs select or tune on the test split (``reads_test``).
TEST_SPLIT_MARK = "‡"
PROTOCOL_CAPTIONS = {
    "paper": "best-on-test (optimistic): each run's epoch with the best test accuracy, as the published code selects "
             "(tied epochs: the earliest)",
    # Ties are common with a small validation split (in 40% of the demo's runs, mostly with different test
    # accuracies at the tied epochs), so the rule is stated as for best-on-test.
    "clean": "clean: test metrics at each run's best-validation epoch (tied epochs: the earliest)",
    "last": "last epoch: test metrics after the final epoch",
}
FORMATS = ("md", "csv", "tex")
PAPER_COLUMNS = ("paper", "table", "page", "dataset", "method", "row", "metric", "value", "verified", "source")
PAPER_DIR = Path(__file__).resolve().parents[1] / "results" / "paper"


class MixedDataError(ValueError):
    """Runs of one dataset in one table trained on different versions of its data."""


class MixedRunsError(ValueError):
    """Runs that would share a table row (label and dataset) but are not seeds of one config."""


class StaleResultError(ValueError):
    """A missing-modality result that does not describe its run's final checkpoint on the test split."""


# Knobs that say where and how a run executes, not what it computes: the runs of one row may differ in them. The
# cache folder is one: which data a run trained on is in its data.json (the row compares the cache's options,
# ``check_same_data`` its build). The eval batch size is not: MLA's official entropy gate is computed per batch.
EXECUTION_KEYS = frozenset({
    "train.seed", "train.device", "train.checkpoint_every", "data.cache", "data.cache_dir",
    "data.prefetch", "data.resident", "data.eval_cache_mb", "data.compile_views",
})


class PaperFileError(ValueError):
    """A published-numbers file that is missing, malformed or ambiguous; the message names file and row."""


# --- runs -------------------------------------------------------------------------------------------------------

@dataclass
class RunRecord:
    """One finished run as the table sees it."""

    run_dir: Path
    label: str
    title: str
    method: str
    dataset: str
    seed: int
    protocols: dict[str, Any]
    missing: dict[float, dict[str, Any]] = field(default_factory=dict)
    # Why ``missing`` cannot go into a table (an older checkpoint, another split), or None.
    missing_problem: str | None = None
    # The seed that chose which samples lose which modality (``augbench evaluate --seed``), and the batch size it
    # scored in (None: not recorded, before evaluations recorded it).
    missing_seed: int | None = None
    missing_batch_size: int | None = None
    data: dict[str, str] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # Split files with a published (pinned) version whose cache was prepared from other bytes.
    custom_splits: tuple[str, ...] = ()
    # The environments that trained the run (``trained_by``): which commits, and whether a tree had uncommitted
    # changes.
    envs: tuple[dict[str, Any], ...] = ()
    # A reference computed from other runs (the demo's late fusion of the unimodal models' final checkpoints), not a
    # method whose epoch the table's protocol selected: its row is shown for comparison but never marked best.
    reference: bool = False
    # Whether the method's own mechanism changed training, judged from the run's logs (``mechanism_acted``); None
    # where there is nothing to judge.
    mechanism_acted: bool | None = None

    def values(self, protocol: str) -> dict[str, float]:
        """Metric key -> value in [0, 1]: ``acc``/``macro_f1``/``map``, ``acc:<modality>`` and
        ``acc@missing=<rate>`` (the latter from the final checkpoint, whatever the protocol)."""
        if protocol not in self.protocols:
            why = (" (a run with no validation split, e.g. data.train_split=full, has no 'clean' protocol)"
                   if protocol == "clean" else "")
            raise KeyError(f"{self.run_dir}: summary has no protocol {protocol!r}; it has {sorted(self.protocols)}"
                           f"{why}")
        test = self.protocols[protocol].get("test")
        if not isinstance(test, Mapping):
            # a run that adds nothing to any cell would leave its row a seed short without a word
            raise DamagedFileError(self.run_dir / "summary.json", f"protocols.{protocol}.test is "
                                   f"{json.dumps(test)}, not the test metrics of the {protocol!r} protocol")
        out = {k: float(test[k]) for k in METRIC_NAMES if k in test}
        for modality, metrics in (test.get("per_modality") or {}).items():
            for k in METRIC_NAMES:
                if k in metrics:
                    out[f"{k}:{modality}"] = float(metrics[k])
        return {**out, **self.missing_values()}

    def missing_values(self) -> dict[str, float]:
        """``<metric>@missing=<rate>`` -> value in [0, 1]: the final checkpoint's, which no protocol selects (a run
        without a validation split, and so without ``clean``, has them too)."""
        return {f"{k}@missing={rate:g}": float(metrics[k]) for rate, metrics in self.missing.items()
                for k in METRIC_NAMES}


# What a table reads from every finished run's summary.json.
SUMMARY_KEYS = ("method", "dataset", "seed", "protocols")


def load_runs(root: Path) -> list[RunRecord]:
    """Every finished run (``DONE`` + ``summary.json``) under ``root``, sorted by folder."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"runs folder {root} does not exist")
    records = []
    for summary_path in sorted(root.rglob("summary.json")):
        run_dir = summary_path.parent
        if not (run_dir / "DONE").exists():
            continue
        summary = read_json(summary_path)
        check_summary(summary_path, summary)
        method = summary["method"]
        result = read_json(run_dir / MISSING_RESULT, default={"rates": [], "split": "test"})
        missing = missing_metrics(run_dir / MISSING_RESULT, result)
        last = summary["protocols"].get("last")
        if missing and not (isinstance(last, Mapping) and "epoch" in last):
            raise DamagedFileError(summary_path, f"protocols.last.epoch is missing; it says which checkpoint "
                                   f"{MISSING_RESULT} must have evaluated")
        problem = missing_result_problem(summary, result, split="test") if missing else None
        config = recorded_config(run_dir)
        if config is None:
            # without it the run's settings cannot be compared with its row's other seeds
            raise DamagedFileError(run_dir / "config.yaml", "a finished run (DONE and summary.json) has no "
                                   "config.yaml")
        label, title = row_of(run_dir, method)
        records.append(RunRecord(run_dir=run_dir, label=label, title=title, method=method,
                                 dataset=summary["dataset"], seed=summary["seed"],
                                 protocols=summary["protocols"], missing=missing, missing_problem=problem,
                                 missing_seed=result.get("seed") if missing else None,
                                 missing_batch_size=result.get("batch_size") if missing else None,
                                 data=recorded_identity(run_dir), config=config,
                                 custom_splits=custom_pinned_splits(summary), envs=trained_by(summary),
                                 mechanism_acted=mechanism_acted(run_dir, method)))
    return records


def mechanism_acted(run_dir: Path, method: str) -> bool | None:
    """Whether the run's method's mechanism changed training, as the method judges its logged epochs
    (``Method.mechanism_acted`` on ``metrics.jsonl``); None for a method that judges nothing, one no longer
    registered, or a run without a metrics log."""
    cls = list_methods().get(method)
    path = Path(run_dir) / "metrics.jsonl"
    if cls is None or not judges_mechanism(cls) or not path.is_file():
        return None
    return cls.mechanism_acted(read_jsonl(path))


def idle_mechanisms(records: Sequence[RunRecord]) -> dict[str, dict[str, list[int]]]:
    """Row label -> for the rows with a judged run: the seeds whose logs show the method's mechanism changed
    training (``acted``) and those whose logs show it never did (``idle``), in seed order."""
    found: dict[str, dict[str, list[int]]] = {}
    for rec in sorted(records, key=lambda r: r.seed):
        if rec.mechanism_acted is not None and not rec.reference:
            found.setdefault(rec.label, {"acted": [], "idle": []})["acted" if rec.mechanism_acted else "idle"].append(
                rec.seed)
    return found


def check_summary(path: Path, summary: Mapping[str, Any]) -> None:
    """Refuse a ``summary.json`` a table cannot read as its runner wrote it, naming the key: no mapping,
    ``SUMMARY_KEYS`` absent, a method or dataset that is no name, a seed that is not an integer, or a test metric that
    is not a fraction (``check_fraction``)."""
    if not isinstance(summary, Mapping):
        raise DamagedFileError(path, f"it is {json.dumps(summary)}, not the run's summary mapping")
    absent = [key for key in SUMMARY_KEYS if key not in summary]
    if absent:
        raise DamagedFileError(path, f"it has no {', '.join(absent)}")
    check_names(path, summary, ("method", "dataset"))
    # What the table reads beside SUMMARY_KEYS where the runner wrote it (trained_by, _world_size,
    # custom_pinned_splits); another shape failed there, naming no file.
    for key in ("env", "split_files"):
        if summary.get(key) is not None and not isinstance(summary[key], Mapping):
            raise DamagedFileError(path, f"{key} is {json.dumps(summary[key])}, not a mapping")
    segments = summary.get("segments") or []
    if not isinstance(segments, list) or not all(isinstance(segment, Mapping) for segment in segments):
        raise DamagedFileError(path, f"segments is {json.dumps(segments)}, not a list of invocations")
    for where, entry in [("", summary)] + [(f"segments[{i}].", segment) for i, segment in enumerate(segments)]:
        size = entry.get("world_size", 1)
        if isinstance(size, bool) or not isinstance(size, int):
            raise DamagedFileError(path, f"{where}world_size is {json.dumps(size)}, not an integer")
    seed = summary["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DamagedFileError(path, f"seed is {json.dumps(seed)}, not an integer")
    if not isinstance(summary["protocols"], Mapping):
        raise DamagedFileError(path, f"protocols is {json.dumps(summary['protocols'])}, not a mapping of protocols")
    for name, entry in summary["protocols"].items():
        if not isinstance(entry, Mapping):
            raise DamagedFileError(path, f"protocols.{name} is {json.dumps(entry)}, not a mapping")
        # A null or absent test (an edited or old summary) is refused only where a table reads that protocol
        # (RunRecord.values), so the other protocols stay readable.
        test = entry.get("test")
        if isinstance(test, Mapping):
            check_metrics(path, f"protocols.{name}.test", test, required=("acc",))
            per_modality = test.get("per_modality") or {}
            if not isinstance(per_modality, Mapping):
                raise DamagedFileError(path, f"protocols.{name}.test.per_modality is {json.dumps(per_modality)}, not "
                                       "a mapping of modalities")
            for modality, metrics in per_modality.items():
                check_metrics(path, f"protocols.{name}.test.per_modality.{modality}", metrics)


def check_metrics(path: Path, where: str, metrics: Any, required: Sequence[str] = ()) -> None:
    """Every ``METRIC_NAMES`` key of ``metrics`` (``where`` in ``path``) is a fraction, and ``required`` are there."""
    if not isinstance(metrics, Mapping):
        raise DamagedFileError(path, f"{where} is {json.dumps(metrics)}, not a mapping of metrics")
    absent = [k for k in required if k not in metrics]
    if absent:
        raise DamagedFileError(path, f"{where} has no {', '.join(absent)}")
    for k in METRIC_NAMES:
        if k in metrics:
            check_fraction(path, f"{where}.{k}", metrics[k])


def check_names(path: Path, entry: Mapping[str, Any], keys: Sequence[str], optional: bool = False) -> None:
    """Each of ``keys`` a string (or absent/null with ``optional``): a list or a mapping there failed later as an
    unhashable row key, naming no file."""
    for key in keys:
        value = entry.get(key)
        if not isinstance(value, str) and not (optional and value is None):
            raise DamagedFileError(path, f"{key} is {json.dumps(value)}, not a name")


def check_fraction(path: Path, key: str, value: Any) -> float:
    """``value`` as a number in [0, 1], else ``DamagedFileError`` naming ``key``: a NaN would make a column's best
    mean depend on the order of its rows, a percentage (60.0) would show as 6000.00, a null or a string would fail
    without naming the file."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1 + FRACTION_SLACK:
        raise DamagedFileError(path, f"{key} is {json.dumps(value)}, not a number in [0, 1]")
    return float(value)


def missing_metrics(path: Path, result: Mapping[str, Any]) -> dict[float, dict[str, Any]]:
    """Rate -> metrics of a ``missing_modality.json``, every rate and metric checked (``check_fraction``)."""
    if not isinstance(result, Mapping):
        raise DamagedFileError(path, f"it is {json.dumps(result)}, not the mapping of an evaluation")
    rates = result.get("rates")
    if not isinstance(rates, list):
        raise DamagedFileError(path, f"rates is {json.dumps(rates)}, not a list")
    out = {}
    for i, row in enumerate(rates):
        if not isinstance(row, Mapping) or "rate" not in row:
            raise DamagedFileError(path, f"rates[{i}] has no rate")
        check_metrics(path, f"rates[{i}].metrics", row.get("metrics"), required=tuple(METRIC_NAMES))
        out[check_fraction(path, f"rates[{i}].rate", row["rate"])] = row["metrics"]
    return out


def custom_pinned_splits(summary: Mapping[str, Any]) -> tuple[str, ...]:
    """The split files of a run's cache that have a published version (pinned) but were other bytes (custom)."""
    pinned = pinned_files(summary["dataset"])
    return tuple(sorted(name for name, status in (summary.get("split_files") or {}).items()
                        if status == "custom" and name in pinned))


def row_of(run_dir: Path, method: str) -> tuple[str, str]:
    """A run's table or plot row: (label, title) from the sweep's ``job.json``, else the method's registry key and
    title. A ``job.json`` that is no mapping, or whose label or title is no name, is damaged."""
    path = Path(run_dir) / "job.json"
    job = read_json(path, default={})
    if not isinstance(job, Mapping):
        raise DamagedFileError(path, f"it is {json.dumps(job)}, not the mapping of a sweep's job")
    check_names(path, job, ("label", "title"), optional=True)
    registered = list_methods().get(method)
    return job.get("label") or method, job.get("title") or (registered.title if registered else method)


def unfinished_runs(root: Path) -> list[Path]:
    """Run folders under ``root`` without ``DONE`` or without ``summary.json``: still training, stopped or failed
    (a run killed between writing them). ``load_runs`` leaves them out; the table command counts them so that a
    missing seed is never silent, in its caption those of its own rows (``unfinished_row``). A sweep's run that failed
    before its first epoch holds only the ``job.yaml`` its sweep wrote, so that marks a run folder too."""
    folders = {path.parent for name in ("config.yaml", "job.yaml") for path in Path(root).rglob(name)}
    return sorted(folder for folder in folders
                  if not (folder / "DONE").exists() or not (folder / "summary.json").exists())


def unfinished_row(run_dir: Path) -> tuple[str | None, str | None]:
    """The (row label, dataset) an unfinished run folder (``unfinished_runs``) would add a seed to once finished, as
    ``row_of`` files it: from its sweep's ``job.json``, else its ``config.yaml`` or the sweep's ``job.yaml``; None for
    what they do not say. A file that does not parse says nothing: the table reads no other file of such a run, and
    must not fail on it."""
    try:
        job = read_json(run_dir / "job.json", default={})
        config = next((read_yaml(path) for path in (run_dir / "config.yaml", run_dir / "job.yaml") if path.is_file()),
                      {})
    except DamagedFileError:
        return None, None
    job, config = (doc if isinstance(doc, Mapping) else {} for doc in (job, config))
    label, dataset = job.get("label") or config.get("method"), job.get("dataset") or config.get("dataset")
    # A value that is no name (a list, a mapping) says nothing either.
    return (label if isinstance(label, str) else None), (dataset if isinstance(dataset, str) else None)


def config_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config (``RunConfig.as_dict()`` or a run's ``config.yaml``) as ``section.key`` -> value without
    ``EXECUTION_KEYS``: what the seeds of one row share."""
    flat = {}
    for section, values in config.items():
        for key, value in (values.items() if isinstance(values, Mapping) else [("", values)]):
            name = f"{section}.{key}" if key else section
            if name not in EXECUTION_KEYS:
                flat[name] = value
    return flat


def _settings(config: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """What the seeds of one row must share, as ``section.key`` -> value: the run's config (``config.yaml`` plus
    extensions) without ``EXECUTION_KEYS``; the epoch counts its extensions started from (a run extended from 2 to 6
    epochs continued another schedule than a fresh 6-epoch run); the options of the cache it read (``data.json``;
    whether two runs read the same build of one cache is ``check_same_data``'s)."""
    flat = config_settings(config)
    extensions = read_extensions(run_dir)
    if extensions:
        flat["train.extended_from"] = [extension["from_epochs"] for extension in extensions]
    identity = recorded_identity(run_dir) or {}
    if identity.get("cache_options_hash"):
        flat["data.cache_options_hash"] = identity["cache_options_hash"]
    world_size = _world_size(run_dir)
    if world_size is not None:
        flat["world_size"] = world_size
    return flat


def _world_size(run_dir: Path) -> int | list[int] | None:
    """How many data-parallel ranks trained the run (``summary.json``; the ranks of each resumed segment when they
    differ); None for a run still in its first invocation (no summary yet), which a plot of a running sweep shows.
    W ranks are not a seed of one process: BatchNorm normalises each rank's slice, ``n mod W`` training samples are
    left out, and an ``approximate`` method takes other steps. A summary from before ranks were recorded is one
    process unless it says otherwise."""
    summary = read_json(Path(run_dir) / "summary.json", default=None)
    if summary is None:
        return None
    whole = summary.get("world_size", 1)
    sizes = sorted({segment.get("world_size", whole) for segment in summary.get("segments", [])} | {whole})
    return sizes[0] if len(sizes) == 1 else sizes


def reads_test(record: RunRecord) -> bool:
    """Whether the run's training read the test split: its method's held-out knob (``Method.held_out_split``: MSES's
    and MSLR's eval_split, G-Blending's held_out_split, Relearning's diagnose_split, UMT's teacher_select) named
    test in its config."""
    cls = list_methods().get(record.method)
    hp = (record.config.get("hparams") or {}).get(record.method) or {}
    return cls is not None and cls.HELD_OUT_KEY in hp and cls.held_out_split(hp) == "test"


def served_subset(record: RunRecord) -> bool:
    """Whether the run trained and was tested on a per-class subset of its dataset (``data.subset``): a smoke run."""
    data = record.config.get("data")
    return isinstance(data, Mapping) and bool(data.get("subset"))


def trained_by(summary: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    """The environments that trained a run: each of its invocations' (``segments``) and the final one (``env``). A
    run resumed on other code holds numbers of every commit that trained it, not only of the last."""
    segments = [s for s in summary.get("segments") or [] if isinstance(s, dict)]
    return (*segments, summary.get("env") or {})


def _commits(envs: Iterable[Mapping[str, Any]]) -> set[str]:
    """The commits behind a run's invocations, ``unknown`` for one that recorded none: an invocation run outside a
    git checkout is code of no known commit even when the run was finished at one."""
    return {env.get("git_commit") or "unknown" for env in envs} or {"unknown"}


def had_changes(envs: Iterable[Mapping[str, Any]]) -> bool:
    """Whether any invocation of a run (``trained_by``) ran with uncommitted changes."""
    return any(env.get("git_dirty") for env in envs)


def commit_counts(runs: Iterable[Iterable[Mapping[str, Any]]]) -> dict[str, int]:
    """How many runs each commit trained (``trained_by`` of each run), most first; a run resumed on other code counts
    for each of its commits; ``unknown`` where a run recorded none."""
    counts: Counter[str] = Counter()
    for envs in runs:
        counts.update(_commits(envs))
    return dict(counts.most_common())


def mixed_code_notes(rows: Mapping[str, Sequence[RunRecord]]) -> list[str]:
    """Where the code behind a table's numbers is not one commit (rows: name -> its runs): one line for the whole
    table when all its runs share one commit with uncommitted changes, else one line per row whose runs were trained
    by more than one commit, by a tree with uncommitted changes, or partly without a recorded commit. Such a mean is
    not the number of one version of the code."""
    # A row computed from other runs (no config: the demo's ensemble) is their code, noted in their own rows.
    rows = {name: [r for r in runs if r.config] for name, runs in rows.items()}
    everything = [r for runs in rows.values() for r in runs]
    if _code_mix(everything) is None:
        return []
    commits, unknown, dirty = _code_counts(everything)
    if len(commits) == 1 and not unknown and dirty == len(everything):
        return [f"all {runs_phrase(len(everything))}: commit {next(iter(commits))[:12]} with uncommitted changes"]
    return [f"row {name}: {note}" for name, runs in rows.items() if runs and (note := _code_mix(runs)) is not None]


def _code_counts(runs: Sequence[RunRecord]) -> tuple[dict[str, int], int, int]:
    """(runs per recorded commit, runs with an invocation without a recorded commit, runs trained with uncommitted
    changes)."""
    commits = commit_counts(r.envs for r in runs)
    return ({c: n for c, n in commits.items() if c != "unknown"}, commits.get("unknown", 0),
            sum(had_changes(r.envs) for r in runs))


def _code_mix(runs: Sequence[RunRecord]) -> str | None:
    """What mixes the code of ``runs`` in words; None where one commit (or no recorded one) trained them all cleanly.
    Runs without any recorded commit predate the record and are not a mix by themselves."""
    commits, unknown, dirty = _code_counts(runs)
    if len(commits) <= 1 and (unknown == 0 or not commits) and not dirty:
        return None
    if commits:
        parts = [f"{runs_phrase(len(runs))} from {len(commits)} commit{'s' * (len(commits) != 1)}"]
        if unknown:
            parts.append(f"{unknown} without a recorded commit")
    else:
        parts = [f"{runs_phrase(len(runs))} without a recorded commit"]
    if dirty:
        parts.append(f"{dirty} with uncommitted changes")
    return ", ".join(parts)


def check_one_config_per_row(runs: Iterable[tuple[str, str, int, Path, Mapping[str, Any]]]) -> None:
    """Refuse a row of a table or plot whose runs are not the seeds of one config: a seed twice, or settings that
    differ beyond ``EXECUTION_KEYS`` (variants trained with ``augbench train`` into one folder; a sweep rerun into its
    folder after its settings changed), or another number of data-parallel ranks (``world_size``). Its mean and std
    would otherwise mix configs as if they were seeds.
    ``runs``: (row label, dataset, seed, run folder, config) for every run of the table or plot; an empty config (a
    row computed from other runs, such as the demo's unimodal ensemble) has only its seeds checked."""
    rows: dict[tuple[str, str], list[tuple[int, Path, dict[str, Any] | None]]] = defaultdict(list)
    for label, dataset, seed, run_dir, config in runs:
        rows[(label, dataset)].append((seed, run_dir, _settings(config, run_dir) if config else None))
    hint = ("A row averages the seeds of one config: move the other runs to another folder, or give each variant "
            "its own row (a sweep's grid or methods entries label them).")
    for (label, dataset), members in sorted(rows.items()):
        configured = [(d, c) for _, d, c in members if c is not None]
        seen: dict[int, Path] = {}
        ranks = {str(c["world_size"]): d for d, c in configured if "world_size" in c}
        if len(ranks) > 1:
            shown = " vs ".join(f"{size} ({run_dir})" for size, run_dir in sorted(ranks.items()))
            raise MixedRunsError(f"row {label!r} on {dataset} would average runs trained on different numbers of "
                                 f"data-parallel ranks: world_size {shown}. {hint}")
        first_dir, first = configured[0] if configured else (None, {})
        for seed, run_dir, other in members:
            # world_size is compared above, among the runs that know it (a run in its first invocation does not yet);
            # a run without a config (a row computed from other runs) has only its seed checked.
            differ = [] if other is None else sorted(
                k for k in (first.keys() | other.keys()) - {"world_size"} if first.get(k) != other.get(k))
            if differ:
                shown = listed([f"{k} {first.get(k)!r} vs {other.get(k)!r}" for k in differ], 4)
                raise MixedRunsError(f"row {label!r} on {dataset} would average runs of different configs: "
                                     f"{first_dir} and {run_dir} differ in {shown}. {hint}")
            if seed in seen:
                raise MixedRunsError(f"row {label!r} on {dataset} has seed {seed} twice: {seen[seed]} and "
                                     f"{run_dir}. {hint}")
            seen[seed] = run_dir


def check_same_data(records: Sequence[RunRecord]) -> None:
    """Refuse to tabulate runs of one dataset and cache options that trained on different builds of that cache
    (rebuilt between them: ``benchmarks.data_identity``). Caches with other options (another recipe) are other data
    on purpose; runs that recorded no identity are not compared."""
    builds: dict[tuple[str, str], dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        if rec.data:
            key = (rec.dataset, rec.data.get("cache_options_hash", ""))
            builds[key][json.dumps(rec.data, sort_keys=True)].append(rec.run_dir)
    for (dataset, _), versions in sorted(builds.items()):
        if len(versions) > 1:
            listed = "; ".join(f"{len(dirs)} run(s) such as {dirs[0]} on {identity}"
                               for identity, dirs in sorted(versions.items()))
            raise MixedDataError(f"the runs of {dataset} trained on {len(versions)} builds of the same cache, and "
                                 f"one table would mix them: {listed}. {SAME_DATA_HINT}")


# --- published numbers ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PaperValue:
    value: float
    verified: bool
    table: str
    source: str


@dataclass
class PaperTable:
    """Published numbers keyed by (dataset, method, metric); ``name`` is the paper key shown in captions."""

    name: str
    table: str | None
    values: dict[tuple[str, str, str], PaperValue]

    def lookup(self, dataset: str, names: Iterable[str], metric: str) -> PaperValue | None:
        for name in names:
            hit = self.values.get((dataset, name, metric))
            if hit is not None:
                return hit
        return None


def paper_path(name_or_path: str | Path) -> Path:
    """A CSV path as given, or ``results/paper/<name>.csv`` of this checkout."""
    path = Path(name_or_path)
    if path.suffix == ".csv" or path.exists():
        if not path.is_file():
            raise PaperFileError(f"paper file {path} does not exist")
        return path
    path = PAPER_DIR / f"{name_or_path}.csv"
    if not path.is_file():
        known = sorted(p.stem for p in PAPER_DIR.glob("*.csv")) if PAPER_DIR.is_dir() else []
        raise PaperFileError(f"no published numbers for {name_or_path!r}: {path} does not exist; known: {known} "
                             "(or pass a CSV path)")
    return path


def metric_problem(metric: str) -> str | None:
    """What is wrong with a published value's metric key, or None: it must be a key runs give (``RunRecord.values``):
    a metric of ``METRIC_NAMES``, ``<metric>:<modality>``, or ``<metric>@missing=<rate>`` with the rate written as
    tables write it (``0.5``, not ``0.50``)."""
    base, missing, rate = metric.partition("@missing=")
    base = base.partition(":")[0] if not missing else base
    if base not in METRIC_NAMES:
        return f"is none of {list(METRIC_NAMES)} (optionally with :<modality> or @missing=<rate>)"
    if missing:
        try:
            canonical = f"{float(rate):g}"
        except ValueError:
            return f"has a missing rate {rate!r} that is not a number"
        if rate != canonical:
            return f"writes its missing rate as {rate!r}; write {base}@missing={canonical}, as runs key it"
    return None


def load_paper(name_or_path: str | Path, table: str | None = None) -> PaperTable:
    """Read a published-numbers CSV (columns ``PAPER_COLUMNS``; values in percent), optionally one table of it.

    Raises:
        PaperFileError: missing columns, a bad value or flag (with the row number), or one (dataset, method, metric)
            with different values in several tables and no ``table`` to choose.
    """
    path = paper_path(name_or_path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = sorted(set(PAPER_COLUMNS) - set(reader.fieldnames or ()))
        if missing:
            raise PaperFileError(f"{path}: missing column(s) {missing}; expected {list(PAPER_COLUMNS)}")
        rows = list(reader)
    tables = sorted({r["table"] for r in rows})
    if table is not None and table not in tables:
        raise PaperFileError(f"{path}: no table {table!r}; it has {tables}")
    values: dict[tuple[str, str, str], PaperValue] = {}
    for line, row in enumerate(rows, start=2):
        if table is not None and row["table"] != table:
            continue
        try:
            value = float(row["value"])
        except ValueError:
            raise PaperFileError(f"{path}:{line}: value {row['value']!r} is not a number") from None
        if row["verified"] not in ("true", "false"):
            raise PaperFileError(f"{path}:{line}: verified must be true or false, got {row['verified']!r}")
        problem = metric_problem(row["metric"])
        if problem:
            # A key no run has would leave the value out of every table without a word.
            raise PaperFileError(f"{path}:{line}: metric {row['metric']!r} {problem}")
        key = (row["dataset"], row["method"], row["metric"])
        new = PaperValue(value, row["verified"] == "true", row["table"], row["source"])
        old = values.get(key)
        if old is not None and not math.isclose(old.value, new.value):
            raise PaperFileError(f"{path}:{line}: {key} is {old.value} in {old.table} and {new.value} in "
                                 f"{new.table}; choose one with --paper-table ({tables})")
        if old is None or (new.verified and not old.verified):
            values[key] = new
    names = {r["paper"] for r in rows}
    return PaperTable(next(iter(names)) if len(names) == 1 else path.stem, table, values)


# --- the table model --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    dataset: str
    metric: str

    @property
    def header(self) -> str:
        base, _, rest = self.metric.partition(":")
        if rest:
            return f"{METRIC_NAMES[base]} ({rest})"
        base, _, rate = self.metric.partition("@missing=")
        if rate:
            return f"{METRIC_NAMES[base]} missing {rate_percent(rate)}"
        return METRIC_NAMES[self.metric]


@dataclass
class Cell:
    """Mean/std/n in percent over seeds, each seed's value (in seed order), the published value, and whether the mean
    is the column's best."""

    mean: float | None = None
    std: float | None = None
    n: int = 0
    seeds: tuple[int, ...] = ()
    values: tuple[float, ...] = ()
    paper: PaperValue | None = None
    best: bool = False

    @property
    def diff(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper.value


@dataclass
class Table:
    caption: str
    columns: list[Column]
    rows: list[tuple[str, list[Cell]]]
    with_paper: bool
    # ``mixed_code_notes`` of the rows shown; the caption says them too.
    code_notes: list[str] = field(default_factory=list)


def under_label(found: str, wanted: str) -> bool:
    """A grid row "label [ns.key=v]" belongs to its label."""
    return found == wanted or found.startswith(f"{wanted} [")


def shown_in_table(record: RunRecord, datasets: Sequence[str] | None, methods: Sequence[str] | None) -> bool:
    """Whether ``build_table`` with these ``datasets`` and ``methods`` shows ``record``'s row and column."""
    return ((not datasets or any(under_label(record.dataset, d) for d in datasets))
            and (not methods or any(under_label(record.label, m) for m in methods)))


def _ordered(found: Iterable[str], wanted: Sequence[str] | None) -> list[str]:
    """``wanted``'s order (a grid row sorts under its label), else alphabetical."""
    found = set(found)
    if not wanted:
        return sorted(found)
    out = []
    for x in wanted:
        out += sorted(f for f in found if under_label(f, x))
    return out


def check_missing_results(records: Sequence[RunRecord]) -> None:
    """Missing-modality columns report the final checkpoint on the test split, every run of a row sampled with one
    seed and one list of rates: refuse a result of anything else.

    Raises:
        StaleResultError: naming the first such file, why, how many there are and what to do; or the row and the
            evaluations it would mix.
    """
    stale = [r for r in records if r.missing_problem]
    if stale:
        more = f" ({len(stale) - 1} more run(s) like it)" if len(stale) > 1 else ""
        raise StaleResultError(f"{stale[0].run_dir / MISSING_RESULT}: {stale[0].missing_problem}{more}. Evaluate the "
                               f"final checkpoint on the test split again: augbench evaluate RUN_DIR --split test, or "
                               f"rerun the sweep, which does so")
    # The batch size too: a prediction that depends on the batch (MLA's per-batch entropy gate) scores otherwise.
    plans: dict[tuple[str, str], dict[tuple[Any, tuple[float, ...], Any], Path]] = defaultdict(dict)
    for r in records:
        if r.missing:
            plans[(r.label, r.dataset)][(r.missing_seed, tuple(sorted(r.missing)), r.missing_batch_size)] = r.run_dir
    for (label, dataset), found in sorted(plans.items()):
        if len(found) > 1:
            shown = "; ".join(f"seed {seed}, rates {list(rates)}, batch size {batch or 'unrecorded'} "
                              f"({run_dir / MISSING_RESULT})"
                              for (seed, rates, batch), run_dir in sorted(found.items(), key=str))
            raise StaleResultError(f"row {label!r} on {dataset} would average missing-modality results of different "
                                   f"evaluations: {shown}. Evaluate its runs with one --seed, one --missing list and "
                                   f"one --batch-size (rerunning the sweep does so)")


def build_table(records: Sequence[RunRecord], *, protocol: str = "paper", paper: PaperTable | None = None,
                metrics: Sequence[str] = ("acc", "macro_f1", "map"), per_modality: bool = False,
                missing: bool = False, datasets: Sequence[str] | None = None, methods: Sequence[str] | None = None,
                title: str | None = None) -> Table:
    """Group ``records`` by (row label, dataset) and summarise each metric over seeds.

    Args:
        protocol: ``paper``, ``clean`` or ``last`` (see module docstring).
        paper: published numbers to show beside each cell.
        metrics: fused metrics to show (``acc``, ``macro_f1``, ``map``).
        per_modality: add one accuracy column per modality.
        missing: show missing-modality accuracies (``acc@missing=r``) instead of ``metrics``.
        datasets, methods: order (and subset) of columns and rows (row labels); default alphabetical.
        title: caption prefix.
    """
    if protocol not in PROTOCOL_CAPTIONS:
        raise ValueError(f"protocol {protocol!r} is not one of {list(PROTOCOL_CAPTIONS)}")
    if not records:
        raise ValueError("no finished runs to tabulate")
    if missing and per_modality:
        raise ValueError("missing-modality columns have no per-modality accuracies: drop --per-modality or --missing")
    check_same_data(records)
    if missing:
        check_missing_results(records)
    check_one_config_per_row((r.label, r.dataset, r.seed, r.run_dir, r.config) for r in records)
    groups: dict[tuple[str, str], list[tuple[int, dict[str, float]]]] = defaultdict(list)
    members: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    titles = {}
    for rec in records:
        groups[(rec.label, rec.dataset)].append((rec.seed, rec.missing_values() if missing else rec.values(protocol)))
        members[(rec.label, rec.dataset)].append(rec)
        titles[rec.label] = rec.title
    dataset_order = _ordered({d for _, d in groups}, datasets)
    label_order = _ordered({label for label, _ in groups}, methods)
    # The paper protocol's caption says it selects on test; any other would present these rows as clean.
    # label -> the datasets, in column order, whose runs of that row read the test split during training.
    on_test: dict[str, list[str]] = {}
    if protocol != "paper" or missing:
        for label in label_order:
            read = [d for d in dataset_order if any(map(reads_test, members.get((label, d), [])))]
            if read:
                on_test[label] = read
    shared = Counter(titles[label] for label in label_order)
    # Two rows under one title (runs of two sweeps tabulated together) would read as one method twice.
    row_titles = {label: f"{titles[label]} ({label})" if shared[titles[label]] > 1 else titles[label]
                  for label in label_order}
    columns = []
    for dataset in dataset_order:
        keys = set().union(*(v for (_, d), runs in groups.items() if d == dataset for _, v in runs))
        if missing:
            chosen = sorted((k for k in keys if k.startswith("acc@missing=")), key=lambda k: float(k.split("=")[1]))
        else:
            chosen = [m for m in metrics if m in keys]
            if per_modality:
                chosen += sorted(k for k in keys if k.startswith("acc:"))
        columns += [Column(dataset, key) for key in chosen]
    rows = []
    for label in label_order:
        cells = []
        for col in columns:
            runs = [(seed, v[col.metric] * 100) for seed, v in groups.get((label, col.dataset), []) if col.metric in v]
            cell = Cell()
            if runs:
                runs.sort()
                values = [x for _, x in runs]
                cell = Cell(mean=statistics.fmean(values), std=statistics.stdev(values) if len(values) > 1 else None,
                            n=len(values), seeds=tuple(s for s, _ in runs), values=tuple(values))
            if paper is not None:
                # by the row label only: another row of the same method (a variant) is not the published one
                cell.paper = paper.lookup(col.dataset, (label,), col.metric)
            cells.append(cell)
        rows.append((row_titles[label] + (f" {TEST_SPLIT_MARK}" if label in on_test else ""), cells))
    # The bold ranks the methods under the caption's protocol; a reference row (RunRecord.reference) only stands beside
    # them: the demo's ensemble of final checkpoints was bolded above the best-validation visual-only model.
    reference_labels = {r.label for r in records if r.reference}
    references = [label for label in label_order if label in reference_labels]
    ranked = [cells for label, (_, cells) in zip(label_order, rows) if label not in reference_labels]
    for j in range(len(columns)):
        means = [cells[j].mean for cells in ranked if cells[j].mean is not None]
        top = max(means, default=None)
        for cells in ranked:
            cells[j].best = top is not None and cells[j].mean is not None and round(cells[j].mean, 2) == round(top, 2)
    what = "missing-modality test accuracy" if missing else "test " + ", ".join(METRIC_NAMES[m] for m in metrics)
    selection = ("each run's final checkpoint (the missing-modality evaluation)" if missing else
                 PROTOCOL_CAPTIONS[protocol])
    caption = (f"{title or 'Results'}: {what} in %, mean ± sample std over seeds (n = seeds); best mean per column "
               f"in bold. Protocol: {selection}.")
    if references:
        caption += (" Reference rows, computed from other runs rather than selected under this protocol, are not "
                    f"ranked: {'; '.join(row_titles[label] for label in references)}.")
    if on_test:
        where = "; ".join(f"{row_titles[label]} on {' and '.join(read)}" for label, read in on_test.items())
        caption += (f" {TEST_SPLIT_MARK} = the method selects or tunes on the test split during training (its "
                    f"held-out split knob is test: {where}), so these numbers are not clean.")
    on_subset = [f"{row_titles[label]} on {dataset}" for label in label_order for dataset in dataset_order
                 if any(map(served_subset, members.get((label, dataset), [])))]
    if on_subset:
        caption += (" Trained and tested on a per-class subset of the data (data.subset: smoke runs, not results): "
                    f"{'; '.join(on_subset)}.")
    idle = []
    for label in label_order:
        for dataset in dataset_order:
            verdicts = idle_mechanisms(members.get((label, dataset), [])).get(label)
            if verdicts and verdicts["idle"]:
                idle.append(f"{row_titles[label]} on {dataset} ({_idle_seeds(verdicts)})")
    if idle:
        caption += (" Runs in which the method's own mechanism never acted, judged from their logs (each trained as "
                    f"its base model under the method's name): {'; '.join(idle)}.")
    if paper is not None:
        which = f"{paper.name}" + (f" {paper.table}" if paper.table else "")
        caption += (f" Paper = published value ({which}); Δ = ours − paper in points; † = not verified against "
                    "the paper.")
        if missing:
            caption += (" The 0% column is each run's final checkpoint; where a published 0% value is a best epoch "
                        "on test (AUG's Table 5 repeats its Table 1), Δ includes that selection.")
        if not any(cell.paper for _, cells in rows for cell in cells):
            caption += f" No published value of {which} matches these datasets, rows and metrics."
        shown = [r for r in records if shown_in_table(r, datasets, methods)]
        custom = [r for r in shown if r.custom_splits]
        if custom:
            names = sorted({name for r in custom for name in r.custom_splits})
            caption += (f" {len(custom)} of the {len(shown)} runs trained on a cache prepared from split files other "
                        f"than the published ones ({', '.join(names)}), such as {custom[0].run_dir.name}: their "
                        f"samples are not the paper's.")
    code_notes = mixed_code_notes({f"{row_titles[label]}/{dataset}": members[(label, dataset)]
                                   for label in label_order for dataset in dataset_order
                                   if (label, dataset) in members})
    if code_notes:
        caption += f" Code behind the numbers, where not one commit: {'; '.join(code_notes)}."
    return Table(caption, columns, rows, paper is not None, code_notes)


def _idle_seeds(verdicts: Mapping[str, Sequence[int]]) -> str:
    """Which judged seeds of a cell ran without their mechanism (``idle_mechanisms``): all, or which of how many."""
    idle, acted = verdicts["idle"], verdicts["acted"]
    if not acted:
        return "every seed" if len(idle) > 1 else f"seed {idle[0]}"
    return f"seed{'s' * (len(idle) > 1)} {', '.join(map(str, idle))} of {len(idle) + len(acted)}"


# --- rendering (one table model, three formats) ------------------------------------------------------------------

def _num(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _ours(cell: Cell, pm: str) -> str:
    if cell.mean is None:
        return "–"
    text = _num(cell.mean) if cell.std is None else f"{_num(cell.mean)} {pm} {_num(cell.std)}"
    return f"{text} ({cell.n})"


def _paper(cell: Cell) -> str:
    if cell.paper is None:
        return "–"
    return _num(cell.paper.value) + ("" if cell.paper.verified else "†")


def _sub_headers(with_paper: bool) -> list[str]:
    return ["ours", "paper", "Δ"] if with_paper else ["ours"]


def _cell_texts(cell: Cell, with_paper: bool, escape, bold) -> list[str]:
    ours = escape(_ours(cell, "±"))
    out = [bold(ours) if cell.best and cell.mean is not None else ours]
    if with_paper:
        out += [escape(_paper(cell)), escape(_num(cell.diff, signed=True))]
    return out


def _render_md(table: Table) -> str:
    heads = ["Method"]
    for col in table.columns:
        heads += [f"{col.dataset} {col.header}" + (f" {h}" if table.with_paper else "")
                  for h in _sub_headers(table.with_paper)]
    lines = [f"**{table.caption}**", "", "| " + " | ".join(heads) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(heads) - 1)) + "|"]
    for title, cells in table.rows:
        texts = [title.replace("|", "\\|")]
        for cell in cells:
            texts += _cell_texts(cell, table.with_paper, str, lambda s: f"**{s}**")
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{",
               "}": r"\}", "^": r"\textasciicircum{}", "~": r"\textasciitilde{}", "Δ": r"$\Delta$", "†": r"$^\dagger$",
               "‡": r"$^\ddagger$", "–": "--", "±": r"$\pm$", "−": "$-$"}


def _tex_escape(text: str) -> str:
    # One pass: replacing characters one after another would escape the braces of an earlier replacement.
    return "".join(TEX_ESCAPES.get(char, char) for char in text)


def _render_tex(table: Table) -> str:
    sub = _sub_headers(table.with_paper)
    per_col = len(sub)
    datasets = []
    for col in table.columns:
        if not datasets or datasets[-1][0] != col.dataset:
            datasets.append([col.dataset, 0])
        datasets[-1][1] += per_col
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex_escape(table.caption)}}}",
             r"\begin{tabular}{l" + "r" * (len(table.columns) * per_col) + "}", r"\toprule"]
    lines.append("Method & " + " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{_tex_escape(d)}}}" for d, n in datasets)
                 + r" \\")
    start, rules = 2, []
    for _, n in datasets:
        rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    lines.append(" ".join(rules))
    metric_heads = []
    for col in table.columns:
        metric_heads += [_tex_escape(col.header + (f" {h}" if table.with_paper else "")) for h in sub]
    lines += [" & " + " & ".join(metric_heads) + r" \\", r"\midrule"]
    for title, cells in table.rows:
        texts = [_tex_escape(title)]
        for cell in cells:
            texts += _cell_texts(cell, table.with_paper, _tex_escape, lambda s: rf"\textbf{{{s}}}")
        lines.append(" & ".join(texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def csv_header(table: Table) -> list[str]:
    head = ["method"]
    for col in table.columns:
        fields = ["mean", "std", "n", "per_seed"] + (["paper", "paper_verified", "diff"] if table.with_paper else [])
        head += [f"{col.dataset}/{col.metric}/{f}" for f in fields]
    return head


def table_values(table: Table) -> list[list[str | float | int | bool | None]]:
    """The rows of ``csv_header``'s columns as values (None where a cell has none), for the CSV and for W&B. A cell's
    ``per_seed`` is ``seed:value`` pairs in seed order, space-separated: what a mean and std summarise, for checks
    and other statistics."""
    rows = []
    for title, cells in table.rows:
        row: list[str | float | int | bool | None] = [title]
        for cell in cells:
            per_seed = " ".join(f"{seed}:{value:.4f}" for seed, value in zip(cell.seeds, cell.values)) or None
            row += [cell.mean, cell.std, cell.n, per_seed]
            if table.with_paper:
                row += [None if cell.paper is None else cell.paper.value,
                        None if cell.paper is None else cell.paper.verified, cell.diff]
        rows.append(row)
    return rows


def _csv_text(value: str | float | int | bool | None, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.2f}" if field == "paper" else f"{value:.4f}"  # published numbers carry 2 decimals
    return str(value)


def _csv_rows(table: Table) -> list[list[str]]:
    fields = [name.rsplit("/", 1)[-1] for name in csv_header(table)]
    return [[_csv_text(value, field) for value, field in zip(row, fields)] for row in table_values(table)]


def _render_csv(table: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(csv_header(table))
    writer.writerows(_csv_rows(table))
    return buf.getvalue()


RENDERERS = {"md": _render_md, "csv": _render_csv, "tex": _render_tex}


def render(records: Sequence[RunRecord], fmt: str = "md", paper: PaperTable | None = None, protocol: str = "paper",
           **options: Any) -> str:
    """``build_table`` + the ``fmt`` renderer (``md``, ``csv`` or ``tex``); ``options`` go to ``build_table``."""
    if fmt not in RENDERERS:
        raise ValueError(f"format {fmt!r} is not one of {list(RENDERERS)}")
    return RENDERERS[fmt](build_table(records, protocol=protocol, paper=paper, **options))


def config_order(config_path: Path) -> dict[str, Any]:
    """Row/column order, protocol, paper and title of an experiment config, for ``augbench table --config``."""
    doc = read_config_yaml(config_path) or {}
    if not isinstance(doc, Mapping) or "methods" not in doc or "datasets" not in doc:
        raise ValueError(f"{config_path}: not an experiment config (needs methods and datasets)")
    return {"methods": list(doc["methods"]), "datasets": list(doc["datasets"]), "protocol": doc.get("protocol"),
            "paper": doc.get("paper"), "table": doc.get("table"), "title": doc.get("title") or doc.get("name")}
