"""Leads: the analysed Instagram accounts, one per account, business profile and username."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from core.changes import Snapshot, changes
from core.engagement import engagement
from core.models import Profile
from db.pool import Connection


async def upsert(
    conn: Connection,
    *,
    account_id: UUID,
    business_profile_id: UUID,
    profile: Profile,
    score: int | None,
    analysis_id: UUID,
) -> UUID:
    """Creates or refreshes the lead, with its engagement figures; what changed since its
    previous analysis (core.changes) is kept in its history, seen by this analysis."""
    previous = await conn.fetchrow(
        """SELECT followers_count, biography, is_private, is_verified FROM leads
           WHERE account_id = $1 AND business_profile_id = $2 AND username = $3
             AND deleted_at IS NULL
           FOR UPDATE""",
        account_id,
        business_profile_id,
        profile.username,
    )
    lead_id: UUID = await conn.fetchval(
        """INSERT INTO leads (account_id, business_profile_id, username, full_name, biography,
               external_url, profile_pic_url, followers_count, follows_count, posts_count,
               is_private, is_verified, is_business, business_category, engagement_rate,
               last_score, last_analysis_id, last_analyzed_at, engagement)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                   now(), $18)
           ON CONFLICT (account_id, business_profile_id, username) WHERE deleted_at IS NULL
           DO UPDATE SET full_name = excluded.full_name, biography = excluded.biography,
               external_url = excluded.external_url, profile_pic_url = excluded.profile_pic_url,
               followers_count = excluded.followers_count,
               follows_count = excluded.follows_count, posts_count = excluded.posts_count,
               is_private = excluded.is_private, is_verified = excluded.is_verified,
               is_business = excluded.is_business,
               business_category = excluded.business_category,
               engagement_rate = excluded.engagement_rate, engagement = excluded.engagement,
               last_score = excluded.last_score,
               last_analysis_id = excluded.last_analysis_id, last_analyzed_at = now(),
               updated_at = now()
           RETURNING id""",
        account_id,
        business_profile_id,
        profile.username,
        profile.full_name,
        profile.biography,
        profile.external_url,
        profile.profile_pic_url,
        profile.followers_count,
        profile.follows_count,
        profile.posts_count,
        profile.is_private,
        profile.is_verified,
        profile.is_business,
        profile.business_category,
        profile.engagement_rate,
        score,
        analysis_id,
        engagement(profile).model_dump(mode="json"),
    )
    if previous is not None:
        now = Snapshot(
            followers_count=profile.followers_count,
            biography=profile.biography,
            is_private=profile.is_private,
            is_verified=profile.is_verified,
        )
        found = changes(Snapshot.model_validate(dict(previous)), now)
        await conn.executemany(
            """INSERT INTO lead_changes (account_id, lead_id, analysis_id, field, before, after,
                   amount)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (analysis_id, field) DO NOTHING""",
            [
                (account_id, lead_id, analysis_id, c.field, c.before, c.after, c.amount)
                for c in found
            ],
        )
    return lead_id


async def changes_seen_by(conn: Connection, analysis_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT field, before, after, amount, detected_at FROM lead_changes
           WHERE analysis_id = $1 ORDER BY id""",
        analysis_id,
    )


async def change_history(conn: Connection, lead_id: UUID, limit: int = 100) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT analysis_id, field, before, after, amount, detected_at FROM lead_changes
           WHERE lead_id = $1 ORDER BY detected_at DESC, id DESC LIMIT $2""",
        lead_id,
        limit,
    )


async def get(conn: Connection, lead_id: UUID) -> asyncpg.Record | None:
    """A live lead's row; None once it is deleted (gone from every lookup)."""
    return await conn.fetchrow("SELECT * FROM leads WHERE id = $1 AND deleted_at IS NULL", lead_id)


# What the list sorts by: the same expressions as the indexes of migration 0010.
SORT_KEYS = {
    "last_analyzed_at": "coalesce(l.last_analyzed_at, l.created_at)",
    "score": "coalesce(l.last_score, -1)",
    "followers": "l.followers_count",
}
RESTORE_DAYS = 30

_LEAD_COLUMNS = """l.id, l.business_profile_id, l.username, l.full_name, l.biography,
    l.external_url, l.profile_pic_url, l.followers_count, l.follows_count, l.posts_count,
    l.is_private, l.is_verified, l.is_business, l.business_category, l.engagement_rate,
    l.engagement, l.last_score AS score, l.last_analysis_id, l.last_analyzed_at, l.created_at,
    l.updated_at, l.deleted_at, a.analysis_type, a.result ->> 'summary' AS summary"""
_FROM = "leads l LEFT JOIN analyses a ON a.id = l.last_analysis_id"


