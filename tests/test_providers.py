"""Our provider clients, driven through the real SDKs (httpx, openai) against the simulators."""

from __future__ import annotations

from uuid import uuid4

import httpx
import openai
import pytest

from core.models import BusinessContext
from core.prompts import SCHEMAS
from core.settings import DEFAULT_MODEL_PRICES
from providers.ai import OpenAIAnalyzer
from providers.apify import ApifyScraper, parse_profile
from providers.errors import ProfileNotFound, ProfilePrivate, ProviderRejected, ProviderUnavailable
from simulators.apify import profile_item


@pytest.fixture
async def scraper(servers):
    async with httpx.AsyncClient(base_url=servers.simulator_url, timeout=30) as client:
        yield ApifyScraper(client, token="t", actor="apify~instagram-profile-scraper")


async def test_scraper_reads_a_profile_with_its_posts(scraper):
    profile = await scraper.scrape("natgeo")
    assert profile.username == "natgeo"
    assert profile.followers_count > 0
    assert len(profile.posts) == 12
    assert all(p.caption and p.timestamp for p in profile.posts)
    assert profile == await scraper.scrape("natgeo")  # deterministic


async def test_scraper_maps_failures(scraper, servers):
    with pytest.raises(ProfileNotFound):
        await scraper.scrape("notfound_someone")
    with pytest.raises(ProfilePrivate):
        await scraper.scrape("private_someone")
    with pytest.raises(ProviderUnavailable):
        await scraper.scrape(f"flaky_{uuid4().hex[:6]}")
    async with httpx.AsyncClient(base_url=servers.simulator_url) as client:
        no_token = ApifyScraper(client, token="", actor="apify~instagram-profile-scraper")
        with pytest.raises(ProviderRejected):
            await no_token.scrape("natgeo")


def test_profile_parsing_handles_the_documented_oddities():
    item = profile_item("someone") | {"businessCategoryName": "None", "username": "SomeOne"}
    item["latestPosts"][0]["likesCount"] = -1  # hidden like counts come back as -1
    profile = parse_profile(item)
    assert profile.business_category is None
    assert profile.username == "someone"
    assert profile.posts[0].likes_count == 0


async def test_error_items_count_as_not_found(servers):
    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json=[{"url": "https://instagram.com/x", "error": "not_found"}])

    async with httpx.AsyncClient(transport=httpx.MockTransport(respond), base_url="http://a") as c:
        with pytest.raises(ProfileNotFound):
            await ApifyScraper(c, token="t", actor="a").scrape("x")


@pytest.mark.parametrize("part", sorted(SCHEMAS))
async def test_analyzer_gets_schema_valid_output_and_prices_it(servers, part):
    client = openai.AsyncOpenAI(api_key="k", base_url=f"{servers.simulator_url}/v1", max_retries=0)
    analyzer = OpenAIAnalyzer(client, DEFAULT_MODEL_PRICES)
    business = BusinessContext(id=uuid4(), name="Acme", offering="Coffee")
    async with httpx.AsyncClient(base_url=servers.simulator_url) as http:
        scraper = ApifyScraper(http, token="t", actor="apify~instagram-profile-scraper")
        profile = await scraper.scrape("coffeelover")

    parsed, usage = await analyzer.analyze(part, "gpt-5-mini", business, profile)
    assert isinstance(parsed, SCHEMAS[part])
    assert usage.model == "gpt-5-mini"
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    expected = (usage.input_tokens * 0.25 + usage.output_tokens * 2.0) / 1_000_000
    assert usage.cost_usd == pytest.approx(expected)
    again, _ = await analyzer.analyze(part, "gpt-5-mini", business, profile)
    assert again == parsed
    await client.close()
