"""Step 9: one structured AI call; deep and xray run two of them in parallel.

When the provider is down and `AI_FALLBACK=rules`, the rule-based analyzer (core.rules)
answers instead: at once when the model's circuit is open (the provider is known to be
down), or when the step's last try fails. The run then completes marked `"engine": "rules"`
and is refunded by the commit step."""

from __future__ import annotations

from datetime import datetime

import asyncpg
from temporalio import activity

from activities.common import (
    attempt,
    done_since,
    note_progress,
    now,
    provider_call,
    provider_failed,
    step_activity,
)
from activities.slots import ProviderSlots
from core.errors import ErrorCode
from core.models import AIInput, AIOutput
from core.prompts import PROMPT_VERSION
from core.rules import RulesAnalyzer
from core.settings import Settings
from providers.ai import OPENAI
from providers.breaker import BreakingAnalyzer, CircuitOpen
from providers.errors import ProviderError, ProviderUnavailable


class AIActivities:
    def __init__(
        self,
        analyzer: BreakingAnalyzer,
        slots: ProviderSlots,
        settings: Settings,
        rules: RulesAnalyzer | None = None,
        pool: asyncpg.Pool | None = None,
    ) -> None:
        self._analyzer = analyzer
        self._slots = slots
        self._settings = settings
        self._rules = rules
        self._pool = pool  # for noting the step's start (note_progress)

    @activity.defn
    @step_activity
    async def analyze_profile(self, input: AIInput) -> AIOutput:
        """The step's outcome is kept by the commit step, with the others."""
        started = now()
        tried = attempt(input.attempts_before)
        try:
            # The whole call, timed by the analyzer (ProviderTimeout): one that trickles
            # counts as failing, for the model's circuit too.
            async with provider_call(), self._slots.hold(OPENAI, input.run_id, input.turn):
                # Once the slot is held: the call is about to go, whatever the database does.
                await note_progress(self._pool, input.progress)
                parsed, usage = await self._analyzer.analyze(
                    input.part,
                    self._settings.model_for(input.tier),
                    input.business,
                    input.profile,
                )
        except ProviderError as exc:
            if self._rules is not None and falls_back(exc, last_try=input.last_try):
                return self._by_rules(input, started, exc.message)
            raise provider_failed(exc, ErrorCode.ai_failed, tried) from exc
        return AIOutput(
            done=done_since(started, input.attempts_before),
            part=input.part,
            fields={**parsed.model_dump(), "engine": "ai", "engine_version": PROMPT_VERSION},
            usage=usage,
        )

    def _by_rules(self, input: AIInput, started: datetime, why: str) -> AIOutput:
        assert self._rules is not None
        activity.logger.warning(
            "run %s: %s; the rule-based analyzer answers %s", input.run_id, why, input.part
        )
        parsed = self._rules.analyze(input.part, input.business, input.profile)
        return AIOutput(
            done=done_since(started, input.attempts_before),
            part=input.part,
            fields={
                **parsed.model_dump(),
                "engine": "rules",
                "engine_version": self._rules.version,
            },
            engine="rules",
        )


def falls_back(failure: ProviderError, *, last_try: bool) -> bool:
    """Whether the rules answer for a failed call: the provider is down (a refusal says
    nothing of that, and never falls back), and either its circuit is open (it is known to
    be down: no need to wait) or this try was the step's last."""
    if not isinstance(failure, ProviderUnavailable):
        return False
    return isinstance(failure, CircuitOpen) or last_try
