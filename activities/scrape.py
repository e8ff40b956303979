"""Step 7 (scrape the public profile with Apify) and step 8 (store it in the cache).

Storing is done here, right after the scrape, rather than as an activity of its own: it saves
a workflow round trip per run, and a cache that cannot be written is not worth failing or
retrying a paid scrape for. The step is reported failed and the run goes on.
"""

from __future__ import annotations

import asyncio

import asyncpg
from temporalio import activity

from activities.common import (
    attempt,
    done_since,
    expected,
    note_progress,
    now,
    provider_call,
    provider_failed,
    step_activity,
)
from activities.slots import ProviderSlots
from core.errors import ErrorCode, provider_unavailable
from core.models import Profile, ScrapeInput, ScrapeOutput
from core.settings import Settings
from providers.apify import APIFY, ApifyScraper
from providers.cache import ProfileCache
from providers.errors import ProviderError

STORE_WITHIN = 2.0  # seconds


class ScrapeActivities:
    def __init__(
        self,
        scraper: ApifyScraper,
        cache: ProfileCache,
        slots: ProviderSlots,
        settings: Settings,
        pool: asyncpg.Pool | None = None,
    ) -> None:
        self._scraper = scraper
        self._cache = cache
        self._slots = slots
        self._settings = settings
        self._pool = pool  # for noting the step's start (note_progress)

    @activity.defn
    @step_activity
    async def scrape_profile(self, input: ScrapeInput) -> ScrapeOutput:
        started = now()
        tried = attempt(input.attempts_before)
        async with provider_call():  # heartbeats while it waits for a slot, scrapes, stores
            async with self._slots.hold(APIFY, input.run_id, input.turn):
                # Once the slot is held: the call is about to go, whatever the database does.
                await note_progress(self._pool, input.progress)
                profile = await self._scrape(input.username, tried)
            scraped = done_since(started, input.attempts_before)
            stored = await self._store(profile)
        return ScrapeOutput(
            done=scraped,
            profile=profile,
            cost_usd=self._settings.apify_usd_per_profile,
            store=done_since(scraped.finished_at, input.attempts_before),
            stored=stored,
        )

    async def _scrape(self, username: str, tried: int) -> Profile:
        try:
            # The whole call, not only each read: a provider that trickles counts as failing.
            async with asyncio.timeout(self._settings.apify_timeout_seconds):
                return await self._scraper.scrape(username)
        except TimeoutError as exc:
            raise expected(
                provider_unavailable(APIFY, "Apify took too long to answer", tried)
            ) from exc
        except ProviderError as exc:
            raise provider_failed(exc, ErrorCode.scrape_failed, tried) from exc

    async def _store(self, profile: Profile) -> bool:
        """Step 8, best-effort and brief: a paid scrape never waits on the cache."""
        try:
            async with asyncio.timeout(STORE_WITHIN):
                await self._cache.put(profile)
        except Exception as exc:
            activity.logger.warning("@%s not stored in the cache: %r", profile.username, exc)
            return False
        return True
