"""Errors to Sentry (DESIGN.md section 9), when `SENTRY_DSN` is set (it may come from Secrets
Manager).

- The API: sentry-sdk's FastAPI integration (enabled by itself when FastAPI is installed)
  reports unhandled errors, each tagged with its request id and, once known, its account.
- The workers: `SentryInterceptor` reports activity failures that need a person (our bugs,
  `internal_error`; a provider refusing our requests, `scrape_failed`/`ai_failed`: a bad key
  or a changed API) and workflows that end failed for such a reason, tagged with the run,
  batch, account and tier. Business outcomes (a profile not found, a cancel, no credits)
  and a provider's passing failures are not errors. Workflow reports are skipped while
  replaying, so a worker restart or a replay test never reports twice.
- Secrets never leave: sentry-sdk's EventScrubber removes the usual names (authorization,
  cookie, token, api_key, ...), recursively, with ours added; values that look like a
  bearer token, a Stripe key or webhook secret, an OpenAI key or a JWT are replaced
  wherever they appear, messages included (credentials in URLs, Apify tokens too). Frames
  go without their variables, and request bodies are never sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib.metadata import version
from typing import Any

from temporalio import activity, workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, FailureError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

with workflow.unsafe.imports_passed_through():  # the workflow interceptor uses it
    import sentry_sdk
    from sentry_sdk.integrations.logging import LoggingIntegration
    from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

from core.errors import ErrorCode, type_for
from core.logs import ids_of
from core.settings import Settings

FILTERED = "[Filtered]"
DENYLIST = [
    *DEFAULT_DENYLIST,
    "stripe-signature",
    "stripe_signature",
    "x-api-key",
    "jwt_secret",
    "openai_api_key",
    "apify_token",
    "stripe_api_key",
    "stripe_webhook_secret",
    "sentry_dsn",
    "dsn",
]
_DENIED = frozenset(name.lower().replace("-", "_") for name in DENYLIST)
# Values that are secrets whatever their key: bearer tokens, Stripe keys and webhook
# secrets, OpenAI keys, our API keys, JWTs.
SECRET_VALUES = re.compile(
    r"(?i)bearer\s+[\w\-.~+/=]+"
    r"|(?<=://)[^:/@\s]+:[^@\s]+(?=@)"  # credentials in a URL (a database URL)
    r"|(?<=[?&]token=)[^&\s'\"]+"  # Apify's token in a query string
    r"|\bapify_api_\w+"
    r"|\b(?:sk|rk|pk)_(?:test|live)_[\w]+"
    r"|\bwhsec_[\w]+"
    r"|\bsk-[\w\-]{8,}"
    r"|\bosk_[\w]+"
    r"|\beyJ[\w\-]+\.[\w\-]+\.[\w\-]+"
)
# Failures that need a person; the others are outcomes the run reports itself.
REPORTED = frozenset(
    type_for(code)
    for code in (ErrorCode.internal_error, ErrorCode.scrape_failed, ErrorCode.ai_failed)
)


def init(settings: Settings, component: str) -> bool:
    """Starts reporting to Sentry when a DSN is configured; whether it did."""
    dsn = settings.secret("sentry_dsn")
    if dsn is None:
        return False
    sentry_sdk.init(
        dsn=dsn.get_secret_value(),
        environment=settings.environment,
        release=f"oslira@{version('oslira')}",
        event_scrubber=EventScrubber(denylist=DENYLIST, recursive=True),
        before_send=_scrub_values,
        traces_sample_rate=0,
        # Frames' variables hold settings, connection parameters and request objects, which
        # no name-based scrubbing can be trusted with: tracebacks go without them.
        include_local_variables=False,
        max_request_body_size="never",  # bodies (Stripe's events among them) stay here
        # Log records become breadcrumbs, never events: what is reported is decided above
        # (an outage logged once per request must not flood Sentry).
        integrations=[LoggingIntegration(event_level=None)],
    )
    sentry_sdk.set_tag("component", component)
    return True


def _scrub_values(event: Any, hint: Any) -> Any:
    return _scrubbed(event)


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return SECRET_VALUES.sub(FILTERED, value)
    if isinstance(value, Mapping):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if len(value) == 2 and isinstance(value[0], str) and _denied(value[0]):
            return [value[0], FILTERED]  # a header pair, as ASGI scopes hold them
        return [_scrubbed(v) for v in value]
    return value


def _denied(name: str) -> bool:
    """A header or variable name on the denylist, also as a frame's repr of bytes."""
    bare = name.removeprefix("b'").removeprefix('b"').strip("'\"").lower()
    return bare.replace("-", "_") in _DENIED


def tag_run(scope: sentry_sdk.Scope, arg: Any) -> None:
    """Tags from a workflow's or activity's input: its run, batch, account (the ids the log
    records carry, core.logs.ids_of) and tier."""
    for name, value in ids_of(arg).items():
        scope.set_tag(name, str(value))
    tier = getattr(arg, "tier", None)
    if tier is not None:
        scope.set_tag("tier", str(tier))


def reported(error: BaseException) -> bool:
    """Whether a failure needs a person: our bug, or a provider refusing our request."""
    if isinstance(error, ApplicationError):
        return error.type in REPORTED
    if isinstance(error, ActivityError | ChildWorkflowError) and error.cause is not None:
        return reported(error.cause)
    return not isinstance(error, FailureError)  # an exception of our own code


class SentryInterceptor(Interceptor):
    """Reports activity and workflow failures to Sentry, tagged with the run."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityReporter(next)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        return _WorkflowReporter


class _ActivityReporter(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        with sentry_sdk.isolation_scope() as scope:
            info = activity.info()
            scope.set_tag("temporal.activity", info.activity_type)
            scope.set_tag("temporal.workflow_id", info.workflow_id)
            scope.set_tag("temporal.attempt", str(info.attempt))
            if input.args:
                tag_run(scope, input.args[0])
            try:
                return await super().execute_activity(input)
            except Exception as exc:
                if reported(exc):
                    # Our bug is the ApplicationError's cause: report the traceback itself.
                    sentry_sdk.capture_exception(exc.__cause__ or exc)
                raise


class _WorkflowReporter(WorkflowInboundInterceptor):
    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        try:
            return await super().execute_workflow(input)
        except Exception as exc:
            # A workflow's own failure (the run ends failed), not a bug failing its task:
            # Temporal retries such a task, and each retry would report again.
            if (
                isinstance(exc, FailureError)
                and not workflow.unsafe.is_replaying()
                and reported(exc)
            ):
                _report_workflow_failure(exc, input)
            raise


def _report_workflow_failure(exc: Exception, input: ExecuteWorkflowInput) -> None:
    """Sends the failure from inside the workflow: Sentry's I/O leaves the sandbox (it is a
    passthrough module, see worker.py) and issues no command, so determinism is not at
    stake. Reporting must never fail the workflow task: any error of its own is logged."""
    try:
        with workflow.unsafe.sandbox_unrestricted(), sentry_sdk.isolation_scope() as scope:
            info = workflow.info()
            scope.set_tag("temporal.workflow", info.workflow_type)
            scope.set_tag("temporal.workflow_id", info.workflow_id)
            if input.args:
                tag_run(scope, input.args[0])
            sentry_sdk.capture_exception(exc)
    except Exception:
        workflow.logger.exception("could not report the workflow's failure to Sentry")
