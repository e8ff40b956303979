"""Session-wide real servers (PostgreSQL, Temporal dev server, provider simulators) and, per
test, a fresh account whose ledger invariants are checked when the test ends."""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from temporalio.client import Client

import worker as worker_module
from api.app import create_app
from cli import stack
from core import temporal
from core.auth import mint_token
from core.settings import Settings
from db import credits
from db.accounts import create_with_owner
from db.migrate import migrate
from db.pool import create_pool

JWT_SECRET = secrets.token_urlsafe(32)
STRIPE_WEBHOOK_SECRET = f"whsec_{secrets.token_hex(16)}"
STRIPE_API_KEY = f"sk_test_{secrets.token_hex(12)}"  # the simulator's account for the session


@dataclass
class Servers:
    database_url: str
    temporal_address: str
    simulator_url: str


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    with tempfile.TemporaryDirectory(prefix="oslira-test-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)  # pgserver runs postgres as its own system user when root
        pg_server, admin_url = stack.start_postgres(root / "pgdata")
        database_url = asyncio.run(stack.ensure_database(admin_url, "oslira_test"))
        asyncio.run(migrate(database_url))

        temporal_port, sim_port = stack.free_port(), stack.free_port()
        temporal_proc = stack.spawn(
            stack.temporal_command(port=temporal_port, ui_port=None, db_file=None),
            {},
            root / "temporal.log",
        )
        sim_proc = stack.spawn(
            [*stack.oslira_command("simulate", "--port", str(sim_port))],
            {"SIM_APIFY_LATENCY_MS": "20", "SIM_OPENAI_LATENCY_MS": "10"},
            root / "simulators.log",
        )
        try:
            stack.wait_for_port("127.0.0.1", temporal_port, 60, temporal_proc)
            stack.wait_for_port("127.0.0.1", sim_port, 30, sim_proc)
            asyncio.run(stack.wait_for_temporal(f"127.0.0.1:{temporal_port}"))
            yield Servers(
                database_url=database_url,
                temporal_address=f"127.0.0.1:{temporal_port}",
                simulator_url=f"http://127.0.0.1:{sim_port}",
            )
        finally:
            for proc in (sim_proc, temporal_proc):
                stack.stop(proc)
            pg_server.cleanup()  # type: ignore[attr-defined]


def make_settings(servers: Servers, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "environment": "test",
        "database_url": servers.database_url,
        "temporal_address": servers.temporal_address,
        "task_queue": f"test-{uuid4().hex[:8]}",
        "apify_base_url": servers.simulator_url,
        "apify_token": "test-token",
        "openai_base_url": f"{servers.simulator_url}/v1",
        "openai_api_key": "test-key",
        "jwt_secret": JWT_SECRET,
        "stripe_webhook_secret": STRIPE_WEBHOOK_SECRET,
        "stripe_api_key": STRIPE_API_KEY,
        "stripe_api_base": servers.simulator_url,
        "db_pool_max": 20,
        # No free allowance and no practical rate limit unless a test gives them.
        "plans": {
            "free": {
                "name": "Free",
                "analyses_per_hour": 1_000_000,
                "requests_per_minute": 1_000_000,
            }
        },
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type, call-arg]


@pytest.fixture(scope="session")
def settings(servers: Servers) -> Settings:
    return make_settings(servers)


@pytest.fixture(scope="session")
async def temporal_client(settings: Settings) -> Client:
    return await temporal.connect(settings)


@pytest.fixture(scope="session")
async def system_pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A worker-role (system) pool for arranging and checking data."""
    pool = await create_pool(settings.worker_dsn, min_size=1, max_size=5)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def worker(settings: Settings, temporal_client: Client) -> AsyncIterator[None]:
    """One in-process worker for the session's task queue."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker_module.run(settings, stop))
    await asyncio.sleep(0.2)
    yield
    stop.set()
    await task


@pytest.fixture(scope="session")
async def api(settings: Settings, worker: None) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(settings) as client:
        yield client


class app_client:
    """An httpx client for an app instance, with its lifespan running."""

    def __init__(self, settings: Settings, *, raise_app_exceptions: bool = True) -> None:
        """`raise_app_exceptions=False`: an unhandled error answers 500, as a server would,
        instead of raising in the test."""
        self.app = create_app(settings)
        self._raise = raise_app_exceptions

    async def __aenter__(self) -> httpx.AsyncClient:
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, raise_app_exceptions=self._raise),
            base_url="http://api.test",
            timeout=30,
        )
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()
        await self._lifespan.__aexit__(None, None, None)


@dataclass
class Account:
    account_id: UUID
    user_id: UUID
    business_profile_id: UUID
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
async def new_account(
    settings: Settings, system_pool: asyncpg.Pool
) -> AsyncIterator[Callable[..., Awaitable[Account]]]:
    """Makes accounts; when the test ends, checks the ledger invariants of each."""
    made: list[Account] = []

    async def make(credits_granted: int = 100, name: str = "Test") -> Account:
        async with system_pool.acquire() as conn:
            created = await create_with_owner(conn, name=name, credits_granted=credits_granted)
        account = Account(
            account_id=created.account_id,
            user_id=created.user_id,
            business_profile_id=created.business_profile_id,
            token=mint_token(settings, created.user_id, valid_for=timedelta(hours=1)),
        )
        made.append(account)
        return account

    yield make

    async with system_pool.acquire() as conn:
        violations = [
            v for a in made for v in await credits.invariant_violations(conn, a.account_id)
        ]
    assert violations == []
