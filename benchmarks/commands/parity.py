"""``augbench parity [CASE|METHOD ...] --official-root DIR``: each method against the authors' released code.

With ``--official-root`` (a folder holding the user's clones of the official repositories, one folder per
repository, named as on GitHub) every case runs the official training function and the project's method in
lockstep and writes ``results/parity/<case>.json`` and the generated README; ``--flip`` also flips each documented
deviation alone and records where it shows; ``--record`` stores the official side as the golden record. Without
``--official-root``, ``--golden`` replays the project side against the committed golden records (no clones);
``--golden --flip`` only measures the deviations' signatures against the records and updates the case files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.parity import all_cases, get_cases
from benchmarks.parity.core import ParityResult, run_case
from benchmarks.parity.golden import check, record, record_path, worst
from benchmarks.parity.report import signature, summary, write_readme, write_summary

HELP = "check each method step by step against the official code (local clones) or its golden record"
GOLDEN_DIR = Path("tests/golden/parity")
REPORT_DIR = Path("results/parity")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("cases", nargs="*", help=f"case or method names (default: all; known: {', '.join(all_cases())})")
    p.add_argument("--official-root", type=Path, help="folder holding the clones of the official repositories")
    p.add_argument("--flip", action="store_true", help="also flip each documented deviation alone")
    p.add_argument("--record", action="store_true", help="store the official side as golden records (in this CPU "
                   "model's own folder where the shared record was made on another)")
    p.add_argument("--golden", action="store_true", help="replay the project side against the golden records")
    p.add_argument("--golden-dir", type=Path, default=GOLDEN_DIR)
    p.add_argument("--report-dir", type=Path, default=REPORT_DIR)


def _progress(rec) -> None:
    mark = "ok" if not rec.failed else f"DIFFERS ({len(rec.failed)} quantities, e.g. {rec.failed[0]})"
    print(f"  {rec.label:8s} max |diff| {rec.max_diff:.2e} ({rec.worst}) {mark}", flush=True)


def run(args: argparse.Namespace) -> int:
    cases = get_cases(args.cases)
    if args.golden:
        if not args.flip and args.report_dir != REPORT_DIR:
            print(f"note: --golden writes no report without --flip; {args.report_dir} is left as it is")
        return _golden(cases, args.golden_dir, args.report_dir if args.flip else None)
    if args.official_root is None:
        raise ValueError("--official-root DIR is required (a folder with the official clones), or use --golden")
    if not args.official_root.is_dir():
        raise FileNotFoundError(f"--official-root {args.official_root} is not a folder")
    for case in cases:       # every clone first, so a missing one fails before minutes of work
        case.clone_dir(args.official_root)
    failed = 0
    for case in cases:
        print(f"{case.name}: GitHub {case.repo} @{case.commit[:7]}", flush=True)
        if args.record:
            path, result = record(case, args.official_root, args.golden_dir)
            print(f"  recorded {path}")
        else:
            result = run_case(case, args.official_root, on_step=_progress)
        flips = []
        if args.flip:
            for knob, value in case.deviations.items():
                res = run_case(case, args.official_root, {knob: value}, stop_at_difference=True)
                first = res.first_failure
                where = f"differs from {first.label} ({first.failed[0]})" if first else "no difference"
                print(f"  flip {knob}={value!r}: {where}", flush=True)
                flips.append((knob, value, res))
        failed += not result.passed
        print(f"  {'MATCH' if result.passed else 'DIFFERS'}: max |diff| {result.max_diff:.2e}", flush=True)
        write_summary(args.report_dir, summary(result, flips))
    print(f"wrote {write_readme(args.report_dir)}")
    return 1 if failed else 0


def _golden(cases, directory: Path, report_dir: Path | None) -> int:
    failed = 0
    for case in cases:
        if report_dir is not None:
            _golden_flips(case, directory, report_dir)
            continue
        records = check(case, record_path(directory, case))
        bad = next((r for r in records if r.failed), None)
        failed += bad is not None
        status = "matches" if bad is None else f"DIFFERS at {bad.label} ({bad.failed[0]})"
        print(f"{case.name}: {status} its golden record over {len(records)} checkpoints, max |diff| "
              f"{worst(records):.2e}", flush=True)
    if report_dir is not None:
        print(f"wrote {write_readme(report_dir)}")
    return 1 if failed else 0


def _golden_flips(case, directory: Path, report_dir: Path) -> None:
    """Each documented deviation against the golden record; the signatures replace those in the case file."""
    path = report_dir / f"{case.name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: run augbench parity {case.name} --official-root DIR first")
    data = json.loads(path.read_text())
    data["deviations"] = []
    for knob, value in case.deviations.items():
        records = check(case, record_path(directory, case), overrides={knob: value})
        res = ParityResult(case, records, {knob: value})
        first = res.first_failure
        print(f"  flip {knob}={value!r}: " + (f"differs from {first.label} ({first.failed[0]})" if first
                                             else "no difference"), flush=True)
        data["deviations"].append({"knob": knob, "value": value, "against": "golden record", **signature(res)})
    write_summary(report_dir, data)
