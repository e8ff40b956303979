"""Health with each component down in turn: the database and Temporal (unhealthy, 503),
workers, schedules, an AI circuit and the profile cache (degraded, 200); every answer in
about a second whatever hangs, and liveness whatever is down."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit
from uuid import uuid4

import httpx
import openai
import pytest

from core import schedules
from core.models import BusinessContext, Profile
from core.settings import DEFAULT_MODEL_PRICES, Settings
from db.circuits import Reporter
from providers.ai import OpenAIAnalyzer
from providers.breaker import BreakingAnalyzer
from providers.errors import ProviderUnavailable
from tests.conftest import Servers, app_client, make_settings
from tests.helpers import TcpProxy, running_worker

# Every check's deadline is 0.7 s; the whole answer within a second, with a little room for
# a loaded machine.
PROMPT = 1.2


def _database_target(url: str) -> tuple[str, int]:
    """Where the database listens: a host and port, or a Unix socket directory (pgserver's
    `?host=/dir`) and the port its socket is named after."""
    parts = urlsplit(url)
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    return socket_dir or parts.hostname or "127.0.0.1", parts.port or 5432


def _through(url: str, port: int) -> str:
    """The same database URL, through 127.0.0.1:port."""
    parts = urlsplit(url)
    credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "host"])
    return urlunsplit(parts._replace(netloc=f"{credentials}127.0.0.1:{port}", query=query))


async def _health(api: httpx.AsyncClient, path: str = "/health") -> tuple[int, dict[str, Any]]:
    started = time.perf_counter()
    response = await api.get(path)
    assert time.perf_counter() - started < PROMPT, path
    return response.status_code, response.json()


def _statuses(body: dict[str, Any]) -> dict[str, str]:
    return {name: c["status"] for name, c in body["components"].items()}


@asynccontextmanager
async def _schedules(client: Any, settings: Settings) -> AsyncIterator[None]:
    await schedules.ensure(client, settings)
    try:
        yield
    finally:
        for job in schedules.JOBS:
            await schedules.handle(client, settings, job.name).delete()


async def test_health_names_each_component_that_is_not_ok(
    servers: Servers, temporal_client, system_pool
):
    settings = make_settings(servers, task_queue=f"health-{uuid4().hex[:8]}")
    async with app_client(settings) as api:
        # No worker, no schedules yet: degraded, and it says what is missing.
        code, body = await _health(api)
        assert code == 200 and body["status"] == "degraded"
        assert _statuses(body) == {
            "database": "ok",
            "temporal": "ok",
            "workers": "degraded",
            "schedules": "degraded",
            "ai_circuits": "ok",
            "profile_cache": "ok",
        }
        assert (
            f"no worker polls {settings.task_queue} (workflow)"
            in body["components"]["workers"]["detail"]
        )
        assert "stuck-runs" in body["components"]["schedules"]["detail"]

        async with _schedules(temporal_client, settings), running_worker(settings):
            for _ in range(100):  # until the worker's first polls reach the server
                code, body = await _health(api)
                if body["components"]["workers"]["status"] == "ok":
                    break
                await asyncio.sleep(0.1)
            assert (code, body["status"]) == (200, "healthy"), body
            assert set(_statuses(body).values()) == {"ok"}

            # A model's circuit opens in a worker (the real breaker and its reporter): the
            # AI is degraded, and health names the circuit and the worker.
            reporter = Reporter(system_pool, f"health-test@{uuid4().hex[:6]}")
            client = openai.AsyncOpenAI(
                api_key="k", base_url=f"{servers.simulator_url}/v1", max_retries=0
            )
            breaking = BreakingAnalyzer(
                OpenAIAnalyzer(client, DEFAULT_MODEL_PRICES),
                threshold=1,
                pause_seconds=settings.ai_breaker_pause_seconds,
                timeout_seconds=10,
                on_change=reporter,
            )
            down = Profile(username=f"downai_{uuid4().hex[:6]}")
            business = BusinessContext(id=uuid4(), name="Acme")
            try:
                with pytest.raises(ProviderUnavailable):
                    await breaking.analyze("fit_light", "gpt-5-nano", business, down)
                await reporter.close()
                code, body = await _health(api)
                assert (code, body["status"]) == (200, "degraded")
                circuit = body["components"]["ai_circuits"]
                assert circuit["status"] == "degraded"
                assert "openai:gpt-5-nano" in circuit["detail"]
            finally:
                await system_pool.execute(
                    "DELETE FROM provider_circuits WHERE worker LIKE 'health-test@%'"
                )
            code, body = await _health(api)
            assert body["status"] == "healthy", body


async def test_an_unreachable_profile_cache_degrades_health(servers: Servers):
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings = make_settings(
        servers,
        profile_cache="s3",
        s3_bucket="profiles",
        s3_endpoint_url=f"http://127.0.0.1:{port}",
        s3_access_key_id="k",
        s3_secret_access_key="s",
    )
    async with app_client(settings) as api:
        code, body = await _health(api)
        assert (code, body["status"]) == (200, "degraded")
        cache = body["components"]["profile_cache"]
        assert cache["status"] == "down" and cache["detail"]


async def test_a_hanging_database_or_temporal_makes_it_unhealthy_within_a_second(
    servers: Servers,
):
    temporal_host, temporal_port = servers.temporal_address.rsplit(":", 1)
    async with (
        TcpProxy(*_database_target(servers.database_url)) as db_proxy,
        TcpProxy(temporal_host, int(temporal_port)) as temporal_proxy,
    ):
        settings = make_settings(
            servers,
            database_url=_through(servers.database_url, db_proxy.port),
            temporal_address=f"127.0.0.1:{temporal_proxy.port}",
        )
        async with app_client(settings) as api:
            code, body = await _health(api, "/health/ready")
            assert (code, body["status"]) == (200, "healthy"), body

            temporal_proxy.hang()
            for path in ("/health", "/health/ready"):
                code, body = await _health(api, path)
                assert (code, body["status"]) == (503, "unhealthy"), body
                assert body["components"]["temporal"]["status"] == "down"
                assert body["components"]["database"]["status"] == "ok"

            db_proxy.hang()
            code, body = await _health(api)
            assert (code, body["status"]) == (503, "unhealthy")
            assert body["components"]["database"]["status"] == "down"
            # What reads the database cannot answer either, but within the deadline.
            assert body["components"]["ai_circuits"]["status"] == "down"
            live = await api.get("/health/live")
            assert live.status_code == 200 and live.json()["status"] == "ok"
