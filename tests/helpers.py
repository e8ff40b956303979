"""Small helpers the tests share: start a run, wait for it, read its ledger rows."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
from temporalio.client import Client

from cli import stack
from core import schedules
from core.settings import Settings
from tests.conftest import Account

TERMINAL = {"complete", "failed", "cancelled"}


async def start(
    api: httpx.AsyncClient,
    account: Account,
    username: str,
    tier: str = "light",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await api.post(
        "/api/leads/analyze",
        json={
            "username": username,
            "analysis_type": tier,
            "business_profile_id": str(account.business_profile_id),
        },
        headers=account.headers | (headers or {}),
    )


async def start_ok(
    api: httpx.AsyncClient, account: Account, username: str, tier: str = "light"
) -> str:
    response = await start(api, account, username, tier)
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


async def wait_for(
    api: httpx.AsyncClient,
    account: Account,
    run_id: str,
    statuses: set[str] = TERMINAL,
    timeout: float = 30.0,
    predicate: Any = None,
) -> dict[str, Any]:
    """Polls the progress endpoint until the run reaches one of `statuses`."""
    deadline = time.monotonic() + timeout
    while True:
        response = await api.get(f"/api/analysis/{run_id}/progress", headers=account.headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["status"] in statuses and (predicate is None or predicate(body)):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} still {body['status']} after {timeout} s: {body}")
        await asyncio.sleep(0.05)


def step(progress: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in progress["steps"] if s["name"] == name)
    return found


async def ledger_for_run(pool: asyncpg.Pool, run_id: str | UUID) -> list[tuple[str, int]]:
    rows = await pool.fetch(
        "SELECT kind, delta FROM credit_ledger WHERE run_id = $1 ORDER BY id", UUID(str(run_id))
    )
    return [(r["kind"], r["delta"]) for r in rows]


async def balance(api: httpx.AsyncClient, account: Account) -> int:
    response = await api.get("/api/credits/balance", headers=account.headers)
    assert response.status_code == 200, response.text
    value: int = response.json()["balance"]
    return value


async def apify_calls(simulator_url: str, username: str) -> int:
    async with httpx.AsyncClient(base_url=simulator_url) as client:
        response = await client.get(f"/_simulator/apify/calls/{username}")
    calls: int = response.json()["calls"]
    return calls


async def insert_run(pool: asyncpg.Pool, account: Account, username: str, cost: int = 1) -> UUID:
    """A pending request row written directly, as if the API had accepted it."""
    run_id = uuid4()
    await pool.execute(
        """INSERT INTO analyses (id, account_id, business_profile_id, username, analysis_type,
               credits_cost) VALUES ($1, $2, $3, $4, 'light', $5)""",
        run_id,
        account.account_id,
        account.business_profile_id,
        username,
        cost,
    )
    return run_id


@asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[None]:
    """An in-process worker for `settings` (its own task queue, plans, packages) while the
    block runs."""
    import worker as worker_module

    stop = asyncio.Event()
    task = asyncio.create_task(worker_module.run(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await task


@asynccontextmanager
async def as_tenant(conn: asyncpg.Connection, account_id: UUID) -> AsyncIterator[None]:
    """A transaction in which row level security sees `account_id`, as the API's are."""
    async with conn.transaction():
        await conn.execute("SELECT set_config('app.account_id', $1, true)", str(account_id))
        yield


def process_env(settings: Settings, home: str, **extra: str) -> dict[str, str]:
    """The environment for an `oslira` child process (worker, API, operator command) that
    uses the test session's servers, with a state folder of its own."""
    assert settings.apify_token and settings.openai_api_key and settings.jwt_secret
    return {
        "OSLIRA_HOME": home,
        "ENVIRONMENT": "test",
        "DATABASE_URL": settings.require_database_url(),
        "TEMPORAL_ADDRESS": settings.require_temporal_address(),
        "TASK_QUEUE": settings.task_queue,
        "APIFY_BASE_URL": settings.apify_base_url,
        "APIFY_TOKEN": settings.apify_token.get_secret_value(),
        "OPENAI_BASE_URL": str(settings.openai_base_url),
        "OPENAI_API_KEY": settings.openai_api_key.get_secret_value(),
        "JWT_SECRET": settings.jwt_secret.get_secret_value(),
        **(
            {"STRIPE_WEBHOOK_SECRET": settings.stripe_webhook_secret.get_secret_value()}
            if settings.stripe_webhook_secret
            else {}
        ),
        **(
            {"STRIPE_API_KEY": settings.stripe_api_key.get_secret_value()}
            if settings.stripe_api_key
            else {}
        ),
        **({"STRIPE_API_BASE": settings.stripe_api_base} if settings.stripe_api_base else {}),
        "STRIPE_EVENT_ATTEMPTS": str(settings.stripe_event_attempts),
        "STRIPE_OUTAGE_PAUSE_SECONDS": str(settings.stripe_outage_pause_seconds),
        **(
            {"BILLING_RETURN_URL": settings.billing_return_url}
            if settings.billing_return_url
            else {}
        ),
        "PLANS": json.dumps(
            {name: plan.model_dump(mode="json") for name, plan in settings.plans.items()}
        ),
        **extra,
    }


