"""Reading a run folder back: ``config.yaml`` (``RunConfig.as_dict()``) -> the ``RunConfig`` that wrote it.

Kept apart from the sweep and the missing-modality evaluation so that both can read runs without importing each
other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from benchmarks.config import RunConfig, build_config, config_overrides
from benchmarks.records import read_json, read_yaml

EXTENSIONS = "extensions.json"
# The missing-modality evaluation of a run's final checkpoint (benchmarks.evaluate).
MISSING_RESULT = "missing_modality.json"


def missing_result_problem(summary: Mapping[str, Any], result: Mapping[str, Any], *, split: str | None = None,
                           seed: int | None = None, rates: Sequence[float] | None = None) -> str | None:
    """Why ``result`` (a run's ``missing_modality.json``) does not describe the run whose ``summary.json`` is
    ``summary``, or the evaluation asked for (``split``, ``seed``, ``rates`` where given); None when it does. It must
    have evaluated the final checkpoint: a run extended after its evaluation has a newer one."""
    final, evaluated = summary["protocols"]["last"]["epoch"], result.get("checkpoint_epoch")
    if evaluated != final:
        return (f"it evaluated the checkpoint of epoch {evaluated}, but the run's final epoch is {final} (the run was "
                f"extended after it was evaluated)")
    if split is not None and result.get("split") != split:
        return f"it evaluated the {result.get('split')!r} split, not {split!r}"
    if seed is not None and result.get("seed") != seed:
        return f"its missing-modality seed is {result.get('seed')}, not {seed}"
    found = sorted(float(row["rate"]) for row in result.get("rates", []))
    if rates is not None and found != sorted(float(r) for r in rates):
        return f"it holds the rates {found}, not {sorted(float(r) for r in rates)}"
    return None


def missing_evaluation_current(run_dir: Path, *, split: str, seed: int, rates: Sequence[float]) -> bool:
    """Whether ``run_dir`` holds the missing-modality evaluation of its final checkpoint with these settings."""
    result = read_json(Path(run_dir) / MISSING_RESULT, default=None)
    return result is not None and missing_result_problem(read_json(Path(run_dir) / "summary.json"), result,
                                                         split=split, seed=seed, rates=rates) is None


def config_sections(as_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``RunConfig.as_dict()`` (or a run's ``config.yaml``) -> ``{"method", "dataset", "train", ..., <method>}``."""
    method, dataset, sections = config_overrides(as_dict)
    return {"method": method, "dataset": dataset, **sections}


def build_from_sections(sections: Mapping[str, Any]) -> RunConfig:
    """``{"method", "dataset", <namespace>: {...}}`` (a ``job.yaml``) -> the resolved ``RunConfig``."""
    rest = {k: v for k, v in sections.items() if k not in ("method", "dataset")}
    return build_config(sections["method"], sections["dataset"], rest)


def run_config_from_dict(as_dict: Mapping[str, Any]) -> RunConfig:
    """Rebuild the ``RunConfig`` a run's ``config.yaml`` describes (same digest, same run name)."""
    return build_from_sections(config_sections(as_dict))


def load_run_config(run_dir: Path) -> RunConfig:
    """The ``RunConfig`` of the run in ``run_dir`` (from its ``config.yaml``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no config.yaml; it is not a run folder")
    return run_config_from_dict(read_yaml(path))


def read_extensions(run_dir: Path) -> list[dict[str, Any]]:
    """``extensions.json``: every ``--extend-epochs`` the run went through (none: empty)."""
    return read_json(Path(run_dir) / EXTENSIONS, default=[])


def recorded_config(run_dir: Path) -> dict[str, Any] | None:
    """The config the run in ``run_dir`` trains under (``config.yaml`` plus its recorded extensions), or None."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return None
    config = read_yaml(path)
    for extension in read_extensions(run_dir):
        config["train"]["epochs"] = extension["to_epochs"]
    return config
