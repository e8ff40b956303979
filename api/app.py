"""The FastAPI application: one pool and one Temporal client per process, made in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

import sentry_sdk
from fastapi import Depends, FastAPI, Request
from fastapi_offline import FastAPIOffline

from api import errors, openapi
from api.deps import TemporalHealth
from api.events import ProgressHub
from api.middleware import RequestContextMiddleware, RequestGateMiddleware
from api.routes import (
    analysis,
    analytics,
    api_keys,
    billing,
    bulk,
    business_profiles,
    cache,
    credits,
    health,
    leads,
    me,
    webhooks,
)
from core import logs, sentry, temporal
from core.settings import Settings, load_settings
from db.pool import create_pool
from providers.cache import profile_cache

log = logging.getLogger(__name__)

DESCRIPTION = """
Qualifies Instagram accounts as sales leads. Start an analysis with
`POST /api/leads/analyze`, follow it with `/api/analysis/{run_id}/progress`, read it with
`/api/analysis/{run_id}/result`, find past runs with `GET /api/analysis`.

Authenticate with `Authorization: Bearer <JWT>` (HS256, audience `authenticated`, `sub` = user
id). Users in several accounts say which with `X-Account-Id`. Errors answer
`{"error": {"code", "message", "request_id"}}`, plus `field` for invalid input. Bodies larger
than the configured limit (1 MiB by default) answer 413.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API; refuses to build without a JWT secret, a database or a Temporal address
    (ConfigurationError), so a misconfigured process never starts serving."""
    settings = settings or load_settings()
    settings.require_jwt_secret()
    settings.require_temporal_address()
    sentry.init(settings, "api")
    dsn = settings.api_dsn

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.pool = await create_pool(
            dsn,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            connect_timeout=settings.db_connect_timeout_seconds,
        )
        # Lazy: the API starts, and answers health and progress, while Temporal is down.
        app.state.temporal = await temporal.connect(
            settings, lazy=True, patience=settings.temporal_unreachable_after_seconds
        )
        app.state.temporal_health = TemporalHealth()
        app.state.profile_cache = profile_cache(settings, app.state.pool)
        app.state.progress_hub = ProgressHub(dsn)
        await app.state.progress_hub.start()
        try:
            yield
        finally:
            await app.state.progress_hub.close()
            await app.state.pool.close()

    # Swagger UI and ReDoc served from the installed package, not a CDN: /docs works offline.
    app = FastAPIOffline(
        title="Oslira analysis API",
        version=version("oslira"),
        description=DESCRIPTION,
        lifespan=lifespan,
        # Operation ids are the route functions' names: stable, readable in generated clients.
        generate_unique_id_function=lambda route: route.name,
        dependencies=[Depends(_tag_ids)],
    )
    errors.install(app)
    openapi.install(app, settings)

    # The last added runs first: the request id exists before the gate answers.
    app.add_middleware(RequestGateMiddleware, settings=settings)
    app.add_middleware(RequestContextMiddleware)
    for module in (
        me,
        analysis,
        analytics,
        bulk,
        leads,
        cache,
        business_profiles,
        credits,
        billing,
        api_keys,
        webhooks,
        health,
    ):
        app.include_router(module.router)
    app.include_router(cache.statistics_router)
    return app


async def _tag_ids(request: Request) -> None:
    """Tags the request's Sentry scope and log records with the ids in its path (async: in
    the request's own task, where the log context lives)."""
    for name in ("run_id", "batch_id", "lead_id"):
        if name in request.path_params:
            sentry_sdk.set_tag(name, str(request.path_params[name]))
            logs.bind(**{name: request.path_params[name]})
