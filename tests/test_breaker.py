"""The AI circuit breaker, through the real OpenAI SDK against the simulator: it opens after
repeated failures and then fails at once without reaching the provider, per model; after
its pause one call probes and closes it; refusals never count."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import httpx
import openai
import pytest

from core.models import BusinessContext, Profile
from core.settings import DEFAULT_MODEL_PRICES
from providers.ai import OpenAIAnalyzer
from providers.breaker import BreakingAnalyzer, CircuitOpen
from providers.errors import ProviderRejected, ProviderUnavailable

BUSINESS = BusinessContext(id=uuid4(), name="Acme", offering="Coffee")


def _breaking(servers, pause_seconds: float) -> BreakingAnalyzer:
    """Two failures in a row open a model's circuit, for `pause_seconds`."""
    client = openai.AsyncOpenAI(api_key="k", base_url=f"{servers.simulator_url}/v1", max_retries=0)
    return BreakingAnalyzer(
        OpenAIAnalyzer(client, DEFAULT_MODEL_PRICES),
        threshold=2,
        pause_seconds=pause_seconds,
        timeout_seconds=30,
    )


async def _calls(servers) -> int:
    async with httpx.AsyncClient(base_url=servers.simulator_url) as http:
        return int((await http.get("/_simulator/openai/calls")).json()["calls"])


async def test_a_models_circuit_opens_fails_fast_and_closes_after_a_probe(servers):
    breaking = _breaking(servers, pause_seconds=1.0)
    down = Profile(username=f"downai_{uuid4().hex[:6]}", followers_count=10)
    healthy = Profile(username=f"healthy_{uuid4().hex[:6]}", followers_count=10)

    for _ in range(2):  # the provider's own failures
        with pytest.raises(ProviderUnavailable) as failed:
            await breaking.analyze("fit_light", "gpt-5-nano", BUSINESS, down)
        assert not isinstance(failed.value, CircuitOpen)
    before = await _calls(servers)
    # Open: even a healthy profile fails at once, and nothing reaches the provider.
    with pytest.raises(CircuitOpen):
        await breaking.analyze("fit_light", "gpt-5-nano", BUSINESS, healthy)
    assert await _calls(servers) == before
    # Another model's circuit is its own.
    await breaking.analyze("fit_light", "gpt-5-mini", BUSINESS, healthy)
    assert await _calls(servers) == before + 1

    await asyncio.sleep(1.2)  # the pause: one call probes, succeeds, and closes the circuit
    await breaking.analyze("fit_light", "gpt-5-nano", BUSINESS, healthy)
    await breaking.analyze("fit_light", "gpt-5-nano", BUSINESS, healthy)
    assert await _calls(servers) == before + 3

    # A failed probe opens it again at once.
    for _ in range(2):
        with pytest.raises(ProviderUnavailable):
            await breaking.analyze("fit_light", "gpt-5-nano", BUSINESS, down)
    await asyncio.sleep(1.2)
    with pytest.raises(ProviderUnavailable) as probe:
        await breaking.analyze("fit_light", "gpt-5-nano", BUSINESS, down)
    assert not isinstance(probe.value, CircuitOpen)  # the probe reached the provider
    with pytest.raises(CircuitOpen):
        await breaking.analyze("fit_light", "gpt-5-nano", BUSINESS, healthy)


async def test_refusals_do_not_open_the_circuit(servers):
    # The provider refuses the request (400), which says nothing of its health.
    breaking = _breaking(servers, pause_seconds=60)
    profile = Profile(username=f"rejectai_{uuid4().hex[:6]}")
    before = await _calls(servers)
    for _ in range(4):
        with pytest.raises(ProviderRejected):
            await breaking.analyze("fit_light", "gpt-5-nano", BUSINESS, profile)
    assert await _calls(servers) == before + 4  # every call reached the provider


async def test_the_simulators_outage_setting_takes_every_model_down_and_back(servers):
    breaking = _breaking(servers, pause_seconds=60)
    healthy = Profile(username=f"healthy_{uuid4().hex[:6]}", followers_count=10)
    async with httpx.AsyncClient(base_url=servers.simulator_url) as http:
        assert (await http.post("/_simulator/openai/outage?down=true")).json() == {"down": True}
        try:
            with pytest.raises(ProviderUnavailable) as failed:
                await breaking.analyze("fit_light", "gpt-5", BUSINESS, healthy)
            assert not isinstance(failed.value, CircuitOpen)  # the provider answered 503
        finally:
            await http.post("/_simulator/openai/outage?down=false")
    await breaking.analyze("fit_light", "gpt-5", BUSINESS, healthy)
