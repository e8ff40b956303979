"""Component health: the database and the Temporal server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import timedelta
from importlib.metadata import version
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.schemas import ComponentHealth, HealthResponse, Liveness

router = APIRouter(tags=["health"])

_TIMEOUT = 2.0


async def _timed(check: Awaitable[object]) -> ComponentHealth:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check, _TIMEOUT)
    except Exception as exc:
        return ComponentHealth(status="down", detail=type(exc).__name__)
    return ComponentHealth(status="ok", latency_ms=round((time.perf_counter() - started) * 1000, 2))


_DOWN: dict[int | str, dict[str, Any]] = {
    503: {"model": HealthResponse, "description": "A component is down"}
}


@router.get(
    "/health",
    response_model=HealthResponse,
    responses=_DOWN,
    summary="Database and Temporal status, and the version",
)
@router.head(
    "/health",
    operation_id="health_head",
    response_model=HealthResponse,
    responses=_DOWN,
    summary="The same check, without a body (load balancers)",
)
async def health(request: Request) -> JSONResponse:
    return await _report(request)


@router.get(
    "/health/ready",
    response_model=HealthResponse,
    responses=_DOWN,
    summary="Ready to serve: the database and Temporal answer",
)
@router.head(
    "/health/ready",
    operation_id="ready_head",
    response_model=HealthResponse,
    responses=_DOWN,
    summary="Readiness without a body",
)
async def ready(request: Request) -> JSONResponse:
    return await _report(request)


@router.get("/health/live", response_model=Liveness, summary="The process is up (checks nothing)")
@router.head(
    "/health/live",
    operation_id="live_head",
    response_model=Liveness,
    summary="Liveness without a body",
)
async def live() -> Liveness:
    return Liveness(status="ok", version=version("oslira"))


async def _report(request: Request) -> JSONResponse:
    pool = request.app.state.pool
    temporal = request.app.state.temporal
    database, workflow_engine = await asyncio.gather(
        _timed(pool.fetchval("SELECT 1")),
        _timed(temporal.service_client.check_health(timeout=timedelta(seconds=_TIMEOUT))),
    )
    components = {"database": database, "temporal": workflow_engine}
    healthy = all(c.status == "ok" for c in components.values())
    body = HealthResponse(
        status="ok" if healthy else "degraded", version=version("oslira"), components=components
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if healthy else 503)
