"""Where a cache or a run came from: the code's git commit (and whether the checkout had uncommitted changes), the
versions of the libraries that computed it, and the CPU it ran on."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

LIBRARIES = ("numpy", "scipy", "librosa", "soundfile", "soxr", "av", "pillow", "torch", "torchvision", "torchaudio",
             "transformers", "tokenizers")


def _git(*args: str) -> str | None:
    """Output of ``git <args>`` in the checkout holding this code, or ``None`` outside one (or without git)."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the checkout holding this code, or ``None`` outside a git checkout."""
    return (_git("rev-parse", "HEAD") or "").strip() or None


def git_dirty() -> bool | None:
    """Whether tracked files of this checkout differ from its commit (``None`` outside a git checkout)."""
    # --no-optional-locks: a status that refreshed the index would take .git/index.lock in the user's checkout.
    status = _git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status.strip())


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; what ``platform`` knows elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str | None]:
    """Installed version of each of ``LIBRARIES`` (``None`` when absent)."""
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out
