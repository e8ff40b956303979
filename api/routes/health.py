"""Health: `/health/live` (the process answers), `/health/ready` (it can serve: the database
and Temporal answer) and `/health` (every component).

Each check has its own deadline and they run at once, so every answer comes within a second
whatever is down. The database and Temporal are critical: without either the API cannot
serve (`unhealthy`, 503). The others make it `degraded` (200): runs are accepted but wait
(no worker polls a task queue), a job will not run (a schedule is missing), AI calls fail or
fall back (a circuit is open), or every run scrapes (the profile cache cannot be read).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from importlib.metadata import version
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from api.schemas import ComponentHealth, HealthResponse, Liveness
from core import metrics, schedules
from core.settings import Settings
from db import circuits
from db.pool import connection

router = APIRouter(tags=["health"])

CHECK_SECONDS = 0.7  # each check's deadline: the answer comes within a second
CRITICAL = ("database", "temporal")
# A worker long-polls a task queue for up to a minute between polls; one not seen for two
# has stopped.
POLLER_SILENCE = timedelta(minutes=2)


class Degraded(Exception):
    """The component answers, but not as it should (the message says how)."""


# A check that overran is left to finish in the background, never awaited by a probe; while
# it runs, probes of that component answer `down` at once instead of piling up more
# (connections held, threads blocked in boto3).
_RUNNING: dict[str, asyncio.Task[str | None]] = {}


async def _timed(name: str, check: Callable[[], Awaitable[str | None]]) -> ComponentHealth:
    started = time.perf_counter()
    status: Literal["ok", "degraded", "down"]
    detail: str | None
    if name in _RUNNING:
        return ComponentHealth(status="down", latency_ms=0.0, detail="no answer yet")
    task = asyncio.ensure_future(check())
    done, _ = await asyncio.wait({task}, timeout=CHECK_SECONDS)
    if not done:
        task.cancel()
        _RUNNING[name] = task
        task.add_done_callback(lambda _: _RUNNING.pop(name, None))
        status, detail = "down", f"no answer within {CHECK_SECONDS} s"
    elif (error := task.exception()) is None:
        status, detail = "ok", task.result()
    elif isinstance(error, Degraded):
        status, detail = "degraded", str(error)
    else:
        # The kind of failure, not its text: this endpoint answers anyone, and messages
        # name hosts and addresses.
        status, detail = "down", type(error).__name__
    return ComponentHealth(
        status=status, latency_ms=round((time.perf_counter() - started) * 1000, 2), detail=detail
    )


async def _database(request: Request) -> str | None:
    async with connection(request.app.state.pool, timeout=CHECK_SECONDS) as conn:
        await conn.fetchval("SELECT 1")
    return None


async def _temporal(request: Request) -> str | None:
    client: Client = request.app.state.temporal
    await client.service_client.check_health(timeout=timedelta(seconds=CHECK_SECONDS))
    return None


async def _workers(request: Request) -> str | None:
    """Each task queue this deployment uses has workflow and activity pollers."""
    settings: Settings = request.app.state.settings
    client: Client = request.app.state.temporal
    workflow, activity = (
        TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
    )
    # A separate scrape queue has activity workers only.
    pairs = [
        (settings.task_queue, "workflow", workflow),
        (settings.task_queue, "activity", activity),
    ]
    if settings.scrape_queue != settings.task_queue:
        pairs.append((settings.scrape_queue, "activity", activity))
    queues = dict.fromkeys(queue for queue, _, _ in pairs)

    async def pollers(queue: str, kind: TaskQueueType.ValueType) -> int:
        answer = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=queue),
                task_queue_type=kind,
            ),
            timeout=timedelta(seconds=CHECK_SECONDS),
        )
        since = datetime.now(UTC) - POLLER_SILENCE
        return sum(1 for p in answer.pollers if p.last_access_time.ToDatetime(UTC) > since)

    counts = await asyncio.gather(*(pollers(queue, kind) for queue, _, kind in pairs))
    missing = [
        f"{queue} ({name})" for (queue, name, _), n in zip(pairs, counts, strict=True) if not n
    ]
    if missing:
        raise Degraded("no worker polls " + ", ".join(missing))
    return f"{sum(counts)} pollers on {', '.join(queues)}"


async def _schedules(request: Request) -> str | None:
    settings: Settings = request.app.state.settings
    client: Client = request.app.state.temporal

    async def state(name: str) -> str:
        try:
            described = await schedules.handle(client, settings, name).describe(
                rpc_timeout=timedelta(seconds=CHECK_SECONDS)
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return "missing"
            raise
        return "paused" if described.schedule.state.paused else "ok"

    names = [job.name for job in schedules.JOBS]
    states = dict(zip(names, await asyncio.gather(*(state(n) for n in names)), strict=True))
    missing = [name for name, s in states.items() if s == "missing"]
    if missing:
        raise Degraded("missing: " + ", ".join(missing) + " (oslira migrate creates them)")
    paused = [name for name, s in states.items() if s == "paused"]
    return f"paused by an operator: {', '.join(paused)}" if paused else None


async def _breakers(request: Request) -> str | None:
    settings: Settings = request.app.state.settings
    async with connection(request.app.state.pool, timeout=CHECK_SECONDS) as conn:
        opened = await circuits.open_now(conn, settings.ai_breaker_pause_seconds)
    if opened:
        names = sorted({row["circuit"] for row in opened})
        raise Degraded(
            f"open: {', '.join(names)} (in {len({r['worker'] for r in opened})} workers)"
        )
    return None


async def _cache(request: Request) -> str | None:
    settings: Settings = request.app.state.settings
    await request.app.state.profile_cache.check()
    return settings.profile_cache


Check = Callable[[Request], Awaitable[str | None]]


async def _report(request: Request, checks: dict[str, Check]) -> JSONResponse:
    results = await asyncio.gather(
        *(_timed(name, partial(check, request)) for name, check in checks.items())
    )
    components = dict(zip(checks, results, strict=True))
    status: Literal["healthy", "degraded", "unhealthy"]
    if any(components[name].status != "ok" for name in CRITICAL if name in components):
        status, code = "unhealthy", 503
    elif any(c.status != "ok" for c in components.values()):
        status, code = "degraded", 200
    else:
        status, code = "healthy", 200
    body = HealthResponse(status=status, version=version("oslira"), components=components)
    return JSONResponse(body.model_dump(mode="json"), status_code=code)


READY: dict[str, Check] = {"database": _database, "temporal": _temporal}
EVERYTHING: dict[str, Check] = READY | {
    "workers": _workers,
    "schedules": _schedules,
    "ai_circuits": _breakers,
    "profile_cache": _cache,
}

_UNHEALTHY: dict[int | str, dict[str, Any]] = {
    503: {"model": HealthResponse, "description": "Unhealthy: the database or Temporal is down"}
}
_EVERY = (
    "healthy: every component ok; degraded (200): the database and Temporal answer but another "
    "component does not (no worker polls a task queue, a schedule is missing, an AI circuit is "
    "open, the profile cache cannot be read); unhealthy (503): the database or Temporal is down"
)


@router.get(
    "/health",
    response_model=HealthResponse,
    responses=_UNHEALTHY,
    summary="Every component's status, and the version",
    description=_EVERY,
)
@router.head(
    "/health",
    operation_id="health_head",
    response_model=HealthResponse,
    responses=_UNHEALTHY,
    summary="The same check, without a body (load balancers)",
)
async def health(request: Request) -> JSONResponse:
    return await _report(request, EVERYTHING)


@router.get(
    "/health/ready",
    response_model=HealthResponse,
    responses=_UNHEALTHY,
    summary="Ready to serve: the database and Temporal answer",
)
@router.head(
    "/health/ready",
    operation_id="ready_head",
    response_model=HealthResponse,
    responses=_UNHEALTHY,
    summary="Readiness without a body",
)
async def ready(request: Request) -> JSONResponse:
    return await _report(request, READY)


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics: every API process's, whichever answers",
    responses={
        200: {
            "description": "The Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def prometheus_metrics() -> Response:
    """Requests by route and status with latency histograms, and analyses started by tier.
    With several API processes the samples of all of them (prometheus_client's multiprocess
    mode). Like /health, it needs no token: expose it to your scraper's network only."""
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)


@router.get("/health/live", response_model=Liveness, summary="The process is up (checks nothing)")
@router.head(
    "/health/live",
    operation_id="live_head",
    response_model=Liveness,
    summary="Liveness without a body",
)
async def live() -> Liveness:
    return Liveness(status="ok", version=version("oslira"))
