"""The `oslira` command: run the stack or one of its parts, migrate, the operator commands
(accounts, tokens, credits, API keys, schedules, the ledger check), and `oslira batch` for
scripts."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.batch import batch_app
from cli.jobs import ledger_app, schedules_app, webhooks_app
from cli.operators import (
    accounts_app,
    api_keys_app,
    credits_app,
    fail,
    settings_or_exit,
    tokens_app,
)

if TYPE_CHECKING:
    from core.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.add_typer(accounts_app, name="accounts")
app.add_typer(tokens_app, name="tokens")
app.add_typer(credits_app, name="credits")
app.add_typer(api_keys_app, name="api-keys")
app.add_typer(batch_app, name="batch")
app.add_typer(schedules_app, name="schedules")
app.add_typer(ledger_app, name="ledger")
app.add_typer(webhooks_app, name="webhooks")


def _logging(verbose: bool = False) -> None:
    from core import logs

    logs.configure(verbose, "text" if os.environ.get("LOG_FORMAT") == "text" else "json")


@app.command()
def dev() -> None:
    """Start the whole stack on this machine (what `make run` runs)."""
    from cli.dev import run_dev

    # Lines for people, in this process and the ones it starts, unless told otherwise.
    os.environ.setdefault("LOG_FORMAT", "text")
    _logging()
    raise typer.Exit(run_dev())


@app.command()
def worker() -> None:
    """Run a Temporal worker (workflows and activities)."""
    import worker as worker_module

    _logging()
    settings = settings_or_exit()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await worker_module.run(settings, stop)

    asyncio.run(main())


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Default: API_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="Default: API_PORT")] = None,
) -> None:
    """Run the HTTP API."""
    import uvicorn

    _logging()
    settings = settings_or_exit()
    processes = settings.api_process_count
    if processes > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Before prometheus_client is imported, here and in each process uvicorn starts:
        # every process writes its samples there, and /metrics reads them all.
        folder = Path(settings.oslira_home) / "metrics" / f"api-{os.getpid()}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)

    from api.app import create_app
    from core import logs
    from core.settings import ConfigurationError

    try:
        application = create_app(settings)  # refuses a misconfiguration before serving
    except ConfigurationError as exc:
        fail(str(exc))
    uvicorn.run(
        # Several processes each build their app from the same environment.
        application if processes == 1 else "api.app:create_app",
        factory=processes > 1,
        workers=processes,
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_config=logs.dict_config(log_format=settings.log_format),
        access_log=False,  # api.middleware writes one line per request, with its id
        # Event streams stay open until their run ends: at shutdown they are cut after this
        # (clients reconnect with Last-Event-ID to another process).
        timeout_graceful_shutdown=10,
    )


@app.command()
def migrate() -> None:
    """Apply pending database migrations (and role passwords, when configured); with
    TEMPORAL_ADDRESS set, register the search attributes and create or update the scheduled
    jobs too."""
    from db.migrate import migrate as apply
    from db.migrate import set_role_passwords

    _logging()
    settings = settings_or_exit()

    async def main() -> list[str]:
        applied = await apply(settings.require_database_url())
        await set_role_passwords(settings)
        return applied

    applied = asyncio.run(main())
    typer.echo(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    if settings.temporal_address is not None:
        added, ids = asyncio.run(_prepare_temporal(settings))
        if added:
            typer.echo(f"search attributes registered: {', '.join(added)}")
        typer.echo(f"schedules: {', '.join(ids)}")


async def _prepare_temporal(settings: Settings) -> tuple[list[str], list[str]]:
    """The search attributes runs are started with (a cluster does not know them; the dev
    server gets them on its command line) and the scheduled jobs."""
    from core import schedules, temporal

    client = await temporal.connect(settings)
    added = await temporal.ensure_search_attributes(client, settings.temporal_namespace)
    return added, await schedules.ensure(client, settings)


@app.command()
def simulate(
    port: Annotated[int | None, typer.Option(help="Default: SIM_PORT")] = None,
) -> None:
    """Run the local Apify and OpenAI simulators (latency: SIM_*_LATENCY_MS)."""
    import uvicorn

    from simulators.app import create_app

    settings = settings_or_exit()
    uvicorn.run(create_app(), host="127.0.0.1", port=port or settings.sim_port, log_level="warning")


def main() -> None:
    """The `oslira` command. A process that connected a Temporal client leaves without the
    interpreter's teardown: the client's native threads can abort it ("PyGILState_Release:
    thread state must be current", temporalio/sdk-python#300), turning a command that did
    its work into exit code -6. Logs and output are flushed first."""
    code: int | str | None = 0
    try:
        app()
    except SystemExit as exc:
        code = exc.code
    connected = sys.modules.get("core.temporal")  # not imported: no client was made
    if connected is None or not connected.made_a_client():
        sys.exit(code)
    if isinstance(code, str):
        print(code, file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


if __name__ == "__main__":
    main()
