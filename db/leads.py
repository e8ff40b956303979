"""Leads: the analysed Instagram accounts, one per account, business profile and username."""

from __future__ import annotations

from uuid import UUID

import asyncpg

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
    lead_id: UUID = await conn.fetchval(
        """INSERT INTO leads (account_id, business_profile_id, username, full_name, biography,
               external_url, profile_pic_url, followers_count, follows_count, posts_count,
               is_private, is_verified, is_business, business_category, engagement_rate,
               last_score, last_analysis_id, last_analyzed_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                   now())
           ON CONFLICT (account_id, business_profile_id, username) WHERE deleted_at IS NULL
           DO UPDATE SET full_name = excluded.full_name, biography = excluded.biography,
               external_url = excluded.external_url, profile_pic_url = excluded.profile_pic_url,
               followers_count = excluded.followers_count,
               follows_count = excluded.follows_count, posts_count = excluded.posts_count,
               is_private = excluded.is_private, is_verified = excluded.is_verified,
               is_business = excluded.is_business,
               business_category = excluded.business_category,
               engagement_rate = excluded.engagement_rate, last_score = excluded.last_score,
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
    )
    return lead_id


async def get(conn: Connection, lead_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM leads WHERE id = $1", lead_id)
