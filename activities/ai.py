"""Step 9: one structured AI call; deep and xray run two of them in parallel."""

from __future__ import annotations

import asyncpg
from temporalio import activity

from activities.common import done_since, expected, now, provider_call
from core.errors import ErrorCode, business_error, provider_failure
from core.models import AIInput, AIOutput
from core.settings import Settings
from core.tiers import Step
from providers.ai import AIRejectedError, AIUnavailableError, OpenAIAnalyzer


class AIActivities:
    def __init__(self, analyzer: OpenAIAnalyzer, pool: asyncpg.Pool, settings: Settings) -> None:
        self._analyzer = analyzer
        self._pool = pool
        self._settings = settings

    @activity.defn
    async def analyze_profile(self, input: AIInput) -> AIOutput:
        """The step's outcome is persisted by the commit step, with the others."""
        started = now()
        try:
            async with provider_call(self._pool, input.run_id, Step.analyze_profile, started):
                parsed, usage = await self._analyzer.analyze(
                    input.part, self._settings.model_for(input.tier), input.business, input.profile
                )
        except AIRejectedError as exc:
            raise expected(business_error(ErrorCode.ai_failed, str(exc))) from exc
        except AIUnavailableError as exc:
            raise expected(provider_failure(ErrorCode.ai_failed, str(exc))) from exc
        return AIOutput(
            done=done_since(started), part=input.part, fields=parsed.model_dump(), usage=usage
        )
