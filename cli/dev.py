"""`oslira dev`: the whole stack on one machine, with embedded defaults.

Starts PostgreSQL and the Temporal dev server (unless DATABASE_URL / TEMPORAL_ADDRESS point
elsewhere), applies migrations, starts the simulators (unless APIFY_TOKEN / OPENAI_API_KEY
are set), then the workers and the API as separate child processes, which it supervises:
one that dies is started again (cli/supervisor.py). It writes the addresses to
`$OSLIRA_HOME/stack.env` so other commands reach the same stack, seeds a demo account, and
stops everything on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import IO
from uuid import UUID

import asyncpg
from pydantic import ValidationError

from cli import stack
from cli.supervisor import Supervisor
from core import schedules, temporal
from core.auth import mint_token
from core.settings import Settings, describe, stack_env_path
from db.accounts import create_with_owner
from db.migrate import migrate, set_role_passwords

log = logging.getLogger("oslira.dev")

DEMO_CREDITS = 100
DEMO_BUSINESS = {
    "name": "Demo business",
    "description": "A boutique fitness studio that partners with creators.",
    "offering": "Paid partnerships and affiliate deals for fitness and wellness creators",
    "target_audience": "Fitness, food and lifestyle creators with engaged audiences",
}


class PortTaken(Exception):
    def __init__(self, port: int, variable: str) -> None:
        super().__init__(
            f"port {port} ({variable}) is already in use, perhaps by another `oslira dev`. "
            f"Stop what listens there, or choose another port: {variable}=<port> make run"
        )


def run_dev() -> int:
    try:
        settings = Settings()  # the environment only: never a stale stack.env
    except ValidationError as exc:
        log.error("%s", describe(exc))
        return 2
    home = settings.oslira_home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    lock = _single_instance(home)  # noqa: F841 - held for the life of the process
    try:
        _check_ports(settings)
    except PortTaken as exc:
        log.error("%s", exc)
        return 1

    children = Supervisor()
    stopping = threading.Event()
    abort_on_signal = True  # during start-up; never again once stopping has begun

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal abort_on_signal
        stopping.set()
        if abort_on_signal:  # `finally` stops what was started
            abort_on_signal = False
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    parent = ParentWatch.of_make()
    env: dict[str, str] = {"OSLIRA_HOME": str(home)}
    pg_server = None
    try:
        if settings.database_url is None:
            log.info("starting PostgreSQL (data in %s)", home / "pgdata")
            pg_server, admin_url = stack.start_postgres(home / "pgdata")
            env["DATABASE_URL"] = asyncio.run(stack.ensure_database(admin_url))
        else:
            env["DATABASE_URL"] = settings.database_url

        if settings.temporal_address is None:
            log.info("starting the Temporal dev server (UI on port %d)", settings.temporal_ui_port)
            temporal = children.start(
                "temporal",
                stack.temporal_command(
                    port=settings.temporal_port,
                    ui_port=settings.temporal_ui_port,
                    db_file=home / "temporal.db",
                ),
                {},
                home / "temporal.log",
            )
            stack.wait_for_port("127.0.0.1", settings.temporal_port, 60, temporal)
            env["TEMPORAL_ADDRESS"] = f"127.0.0.1:{settings.temporal_port}"
        else:
            env["TEMPORAL_ADDRESS"] = settings.temporal_address
        asyncio.run(stack.wait_for_temporal(env["TEMPORAL_ADDRESS"]))
        if settings.temporal_address is not None:
            asyncio.run(_register_search_attributes(settings))

        env["STRIPE_WEBHOOK_SECRET"] = (
            settings.stripe_webhook_secret.get_secret_value()
            if settings.stripe_webhook_secret is not None
            else _persistent_secret(home / "stripe_webhook_secret", prefix="whsec_")
        )
        if None in (settings.apify_token, settings.openai_api_key, settings.stripe_api_key):
            sim_url = f"http://127.0.0.1:{settings.sim_port}"
            # The Stripe simulator "pays" Checkout sessions and sends the events, signed,
            # to this stack's API.
            webhook = f"http://{settings.api_host}:{settings.api_port}/api/webhooks/stripe"
            sim_env = env | {
                "SIM_STRIPE_WEBHOOK_URL": webhook,
                "SIM_STRIPE_WEBHOOK_SECRET": env["STRIPE_WEBHOOK_SECRET"],
            }
            simulators = children.start(
                "simulators", stack.oslira_command("simulate"), sim_env, home / "simulators.log"
            )
            stack.wait_for_port("127.0.0.1", settings.sim_port, 30, simulators)
            if settings.apify_token is None:
                env |= {"APIFY_BASE_URL": sim_url, "APIFY_TOKEN": "simulator"}
            if settings.openai_api_key is None:
                env |= {"OPENAI_BASE_URL": f"{sim_url}/v1", "OPENAI_API_KEY": "simulator"}
            if settings.stripe_api_key is None:
                env |= {"STRIPE_API_BASE": sim_url, "STRIPE_API_KEY": "sk_test_simulator"}

        env["JWT_SECRET"] = (
            settings.jwt_secret.get_secret_value()
            if settings.jwt_secret is not None
            else _persistent_secret(home / "jwt_secret")
        )
        applied = asyncio.run(migrate(env["DATABASE_URL"]))
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        if "task_queue" not in settings.model_fields_set:
            suffix = asyncio.run(_installation_suffix(env["DATABASE_URL"]))
            env["TASK_QUEUE"] = f"{settings.task_queue}-{suffix}"
            if settings.scrape_task_queue is not None:
                env["SCRAPE_TASK_QUEUE"] = f"{settings.scrape_task_queue}-{suffix}"
        _write_stack_env(home, env)
        full = Settings(**{k.lower(): v for k, v in env.items() if k != "OSLIRA_HOME"})  # type: ignore[arg-type]
        asyncio.run(set_role_passwords(full))
        demo = _demo_account(full, home / "demo.json")
        asyncio.run(_ensure_schedules(full))

        workers = settings.worker_processes or os.cpu_count() or 1
        for n in range(1, workers + 1):
            name = "worker" if workers == 1 else f"worker-{n}"
            # Each worker's /metrics: WORKER_METRICS_PORT and the next ones, or free ports.
            port = (
                settings.worker_metrics_port + n - 1
                if settings.worker_metrics_port
                else stack.free_port()
            )
            log.info("%s serves Prometheus metrics on http://127.0.0.1:%d/metrics", name, port)
            worker_env = env | {"WORKER_METRICS_PORT": str(port)}
            children.start(name, stack.oslira_command("worker"), worker_env, home / f"{name}.log")
        api = children.start("api", stack.oslira_command("api"), env, home / "api.log")
        stack.wait_for_port(settings.api_host, settings.api_port, 30, api)
        _banner(full, settings, demo, home)
        abort_on_signal = False

        while not stopping.wait(0.5):
            if parent is not None and parent.stopping():
                log.info("make was stopped")
                break
            children.watch()
        log.info("stopping")
        return 0
    except KeyboardInterrupt:
        return 130
    except ValidationError as exc:
        log.error("%s", describe(exc))
        return 2
    finally:
        abort_on_signal = False
        children.stop(last=("temporal",))
        stack_env_path(home).unlink(missing_ok=True)
        if pg_server is not None:
            # Whichever postmaster runs there now: one restarted by hand included.
            stack.stop_postgres(home / "pgdata")
            pg_server.cleanup()  # type: ignore[attr-defined]
        log.info("stopped")


def _check_ports(settings: Settings) -> None:
    """Every port this stack would listen on must be free before anything starts: a taken
    port means another stack, whose server this one would otherwise talk to."""
    wanted = [
        (
            "127.0.0.1" if settings.api_host == "localhost" else settings.api_host,
            settings.api_port,
            "API_PORT",
        )
    ]
    if settings.temporal_address is None:
        wanted += [
            ("127.0.0.1", settings.temporal_port, "TEMPORAL_PORT"),
            ("127.0.0.1", settings.temporal_ui_port, "TEMPORAL_UI_PORT"),
        ]
    if None in (settings.apify_token, settings.openai_api_key, settings.stripe_api_key):
        wanted.append(("127.0.0.1", settings.sim_port, "SIM_PORT"))
    for host, port, variable in wanted:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            # As the servers bind: a port whose last connections linger in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise PortTaken(port, variable) from exc


async def _installation_suffix(database_url: str) -> str:
    """What names this stack's task queues after its database, so that workers of a stack
    with another database never take this stack's work, even on a shared Temporal server."""
    conn = await asyncpg.connect(database_url)
    try:
        installation = await conn.fetchval("SELECT id FROM installation")
    finally:
        await conn.close()
    return str(installation.hex[:12])


