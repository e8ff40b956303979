"""Leads through the API: each filter and sort of the list, one lead with its latest analysis
and history, soft delete and restore (the 30 days counted by the database's clock), and the
export in both formats across many chunks."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest

from api.routes.leads import EXPORT_CHUNK
from db import accounts
from tests.conftest import Account
from tests.helpers import start_ok, wait_for

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


async def _lead(
    conn: asyncpg.Connection,
    account: Account,
    username: str,
    *,
    full_name: str = "",
    score: int | None = None,
    followers: int = 0,
    analyzed: datetime | None = NOW,
    profile: UUID | None = None,
) -> UUID:
    lead_id: UUID = await conn.fetchval(
        """INSERT INTO leads (account_id, business_profile_id, username, full_name,
               followers_count, last_score, last_analyzed_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
        account.account_id,
        profile or account.business_profile_id,
        username,
        full_name,
        followers,
        score,
        analyzed,
    )
    return lead_id


async def _names(api: httpx.AsyncClient, account: Account, **params: Any) -> list[str]:
    response = await api.get("/api/leads", params=params, headers=account.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == len(body["data"]) or body["page_size"] == len(body["data"])
    return [lead["username"] for lead in body["data"]]


async def test_every_filter_and_sort_of_the_list(api, new_account, system_pool):
    account = await new_account(credits_granted=10)
    # Two real analyses give two leads with a tier and a summary; the rest are arranged.
    light = await start_ok(api, account, "alpha_one", "light")
    deep = await start_ok(api, account, "beta_two", "deep")
    for run_id in (light, deep):
        assert (await wait_for(api, account, run_id))["status"] == "complete"
    async with system_pool.acquire() as conn:
        other_profile = (
            await conn.fetchrow(
                """INSERT INTO business_profiles (account_id, name) VALUES ($1, 'Other')
                   RETURNING id""",
                account.account_id,
            )
        )["id"]
        await conn.execute(
            """UPDATE leads SET last_score = 40, followers_count = 5000, full_name = 'Alpha One',
                   last_analyzed_at = $2 WHERE account_id = $1 AND username = 'alpha_one'""",
            account.account_id,
            NOW - timedelta(days=3),
        )
        await conn.execute(
            """UPDATE leads SET last_score = 90, followers_count = 100, full_name = 'Beta Two',
                   last_analyzed_at = $2 WHERE account_id = $1 AND username = 'beta_two'""",
            account.account_id,
            NOW - timedelta(days=1),
        )
        await _lead(conn, account, "gamma", full_name="Gamma GEO", score=70, followers=9000)
        await _lead(conn, account, "delta_geo", score=None, followers=20, analyzed=None)
        await _lead(
            conn,
            account,
            "epsilon",
            score=10,
            followers=300,
            profile=other_profile,
            analyzed=NOW - timedelta(days=2),
        )
        deleted = await _lead(conn, account, "zeta_deleted", score=99, followers=10**7)
        await conn.execute("UPDATE leads SET deleted_at = now() WHERE id = $1", deleted)

    # Default: last analysed, newest first; never analysed counts from its creation (now).
    assert await _names(api, account) == ["delta_geo", "gamma", "beta_two", "epsilon", "alpha_one"]
    assert await _names(api, account, order="asc") == [
        "alpha_one",
        "epsilon",
        "beta_two",
        "gamma",
        "delta_geo",
    ]
    assert await _names(api, account, sort="score") == [
        "beta_two",
        "gamma",
        "alpha_one",
        "epsilon",
        "delta_geo",
    ]
    assert await _names(api, account, sort="followers", order="asc") == [
        "delta_geo",
        "beta_two",
        "epsilon",
        "alpha_one",
        "gamma",
    ]
    assert await _names(api, account, sort="followers") == [
        "gamma",
        "alpha_one",
        "epsilon",
        "beta_two",
        "delta_geo",
    ]
    assert await _names(api, account, business_profile_id=str(other_profile)) == ["epsilon"]
    assert await _names(api, account, min_score=40, sort="score") == [
        "beta_two",
        "gamma",
        "alpha_one",
    ]
    assert await _names(api, account, max_score=40, sort="score") == ["alpha_one", "epsilon"]
    assert await _names(api, account, min_score=40, max_score=70, sort="score") == [
        "gamma",
        "alpha_one",
    ]
    assert await _names(api, account, analysis_type="deep") == ["beta_two"]
    assert await _names(api, account, analysis_type="light") == ["alpha_one"]
    assert await _names(api, account, analysis_type="xray") == []
    # q: part of the username or the full name, in any case; LIKE's wildcards are literal.
    assert await _names(api, account, q="GEO", sort="followers") == ["gamma", "delta_geo"]
    assert await _names(api, account, q="alpha o") == ["alpha_one"]
    assert await _names(api, account, q="ma_geo") == []  # `_` would match "Gamma GEO"
    assert await _names(api, account, q="%") == []
    after = (NOW - timedelta(days=2, hours=12)).isoformat()
    before = (NOW - timedelta(hours=1)).isoformat()
    assert await _names(api, account, analyzed_after=after, analyzed_before=before) == [
        "beta_two",
        "epsilon",
    ]
    # A date without a zone is UTC.
    naive = (NOW - timedelta(days=2, hours=12)).replace(tzinfo=None).isoformat()
    assert await _names(api, account, analyzed_before=naive) == ["alpha_one"]

    page = await api.get("/api/leads", params={"page": 2, "page_size": 2}, headers=account.headers)
    body = page.json()
    assert (body["page"], body["page_size"], body["total"]) == (2, 2, 5)
    assert [lead["username"] for lead in body["data"]] == ["beta_two", "epsilon"]

    beta = next(
        lead
        for lead in (await api.get("/api/leads", headers=account.headers)).json()["data"]
        if lead["username"] == "beta_two"
    )
    assert (beta["analysis_type"], beta["score"], beta["last_analysis_id"]) == ("deep", 90, deep)
    assert beta["summary"]

    assert await _names(api, account, min_score=80, max_score=20) == []  # an empty range
    for params, field in (
        ({"sort": "name"}, "sort"),
        ({"min_score": 101}, "min_score"),
        ({"analysis_type": "mega"}, "analysis_type"),
        ({"analyzed_after": "yesterday"}, "analyzed_after"),
        ({"business_profile_id": "nope"}, "business_profile_id"),
    ):
        response = await api.get("/api/leads", params=params, headers=account.headers)
        assert response.status_code == 422, params
        assert response.json()["error"]["field"] == field


async def test_one_lead_its_history_and_other_accounts(api, new_account):
    account, other = await new_account(credits_granted=10), await new_account()
    first = await start_ok(api, account, "history_one", "light")
    await wait_for(api, account, first)
    second = await start_ok(api, account, "history_one", "deep")
    await wait_for(api, account, second)

    leads = (await api.get("/api/leads", headers=account.headers)).json()["data"]
    assert [lead["username"] for lead in leads] == ["history_one"]
    lead_id = leads[0]["id"]

    detail = await api.get(f"/api/leads/{lead_id}", headers=account.headers)
    assert detail.status_code == 200, detail.text
    latest = detail.json()["latest_analysis"]
    assert (latest["run_id"], latest["analysis_type"]) == (second, "deep")
    assert latest["score"] == latest["analysis"]["score"] == detail.json()["score"]
    assert "outreach_message" in latest["analysis"]

    history = await api.get(f"/api/leads/{lead_id}/analyses", headers=account.headers)
    assert history.status_code == 200
    assert [(r["run_id"], r["analysis_type"], r["status"]) for r in history.json()["data"]] == [
        (second, "deep", "complete"),
        (first, "light", "complete"),
    ]
    assert history.json()["total"] == 2

    for path in (f"/api/leads/{lead_id}", f"/api/leads/{lead_id}/analyses"):
        response = await api.get(path, headers=other.headers)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "lead_not_found"
    for method, path in (("DELETE", ""), ("POST", "/restore")):
        response = await api.request(method, f"/api/leads/{lead_id}{path}", headers=other.headers)
        assert response.status_code == 404
    assert (await api.get(f"/api/leads/{lead_id}", headers=account.headers)).status_code == 200


async def test_soft_delete_restore_and_the_30_days(api, new_account, system_pool):
    account = await new_account(credits_granted=10)
    run_id = await start_ok(api, account, "soft_one", "light")
    await wait_for(api, account, run_id)
    lead_id = (await api.get("/api/leads", headers=account.headers)).json()["data"][0]["id"]

    assert (await api.delete(f"/api/leads/{lead_id}", headers=account.headers)).status_code == 204
    # Gone from every list and lookup, the result of its run included; deleting again: 404.
    assert (await api.get("/api/leads", headers=account.headers)).json()["total"] == 0
    assert (await api.get(f"/api/leads/{lead_id}", headers=account.headers)).status_code == 404
    result = await api.get(f"/api/analysis/{run_id}/result", headers=account.headers)
    assert result.status_code == 200 and result.json()["lead"] is None
    assert (await api.delete(f"/api/leads/{lead_id}", headers=account.headers)).status_code == 404

    restored = await api.post(f"/api/leads/{lead_id}/restore", headers=account.headers)
    assert restored.status_code == 200, restored.text
    assert restored.json()["id"] == lead_id
    assert restored.json()["latest_analysis"]["run_id"] == run_id
    assert (await api.get("/api/leads", headers=account.headers)).json()["total"] == 1
    # Restoring a live lead answers it as it is.
    again = await api.post(f"/api/leads/{lead_id}/restore", headers=account.headers)
    assert again.status_code == 200 and again.json()["id"] == lead_id

    # Deleted, then analysed again: a new lead takes its place, and restoring is a conflict.
    assert (await api.delete(f"/api/leads/{lead_id}", headers=account.headers)).status_code == 204
    rerun = await start_ok(api, account, "soft_one", "light")
    await wait_for(api, account, rerun)
    (live,) = (await api.get("/api/leads", headers=account.headers)).json()["data"]
    assert live["id"] != lead_id
    conflict = await api.post(f"/api/leads/{lead_id}/restore", headers=account.headers)
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "lead_exists"
    assert conflict.json()["error"]["lead_id"] == live["id"]
    assert (await api.get(f"/api/leads/{lead_id}", headers=account.headers)).status_code == 404

    # Past 30 days by the database's clock: no longer recoverable.
    assert (
        await api.delete(f"/api/leads/{live['id']}", headers=account.headers)
    ).status_code == 204
    async with system_pool.acquire() as conn:
        await conn.execute(
            "UPDATE leads SET deleted_at = now() - interval '30 days 1 minute' WHERE id = $1",
            UUID(live["id"]),
        )
    expired = await api.post(f"/api/leads/{live['id']}/restore", headers=account.headers)
    assert expired.status_code == 404
    async with system_pool.acquire() as conn:
        await conn.execute(
            "UPDATE leads SET deleted_at = now() - interval '29 days 23 hours' WHERE id = $1",
            UUID(live["id"]),
        )
    assert (
        await api.post(f"/api/leads/{live['id']}/restore", headers=account.headers)
    ).status_code == 200


async def test_members_and_api_keys_cannot_delete_or_restore(api, new_account, system_pool):
    account = await new_account()
    async with system_pool.acquire() as conn:
        lead_id = await _lead(conn, account, "kept")
    member = await new_account()
    async with system_pool.acquire() as conn:
        await accounts.add_member(conn, account.account_id, member.user_id, "member")
    as_member = member.headers | {"X-Account-Id": str(account.account_id)}
    created = await api.post("/api/api-keys", json={"name": "script"}, headers=account.headers)
    as_key = {"Authorization": f"Bearer {created.json()['key']}"}
    for headers in (as_member, as_key):
        # They read...
        assert (await api.get(f"/api/leads/{lead_id}", headers=headers)).status_code == 200
        # ...but neither delete nor restore.
        for method, path in (("DELETE", ""), ("POST", "/restore")):
            response = await api.request(method, f"/api/leads/{lead_id}{path}", headers=headers)
            assert response.status_code == 403, (headers, method)
            assert response.json()["error"]["code"] == "forbidden"
    assert (await api.get(f"/api/leads/{lead_id}", headers=account.headers)).status_code == 200


@pytest.mark.parametrize("export_format", ["csv", "jsonl"])
async def test_export_walks_every_matching_lead_across_chunks(
    api, new_account, system_pool, export_format
):
    account = await new_account()
    many = 2 * EXPORT_CHUNK + 321
    async with system_pool.acquire() as conn:
        # Followers repeat (ties the keyset must break by id); one name would run as a formula.
        await conn.execute(
            """INSERT INTO leads (account_id, business_profile_id, username, full_name,
                   followers_count, last_score, last_analyzed_at)
               SELECT $1, $2, 'bulk_' || i, CASE WHEN i = 10 THEN '=HYPERLINK("x")' ELSE '' END,
                      i % 97, i % 101, now() - i * interval '1 second'
               FROM generate_series(1, $3) i""",
            account.account_id,
            account.business_profile_id,
            many,
        )
        await _lead(conn, account, "not_matching", score=5, followers=50)
    params = {"format": export_format, "sort": "followers", "order": "asc", "min_score": 10}
    response = await api.get("/api/leads/export", params=params, headers=account.headers)
    assert response.status_code == 200
    assert response.headers["content-disposition"].endswith(f'.{export_format}"')
    if export_format == "csv":
        assert response.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(response.text)))
        formula = next(r for r in rows if r["username"] == "bulk_10")
        assert formula["full_name"] == '\'=HYPERLINK("x")'
    else:
        assert response.headers["content-type"] == "application/x-ndjson"
        rows = [json.loads(line) for line in response.text.splitlines()]
    expected = sorted((i % 97, f"bulk_{i}") for i in range(1, many + 1) if i % 101 >= 10)
    assert len(rows) == len(expected) > 2 * EXPORT_CHUNK
    assert len({r["id"] for r in rows}) == len(rows)
    assert [int(r["followers_count"]) for r in rows] == [f for f, _ in expected]
    assert sorted(r["username"] for r in rows) == sorted(u for _, u in expected)
    # Within equal followers, ids ascend: the order is total, so the chunks neither skip nor
    # repeat a lead.
    pairs = [(int(r["followers_count"]), r["id"]) for r in rows]
    assert pairs == sorted(pairs, key=lambda p: (p[0], UUID(p[1])))


async def test_paths_beside_lead_ids_are_not_lead_ids(api, new_account):
    account = await new_account()
    for method, path, allowed in (
        ("GET", "/api/leads/analyze", {"POST"}),
        ("DELETE", "/api/leads/export", {"GET"}),
        ("PUT", f"/api/leads/{account.business_profile_id}", {"GET", "DELETE"}),
    ):
        response = await api.request(method, path, headers=account.headers)
        assert response.status_code == 405, (method, path)
        assert set(response.headers["Allow"].replace(" ", "").split(",")) == allowed
    # A lead id that is no UUID names nothing.
    assert (await api.get("/api/leads/not-a-uuid", headers=account.headers)).status_code == 404
