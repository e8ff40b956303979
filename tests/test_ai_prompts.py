"""The AI's inputs and outputs: engagement figures, content intelligence, the prompt layout
for OpenAI's prompt cache (and the simulator reusing a repeated prefix), each tier's schema,
and the rule-based analyzer's output."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import jsonschema
import openai
import pytest

from core.content import category_of, content_intelligence, language_of, sentiment_of
from core.engagement import engagement
from core.models import BusinessContext, Post, Profile
from core.prompts import PROMPT_VERSION, SCHEMAS, TIER_RESULTS, instructions, lead_input
from core.rules import RULES_VERSION, RulesAnalyzer
from core.settings import DEFAULT_MODEL_PRICES
from core.tiers import TIER_PARTS, Tier
from providers.ai import OpenAIAnalyzer
from providers.apify import parse_profile
from simulators.apify import profile_item
from simulators.openai import tokens
from tests.helpers import start_ok, wait_for

FITNESS = BusinessContext(
    id=UUID(int=1),
    name="FitFuel",
    description="Meal plans for people who train",
    offering="High-protein meal plans delivered weekly",
    target_audience="fitness coaches and gym goers",
)
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _post(i: int, likes: int, comments: int, days_ago: float, **extra: Any) -> Post:
    return Post(
        id=str(i),
        likes_count=likes,
        comments_count=comments,
        timestamp=T0 - timedelta(days=days_ago),
        **extra,
    )


def test_engagement_figures_from_known_posts():
    profile = Profile(
        username="known",
        followers_count=1_000,
        posts=[
            _post(1, 100, 10, 0, hashtags=["Gym", "fit"], type="Video", video_view_count=900),
            _post(2, 50, 5, 7, hashtags=["gym"]),
            _post(3, 30, 5, 14, hashtags=["gym", "food"]),
            # Pinned and a year old: counted for likes, not for the cadence.
            _post(4, 20, 0, 365, hashtags=["fit"], is_pinned=True),
        ],
    )
    figures = engagement(profile)
    assert figures.posts_analyzed == 4
    # (110 + 55 + 35 + 20) / 4 posts / 1,000 followers = 5.5%
    assert figures.engagement_rate == 5.5
    assert figures.avg_likes == 50.0 and figures.avg_comments == 5.0
    assert figures.avg_video_views == 900.0
    # Three dated, unpinned posts over 14 days: two gaps in two weeks.
    assert figures.posts_per_week == 1.0
    assert figures.last_post_at == T0
    assert [(t.tag, t.posts) for t in figures.top_hashtags] == [("gym", 3), ("fit", 2), ("food", 1)]

    empty = engagement(Profile(username="quiet", followers_count=10))
    assert empty.engagement_rate is None and empty.posts_per_week is None
    assert empty.top_hashtags == [] and empty.posts_analyzed == 0


def test_content_intelligence_from_hashtags_keywords_languages_and_tone():
    assert category_of(Post(id="1", caption="Leg day at the gym", hashtags=[])) == "fitness"
    assert category_of(Post(id="2", caption="Sunday", hashtags=["latte", "cafe"])) == "coffee"
    assert category_of(Post(id="3", caption="Hello there")) == "other"

    assert language_of("Bonjour à tous, voici notre nouvelle collection d'hiver") == "fr"
    assert language_of("Nueva colección hoy, ¿cuál es vuestra favorita?") == "es"
    assert language_of("New collection today, which one is your favourite?") == "en"
    assert language_of("ok") is None  # too short to tell

    assert sentiment_of(["I love this, what a wonderful day!"]).label == "positive"
    assert sentiment_of(["This was awful, I hate it."]).label == "negative"
    assert sentiment_of([]).average == 0.0

    profile = Profile(
        username="mixed",
        posts=[
            Post(id="1", caption="Great workout this morning, feeling strong #gym"),
            Post(id="2", caption="Best workout playlist for the weekend #fitness"),
            Post(id="3", caption="Bonjour à tous, voici ma recette préférée #recipe"),
            Post(id="4", caption="#travel"),  # no prose: no language
        ],
    )
    content = content_intelligence(profile)
    assert [(c.category, c.percent) for c in content.content_mix] == [
        ("fitness", 50),
        ("food", 25),
        ("travel", 25),
    ]
    assert [(lang.language, lang.percent) for lang in content.languages] == [("en", 67), ("fr", 33)]
    assert content.sentiment.label == "positive"


def test_the_prompt_layout_puts_a_cacheable_static_part_first_and_the_lead_last():
    lead = parse_profile(profile_item("coffeelover"))  # type: ignore[arg-type]
    other = parse_profile(profile_item("fr_someone"))  # type: ignore[arg-type]
    for part in SCHEMAS:
        static = instructions(part, FITNESS)
        # OpenAI caches a prefix of 1,024 tokens or more; the rubric alone is over it.
        assert tokens(static) >= 1024, (part, tokens(static))
        rubric_end = static.index("# Your task")
        assert tokens(static[:rubric_end]) >= 1024
        # The business profile comes after the instructions; nothing of the lead is there.
        assert static.index(FITNESS.offering) > rubric_end
        assert "coffeelover" not in static
        # Static: the same for every lead of the business, different for another business.
        assert static == instructions(part, FITNESS)
        assert static != instructions(part, FITNESS.model_copy(update={"name": "Other"}))
    given = lead_input(lead)
    assert '"username": "coffeelover"' in given
    assert '"engagement": {' in given and '"top_hashtags"' in given
    assert lead_input(lead) != lead_input(other)


def _combined(tier: Tier, parts: dict[str, dict[str, Any]], engine: str, version: str) -> dict:
    """A tier's result as the workflow assembles it from its parts."""
    analysis: dict[str, Any] = {}
    for part in TIER_PARTS[tier]:
        analysis.update(parts[part])
    return analysis | {"engine": engine, "engine_version": version}


