"""Run records: atomic file writes, the per-epoch JSONL, and the optional, lazily imported W&B sink."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

WANDB_MODES = ("online", "offline", "disabled")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary sibling and rename, so a reader (or a kill) never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the permissions an ordinary open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_yaml(path: Path, obj: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=True))


def atomic_torch_save(path: Path, obj: Any) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True, default=_json_default) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: torch.device) -> dict[str, Any]:
    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "platform": platform.platform(), "cpu_count": os.cpu_count(), "device": str(device),
           "git_commit": git_commit()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def resolve_wandb_mode(requested: str | None) -> str:
    """``--wandb`` wins; else ``WANDB_MODE``; else online when credentials exist, offline otherwise (``wandb sync``
    uploads an offline run later, so nothing is lost)."""
    mode = requested or os.environ.get("WANDB_MODE")
    if mode:
        if mode not in WANDB_MODES:
            raise ValueError(f"W&B mode {mode!r} is not one of {WANDB_MODES}")
        return mode
    netrc = Path.home() / ".netrc"
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (netrc.exists() and "api.wandb.ai" in netrc.read_text())
    return "online" if has_key else "offline"


class WandbSink:
    """Logs config, per-epoch metrics and the summary to W&B. ``disabled`` never imports wandb."""

    def __init__(self, mode: str, run_dir: Path, config: dict, name: str, project: str = "augbench",
                 group: str | None = None) -> None:
        self.run = None
        if mode == "disabled":
            return
        import wandb  # lazily: W&B is a sink, never a requirement of training

        id_file = run_dir / "wandb_id.txt"
        # The id is ours (not wandb.util's, which moved between releases) and persists so --resume continues the run.
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        atomic_write_text(id_file, run_id)
        self.run = wandb.init(project=project, group=group, name=name, id=run_id, resume="allow", mode=mode,
                              dir=str(run_dir), config=config, reinit=True)

    def log_epoch(self, record: dict) -> None:
        if self.run is not None:
            self.run.log(flatten(record), step=record["epoch"])

    def log_summary(self, summary: dict) -> None:
        if self.run is not None:
            self.run.summary.update(flatten(summary))

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}/"))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[name] = value
    return out
