"""Media decoding: deterministic audio feature pipelines (``audio``) and frame extraction (``video``).

``MediaError`` is what both raise for a file they cannot use; its ``kind`` is the reason category that ``prepare``
counts in the manifest and writes to ``dropped.csv`` (``corrupt audio``, ``corrupt video``, ``corrupt image``,
``lfs pointer``, ``too few frames``, ...), and its message names the file.
"""

from __future__ import annotations

from pathlib import Path

LFS_HEADER = b"version https://git-lfs.github.com/spec/v1"


# MediaError.kind of a file or folder that is not there (prepare tells a wrong --raw folder by it).
MISSING_MEDIA = "missing media"


# MediaError.kind of a name in a list that leads out of the folder its media must come from.
OUTSIDE_FOLDER = "media outside its folder"


class MediaError(Exception):
    """A media file or folder that cannot be used.

    Attributes:
        path: the offending file or folder.
        kind: reason category (counted in the manifest).
        reason: human-readable detail.
    """

    def __init__(self, path: Path | str, kind: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.kind = kind
        self.reason = reason


def check_inside(folder: Path, name: str) -> None:
    """``MediaError`` where ``name``, read from a list, is absolute or climbs out of ``folder`` with ``..``: the cache
    records media relative to the raw root, and a list must not make prepare read files elsewhere."""
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise MediaError(Path(folder), OUTSIDE_FOLDER, f"{name!r} points outside {folder}")


def is_lfs_pointer(path: Path | str) -> bool:
    """Whether ``path`` is a Git LFS pointer text file (about 130 bytes) instead of the media it names."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > 1024:
            return False
        with path.open("rb") as f:
            return f.read(len(LFS_HEADER)) == LFS_HEADER
    except OSError:
        return False


def lfs_error(path: Path | str) -> MediaError:
    return MediaError(path, "lfs pointer", "a Git LFS pointer file, not the media it names (a ZIP download or a "
                                           "clone without LFS); fetch the real files with `git lfs pull` in the "
                                           "dataset repository, then prepare again")
