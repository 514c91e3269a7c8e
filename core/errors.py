"""The base of every error whose message is enough for the user: ``augbench`` prints it as one line, without a
traceback. It lives in ``core`` so that ``datasets`` (a damaged cache, a bad split file) and the engine
(``benchmarks.errors.UsageError``) share it without importing each other."""

from __future__ import annotations


class InputError(Exception):
    """Bad input (a file, a folder, a setting) that the message names together with what to do about it."""
