"""Optional dependencies: a clear error naming the extra that installs a missing one."""

from __future__ import annotations

import importlib
from typing import Any


class MissingExtraError(ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""


def require_transformers() -> Any:
    """Import ``transformers`` or explain which extra installs it."""
    try:
        return importlib.import_module("transformers")
    except ImportError as err:
        raise MissingExtraError("the BERT text encoder and tokenizer need the 'transformers' package: pip install "
                                "'augbench[text]' (or set model.text_encoder=embedding)") from err
