"""Counting the host reads of tensor values that would wait for a GPU.

On a GPU, ``.item()``, ``bool(t)``, ``float(t)``, ``.tolist()``, ``.cpu()`` of a device tensor, and ``torch.tensor``
of host data onto the device, block the host until the device has run everything queued so far. CPU tests cannot
time that, but they can count the calls: ``host_reads`` records where each one came from.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from typing import Iterator

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TENSOR_READS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "cpu", "numpy")
TORCH_CALLS = ("tensor",)


def _call_site() -> str:
    """The innermost project frame outside tests/ (``path:line``), or ``?``; called from a wrapper below."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = os.path.abspath(frame.filename)
        if path.startswith(ROOT + os.sep) and not path.startswith(os.path.join(ROOT, "tests") + os.sep):
            return f"{os.path.relpath(path, ROOT)}:{frame.lineno}"
    return "?"


@contextlib.contextmanager
def host_reads() -> Iterator[list[tuple[str, str]]]:
    """Record ``(what, call site)`` of every value read (and ``torch.tensor`` call) inside the block."""
    seen: list[tuple[str, str]] = []
    busy = [False]  # a read made while recording one (the stack walk) is not the code's

    def counted(owner: object, name: str):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if not busy[0]:
                busy[0] = True
                try:
                    seen.append((name, _call_site()))
                finally:
                    busy[0] = False
            return original(*args, **kwargs)
        return wrapper

    with pytest.MonkeyPatch.context() as mp:
        for name in TENSOR_READS:
            mp.setattr(torch.Tensor, name, counted(torch.Tensor, name))
        for name in TORCH_CALLS:
            mp.setattr(torch, name, counted(torch, name))
        yield seen
