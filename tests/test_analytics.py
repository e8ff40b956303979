"""GET /api/analytics/summary against known runs: counts by status and tier, credits spent
and refunded, provider cost, step durations, cache hit rate and errors; another tenant sees
none of it; a bad window is a 422 naming the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from tests.helpers import start_ok, wait_for


async def test_the_summary_adds_up_the_accounts_runs(api, new_account):
    account = await new_account(credits_granted=20)
    other = await new_account(credits_granted=5)
    since = datetime.now(UTC) - timedelta(seconds=1)
    name = f"summary_{uuid4().hex[:6]}"
    first = await start_ok(api, account, name, "light")
    assert (await wait_for(api, account, first))["status"] == "complete"
    again = await start_ok(api, account, name, "light")  # a cache hit
    deep = await start_ok(api, account, f"summary_{uuid4().hex[:6]}", "deep")
    missing = await start_ok(api, account, f"notfound_{uuid4().hex[:6]}", "light")
    for run_id in (again, deep, missing):
        await wait_for(api, account, run_id)
    costs = []
    for run_id in (first, again, deep):
        result = (await api.get(f"/api/analysis/{run_id}/result", headers=account.headers)).json()
        costs.append(result["cost"])

    response = await api.get(
        "/api/analytics/summary", params={"from": since.isoformat()}, headers=account.headers
    )
    assert response.status_code == 200, response.text
    summary = response.json()
    assert datetime.fromisoformat(summary["from"]) == since
    assert datetime.fromisoformat(summary["to"]) > since
    assert summary["analyses"] == 4
    assert summary["by_status"] == {
        "pending": 0,
        "processing": 0,
        "complete": 3,
        "failed": 1,
        "cancelled": 0,
    }
    assert summary["by_tier"]["light"]["complete"] == 2
    assert summary["by_tier"]["light"]["failed"] == 1
    assert summary["by_tier"]["deep"]["complete"] == 1
    assert summary["by_tier"]["xray"] == {
        "pending": 0,
        "processing": 0,
        "complete": 0,
        "failed": 0,
        "cancelled": 0,
    }
    # 1 + 1 + 3 + 1 charged; the profile not found refunded its 1.
    assert summary["credits"] == {"spent": 6, "refunded": 1, "net": 5}
    assert summary["provider_cost"]["total_usd"] == pytest.approx(
        sum(c["total_usd"] for c in costs), abs=1e-6
    )
    assert summary["provider_cost"]["ai_usd"] == pytest.approx(
        sum(c["ai_usd"] for c in costs), abs=1e-6
    )
    assert summary["cache"] == {
        "complete_runs": 3,
        "hits": 1,
        "hit_rate": pytest.approx(1 / 3, abs=1e-4),
    }
    assert summary["errors"] == {"profile_not_found": 1}
    steps = summary["step_durations"]
    assert steps["deduct_credits"]["count"] == 4  # every run was charged
    assert steps["scrape_profile"]["count"] == 2  # the cache hit did not scrape
    assert steps["analyze_profile"]["count"] == 3
    for step in steps.values():
        assert 0 <= step["p50_ms"] <= step["p95_ms"]

    # Another tenant sees nothing of it.
    theirs = (await api.get("/api/analytics/summary", headers=other.headers)).json()
    assert theirs["analyses"] == 0 and theirs["credits"]["spent"] == 0
    assert theirs["step_durations"] == {} and theirs["cache"]["hit_rate"] is None
    # A window in the past holds none of these runs.
    before = (
        await api.get(
            "/api/analytics/summary",
            params={"to": since.isoformat()},
            headers=account.headers,
        )
    ).json()
    assert before["analyses"] == 0


async def test_a_bad_window_is_refused_naming_the_field_and_an_empty_one_holds_nothing(
    api, new_account
):
    account = await new_account()
    response = await api.get(
        "/api/analytics/summary", params={"from": "yesterday"}, headers=account.headers
    )
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "from"
    inverted = await api.get(
        "/api/analytics/summary",
        params={"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        headers=account.headers,
    )
    assert inverted.status_code == 200 and inverted.json()["analyses"] == 0
    earliest = await api.get(
        "/api/analytics/summary", params={"to": "0001-01-05T00:00:00Z"}, headers=account.headers
    )
    assert earliest.status_code == 200 and earliest.json()["analyses"] == 0
