"""Request dependencies: the signed-in user, their tenant, and the process-wide clients.

`Tenant` resolves the account from the JWT's user and `X-Account-Id`, and opens transactions
with `app.user_id` and `app.account_id` set, so row level security scopes every query to
that account. Routes never set those themselves.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Literal
from uuid import UUID

import asyncpg
import sentry_sdk
from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client

from api import ratelimit
from api.errors import Forbidden, Invalid, Unauthorized
from core import logs
from core.auth import InvalidToken, Principal, verify_token
from core.settings import Settings
from db import accounts
from db.pool import Connection, connection
from db.rate_limits import Verdict

_bearer = HTTPBearer(
    auto_error=False,
    description="A JWT (HS256) whose `sub` is the user id, or an account's API key (`osk_...`)",
)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_temporal(request: Request) -> Client:
    client: Client = request.app.state.temporal
    return client


class Breaker:
    """Open for a while after a failure: callers skip what it guards until then."""

    def __init__(self) -> None:
        self._open_until = 0.0

    @property
    def open(self) -> bool:
        return time.monotonic() < self._open_until

    def trip(self, seconds: float) -> None:
        self._open_until = time.monotonic() + seconds

    def reset(self) -> None:
        self._open_until = 0.0


IsolationLevel = Literal["read_committed", "repeatable_read", "serializable"]


@dataclass
class TemporalHealth:
    """What this process has lately learnt of Temporal. `server` opens when the server
    could not be reached: starts answer 503 and progress reads the database, at once.
    `queries` opens when workflows did not answer a query in time (no worker): progress
    reads the database without waiting."""

    server: Breaker = field(default_factory=Breaker)
    queries: Breaker = field(default_factory=Breaker)


def get_temporal_health(request: Request) -> TemporalHealth:
    health: TemporalHealth = request.app.state.temporal_health
    return health


SettingsDep = Annotated[Settings, Depends(get_settings)]
Temporal = Annotated[Client, Depends(get_temporal)]
TemporalState = Annotated[TemporalHealth, Depends(get_temporal_health)]


def current_caller(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Who calls, as the request gate found it (it refuses /api requests without a valid
    JWT or API key before their body is read); a JWT is verified here for routes outside
    the gate."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is not None:
        return principal
    if credentials is None:
        raise Unauthorized("A bearer token is required.")
    try:
        return Principal(user_id=verify_token(settings, credentials.credentials))
    except InvalidToken as exc:
        raise Unauthorized(str(exc)) from exc


Caller = Annotated[Principal, Depends(current_caller)]


@dataclass
class TenantScope:
    """The account a request acts for, and a way to open transactions scoped to it.

    A connection is held only for the length of a transaction, never across a call to
    Temporal: a request waiting on Temporal holds none of the pool.
    """

    user_id: UUID | None  # None for an API key: it acts for its account, not a person
    account_id: UUID
    role: str
    pool: asyncpg.Pool
    api_key_id: UUID | None = None
    # This request's rate limit verdicts by family; the response carries their headers.
    rate_limits: dict[str, Verdict] = field(default_factory=dict)

    def require_manager(self) -> None:
        """Managing the account (API keys, billing) takes an owner or admin, signed in."""
        if self.api_key_id is not None:
            raise Forbidden("An API key cannot do this: sign in as an owner or admin.")
        if self.role not in ("owner", "admin"):
            raise Forbidden("Only an owner or admin of the account can do this.")

    @asynccontextmanager
    async def transaction(
        self, *, isolation: IsolationLevel = "read_committed", readonly: bool = False
    ) -> AsyncIterator[Connection]:
        """Commits on success, rolls back on error; RLS sees only this account. A report
        that reads several statements asks for one snapshot (`repeatable_read`)."""
        async with (
            connection(self.pool) as conn,
            conn.transaction(isolation=isolation, readonly=readonly),
        ):
            await _set_tenant(conn, self.user_id, self.account_id)
            yield conn


@asynccontextmanager
async def user_transaction(pool: asyncpg.Pool, user_id: UUID) -> AsyncIterator[Connection]:
    """A transaction that sees the user's own rows (memberships, their accounts) and no
    tenant's data: for what a user asks before choosing an account."""
    async with connection(pool) as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.user_id', $1, true)", str(user_id))
        yield conn


async def _set_tenant(conn: Connection, user_id: UUID | None, account_id: UUID) -> None:
    await conn.execute(
        "SELECT set_config('app.user_id', $1, true), set_config('app.account_id', $2, true)",
        str(user_id) if user_id else "",
        str(account_id),
    )


async def tenant(
    request: Request,
    caller: Caller,
    settings: SettingsDep,
    x_account_id: Annotated[
        UUID | None,
        Header(
            description="The account to act for; required when the user belongs to several",
            examples=["8d3f2c1e-5b7a-4e0f-9a6d-2c4b1e7f0a93"],
        ),
    ] = None,
) -> TenantScope:
    """The account the request acts for, once its call is counted against the account's
    per-minute rate limit (429 over it), on the connection the account was found with."""
    pool: asyncpg.Pool = request.app.state.pool
    verdicts: dict[str, Verdict] = {}
    setattr(request.state, ratelimit.STATE_KEY, verdicts)  # the middleware reads them
    async with connection(pool) as conn:
        scope = await _scope(conn, pool, caller, x_account_id)
        sentry_sdk.set_tag("account_id", str(scope.account_id))
        logs.bind(account_id=scope.account_id)  # a refusal for the rate limit carries it too
        scope.rate_limits = verdicts
        await ratelimit.check(conn, settings, scope.account_id, "requests", 1, verdicts)
    return scope


async def _scope(
    conn: Connection, pool: asyncpg.Pool, caller: Principal, x_account_id: UUID | None
) -> TenantScope:
    if caller.account_id is not None:  # an API key: its account, nothing else
        if x_account_id not in (None, caller.account_id):
            raise Forbidden("This API key acts for another account.", field="X-Account-Id")
        return TenantScope(
            user_id=None,
            account_id=caller.account_id,
            role="member",
            pool=pool,
            api_key_id=caller.api_key_id,
        )
    user_id = caller.user_id
    assert user_id is not None
    members = await accounts.memberships(conn, user_id)
    roles = {m["account_id"]: m["role"] for m in members}
    if x_account_id is not None:
        if x_account_id not in roles:
            raise Forbidden("You are not a member of this account.", field="X-Account-Id")
        account_id = x_account_id
    elif len(roles) == 1:
        account_id = next(iter(roles))
    elif not roles:
        raise Forbidden("This user belongs to no account.")
    else:
        raise Invalid(
            "This user belongs to several accounts: say which with X-Account-Id.",
            code="account_required",
            field="X-Account-Id",
        )
    return TenantScope(user_id=user_id, account_id=account_id, role=roles[account_id], pool=pool)


Tenant = Annotated[TenantScope, Depends(tenant)]
