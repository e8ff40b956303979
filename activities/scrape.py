"""Step 7: scrape the public profile with Apify."""

from __future__ import annotations

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import done_since, heartbeating, now, record, running
from core.errors import ErrorCode, business_error
from core.models import ScrapeInput, ScrapeOutput
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


class ScrapeActivities:
    def __init__(self, scraper: ApifyScraper, pool: asyncpg.Pool, settings: Settings) -> None:
        self._scraper = scraper
        self._pool = pool
        self._settings = settings

    @activity.defn
    async def scrape_profile(self, input: ScrapeInput) -> ScrapeOutput:
        started = now()
        async with self._pool.acquire() as conn:
            await analyses.record_step(conn, input.run_id, running(Step.scrape_profile, started))
        try:
            async with heartbeating():
                profile = await self._scraper.scrape(input.username)
        except ProfileNotFoundError as exc:
            raise business_error(ErrorCode.profile_not_found, str(exc)) from exc
        except PrivateProfileError as exc:
            raise business_error(ErrorCode.profile_private, str(exc)) from exc
        except ScrapeRejectedError as exc:
            raise business_error(ErrorCode.scrape_failed, str(exc)) from exc
        except ScrapeUnavailableError as exc:
            raise ApplicationError(str(exc), type="ScrapeFailed") from exc
        done = done_since(started)
        async with self._pool.acquire() as conn:
            await analyses.record_step(conn, input.run_id, record(Step.scrape_profile, done))
        return ScrapeOutput(
            done=done, profile=profile, cost_usd=self._settings.apify_usd_per_profile
        )
