"""The schema works when its owner is not a superuser, as on a managed database (RDS, Cloud
SQL, Neon): row level security is FORCEd on the tenant tables, so it binds their owner,
and the functions that run with the owner's rights must still see what they read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import asyncpg
import pytest

from db import accounts, api_keys
from db.migrate import migrate
from tests.conftest import Servers, make_settings


@pytest.fixture
async def owner_database(servers: Servers) -> AsyncIterator[str]:
    """A fresh database owned, and migrated, by a role that is not a superuser."""
    name = f"oslira_owned_{uuid4().hex[:8]}"
    admin = await asyncpg.connect(servers.database_url)
    try:
        await admin.execute(f'CREATE ROLE "{name}" LOGIN NOSUPERUSER NOBYPASSRLS')
        await admin.execute(f'CREATE DATABASE "{name}" OWNER "{name}"')
        parts = urlsplit(servers.database_url)
        host = parts.netloc.rsplit("@", 1)[-1]
        url = urlunsplit(parts._replace(netloc=f"{name}@{host}", path=f"/{name}"))
        await migrate(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
        await admin.close()


async def test_api_keys_and_memberships_resolve_under_a_non_superuser_owner(
    servers: Servers, owner_database: str
) -> None:
    owner = await asyncpg.connect(owner_database)
    assert not await owner.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    await owner.close()
    settings = make_settings(servers, database_url=owner_database)
    system = await asyncpg.connect(settings.worker_dsn)
    api = await asyncpg.connect(settings.api_dsn)
    try:
        new = await accounts.create_with_owner(system, name="Owned", credits_granted=0)
        row, key = await api_keys.create(
            system, account_id=new.account_id, name="script", created_by=new.user_id
        )
        # What the request gate and the tenant dependency ask, as the API role.
        assert await api_keys.account_of(api, key) == (row["id"], new.account_id)
        members = await accounts.memberships(api, new.user_id)
        assert [(m["account_id"], m["role"]) for m in members] == [(new.account_id, "owner")]
        # The key's use is noted, through the owner's rights too.
        assert await system.fetchval(
            "SELECT last_used_at IS NOT NULL FROM api_keys WHERE id = $1", row["id"]
        )
        await system.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", row["id"])
        assert await api_keys.account_of(api, key) is None
    finally:
        await api.close()
        await system.close()
