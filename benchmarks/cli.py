"""``augbench`` / ``python -m benchmarks``: one subcommand per module in ``benchmarks/commands``.

Each command module exposes ``HELP``, ``configure(parser)`` and ``run(args) -> int``; adding a command is one file
plus one line in ``COMMANDS``. Only the command being run is imported: ``augbench --help`` reads each ``HELP`` from
the module's source, so start-up does not pay for torch and the other heavy imports of every command.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import yaml

from benchmarks.errors import UsageError
from benchmarks.guard import ShadowedPackageError, check_packages
from core.errors import InputError
from core.hparams import HParamError

__all__ = ["COMMANDS", "UsageError", "build_parser", "command_help", "main"]

DESCRIPTION = ("AUG-Bench: train AUG and the imbalanced-multimodal-learning baselines on one runner, sweep them over "
               "seeds and datasets, and tabulate the results (augbench demo: the offline end-to-end demo)")
COMMANDS = (
    "list",
    "train",
    "prepare",
    "bench",
    "demo",
    "sweep",
    "table",
    "plot",
    "evaluate",
    "parity",
)

# Exit status of a process stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


def command_help(name: str) -> str:
    """The ``HELP`` string of ``benchmarks.commands.<name>``, read from its source without importing it."""
    spec = importlib.util.find_spec(f"benchmarks.commands.{name}")
    tree = ast.parse(Path(spec.origin).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "HELP" for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError(f"benchmarks/commands/{name}.py defines no literal HELP string")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser of ``command`` (imported); every other command only appears with its help line."""
    parser = argparse.ArgumentParser(prog="augbench", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        if name != command:
            sub.add_parser(name, help=command_help(name))
            continue
        module = importlib.import_module(f"benchmarks.commands.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        check_packages()
    except ShadowedPackageError as err:
        print(f"augbench: {err}", file=sys.stderr)
        return 2
    command = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        args = build_parser(command).parse_args(argv)
        return int(args._run(args) or 0)
    except (InputError, HParamError, KeyError, FileNotFoundError, ValueError, yaml.YAMLError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        if isinstance(err, yaml.YAMLError):  # a syntax error in a config: yaml names the file and line
            message = " ".join(str(err).split())
        print(f"augbench {command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of stdout stopped (``augbench list -v | head``): no traceback; stdout goes nowhere from here, so
        # that the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt as err:
        # A command that knows where it stopped (``train``) raises a KeyboardInterrupt that says so.
        print(f"augbench {command}: {str(err) or 'interrupted'}", file=sys.stderr)
        return INTERRUPTED