@dataclass(frozen=True)
class LeadFilter:
    """The list's filters; None leaves one out. Text search matches a part of the username
    or the full name, case-insensitively; dates are exclusive bounds."""

    business_profile_id: UUID | None = None
    min_score: int | None = None
    max_score: int | None = None
    analysis_type: str | None = None
    q: str | None = None
    analyzed_after: datetime | None = None
    analyzed_before: datetime | None = None

    def where(self) -> tuple[str, list[Any]]:
        """The condition over live leads, and its arguments ($1 onwards)."""
        pattern = f"%{_escape_like(self.q)}%" if self.q else None
        return (
            """l.deleted_at IS NULL
               AND ($1::uuid IS NULL OR l.business_profile_id = $1)
               AND ($2::int IS NULL OR l.last_score >= $2)
               AND ($3::int IS NULL OR l.last_score <= $3)
               AND ($4::text IS NULL OR a.analysis_type = $4)
               AND ($5::text IS NULL OR l.username ILIKE $5 OR l.full_name ILIKE $5)
               AND ($6::timestamptz IS NULL OR l.last_analyzed_at > $6)
               AND ($7::timestamptz IS NULL OR l.last_analyzed_at < $7)""",
            [
                self.business_profile_id,
                self.min_score,
                self.max_score,
                self.analysis_type,
                pattern,
                self.analyzed_after,
                self.analyzed_before,
            ],
        )


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _order(sort: str, descending: bool) -> tuple[str, str]:
    """ORDER BY for a sort, and the keyset comparison that continues after a row."""
    direction, after = ("DESC", "<") if descending else ("ASC", ">")
    return f"{SORT_KEYS[sort]} {direction}, l.id {direction}", after


async def page(
    conn: Connection,
    where: LeadFilter,
    *,
    sort: str,
    descending: bool,
    limit: int,
    offset: int,
) -> tuple[int, list[asyncpg.Record]]:
    """The account's live leads (row level security picks the account), filtered and sorted."""
    condition, args = where.where()
    order, _ = _order(sort, descending)
    total = await conn.fetchval(f"SELECT count(*) FROM {_FROM} WHERE {condition}", *args)
    rows = await conn.fetch(
        f"""SELECT {_LEAD_COLUMNS} FROM {_FROM} WHERE {condition}
            ORDER BY {order} LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}""",
        *args,
        limit,
        offset,
    )
    return int(total), rows


async def chunk(
    conn: Connection,
    where: LeadFilter,
    *,
    sort: str,
    descending: bool,
    after: tuple[Any, UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """The next `limit` leads in sort order after the sort key and id `after` (None: from
    the start): an export walks the whole list this way, a short read at a time. Each row
    carries its `sort_key` for the next call."""
    condition, args = where.where()
    order, comparison = _order(sort, descending)
    key = SORT_KEYS[sort]
    n = len(args)
    if after is not None:
        condition += f" AND ({key}, l.id) {comparison} (${n + 1}, ${n + 2})"
        args += list(after)
    return await conn.fetch(
        f"""SELECT {_LEAD_COLUMNS}, {key} AS sort_key FROM {_FROM} WHERE {condition}
            ORDER BY {order} LIMIT ${len(args) + 1}""",
        *args,
        limit,
    )


async def get_live(conn: Connection, lead_id: UUID) -> asyncpg.Record | None:
    """A live lead with its latest analysis's tier and summary; None once deleted."""
    return await conn.fetchrow(
        f"SELECT {_LEAD_COLUMNS} FROM {_FROM} WHERE l.id = $1 AND l.deleted_at IS NULL",
        lead_id,
    )


async def analyses_page(
    conn: Connection, lead_id: UUID, *, limit: int, offset: int
) -> tuple[int, list[asyncpg.Record]]:
    """The runs that analysed a lead, newest first."""
    total = await conn.fetchval("SELECT count(*) FROM analyses WHERE lead_id = $1", lead_id)
    rows = await conn.fetch(
        """SELECT id, analysis_type, status, (result ->> 'score')::int AS score,
                  result ->> 'summary' AS summary, credits_charged, created_at, finished_at
           FROM analyses WHERE lead_id = $1
           ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3""",
        lead_id,
        limit,
        offset,
    )
    return int(total), rows


async def soft_delete(conn: Connection, lead_id: UUID) -> bool:
    """False when there is no live lead with this id."""
    return bool(
        await conn.fetchval(
            """UPDATE leads SET deleted_at = now(), updated_at = now()
               WHERE id = $1 AND deleted_at IS NULL RETURNING true""",
            lead_id,
        )
    )


class RestoreConflict(Exception):
    """A live lead for the same username and business profile exists meanwhile."""

    def __init__(self, live_id: UUID, username: str) -> None:
        super().__init__(f"lead {live_id} for @{username} is live")
        self.live_id = live_id
        self.username = username


async def restore(conn: Connection, lead_id: UUID) -> asyncpg.Record | None:
    """Brings back a lead deleted less than 30 days ago (by the database's clock), or
    answers a live one as it is; None when there is no such lead or it is past recovery.
    Raises RestoreConflict when its place was taken by a new lead."""
    row = await conn.fetchrow(
        f"""SELECT id, business_profile_id, username, deleted_at,
                   deleted_at > now() - interval '{RESTORE_DAYS} days' AS recoverable
            FROM leads WHERE id = $1""",
        lead_id,
    )
    if row is None or (row["deleted_at"] is not None and not row["recoverable"]):
        return None
    if row["deleted_at"] is not None:
        try:
            async with conn.transaction():  # a savepoint: a conflict leaves the rest usable
                await conn.execute(
                    "UPDATE leads SET deleted_at = NULL, updated_at = now() WHERE id = $1",
                    lead_id,
                )
        except asyncpg.UniqueViolationError:
            live_id = await conn.fetchval(
                """SELECT id FROM leads WHERE business_profile_id = $1 AND username = $2
                   AND deleted_at IS NULL""",
                row["business_profile_id"],
                row["username"],
            )
            raise RestoreConflict(live_id, row["username"]) from None
    return await get_live(conn, lead_id)
