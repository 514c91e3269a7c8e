"""Checks made before a sweep starts anything, so that no run is launched only to fail: every cell's settings
resolve, every method and dataset is registered (or ``--skip-missing`` leaves it out), every dataset cache the
unfinished runs read exists, and every device they are given is present. ``check`` gathers all problems into one
report, grouped, so a sweep of hundreds of runs says in a few lines what is missing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from baselines.registry import get_method
from benchmarks.records import DamagedFileError, runs_phrase
from benchmarks.run_folder import read_extensions
from benchmarks.sweep.expand import Job, Plan
from benchmarks.sweep.launchers import Launcher, LaunchOptions
from datasets.registry import get_dataset


class PreflightError(RuntimeError):
    """The sweep would start runs that cannot succeed; the message is the grouped report."""


@dataclass
class Preflight:
    """Problems by heading; empty when the sweep can start."""

    groups: dict[str, list[str]] = field(default_factory=dict)

    def add(self, heading: str, lines: Sequence[str]) -> None:
        if lines:
            self.groups.setdefault(heading, []).extend(lines)

    def __bool__(self) -> bool:
        return bool(self.groups)

    def report(self, runs: int, where: str, dry_run: bool = False) -> str:
        lines = [f"{where}: the sweep ({runs} runs) {'would not' if dry_run else 'cannot'} start; nothing was "
                 "launched."]
        for heading, items in self.groups.items():
            lines.append(f"{heading}:")
            lines += [f"  - {item}" for item in items]
        lines.append("Fix these, or narrow the sweep with --datasets/--methods/--seeds"
                     + ("." if dry_run else "; --dry-run lists the runs."))
        return "\n".join(lines)


def data_problems(pending: Sequence[Job]) -> list[str]:
    """One line per dataset cache that the unfinished runs ``pending`` need and that is missing or ambiguous."""
    problems: dict[tuple[str, str], int] = {}
    checked: dict[tuple[str, str], str | None] = {}
    for job in pending:
        cls = get_dataset(job.cfg.dataset)
        locate = getattr(cls, "locate_cache", None)
        if locate is None:       # generated in memory (synthetic): nothing on disk to check
            continue
        key = (job.cfg.dataset, repr(sorted(job.cfg.data.as_dict().items())))
        if key not in checked:
            try:
                locate(job.cfg.data)
                checked[key] = None
            except (FileNotFoundError, ValueError) as err:
                checked[key] = str(err)
        if checked[key]:
            problem = (job.cfg.dataset, checked[key])
            problems[problem] = problems.get(problem, 0) + 1
    return [f"{dataset} ({runs_phrase(n)}): {message}" for (dataset, message), n in problems.items()]


def modality_problems(jobs: Sequence[Job]) -> list[str]:
    """One line per (method, dataset) pair whose method does not support the dataset's number of modalities: its
    runs would fail when the method is built. Leave the pair out with the method's ``only_datasets``."""
    problems: dict[tuple[str, str, int, tuple[int, ...]], int] = {}
    for job in jobs:
        count = get_dataset(job.cfg.dataset).modality_count(job.cfg.data)
        supported = get_method(job.cfg.method).MODALITIES
        if count not in supported:
            key = (job.label, job.cfg.dataset, count, supported)
            problems[key] = problems.get(key, 0) + 1
    return [f"{label} on {dataset} ({runs_phrase(n)}): the method supports {list(supported)} modalities, the dataset "
            f"serves {count}; list the datasets it runs on in methods.{label.split(' ')[0]}.only_datasets"
            for (label, dataset, count, supported), n in problems.items()]


def task_problems(jobs: Sequence[Job]) -> list[str]:
    """One line per (row, dataset, problem) whose method settings do not fit the dataset's modalities
    (``Method.task_problems``): its runs would fail as they start."""
    problems: dict[tuple[str, str, str], int] = {}
    for job in jobs:
        names = get_dataset(job.cfg.dataset).modality_names(job.cfg.data)
        for problem in get_method(job.cfg.method).task_problems(job.cfg.method_hp, names):
            key = (job.label, job.cfg.dataset, problem)
            problems[key] = problems.get(key, 0) + 1
    return [f"{label} on {dataset} ({runs_phrase(n)}): {problem}" for (label, dataset, problem), n in problems.items()]


def extended_problems(finished: Sequence[Job]) -> list[str]:
    """One line per finished run that ``--extend-epochs`` took past its config: it no longer has this config's
    settings, so the config's table would not count it, while a sweep would skip it as done."""
    out = []
    for job in finished:
        try:
            extensions = read_extensions(job.run_dir)
        except DamagedFileError as err:
            out.append(str(err))
            continue
        if extensions:
            out.append(f"{job.run_dir}: trained to {extensions[-1]['to_epochs']} epochs, the config plans "
                       f"{job.cfg.train.epochs}")
    return out


def check(plan: Plan, launcher: Launcher, opts: LaunchOptions, *, skip_missing: bool = False) -> Preflight:
    """Every problem that would make a run of ``plan`` fail or be left out unasked, grouped by kind."""
    result = Preflight()
    done = {job.name for job in plan.jobs if job.state() == "done"}
    pending = [job for job in plan.jobs if job.name not in done]
    if not skip_missing:
        names = [f"method(s) {plan.unregistered_methods}"] if plan.unregistered_methods else []
        names += [f"dataset(s) {plan.unregistered_datasets}"] if plan.unregistered_datasets else []
        result.add("not registered (--skip-missing leaves them out)",
                   [f"unregistered {' and '.join(names)}"] if names else [])
    result.add("settings that do not resolve", plan.invalid)
    result.add("methods planned on a dataset with a number of modalities they do not support",
               modality_problems(pending))
    result.add("method settings that do not fit the dataset's modalities", task_problems(pending))
    result.add("data missing (build it with augbench prepare, or point data.cache/data.cache_dir at it)",
               data_problems(pending))
    result.add("devices missing", launcher.device_problems(pending, opts))
    result.add("finished runs extended with --extend-epochs past this config (its table does not count them; move "
               "them out of the sweep's folder to train them again as planned, or give the sweep another --out)",
               extended_problems([job for job in plan.jobs if job.name in done]))
    return result
