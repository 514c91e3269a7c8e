"""Reading a run folder back: ``config.yaml`` (``RunConfig.as_dict()``) -> the ``RunConfig`` that wrote it.

Kept apart from the sweep and the missing-modality evaluation so that both can read runs without importing each
other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from benchmarks.config import RunConfig, build_config, config_overrides
from benchmarks.records import read_json, read_yaml

EXTENSIONS = "extensions.json"


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
