"""Run records: atomic file writes, the per-epoch JSONL, and the optional, lazily imported W&B sink.

torch, numpy and wandb are imported only where they are used, so that commands which merely name these records
(``augbench train --help``) start without them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import yaml

from benchmarks.errors import UsageError
from core.provenance import cpu_model, git_commit, git_dirty

WANDB_MODES = ("online", "offline", "disabled")
_REQUIRED = object()


class DamagedFileError(UsageError):
    """A run file that exists but does not parse (a copy cut short, a hand edit); the message names the file, where
    json's own error names only a line and column."""

    def __init__(self, path: Path, problem: str,
                 remedy: str = "restore it, or delete that run folder and train it again") -> None:
        super().__init__(f"{path} is damaged: {problem}; {remedy}")


# The temporary sibling of an atomic write: ".<name>.<12 hex digits>.tmp".
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temporary sibling of ``path``, then rename it over ``path``: a reader, a kill or
    a Ctrl-C (``KeyboardInterrupt``) at any point leaves either the old or the new file, and no temporary file (a
    SIGKILL can leave one; ``remove_leftover_temporaries`` clears it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        # Created by open() or torch.save like any file, so the process umask decides its permissions (unlike
        # mkstemp's 0600).
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    _atomic_write(path, write)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_yaml(path: Path, obj: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=True))


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True, default=_json_default) + "\n" for r in records))


def remove_leftover_temporaries(folder: Path) -> None:
    """Delete the temporaries that atomic writes of a process killed mid-write left in ``folder`` (a checkpoint's
    can be as large as the checkpoint). Only the folder's sole writer may call this: another writer's temporary
    is in use."""
    for tmp in Path(folder).iterdir():
        if _TEMPORARY.fullmatch(tmp.name):
            tmp.unlink(missing_ok=True)


def read_json(path: Path, default: Any = _REQUIRED, remedy: str | None = None) -> Any:
    """The JSON document in ``path``; ``default`` when given and the file is absent. A file that does not parse
    raises ``DamagedFileError`` (saying ``remedy`` where the file is not a run's)."""
    path = Path(path)
    if default is not _REQUIRED and not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DamagedFileError(path, f"not valid JSON ({err})", *([remedy] if remedy else [])) from None


def read_yaml(path: Path) -> Any:
    """The YAML document in a run file such as ``config.yaml``; one that does not parse raises ``DamagedFileError``."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise DamagedFileError(path, f"not valid YAML ({yaml_problem(err)})") from None


class DuplicateKeyError(ValueError):
    """A hand-written config gives one key twice in a mapping."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping: plain YAML keeps the last one silently, so
    a config would run with the settings of the first quietly dropped."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *defaults' entries may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):  # yaml's own error below names the file and line
                continue
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise DuplicateKeyError(f"{key_node.start_mark.name}:{line}: key {key!r} is given twice in one "
                                        f"mapping (first on line {first_line[key]}); YAML would silently keep only "
                                        "the last")
            first_line[key] = line
        return super().construct_mapping(node, deep)


def read_config_yaml(path: Path) -> Any:
    """A hand-written config file (a sweep's or a run's); a key given twice in one mapping raises
    ``DuplicateKeyError`` naming the file and line. A folder or a file that is not UTF-8 text raises ``UsageError``
    naming the file (Python's own errors name neither the file nor, for the encoding, what to do)."""
    if Path(path).is_dir():
        raise UsageError(f"{path} is a folder, not a config file")
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as err:
        raise UsageError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None


def yaml_problem(err: Exception) -> str:
    """A YAML error in one line: 'line N: problem' where yaml marks one (its own text spans several lines)."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    return f"line {mark.line + 1}: {problem}" if mark is not None and problem else " ".join(str(err).split())


def read_checkpoint(path: Path, map_location: Any, mmap: bool = False) -> dict[str, Any]:
    """A run's checkpoint as saved by the runner (trusted: written by this code); one torch cannot read (cut short,
    overwritten) raises ``DamagedFileError``."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    # Overwritten bytes reach torch's legacy pickle reader, which fails with whichever error its first opcodes raise.
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, OverflowError) as err:
        raise DamagedFileError(path, f"torch cannot load it ({str(err).splitlines()[0]})") from None


