"""Stable error codes for business failures, shared by activities and the API.

Activities raise them as non-retryable `ApplicationError`s whose `type` is the class name
below; the workflow stores the code on the run and the API answers with it.
"""

from __future__ import annotations

from enum import StrEnum

from temporalio.exceptions import ApplicationError, ApplicationErrorCategory


class ErrorCode(StrEnum):
    profile_not_found = "profile_not_found"
    profile_private = "profile_private"
    insufficient_credits = "insufficient_credits"
    business_profile_not_found = "business_profile_not_found"
    invalid_input = "invalid_input"
    run_cancelled = "run_cancelled"
    scrape_failed = "scrape_failed"
    ai_failed = "ai_failed"
    internal_error = "internal_error"


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
}
_CODE_TO_TYPE = {code: type_ for type_, code in _TYPE_TO_CODE.items()}


def business_error(code: ErrorCode, message: str) -> ApplicationError:
    """A failure that no retry can fix.

    Benign: an expected outcome, which the SDK logs at DEBUG rather than as a WARNING with a
    traceback; the activity that raises it logs one line of its own (activities.common).
    """
    return ApplicationError(
        message,
        type=_CODE_TO_TYPE[code],
        non_retryable=True,
        category=ApplicationErrorCategory.BENIGN,
    )


def provider_failure(code: ErrorCode, message: str) -> ApplicationError:
    """A provider's failure that may pass (5xx, 429, timeout): the step's policy retries it."""
    return ApplicationError(
        message, type=_CODE_TO_TYPE[code], category=ApplicationErrorCategory.BENIGN
    )


def code_for_type(error_type: str | None) -> ErrorCode:
    return _TYPE_TO_CODE.get(error_type or "", ErrorCode.internal_error)
