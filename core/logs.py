"""Logging set-up for every `oslira` process: one line per event, tracebacks only for bugs."""

from __future__ import annotations

import asyncio
import logging

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


def configure(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(ExpectedOutcomes())
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
