"""Logging set-up for every `oslira` process: one line per event, tracebacks only for bugs."""

from __future__ import annotations

import asyncio
import logging
import logging.config
from typing import Any

from temporalio.exceptions import ApplicationError, ApplicationErrorCategory, CancelledError

NOISY = ("pgserver", "httpx", "httpx2")


class ExpectedOutcomes(logging.Filter):
    """Keeps expected outcomes to one line without a traceback.

    The Temporal SDK logs an activity that ends cancelled because its workflow stopped
    waiting for it (a cancelled run) as a failure with a traceback; a cancellation is an
    expected outcome, and the activity's own line already says what happened.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, asyncio.CancelledError | CancelledError) or (
            isinstance(error, ApplicationError)
            and error.category is ApplicationErrorCategory.BENIGN
        ):
            record.msg = f"{record.getMessage()}: {type(error).__name__}: {error}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def dict_config(verbose: bool = False) -> dict[str, Any]:
    """The logging set-up as a dictConfig, which uvicorn also applies in each API process."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"expected": {"()": "core.logs.ExpectedOutcomes"}},
        "formatters": {"line": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "line",
                "filters": ["expected"],
            }
        },
        "root": {"level": "DEBUG" if verbose else "INFO", "handlers": ["console"]},
        "loggers": {name: {"level": "WARNING"} for name in NOISY}
        | {name: {"level": "WARNING"} for name in ("uvicorn", "uvicorn.error")},
    }


def configure(verbose: bool = False) -> None:
    logging.config.dictConfig(dict_config(verbose))
