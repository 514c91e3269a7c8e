"""README.md's generated tables match the registries, and its commands name real subcommands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks.cli import COMMANDS
from benchmarks.commands.list import README_BLOCKS

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("block", sorted(README_BLOCKS))
def test_generated_tables_are_current(block):
    text = README.read_text()
    match = re.search(rf"<!-- {block}:begin -->\n(.*?)<!-- {block}:end -->", text, re.S)
    assert match, f"README has no {block} block"
    assert match.group(1) == README_BLOCKS[block](), (
        f"README's {block} table is stale: run `python -m benchmarks.readme` (or paste `augbench list --markdown "
        f"{block}`)")


def test_readme_commands_exist():
    used = set(re.findall(r"^augbench (\w+)", README.read_text(), re.M))
    assert used and used <= set(COMMANDS), f"README uses unknown subcommands {used - set(COMMANDS)}"


def test_the_methods_table_says_whose_behaviour_each_variant_reproduces():
    # The column was headed "official behaviour" while BalanceBenchmark's presets (mmcosine's bb: s = 15) stood in it.
    from benchmarks.commands.list import methods_markdown

    table = methods_markdown().splitlines()

    def row(name: str) -> str:
        return next(line for line in table if f" | `{name}` | " in line)

    assert "`mmcosine.variant=bb` (BalanceBenchmark: scale=15.0)" in row("mmcosine")
    assert "`aug.variant=official_compat` (official code: " in row("aug")
    assert "`gblending.variant=official_compat` (BalanceBenchmark: " in row("gblending")
    assert "`mses.variant=official_compat` (re-implementation: " in row("mses")
    assert row("agm").split(" | ")[4] == "none"
