"""Duplicates, idempotency keys and concurrent requests: one run, one charge."""

from __future__ import annotations

import asyncio
from uuid import uuid4

from tests.helpers import balance, ledger_for_run, start, start_ok, wait_for


async def test_duplicate_in_flight_request_answers_409_with_the_existing_run(api, new_account):
    account = await new_account()
    username = f"slow_{uuid4().hex[:8]}"
    first = await start_ok(api, account, username, "light")

    second = await start(api, account, f"@{username.upper()}", "deep")
    assert second.status_code == 409, second.text
    assert second.json()["error"]["code"] == "analysis_in_progress"
    assert second.json()["error"]["run_id"] == first

    await api.post(f"/api/analysis/{first}/cancel", headers=account.headers)
    await wait_for(api, account, first)
    # Once the first is over, the same username may be analysed again.
    third = await start(api, account, username, "light")
    assert third.status_code == 202, third.text
    await api.post(f"/api/analysis/{third.json()['run_id']}/cancel", headers=account.headers)
    await wait_for(api, account, third.json()["run_id"])


async def test_concurrent_identical_requests_make_one_run_and_one_charge(
    api, new_account, system_pool
):
    # One credit: the repeats must find the run (409), not a balance already promised (402).
    account = await new_account(credits_granted=1)
    username = f"race_{uuid4().hex[:8]}"
    responses = await asyncio.gather(*(start(api, account, username, "light") for _ in range(12)))

    accepted = [r for r in responses if r.status_code == 202]
    conflicts = [r for r in responses if r.status_code == 409]
    assert len(accepted) == 1, [r.text for r in responses]
    assert len(conflicts) == 11
    run_id = accepted[0].json()["run_id"]
    assert {r.json()["error"]["run_id"] for r in conflicts} == {run_id}

    await wait_for(api, account, run_id, {"complete"})
    assert await ledger_for_run(system_pool, run_id) == [("charge", -1)]
    assert await balance(api, account) == 0


async def test_thirty_concurrent_analyses_on_ten_credits_accept_ten_and_refuse_twenty(
    api, new_account, system_pool
):
    account = await new_account(credits_granted=10)
    responses = await asyncio.gather(
        *(start(api, account, f"many_{i}_{uuid4().hex[:6]}", "light") for i in range(30))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202] * 10 + [402] * 20, [r.text for r in responses]
    refused = [r.json()["error"] for r in responses if r.status_code == 402]
    assert {e["code"] for e in refused} == {"insufficient_credits"}
    assert all(e["balance"] - e["promised"] < 1 for e in refused)

    runs = [r.json()["run_id"] for r in responses if r.status_code == 202]
    finals = await asyncio.gather(*(wait_for(api, account, run, timeout=90) for run in runs))
    assert [f["status"] for f in finals] == ["complete"] * 10, finals
    for run_id in runs:
        assert await ledger_for_run(system_pool, run_id) == [("charge", -1)]
    assert await balance(api, account) == 0


async def test_a_run_in_flight_holds_its_credits_until_it_is_cancelled(
    api, new_account, system_pool
):
    account = await new_account(credits_granted=3)
    slow = await start_ok(api, account, f"slow_{uuid4().hex[:8]}", "deep")
    # Whether or not the slow run has been charged yet, nothing is left for another.
    refused = await start(api, account, f"other_{uuid4().hex[:8]}", "light")
    assert refused.status_code == 402, refused.text

    await api.post(f"/api/analysis/{slow}/cancel", headers=account.headers)
    assert (await wait_for(api, account, slow))["status"] == "cancelled"
    accepted = await start(api, account, f"after_{uuid4().hex[:8]}", "deep")
    assert accepted.status_code == 202, accepted.text
    assert (await wait_for(api, account, accepted.json()["run_id"]))["status"] == "complete"


async def test_idempotency_key_returns_the_same_run(api, new_account, system_pool):
    account = await new_account(credits_granted=1)  # enough for one run, not for two
    key = {"Idempotency-Key": uuid4().hex}
    username = f"idem_{uuid4().hex[:8]}"
    answers = await asyncio.gather(
        *(start(api, account, username, "light", headers=key) for _ in range(6))
    )
    assert [a.status_code for a in answers] == [202] * 6, [a.text for a in answers]
    run_id = answers[0].json()["run_id"]
    assert {a.json()["run_id"] for a in answers} == {run_id}
    await wait_for(api, account, run_id, {"complete"})

    later = await start(api, account, username, "light", headers=key)
    assert later.status_code == 202
    assert later.json()["run_id"] == run_id
    assert later.json()["status"] == "complete"
    assert await ledger_for_run(system_pool, run_id) == [("charge", -1)]

    reused = await start(api, account, f"other_{uuid4().hex[:6]}", "light", headers=key)
    assert reused.status_code == 409
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert reused.json()["error"]["field"] == "Idempotency-Key"
    assert await balance(api, account) == 0