def read_jsonl(path: Path) -> list[dict]:
    """One record (a JSON object) per non-empty line; a line that is not UTF-8, does not parse or is no object
    raises ``DamagedFileError`` naming it."""
    records = []
    # Bytes, decoded line by line: a text-mode reader decodes ahead in blocks, so its error names no line.
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if raw.strip():
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as err:
                    raise DamagedFileError(path, f"line {number} is not UTF-8 text ({err.reason})") from None
                except json.JSONDecodeError as err:
                    raise DamagedFileError(path, f"line {number} is not valid JSON ({err})") from None
                if not isinstance(record, dict):
                    raise DamagedFileError(path, f"line {number} is not a JSON object ({raw.decode().strip()[:40]})")
                records.append(record)
    return records


def _json_default(obj: Any) -> Any:
    # An object can only be a numpy scalar or a tensor if its library is already imported.
    np, torch = sys.modules.get("numpy"), sys.modules.get("torch")
    if np is not None and isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def environment(device) -> dict[str, Any]:
    import numpy as np
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "platform": platform.platform(), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "device": str(device), "git_commit": git_commit(), "git_dirty": git_dirty(),
           # "warn_only": an op without a deterministic implementation warns (on stderr) instead of failing.
           "deterministic_algorithms": ("off" if not torch.are_deterministic_algorithms_enabled() else "warn_only"
                                        if torch.is_deterministic_algorithms_warn_only_enabled() else "strict")}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def resolve_wandb_mode(requested: str | None) -> str:
    """``--wandb`` wins; else ``WANDB_MODE``; else online when credentials exist, offline otherwise (``wandb sync``
    uploads an offline run later, so nothing is lost)."""
    mode = requested or os.environ.get("WANDB_MODE")
    if mode:
        if mode not in WANDB_MODES:
            where = "W&B mode" if requested else "WANDB_MODE"
            raise ValueError(f"{where} {mode!r} is not one of {WANDB_MODES}")
        return mode
    netrc = Path.home() / ".netrc"
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (netrc.exists() and "api.wandb.ai" in netrc.read_text())
    return "online" if has_key else "offline"


def runs_phrase(n: int) -> str:
    return f"{n} run{'s' if n != 1 else ''}"


def wandb_project() -> str:
    """``WANDB_PROJECT`` (which wandb itself reads, so a user's setting must not be overridden), else ``augbench``."""
    return os.environ.get("WANDB_PROJECT") or "augbench"


