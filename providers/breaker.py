"""A circuit breaker per AI model (DESIGN.md section 3, "when the AI provider is down"):
after `threshold` failures in a row the circuit opens, and calls fail at once, without
reaching the provider, for `pause` seconds; then one call probes, and closes it on success.
Kept in memory by purgatory, so it is shared by every call of this worker process.

A refusal (`ProviderRejected`: a bad request, an unusable answer) says nothing about the
provider's health and never counts; neither does a call cancelled from outside (a run
cancelled by its user). A call that takes longer than the timeout does count."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from purgatory import AsyncCircuitBreakerFactory, ContextChanged
from purgatory.domain.model import OpenedState
from pydantic import BaseModel

from core.models import AIPart, AIUsage, BusinessContext, Profile
from providers.ai import OPENAI, OpenAIAnalyzer
from providers.errors import ProviderRejected, ProviderTimeout, ProviderUnavailable


class CircuitOpen(ProviderUnavailable):
    """The call was not made: the model's circuit is open."""


class BreakingAnalyzer:
    def __init__(
        self,
        analyzer: OpenAIAnalyzer,
        *,
        threshold: int,
        pause_seconds: float,
        timeout_seconds: float,
        on_change: Callable[[str, str], None] | None = None,
    ) -> None:
        """`on_change(circuit, state)` hears each change of a circuit's state: `opened`,
        `half-opened` or `closed` (the worker records them for /health)."""
        self._analyzer = analyzer
        self._timeout = timeout_seconds
        self._breakers = AsyncCircuitBreakerFactory(
            default_threshold=threshold,
            default_ttl=pause_seconds,
            exclude=[ProviderRejected, asyncio.CancelledError],
        )
        if on_change is not None:
            report = on_change

            def changed(name: str, kind: str, event: object) -> None:
                if kind == "state_changed" and isinstance(event, ContextChanged):
                    report(name, event.state)

            self._breakers.add_listener(changed)

    async def analyze(
        self, part: AIPart, model: str, business: BusinessContext, profile: Profile
    ) -> tuple[BaseModel, AIUsage]:
        """As `OpenAIAnalyzer.analyze`, within the model's circuit and the call's timeout
        (ProviderTimeout when it runs out)."""
        try:
            async with await self._breakers.get_breaker(f"openai:{model}"):
                try:
                    async with asyncio.timeout(self._timeout):
                        return await self._analyzer.analyze(part, model, business, profile)
                except TimeoutError as exc:
                    raise ProviderTimeout(
                        OPENAI, f"OpenAI took longer than {self._timeout:g} s to answer"
                    ) from exc
        except OpenedState:
            raise CircuitOpen(
                OPENAI, f"{model} failed repeatedly: calls wait for the circuit to close"
            ) from None
