"""The worker process: builds the activities' dependencies and polls Temporal.

Run it with `oslira worker`. More throughput means more of these processes, on any machine
that reaches the database and the Temporal server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import openai
from temporalio.client import Client
from temporalio.worker import Interceptor, UnsandboxedWorkflowRunner, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.ai import AIActivities
from activities.batches import BatchActivities
from activities.billing import BillingActivities
from activities.cache import CacheActivities
from activities.compensation import CompensationActivities
from activities.credits import CreditActivities
from activities.maintenance import MaintenanceActivities
from activities.results import ResultActivities
from activities.scrape import ScrapeActivities
from activities.slots import ProviderSlots
from cli.stack import free_port
from core import metrics, sentry, temporal
from core.logs import LogContext
from core.rules import RulesAnalyzer
from core.sentry import SentryInterceptor
from core.settings import Settings
from db.circuits import Reporter
from db.pool import create_pool
from providers.ai import OPENAI, OpenAIAnalyzer
from providers.apify import APIFY, ApifyScraper
from providers.breaker import BreakingAnalyzer
from providers.cache import profile_cache as make_profile_cache
from workflows.analysis import AnalysisWorkflow
from workflows.billing import StripeEventWorkflow
from workflows.bulk import BulkAnalysisWorkflow
from workflows.maintenance import (
    CleanupWorkflow,
    LedgerCheckWorkflow,
    RenewalWorkflow,
    StripeEventsWorkflow,
    StuckRunsWorkflow,
)

log = logging.getLogger(__name__)


# Every workflow a worker runs (tests/test_replay.py replays their histories against these).
WORKFLOWS = [
    AnalysisWorkflow,
    BulkAnalysisWorkflow,
    StuckRunsWorkflow,
    LedgerCheckWorkflow,
    CleanupWorkflow,
    RenewalWorkflow,
    StripeEventsWorkflow,
    StripeEventWorkflow,
]


def current(settings: Settings, field: str) -> str:
    """A provider key's current value (Secrets Manager's, re-read after its TTL, or the
    environment's); checked present when the worker starts."""
    value = settings.secret(field)
    assert value is not None
    return value.get_secret_value()


