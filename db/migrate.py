"""Applies the numbered SQL files in `db/migrations/` in order, each once, and records them.

A hand-written runner rather than a library: the migrations are plain SQL run by asyncpg,
and all this needs is ordering, a record table and a lock against two runners at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import asyncpg

from core.settings import API_ROLE, WORKER_ROLE, Settings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_LOCK_KEY = 0x05_11_2A  # any constant shared by every runner of this schema


def migration_files() -> list[tuple[int, Path]]:
    files = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        number, _, _ = path.stem.partition("_")
        files.append((int(number), path))
    return files


async def migrate(dsn: str) -> list[str]:
    """Applies pending migrations; returns the names of those it applied."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version     integer PRIMARY KEY,
                       name        text NOT NULL,
                       applied_at  timestamptz NOT NULL DEFAULT now())"""
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            applied = []
            for version, path in migration_files():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        version,
                        path.name,
                    )
                log.info("applied migration %s", path.name)
                applied.append(path.name)
            return applied
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()


async def set_role_passwords(settings: Settings) -> None:
    """Gives the API and worker roles the passwords from configuration, when set."""
    wanted = {API_ROLE: settings.db_api_password, WORKER_ROLE: settings.db_worker_password}
    if not any(wanted.values()):
        return
    conn = await asyncpg.connect(settings.require_database_url())
    try:
        for role, password in wanted.items():
            if password is not None:
                # Utility statements take no parameters; quote_literal does the escaping.
                literal = await conn.fetchval(
                    "SELECT quote_literal($1::text)", password.get_secret_value()
                )
                await conn.execute(f"ALTER ROLE {role} PASSWORD {literal}")
    finally:
        await conn.close()
