"""`augbench --help`, `augbench train --help` and `augbench list` start without importing torch or any other heavy
dependency."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.cli import COMMANDS, command_help

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "numpy", "sklearn", "scipy", "matplotlib", "wandb", "librosa", "tqdm")

PROBE = """
import sys
from benchmarks.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print("IMPORTED", sorted({{m.split(".")[0] for m in sys.modules}} & {heavy!r}), file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["list", "--help"], ["list"]])
def test_help_imports_no_heavy_dependency(argv):
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, heavy=set(HEAVY))], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    assert "usage: augbench" in out.stdout or "methods:" in out.stdout
    assert "IMPORTED []" in out.stderr, out.stderr


def test_help_lists_every_command_with_the_modules_own_help_text():
    for name in COMMANDS:
        assert command_help(name) == importlib.import_module(f"benchmarks.commands.{name}").HELP


def test_list_read_from_source_matches_the_imported_registries():
    from benchmarks.commands.list import imported_listing, static_listing

    static = static_listing()
    assert static is not None, "an entry is not literal in its class body; `augbench list` imports torch again"
    assert static == imported_listing()
