"""Errors whose message is enough for the user: ``augbench`` prints them as one line, without a traceback.

A module of its own so that the runner and the commands can raise them without importing the CLI.
"""

from __future__ import annotations

from core.errors import InputError


class UsageError(InputError):
    """A user error whose message is enough; printed without a traceback."""