class ParentWatch:
    """Notices that the `make` which started this process is being stopped.

    GNU make forwards SIGTERM to its children, but on SIGINT it only waits for them (it
    expects the terminal to have signalled the whole process group), so `kill -INT <make>`
    alone would leave the stack running under a make that never returns. When a fatal
    signal arrives, make restores that signal's default action before waiting: the signal
    drops out of the set it catches (SigCgt in /proc), which is what this watches, along
    with make itself going away.
    """

    FATAL = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.caught = self._caught()

    @classmethod
    def of_make(cls) -> ParentWatch | None:
        parent = os.getppid()
        try:
            name = Path(f"/proc/{parent}/comm").read_text().strip()
        except OSError:  # not Linux: rely on make forwarding SIGTERM
            return None
        return cls(parent) if name in ("make", "gmake") else None

    def _caught(self) -> set[int]:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return set()
        mask = int(
            next(ln for ln in status.splitlines() if ln.startswith("SigCgt:")).split()[1], 16
        )
        return {sig for sig in self.FATAL if mask & (1 << (sig - 1))}

    def stopping(self) -> bool:
        if os.getppid() != self.pid:
            return True  # make is gone
        return bool(self.caught - self._caught())


async def _ensure_schedules(settings: Settings) -> None:
    ids = await schedules.ensure(await temporal.connect(settings), settings)
    log.info("schedules: %s", ", ".join(ids))


