"""Prometheus metrics (DESIGN.md section 9), with prometheus_client.

The API serves `/metrics`. With several API processes (`API_PROCESSES`), `oslira api` points
`PROMETHEUS_MULTIPROC_DIR` at a fresh folder before the processes start: each process writes
its samples there and `/metrics`, whichever process answers, reads them all (the client's
multiprocess mode), so counts are right however requests were spread.

Each worker serves `/metrics` on `WORKER_METRICS_PORT` (`oslira dev` gives each worker its
own): our business metrics, followed by the Temporal SDK's own (its runtime's Prometheus
exporter, on a private port, re-served here so one scrape gets both).

Counters are incremented where the database confirms what happened (a new charge, a new
refund, a run's end), so a retried activity does not count twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

log = logging.getLogger(__name__)

# --- the API --------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "oslira_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_DURATION = Histogram(
    "oslira_http_request_duration_seconds",
    "Time to answer an HTTP request (an event stream: until it ends)",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ANALYSES_STARTED = Counter(
    "oslira_analyses_started_total", "Analyses accepted (single runs and batch items)", ["tier"]
)

# --- the workers ----------------------------------------------------------------------

ANALYSES_FINISHED = Counter(
    "oslira_analyses_finished_total", "Analyses that ended, by tier and status", ["tier", "status"]
)
STEP_DURATION = Histogram(
    "oslira_step_duration_seconds",
    "Time a step of the analysis took",
    ["step"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
CREDITS_CHARGED = Counter("oslira_credits_charged_total", "Credits charged to runs and batches")
CREDITS_REFUNDED = Counter("oslira_credits_refunded_total", "Credits given back")
PROVIDER_COST = Counter(
    "oslira_provider_cost_usd_total", "What providers cost, in USD", ["provider"]
)
CACHE_LOOKUPS = Counter(
    "oslira_cache_lookups_total", "Profile cache lookups, by result (hit or miss)", ["result"]
)
PROVIDER_SLOTS_IN_USE = Gauge(
    "oslira_provider_slots_in_use", "Provider calls in flight across the workers", ["provider"]
)
PROVIDER_WAITING = Gauge(
    "oslira_provider_waiting", "Provider calls waiting for a slot", ["provider"]
)
BATCH_BACKLOG = Gauge("oslira_batch_backlog", "Batch items not yet started, every batch")


def exposition(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """This process's metrics, or every API process's in multiprocess mode."""
    if registry is None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    if registry is None:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST


# --- what the workers serve -----------------------------------------------------------


class StepTimings(Interceptor):
    """Observes each step's duration, from the `done` every step activity returns."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _TimedSteps(next)


class _TimedSteps(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        result = await super().execute_activity(input)
        done = getattr(result, "done", None)
        if done is not None:
            seconds = (done.finished_at - done.started_at).total_seconds()
            STEP_DURATION.labels(step=activity.info().activity_type).observe(max(seconds, 0.0))
        return result


async def refresh_gauges(pool: asyncpg.Pool) -> None:
    """The gauges read from the database at each scrape: slots in use and calls waiting
    (every worker's, from the provider cap's tables), and the batches' unstarted items."""
    async with pool.acquire(timeout=2) as conn:
        in_use = await conn.fetch(
            """SELECT provider, count(*) FILTER (WHERE expires_at > now()) AS n
               FROM provider_slots GROUP BY provider"""
        )
        waiting = await conn.fetch(
            """SELECT provider, count(*) AS n FROM provider_waiters
               WHERE expires_at > now() GROUP BY provider"""
        )
        backlog = await conn.fetchval(
            "SELECT coalesce(sum(items), 0) FROM batch_counts WHERE status = 'pending'"
        )
    for row in in_use:
        PROVIDER_SLOTS_IN_USE.labels(provider=row["provider"]).set(row["n"])
    waiting_by = {row["provider"]: row["n"] for row in waiting}
    for provider in {row["provider"] for row in in_use} | set(waiting_by):
        PROVIDER_WAITING.labels(provider=provider).set(waiting_by.get(provider, 0))
    BATCH_BACKLOG.set(int(backlog))


async def serve_worker_metrics(
    pool: asyncpg.Pool, port: int, sdk_metrics_url: str | None, stop: asyncio.Event
) -> None:
    """`/metrics` of a worker process on `port` until `stop`: ours, then the SDK's."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def scrape(request: Request) -> Response:
        try:
            await refresh_gauges(pool)
        except Exception as exc:  # the counters are still worth serving
            log.warning("metrics gauges not refreshed: %r", exc)
        body, content_type = exposition()
        if sdk_metrics_url:
            try:
                async with httpx.AsyncClient(timeout=2) as http:
                    body += (await http.get(sdk_metrics_url)).content
            except httpx.HTTPError as exc:
                log.warning("Temporal SDK metrics not read: %r", exc)
        return Response(body, media_type=content_type)

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # the worker's own handlers stop it, and this server with it

    server = Server(
        uvicorn.Config(
            Starlette(routes=[Route("/metrics", scrape)]),
            host="0.0.0.0",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
    )
    serving = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    await serving
