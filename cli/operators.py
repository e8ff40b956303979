"""Operator commands: accounts, tokens and credit grants, run against the system role.

Each validates its input before it writes, writes in one transaction, and answers a refusal
with one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any, NoReturn, TypeVar
from uuid import UUID, uuid4

import asyncpg
import typer

from core.auth import MAX_TOKEN_DAYS, mint_token
from core.settings import ConfigurationError, Settings

T = TypeVar("T")

accounts_app = typer.Typer(no_args_is_help=True, help="Create and list accounts.")
tokens_app = typer.Typer(no_args_is_help=True, help="Issue bearer tokens.")
credits_app = typer.Typer(no_args_is_help=True, help="Move credits by hand (adjustments).")
api_keys_app = typer.Typer(no_args_is_help=True, help="API keys for scripts.")

MAX_NAME = 200
MAX_EMAIL = 254
MAX_CREDITS = 1_000_000_000
MAX_REASON = 500


class Refused(Exception):
    """An operator command that cannot do what was asked; the message says why."""


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def settings_or_exit() -> Settings:
    from pydantic import ValidationError

    from core.settings import describe, load_settings

    try:
        return load_settings()
    except ValidationError as exc:
        fail(describe(exc))


def require_secret(settings: Settings) -> None:
    try:
        settings.require_jwt_secret()
    except ConfigurationError as exc:
        fail(str(exc))


def run_with_system_connection(
    settings: Settings, work: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T:
    """Runs `work` on one worker-role connection; refusals and outages become clear exits."""

    async def main() -> T:
        conn = await asyncpg.connect(settings.worker_dsn, timeout=10)
        try:
            return await work(conn)
        finally:
            await conn.close()

    try:
        return asyncio.run(main())
    except Refused as exc:
        fail(str(exc))
    except ConfigurationError as exc:
        fail(str(exc))
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as exc:
        fail(f"cannot reach the database: {exc}")
    except asyncpg.PostgresError as exc:  # a wrong password, a missing migration, ...
        fail(f"the database refused: {exc}")


def _echo_json(value: dict[str, Any]) -> None:
    typer.echo(json.dumps(value, default=str))


def _text(value: str, option: str, max_length: int) -> str:
    value = value.strip()
    if not value:
        fail(f"{option} must not be empty")
    if len(value) > max_length:
        fail(f"{option} is longer than {max_length} characters")
    if "\x00" in value:
        fail(f"{option} must not contain NUL characters")
    return value


def _email(value: str | None) -> str | None:
    if value is None:
        return None
    value = _text(value, "--email", MAX_EMAIL).lower()
    local, at, domain = value.partition("@")
    if not (local and at and "." in domain) or " " in value:
        fail("--email is not an email address")
    return value


# --- accounts -----------------------------------------------------------------------------


@accounts_app.command("create")
def accounts_create(
    name: Annotated[str, typer.Option(help="The account's name (1-200 characters)")],
    credits: Annotated[int, typer.Option(min=0, max=MAX_CREDITS, help="Opening credit grant")] = 0,
    email: Annotated[str | None, typer.Option(help="The owner's email (unique)")] = None,
    token_days: Annotated[
        int, typer.Option(min=1, max=MAX_TOKEN_DAYS, help="How long the token is valid")
    ] = 30,
    plan: Annotated[str, typer.Option(help="One of the plans in PLANS")] = "free",
) -> None:
    """Create an account with an owner and a business profile; print them and a token as JSON."""
    from db import accounts

    name = _text(name, "--name", MAX_NAME)
    checked_email = _email(email)
    settings = settings_or_exit()
    require_secret(settings)  # before anything is written
    if plan not in settings.plans:
        raise typer.BadParameter(
            f"no plan {plan!r}: PLANS has {', '.join(sorted(settings.plans))}",
            param_hint="--plan",
        )
    valid_for = timedelta(days=token_days)

    async def work(conn: asyncpg.Connection) -> dict[str, str]:
        async with conn.transaction():
            if checked_email and await accounts.email_taken(conn, checked_email):
                raise Refused(f"a user with email {checked_email} already exists")
            try:
                created = await accounts.create_with_owner(
                    conn, name=name, credits_granted=credits, email=checked_email, plan=plan
                )
            except asyncpg.UniqueViolationError as exc:  # the same email, created meanwhile
                raise Refused(f"a user with email {checked_email} already exists") from exc
        return {
            "account_id": str(created.account_id),
            "user_id": str(created.user_id),
            "business_profile_id": str(created.business_profile_id),
            "token": mint_token(settings, created.user_id, valid_for=valid_for),
        }

    _echo_json(run_with_system_connection(settings, work))


@accounts_app.command("list")
def accounts_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """Every account with its balance and members, newest first."""
    from db import accounts

    settings = settings_or_exit()
    rows = run_with_system_connection(settings, accounts.overview)
    if as_json:
        for row in rows:
            _echo_json(row)
        return
    if not rows:
        typer.echo("no accounts")
        return
    typer.echo(f"{'account_id':36}  {'balance':>9}  {'members':>7}  {'created':16}  name")
    for row in rows:
        typer.echo(
            f"{row['account_id']!s:36}  {row['balance']:>9}  {row['members']:>7}  "
            f"{row['created_at']:%Y-%m-%d %H:%M}  {row['name']}"
        )


# --- tokens -------------------------------------------------------------------------------


@tokens_app.command("issue")
def tokens_issue(
    user: Annotated[UUID, typer.Option(help="The user's id")],
    days: Annotated[
        int, typer.Option(min=1, max=MAX_TOKEN_DAYS, help="How long the token is valid")
    ] = 30,
) -> None:
    """Print a bearer token for an existing user."""
    from db import accounts

    settings = settings_or_exit()
    require_secret(settings)

    async def work(conn: asyncpg.Connection) -> None:
        if not await accounts.user_exists(conn, user):
            raise Refused(f"no user {user}")

    run_with_system_connection(settings, work)
    typer.echo(mint_token(settings, user, valid_for=timedelta(days=days)))


# --- credits ------------------------------------------------------------------------------


@credits_app.command("grant")
def credits_grant(
    account: Annotated[UUID, typer.Option(help="The account's id")],
    amount: Annotated[int, typer.Option(min=1, max=MAX_CREDITS, help="Credits to add")],
    reason: Annotated[str, typer.Option(help="Why, kept on the ledger row")],
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Run again with the same key and nothing more is granted"),
    ] = None,
) -> None:
    """Add credits to an account as an `adjustment` on its ledger; print the movement."""
    from db import accounts, credits

    reason = _text(reason, "--reason", MAX_REASON)
    given = (
        _text(idempotency_key, "--idempotency-key", 200) if idempotency_key is not None else uuid4()
    )
    key = f"adjustment:{account}:{given}"  # keys are unique across accounts: scope it
    settings = settings_or_exit()

    async def work(conn: asyncpg.Connection) -> dict[str, Any]:
        async with conn.transaction():
            if not await accounts.account_exists(conn, account):
                raise Refused(f"no account {account}")
            movement = await credits.grant(
                conn,
                account_id=account,
                amount=amount,
                key=key,
                kind="adjustment",
                description=reason,
            )
            if not movement.new:
                earlier = await credits.description_of(conn, key)
                if (movement.delta, earlier) != (amount, reason):
                    raise Refused(
                        f"the key {given} was already used for {movement.delta} credits "
                        f"({earlier!r})"
                    )
        return {
            "account_id": str(account),
            "amount": movement.delta,
            "balance_after": movement.balance_after,
            "idempotency_key": key,
            "applied": "now" if movement.new else "earlier, with the same key",
        }

    _echo_json(run_with_system_connection(settings, work))


# --- API keys -----------------------------------------------------------------------------


@api_keys_app.command("create")
def api_keys_create(
    account: Annotated[UUID, typer.Option(help="The account's id")],
    name: Annotated[str, typer.Option(help="What the key is for (1-100 characters)")] = "script",
) -> None:
    """Create an API key for an account; print it as JSON (the key is shown this once)."""
    from db import accounts, api_keys

    name = _text(name, "--name", 100)
    settings = settings_or_exit()

    async def work(conn: asyncpg.Connection) -> dict[str, Any]:
        async with conn.transaction():
            if not await accounts.account_exists(conn, account):
                raise Refused(f"no account {account}")
            row, key = await api_keys.create(conn, account_id=account, name=name, created_by=None)
        return {"id": str(row["id"]), "account_id": str(account), "name": name, "key": key}

    _echo_json(run_with_system_connection(settings, work))