def listed(items: Sequence[str], shown: int, sep: str = ", ") -> str:
    """The first ``shown`` of ``items`` joined with ``sep``, then "and N more" for the rest."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return sep.join(items[:shown]) + more


def one_line(err: Exception) -> str:
    """An exception as one line (W&B's messages run over several)."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def start_wandb(mode: str, way_out: str, *, fallback: bool = False, **kwargs: Any) -> Any:
    """``wandb.init`` with the suite's settings (project, its console output off, a process that starts several runs
    closing the last one first). A run that cannot start is a one-line ``UsageError`` ending with ``way_out``; with
    ``fallback`` an unreachable server (online) is raised as wandb's ``CommError`` for the caller to log offline."""
    import wandb  # lazily: W&B is a sink, never a requirement of training

    try:
        return wandb.init(project=wandb_project(), mode=mode, reinit="finish_previous",
                          settings=wandb.Settings(silent=True, console="off"), **kwargs)
    except (wandb.errors.Error, ValueError) as err:  # ValueError: pydantic's check of a WANDB_* setting
        # An AuthenticationError is a CommError too, but a bad key needs fixing, not a later sync.
        unreachable = isinstance(err, wandb.errors.CommError) and not isinstance(err, wandb.errors.AuthenticationError)
        if fallback and mode == "online" and unreachable:
            raise
        raise UsageError(f"W&B could not start its {mode} run ({one_line(err)}); {way_out}") from err


# W&B refuses a tag longer than this (wandb.sdk.wandb_settings), and with it the whole run.
WANDB_TAG_MAX = 64


def wandb_tag(label: str) -> str:
    """``label`` as a W&B tag: a grid row's label lists its grid point and easily passes W&B's 64 characters, which
    failed every run of the row before it trained; a longer one keeps its start and a hash of the whole, so rows
    stay apart (the full label is in the run's job.json)."""
    if len(label) <= WANDB_TAG_MAX:
        return label
    digest = hashlib.sha1(label.encode()).hexdigest()[:8]
    return f"{label[:WANDB_TAG_MAX - len(digest) - 1]}~{digest}"


class WandbSink:
    """Logs config, per-epoch metrics and the summary to W&B. ``disabled`` never imports wandb.

    wandb's own console output (banner, run history, summary, sync hints: ~30 lines per run) is switched off; the
    sink says in one line where the run is and, offline, how to upload it. Errors still reach the log file under
    ``wandb/``."""

    def __init__(self, mode: str, run_dir: Path, config: dict, name: str, group: str | None = None,
                 tags: list[str] | None = None, log=print) -> None:
        self.run, self.mode, self.log = None, mode, log
        if mode == "disabled":
            return
        import wandb

        id_file = run_dir / "wandb_id.txt"
        # The id is ours (not wandb.util's, which moved between releases) and persists so --resume continues the run.
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        atomic_write_text(id_file, run_id)
        def start(mode: str) -> Any:
            other = "--wandb offline (upload later with wandb sync) or --wandb disabled" if mode == "online" else \
                "--wandb disabled"
            return start_wandb(mode, f"fix that, or train with {other}; --resume continues the run folder it left",
                               fallback=True, group=group, tags=[wandb_tag(t) for t in tags or []] or None,
                               name=name, id=run_id, resume="allow",
                               dir=str(run_dir), config=config)
        try:
            self.run = start(mode)
        except wandb.errors.CommError as err:
            # Credentials but no reachable server (a compute node, an outage): the run still trains and logs;
            # `wandb sync` uploads it later under the same id.
            log(f"W&B server unreachable ({one_line(err)}); logging offline instead")
            self.mode = "offline"
            wandb.teardown()  # the failed online start still holds the run id in wandb's service ("run ID is in use")
            self.run = start("offline")

    def __enter__(self) -> WandbSink:
        return self

    def __exit__(self, error_type: type | None, *_: Any) -> bool:
        # A training stopped by an error or Ctrl-C is closed as failed: W&B would close it at exit as finished.
        self.finish(exit_code=1 if error_type is not None else None)
        return False

    def _guarded(self, what: str, call: Callable[[Any], Any]) -> bool:
        """``call(run)``, False where W&B failed (its service died, a full disk): that stops W&B logging, never the
        training; metrics.jsonl and summary.json keep every epoch. Only W&B's calls run here: an error in the
        suite's own data must surface, not pass for W&B's."""
        if self.run is None:
            return False
        try:
            call(self.run)
            return True
        except Exception as err:  # noqa: BLE001 - whatever W&B raises, the run must go on
            run, self.run = self.run, None
            self.log(f"W&B logging stopped ({what}: {one_line(err)}); metrics.jsonl and summary.json keep every "
                     "epoch")
            with contextlib.suppress(Exception):  # else wandb closes it at exit as finished
                run.finish(exit_code=1)
            return False

    def log_epoch(self, record: dict) -> None:
        # commit: the row goes out now, not held back until the next step arrives (one epoch late).
        data = flatten(record)
        self._guarded(f"epoch {record['epoch']}", lambda run: run.log(data, step=record["epoch"], commit=True))

    def log_history(self, records: list[dict]) -> None:
        """Send a resumed run's checkpointed epochs again. A kill loses the epochs W&B had not yet flushed (even ones
        logged long before), while the checkpoint keeps them; W&B drops a step it already holds for this run id, so
        the history it shows matches ``metrics.jsonl``."""
        for record in records:
            self.log_epoch(record)

    def log_summary(self, summary: dict) -> None:
        data = flatten(summary, lists=True)
        self._guarded("summary", lambda run: run.summary.update(data))

    def finish(self, exit_code: int | None = None) -> None:
        """Close the run; ``exit_code`` 1 marks it failed in W&B (an interrupted or crashed training)."""
        if self.run is None:
            return
        where = self.run.settings.sync_dir if self.mode == "offline" else self.run.url
        closed = self._guarded("finish", lambda run: run.finish(exit_code=exit_code))
        self.run = None
        if not closed:
            return
        if self.mode == "offline":
            self.log(f"W&B run saved offline; upload it with: wandb sync {where}")
        else:
            self.log(f"W&B run: {where}")


def flatten(d: dict, prefix: str = "", lists: bool = False) -> dict[str, Any]:
    """Nested keys joined with ``/``; scalars kept, and with ``lists`` (the summary's extensions and segments) lists
    as their JSON text."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}/", lists))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[name] = value
        elif lists and isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
    return out
