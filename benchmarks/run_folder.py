"""Reading a run folder back: ``config.yaml`` (``RunConfig.as_dict()``) -> the ``RunConfig`` that wrote it.

Kept apart from the sweep and the missing-modality evaluation so that both can read runs without importing each
other.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from benchmarks.config import RunConfig, build_config, config_overrides
from benchmarks.records import DamagedFileError, read_json, read_yaml, remove_leftover_temporaries
from core.distributed import env_world
from core.errors import InputError

EXTENSIONS = "extensions.json"
# The missing-modality evaluation of a run's final checkpoint on the test split (benchmarks.evaluate; tables read
# it); another split's goes to ``missing_result_file(split)``, so evaluating it keeps the test result.
MISSING_RESULT = "missing_modality.json"
# Filesystems that do not implement flock (some Lustre and NFS mounts) answer with one of these.
NO_FLOCK = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)


def rate_percent(rate: float) -> str:
    """A missing-modality rate as a percentage that tells distinct rates apart (0.005 is 0.5%, not 0%; 0.125 is
    12.5%, not 12% like 0.12)."""
    return f"{float(rate) * 100:g}%"


class RunBusyError(InputError, RuntimeError):
    """Another process holds the run folder's lock: it is training or evaluating that run now."""


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``run_dir/.lock`` for as long as this process works on the run. The kernel drops
    it when the process dies, however it dies, so a stale lock never blocks a resume. On a filesystem without flock
    the run goes ahead unlocked, with a warning."""
    fd = os.open(Path(run_dir) / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "holder unknown"
            raise RunBusyError(f"run folder {run_dir} is in use by another process ({holder}); not started. Wait "
                               "for it to finish or stop it, then start it again to resume") from None
        except OSError as err:
            if err.errno not in NO_FLOCK:
                raise
            warnings.warn(f"{run_dir}: this filesystem has no flock ({err.strerror}); nothing stops a second "
                          "process from writing this run folder meanwhile", stacklevel=3)
        else:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
            # The lock makes this process the folder's only writer: what a killed one left half-written goes.
            remove_leftover_temporaries(run_dir)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def rank0_run_lock(run_dir: Path) -> Iterator[None]:
    """``run_lock`` on rank 0, which alone writes the run folder; nothing on the other ranks. A fresh run's folder is
    made to hold the lock, and removed again if the run wrote nothing into it (it failed before its first file),
    so that a half-made folder never looks like a run."""
    if env_world()[0] != 0:
        yield
        return
    run_dir = Path(run_dir)
    fresh = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with run_lock(run_dir):
            yield
    finally:
        if fresh and {p.name for p in run_dir.iterdir()} <= {".lock"}:
            shutil.rmtree(run_dir, ignore_errors=True)


def missing_result_problem(summary: Mapping[str, Any], result: Mapping[str, Any], *, split: str | None = None,
                           seed: int | None = None, rates: Sequence[float] | None = None,
                           batch_size: int | None = None) -> str | None:
    """Why ``result`` (a run's ``missing_modality.json``) does not describe the run whose ``summary.json`` is
    ``summary``, or the evaluation asked for (``split``, ``seed``, ``rates``, ``batch_size`` where given); None when
    it does. It must have evaluated the final checkpoint: a run extended after its evaluation has a newer one."""
    final, evaluated = summary["protocols"]["last"]["epoch"], result.get("checkpoint_epoch")
    if evaluated != final:
        return (f"it evaluated the checkpoint of epoch {evaluated}, but the run's final epoch is {final} (the run was "
                f"extended after it was evaluated)")
    if split is not None and result.get("split") != split:
        return f"it evaluated the {result.get('split')!r} split, not {split!r}"
    if seed is not None and result.get("seed") != seed:
        return f"its missing-modality seed is {result.get('seed')}, not {seed}"
    if batch_size is not None and result.get("batch_size") != batch_size:
        # A method whose prediction looks at its batch (MLA's entropy gate) scores otherwise at another size.
        return f"it evaluated in batches of {result.get('batch_size')}, not {batch_size}"
    found = sorted(float(row["rate"]) for row in result.get("rates", []))
    if rates is not None and found != sorted(float(r) for r in rates):
        return f"it holds the rates {found}, not {sorted(float(r) for r in rates)}"
    return None


def missing_result_file(split: str) -> str:
    """The file name of a run's missing-modality evaluation of ``split``: ``MISSING_RESULT`` for test."""
    return MISSING_RESULT if split == "test" else f"missing_modality-{split}.json"


def missing_evaluation_current(run_dir: Path, *, split: str, seed: int, rates: Sequence[float],
                               batch_size: int) -> bool:
    """Whether ``run_dir`` holds the missing-modality evaluation of its final checkpoint with these settings (a
    sweep's, at the run's ``train.eval_batch_size``; one made by hand with another ``--batch-size`` is made again)."""
    result = read_json(Path(run_dir) / missing_result_file(split), default=None)
    return result is not None and missing_result_problem(read_json(Path(run_dir) / "summary.json"), result,
                                                         split=split, seed=seed, rates=rates,
                                                         batch_size=batch_size) is None


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
    return run_config_from_dict(read_run_config_yaml(path))


RUN_CONFIG_KEYS = ("method", "dataset", "train", "model", "data")


def read_run_config_yaml(path: Path, required: Sequence[str] = RUN_CONFIG_KEYS) -> dict[str, Any]:
    """A run's ``config.yaml`` (``RunConfig.as_dict()``) with at least the ``required`` keys. One that parses as YAML
    but is not such a mapping (a list, a file cut to its first lines) is damaged: read on, it failed with a bare
    TypeError or KeyError naming no file. Tables need only some keys, so they ask for none."""
    config = read_yaml(path)
    if not isinstance(config, dict):
        raise DamagedFileError(path, f"expected the run's config mapping, got {type(config).__name__}")
    missing = [k for k in required if k not in config]
    if missing:
        raise DamagedFileError(path, f"no {', '.join(missing)} key(s)")
    names = [k for k in ("method", "dataset") if k in config and not isinstance(config[k], str)]
    if names:
        raise DamagedFileError(path, f"{', '.join(names)} must be name(s)")
    bad = [k for k in ("train", "model", "data") if k in config and not isinstance(config[k], dict)]
    hparams = config.get("hparams", {})
    if not (isinstance(hparams, dict) and all(isinstance(v, dict) for v in hparams.values())):
        bad.append("hparams")
    if bad:
        raise DamagedFileError(path, f"{', '.join(bad)} must be mapping(s) of keys to values")
    return config


def read_extensions(run_dir: Path) -> list[dict[str, Any]]:
    """``extensions.json``: every ``--extend-epochs`` the run went through (none: empty). One that parses but is not
    a list of extensions with their epoch counts (a hand edit) is damaged: read on, it failed with a bare TypeError or
    KeyError naming no file."""
    path = Path(run_dir) / EXTENSIONS
    extensions = read_json(path, default=[])
    if not (isinstance(extensions, list) and all(
            isinstance(e, dict) and all(type(e.get(k)) is int for k in ("from_epochs", "to_epochs"))
            for e in extensions)):
        raise DamagedFileError(path, "expected a list of extensions, each with its integer from_epochs and to_epochs")
    return extensions


def recorded_config(run_dir: Path, required: Sequence[str] = ()) -> dict[str, Any] | None:
    """The config the run in ``run_dir`` trains under (``config.yaml`` plus its recorded extensions), or None;
    ``required``: the keys it must have (``read_run_config_yaml``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return None
    config = read_run_config_yaml(path, required)
    for extension in read_extensions(run_dir):
        config["train"]["epochs"] = extension["to_epochs"]
    return config


def read_job_file(run_dir: Path) -> dict[str, Any]:
    """A run folder's ``job.json`` (empty when the run was not started by a sweep)."""
    path = Path(run_dir) / "job.json"
    return read_json(path, default={})
