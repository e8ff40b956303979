"""Authentication, input validation, business profiles, the ledger endpoint, health, docs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import jwt
import pytest

from tests.helpers import start, start_ok, wait_for


async def _runs(system_pool, account) -> int:
    return await system_pool.fetchval(
        "SELECT count(*) FROM analyses WHERE account_id = $1", account.account_id
    )


def _token(settings, user_id, **changes) -> str:
    claims = {
        "sub": str(user_id),
        "aud": "authenticated",
        "exp": datetime.now(UTC) + timedelta(minutes=5),
    } | changes
    secret = changes.pop("secret", settings.jwt_secret.get_secret_value())
    claims.pop("secret", None)
    return jwt.encode(claims, secret, algorithm="HS256")


async def test_requests_without_a_valid_token_answer_401(api, new_account, settings):
    account = await new_account()
    bad_tokens = {
        "missing": None,
        "garbage": "not-a-jwt",
        "expired": _token(settings, account.user_id, exp=datetime.now(UTC) - timedelta(seconds=5)),
        "wrong audience": _token(settings, account.user_id, aud="anon"),
        "wrong secret": _token(settings, account.user_id, secret="x" * 40),
        "unsigned": jwt.encode(
            {
                "sub": str(account.user_id),
                "aud": "authenticated",
                "exp": datetime.now(UTC) + timedelta(minutes=5),
            },
            None,
            algorithm="none",
        ),
        "not a user id": _token(settings, "someone"),
    }
    for name, token in bad_tokens.items():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await api.get("/api/credits/balance", headers=headers)
        assert response.status_code == 401, name
        assert response.json()["error"]["code"] == "unauthorized", name
        assert response.json()["error"]["request_id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "has space", "analysis_type": "light"}, "username"),
        ({"username": "x" * 31, "analysis_type": "light"}, "username"),
        ({"username": "@", "analysis_type": "light"}, "username"),
        ({"username": "émilie", "analysis_type": "light"}, "username"),
        ({"username": "..", "analysis_type": "light"}, "username"),
        ({"username": ".natgeo", "analysis_type": "light"}, "username"),
        ({"username": "natgeo.", "analysis_type": "light"}, "username"),
        ({"username": "nat..geo", "analysis_type": "light"}, "username"),
        ({"username": "\u212aelvin", "analysis_type": "light"}, "username"),  # Kelvin sign
        ({"username": " natgeo", "analysis_type": "light"}, "username"),
        ({"username": "fine", "analysis_type": "ultra"}, "analysis_type"),
        ({"analysis_type": "light"}, "username"),
        (
            {"username": "fine", "analysis_type": "light", "business_profile_id": "nope"},
            "business_profile_id",
        ),
        ({"username": "fine", "analysis_type": "light", "extra": 1}, "extra"),
    ],
)
async def test_invalid_analyze_request_names_the_field_and_changes_nothing(
    api, new_account, system_pool, body, field
):
    account = await new_account(credits_granted=3)
    payload = {"business_profile_id": str(account.business_profile_id)} | body
    response = await api.post("/api/leads/analyze", json=payload, headers=account.headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"
    assert response.json()["error"]["field"] == field
    assert await _runs(system_pool, account) == 0


async def test_username_is_normalised(api, new_account):
    account = await new_account()
    response = await start(api, account, "@Nat.Geo_1", "light")
    assert response.status_code == 202
    assert response.json()["username"] == "nat.geo_1"
    await wait_for(api, account, response.json()["run_id"])


async def test_short_balance_answers_402_and_creates_nothing(api, new_account, system_pool):
    account = await new_account(credits_granted=2)
    response = await start(api, account, "pricey", "deep")
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "insufficient_credits"
    assert response.json()["error"]["balance"] == 2
    assert await _runs(system_pool, account) == 0


async def test_unknown_business_profile_answers_404(api, new_account):
    account = await new_account()
    response = await api.post(
        "/api/leads/analyze",
        json={"username": "x", "analysis_type": "light", "business_profile_id": str(uuid4())},
        headers=account.headers,
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "business_profile_not_found"


async def test_unknown_run_answers_404(api, new_account):
    account = await new_account()
    for path in ("progress", "result"):
        response = await api.get(f"/api/analysis/{uuid4()}/{path}", headers=account.headers)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "run_not_found"
    response = await api.get("/api/analysis/not-a-uuid/progress", headers=account.headers)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "run_id"


async def test_business_profiles_can_be_created_listed_and_read(api, new_account):
    account = await new_account()
    created = await api.post(
        "/api/business-profiles",
        json={"name": "Acme", "offering": "Coffee subscriptions", "target_audience": "Baristas"},
        headers=account.headers,
    )
    assert created.status_code == 201, created.text
    profile = created.json()
    assert profile["name"] == "Acme"
    read = await api.get(f"/api/business-profiles/{profile['id']}", headers=account.headers)
    assert read.json() == profile
    listed = (await api.get("/api/business-profiles", headers=account.headers)).json()
    assert listed["total"] == 2
    assert listed["data"][0]["id"] == profile["id"]

    empty = await api.post("/api/business-profiles", json={"name": ""}, headers=account.headers)
    assert empty.status_code == 422
    assert empty.json()["error"]["field"] == "name"


async def test_transactions_list_the_ledger_newest_first_with_pages(api, new_account):
    account = await new_account(credits_granted=10)
    run_id = await start_ok(api, account, f"ledger_{uuid4().hex[:8]}", "deep")
    await wait_for(api, account, run_id, {"complete"})

    page = (await api.get("/api/credits/transactions?page_size=1", headers=account.headers)).json()
    assert page["total"] == 2 and page["page"] == 1 and page["page_size"] == 1
    assert page["data"][0]["kind"] == "charge"
    assert page["data"][0]["delta"] == -3 and page["data"][0]["balance_after"] == 7
    assert page["data"][0]["run_id"] == run_id
    second = (
        await api.get("/api/credits/transactions?page=2&page_size=1", headers=account.headers)
    ).json()
    assert second["data"][0]["kind"] == "grant" and second["data"][0]["delta"] == 10
    bad = await api.get("/api/credits/transactions?page=0", headers=account.headers)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "page"


async def test_health_reports_each_component(api):
    response = await api.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["version"]
    statuses = {name: c["status"] for name, c in body["components"].items()}
    # The session's worker polls its queue; whether its schedules exist depends on the tests
    # before (tests/test_health.py takes each component down in turn).
    assert set(statuses) == {
        "database",
        "temporal",
        "workers",
        "schedules",
        "ai_circuits",
        "profile_cache",
    }
    assert statuses["database"] == statuses["temporal"] == statuses["workers"] == "ok"
    assert body["status"] in ("healthy", "degraded")


async def test_openapi_documents_every_endpoint_with_its_errors(api):
    spec = (await api.get("/openapi.json")).json()
    expected = {
        ("post", "/api/leads/analyze"): {"202", "401", "402", "404", "409", "422", "503"},
        ("get", "/api/analysis/{run_id}/progress"): {"200", "401", "404"},
        ("post", "/api/analysis/{run_id}/cancel"): {"202", "404", "409"},
        ("get", "/api/analysis/{run_id}/result"): {"200", "404", "409"},
        ("get", "/api/credits/balance"): {"200", "401"},
        ("get", "/api/credits/transactions"): {"200", "401", "422"},
        ("post", "/api/business-profiles"): {"201", "401", "422"},
        ("get", "/api/business-profiles/{profile_id}"): {"200", "404"},
        ("get", "/health"): {"200", "503"},
    }
    for (method, path), statuses in expected.items():
        documented = set(spec["paths"][path][method]["responses"])
        assert statuses <= documented, (method, path, documented)
    analyze = spec["paths"]["/api/leads/analyze"]["post"]
    assert "examples" in str(spec["components"]["schemas"]["AnalyzeRequest"])
    assert any(p["name"] == "idempotency-key" for p in analyze["parameters"])


async def test_runs_are_listed_newest_first_with_filters_and_pages(api, new_account):
    account, stranger = await new_account(credits_granted=20), await new_account()
    other_profile = (
        await api.post("/api/business-profiles", json={"name": "Second"}, headers=account.headers)
    ).json()["id"]
    tag = uuid4().hex[:6]
    first = await start_ok(api, account, f"first_{tag}", "light")
    second = await start_ok(api, account, f"notfound_{tag}", "deep")
    third = (
        await api.post(
            "/api/leads/analyze",
            json={
                "username": f"@Third_{tag}",
                "analysis_type": "light",
                "business_profile_id": other_profile,
            },
            headers=account.headers,
        )
    ).json()["run_id"]
    for run_id in (first, second, third):
        await wait_for(api, account, run_id)
    await start_ok(api, stranger, f"first_{tag}", "light")

    async def listed(query: str = "") -> dict:
        response = await api.get(f"/api/analysis{query}", headers=account.headers)
        assert response.status_code == 200, response.text
        return response.json()

    everything = await listed()
    assert everything["total"] == 3
    assert [r["run_id"] for r in everything["data"]] == [third, second, first]
    assert everything["data"][1]["error"]["code"] == "profile_not_found"
    assert everything["data"][0]["links"]["result"] == f"/api/analysis/{third}/result"

    assert [r["run_id"] for r in (await listed("?status=failed"))["data"]] == [second]
    both = await listed("?status=failed&status=complete")
    assert both["total"] == 3
    assert [r["run_id"] for r in (await listed("?analysis_type=deep"))["data"]] == [second]
    by_name = await listed(f"?username=@THIRD_{tag}")
    assert [r["run_id"] for r in by_name["data"]] == [third]
    by_profile = await listed(f"?business_profile_id={other_profile}")
    assert [r["run_id"] for r in by_profile["data"]] == [third]
    page = await listed("?page=2&page_size=2")
    assert (page["total"], [r["run_id"] for r in page["data"]]) == (3, [first])

    for query, field in [
        ("?status=done", "status"),
        ("?username=a..b", "username"),
        ("?analysis_type=ultra", "analysis_type"),
        ("?business_profile_id=nope", "business_profile_id"),
        ("?page_size=1000", "page_size"),
    ]:
        response = await api.get(f"/api/analysis{query}", headers=account.headers)
        assert response.status_code == 422, query
        assert response.json()["error"]["field"] == field, query


async def test_health_answers_head_and_has_live_and_ready_probes(api):
    for path, statuses in (
        ("/health", {"healthy", "degraded"}),
        ("/health/ready", {"healthy"}),
        ("/health/live", {"ok"}),
    ):
        head = await api.head(path)
        assert head.status_code == 200, path
        assert head.content == b""
        assert (await api.get(path)).json()["status"] in statuses
    refused = await api.post("/health")
    assert refused.status_code == 405
    assert set(refused.headers["Allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}
    assert refused.json()["error"]["code"] == "method_not_allowed"


async def test_method_not_allowed_names_every_method_of_the_path(api, new_account):
    account = await new_account()
    response = await api.delete("/api/business-profiles", headers=account.headers)
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, POST"


@pytest.mark.parametrize(
    "body",
    [b'{"username": "nat', b'{"username": "\xff\xfe"}', b"\xff\xfe\xfd"],
    ids=["truncated JSON", "not UTF-8 inside", "not UTF-8 at all"],
)
async def test_unparseable_body_answers_422_naming_the_body(api, new_account, system_pool, body):
    account = await new_account()
    response = await api.post(
        "/api/leads/analyze",
        content=body,
        headers=account.headers | {"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"
    assert response.json()["error"]["field"] == "body"
    assert await _runs(system_pool, account) == 0
