"""Which data a run trained on, beyond its config: ``data.json`` in the run folder.

A run folder is named by its config, and the config names a cache folder, not what the folder holds. A cache rebuilt
under the same name (``augbench prepare --force`` after the raw media changed, or a cache deleted and prepared again
while ``data.cache`` is empty) would otherwise be resumed into, or skipped as finished, by runs trained on the old
one, and a table would mix the two without a word. The identity is what the dataset class reports
(``Dataset.identity``; for prepared datasets the cache's options hash, raw-media fingerprint and preparing commit).
Run folders written before this record have no ``data.json`` and are not checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from benchmarks.errors import UsageError
from benchmarks.records import read_json
from datasets.registry import get_dataset

if TYPE_CHECKING:
    from benchmarks.config import RunConfig
    from benchmarks.sweep.expand import Job

DATA_FILE = "data.json"
SHOWN = 5
SAME_DATA_HINT = ("Retrain runs of the old build (move their folders away), or, if both builds hold the same data "
                  "(the same media copied to another machine changes their fingerprint), delete those runs' "
                  "data.json to accept it")


class DataChangedError(UsageError, RuntimeError):
    """A run would continue, or count as finished, on data other than the data it trained on."""


def current_identity(cfg: RunConfig) -> dict[str, str]:
    return get_dataset(cfg.dataset).identity(cfg.data)


def recorded_identity(run_dir: Path) -> dict[str, str] | None:
    path = Path(run_dir) / DATA_FILE
    return read_json(path, default=None)


def _differences(recorded: dict[str, str], current: dict[str, str]) -> str:
    """``key: recorded in the run, current now`` for every key that differs; empty if none does."""
    absent = "<absent>"
    return "; ".join(f"{k}: {recorded.get(k, absent)!r} in the run, {current.get(k, absent)!r} now"
                     for k in sorted(set(recorded) | set(current)) if recorded.get(k) != current.get(k))


def check_run_data(run_dir: Path, identity: dict[str, str], action: str = "continue it") -> None:
    """Refuse to ``action`` (continue, evaluate) the run in ``run_dir`` on data whose identity differs from the one
    it recorded."""
    recorded = recorded_identity(run_dir)
    diffs = _differences(recorded, identity) if recorded is not None else ""
    if diffs:
        raise DataChangedError(f"{run_dir} was trained on other data than its cache now holds ({diffs}); refusing "
                               f"to {action}. {SAME_DATA_HINT}")


def stale_runs(jobs: Sequence[Job]) -> list[str]:
    """``name (differences)`` of every run among ``jobs`` whose recorded data differs from what its config serves
    now. A run whose cache is gone is not counted: its results still describe the data it recorded."""
    current: dict[str, dict[str, str] | None] = {}
    stale = []
    for job in jobs:
        recorded = recorded_identity(job.run_dir)
        if recorded is None:
            continue
        key = json.dumps([job.cfg.dataset, job.cfg.data.as_dict()], sort_keys=True, default=str)
        if key not in current:
            try:
                current[key] = current_identity(job.cfg)
            except FileNotFoundError:
                current[key] = None
        diffs = _differences(recorded, current[key]) if current[key] is not None else ""
        if diffs:
            stale.append(f"{job.name} ({diffs})")
    return stale


def check_finished_runs(jobs: Sequence[Job]) -> None:
    """Refuse to skip finished runs as done when they trained on other data than their config now serves."""
    stale = stale_runs(jobs)
    if stale:
        more = f" (and {len(stale) - SHOWN} more)" if len(stale) > SHOWN else ""
        raise DataChangedError(f"{len(stale)} finished run(s) were trained on other data than their cache now holds, "
                               f"so their results would mix two datasets: {'; '.join(stale[:SHOWN])}{more}. "
                               f"{SAME_DATA_HINT}")
