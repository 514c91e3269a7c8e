"""``augbench table RUNS_DIR``: a results table (Markdown, CSV or LaTeX) from finished runs, with published numbers.

Examples::

    augbench table runs/aug_neurips25_table1 --config benchmarks/configs/aug_neurips25/table1.yaml
    augbench table runs/bb --paper balancebenchmark --protocol paper --format tex --out results/bb.tex
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from benchmarks.collect import (
    FORMATS,
    PROTOCOL_CAPTIONS,
    RENDERERS,
    RunRecord,
    Table,
    build_table,
    config_order,
    config_settings,
    csv_header,
    load_paper,
    load_runs,
    shown_in_table,
    table_values,
    under_label,
    unfinished_row,
    unfinished_runs,
)
from benchmarks.errors import UsageError
from benchmarks.records import WANDB_MODES, atomic_write_text, read_json, resolve_wandb_mode, start_wandb

if TYPE_CHECKING:  # the sweep machinery is imported only where a config is given
    from benchmarks.sweep.expand import Job

HELP = "tabulate finished runs: mean ± std over seeds per method x dataset x metric, with published numbers"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs_dir", type=Path, help="folder searched recursively for finished runs")
    p.add_argument("--config", type=Path, help="experiment config: row/column order, protocol, paper and table")
    p.add_argument("--paper", help="published numbers: a key of results/paper/ (e.g. aug_neurips25) or a CSV path")
    p.add_argument("--paper-table", help="which table of the paper file (e.g. table1)")
    p.add_argument("--format", choices=FORMATS, default="md")
    p.add_argument("--protocol", choices=tuple(PROTOCOL_CAPTIONS),
                   help="epoch selection; default: the config's (--config, else the one its runs record), else "
                        "'paper' with --paper, else 'clean'")
    p.add_argument("--per-modality", action="store_true", help="add per-modality accuracy columns")
    p.add_argument("--missing", action="store_true", help="missing-modality accuracies (augbench evaluate --missing)")
    p.add_argument("--out", type=Path, help="write the table here instead of printing it")
    p.add_argument("--wandb", choices=WANDB_MODES, help="also log it as a W&B Table (default: WANDB_MODE or off)")
    p.add_argument("--wandb-group", help="W&B group for the table run")


def recorded_protocol(records: Sequence[RunRecord]) -> str | None:
    """The protocol that every run's ``job.json`` records (its sweep config's), or None when they disagree or a
    run records none, so that a sweep's table follows its config even without ``--config``."""
    found = {read_json(record.run_dir / "job.json", default={}).get("protocol") for record in records}
    return found.pop() if len(found) == 1 else None