@pytest.mark.parametrize("tier", list(Tier))
@pytest.mark.parametrize("username", ["fitcoach_jo", "fr_chef", "private_x", "quiet_one"])
def test_the_rules_give_each_tiers_fields_valid_for_its_schema_deterministically(tier, username):
    item = profile_item(username)
    assert item is not None
    profile = parse_profile(item)
    if username == "quiet_one":
        profile = profile.model_copy(update={"posts": []})
    rules = RulesAnalyzer()
    parts = {p: rules.analyze(p, FITNESS, profile).model_dump(mode="json") for p in SCHEMAS}
    result = _combined(tier, parts, "rules", RULES_VERSION)
    schema = TIER_RESULTS[tier].model_json_schema()
    jsonschema.validate(result, schema)
    assert set(result) == set(schema["properties"])
    # Another tier's fields are not there: light has no outreach, deep no psychographics.
    assert ("outreach_message" in result) is (tier is not Tier.light)
    assert ("motivations" in result) is (tier is Tier.xray)
    again = {p: rules.analyze(p, FITNESS, profile).model_dump(mode="json") for p in SCHEMAS}
    assert again == parts

    light = parts["fit_light"]
    assert light["score_factors"], "a score is explained"
    if username == "private_x":
        assert any("private" in flag for flag in light["red_flags"])
    if username == "fr_chef" and tier is not Tier.light:
        assert result["languages"][0]["language"] == "fr"


def test_rule_scores_follow_the_rubric():
    """A fitness account scores higher than an otherwise identical one about something else
    for a fitness business, and the factors say why."""
    base = parse_profile(profile_item("natgeo"))  # type: ignore[arg-type]

    def about(caption: str, hashtags: list[str]) -> Profile:
        posts = [
            p.model_copy(update={"caption": caption, "hashtags": hashtags}) for p in base.posts
        ]
        return base.model_copy(update={"posts": posts})

    fitness = about("Morning session done #gym #workout", ["gym", "workout"])
    stamps = about("My stamp album #stamps", ["stamps"])
    rules = RulesAnalyzer()
    fit = rules.analyze("fit_light", FITNESS, fitness)
    unfit = rules.analyze("fit_light", FITNESS, stamps)
    assert fit.score - unfit.score >= 20  # type: ignore[attr-defined]
    audience = {f.factor: f for f in fit.score_factors}["audience and niche match"]  # type: ignore[attr-defined]
    assert audience.effect == "positive" and "fitness" in audience.evidence


async def test_two_leads_of_one_business_reuse_the_cached_prefix(servers):
    client = openai.AsyncOpenAI(api_key="k", base_url=f"{servers.simulator_url}/v1", max_retries=0)
    analyzer = OpenAIAnalyzer(client, DEFAULT_MODEL_PRICES)
    business = FITNESS.model_copy(update={"id": uuid4()})
    first = parse_profile(profile_item(f"lead_a_{uuid4().hex[:6]}"))  # type: ignore[arg-type]
    second = parse_profile(profile_item(f"lead_b_{uuid4().hex[:6]}"))  # type: ignore[arg-type]
    static = tokens(instructions("fit_light", business))

    _, cold = await analyzer.analyze("fit_light", "gpt-5-nano", business, first)
    _, warm = await analyzer.analyze("fit_light", "gpt-5-nano", business, second)
    assert cold.cached_input_tokens == 0
    assert warm.cached_input_tokens == static >= 1024
    # Cached input costs a tenth: the second lead's input is cheaper for the same length.
    price = DEFAULT_MODEL_PRICES["gpt-5-nano"]
    assert warm.cost_usd == pytest.approx(
        (
            (warm.input_tokens - static) * price.input
            + static * price.cached_input
            + warm.output_tokens * price.output
        )
        / 1_000_000,
        abs=1e-8,  # stored to 8 decimals
    )
    # Another business profile has its own prefix: its first lead is not cached.
    other = business.model_copy(update={"id": uuid4(), "name": "Another gym"})
    _, elsewhere = await analyzer.analyze("fit_light", "gpt-5-nano", other, second)
    assert elsewhere.cached_input_tokens == 0


async def test_runs_store_engagement_on_the_lead_and_results_fit_their_schema(api, new_account):
    account = await new_account(credits_granted=20)
    first = f"engaged_{uuid4().hex[:6]}"
    second = f"engaged_{uuid4().hex[:6]}"
    runs = []
    for name in (first, second):  # one after the other: the first caches the prefix
        run_id = await start_ok(api, account, name, "deep")
        assert (await wait_for(api, account, run_id))["status"] == "complete"
        runs.append(run_id)
    results = [
        (await api.get(f"/api/analysis/{r}/result", headers=account.headers)).json() for r in runs
    ]
    for result in results:
        jsonschema.validate(result["analysis"], TIER_RESULTS[Tier.deep].model_json_schema())
        assert result["analysis"]["engine"] == "ai"
        assert result["analysis"]["engine_version"] == PROMPT_VERSION
    # The same business profile: the second run's calls reuse the prefix the first cached.
    assert all(call["cached_input_tokens"] == 0 for call in results[0]["cost"]["ai"])
    assert all(call["cached_input_tokens"] >= 1024 for call in results[1]["cost"]["ai"])

    lead_id = results[0]["lead"]["id"]
    lead = (await api.get(f"/api/leads/{lead_id}", headers=account.headers)).json()
    expected = engagement(parse_profile(profile_item(first)))  # type: ignore[arg-type]
    assert lead["engagement"] == expected.model_dump(mode="json")
    assert results[0]["lead"]["engagement"] == expected.model_dump(mode="json")
