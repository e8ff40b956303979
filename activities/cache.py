"""Step 6: a cached profile fresh enough for the tier (step 8, storing, follows the scrape)."""

from __future__ import annotations

import asyncpg
from temporalio import activity

from activities.common import done_since, now, record
from core.models import CacheLookupInput, CacheLookupOutput
from core.settings import Settings
from core.tiers import Step
from db import analyses
from providers.cache import ProfileCache


class CacheActivities:
    def __init__(self, cache: ProfileCache, pool: asyncpg.Pool, settings: Settings) -> None:
        self._cache = cache
        self._pool = pool
        self._settings = settings

    @activity.defn
    async def check_cache(self, input: CacheLookupInput) -> CacheLookupOutput:
        """A cached profile fresh enough for the tier (24 h / 12 h / 6 h), or nothing."""
        started = now()
        found = await self._cache.get(input.username)
        profile, age = None, None
        if found is not None:
            cached, stored_at = found
            age = (started - stored_at).total_seconds()
            if age <= self._settings.cache_ttl_seconds(input.tier):
                profile = cached
        done = done_since(started)
        async with self._pool.acquire() as conn:
            await analyses.record_step(conn, input.run_id, record(Step.check_cache, done))
        return CacheLookupOutput(done=done, profile=profile, age_seconds=age)
