"""Stripe's webhook through the API: signatures checked on the raw body (valid, wrong secret,
stale, tampered, missing), each event stored once and applied once by its workflow however
often it is delivered, and an event that keeps failing dead-lettered.

Payloads are signed as Stripe signs them (PROVIDERS.md): `t=<unix>,v1=HMAC-SHA256(secret,
"<t>.<raw body>")`, and checked by the real `stripe` SDK in the API."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any
from uuid import uuid4

import asyncpg
import httpx

from core import schedules, temporal
from core.settings import DEFAULT_PACKAGES
from db import credits
from tests.conftest import STRIPE_WEBHOOK_SECRET, Account, app_client, make_settings
from tests.helpers import process_env, record_history, run_job, running_worker

PATH = "/api/webhooks/stripe"


def _event(account: Account, package: str = "starter", **session: Any) -> dict[str, Any]:
    price = DEFAULT_PACKAGES[package]
    return {
        "id": f"evt_{uuid4().hex}",
        "object": "event",
        "type": "checkout.session.completed",
        "created": int(time.time()),
        "livemode": False,
        "data": {
            "object": {
                "id": f"cs_test_{uuid4().hex}",
                "object": "checkout.session",
                "mode": "payment",
                "payment_status": "paid",
                "amount_total": price.amount_cents,
                "currency": price.currency,
                "metadata": {"account_id": str(account.account_id), "package": package},
            }
            | session
        },
    }


def _signed(
    event: dict[str, Any], secret: str = STRIPE_WEBHOOK_SECRET, at: int | None = None
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(event).encode()
    stamp = at if at is not None else int(time.time())
    signature = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
    return body, {
        "Stripe-Signature": f"t={stamp},v1={signature.hexdigest()}",
        "Content-Type": "application/json",
    }


async def _deliver(api: httpx.AsyncClient, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await api.post(PATH, content=body, headers=headers)


async def _status(pool: asyncpg.Pool, event_id: str, wanted: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = await pool.fetchval("SELECT status FROM stripe_events WHERE id = $1", event_id)
        if status == wanted:
            return
        assert time.monotonic() < deadline, f"event {event_id} is {status}, not {wanted}"
        await asyncio.sleep(0.05)


async def test_a_purchase_delivered_three_times_grants_its_credits_once(
    api, new_account, system_pool, temporal_client
):
    account = await new_account(credits_granted=0)
    event = _event(account)
    body, headers = _signed(event)
    answers = await asyncio.gather(*(_deliver(api, body, headers) for _ in range(3)))
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert sorted(a.json()["duplicate"] for a in answers) == [False, True, True]
    await _status(system_pool, event["id"], "processed")
    await record_history(
        temporal_client, "", "stripe_purchase", workflow_id=f"stripe-{event['id']}"
    )
    again = await _deliver(api, *_signed(event))  # a later redelivery, newly signed
    assert again.status_code == 200 and again.json()["duplicate"] is True

    rows = await system_pool.fetch(
        "SELECT kind, delta, reference FROM credit_ledger WHERE account_id = $1",
        account.account_id,
    )
    session_id = event["data"]["object"]["id"]
    assert [(r["kind"], r["delta"], r["reference"]) for r in rows] == [
        ("purchase", 100, session_id)
    ]
    # Another event for the same session (Stripe may send a new event id): still once.
    second = _event(account) | {"data": event["data"]}
    assert (await _deliver(api, *_signed(second))).status_code == 200
    await _status(system_pool, second["id"], "processed")
    async with system_pool.acquire() as conn:
        assert await credits.balance(conn, account.account_id) == 100


async def test_signatures_are_checked_and_a_refused_event_stores_nothing(
    api, new_account, system_pool
):
    account = await new_account()
    event = _event(account)
    body, headers = _signed(event)
    tampered = body.replace(b'"starter"', b'"scale"  ')
    for what, (payload, sent) in {
        "wrong secret": _signed(event, secret="whsec_someone_else"),
        "stale": _signed(event, at=int(time.time()) - 600),
        "tampered": (tampered, headers),
        "missing": (body, {"Content-Type": "application/json"}),
        "garbled": (body, {"Stripe-Signature": "nonsense"}),
    }.items():
        response = await _deliver(api, payload, sent)
        assert response.status_code == 400, (what, response.text)
        assert response.json()["error"]["code"] == "invalid_signature", what
    assert not await system_pool.fetchval(
        "SELECT count(*) FROM stripe_events WHERE id = $1", event["id"]
    )
    # Signed, but not an event.
    not_event = await _deliver(api, *_signed({"hello": "world"}))
    assert not_event.status_code == 400
    assert not_event.json()["error"]["code"] == "invalid_payload"
    async with system_pool.acquire() as conn:
        assert await credits.balance(conn, account.account_id) == 100  # the opening grant


async def test_an_event_that_keeps_failing_is_dead_lettered_and_others_are_ignored(
    servers, new_account, system_pool
):
    account = await new_account(credits_granted=0)
    settings = make_settings(
        servers, task_queue=f"stripe-{uuid4().hex[:8]}", stripe_event_attempts=2
    )
    async with running_worker(settings), app_client(settings) as api:
        mispriced = _event(account, amount_total=1)
        assert (await _deliver(api, *_signed(mispriced))).status_code == 200
        await _status(system_pool, mispriced["id"], "failed")
        unpaid = _event(account, payment_status="unpaid")
        other = _event(account) | {"type": "customer.created"}
        for event in (unpaid, other):
            assert (await _deliver(api, *_signed(event))).status_code == 200
            await _status(system_pool, event["id"], "ignored")
    row = await system_pool.fetchrow(
        "SELECT attempts, last_error FROM stripe_events WHERE id = $1", mispriced["id"]
    )
    assert row["attempts"] == 1  # recorded once, when it was dead-lettered
    assert "paid 1 usd" in row["last_error"]
    async with system_pool.acquire() as conn:
        assert await credits.balance(conn, account.account_id) == 0


async def test_an_event_stored_while_temporal_is_down_is_answered_200_and_applied_later(
    servers, new_account, system_pool
):
    """Temporal out of reach: the event is stored and answered 200 (`queued` false); the
    stripe-events job starts its workflow, which grants once; the next run starts none."""
    account = await new_account(credits_granted=0)
    queue = f"stripe-{uuid4().hex[:8]}"
    event = _event(account)
    down = make_settings(servers, task_queue=queue, temporal_address="127.0.0.1:9")
    async with app_client(down) as api:
        response = await _deliver(api, *_signed(event))
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True, "duplicate": False, "queued": False}
    await _status(system_pool, event["id"], "received")
    # The job leaves events younger than a minute to the webhook's own start.
    await system_pool.execute(
        "UPDATE stripe_events SET received_at = now() - interval '2 minutes' WHERE id = $1",
        event["id"],
    )
    up = make_settings(servers, task_queue=queue)
    client = await temporal.connect(up)
    await schedules.ensure(client, up)
    async with running_worker(up):
        report = await run_job(client, up, "stripe-events", "job_stripe_events")
        assert event["id"] in report["started"]
        await _status(system_pool, event["id"], "processed")
        again = await run_job(client, up, "stripe-events")
    assert event["id"] not in again["started"]
    async with system_pool.acquire() as conn:
        assert await credits.balance(conn, account.account_id) == 100


async def test_without_a_secret_the_webhook_answers_503(servers):
    settings = make_settings(servers, stripe_webhook_secret=None)
    async with app_client(settings) as api:
        response = await api.post(PATH, content=b"{}", headers={"Stripe-Signature": "t=1,v1=0"})
    assert response.status_code == 503


async def test_a_dead_lettered_event_is_listed_and_replayed_once(servers, new_account, system_pool):
    """An event for a package the configuration lacked: dead-lettered; once the package is
    configured, `oslira webhooks replay` applies it, once."""
    account = await new_account(credits_granted=0)
    queue = f"stripe-{uuid4().hex[:8]}"
    before = make_settings(servers, task_queue=queue, stripe_event_attempts=2)
    event = _event(account)
    event["data"]["object"]["metadata"]["package"] = "gold"
    event["data"]["object"] |= {"amount_total": 99_00}
    async with running_worker(before), app_client(before) as api:
        assert (await _deliver(api, *_signed(event))).status_code == 200
        await _status(system_pool, event["id"], "failed")

    packages = {"gold": {"credits": 900, "amount_cents": 99_00}}
    after = make_settings(servers, task_queue=queue, stripe_event_attempts=2, packages=packages)
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, **process_env(after, home, PACKAGES=json.dumps(packages))}

        async def oslira(*args: str) -> subprocess.CompletedProcess[str]:
            return await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "cli.main", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )

        listed = await oslira("webhooks", "list", "--failed")
        assert listed.returncode == 0, listed.stderr
        failed = [json.loads(line) for line in listed.stdout.splitlines()]
        assert event["id"] in {f["id"] for f in failed}
        async with running_worker(after):
            replayed = await oslira("webhooks", "replay", event["id"])
            assert replayed.returncode == 0, replayed.stdout + replayed.stderr
            assert "processed" in replayed.stdout
            again = await oslira("webhooks", "replay", event["id"])
        assert again.returncode == 0 and "already processed" in again.stdout
        missing = await oslira("webhooks", "replay", "evt_nothing")
        assert missing.returncode == 1 and "no stored Stripe event" in missing.stderr
    async with system_pool.acquire() as conn:
        assert await credits.balance(conn, account.account_id) == 900
