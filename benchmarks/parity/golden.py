"""Golden records: the official side's values at every checkpoint of a case, recorded once from the official code,
so that the project side can be checked without the clones.

Full ResNet-18 states are too large to commit per step, so each compared tensor is kept as a fixed-length
fingerprint: its mean, mean square, a cosine-weighted mean and its first, middle and last elements. Means (not sums)
keep the fingerprint's rounding at the scale of one element, so the same tolerance as the live comparison applies.
A record file holds the case, the official repository and commit, the labels in order, the quantity names once and
per label the indices of its quantities and one (quantities, 6) float64 matrix of their fingerprints.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.parity.core import (
    ATOL,
    DTYPE,
    RTOL,
    Case,
    Snapshot,
    StepRecord,
    compare,
    float64,
    run_case,
)
from core.provenance import cpu_model

FORMAT = 2
SAMPLES = 3


def fingerprint(t: torch.Tensor) -> torch.Tensor:
    x = t.detach().to(DTYPE).reshape(-1)
    n = x.numel()
    if n == 0:
        return torch.zeros(3 + SAMPLES, dtype=DTYPE)
    weights = torch.cos(torch.arange(n, dtype=DTYPE))
    idx = torch.linspace(0, n - 1, SAMPLES).round().long()
    return torch.cat([torch.stack([x.mean(), (x * x).mean(), (x * weights).mean()]), x[idx]])


def fingerprints(snapshot: Snapshot) -> Snapshot:
    return {key: fingerprint(value) for key, value in snapshot.items()}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Records are made and replayed on one CPU thread: the reduction order, and so the last bits of float64 sums,
    depends on the thread count (differences up to ~1e-9 after a few steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def cpu_kind(model: str | None = None) -> str:
    """A CPU model (this machine's by default) as a folder name (``intel-r-xeon-r-processor``)."""
    return re.sub(r"[^a-z0-9]+", "-", (model or cpu_model()).lower()).strip("-")


def record_path(directory: Path, case: Case) -> Path:
    """The case's record for this CPU kind: ``DIR/<cpu kind>/<case>.pt`` where one was recorded on that kind, else
    ``DIR/<case>.pt``. Float64 rounding in the BLAS and convolution kernels differs between CPU models, and a few
    cases amplify it past the tolerance within a few steps (BSS, G-Blending and SMV records made on an AMD EPYC miss
    it by 4e-10 to 3e-4 on an Intel Xeon and by 2e-10 to 2e-5 on an AMD EPYC without AVX-512, where the same cases
    match the official code live with no difference)."""
    kind = Path(directory) / cpu_kind() / f"{case.name}.pt"
    return kind if kind.is_file() else Path(directory) / f"{case.name}.pt"


def record_target(directory: Path, case: Case) -> Path:
    """Where ``--record`` stores the case on this CPU: its replay record (``record_path``) unless that is a shared
    record made on another CPU model (records from before the CPU was stored count as another's), which would then
    no longer match where it was made; this CPU kind's own record then."""
    path = record_path(directory, case)
    if path.is_file() and path.parent == Path(directory) and load(path).get("cpu") != cpu_model():
        return Path(directory) / cpu_kind() / f"{case.name}.pt"
    return path


def record(case: Case, root: Path, directory: Path) -> tuple[Path, Any]:
    """Run the case against the official clone, store the official fingerprints, return (path, parity result)."""
    steps: dict[str, dict[str, Any]] = {}
    keys: dict[str, int] = {}

    def keep(label: str, snapshot: Snapshot) -> None:
        if case.golden_labels and label not in case.golden_labels:
            return
        prints = fingerprints(snapshot)
        index = [keys.setdefault(k, len(keys)) for k in prints]
        steps[label] = {"index": torch.tensor(index, dtype=torch.int32), "values": torch.stack(list(prints.values()))}

    with one_thread():
        result = run_case(case, root, record=keep)
    missing = [label for label in case.golden_labels if label not in steps]
    if missing:
        raise ValueError(f"{case.name}: the run never reached the golden labels {missing}; nothing was recorded")
    path = record_target(directory, case)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "case": case.name, "method": case.method, "hparams": dict(case.hparams),
                "repo": case.repo, "commit": case.commit, "labels": list(steps), "keys": list(keys), "steps": steps,
                "atol": ATOL, "rtol": RTOL, "live_max_diff": result.max_diff, "live_passed": result.passed,
                "cpu": cpu_model()}, path)
    return path, result


def load(path: Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no golden parity record {path}; record it with augbench parity --record")
    data = torch.load(path, map_location="cpu", weights_only=False)
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: golden record format {data.get('format')!r}, expected {FORMAT}")
    return data


def check(case: Case, path: Path, limit: int | None = None, step_hook: Callable[[Any], None] | None = None,
          overrides: dict[str, Any] | None = None) -> list[StepRecord]:
    """Replay the project side of ``case`` and compare its fingerprints with the golden record at every label.

    Args:
        case: the case.
        path: its record file.
        limit: compare only the first ``limit`` labels (a quick check).
        step_hook: called with the project side before each comparison (tests perturb it here).
        overrides: project knobs on top of the case's (a flipped deviation); the check stops at the first
            difference either way.
    """
    data = load(path)
    if data["case"] != case.name or data["commit"] != case.commit:
        raise ValueError(f"{path} records case {data['case']!r} at {data['commit'][:7]}, not {case.name!r} at "
                         f"{case.commit[:7]}")
    # A knob changed since the recording may only act after the steps a check covers, and would then pass unseen.
    recorded_as = {"method": data["method"], "repo": data["repo"], "hparams": data["hparams"]}
    if recorded_as != {"method": case.method, "repo": case.repo, "hparams": dict(case.hparams)}:
        raise ValueError(f"{path} records {case.name!r} as {recorded_as}, the case is now method {case.method!r}, "
                         f"repo {case.repo!r}, hparams {dict(case.hparams)}; record it again")
    labels = data["labels"][:limit]
    if not labels:
        raise ValueError(f"{path}: nothing to compare (the record has {len(data['labels'])} labels, limit {limit})")
    out: list[StepRecord] = []
    with float64(), one_thread():
        project = case.project(case, dict(overrides or {}))
        steps = project.steps()
        # A partial record's left-out labels are stepped through; a full record names every label the project
        # side may reach. Every recorded label must come, in order.
        kept = set(data["labels"]) if case.golden_labels else None
        for label in labels:
            mine = next(steps, None)
            while kept is not None and mine is not None and mine != label and mine not in kept:
                mine = next(steps, None)
            if mine != label:
                raise RuntimeError(f"{case.name}: the project side reached {mine!r} where the record has {label!r}")
            if step_hook is not None:
                step_hook(project)
            step = data["steps"][label]
            recorded = {data["keys"][i]: v for i, v in zip(step["index"].tolist(), step["values"].unbind())}
            out.append(compare(label, fingerprints(project.snapshot()), recorded))
            if out[-1].failed:
                return out
        # A full record ends where the official run did (the live run refuses a project side that goes on); a
        # partial one may have left out the labels after its last.
        leftover = next(steps, None) if limit is None and not case.golden_labels else None
        if leftover is not None:
            raise RuntimeError(f"{case.name}: the record ends at {labels[-1]!r} while the project side continues at "
                               f"{leftover!r}")
    return out


def worst(records: list[StepRecord]) -> float:
    return max((r.max_diff for r in records), default=math.nan)
