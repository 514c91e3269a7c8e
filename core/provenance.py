"""Where a cache came from, for its manifest: the code's git commit and the versions of the libraries that computed
its arrays."""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

LIBRARIES = ("numpy", "scipy", "librosa", "soundfile", "soxr", "av", "pillow", "torch", "torchvision", "torchaudio",
             "transformers", "tokenizers")


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the checkout holding this code, or ``None`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def library_versions() -> dict[str, str | None]:
    """Installed version of each of ``LIBRARIES`` (``None`` when absent)."""
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out
