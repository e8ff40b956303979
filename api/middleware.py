"""ASGI middleware: a request id and an access log line per request, and a gate that refuses
oversized and unauthenticated requests before anything reads their body.

Plain ASGI rather than BaseHTTPMiddleware, which costs a task and a copy per request.
"""

from __future__ import annotations

import logging
import time
import uuid

import sentry_sdk
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import ratelimit
from api.errors import error_response
from core import logs, metrics
from core.auth import InvalidToken, Principal, is_api_key, verify_token
from core.settings import Settings
from db import api_keys
from db.errors import UNAVAILABLE
from db.pool import connection

access_log = logging.getLogger("oslira.access")


class RequestContextMiddleware:
    """Gives every request an id (or keeps the caller's X-Request-Id), echoes it back, and
    writes one access log line when the response is sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = Headers(scope=scope).get("x-request-id")
        request_id = given if given and len(given) <= 128 else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        # On this request's own scope (Sentry's ASGI integration opens one per request).
        sentry_sdk.set_tag("request_id", request_id)
        status = 500  # what the client gets if the app fails before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-Id"] = request_id
                headers.update(
                    ratelimit.response_headers(scope["state"].get(ratelimit.STATE_KEY, {}))
                )
            await send(message)

        # Log records of this request carry its id (and what routes bind: its account, ids).
        with logs.bound(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self._access(scope, status, started, request_id)

    @staticmethod
    def _access(scope: Scope, status: int, started: float, request_id: str) -> None:
        seconds = time.perf_counter() - started
        # The route's template, not the path: one series per endpoint, not per id.
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        metrics.HTTP_REQUESTS.labels(method=scope["method"], route=route, status=status).inc()
        metrics.HTTP_DURATION.labels(method=scope["method"], route=route).observe(seconds)
        query = scope.get("query_string", b"").decode("latin-1")
        access_log.info(
            "%s %s%s %d %.1fms request_id=%s",
            scope["method"],
            scope["path"],
            f"?{query}" if query else "",
            status,
            seconds * 1000,
            request_id,
        )


# /api paths that take no bearer token: what reads no account's data, and Stripe's
# webhook (signed instead).
PUBLIC_PATHS = frozenset({"/api/credits/pricing", "/api/webhooks/stripe"})


class RequestGateMiddleware:
    """Refuses a request before its body is read when the body is too large (413) or, under
    /api, when it carries no valid bearer token (401).

    A declared Content-Length over the limit is answered at once; a body sent without one
    (chunked) is counted as the app reads it and cut off at the limit. Who called (a user's
    JWT, or an account's API key) is left in the request state for the `Caller` dependency.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.limit = settings.max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = scope.get("state", {}).get("request_id", "")
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if (
            declared is not None
            and declared.isascii()
            and declared.isdigit()
            and int(declared) > self.limit
        ):
            response = error_response(
                request_id,
                413,
                "request_too_large",
                f"The body is larger than {self.limit} bytes.",
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return

        if scope["path"].startswith("/api/") and scope["path"] not in PUBLIC_PATHS:
            try:
                principal = await self._authenticate(scope, _bearer_token(headers))
            except InvalidToken as exc:
                refusal = {"WWW-Authenticate": "Bearer"}
                if "transfer-encoding" in headers or declared not in (None, "0"):
                    refusal["Connection"] = "close"  # rather than drain a body never read
                response = error_response(request_id, 401, "unauthorized", str(exc), refusal)
                await response(scope, receive, send)
                return
            except UNAVAILABLE:
                response = error_response(
                    request_id,
                    503,
                    "service_unavailable",
                    "The database is unavailable; retry shortly.",
                    {"Retry-After": "5"},
                )
                await response(scope, receive, send)
                return
            scope.setdefault("state", {})["principal"] = principal

        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # Raised inside the route's body read; the app's handler answers 413.
                    raise HTTPException(413, f"The body is larger than {self.limit} bytes.")
            return message

        await self.app(scope, receive_within_limit, send)

    async def _authenticate(self, scope: Scope, token: str) -> Principal:
        if not is_api_key(token):
            return Principal(user_id=verify_token(self.settings, token))
        async with connection(scope["app"].state.pool) as conn:
            found = await api_keys.account_of(conn, token)
        if found is None:
            raise InvalidToken("The API key is invalid or revoked.")
        key_id, account_id = found
        return Principal(api_key_id=key_id, account_id=account_id)


def _bearer_token(headers: Headers) -> str:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("A bearer token is required.")
    return token.strip()
