"""Runs one structured AI call through the official OpenAI SDK (Responses API)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import openai
from pydantic import BaseModel

from core.models import AIPart, AIUsage, BusinessContext, Profile
from core.prompts import SCHEMAS, instructions, lead_input
from core.settings import ModelPrice
from providers.errors import ProviderRejected, ProviderUnavailable

OPENAI = "OpenAI"


class OpenAIAnalyzer:
    def __init__(
        self,
        client: openai.AsyncOpenAI,
        prices: dict[str, ModelPrice],
        api_key: Callable[[], str] | None = None,
    ) -> None:
        """`api_key`: what gives the key's current value (a secret rotated in Secrets
        Manager); None keeps the client's own."""
        self._client = client
        self._prices = prices
        self._api_key = api_key

    async def analyze(
        self, part: AIPart, model: str, business: BusinessContext, profile: Profile
    ) -> tuple[BaseModel, AIUsage]:
        schema = SCHEMAS[part]
        if self._api_key is not None:
            # The SDK builds each request's Authorization header from this attribute.
            self._client.api_key = self._api_key()
        try:
            response = await self._client.responses.parse(
                model=model,
                instructions=instructions(part, business),
                input=lead_input(profile),
                text_format=schema,
                # Requests sharing a business profile and task share a cacheable prefix.
                prompt_cache_key=_cache_key(part, business),
            )
        except (
            openai.APIConnectionError,
            openai.RateLimitError,
            openai.InternalServerError,
        ) as exc:  # refused, reset, dropped, timed out; 429; 5xx
            raise ProviderUnavailable(OPENAI, f"OpenAI unavailable: {exc}") from exc
        except openai.APIStatusError as exc:
            if exc.status_code in (408, 409) or exc.status_code >= 500:
                raise ProviderUnavailable(OPENAI, f"OpenAI answered {exc.status_code}") from exc
            raise ProviderRejected(
                OPENAI, f"OpenAI answered {exc.status_code}: {exc.message}"
            ) from exc
        except openai.OpenAIError as exc:  # malformed or refused structured output
            raise ProviderRejected(OPENAI, f"OpenAI answer unusable: {exc}") from exc
        parsed = response.output_parsed
        if parsed is None:
            raise ProviderRejected(OPENAI, "OpenAI returned no structured output (refusal)")
        return parsed, self._usage(model, response.usage)

    def _usage(self, model: str, usage: object) -> AIUsage:
        input_tokens = getattr(usage, "input_tokens", 0) or 0
        details = getattr(usage, "input_tokens_details", None)
        cached = getattr(details, "cached_tokens", 0) or 0
        output_tokens = getattr(usage, "output_tokens", 0) or 0
        price = self._prices.get(model)
        cost = 0.0
        if price is not None:
            cost = (
                (input_tokens - cached) * price.input
                + cached * price.cached_input
                + output_tokens * price.output
            ) / 1_000_000
        return AIUsage(
            model=model,
            input_tokens=input_tokens,
            cached_input_tokens=cached,
            output_tokens=output_tokens,
            cost_usd=round(cost, 8),
        )


def _cache_key(part: AIPart, business: BusinessContext) -> str:
    return hashlib.sha256(f"{part}:{business.id}".encode()).hexdigest()[:32]
