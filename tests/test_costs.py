"""True costs: tokens times the model's prices (input, cached input, output), plus the
scrape, per call and in total, on known token counts."""

from __future__ import annotations

from types import SimpleNamespace

import openai

from core.models import AIUsage, CostBreakdown
from core.settings import DEFAULT_MODEL_PRICES
from providers.ai import OpenAIAnalyzer


def test_an_ai_calls_cost_prices_cached_input_apart():
    analyzer = OpenAIAnalyzer(openai.AsyncOpenAI(api_key="unused"), DEFAULT_MODEL_PRICES)
    usage = SimpleNamespace(
        input_tokens=2_000,
        input_tokens_details=SimpleNamespace(cached_tokens=1_500),
        output_tokens=300,
    )
    # gpt-5-mini: $0.25 per million input, $0.025 cached input, $2.00 output.
    call = analyzer._usage("gpt-5-mini", usage)
    assert (call.input_tokens, call.cached_input_tokens, call.output_tokens) == (2_000, 1_500, 300)
    assert call.cost_usd == (500 * 0.25 + 1_500 * 0.025 + 300 * 2.00) / 1_000_000 == 0.0007625
    # A model with no configured price costs what nobody can say: 0, not a guess.
    assert analyzer._usage("unpriced-model", usage).cost_usd == 0


def test_the_breakdown_carries_its_totals_through_json():
    cost = CostBreakdown(
        apify_usd=0.0023,
        ai=[
            AIUsage(model="gpt-5-mini", cost_usd=0.0007625),
            AIUsage(model="gpt-5-mini", cost_usd=0.0004),
        ],
    )
    stored = cost.model_dump(mode="json")
    assert (stored["ai_usd"], stored["total_usd"]) == (0.0011625, 0.0034625)
    # Read back (as the result endpoint reads a stored cost), the totals are recomputed.
    again = CostBreakdown.model_validate(stored)
    assert again.model_dump(mode="json") == stored
    assert CostBreakdown(cache_hit=True).model_dump(mode="json")["total_usd"] == 0
