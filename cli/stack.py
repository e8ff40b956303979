"""The parts of the embedded stack: PostgreSQL (pgserver), the Temporal dev server and our
child processes. `oslira dev`, the test suite and the benchmark all start them from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from core.temporal import SEARCH_ATTRIBUTES

log = logging.getLogger(__name__)

DATABASE_NAME = "oslira"

# Dev server tuning, measured on a 2-core machine (see README, "Performance"): eager
# activity dispatch skips a poll round trip per activity, one partition per task queue
# avoids forwarding between partitions (and lets fairness be exact), and WAL keeps SQLite
# commits cheap.
TEMPORAL_DYNAMIC_CONFIG = {
    "system.enableActivityEagerExecution": "true",
    "matching.numTaskqueueReadPartitions": "1",
    "matching.numTaskqueueWritePartitions": "1",
    # Priority and fairness keys order what waits in a task queue (accounts in turn).
    "matching.enableFairness": "true",
}
TEMPORAL_SQLITE_PRAGMAS = {"journal_mode": "wal", "synchronous": "normal"}


# --- PostgreSQL ---------------------------------------------------------------------------


def start_postgres(pgdata: Path, *, keep_running: bool = False) -> tuple[object, str]:
    """Starts (or joins) the embedded server for `pgdata`; returns it and the admin URL.

    The server stops when this process exits unless `keep_running`.
    """
    import warnings

    # pgserver asks platformdirs for a runtime dir; without XDG_RUNTIME_DIR it warns and
    # falls back to /tmp, which is what we want.
    warnings.filterwarnings("ignore", module="platformdirs")
    import pgserver

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode=None if keep_running else "stop")
    return server, server.get_uri()


async def ensure_database(admin_url: str, name: str = DATABASE_NAME) -> str:
    """Creates database `name` on the server if missing; returns its URL."""
    conn = await asyncpg.connect(admin_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


# --- Temporal -----------------------------------------------------------------------------


def temporal_binary() -> str:
    found = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    if not Path(found).exists():
        raise RuntimeError("the `temporal` CLI is missing: install the project (`make install`)")
    return found


def temporal_command(
    *, port: int, ui_port: int | None, db_file: Path | None, ip: str = "127.0.0.1"
) -> list[str]:
    cmd = [temporal_binary(), "server", "start-dev", "--ip", ip, "--port", str(port)]
    cmd += ["--ui-port", str(ui_port)] if ui_port else ["--headless"]
    if db_file is not None:
        cmd += ["--db-filename", str(db_file)]
        for pragma, value in TEMPORAL_SQLITE_PRAGMAS.items():
            cmd += ["--sqlite-pragma", f"{pragma}={value}"]
    for name, kind in SEARCH_ATTRIBUTES.items():
        cmd += ["--search-attribute", f"{name}={kind}"]
    for key, value in TEMPORAL_DYNAMIC_CONFIG.items():
        cmd += ["--dynamic-config-value", f"{key}={value}"]
    return [*cmd, "--log-level", "warn"]


def wait_for_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} while starting")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


async def wait_for_temporal(address: str, timeout: float = 30.0) -> None:
    from temporalio.client import Client

    deadline = time.monotonic() + timeout
    while True:
        try:
            client = await Client.connect(address)
            await client.service_client.check_health()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def isolated_dev_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for an `oslira dev` of its own: its state folder, free ports, the
    embedded parts and simulators whatever the calling shell has set."""
    return {
        "OSLIRA_HOME": str(home),
        "API_PORT": str(free_port()),
        "TEMPORAL_PORT": str(free_port()),
        "TEMPORAL_UI_PORT": str(free_port()),
        "SIM_PORT": str(free_port()),
        # Empty counts as unset: the shell's own services are not used.
        "DATABASE_URL": "",
        "TEMPORAL_ADDRESS": "",
        "APIFY_TOKEN": "",
        "OPENAI_API_KEY": "",
        "JWT_SECRET": "",
        "TASK_QUEUE": "",
        "SCRAPE_TASK_QUEUE": "",
        **extra,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- child processes ----------------------------------------------------------------------


def spawn(
    args: list[str], env: Mapping[str, str], log_file: Path | None = None
) -> subprocess.Popen[bytes]:
    """A child in its own process group, so Ctrl-C reaches only the supervisor, which then
    stops the children in order."""
    out = open(log_file, "ab") if log_file else None  # noqa: SIM115 - handed to the child
    return subprocess.Popen(
        args,
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    stop_all([proc], timeout)


def stop_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM to each child's process group at once, SIGKILL to what is left at the
    deadline: stopping takes at most `timeout` whatever the number of children."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in running:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            proc.wait()


def signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Children run in sessions of their own (see spawn): signal the whole group, so what
    they started themselves stops too, even after the child itself has gone."""
    try:
        leads_its_group = os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        leads_its_group = proc.poll() is not None  # gone: its group may outlive it
    with contextlib.suppress(ProcessLookupError):
        if leads_its_group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)


def oslira_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def stop_postgres(pgdata: Path, timeout: float = 4.0) -> None:
    """Stops the server running on `pgdata` with PostgreSQL's fast shutdown, whoever
    started it: a server restarted by hand has another pid than the one pgserver knew."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError, IndexError):
        return  # not running
    if str(pgdata) not in command:
        return  # a stale pid file: that pid is someone else's now
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)  # immediate shutdown
            return
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
