"""Logging set-up for every `oslira` process: one line per event, tracebacks only for bugs.

`LOG_FORMAT=json` (the default) writes each event as one JSON object (python-json-logger)
with the ids of what it is about, wherever known: `request_id` and `account_id` (the API's
requests), `run_id`, `batch_id` (a run's or batch's workflow and activities), `workflow_id`,
`workflow_type`, `activity_id`, `activity_type` and `attempt` (Temporal's). `LOG_FORMAT=text`
writes lines for people (`oslira dev`, that is `make run`, uses it unless told otherwise).

The ids come from a context variable (`bind`, `bound`): the API's middleware and tenant
dependency bind theirs for the request, `LogContext` (a Temporal interceptor) binds an
activity's run, batch and account from its input; and from the extras the Temporal SDK puts
on its activity and workflow loggers' records.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal

from temporalio.exceptions import ApplicationError, ApplicationErrorCategory, CancelledError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

LogFormat = Literal["json", "text"]
IDS = ("request_id", "account_id", "run_id", "batch_id")
_CONTEXT: ContextVar[dict[str, str]] = ContextVar("oslira_log_ids", default={})  # noqa: B039
# Our workflow ids name their run or batch (core.temporal, workflows.bulk).
_WORKFLOW_ID = re.compile(r"^(analysis|bulk)-([0-9a-f-]{36})$")


def bind(**ids: object) -> None:
    """Adds ids to every record logged from here on in this task (a request, an activity)."""
    _CONTEXT.set(_CONTEXT.get() | {k: str(v) for k, v in ids.items() if v is not None})


@contextmanager
def bound(**ids: object) -> Iterator[None]:
    token = _CONTEXT.set(_CONTEXT.get() | {k: str(v) for k, v in ids.items() if v is not None})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def ids_of(arg: Any) -> dict[str, object]:
    """The run, batch and account a workflow's or activity's input is about."""
    found = {name: getattr(arg, name, None) for name in ("run_id", "batch_id", "account_id")}
    turn = getattr(arg, "turn", None)
    if found["account_id"] is None and turn is not None:
        found["account_id"] = turn.account_id
    return {k: v for k, v in found.items() if v is not None}


class ContextIds(logging.Filter):
    """Puts the bound ids, and Temporal's, on each record as attributes."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _CONTEXT.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        activity = getattr(record, "temporal_activity", None)
        workflow = getattr(record, "temporal_workflow", None)
        if isinstance(activity, dict):
            for name in ("activity_id", "activity_type", "attempt", "workflow_id"):
                if name in activity:
                    setattr(record, name, activity[name])
            record.workflow_type = activity.get("workflow_type")
        if isinstance(workflow, dict):
            record.workflow_id = workflow.get("workflow_id")
            record.workflow_type = workflow.get("workflow_type")
        match = _WORKFLOW_ID.match(str(getattr(record, "workflow_id", "")))
        if match:
            name = "run_id" if match.group(1) == "analysis" else "batch_id"
            if not hasattr(record, name):
                setattr(record, name, match.group(2))
        return True


class LogContext(Interceptor):
    """Binds each activity's run, batch and account for the records it logs."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityIds(next)


class _ActivityIds(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        with bound(**(ids_of(input.args[0]) if input.args else {})):
            return await super().execute_activity(input)


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


def dict_config(verbose: bool = False, log_format: LogFormat = "json") -> dict[str, Any]:
    """The logging set-up as a dictConfig, which uvicorn also applies in each API process."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "expected": {"()": "core.logs.ExpectedOutcomes"},
            "ids": {"()": "core.logs.ContextIds"},
        },
        "formatters": {
            "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
                "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
                # Flattened by ContextIds; the rest of Temporal's dicts adds nothing.
                "reserved_attrs": [
                    *_STANDARD_ATTRIBUTES,
                    "temporal_activity",
                    "temporal_workflow",
                    "temporal_log",  # a forwarded core line: its message says it all
                ],
                "timestamp": False,
            },
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": log_format,
                "filters": ["expected", "ids"],
            }
        },
        "root": {"level": "DEBUG" if verbose else "INFO", "handlers": ["console"]},
        "loggers": {name: {"level": "WARNING"} for name in NOISY}
        | {name: {"level": "WARNING"} for name in ("uvicorn", "uvicorn.error")},
    }


def configure(verbose: bool = False, log_format: LogFormat = "json") -> None:
    logging.config.dictConfig(dict_config(verbose, log_format))


# What every LogRecord has: not extras.
_STANDARD_ATTRIBUTES = sorted(
    set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
)