def run(args: argparse.Namespace) -> int:
    # Off unless asked for (--wandb or WANDB_MODE); a WANDB_MODE that is no mode is refused before any work, not
    # taken as offline.
    mode = resolve_wandb_mode(args.wandb) if args.wandb or os.environ.get("WANDB_MODE") else "disabled"
    order = config_order(args.config) if args.config else {}
    paper_name = args.paper or order.get("paper")
    if args.paper_table and not paper_name:
        # Otherwise ignored: the table came out without the published numbers it was asked for, without a word.
        raise UsageError(f"--paper-table {args.paper_table} names a table of the paper file: give --paper (or a "
                         "--config that names a paper)")
    paper = load_paper(paper_name, args.paper_table or order.get("table")) if paper_name else None
    records = load_runs(args.runs_dir)
    protocol = (args.protocol or order.get("protocol") or recorded_protocol(records)
                or ("paper" if paper else "clean"))
    shown = [r for r in records if shown_in_table(r, order.get("datasets"), order.get("methods"))]
    if records and not shown:
        # Else a table of row names and no cells, with exit status 0: a wrong --config / runs folder pair passed.
        raise UsageError(f"none of the {len(records)} finished runs in {args.runs_dir} is of a row and dataset that "
                         f"{args.config} lists, such as {records[0].run_dir} ({records[0].label} on "
                         f"{records[0].dataset}); give the runs folder of that config, or no --config")
    if args.missing and shown and not any(r.missing for r in shown):
        # Else an empty table (and malformed LaTeX) with exit status 0.
        raise UsageError(f"--missing: none of the {len(shown)} finished runs shown has a missing-modality result, "
                         f"such as {shown[0].run_dir}; run augbench evaluate RUN_DIR --missing RATES (or a sweep "
                         "with an evaluate section) first")
    table = build_table(records, protocol=protocol, paper=paper, per_modality=args.per_modality,
                        missing=args.missing, datasets=order.get("datasets"), methods=order.get("methods"),
                        title=order.get("title"))
    unfinished, elsewhere = split_unfinished(unfinished_runs(args.runs_dir), shown)
    if unfinished:
        print(f"note: {unfinished_note(len(unfinished), unfinished[0])}", file=sys.stderr)
        # Also in the table itself: a table file read later would otherwise show only a smaller n.
        table.caption += f" {unfinished_note(len(unfinished), unfinished[0].name)}."
    if args.missing:
        absent = [r for r in shown if not r.missing]
        if absent:
            table.caption += f" {no_result_note(len(absent), absent[0].run_dir.name)}."
    if elsewhere:
        print(f"note: {len(elsewhere)} unfinished run folder(s) of rows or datasets not in the table, such as "
              f"{elsewhere[0]}", file=sys.stderr)
    for line in _coverage_notes(records, shown, args.config, order, args.missing) + table.code_notes:
        print(f"note: {line}", file=sys.stderr)
    if args.config:
        for note in seed_notes(shown, args.config):
            print(f"note: {note}", file=sys.stderr)
            table.caption += f" {note[0].upper()}{note[1:]}."
        foreign = runs_outside_config(shown, args.config)
        if foreign:
            note = (f"{len(foreign)} of the {len(shown)} runs shown were trained with settings other than "
                    f"{args.config.name}'s (command-line overrides or another config), such as {foreign[0].name}: "
                    "they are not that configuration's numbers")
            print(f"note: {note}", file=sys.stderr)
            table.caption += f" {note}."
    if args.format == "csv":
        # A CSV holds the cells only: the protocol, the subset and split notes and the counts above live here.
        print(f"note: the CSV has no caption; the table's caption: {table.caption.strip()}", file=sys.stderr)
    text = RENDERERS[args.format](table)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    where = log_wandb_table(table, mode, args.runs_dir, group=args.wandb_group)
    if where is not None:
        print(f"W&B table run: {where}" + (f" (upload it with: wandb sync {where})" if mode == "offline" else ""),
              file=sys.stderr)
    return 0


def split_unfinished(unfinished: Sequence[Path], shown: Sequence[RunRecord]) -> tuple[list[Path], list[Path]]:
    """``unfinished`` run folders as (those that would add a seed to a row and dataset of the table, the others):
    ``shown`` are the table's runs. A run of a row that ``--config`` leaves out, or of one with no finished run yet,
    makes no n of the table smaller. A folder that does not say its row or dataset counts as the table's: a missing
    seed is never silent."""
    rows, datasets = {r.label for r in shown}, {r.dataset for r in shown}
    ours, others = [], []
    for run_dir in unfinished:
        label, dataset = unfinished_row(run_dir)
        in_table = (label is None or label in rows) and (dataset is None or dataset in datasets)
        (ours if in_table else others).append(run_dir)
    return ours, others


def unfinished_note(count: int, example: Path | str) -> str:
    """One wording for stderr (``example``: the folder's path) and the caption (its name), so that both count the
    same runs in the same words."""
    return (f"{count} unfinished run folder(s) of the rows shown (without DONE or summary.json: training, stopped or "
            f"failed) are not counted, such as {example}")


def _settings_key(run_config: dict) -> str:
    """What a row's seeds share (no seed, device or cache path), as one comparable string."""
    return json.dumps(config_settings(run_config), sort_keys=True, default=str)


def _planned_runs(config: Path) -> tuple[list[int], list[Job]]:
    """(the config's seeds, its planned runs)."""
    from benchmarks.sweep import load_config, plan  # only here: the sweep machinery is not needed to tabulate

    sweep = load_config(config)
    return sweep.seeds, plan(sweep, Path(".")).jobs


def runs_outside_config(records: Sequence[RunRecord], config: Path) -> list[Path]:
    """The runs whose recorded settings (what a row's seeds share: no seed, device or cache path) are none of the
    config's planned runs': trained with ``--set`` overrides or by another config. A run trained by hand into a
    folder of its own name is the config's when its settings are."""
    planned = {_settings_key(job.cfg.as_dict()) for job in _planned_runs(config)[1]}
    return [r.run_dir for r in records if not r.config or _settings_key(r.config) not in planned]


