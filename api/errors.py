"""API errors: one base class with a code and a status, one envelope, one set of handlers.

Every error answers `{"error": {"code", "message", "request_id", ...}}`; validation errors
also name the field at fault.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import sentry_sdk
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from db import credits
from db.errors import UNAVAILABLE

log = logging.getLogger(__name__)


class ApiError(Exception):
    status = 500
    code = "internal_error"
    message = "Something went wrong on our side."

    def __init__(
        self, message: str | None = None, *, code: str | None = None, **extra: Any
    ) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.code = code or self.code
        self.extra = extra


class Unauthorized(ApiError):
    status, code, message = 401, "unauthorized", "A valid bearer token is required."


class Forbidden(ApiError):
    status, code, message = 403, "forbidden", "You are not allowed to do this."


class NotFound(ApiError):
    status, code, message = 404, "not_found", "Not found."


class Conflict(ApiError):
    status, code = 409, "conflict"


class Invalid(ApiError):
    status, code = 422, "validation_error"


class TooManyRequests(ApiError):
    status, code = 429, "rate_limited"


class BadGateway(ApiError):
    status, code = 502, "payment_provider_error"


class Unavailable(ApiError):
    status, code, message = 503, "service_unavailable", "A backing service is unavailable."


class ErrorBody(BaseModel):
    code: str = Field(examples=["insufficient_credits"])
    message: str = Field(examples=["The balance of 0 credits cannot cover 1."])
    request_id: str = Field(examples=["4f1c8a0e6f9b4d7c"])
    field: str | None = Field(default=None, description="The request field at fault")
    run_id: str | None = Field(default=None, description="The run concerned, where there is one")
    status: str | None = Field(default=None, description="The run's status, where relevant")

    model_config = {"extra": "allow"}


class ErrorResponse(BaseModel):
    error: ErrorBody


# What each error status means, and the answer a client most often sees with it.
ERROR_STATUSES: dict[int, tuple[str, str, str]] = {
    400: (
        "The request is not what this endpoint takes (a webhook's signature or body)",
        "invalid_signature",
        "The Stripe-Signature does not match, or is too old.",
    ),
    401: ("Missing, expired or invalid bearer token", "unauthorized", "The token has expired."),
    402: (
        "Not enough credits",
        "insufficient_credits",
        "The balance of 0 credits, less 0 promised to runs not yet started, cannot cover 1 "
        "for a light analysis.",
    ),
    403: ("Not a member of the account", "forbidden", "You are not a member of this account."),
    404: ("Not found (or belongs to another account)", "not_found", "Not found."),
    409: ("Conflict with the resource's current state", "conflict", "Conflict."),
    413: (
        "The body is larger than the limit (MAX_REQUEST_BYTES, 1 MiB by default)",
        "request_too_large",
        "The body is larger than 1048576 bytes.",
    ),
    422: (
        "Invalid input; `field` names the field at fault",
        "validation_error",
        "X-Account-Id: Input should be a valid UUID",
    ),
    429: (
        "Over the plan's rate limit (RateLimit-* headers say how much is left and when it "
        "resets); retry after Retry-After seconds",
        "rate_limited",
        "The free plan allows 600 requests a minute. Retry in 12 s.",
    ),
    502: (
        "The payment provider (Stripe) failed or refused the call; nothing was changed here",
        "payment_provider_error",
        "Stripe did not answer; retry shortly.",
    ),
    503: (
        "A backing service (database, Temporal) is unavailable; retry shortly",
        "service_unavailable",
        "The database is unavailable; retry shortly.",
    ),
}


def error_example(
    http_status: int, code: str | None = None, message: str | None = None, /, **extra: Any
) -> dict[str, Any]:
    """An error body as the API answers it, for the OpenAPI document."""
    _, default_code, default_message = ERROR_STATUSES[http_status]
    body = {
        "code": code or default_code,
        "message": message or default_message,
        "request_id": "4f1c8a0e6f9b4d7c9a1e2b3c4d5e6f70",
    }
    if http_status == 422 and "field" not in extra:
        extra["field"] = "X-Account-Id"
    return {"error": body | extra}


def error_entry(status: int, example: dict[str, Any] | None = None) -> dict[str, Any]:
    """An OpenAPI response entry for an error status, with an example body."""
    return {
        "model": ErrorResponse,
        "description": ERROR_STATUSES[status][0],
        "content": {"application/json": {"example": example or error_example(status)}},
    }


def responses(*codes: int, **examples: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer; `examples` gives a route's
    own example per status (`e404=error_example(404, "run_not_found", ...)`)."""
    return {c: error_entry(c, examples.get(f"e{c}")) for c in codes}


