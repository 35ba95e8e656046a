"""The one user-facing error type: what went wrong, where, and how to fix it (numpy-free; Python 3.9 compatible).

Every stage raises :class:`UserError` for bad input it can explain (an unreadable image, a damaged contract, an
argument out of range). The CLI prints it as one short message and exits 2, without a traceback; set
``RCNN_DEPLOY_DEBUG=1`` (or pass ``--debug`` before the command) to see the traceback too. Anything else that
escapes is an internal error and keeps its traceback.

``UserError`` subclasses ``ValueError`` so code that already catches ``ValueError`` for bad input (a batch
that skips unreadable images, say) keeps working.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

DEBUG_ENV = "RCNN_DEPLOY_DEBUG"


class UserError(ValueError):
    """Bad input the user can fix. ``what``: the problem; ``where``: the file, argument or field it is in;
    ``fix``: what to do about it."""

    def __init__(self, what: str, where: Optional[Union[str, Path]] = None, fix: Optional[str] = None) -> None:
        self.what = what
        self.where = None if where is None else str(where)
        self.fix = fix
        super().__init__(self.message())

    def message(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        if self.fix:
            text += f" ({self.fix})"
        return text

    def __str__(self) -> str:
        return self.message()

    def to_dict(self) -> dict:
        return {"error": self.what, "where": self.where, "fix": self.fix}


def debug_enabled() -> bool:
    """Tracebacks for user errors too (``RCNN_DEPLOY_DEBUG`` set to anything but ''/0/false)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
