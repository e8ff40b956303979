"""The FastAPI application: one pool and one Temporal client per process, made in the lifespan."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors
from api.routes import analysis, business_profiles, credits, health
from core import temporal
from core.settings import Settings, load_settings
from db.pool import create_pool

log = logging.getLogger(__name__)

DESCRIPTION = """
Qualifies Instagram accounts as sales leads. Start an analysis with
`POST /api/leads/analyze`, follow it with `/api/analysis/{run_id}/progress`, read it with
`/api/analysis/{run_id}/result`.

Authenticate with `Authorization: Bearer <JWT>` (HS256, audience `authenticated`, `sub` = user
id). Users in several accounts say which with `X-Account-Id`. Errors answer
`{"error": {"code", "message", "request_id"}}`, plus `field` for invalid input.
"""


class RequestIdMiddleware:
    """Gives every request an id (or keeps the caller's X-Request-Id) and echoes it back.

    Plain ASGI rather than BaseHTTPMiddleware, which costs a task and a copy per request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id")
        request_id = given if given and len(given) <= 128 else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-Id"] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.pool = await create_pool(
            settings.api_dsn, min_size=settings.db_pool_min, max_size=settings.db_pool_max
        )
        # Lazy: the API starts, and answers health and progress, while Temporal is down.
        app.state.temporal = await temporal.connect(settings, lazy=True)
        app.state.query_breaker = analysis.QueryBreaker()
        try:
            yield
        finally:
            await app.state.pool.close()

    app = FastAPI(
        title="Oslira analysis API",
        version=version("oslira"),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    errors.install(app)

    app.add_middleware(RequestIdMiddleware)
    for module in (analysis, business_profiles, credits, health):
        app.include_router(module.router)
    return app
