"""``augbench`` / ``python -m benchmarks``: one subcommand per module in ``benchmarks/commands``.

Each command module exposes ``HELP``, ``configure(parser)`` and ``run(args) -> int``; adding a command is one file
plus one line in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from baselines.hparams import HParamError
from benchmarks.guard import ShadowedPackageError, check_packages

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


class UsageError(Exception):
    """A user error whose message is enough; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="augbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"benchmarks.commands.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        check_packages()
    except ShadowedPackageError as err:
        print(f"augbench: {err}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (UsageError, HParamError, KeyError, FileNotFoundError, ValueError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"augbench {args.command}: error: {message}", file=sys.stderr)
        return 2