@asynccontextmanager
async def build_workers(
    settings: Settings, client: Client, sdk_metrics_url: str | None = None
) -> AsyncIterator[list[Worker]]:
    """Workers for the analysis queue (and the scrape queue when it is a separate one), and
    their /metrics when WORKER_METRICS_PORT is set."""
    async with AsyncExitStack() as stack:
        pool = await create_pool(
            settings.worker_dsn, min_size=settings.db_pool_min, max_size=settings.db_pool_max
        )
        stack.push_async_callback(pool.close)
        if settings.worker_metrics_port:
            stop_metrics = asyncio.Event()
            serving = asyncio.create_task(
                metrics.serve_worker_metrics(
                    pool, settings.worker_metrics_port, sdk_metrics_url, stop_metrics
                )
            )

            async def stop_serving() -> None:
                stop_metrics.set()
                await serving

            stack.push_async_callback(stop_serving)
        apify_http = httpx.AsyncClient(
            base_url=settings.apify_base_url,
            timeout=httpx.Timeout(settings.apify_timeout_seconds, connect=10),
        )
        stack.push_async_callback(apify_http.aclose)
        if settings.secret("apify_token") is None:
            raise RuntimeError("APIFY_TOKEN is not set (and no simulator was configured)")
        scraper = ApifyScraper(
            apify_http, token=lambda: current(settings, "apify_token"), actor=settings.apify_actor
        )
        if settings.secret("openai_api_key") is None:
            raise RuntimeError("OPENAI_API_KEY is not set (and no simulator was configured)")
        ai_client = openai.AsyncOpenAI(
            api_key=current(settings, "openai_api_key"),
            base_url=settings.openai_base_url,
            timeout=settings.openai_timeout_seconds,
            max_retries=0,  # retries belong to the workflow's AI retry policy
        )
        stack.push_async_callback(ai_client.close)

        slots = ProviderSlots(
            pool,
            settings.worker_dsn,
            {APIFY: settings.apify_max_concurrency, OPENAI: settings.openai_max_concurrency},
        )
        await slots.start()
        stack.push_async_callback(slots.close)

        credit = CreditActivities(pool, settings)
        compensation = CompensationActivities(pool)
        profile_cache = make_profile_cache(settings, pool)
        cache = CacheActivities(profile_cache, pool, settings)
        scrape = ScrapeActivities(scraper, profile_cache, slots, settings, pool)
        circuits = Reporter(pool, slots.worker)
        stack.push_async_callback(circuits.close)
        analyzer = BreakingAnalyzer(
            OpenAIAnalyzer(
                ai_client,
                settings.model_prices,
                api_key=lambda: current(settings, "openai_api_key"),
            ),
            threshold=settings.ai_breaker_threshold,
            pause_seconds=settings.ai_breaker_pause_seconds,
            timeout_seconds=settings.openai_timeout_seconds,
            on_change=circuits,
        )
        rules = RulesAnalyzer() if settings.ai_fallback == "rules" else None
        ai = AIActivities(analyzer, slots, settings, rules, pool)
        results = ResultActivities(pool)
        batch = BatchActivities(pool, settings)
        maintenance = MaintenanceActivities(pool, client, settings, profile_cache)
        billing = BillingActivities(pool, settings)

        activities: list[Callable[..., Any]] = [
            credit.deduct_credits,
            compensation.finish_unsuccessful,
            cache.check_cache,
            ai.analyze_profile,
            results.save_result,
            batch.start_batch,
            batch.next_items,
            batch.cancel_requested,
            batch.unfinished,
            batch.stop_batch,
            batch.finish_batch,
            maintenance.sweep_stuck_runs,
            maintenance.check_ledger,
            maintenance.clean_up,
            maintenance.renew_plans,
            maintenance.queue_stripe_events,
            billing.process_stripe_event,
            billing.dead_letter,
        ]
        separate_scrape_queue = settings.scrape_queue != settings.task_queue
        if not separate_scrape_queue:
            activities.append(scrape.scrape_profile)
        # The sandbox re-imports each workflow's module for every new run: the largest share
        # of a worker's CPU per analysis. Replay tests guard determinism either way.
        interceptors: list[Interceptor] = [LogContext(), metrics.StepTimings()]
        if sentry.init(settings, "worker"):
            interceptors.append(SentryInterceptor())
        runner: WorkflowRunner = (
            # Sentry reports a workflow's failure from inside it (core.sentry): its modules
            # are used as they are, not re-imported in the sandbox.
            SandboxedWorkflowRunner(
                restrictions=SandboxRestrictions.default.with_passthrough_modules("sentry_sdk")
            )
            if settings.workflow_sandbox
            else UnsandboxedWorkflowRunner()
        )
        workers = [
            Worker(
                client,
                task_queue=settings.task_queue,
                workflows=WORKFLOWS,
                activities=activities,
                graceful_shutdown_timeout=timedelta(seconds=10),
                workflow_runner=runner,
                interceptors=interceptors,
            )
        ]
        if separate_scrape_queue:
            workers.append(
                Worker(
                    client,
                    task_queue=settings.scrape_queue,
                    activities=[scrape.scrape_profile],
                    graceful_shutdown_timeout=timedelta(seconds=10),
                    interceptors=interceptors,
                )
            )
        yield workers


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    sdk_metrics = None
    if settings.worker_metrics_port:
        sdk_metrics = f"127.0.0.1:{free_port()}"  # private: re-served by our /metrics
    client = await temporal.connect(settings, sdk_metrics_address=sdk_metrics)
    sdk_metrics_url = f"http://{sdk_metrics}/metrics" if sdk_metrics else None
    async with build_workers(settings, client, sdk_metrics_url) as workers:
        log.info("worker polling %s", ", ".join(w.task_queue for w in workers))
        runs = [asyncio.create_task(w.run()) for w in workers]
        stopped = asyncio.create_task((stop or asyncio.Event()).wait())
        try:
            # Ends on a stop request, or as soon as a worker fails (the error propagates).
            done, _ = await asyncio.wait([stopped, *runs], return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stopped}:
                task.result()
        finally:
            stopped.cancel()
            await asyncio.gather(*(w.shutdown() for w in workers if w.is_running))
            await asyncio.gather(*runs, return_exceptions=True)
