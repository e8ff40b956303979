"""Step 6: a cached profile fresh enough for the tier (step 8, storing, follows the scrape)."""

from __future__ import annotations

import asyncpg
from temporalio import activity

from activities.common import done_since, now, step_activity
from core import metrics
from core.models import CacheLookupInput, CacheLookupOutput
from core.progress import Step, Tracker
from core.settings import Settings
from db import analyses
from db.pool import connection
from providers.cache import ProfileCache


class CacheActivities:
    def __init__(self, cache: ProfileCache, pool: asyncpg.Pool, settings: Settings) -> None:
        self._cache = cache
        self._pool = pool
        self._settings = settings

    @activity.defn
    @step_activity
    async def check_cache(self, input: CacheLookupInput) -> CacheLookupOutput:
        """A cached profile fresh enough for the tier (CACHE_TTL_HOURS_*), or nothing."""
        started = now()
        found = await self._cache.get(input.username)
        profile, age = None, None
        if found is not None:
            cached, stored_at = found
            age = (started - stored_at).total_seconds()
            if age <= self._settings.cache_ttl_seconds(input.tier):
                profile = cached
        metrics.CACHE_LOOKUPS.labels(result="miss" if profile is None else "hit").inc()
        done = done_since(started)
        progress = Tracker(input.progress)
        progress.done(Step.check_cache, done)
        async with connection(self._pool) as conn:
            await analyses.save_progress(conn, progress.document)
        return CacheLookupOutput(done=done, profile=profile, age_seconds=age)
