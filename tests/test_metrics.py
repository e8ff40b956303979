"""Prometheus metrics: the API's, right with two API processes whichever answers the scrape;
a worker's, counting a run's business figures, with the Temporal SDK's own metrics."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cli import stack
from tests.conftest import app_client, make_settings
from tests.helpers import running_api, running_worker, start_ok, wait_for


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def _scrape_when_up(http: httpx.AsyncClient) -> str:
    """The worker's /metrics, once its server (started with the worker) listens."""
    for _ in range(100):
        try:
            return (await http.get("/metrics")).text
        except httpx.ConnectError:
            await asyncio.sleep(0.1)
    raise AssertionError("the worker's /metrics never answered")


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_the_api_counts_requests_across_its_processes(servers, new_account):
    settings = make_settings(servers, task_queue=f"metrics-{uuid4().hex[:8]}")
    account = await new_account()
    with running_api(settings, API_PROCESSES="2") as api:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}", timeout=30) as http:
            for _ in range(30):  # new connections: spread over both processes
                async with httpx.AsyncClient(base_url=http.base_url) as fresh:
                    answer = await fresh.get("/api/credits/balance", headers=account.headers)
                    assert answer.status_code == 200
            missing = await http.get(f"/api/analysis/{uuid4()}/progress", headers=account.headers)
            assert missing.status_code == 404
            started = await http.post(  # a run, accepted by one of the two processes
                "/api/leads/analyze",
                json={
                    "username": f"metrics_{uuid4().hex[:6]}",
                    "analysis_type": "deep",
                    "business_profile_id": str(account.business_profile_id),
                },
                headers=account.headers,
            )
            assert started.status_code == 202, started.text
            scrapes = [(await http.get("/metrics")).text for _ in range(6)]
    for text in scrapes:  # whichever process answered, the same totals
        samples = _samples(text)
        labels = {"method": "GET", "route": "/api/credits/balance", "status": "200"}
        assert _value(samples, "oslira_http_requests_total", **labels) == 30
        assert (
            _value(
                samples,
                "oslira_http_requests_total",
                method="GET",
                route="/api/analysis/{run_id}/progress",
                status="404",
            )
            == 1
        )
        count = _value(
            samples,
            "oslira_http_request_duration_seconds_count",
            method="GET",
            route="/api/credits/balance",
        )
        assert count == 30
        assert _value(samples, "oslira_analyses_started_total", tier="deep") == 1


async def test_a_worker_serves_business_and_sdk_metrics(servers, new_account):
    port = stack.free_port()
    settings = make_settings(
        servers, task_queue=f"metrics-w-{uuid4().hex[:8]}", worker_metrics_port=port
    )
    account = await new_account(credits_granted=10)
    async with (
        app_client(settings) as api,
        running_worker(settings),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as scrape,
    ):
        before = _samples(await _scrape_when_up(scrape))
        name = f"metrics_{uuid4().hex[:6]}"
        first = await start_ok(api, account, name, "light")
        assert (await wait_for(api, account, first))["status"] == "complete"
        hit = await start_ok(api, account, name, "light")  # from the cache
        assert (await wait_for(api, account, hit))["status"] == "complete"
        missing = await start_ok(api, account, f"notfound_{uuid4().hex[:6]}", "light")
        assert (await wait_for(api, account, missing))["status"] == "failed"
        text = (await scrape.get("/metrics")).text
    after = _samples(text)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    # In-process workers of other tests share this process's counters: deltas, not totals.
    assert delta("oslira_analyses_finished_total", tier="light", status="complete") == 2
    assert delta("oslira_analyses_finished_total", tier="light", status="failed") == 1
    assert delta("oslira_credits_charged_total") == 3
    assert delta("oslira_credits_refunded_total") == 1
    assert delta("oslira_cache_lookups_total", result="hit") == 1
    assert delta("oslira_cache_lookups_total", result="miss") == 2
    assert delta("oslira_provider_cost_usd_total", provider="apify") > 0
    assert delta("oslira_provider_cost_usd_total", provider="openai") > 0
    # Steps that ended well: three cache checks, one scrape (the hit needed none, and the
    # profile not found ended the other with a failure).
    assert delta("oslira_step_duration_seconds_count", step="check_cache") == 3
    assert delta("oslira_step_duration_seconds_count", step="scrape_profile") == 1
    assert ("oslira_provider_slots_in_use", frozenset({("provider", "Apify")})) in after
    assert ("oslira_batch_backlog", frozenset()) in after
    # The Temporal SDK's own metrics, from its runtime's exporter, in the same scrape.
    assert any(key[0].startswith("temporal_") for key in after), sorted(after)[:20]
