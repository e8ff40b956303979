"""When the AI provider is down: with AI_FALLBACK=rules the run completes with the rule-based
analyzer's result, marked `"engine": "rules"`, and is refunded exactly once; once the model's
circuit is open, the rules answer at once without reaching the provider. Without the fallback
the run fails and is refunded, as before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import uuid4

import httpx
import jsonschema
import pytest

from activities.ai import falls_back
from core.prompts import TIER_RESULTS
from core.rules import RULES_VERSION
from core.tiers import Tier
from providers.breaker import CircuitOpen
from providers.errors import ProviderRejected, ProviderTimeout, ProviderUnavailable
from tests.conftest import Servers, app_client, make_settings
from tests.helpers import (
    balance,
    ledger_for_run,
    record_history,
    running_worker,
    start_ok,
    wait_for,
)


@asynccontextmanager
async def stack(servers: Servers, fallback: str, **overrides: Any) -> AsyncIterator[Any]:
    """An API and a worker on a queue of their own. Two tries per AI call, a moment apart;
    a model's circuit opens after three failures in a row and stays open for a minute."""
    settings = make_settings(
        servers,
        task_queue=f"fallback-{uuid4().hex[:8]}",
        ai_fallback=fallback,
        provider_attempts=2,
        provider_first_pause_seconds=0.1,
        ai_breaker_threshold=3,
        ai_breaker_pause_seconds=60,
        **overrides,
    )
    async with app_client(settings) as api, running_worker(settings):
        yield api


async def _ai_calls(servers: Servers) -> int:
    async with httpx.AsyncClient(base_url=servers.simulator_url) as http:
        return int((await http.get("/_simulator/openai/calls")).json()["calls"])


async def test_the_rules_complete_a_run_the_ai_could_not_and_it_is_refunded_once(
    servers, new_account, system_pool, temporal_client
):
    account = await new_account(credits_granted=10)
    async with stack(servers, "rules") as api:
        # The model stays down: each part's two tries fail (the circuit opens on the way),
        # and the rules answer. The run completes, refunded.
        before = await _ai_calls(servers)
        run_id = await start_ok(api, account, f"downai_{uuid4().hex[:6]}", "deep")
        done = await wait_for(api, account, run_id)
        assert done["status"] == "complete", done
        # Both parts tried the provider, and tried again: 3 calls, or 4 when both second
        # tries were in flight before the circuit opened. Falling back at the first
        # failure would have made 2.
        assert 3 <= await _ai_calls(servers) - before <= 4
        result = (await api.get(f"/api/analysis/{run_id}/result", headers=account.headers)).json()
        analysis = result["analysis"]
        jsonschema.validate(analysis, TIER_RESULTS[Tier.deep].model_json_schema())
        assert analysis["engine"] == "rules" and analysis["engine_version"] == RULES_VERSION
        assert "the AI was unavailable" in analysis["summary"]
        assert result["credits_charged"] == 0
        assert result["cost"]["ai"] == [] and result["cost"]["ai_usd"] == 0
        assert await ledger_for_run(system_pool, run_id) == [("charge", -3), ("refund", 3)]
        assert await balance(api, account) == 10
        await record_history(temporal_client, run_id, "complete_by_rules")

        # The model's circuit is open now: the next deep run's calls fail at once, without
        # reaching the provider, and the rules answer on their first try.
        before = await _ai_calls(servers)
        second = await start_ok(api, account, f"downai_{uuid4().hex[:6]}", "deep")
        assert (await wait_for(api, account, second))["status"] == "complete"
        assert await _ai_calls(servers) == before
        steps = {
            s["name"]: s
            for s in (
                await api.get(f"/api/analysis/{second}/result", headers=account.headers)
            ).json()["steps"]
        }
        assert steps["analyze_profile"]["attempt"] == 1
        assert await ledger_for_run(system_pool, second) == [("charge", -3), ("refund", 3)]

        # The lead is stored with the rules' score; a cancel after the commit changes nothing.
        cancel = await api.post(f"/api/analysis/{second}/cancel", headers=account.headers)
        assert cancel.status_code == 409
        assert await ledger_for_run(system_pool, second) == [("charge", -3), ("refund", 3)]
        assert await balance(api, account) == 10
    # The invariants (one refund per run, none on an AI-completed run) are checked as the
    # new_account fixture ends.


