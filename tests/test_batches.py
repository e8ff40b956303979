"""Batches end to end (DESIGN.md sections 4 and 6): accepted with their rejects, paid up
front, run as ordinary item runs, followed and listed from the database, cancelled with
exact refunds, idempotent, and private to their account. The `new_account` fixture checks
the ledger invariants, batches included, after every test."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any
from uuid import uuid4

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus

from cli import stack
from tests.conftest import Account, app_client, make_settings
from tests.helpers import balance, process_env, record_history, start_ok, wait_for

BULK = "/api/leads/analyze/bulk"


def _names(prefix: str, n: int) -> list[str]:
    tag = uuid4().hex[:6]
    return [f"{prefix}{tag}_{i}" for i in range(n)]


async def _start(
    api: httpx.AsyncClient,
    account: Account,
    usernames: list[str],
    tier: str = "light",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await api.post(
        BULK,
        json={
            "usernames": usernames,
            "analysis_type": tier,
            "business_profile_id": str(account.business_profile_id),
        },
        headers=account.headers | (headers or {}),
    )


async def _progress(api: httpx.AsyncClient, account: Account, batch_id: str) -> dict[str, Any]:
    response = await api.get(f"{BULK}/{batch_id}/progress", headers=account.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _wait_batch(
    api: httpx.AsyncClient,
    account: Account,
    batch_id: str,
    statuses: tuple[str, ...] = ("complete", "cancelled", "failed"),
    timeout: float = 60,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = await _progress(api, account, batch_id)
        if body["status"] in statuses:
            return body
        assert time.monotonic() < deadline, f"batch still {body['status']}: {body}"
        await asyncio.sleep(0.1)


async def _workflows(client: Any, query: str, at_least: int, timeout: float = 10) -> list[Any]:
    """Temporal's visibility lags a little behind: the executions matching `query`, once
    there are `at_least` of them (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [w async for w in client.list_workflows(query)]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


async def _child_starts(client: Any, batch_id: str) -> tuple[list[str], int]:
    """Every item start the batch's workflow asked for, across all its runs (following the
    continue-as-new chain back from the last), and how many Temporal refused."""
    started: list[str] = []
    refused = 0
    run_id: str | None = None
    while True:
        history = await client.get_workflow_handle(
            f"bulk-{batch_id}", run_id=run_id
        ).fetch_history()
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
                attributes = event.start_child_workflow_execution_initiated_event_attributes
                started.append(attributes.workflow_id)
            elif event.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_FAILED:
                refused += 1
        first = history.events[0].workflow_execution_started_event_attributes
        if not first.continued_execution_run_id:
            return started, refused
        run_id = first.continued_execution_run_id


async def _items(
    api: httpx.AsyncClient, account: Account, batch_id: str, **params: Any
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    page = 1
    while True:
        response = await api.get(
            f"{BULK}/{batch_id}/items",
            params={"page": page, "page_size": 200, **params},
            headers=account.headers,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["data"]
        if len(items) >= body["total"]:
            return items
        page += 1


async def test_a_batch_of_50_runs_each_item_as_an_ordinary_run(
    api, new_account, system_pool, temporal_client
):
    account = await new_account(credits_granted=100)
    good = _names("lead", 46)
    missing = _names("notfound", 2)
    busy = f"busy{uuid4().hex[:6]}"
    busy_run = await start_ok(api, account, busy)  # in flight when the batch is asked for
    sent = [*good, *missing, busy, "@" + good[0].upper(), good[1], "not a handle", "a..b"]

    accepted = await _start(api, account, sent)

    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    batch_id = body["batch_id"]
    assert body["total"] == 48 and body["duplicates"] == 2
    assert body["credits_cost"] == 1 and body["credits_charged"] == 48
    rejected = {r["username"]: r for r in body["rejected"]}
    assert rejected["not a handle"]["code"] == rejected["a..b"]["code"] == "invalid_username"
    # The single run may have finished already; if not, the batch points at it.
    if busy in rejected:
        assert rejected[busy] == {
            "username": busy,
            "code": "analysis_in_progress",
            "run_id": busy_run,
        }
    assert set(body["links"]) == {"progress", "items", "cancel"}

    done = await _wait_batch(api, account, batch_id)
    total = 48 + (busy not in rejected)
    assert done["status"] == "complete"
    assert done["total"] == total and done["progress"] == 100
    assert done["counts"] == {
        "pending": 0,
        "processing": 0,
        "complete": total - 2,
        "failed": 2,
        "cancelled": 0,
    }
    assert done["credits_charged"] == total and done["credits_refunded"] == 2
    assert done["started_at"] and done["finished_at"] and done["eta"] is None
    await wait_for(api, account, busy_run)
    # 100 granted, the single run 1, the batch `total`, two items refunded.
    assert await balance(api, account) == 100 - 1 - total + 2

    items = await _items(api, account, batch_id)
    assert [i["position"] for i in items] == list(range(total))
    assert [i["username"] for i in items][:46] == [g.lower() for g in good]
    failed = [i for i in items if i["status"] == "failed"]
    assert {i["username"] for i in failed} == set(missing)
    assert all(i["error"]["code"] == "profile_not_found" for i in failed)
    complete = [i for i in items if i["status"] == "complete"]
    assert all(0 <= i["score"] <= 100 and i["summary"] for i in complete)
    only_failed = await _items(api, account, batch_id, status="failed")
    assert only_failed == failed

    # An item is an ordinary run: the single-run endpoints answer for it.
    item = complete[0]
    result = await api.get(f"/api/analysis/{item['run_id']}/result", headers=account.headers)
    assert result.status_code == 200 and result.json()["username"] == item["username"]
    charge = await system_pool.fetch(
        "SELECT kind, delta, run_id FROM credit_ledger WHERE batch_id = $1::uuid ORDER BY id",
        batch_id,
    )
    assert [(r["kind"], r["delta"]) for r in charge] == [
        ("charge", -total),
        ("refund", 1),
        ("refund", 1),
    ]
    assert {str(r["run_id"]) for r in charge[1:]} == {i["run_id"] for i in failed}

    # Operators find the batch and every item by its BatchId.
    found = await _workflows(temporal_client, f"BatchId = '{batch_id}'", total + 1)
    assert [w.workflow_type for w in found].count("AnalysisWorkflow") == total
    assert [w.id for w in found if w.workflow_type == "BulkAnalysisWorkflow"] == [
        f"bulk-{batch_id}"
    ]
    await record_history(temporal_client, None, "bulk_complete", workflow_id=f"bulk-{batch_id}")
    await record_history(temporal_client, item["run_id"], "batch_item_complete")

    listed = (await api.get(BULK, headers=account.headers)).json()
    assert listed["total"] == 1 and listed["data"][0]["batch_id"] == batch_id
    assert listed["data"][0]["status"] == "complete"


async def test_402_says_how_many_items_the_credits_pay_for(api, new_account, system_pool):
    account = await new_account(credits_granted=10)
    await start_ok(api, account, f"single{uuid4().hex[:6]}", tier="deep")  # 3 promised

    refused = await _start(api, account, _names("lead", 5), tier="deep")

    assert refused.status_code == 402, refused.text
    error = refused.json()["error"]
    assert error["code"] == "insufficient_credits"
    assert error["affordable"] == 2 and error["accepted"] == 5 and error["needed"] == 15
    assert "pays for 2 of the 5" in error["message"]
    batches = await system_pool.fetchval(
        "SELECT count(*) FROM batches WHERE account_id = $1", account.account_id
    )
    assert batches == 0


async def test_a_batch_with_every_username_rejected_is_complete_and_free(
    api, new_account, system_pool
):
    account = await new_account(credits_granted=10)
    busy = f"slowbusy{uuid4().hex[:6]}"  # in flight for 10 s
    await start_ok(api, account, busy, tier="deep")
    answered = await _start(api, account, ["not a handle", "@@", busy], tier="deep")
    assert answered.status_code == 202, answered.text
    body = answered.json()
    assert body["status"] == "complete" and body["total"] == 0
    assert body["credits_charged"] == 0
    assert [r["code"] for r in body["rejected"]] == [
        "invalid_username",
        "invalid_username",
        "analysis_in_progress",
    ]
    progress = await _progress(api, account, body["batch_id"])
    assert progress["progress"] == 100 and progress["credits_charged"] == 0
    too_many = await _start(api, account, [f"u{i}" for i in range(10_001)])
    assert too_many.status_code == 422 and too_many.json()["error"]["field"] == "usernames"
    none = await _start(api, account, [])
    assert none.status_code == 422 and none.json()["error"]["field"] == "usernames"
    assert (
        await system_pool.fetchval(
            "SELECT count(*) FROM analyses WHERE account_id = $1", account.account_id
        )
        == 1  # the single run
    )


async def test_the_same_idempotency_key_returns_the_same_batch(api, new_account, system_pool):
    account = await new_account(credits_granted=20)
    usernames = _names("lead", 5)
    key = {"Idempotency-Key": f"nightly-{uuid4()}"}

    first, second = await asyncio.gather(
        _start(api, account, usernames, headers=key), _start(api, account, usernames, headers=key)
    )
    third = await _start(api, account, usernames, headers=key)

    assert first.status_code == second.status_code == third.status_code == 202
    assert first.json()["batch_id"] == second.json()["batch_id"] == third.json()["batch_id"]
    other = await _start(api, account, usernames[:4], headers=key)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert other.json()["error"]["field"] == "Idempotency-Key"
    await _wait_batch(api, account, first.json()["batch_id"])
    assert await balance(api, account) == 15  # charged once
    count = await system_pool.fetchval(
        "SELECT count(*) FROM batches WHERE account_id = $1", account.account_id
    )
    assert count == 1


async def test_another_accounts_batch_answers_404(api, new_account):
    mine, theirs = await new_account(), await new_account()
    batch_id = (await _start(api, theirs, _names("lead", 2))).json()["batch_id"]
    for method, path in (
        ("GET", f"{BULK}/{batch_id}/progress"),
        ("GET", f"{BULK}/{batch_id}/items"),
        ("POST", f"{BULK}/{batch_id}/cancel"),
    ):
        response = await api.request(method, path, headers=mine.headers)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["code"] == "batch_not_found"
    assert (await api.get(BULK, headers=mine.headers)).json()["total"] == 0
    await _wait_batch(api, theirs, batch_id)


async def test_cancel_mid_batch_refunds_every_unfinished_item_once(
    servers, settings, api, new_account, system_pool, temporal_client
):
    """A window of 4 over 12 slow scrapes (10 s each): 4 in flight, 8 never started."""
    narrow = make_settings(servers, task_queue=settings.task_queue, batch_window=4)
    account = await new_account(credits_granted=50)
    async with app_client(narrow) as client:
        usernames = [*_names("lead", 2), *_names("slow", 10)]
        batch_id = (await _start(client, account, usernames)).json()["batch_id"]
        # The two quick items complete; then the window holds 4 slow ones.
        deadline = time.monotonic() + 30
        while True:
            progress = await _progress(client, account, batch_id)
            counts = progress["counts"]
            if counts["complete"] == 2 and counts["processing"] == 4:
                break
            assert time.monotonic() < deadline, progress
            await asyncio.sleep(0.1)

        cancelled = await client.post(f"{BULK}/{batch_id}/cancel", headers=account.headers)

        assert cancelled.status_code == 202, cancelled.text
        assert cancelled.json()["cancel_requested"] is True
        done = await _wait_batch(client, account, batch_id, timeout=30)
        assert done["status"] == "cancelled"
        assert done["counts"] == {
            "pending": 0,
            "processing": 0,
            "complete": 2,
            "failed": 0,
            "cancelled": 10,
        }
        assert done["credits_charged"] == 12 and done["credits_refunded"] == 10
        assert await balance(client, account) == 50 - 2
        again = await client.post(f"{BULK}/{batch_id}/cancel", headers=account.headers)
        assert again.status_code == 409
        assert again.json()["error"] == again.json()["error"] | {
            "code": "batch_finished",
            "status": "cancelled",
        }
    # Nothing left running: every item's workflow has ended, and 8 never existed.
    running = [
        w
        async for w in temporal_client.list_workflows(
            f"BatchId = '{batch_id}' AND ExecutionStatus = 'Running'"
        )
    ]
    assert running == []
    started, refused = await _child_starts(temporal_client, batch_id)
    assert len(started) == 6 and refused == 0
    await record_history(temporal_client, None, "bulk_cancelled", workflow_id=f"bulk-{batch_id}")


async def test_cancelling_one_item_leaves_the_batch_running(api, new_account, settings, servers):
    narrow = make_settings(servers, task_queue=settings.task_queue, batch_window=1)
    account = await new_account(credits_granted=10)
    async with app_client(narrow) as client:
        usernames = [*_names("slow", 1), *_names("lead", 3)]
        batch_id = (await _start(client, account, usernames)).json()["batch_id"]
        items = await _items(client, account, batch_id)
        # The last item has not started (a window of 1 behind a 10 s scrape): cancel it.
        last = items[-1]["run_id"]
        response = await client.post(f"/api/analysis/{last}/cancel", headers=account.headers)
        assert response.status_code == 202, response.text
        first = items[0]["run_id"]
        response = await client.post(f"/api/analysis/{first}/cancel", headers=account.headers)
        assert response.status_code == 202, response.text

        done = await _wait_batch(client, account, batch_id, timeout=30)
    assert done["status"] == "complete"
    assert done["counts"]["complete"] == 2 and done["counts"]["cancelled"] == 2
    assert done["credits_refunded"] == 2
    assert await balance(api, account) == 8


async def test_a_small_page_size_continues_as_new_and_starts_each_item_once(
    servers, settings, worker, new_account, temporal_client
):
    small = make_settings(
        servers, task_queue=settings.task_queue, batch_window=3, batch_page_size=4
    )
    account = await new_account(credits_granted=20)
    async with app_client(small) as client:
        usernames = _names("lead", 14)
        batch_id = (await _start(client, account, usernames)).json()["batch_id"]
        done = await _wait_batch(client, account, batch_id)
    assert done["status"] == "complete" and done["counts"]["complete"] == 14
    runs = await _workflows(temporal_client, f"WorkflowId = 'bulk-{batch_id}'", 4)
    assert len(runs) == 4  # 14 items, 4 per run
    assert sum(w.status == WorkflowExecutionStatus.CONTINUED_AS_NEW for w in runs) == len(runs) - 1
    started, refused = await _child_starts(temporal_client, batch_id)
    assert len(started) == 14 and len(set(started)) == 14 and refused == 0
    first_run = min(runs, key=lambda w: w.start_time)
    await record_history(
        temporal_client,
        None,
        "bulk_continued_as_new",
        workflow_id=f"bulk-{batch_id}",
        workflow_run_id=first_run.run_id,
    )


async def test_a_worker_killed_mid_batch_delays_it_and_starts_no_item_twice(
    servers, new_account, system_pool, temporal_client, tmp_path
):
    """The only worker is killed -9 while the batch's workflow and its items run; another
    takes over. Every item ends complete, each with one workflow, the batch charged once."""
    own = make_settings(servers, batch_window=4)  # a queue of its own, no in-process worker
    account = await new_account(credits_granted=30)
    env = process_env(own, str(tmp_path))
    first = stack.spawn(stack.oslira_command("worker"), env, tmp_path / "worker1.log")
    second = None
    try:
        async with app_client(own) as client:
            usernames = [*_names("lead", 3), *_names("slow", 2), *_names("lead", 9)]
            batch_id = (await _start(client, account, usernames)).json()["batch_id"]
            deadline = time.monotonic() + 30
            while (await _progress(client, account, batch_id))["counts"]["complete"] < 3:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)

            first.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait)
            second = stack.spawn(stack.oslira_command("worker"), env, tmp_path / "worker2.log")
            done = await _wait_batch(client, account, batch_id, timeout=120)
    finally:
        for proc in (first, second):
            if proc is not None:
                await asyncio.to_thread(stack.stop, proc)

    assert done["status"] == "complete" and done["counts"]["complete"] == 14
    assert done["credits_charged"] == 14 and done["credits_refunded"] == 0
    # Each item's start was asked for once, and never refused as a duplicate.
    started, refused = await _child_starts(temporal_client, batch_id)
    assert len(started) == 14 and len(set(started)) == 14 and refused == 0
    ledger = await system_pool.fetch(
        "SELECT kind, delta FROM credit_ledger WHERE batch_id = $1::uuid", batch_id
    )
    assert [(r["kind"], r["delta"]) for r in ledger] == [("charge", -14)]


async def test_a_cancel_flag_alone_cancels_the_batch_when_temporal_was_not_reached(
    servers, settings, worker, new_account, system_pool
):
    """The API flags the batch, then asks Temporal, which it may not reach: the workflow
    reads the flag while it waits and cancels as if asked."""
    narrow = make_settings(servers, task_queue=settings.task_queue, batch_window=2)
    account = await new_account(credits_granted=20)
    async with app_client(narrow) as client:
        batch_id = (await _start(client, account, _names("slow", 6))).json()["batch_id"]
        deadline = time.monotonic() + 30
        while (await _progress(client, account, batch_id))["counts"]["processing"] < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        # What the cancel endpoint writes before it calls Temporal, and nothing more.
        await system_pool.execute(
            "UPDATE batches SET cancel_requested_at = now() WHERE id = $1::uuid", batch_id
        )
        done = await _wait_batch(client, account, batch_id, timeout=40)
    assert done["status"] == "cancelled"
    assert done["counts"]["cancelled"] == 6 and done["credits_refunded"] == 6