async def _register_search_attributes(settings: Settings) -> None:
    client = await temporal.connect(settings)
    added = await temporal.ensure_search_attributes(client, settings.temporal_namespace)
    if added:
        log.info("registered search attributes: %s", ", ".join(added))


def _single_instance(home: Path) -> IO[str]:
    handle = open(home / "dev.lock", "w")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"another `oslira dev` is running with OSLIRA_HOME={home}")
    return handle


def _persistent_secret(path: Path, prefix: str = "") -> str:
    """A random secret kept in the state folder, so it survives restarts (JWTs signed with
    it stay valid; Stripe events signed with it still verify)."""
    if not path.exists():
        _write_private(path, prefix + secrets.token_urlsafe(48))
    return path.read_text().strip()


def _write_private(path: Path, text: str) -> None:
    """Writes a file only its owner can read, from its creation on (it holds secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _write_stack_env(home: Path, env: dict[str, str]) -> None:
    _write_private(
        stack_env_path(home), "".join(f"{k}={v}\n" for k, v in env.items() if k != "OSLIRA_HOME")
    )


def _demo_account(settings: Settings, record: Path) -> dict[str, str]:
    """The demo account: created once, kept across restarts with the rest of the data."""
    known = json.loads(record.read_text()) if record.exists() else None
    demo = asyncio.run(_ensure_demo_account(settings, known))
    record.write_text(json.dumps(demo))
    return demo


async def _ensure_demo_account(settings: Settings, known: dict[str, str] | None) -> dict[str, str]:
    conn = await asyncpg.connect(settings.worker_dsn)
    try:
        if known and await conn.fetchval(
            "SELECT 1 FROM accounts WHERE id = $1::uuid", known["account_id"]
        ):
            return known
        created = await create_with_owner(
            conn, name="Demo", credits_granted=DEMO_CREDITS, business=DEMO_BUSINESS
        )
    finally:
        await conn.close()
    return {
        "account_id": str(created.account_id),
        "user_id": str(created.user_id),
        "business_profile_id": str(created.business_profile_id),
    }


def _banner(stack_settings: Settings, given: Settings, demo: dict[str, str], home: Path) -> None:
    """`stack_settings` are those of the running stack; `given`, what oslira dev was given."""
    token = mint_token(stack_settings, UUID(demo["user_id"]), valid_for=timedelta(days=30))
    api = f"http://{given.api_host}:{given.api_port}"
    ui = (
        f"http://127.0.0.1:{given.temporal_ui_port}"
        if given.temporal_address is None
        else "(your Temporal server's UI)"
    )
    print(
        f"""
Oslira is running.
  API          {api}   (docs: {api}/docs)
  Temporal UI  {ui}
  State        {home}   (logs: *.log)

Demo account {demo["account_id"]} ({DEMO_CREDITS} credits at creation). In another shell, paste:
  export OSLIRA_API={api} BUSINESS_PROFILE_ID={demo["business_profile_id"]} TOKEN={token}
then the commands under "Try it" in README.md, for example:
  curl -s "$OSLIRA_API/api/credits/balance" -H "Authorization: Bearer $TOKEN"

Usernames starting with notfound, private, flaky or slow show the failure paths.
Buy credits: POST $OSLIRA_API/api/credits/purchase {{"package": "starter"}} answers a Checkout
URL; open it and press Pay (the Stripe simulator sends the webhook events).
Press Ctrl-C to stop.
""",
        flush=True,
    )
