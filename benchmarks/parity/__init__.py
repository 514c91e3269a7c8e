"""``augbench parity``: each method against the authors' released code, step by step in float64.

``core`` holds the ``Case`` description and the lockstep runner, one module per method holds its cases (the
official harness and the weight map), ``golden`` records the official side's per-step values once so that tests check
parity without the clones, and ``report`` writes ``results/parity/README.md``.
"""

from __future__ import annotations

import importlib

from benchmarks.parity.core import Case

# One module per method, each exposing CASES; listed in the order of the report.
CASE_MODULES = (
    "aug", "ogm", "dgl", "mnl", "inforeg", "smv", "relearning", "mla", "dimml", "mmcosine", "lfm", "balancebench",
    "pmr", "agm", "reconboost", "opm", "mmpareto", "iprm", "arl", "bss", "greedy", "remix", "mses",
)


def all_cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for module in CASE_MODULES:
        for case in importlib.import_module(f"benchmarks.parity.{module}").CASES:
            if case.name in cases:
                raise ValueError(f"parity case {case.name!r} is defined twice")
            cases[case.name] = case
    return cases


def get_cases(names: list[str] | tuple[str, ...] = ()) -> list[Case]:
    """The named cases (a method name selects all of its cases); every case when ``names`` is empty."""
    cases = all_cases()
    if not names:
        return list(cases.values())
    out = []
    for name in names:
        chosen = [c for c in cases.values() if name in (c.name, c.method)]
        if not chosen:
            raise KeyError(f"no parity case or method {name!r}; known: {', '.join(cases)}")
        out += [c for c in chosen if c not in out]
    return out
