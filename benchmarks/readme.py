"""``python -m benchmarks.readme``: rewrite README.md's generated tables (methods, datasets) from the registries.

Each table sits between ``<!-- <block>:begin -->`` and ``<!-- <block>:end -->``; text outside the markers is never
touched. The command prints which blocks it rewrote, or that all of them were already current, and writes the file
only when something changed. A README without a block's markers is an error naming the block.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable, Mapping

from benchmarks.commands.list import README_BLOCKS

README = Path(__file__).resolve().parents[1] / "README.md"


def block_pattern(block: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {re.escape(block)}:begin -->\n)(.*?)(<!-- {re.escape(block)}:end -->)", re.S)


def refresh(path: Path = README, blocks: Mapping[str, Callable[[], str]] = README_BLOCKS) -> list[str]:
    """Rewrite the generated blocks of ``path`` in place; returns the names of the blocks whose content changed.

    Raises:
        ValueError: a block's begin/end markers are missing from ``path``.
    """
    text = path.read_text(encoding="utf-8")
    changed = []
    for block, render in blocks.items():
        match = block_pattern(block).search(text)
        if match is None:
            raise ValueError(f"{path}: no '<!-- {block}:begin -->' ... '<!-- {block}:end -->' block to rewrite")
        fresh = render()
        if match.group(2) != fresh:
            changed.append(block)
            text = text[:match.start(2)] + fresh + text[match.end(2):]
    if changed:
        path.write_text(text, encoding="utf-8")
    return changed


def report(path: Path, changed: list[str], blocks: Mapping[str, Callable[[], str]] = README_BLOCKS) -> str:
    """The line the command prints."""
    if changed:
        return f"{path.name}: rewrote {', '.join(changed)} table(s)"
    return f"{path.name}: {', '.join(blocks)} table(s) already current; nothing written"


def main() -> int:
    try:
        changed = refresh(README)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report(README, changed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