@dataclass
class ApiProcess:
    """`oslira api` running as a real uvicorn process."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def connect(self) -> socket.socket:
        conn = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn


@contextmanager
def running_api(settings: Settings, **env: str) -> Iterator[ApiProcess]:
    with tempfile.TemporaryDirectory() as home:
        port = stack.free_port()
        log = Path(home) / "api.log"
        proc = stack.spawn(
            stack.oslira_command("api"), process_env(settings, home, API_PORT=str(port), **env), log
        )
        try:
            stack.wait_for_port("127.0.0.1", port, 30, proc)
            yield ApiProcess(proc, port, log)
        finally:
            stack.stop(proc)


HISTORIES = Path(__file__).parent / "histories"


async def record_history(
    temporal_client: Any,
    run_id: str | UUID,
    name: str,
    *,
    workflow_id: str | None = None,
    workflow_run_id: str | None = None,
) -> None:
    """With OSLIRA_RECORD_HISTORIES=1, keeps the run's workflow history (or another
    workflow's) as a replay fixture (tests/test_replay.py replays every one of them against
    the current workflow code)."""
    if os.environ.get("OSLIRA_RECORD_HISTORIES") != "1":
        return
    handle = temporal_client.get_workflow_handle(
        workflow_id or f"analysis-{run_id}", run_id=workflow_run_id
    )
    history = await handle.fetch_history()
    HISTORIES.mkdir(exist_ok=True)
    (HISTORIES / f"{name}.json").write_text(history.to_json())


async def run_job(client: Client, settings: Settings, name: str, record: str | None = None) -> Any:
    """Triggers the job's schedule and waits for the workflow it started; its result (and
    its history kept as a replay fixture under `record`, when recording)."""
    handle = schedules.handle(client, settings, name)
    before = len((await handle.describe()).info.recent_actions)
    await handle.trigger()
    for _ in range(200):
        actions = (await handle.describe()).info.recent_actions
        if len(actions) > before:
            started = actions[-1].action
            result = await client.get_workflow_handle(started.workflow_id).result()
            if record:
                await record_history(client, "", record, workflow_id=started.workflow_id)
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} did not start")


class TcpProxy:
    """Forwards local connections to `host:port` until `hang()`: then nothing more gets
    through, on open connections or new ones, and nothing is closed (a host that stopped
    responding, the slowest way for a dependency to be down)."""

    def __init__(self, host: str, port: int) -> None:
        """`host` may be a Unix socket directory (as libpq's `host=`): then the target is
        its PostgreSQL socket for `port`."""
        self._target = (host, port)
        self._hanging = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.hang()
        self._close_all()

    def hang(self) -> None:
        """From now on nothing gets through, either way, on open connections or new ones;
        no connection is closed (a peer that stopped answering, not one that went away)."""
        self._hanging = True

    def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self._hanging:
            return  # accepted, never answered
        host, port = self._target
        try:
            if host.startswith("/"):
                up_reader, up_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
            else:
                up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    if self._hanging:
                        continue  # swallowed
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@contextmanager
def moto_server() -> Iterator[str]:
    """A local AWS (moto's server mode: S3, Secrets Manager, ...) over HTTP; its URL."""
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        port = stack.free_port()
        proc = stack.spawn(
            [str(Path(sys.executable).parent / "moto_server"), "-p", str(port)],
            {},
            Path(tmp) / "moto.log",
        )
        try:
            stack.wait_for_port("127.0.0.1", port, 30, proc)
            yield f"http://127.0.0.1:{port}"
        finally:
            stack.stop(proc)
