"""The `oslira` command: run the stack or one of its parts, migrate, create accounts."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from datetime import timedelta
from typing import Annotated

import typer

from core.settings import load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
accounts_app = typer.Typer(no_args_is_help=True, help="Manage accounts.")
app.add_typer(accounts_app, name="accounts")


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("pgserver", "httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def dev() -> None:
    """Start the whole stack on this machine (what `make run` runs)."""
    from cli.dev import run_dev

    _logging()
    raise typer.Exit(run_dev())


@app.command()
def worker() -> None:
    """Run a Temporal worker (workflows and activities)."""
    import worker as worker_module

    _logging()
    settings = load_settings()

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

    from api.app import create_app

    _logging()
    settings = load_settings()
    uvicorn.run(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level="warning",
        access_log=False,
    )


@app.command()
def migrate() -> None:
    """Apply pending database migrations (and role passwords, when configured)."""
    from db.migrate import migrate as apply
    from db.migrate import set_role_passwords

    _logging()
    settings = load_settings()

    async def main() -> list[str]:
        applied = await apply(settings.require_database_url())
        await set_role_passwords(settings)
        return applied

    applied = asyncio.run(main())
    typer.echo(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


@app.command()
def simulate(
    port: Annotated[int | None, typer.Option(help="Default: SIM_PORT")] = None,
) -> None:
    """Run the local Apify and OpenAI simulators (latency: SIM_*_LATENCY_MS)."""
    import uvicorn

    from simulators.app import create_app

    settings = load_settings()
    uvicorn.run(create_app(), host="127.0.0.1", port=port or settings.sim_port, log_level="warning")


@accounts_app.command("create")
def accounts_create(
    name: Annotated[str, typer.Option(help="The account's name")],
    credits: Annotated[int, typer.Option(min=0, help="Opening credit grant")] = 0,
    email: Annotated[str | None, typer.Option(help="The owner's email")] = None,
    token_days: Annotated[int, typer.Option(min=1, help="How long the token is valid")] = 30,
) -> None:
    """Create an account with an owner and a business profile; print them and a token as JSON."""
    import asyncpg

    from core.auth import mint_token
    from db.seed import create_account

    settings = load_settings()

    async def main() -> dict[str, str]:
        conn = await asyncpg.connect(settings.worker_dsn)
        try:
            created = await create_account(conn, name=name, credits_granted=credits, email=email)
        finally:
            await conn.close()
        token = mint_token(settings, created.user_id, valid_for=timedelta(days=token_days))
        return {
            "account_id": str(created.account_id),
            "user_id": str(created.user_id),
            "business_profile_id": str(created.business_profile_id),
            "token": token,
        }

    typer.echo(json.dumps(asyncio.run(main())))


if __name__ == "__main__":
    app()
