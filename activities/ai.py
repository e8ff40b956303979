"""Step 9: one structured AI call; deep and xray run two of them in parallel."""

from __future__ import annotations

from temporalio import activity

from activities.common import (
    attempt,
    done_since,
    expected,
    now,
    provider_call,
    provider_failed,
    step_activity,
)
from activities.slots import ProviderSlots
from core.errors import ErrorCode, provider_unavailable
from core.models import AIInput, AIOutput
from core.settings import Settings
from providers.ai import OPENAI
from providers.breaker import BreakingAnalyzer
from providers.errors import ProviderError


class AIActivities:
    def __init__(
        self, analyzer: BreakingAnalyzer, slots: ProviderSlots, settings: Settings
    ) -> None:
        self._analyzer = analyzer
        self._slots = slots
        self._settings = settings

    @activity.defn
    @step_activity
    async def analyze_profile(self, input: AIInput) -> AIOutput:
        """The step's outcome is kept by the commit step, with the others."""
        started = now()
        tried = attempt(input.attempts_before)
        try:
            # The whole call, timed by the analyzer: one that trickles counts as failing,
            # for the model's circuit too.
            async with provider_call(), self._slots.hold(OPENAI, input.run_id, input.turn):
                parsed, usage = await self._analyzer.analyze(
                    input.part,
                    self._settings.model_for(input.tier),
                    input.business,
                    input.profile,
                )
        except TimeoutError as exc:
            raise expected(
                provider_unavailable(OPENAI, "OpenAI took too long to answer", tried)
            ) from exc
        except ProviderError as exc:
            raise provider_failed(exc, ErrorCode.ai_failed, tried) from exc
        return AIOutput(
            done=done_since(started, input.attempts_before),
            part=input.part,
            fields=parsed.model_dump(),
            usage=usage,
        )