async def test_without_the_fallback_the_run_fails_and_is_refunded(
    servers, new_account, system_pool
):
    account = await new_account(credits_granted=10)
    async with stack(servers, "none") as api:
        run_id = await start_ok(api, account, f"downai_{uuid4().hex[:6]}", "light")
        done = await wait_for(api, account, run_id)
        assert done["status"] == "failed", done
        assert done["error"]["code"] == "provider_unavailable"
        assert await ledger_for_run(system_pool, run_id) == [("charge", -1), ("refund", 1)]
        assert await balance(api, account) == 10


async def test_a_refusal_is_no_outage_the_run_fails_even_with_the_fallback(
    servers, new_account, system_pool
):
    account = await new_account(credits_granted=10)
    async with stack(servers, "rules") as api:
        run_id = await start_ok(api, account, f"rejectai_{uuid4().hex[:6]}", "light")
        done = await wait_for(api, account, run_id)
        assert done["status"] == "failed", done
        assert done["error"]["code"] == "ai_failed"
        assert await ledger_for_run(system_pool, run_id) == [("charge", -1), ("refund", 1)]


async def test_a_partly_free_batch_completed_by_the_rules_gives_back_units_and_credits(
    servers, new_account, system_pool
):
    """One deep analysis a month is free: a batch of two has a free item (an allowance
    unit) and a paid one (the batch's charge). With the AI down both complete by the rules,
    the unit comes back and the paid item is refunded."""
    plans = {
        "free": {
            "name": "Free",
            "allowances": {"deep": 1},
            "analyses_per_hour": 1_000_000,
            "requests_per_minute": 1_000_000,
        }
    }
    account = await new_account(credits_granted=10)
    async with stack(servers, "rules", plans=plans) as api:
        response = await api.post(
            "/api/leads/analyze/bulk",
            json={
                "usernames": [f"downai_{i}_{uuid4().hex[:4]}" for i in range(2)],
                "analysis_type": "deep",
                "business_profile_id": str(account.business_profile_id),
            },
            headers=account.headers,
        )
        assert response.status_code == 202, response.text
        batch = response.json()
        assert (batch["free_items"], batch["credits_charged"]) == (1, 3)
        for _ in range(300):
            progress = (
                await api.get(
                    f"/api/leads/analyze/bulk/{batch['batch_id']}/progress",
                    headers=account.headers,
                )
            ).json()
            if progress["status"] == "complete":
                break
            await asyncio.sleep(0.1)
        assert progress["counts"]["complete"] == 2, progress
        items = (
            await api.get(
                f"/api/leads/analyze/bulk/{batch['batch_id']}/items", headers=account.headers
            )
        ).json()["data"]
        for item in items:
            result = (
                await api.get(f"/api/analysis/{item['run_id']}/result", headers=account.headers)
            ).json()
            assert result["analysis"]["engine"] == "rules"
            assert result["credits_charged"] == 0
        assert await balance(api, account) == 10
    units = await system_pool.fetchval(
        "SELECT count(*) FROM allowance_uses WHERE account_id = $1 AND returned_at IS NULL",
        account.account_id,
    )
    assert units == 0
    # The ledger invariants (each item refunded once or its unit returned) are checked as
    # the new_account fixture ends.


@pytest.mark.parametrize(
    ("failure", "last_try", "expected"),
    [
        (ProviderUnavailable("OpenAI", "503"), False, False),  # the budget goes on
        (ProviderUnavailable("OpenAI", "503"), True, True),
        (ProviderTimeout("OpenAI", "too slow"), True, True),
        (CircuitOpen("OpenAI", "open"), False, True),  # known down: no need to wait
        (ProviderRejected("OpenAI", "400"), True, False),  # a refusal is no outage
    ],
)
def test_which_failures_fall_back(failure, last_try, expected):
    assert falls_back(failure, last_try=last_try) is expected
