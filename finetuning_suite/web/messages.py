"""Errors as the page shows them: one message, never a traceback.

The package's own errors (`FineTuningError`: ConfigError, DatasetError, ModelLoadError, ...)
already name the field, the value and the fix; they are shown as they are. Anything else is a
bug or an environment problem: the page shows its type and first line and the traceback goes to
the server's log, where a developer looks.
"""
from __future__ import annotations

import logging

from ..errors import FineTuningError

logger = logging.getLogger("finetuning_suite.web")


def error_text(exc: BaseException) -> str:
    if isinstance(exc, FineTuningError):
        return str(exc)
    logger.error("Unexpected error in the web page", exc_info=exc)
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return (f"Unexpected error ({type(exc).__name__}: {first}). The details are in the log of "
            "the `finetune web` process.")


def error_markdown(text: str) -> str:
    """An error message as the page's message box shows it (kept as plain text)."""
    return f"**Error**\n\n```\n{text.strip()}\n```"
