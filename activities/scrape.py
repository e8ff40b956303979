"""Step 7 (scrape the public profile with Apify) and step 8 (store it in the cache).

Storing is done here, right after the scrape, rather than as an activity of its own: it saves
a workflow round trip per run, and a cache that cannot be written is not worth failing or
retrying a scrape for. The step is recorded as failed and the run goes on.
"""

from __future__ import annotations

import logging

import asyncpg
from temporalio import activity

from activities.common import done_since, expected, now, provider_call, record
from core.errors import ErrorCode, business_error, provider_failure
from core.models import ScrapeInput, ScrapeOutput, StepRecord
from core.settings import Settings
from core.tiers import Step
from db import analyses
from providers.apify import (
    ApifyScraper,
    PrivateProfileError,
    ProfileNotFoundError,
    ScrapeRejectedError,
    ScrapeUnavailableError,
)
from providers.cache import ProfileCache

log = logging.getLogger(__name__)


class ScrapeActivities:
    def __init__(
        self, scraper: ApifyScraper, cache: ProfileCache, pool: asyncpg.Pool, settings: Settings
    ) -> None:
        self._scraper = scraper
        self._cache = cache
        self._pool = pool
        self._settings = settings

    @activity.defn
    async def scrape_profile(self, input: ScrapeInput) -> ScrapeOutput:
        started = now()
        try:
            async with provider_call(self._pool, input.run_id, Step.scrape_profile, started):
                profile = await self._scraper.scrape(input.username)
        except ProfileNotFoundError as exc:
            raise expected(business_error(ErrorCode.profile_not_found, str(exc))) from exc
        except PrivateProfileError as exc:
            raise expected(business_error(ErrorCode.profile_private, str(exc))) from exc
        except ScrapeRejectedError as exc:
            raise expected(business_error(ErrorCode.scrape_failed, str(exc))) from exc
        except ScrapeUnavailableError as exc:
            raise expected(provider_failure(ErrorCode.scrape_failed, str(exc))) from exc
        scraped = done_since(started)

        try:
            await self._cache.put(profile)
            stored: StepRecord = record(Step.store_in_cache, done_since(scraped.finished_at))
        except Exception:
            log.warning("could not store @%s in the cache", input.username, exc_info=True)
            stored = StepRecord(
                name=Step.store_in_cache,
                status="failed",
                started_at=scraped.finished_at,
                finished_at=now(),
                attempt=scraped.attempt,
            )
        async with self._pool.acquire() as conn:
            await analyses.record_step(
                conn, input.run_id, record(Step.scrape_profile, scraped), stored
            )
        return ScrapeOutput(
            done=scraped,
            profile=profile,
            cost_usd=self._settings.apify_usd_per_profile,
            stored=stored,
        )
