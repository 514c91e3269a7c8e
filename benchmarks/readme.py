"""``python -m benchmarks.readme``: rewrite README.md's generated tables (methods, datasets) from the registries."""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks.commands.list import README_BLOCKS

README = Path(__file__).resolve().parents[1] / "README.md"


def refresh(path: Path = README) -> None:
    text = path.read_text()
    for block, render in README_BLOCKS.items():
        text = re.sub(rf"(<!-- {block}:begin -->\n).*?(<!-- {block}:end -->)",
                      lambda m: m.group(1) + render() + m.group(2), text, flags=re.S)
    path.write_text(text)


if __name__ == "__main__":
    refresh()