def seed_notes(records: Sequence[RunRecord], config: Path) -> list[str]:
    """What the cells' n does not tell: the config's planned runs (settings and seed) with no finished run among
    ``records`` (not started, unfinished or failed), and the seeds of runs counted with the config's settings that
    its ``seeds`` do not list (run by hand, or left from an earlier seed list)."""
    seeds, jobs = _planned_runs(config)
    planned = {(_settings_key(job.cfg.as_dict()), job.cfg.train.seed): job for job in jobs}
    found = {(_settings_key(r.config), r.config["train"]["seed"]) for r in records if r.config}
    absent = [job for k, job in planned.items() if k not in found]
    settings = {k for k, _ in planned}
    extra = sorted({seed for k, seed in found if k in settings and seed not in seeds})
    notes = []
    if absent:
        notes.append(f"{len(absent)} of the {len(jobs)} runs {config.name} plans are not among the finished runs, "
                     f"such as {absent[0].title} on {absent[0].cfg.dataset} seed {absent[0].cfg.train.seed}")
    if extra:
        notes.append(f"runs of seed(s) {extra}, which {config.name} does not list, are counted")
    return notes


def _coverage_notes(records: Sequence[RunRecord], shown: Sequence[RunRecord], config: Path | None, order: dict,
                    missing: bool) -> list[str]:
    """What the table leaves out or blank, said rather than silently dropped: finished runs of rows or datasets the
    config does not list, the config's rows and datasets without a finished run, and (``--missing``) finished runs
    without a missing-modality result."""
    notes = []
    shown_dirs = {r.run_dir for r in shown}
    if config and len(shown) < len(records):
        hidden = [r for r in records if r.run_dir not in shown_dirs]
        rows = sorted({r.label for r in hidden} - {s.label for s in shown})
        datasets = sorted({r.dataset for r in hidden} - {s.dataset for s in shown})
        notes.append(f"{len(hidden)} finished run(s) of rows or datasets that {config.name} does not list are not "
                     f"shown, such as {hidden[0].run_dir}" + (f"; rows: {', '.join(rows)}" if rows else "")
                     + (f"; datasets: {', '.join(datasets)}" if datasets else ""))
    if config:
        found_rows, found_datasets = {r.label for r in records}, {r.dataset for r in records}
        rows = [m for m in order["methods"] if not any(under_label(f, m) for f in found_rows)]
        datasets = [d for d in order["datasets"] if d not in found_datasets]
        if rows:
            notes.append(f"{config.name} rows with no finished run, not shown: {', '.join(rows)}")
        if datasets:
            notes.append(f"{config.name} datasets with no finished run, not shown: {', '.join(datasets)}")
    if missing:
        absent = [r.run_dir for r in shown if not r.missing]
        if absent:
            notes.append(f"{no_result_note(len(absent), absent[0])}: run augbench evaluate RUN_DIR (or rerun the "
                         f"sweep with its evaluate: section)")
    return notes


def no_result_note(count: int, example: Path | str) -> str:
    """Finished runs left out of ``--missing`` cells, in the words of stderr (``example``: the folder's path) and of
    the caption (its name): a cell's n is otherwise short without a word in the table file."""
    return (f"{count} finished run(s) of the rows shown have no missing-modality result and are not counted (a cell "
            f"with none shows '–'), such as {example}")


def log_wandb_table(table: Table, mode: str, runs_dir: Path, group: str | None = None) -> str | None:
    """Log the table (its CSV columns, numbers as numbers so that W&B sorts and plots them) as a W&B Table, W&B's
    files under ``runs_dir/wandb`` and its console output off, as for training runs; return where the run is (its
    offline folder or URL). ``disabled`` does nothing and never imports wandb."""
    if mode == "disabled":
        return None
    import wandb  # lazily: W&B is an optional sink

    run = start_wandb(mode, "fix that, or tabulate with --wandb offline or --wandb disabled", group=group,
                      job_type="table", name="table", dir=str(runs_dir))
    run.log({"table": wandb.Table(columns=csv_header(table), data=table_values(table))})
    run.summary["caption"] = table.caption
    where = run.settings.sync_dir if mode == "offline" else run.url
    run.finish()
    return where


