"""README.md's generated tables match the registries, and its commands name real subcommands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks import readme
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


def test_every_dataset_row_has_a_name_and_notes():
    # A DESCRIPTION without its "Name: " prefix put the whole description in the name column and left notes empty.
    from benchmarks.commands.list import datasets_markdown
    from datasets.registry import list_datasets

    assert [name for name, cls in list_datasets().items() if ": " not in cls.DESCRIPTION] == []
    rows = [line.strip("| ").split(" | ") for line in datasets_markdown().splitlines()[2:]]
    assert len(rows) == len(list_datasets()) and all(len(row) == 3 and row[2] for row in rows), rows


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


README_TEXT = ("# Title\n\nIntro.\n\n<!-- methods:begin -->\nold methods\n<!-- methods:end -->\n\nBetween.\n\n"
               "<!-- datasets:begin -->\n| d |\n<!-- datasets:end -->\nOutro.\n")
BLOCKS = {"methods": lambda: "| m |\n| joint |\n", "datasets": lambda: "| d |\n"}


def test_refresh_rewrites_only_the_stale_blocks_and_nothing_outside_the_markers(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(README_TEXT)
    assert readme.refresh(path, BLOCKS) == ["methods"]
    assert path.read_text() == README_TEXT.replace("old methods\n", "| m |\n| joint |\n")
    assert readme.report(path, ["methods"], BLOCKS) == "README.md: rewrote methods table(s)"


def test_refresh_of_a_current_readme_writes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "README.md"
    path.write_text(README_TEXT.replace("old methods\n", "| m |\n| joint |\n"))
    monkeypatch.setattr(type(path), "write_text", lambda *args, **kwargs: pytest.fail("a current README rewritten"))
    assert readme.refresh(path, BLOCKS) == []
    assert readme.report(path, [], BLOCKS) == "README.md: methods, datasets table(s) already current; nothing written"


def test_a_readme_without_a_blocks_markers_is_an_error_naming_the_block_and_writes_nothing(tmp_path):
    path = tmp_path / "README.md"
    text = README_TEXT.replace("<!-- datasets:end -->\n", "")
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: no '<!-- datasets:begin -->' \.\.\. "
                                         r"'<!-- datasets:end -->' block"):
        readme.refresh(path, BLOCKS)
    assert path.read_text() == text, "the methods block found stale first is not written either"


def test_the_command_prints_what_it_did_and_fails_on_a_readme_without_markers(tmp_path, monkeypatch, capsys):
    path = tmp_path / "README.md"
    path.write_text(README.read_text())
    monkeypatch.setattr(readme, "README", path)
    assert readme.main() == 0
    current = f"README.md: {', '.join(README_BLOCKS)} table(s) already current; nothing written\n"
    assert capsys.readouterr().out == current
    path.write_text("# no generated tables\n")
    assert readme.main() == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {path}: no '<!-- ")