def error_response(
    request_id: str,
    http_status: int,
    code: str,
    message: str,
    /,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """The error envelope; middleware answers with it too, before any route runs."""
    body = {"code": code, "message": message, "request_id": request_id}
    body.update(jsonable_encoder(extra))
    return JSONResponse({"error": body}, status_code=http_status, headers=headers)


def _envelope(
    request: Request, http_status: int, code: str, message: str, /, **extra: Any
) -> JSONResponse:
    return error_response(request_id(request), http_status, code, message, **extra)


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", ""))


# Codes for the errors the framework raises itself (routing, body reading).
_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


def _error_field(error: Mapping[str, Any]) -> str:
    if error.get("type") == "json_invalid":  # its loc holds the offset of the fault
        return "body"
    return _field(error.get("loc", ()))


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    """`("body", "usernames", 3)` -> `usernames.3`; a parameter is named alone
    (`("query", "status", 0)` -> `status`), a header as it is spelt (`X-Account-Id`)."""
    if not loc:
        return ""
    where, *path = loc
    if where == "header" and path:
        return "-".join(part.capitalize() for part in str(path[0]).split("-"))  # X-Account-Id
    if where in ("query", "path", "cookie"):
        return str(path[0]) if path else ""
    parts = path if where == "body" else loc
    return ".".join(str(p) for p in parts)


def _allowed_methods(request: Request) -> list[str]:
    """Every method the API documents at this path (the router names only those of the
    first route it matched, and a path may have several routes). A literal segment wins
    over a parameter, as in routing: `/api/leads/analyze` is not a lead's id (lead paths
    take UUIDs only)."""
    matches: dict[int, set[str]] = {}
    for template, operations in request.app.openapi()["paths"].items():
        pattern, _, _ = compile_path(template)
        if pattern.match(request.url.path):
            found = matches.setdefault(template.count("{"), set())
            found |= {method.upper() for method in operations}
    return sorted(matches[min(matches)]) if matches else []


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        response = _envelope(request, exc.status, exc.code, exc.message, **exc.extra)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        if "retry_after" in exc.extra:
            response.headers["Retry-After"] = str(exc.extra["retry_after"])
        return response

    @app.exception_handler(credits.InsufficientCredits)
    async def insufficient_credits(
        request: Request, exc: credits.InsufficientCredits
    ) -> JSONResponse:
        return _envelope(
            request,
            402,
            "insufficient_credits",
            str(exc),
            balance=exc.balance,
            promised=exc.promised,
            credits_cost=exc.cost,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        field = _error_field(first)
        message = first.get("msg", "Invalid request")
        return JSONResponse(
            {
                "error": {
                    "code": "validation_error",
                    "message": f"{field}: {message}" if field else message,
                    "request_id": request_id(request),
                    "field": field or None,
                    "errors": [{"field": _error_field(e), "message": e.get("msg")} for e in errors],
                }
            },
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # The only 400 the framework raises: a body it cannot decode (not UTF-8, say).
            return _envelope(
                request,
                422,
                "validation_error",
                "body: the body is not valid JSON",
                field="body",
                errors=[{"field": "body", "message": str(exc.detail)}],
            )
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        response = _envelope(request, exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response

    async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.error("database unavailable: %r", exc, extra={"request_id": request_id(request)})
        response = _envelope(
            request, 503, Unavailable.code, "The database is unavailable; retry shortly."
        )
        response.headers["Retry-After"] = "5"
        return response

    # Only errors that mean the database is unavailable: never an OSError or a timeout
    # from elsewhere (db.pool.connection turns a failed connect into DatabaseUnavailable).
    for error in UNAVAILABLE:
        app.add_exception_handler(error, database_unavailable)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"request_id": request_id(request)})
        # Reported here: this handler answers, so the error never reaches Sentry's own hook.
        sentry_sdk.capture_exception(exc)
        return _envelope(request, 500, "internal_error", ApiError.message)
