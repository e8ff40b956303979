"""What the prompt-cache layout saves, and what the rule-based analyzer costs, printed as JSON.

AI cost: for each tier, N leads analysed for one business profile through the real OpenAI SDK
against the OpenAI simulator (in process, over ASGI; it reports cached input tokens the way
OpenAI does), priced at the configured list prices. Compared with the same calls made with no
prefix reuse (a new business profile for every lead: what a layout with the lead first would
get). The simulator counts ~4 characters per token; real tokenizers differ a little.

Rules: the rule-based analyzer's time per lead for each tier's calls (content intelligence,
with language detection and sentiment, included), over profiles from the Apify simulator.

Usage: .venv/bin/python bench/ai_bench.py [--leads 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from statistics import mean, quantiles
from uuid import uuid4

import httpx
import openai

from core.models import BusinessContext
from core.rules import RulesAnalyzer
from core.settings import DEFAULT_MODEL_PRICES
from core.tiers import TIER_PARTS, Tier
from providers.ai import OpenAIAnalyzer
from providers.apify import parse_profile
from simulators.apify import profile_item
from simulators.app import create_app

MODELS = {Tier.light: "gpt-5-nano", Tier.deep: "gpt-5-mini", Tier.xray: "gpt-5"}


def _business(name: str) -> BusinessContext:
    return BusinessContext(
        id=uuid4(),
        name=name,
        description="Meal plans for people who train",
        offering="High-protein meal plans delivered weekly",
        target_audience="fitness coaches and gym goers",
    )


async def ai_costs(leads: int) -> dict[str, object]:
    app = create_app(apify_latency_ms=0, openai_latency_ms=0)
    transport = httpx.ASGITransport(app=app)
    client = openai.AsyncOpenAI(
        api_key="bench",
        base_url="http://sim/v1",
        http_client=httpx.AsyncClient(transport=transport, base_url="http://sim"),
        max_retries=0,
    )
    analyzer = OpenAIAnalyzer(client, DEFAULT_MODEL_PRICES)
    profiles = [parse_profile(profile_item(f"bench_{i:04d}")) for i in range(leads)]  # type: ignore[arg-type]
    report: dict[str, object] = {}
    for tier in Tier:
        model = MODELS[tier]
        shared = _business("FitFuel")
        cached_cost = uncached_cost = 0.0
        cached_tokens = input_tokens = 0
        for profile in profiles:
            for part in TIER_PARTS[tier]:
                _, usage = await analyzer.analyze(part, model, shared, profile)
                cached_cost += usage.cost_usd
                cached_tokens += usage.cached_input_tokens
                input_tokens += usage.input_tokens
                _, alone = await analyzer.analyze(part, model, _business("FitFuel"), profile)
                uncached_cost += alone.cost_usd
        report[tier.value] = {
            "model": model,
            "leads": leads,
            "input_tokens_per_lead": round(input_tokens / leads),
            "cached_share_of_input": round(cached_tokens / input_tokens, 3),
            "usd_per_lead_with_layout": round(cached_cost / leads, 6),
            "usd_per_lead_without_reuse": round(uncached_cost / leads, 6),
            "saved": f"{100 * (1 - cached_cost / uncached_cost):.1f}%",
        }
    await client.close()
    return report


def rules_speed(leads: int) -> dict[str, object]:
    rules = RulesAnalyzer()
    business = _business("FitFuel")
    profiles = [parse_profile(profile_item(f"rules_{i:04d}")) for i in range(leads)]  # type: ignore[arg-type]
    rules.analyze("fit_deep", business, profiles[0])  # loads the language model once
    report: dict[str, object] = {}
    for tier in Tier:
        timings = []
        for profile in profiles:
            started = time.perf_counter()
            for part in TIER_PARTS[tier]:
                rules.analyze(part, business, profile)
            timings.append((time.perf_counter() - started) * 1000)
        report[tier.value] = {
            "ms_per_lead_mean": round(mean(timings), 2),
            "ms_per_lead_p99": round(quantiles(timings, n=100)[98], 2),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=50)
    args = parser.parse_args()
    print(
        json.dumps(
            {"ai_cost": asyncio.run(ai_costs(args.leads)), "rules": rules_speed(args.leads)},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
