"""Each tier end to end, the cache, and a transient scrape failure retried to success."""

from __future__ import annotations

from uuid import uuid4

import jsonschema
import pytest
from temporalio.api.enums.v1 import EventType

from core.prompts import TIER_RESULTS
from core.temporal import workflow_id
from core.tiers import Tier
from tests.helpers import (
    apify_calls,
    balance,
    ledger_for_run,
    record_history,
    start_ok,
    step,
    wait_for,
)

LIGHT_FIELDS = {"score", "score_factors", "summary", "niche", "red_flags"}
CONTENT_FIELDS = {"content_mix", "languages", "sentiment"}
DEEP_FIELDS = (
    LIGHT_FIELDS | CONTENT_FIELDS | {"engagement_read", "selling_points", "outreach_message"}
)
XRAY_FIELDS = DEEP_FIELDS | {"motivations", "communication_style", "objections", "buying_triggers"}
TIER_FIELDS = {
    tier: fields | {"engine", "engine_version"}
    for tier, fields in {"light": LIGHT_FIELDS, "deep": DEEP_FIELDS, "xray": XRAY_FIELDS}.items()
}
TIER_COST = {"light": 1, "deep": 3, "xray": 5}
TIER_MODEL = {"light": "gpt-5-nano", "deep": "gpt-5-mini", "xray": "gpt-5"}


@pytest.mark.parametrize("tier", ["light", "deep", "xray"])
async def test_each_tier_completes_and_charges_its_cost_once(
    api, new_account, system_pool, temporal_client, tier
):
    account = await new_account(credits_granted=10)
    username = f"creator_{uuid4().hex[:8]}"
    run_id = await start_ok(api, account, f"@{username.upper()}", tier)

    progress = await wait_for(api, account, run_id)
    assert progress["status"] == "complete", progress
    assert progress["progress"] == 100

    response = await api.get(f"/api/analysis/{run_id}/result", headers=account.headers)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["username"] == username
    assert result["lead"]["username"] == username
    assert result["lead"]["followers_count"] > 0
    assert set(result["analysis"]) == TIER_FIELDS[tier]
    jsonschema.validate(result["analysis"], TIER_RESULTS[Tier(tier)].model_json_schema())
    assert result["analysis"]["engine"] == "ai"
    assert 0 <= result["analysis"]["score"] <= 100
    assert result["credits_charged"] == TIER_COST[tier]
    assert result["cost"]["cache_hit"] is False
    assert result["cost"]["apify_usd"] > 0
    ai_calls = result["cost"]["ai"]
    assert len(ai_calls) == (1 if tier == "light" else 2)
    assert {call["model"] for call in ai_calls} == {TIER_MODEL[tier]}
    assert all(call["input_tokens"] > 0 and call["cost_usd"] > 0 for call in ai_calls)
    timed = {s["name"]: s for s in result["steps"]}
    for name in (
        "deduct_credits",
        "check_cache",
        "scrape_profile",
        "store_in_cache",
        "analyze_profile",
        "upsert_lead",
        "save_analysis",
        "complete",
    ):
        assert timed[name]["status"] == "done", (name, timed[name])
        assert timed[name]["finished_at"] >= timed[name]["started_at"]

    assert await balance(api, account) == 10 - TIER_COST[tier]
    assert await ledger_for_run(system_pool, run_id) == [("charge", -TIER_COST[tier])]
    await record_history(temporal_client, run_id, f"complete_{tier}")


async def test_deep_runs_its_two_ai_calls_in_parallel(api, new_account, temporal_client):
    account = await new_account()
    run_id = await start_ok(api, account, f"parallel_{uuid4().hex[:8]}", "deep")
    await wait_for(api, account, run_id, {"complete"})
    result = (await api.get(f"/api/analysis/{run_id}/result", headers=account.headers)).json()
    assert "outreach_message" in result["analysis"] and "selling_points" in result["analysis"]

    # In the workflow's history both calls are scheduled before either completes: one after
    # the other, the second would be scheduled only once the first had completed.
    history = await temporal_client.get_workflow_handle(workflow_id(run_id)).fetch_history()
    scheduled = [
        event.event_id
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and event.activity_task_scheduled_event_attributes.activity_type.name == "analyze_profile"
    ]
    completed = [
        event.event_id
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
        and event.activity_task_completed_event_attributes.scheduled_event_id in scheduled
    ]
    assert len(scheduled) == 2 and len(completed) == 2
    assert max(scheduled) < min(completed)


async def test_second_run_uses_the_cached_profile_and_skips_the_scrape(
    api, new_account, servers, temporal_client
):
    account = await new_account()
    username = f"cached_{uuid4().hex[:8]}"
    first = await start_ok(api, account, username, "light")
    await wait_for(api, account, first, {"complete"})
    second = await start_ok(api, account, username, "light")
    progress = await wait_for(api, account, second, {"complete"})

    assert step(progress, "scrape_profile")["status"] == "skipped"
    assert step(progress, "store_in_cache")["status"] == "skipped"
    result = (await api.get(f"/api/analysis/{second}/result", headers=account.headers)).json()
    assert result["cost"]["cache_hit"] is True
    assert result["cost"]["apify_usd"] == 0
    assert await apify_calls(servers.simulator_url, username) == 1
    # Both runs upsert the same lead.
    first_lead = (await api.get(f"/api/analysis/{first}/result", headers=account.headers)).json()
    assert first_lead["lead"]["id"] == result["lead"]["id"]
    await record_history(temporal_client, second, "complete_from_cache")


async def test_stale_cache_is_not_used_for_a_fresher_tier(api, new_account, servers, system_pool):
    account = await new_account()
    username = f"aging_{uuid4().hex[:8]}"
    first = await start_ok(api, account, username, "light")
    await wait_for(api, account, first, {"complete"})
    # Eight hours old: fresh for light (24 h), stale for xray (6 h).
    await system_pool.execute(
        "UPDATE profile_cache SET stored_at = now() - interval '8 hours' WHERE key = $1",
        f"instagram:{username}:v1",
    )
    light = await start_ok(api, account, username, "light")
    assert (
        step(await wait_for(api, account, light, {"complete"}), "scrape_profile")["status"]
        == "skipped"
    )
    xray = await start_ok(api, account, username, "xray")
    assert (
        step(await wait_for(api, account, xray, {"complete"}), "scrape_profile")["status"] == "done"
    )
    assert await apify_calls(servers.simulator_url, username) == 2


async def test_transient_scrape_failure_is_retried_to_success(
    api, new_account, servers, system_pool, temporal_client
):
    account = await new_account(credits_granted=5)
    username = f"flaky_{uuid4().hex[:8]}"
    run_id = await start_ok(api, account, username, "light")
    progress = await wait_for(api, account, run_id, timeout=60)

    assert progress["status"] == "complete", progress
    assert step(progress, "scrape_profile")["attempt"] == 3
    assert await apify_calls(servers.simulator_url, username) == 3
    assert await ledger_for_run(system_pool, run_id) == [("charge", -1)]
    assert await balance(api, account) == 4
    await record_history(temporal_client, run_id, "provider_failures_retried")
