"""Why a run did not complete: stable error codes, the failures activities raise for them,
and the sentence a user reads.

Activities raise `ApplicationError`s whose `type` names the code's failure (the mapping
below) and whose details say which provider and which attempt. The workflow turns them
into a `RunError`: the code, and a message in words a user can act on. Raw exception text
stays in the worker's log.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from temporalio.exceptions import ApplicationError, ApplicationErrorCategory


class ErrorCode(StrEnum):
    profile_not_found = "profile_not_found"
    profile_private = "profile_private"
    insufficient_credits = "insufficient_credits"
    business_profile_not_found = "business_profile_not_found"
    invalid_input = "invalid_input"
    run_cancelled = "run_cancelled"
    # A provider refused the request, or answered something unusable: retrying cannot help.
    scrape_failed = "scrape_failed"
    ai_failed = "ai_failed"
    # A provider kept failing (5xx, 429, timeouts, dropped connections) past its budget.
    provider_unavailable = "provider_unavailable"
    # Our own bug: the worker's log has the traceback.
    internal_error = "internal_error"
    # Its workflow stopped running before the run ended (terminated by an operator, or
    # lost): the hourly sweep failed and refunded it.
    workflow_lost = "workflow_lost"


# ApplicationError.type -> error code. Types not listed map to internal_error.
_TYPE_TO_CODE: dict[str, ErrorCode] = {
    "ProfileNotFound": ErrorCode.profile_not_found,
    "PrivateProfile": ErrorCode.profile_private,
    "InsufficientCredits": ErrorCode.insufficient_credits,
    "BusinessProfileNotFound": ErrorCode.business_profile_not_found,
    "InvalidInput": ErrorCode.invalid_input,
    "RunCancelled": ErrorCode.run_cancelled,
    "ScrapeFailed": ErrorCode.scrape_failed,
    "AIFailed": ErrorCode.ai_failed,
    "ProviderUnavailable": ErrorCode.provider_unavailable,
    "InternalError": ErrorCode.internal_error,
    "WorkflowLost": ErrorCode.workflow_lost,
}
_CODE_TO_TYPE = {code: type_ for type_, code in _TYPE_TO_CODE.items()}
PROVIDER_UNAVAILABLE = _CODE_TO_TYPE[ErrorCode.provider_unavailable]
# A database that cannot be reached: retried by the step's policy, never a run's end.
DATABASE_UNAVAILABLE = "DatabaseUnavailable"


def business_error(code: ErrorCode, message: str, **details: Any) -> ApplicationError:
    """A failure that no retry can fix.

    Benign: an expected outcome, which the SDK logs at DEBUG rather than as a WARNING with a
    traceback; the activity that raises it logs one line of its own (activities.common).
    """
    return ApplicationError(
        message,
        details,
        type=_CODE_TO_TYPE[code],
        non_retryable=True,
        category=ApplicationErrorCategory.BENIGN,
    )


def provider_unavailable(provider: str, message: str, attempt: int) -> ApplicationError:
    """A provider's failure that may pass. The activity does not retry it: the workflow
    counts it against the step's provider budget and tries again after a pause."""
    return business_error(
        ErrorCode.provider_unavailable, message, provider=provider, attempt=attempt
    )


def internal_error(message: str, **details: Any) -> ApplicationError:
    """Our own bug: the run fails (and is refunded) rather than retrying forever."""
    return ApplicationError(
        message, details, type=_CODE_TO_TYPE[ErrorCode.internal_error], non_retryable=True
    )


def code_for_type(error_type: str | None) -> ErrorCode:
    return _TYPE_TO_CODE.get(error_type or "", ErrorCode.internal_error)


def type_for(code: ErrorCode) -> str:
    """The failure type a code is raised as, by activities and by the workflow alike."""
    return _CODE_TO_TYPE[code]


def details_of(error: ApplicationError) -> dict[str, Any]:
    """What an activity said with its failure: the provider, the attempt."""
    first = error.details[0] if error.details else None
    return first if isinstance(first, dict) else {}


def user_message(code: ErrorCode, *, username: str, details: dict[str, Any], raw: str) -> str:
    """The sentence a user reads for a run that ended with `code`."""
    provider = details.get("provider", "The provider")
    attempts = details.get("attempt")
    messages = {
        ErrorCode.profile_not_found: f"@{username} does not exist on Instagram (or was renamed).",
        ErrorCode.profile_private: f"@{username} is private: its posts cannot be analysed.",
        ErrorCode.insufficient_credits: raw,  # already says the balance and the cost
        ErrorCode.business_profile_not_found: "The business profile was deleted before the "
        "analysis could run.",
        ErrorCode.invalid_input: "The run's request could not be found; start it again.",
        ErrorCode.run_cancelled: "Cancelled.",
        ErrorCode.scrape_failed: f"{provider} refused to fetch @{username}; retrying will "
        "not help. Contact support if this keeps happening.",
        ErrorCode.ai_failed: f"{provider} refused the analysis or answered something "
        "unusable; retrying will not help. Contact support if this keeps happening.",
        ErrorCode.provider_unavailable: f"{provider} kept failing"
        + (f" ({attempts} attempts)" if attempts else "")
        + ". Try again in a few minutes.",
        ErrorCode.internal_error: "An internal error stopped the analysis. It has been "
        "logged; try again, or contact support with this run's id.",
        ErrorCode.workflow_lost: "The analysis stopped before it finished and was refunded; "
        "start it again.",
    }
    return messages[code]
