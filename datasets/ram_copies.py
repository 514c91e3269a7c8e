"""RAM copies of memory-mapped cache arrays, shared by every bundle of one process.

A sweep's pool worker (``--launcher pool``) and ``augbench demo`` train run after run on the same cache in one
long-lived process. ``data.resident=memory`` (and ``auto`` on a CPU) loads the cache into RAM for each run; with
these copies the first run of a process reads the files and the later ones reuse what it read. Copies are keyed by
the identity of the file an array maps (path, device, inode, size, modification time, offset, shape, dtype), taken
when ``open_mapped`` maps it, so a cache rebuilt in place is read again, even by a bundle opened before the rebuild
that still maps the old file; and only the most recently loaded cache's arrays are kept, so a worker that moves on
to another cache does not hold two. The copies are read-only: batches only ever gather from them.
"""

from __future__ import annotations

import mmap
import os
import threading
from typing import Callable, Mapping

import numpy as np

_COPIES: dict[tuple, np.ndarray] = {}
_LOCK = threading.Lock()


def open_mapped(path: os.PathLike | str) -> np.ndarray:
    """``np.load(path, mmap_mode="r")``, with the identity of the file it maps recorded on the array for
    ``file_key``. The path may name another file by the time the array is copied (a cache rebuilt in place), so the
    identity is taken now; when the file is replaced while it is being mapped, none is recorded."""
    before = _identity(path)
    array = np.load(path, mmap_mode="r")
    if isinstance(array, np.memmap) and _identity(path) == before:
        array.file_identity = before
    return array


def _identity(path: os.PathLike | str) -> tuple:
    stat = os.stat(path)
    return os.fspath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def file_key(array: np.ndarray) -> tuple | None:
    """The identity of a whole array mapped by ``open_mapped``, or None for anything else (an in-memory array, a view
    of a map, a map opened otherwise), which is then never shared."""
    identity = getattr(array, "file_identity", None)
    if identity is None or not isinstance(array, np.memmap) or not isinstance(array.base, mmap.mmap):
        return None
    return (*identity, int(array.offset), array.shape, array.dtype.str)


def held(arrays: Mapping[str, np.ndarray]) -> bool:
    """Whether every one of ``arrays`` already has a copy in RAM (loading them then needs no new memory)."""
    with _LOCK:
        return all(key is not None and key in _COPIES for key in map(file_key, arrays.values()))


def load(arrays: Mapping[str, np.ndarray], check_room: Callable[[int], None]) -> dict[str, np.ndarray]:
    """RAM copies of ``arrays``: the kept copy of each one that has one, a fresh read-only copy of the others.

    Copies of other caches are released first; ``check_room(nbytes)`` then sees the bytes still to be read and may
    raise (not enough memory) before anything is read.
    """
    keys = {name: file_key(array) for name, array in arrays.items()}
    with _LOCK:
        wanted = {key for key in keys.values() if key is not None}
        for key in [key for key in _COPIES if key not in wanted]:
            del _COPIES[key]
        check_room(sum(int(array.nbytes) for name, array in arrays.items() if keys[name] not in _COPIES))
        out = {}
        for name, array in arrays.items():
            key = keys[name]
            copy = _COPIES.get(key)
            if copy is None:
                copy = np.array(array)
                copy.flags.writeable = False
                if key is not None:
                    _COPIES[key] = copy
            out[name] = copy
        return out


def clear() -> None:
    """Release every kept copy (arrays still referenced by a bundle stay alive until it goes)."""
    with _LOCK:
        _COPIES.clear()
