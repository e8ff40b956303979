"""When a cached profile is stale, and what changed: each change rule; a lead's changes
between analyses, shown in the result; refresh-check and force-refresh (with and without an
analysis), with their numbers; another account's lead answers 404."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest

from core.changes import Snapshot, changes
from tests.helpers import start_ok, wait_for


def _fields(found: list[Any]) -> dict[str, Any]:
    return {c.field: c for c in found}


@pytest.mark.parametrize(
    ("after", "changed"),
    [
        ({"followers_count": 1_100}, set()),  # +10%: not more than 10%
        ({"followers_count": 1_101}, {"followers_count"}),
        ({"followers_count": 899}, {"followers_count"}),
        ({"biography": "Coffee roaster in Lyon. Fresh beans daily!"}, set()),  # small edit
        ({"biography": "Now a fitness coach: DM me for plans"}, {"biography"}),
        ({"is_private": True}, {"is_private"}),
        ({"is_verified": True}, {"is_verified"}),
    ],
)
def test_each_change_rule(after: dict[str, Any], changed: set[str]) -> None:
    before = Snapshot(followers_count=1_000, biography="Coffee roaster in Lyon. Fresh beans daily.")
    found = _fields(changes(before, before.model_copy(update=after)))
    assert set(found) == changed
    if "followers_count" in found:
        assert found["followers_count"].amount == round(
            abs(after["followers_count"] - 1000) / 1000, 4
        )
    if "biography" in found:
        assert found["biography"].amount > 0.3


async def _complete(api: Any, account: Any, username: str, tier: str = "light") -> dict[str, Any]:
    run_id = await start_ok(api, account, username, tier)
    done = await wait_for(api, account, run_id)
    assert done["status"] == "complete", done
    body: dict[str, Any] = (
        await api.get(f"/api/analysis/{run_id}/result", headers=account.headers)
    ).json()
    return body


async def test_a_changed_profile_is_recorded_on_the_lead_and_shown_in_the_result(
    api, new_account, system_pool
):
    account = await new_account(credits_granted=10)
    username = f"changing_{uuid4().hex[:8]}"  # the Apify simulator changes it each scrape
    first = await _complete(api, account, username)
    assert first["changes"] == []
    lead_id = first["lead"]["id"]
    dropped = await api.post(
        f"/api/leads/{lead_id}/force-refresh", json={}, headers=account.headers
    )
    assert dropped.status_code == 200 and dropped.json() == {
        "lead_id": lead_id,
        "dropped": True,
        "run": None,
    }
    second = await _complete(api, account, username)
    assert second["cost"]["cache_hit"] is False
    seen = {c["field"]: c for c in second["changes"]}
    assert set(seen) == {"followers_count", "biography", "is_verified"}
    followers = seen["followers_count"]
    assert followers["amount"] == round(
        (followers["after"] - followers["before"]) / followers["before"], 4
    )
    assert 0.24 < followers["amount"] <= 0.25  # 25% more, rounded down to a whole follower
    assert (seen["is_verified"]["before"], seen["is_verified"]["after"]) == (
        first["lead"]["is_verified"],
        not first["lead"]["is_verified"],
    )
    assert seen["biography"]["after"] == second["lead"]["biography"]
    history = await system_pool.fetch(
        "SELECT analysis_id, field FROM lead_changes WHERE lead_id = $1::uuid", lead_id
    )
    assert {(str(r["analysis_id"]), r["field"]) for r in history} == {
        (second["run_id"], field) for field in seen
    }
    # A third analysis from the cache sees no new change.
    third = await _complete(api, account, username)
    assert third["cost"]["cache_hit"] is True and third["changes"] == []


async def test_refresh_check_says_why_and_force_refresh_can_analyse(api, new_account, system_pool):
    account = await new_account(credits_granted=10)
    username = f"fresh_{uuid4().hex[:8]}"
    lead_id = (await _complete(api, account, username))["lead"]["id"]
    key = f"instagram:{username}:v1"

    async def check(tier: str) -> dict[str, Any]:
        answer = await api.post(
            f"/api/leads/{lead_id}/refresh-check",
            json={"analysis_type": tier},
            headers=account.headers,
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    fresh = await check("light")
    assert (fresh["stale"], fresh["reasons"], fresh["cached"]) == (False, [], True)
    assert 0 <= fresh["age_seconds"] < 60 and fresh["ttl_seconds"] == 24 * 3600
    # Seven hours old: fresh for deep (12 h), stale for xray (6 h).
    await system_pool.execute(
        "UPDATE profile_cache SET stored_at = now() - interval '7 hours' WHERE key = $1", key
    )
    deep, xray = await check("deep"), await check("xray")
    assert (deep["stale"], xray["stale"], xray["reasons"]) == (False, True, ["older_than_ttl"])
    assert 7 * 3600 <= xray["age_seconds"] < 7 * 3600 + 60
    assert xray["ttl_seconds"] == 6 * 3600
    # Another run's scrape (another account's, say) cached a changed profile.
    await system_pool.execute(
        """UPDATE profile_cache SET stored_at = now(),
               profile = jsonb_set(profile, '{followers_count}',
                                   to_jsonb((profile->>'followers_count')::bigint * 2))
           WHERE key = $1""",
        key,
    )
    changed = await check("light")
    assert changed["reasons"] == ["profile_changed"] and changed["stale"] is True
    assert [(c["field"], c["amount"]) for c in changed["changes"]] == [("followers_count", 1.0)]

    gone = await api.post(f"/api/leads/{lead_id}/force-refresh", json={}, headers=account.headers)
    assert gone.json()["dropped"] is True
    again = await api.post(f"/api/leads/{lead_id}/force-refresh", json={}, headers=account.headers)
    assert again.json()["dropped"] is False
    assert (await check("light"))["reasons"] == ["not_cached"]

    started = await api.post(
        f"/api/leads/{lead_id}/force-refresh",
        json={"analyze": True, "analysis_type": "deep"},
        headers=account.headers,
    )
    assert started.status_code == 200, started.text
    run = started.json()["run"]
    assert run["analysis_type"] == "deep" and run["username"] == username
    done = await wait_for(api, account, run["run_id"])
    assert done["status"] == "complete"
    result = (
        await api.get(f"/api/analysis/{run['run_id']}/result", headers=account.headers)
    ).json()
    assert result["cost"]["cache_hit"] is False and result["lead"]["id"] == lead_id
    balance = (await api.get("/api/credits/balance", headers=account.headers)).json()
    assert balance["balance"] == 10 - 1 - 3
    # The forced analysis scraped and cached the profile again.
    assert (await check("light"))["reasons"] == []
    # Without a tier: the lead's latest analysis's (deep, now).
    again = await api.post(
        f"/api/leads/{lead_id}/force-refresh", json={"analyze": True}, headers=account.headers
    )
    assert again.status_code == 200, again.text
    assert again.json()["dropped"] is True
    assert again.json()["run"]["analysis_type"] == "deep"
    assert (await wait_for(api, account, again.json()["run"]["run_id"]))["status"] == "complete"


async def test_another_accounts_lead_answers_404(api, new_account):
    owner, other = await new_account(credits_granted=5), await new_account(credits_granted=5)
    lead_id = (await _complete(api, owner, f"mine_{uuid4().hex[:8]}"))["lead"]["id"]
    for path, body in (
        ("refresh-check", {"analysis_type": "light"}),
        ("force-refresh", {"analyze": True, "analysis_type": "light"}),
    ):
        answer = await api.post(f"/api/leads/{lead_id}/{path}", json=body, headers=other.headers)
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "lead_not_found"
    balance = (await api.get("/api/credits/balance", headers=other.headers)).json()
    assert balance["balance"] == 5


async def test_cache_statistics_count_hits_ages_sizes_and_the_accounts_savings(
    api, new_account, system_pool, settings
):
    account = await new_account(credits_granted=10)

    async def statistics() -> dict[str, Any]:
        answer = await api.get("/api/cache/statistics", headers=account.headers)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    before = await statistics()
    assert [
        (b["from_hours"], b["to_hours"], b["fresh_for"]) for b in before["age_distribution"]
    ] == [
        (0, 6, ["light", "deep", "xray"]),
        (6, 12, ["light", "deep"]),
        (12, 24, ["light"]),
        (24, None, []),
    ]
    tag = uuid4().hex[:8]
    for hours in (1, 8, 13, 30):
        await system_pool.execute(
            """INSERT INTO profile_cache (key, profile, size_bytes, stored_at)
               VALUES ($1, '{}', 100, now() - make_interval(hours => $2))""",
            f"instagram:stats_{tag}_{hours}:v1",
            hours,
        )
    aged = await statistics()
    assert aged["entries"] - before["entries"] == 4
    assert aged["total_bytes"] - before["total_bytes"] == 400
    assert [
        a["entries"] - b["entries"]
        for a, b in zip(aged["age_distribution"], before["age_distribution"], strict=True)
    ] == [1, 1, 1, 1]

    # One miss and two hits for light; one miss for deep (another username).
    username = f"stats_{tag}"
    assert (await _complete(api, account, username))["cost"]["cache_hit"] is False
    for _ in range(2):
        assert (await _complete(api, account, username))["cost"]["cache_hit"] is True
    assert (await _complete(api, account, f"{username}_d", "deep"))["cost"]["cache_hit"] is False
    after = await statistics()

    def rates(body: dict[str, Any]) -> dict[tuple[str, str], tuple[int, int]]:
        return {
            (r["analysis_type"], r["window"]): (r["runs"], r["hits"]) for r in body["hit_rates"]
        }

    grew = {
        key: (runs - rates(aged)[key][0], hits - rates(aged)[key][1])
        for key, (runs, hits) in rates(after).items()
    }
    for window in ("24h", "7d", "30d"):
        assert grew[("light", window)] == (3, 2)
        assert grew[("deep", window)] == (1, 0)
        assert grew[("xray", window)] == (0, 0)
    light = next(
        r for r in after["hit_rates"] if (r["analysis_type"], r["window"]) == ("light", "24h")
    )
    assert light["hit_rate"] == round(light["hits"] / light["runs"], 4)
    assert after["account"] == {
        "window": "30d",
        "runs": 4,
        "hits": 2,
        "hit_rate": 0.5,
        "provider_usd_saved": round(2 * settings.apify_usd_per_profile, 6),
    }
    assert after["entries"] - aged["entries"] == 2  # the two scraped profiles
    await system_pool.execute(
        "DELETE FROM profile_cache WHERE key LIKE $1", f"instagram:stats_{tag}_%"
    )
