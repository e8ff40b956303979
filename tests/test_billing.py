"""Buying credits and subscribing, end to end: the API calls Stripe through the real `stripe`
SDK, pointed at our Stripe simulator over HTTP; the simulator "pays" and delivers signed
events to the API, a real `oslira api` process, which stores them and has the worker apply
them. Duplicated and out-of-order deliveries, a failed payment, a cancellation, and the
renewal job racing an invoice's event are each checked against the ledger."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import pytest
from temporalio.client import Client

from core import schedules, temporal
from core.settings import Plan, Settings
from providers.billing import plan_for
from tests.conftest import STRIPE_WEBHOOK_SECRET, Account, Servers, make_settings
from tests.helpers import as_tenant, record_history, run_job, running_api, running_worker

PLANS: dict[str, Any] = {
    "free": {"name": "Free", "analyses_per_hour": 10**6, "requests_per_minute": 10**6},
    "pro": {"name": "Pro", "monthly_credits": 500, "price_cents": 4_900},
}


@dataclass
class Stack:
    settings: Settings
    api: httpx.AsyncClient  # the `oslira api` process
    sim: httpx.AsyncClient  # the simulator, as this module's Stripe account
    temporal: Client


@pytest.fixture(scope="module")
async def stack(servers: Servers) -> AsyncIterator[Stack]:
    """A Stripe account of its own at the simulator, whose webhook endpoint is a real API
    process; a worker and the schedules on a queue of their own."""
    settings = make_settings(
        servers,
        task_queue=f"billing-{uuid4().hex[:8]}",
        plans=PLANS,
        stripe_api_key=f"sk_test_billing_{uuid4().hex}",
        billing_return_url="http://app.test/billing",
        # An outage of Stripe's makes events wait (1 s here, not 10 minutes) after 2 tries.
        stripe_event_attempts=2,
        stripe_outage_pause_seconds=1,
    )
    assert settings.stripe_api_key is not None
    client = await temporal.connect(settings)
    await schedules.ensure(client, settings)
    async with running_worker(settings):
        with running_api(settings) as process:
            async with (
                httpx.AsyncClient(base_url=process.url, timeout=30) as api,
                httpx.AsyncClient(
                    base_url=servers.simulator_url,
                    headers={
                        "Authorization": f"Bearer {settings.stripe_api_key.get_secret_value()}"
                    },
                    timeout=60,
                ) as sim,
            ):
                endpoint = await sim.post(
                    "/_simulator/stripe/endpoint",
                    data={
                        "url": f"{process.url}/api/webhooks/stripe",
                        "secret": STRIPE_WEBHOOK_SECRET,
                    },
                )
                assert endpoint.status_code == 200, endpoint.text
                yield Stack(settings, api, sim, client)


@pytest.fixture(autouse=True)
async def plain_delivery(stack: Stack) -> AsyncIterator[None]:
    await _delivery(stack, copies=1, order="sent", hold=False)
    yield
    await _sim(stack, "/_simulator/stripe/outage", on="false")
    await _delivery(stack, copies=1, order="sent", hold=False)


async def _delivery(stack: Stack, **settings: Any) -> None:
    answer = await stack.sim.post("/_simulator/stripe/delivery", data=settings)
    assert answer.status_code == 200, answer.text


async def _sim(stack: Stack, path: str, **form: Any) -> dict[str, Any]:
    answer = await stack.sim.post(path, data=form)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def _pay(checkout_url: str) -> httpx.Response:
    """What the customer does on the Checkout page: press Pay (the simulator then sends
    the events before it redirects)."""
    async with httpx.AsyncClient(timeout=60) as browser:
        page = await browser.get(checkout_url)
        assert page.status_code == 200 and "Pay" in page.text
        return await browser.post(checkout_url)


async def _eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def _settled(stack: Stack, pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """Waits until every event the simulator sent was answered 200 and applied; answers
    the deliveries."""
    deliveries: list[dict[str, Any]] = []

    async def done() -> bool:
        nonlocal deliveries
        body = (await stack.sim.get("/_simulator/stripe/deliveries")).json()
        deliveries = body["deliveries"]
        ids = [e["id"] for e in body["events"]]
        answered = {d["event_id"] for d in deliveries if d["status"] == 200}
        if not set(ids) <= answered:
            return False
        pending = await pool.fetchval(
            "SELECT count(*) FROM stripe_events WHERE id = ANY($1) AND status = 'received'", ids
        )
        return bool(pending == 0) and bool(
            await pool.fetchval("SELECT count(*) FROM stripe_events WHERE id = ANY($1)", ids)
            == len(ids)
        )

    await _eventually(done, "the simulator's events to be applied")
    return deliveries


async def _ledger(pool: asyncpg.Pool, account: Account) -> list[tuple[str, int, str]]:
    rows = await pool.fetch(
        "SELECT kind, delta, idempotency_key FROM credit_ledger WHERE account_id = $1 ORDER BY id",
        account.account_id,
    )
    return [(r["kind"], r["delta"], r["idempotency_key"]) for r in rows]


async def _balance(stack: Stack, account: Account) -> int:
    answer = await stack.api.get("/api/credits/balance", headers=account.headers)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["balance"])


async def test_a_purchase_grants_its_credits_once_even_delivered_three_times(
    stack, new_account, system_pool
):
    account = await new_account(credits_granted=5)
    await _delivery(stack, copies=3)
    bought = await stack.api.post(
        "/api/credits/purchase",
        json={"package": "starter"},
        headers=account.headers | {"Idempotency-Key": "buy-1"},
    )
    assert bought.status_code == 201, bought.text
    session = bought.json()
    assert session["session_id"].startswith("cs_test_")
    assert (
        session["url"] == f"{stack.settings.stripe_api_base}/checkout/pay/{session['session_id']}"
    )
    # The same key and body give the same session; another body with that key is refused.
    again = await stack.api.post(
        "/api/credits/purchase",
        json={"package": "starter"},
        headers=account.headers | {"Idempotency-Key": "buy-1"},
    )
    assert again.status_code == 201 and again.json() == session
    other = await stack.api.post(
        "/api/credits/purchase",
        json={"package": "growth"},
        headers=account.headers | {"Idempotency-Key": "buy-1"},
    )
    assert other.status_code == 409, other.text
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    # Nothing is granted before the payment.
    assert await _balance(stack, account) == 5

    paid = await _pay(session["url"])
    assert paid.status_code == 303
    assert paid.headers["location"] == "http://app.test/billing?checkout=success"
    deliveries = await _settled(stack, system_pool)

    completed = [d for d in deliveries if d["event_type"] == "checkout.session.completed"]
    assert len(completed) >= 3 and {d["status"] for d in completed} == {200}
    assert len({d["event_id"] for d in completed}) == 1
    assert await _ledger(system_pool, account) == [
        ("grant", 5, f"grant:opening:{account.account_id}"),
        ("purchase", 100, f"purchase:{session['session_id']}"),
    ]
    assert await _balance(stack, account) == 105
    stored = await system_pool.fetch(
        "SELECT status FROM stripe_events WHERE id = $1", completed[0]["event_id"]
    )
    assert [r["status"] for r in stored] == ["processed"]
    # One Stripe customer for the account, reused by the next purchase.
    customer = await system_pool.fetchval(
        "SELECT stripe_customer_id FROM accounts WHERE id = $1", account.account_id
    )
    assert customer and customer.startswith("cus_")
    second = await stack.api.post(
        "/api/credits/purchase", json={"package": "growth"}, headers=account.headers
    )
    assert second.status_code == 201
    looked_up = await stack.sim.get(f"/v1/checkout/sessions/{second.json()['session_id']}")
    assert looked_up.json()["customer"] == customer


async def test_purchase_refusals(stack, new_account, system_pool):
    account = await new_account(credits_granted=1)
    unknown = await stack.api.post(
        "/api/credits/purchase", json={"package": "huge"}, headers=account.headers
    )
    assert unknown.status_code == 422
    assert unknown.json()["error"] | {"request_id": None} == {
        "code": "unknown_package",
        "message": "No package 'huge'; see GET /api/credits/pricing.",
        "field": "package",
        "request_id": None,
    }
    await system_pool.execute(
        "UPDATE account_members SET role = 'member' WHERE account_id = $1", account.account_id
    )
    for method, path, body in (
        ("POST", "/api/credits/purchase", {"package": "starter"}),
        ("POST", "/api/billing/subscription", {"plan": "pro"}),
        ("DELETE", "/api/billing/subscription", None),
        ("POST", "/api/billing/portal", None),
    ):
        answer = await stack.api.request(method, path, json=body, headers=account.headers)
        assert answer.status_code == 403, (path, answer.text)
    # A member can read the plan; nothing was created at Stripe for the account.
    plan = await stack.api.get("/api/billing/subscription", headers=account.headers)
    assert plan.status_code == 200
    assert plan.json() | {"plan": "free", "status": "none"} == plan.json()
    assert (
        await system_pool.fetchval(
            "SELECT stripe_customer_id FROM accounts WHERE id = $1", account.account_id
        )
        is None
    )


async def _subscribe(stack: Stack, account: Account) -> str:
    """Subscribes the account to pro through Checkout; answers the subscription id."""
    started = await stack.api.post(
        "/api/billing/subscription", json={"plan": "pro"}, headers=account.headers
    )
    assert started.status_code == 201, started.text
    assert (await _pay(started.json()["url"])).status_code == 303
    looked_up = await stack.sim.get(f"/v1/checkout/sessions/{started.json()['session_id']}")
    subscription = looked_up.json()["subscription"]
    assert subscription.startswith("sub_")
    return str(subscription)


async def _plan(stack: Stack, account: Account) -> dict[str, Any]:
    answer = await stack.api.get("/api/billing/subscription", headers=account.headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _renewals(ledger: list[tuple[str, int, str]]) -> list[tuple[int, str]]:
    return [(delta, key) for kind, delta, key in ledger if kind == "renewal"]


async def _pay_latest_invoice(stack: Stack, subscription: str) -> str:
    sub = (await stack.sim.get(f"/v1/subscriptions/{subscription}")).json()
    await _sim(stack, f"/_simulator/stripe/invoices/{sub['latest_invoice']}/pay")
    return str(sub["latest_invoice"])


async def _period_start(stack: Stack, subscription: str) -> str:
    sub = (await stack.sim.get(f"/v1/subscriptions/{subscription}")).json()
    start = sub["items"]["data"][0]["current_period_start"]
    return datetime.fromtimestamp(start, tz=UTC).isoformat()


async def test_a_subscription_from_checkout_to_renewals_to_cancellation(
    stack, new_account, system_pool
):
    account = await new_account(credits_granted=1)
    subscription = await _subscribe(stack, account)
    await _settled(stack, system_pool)
    plan = await _plan(stack, account)
    assert plan | {"current_period_start": None, "current_period_end": None} == {
        "plan": "pro",
        "status": "active",
        "subscription_id": subscription,
        "current_period_start": None,
        "current_period_end": None,
        "cancel_at_period_end": False,
        "credits_per_period": 500,
    }
    first = await _period_start(stack, subscription)
    assert _renewals(await _ledger(system_pool, account)) == [
        (500, f"renewal:{subscription}:{first}")
    ]
    # A second subscription while this one lives is refused.
    twice = await stack.api.post(
        "/api/billing/subscription", json={"plan": "pro"}, headers=account.headers
    )
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "subscription_exists"

    # The renewal job in the same period: the invoice got there first, nothing more.
    report = await run_job(stack.temporal, stack.settings, "renewal")
    assert subscription not in report["subscriptions_granted"]
    assert str(account.account_id) not in {str(a) for a in report["granted"]}

    # The next period's payment fails: past due, no grant; paid on retry: granted once.
    await _sim(stack, f"/_simulator/stripe/subscriptions/{subscription}/advance", paid="false")
    await _settled(stack, system_pool)
    assert (await _plan(stack, account))["status"] == "past_due"
    assert len(_renewals(await _ledger(system_pool, account))) == 1
    report = await run_job(stack.temporal, stack.settings, "renewal")
    assert subscription not in report["subscriptions_granted"]
    second = await _period_start(stack, subscription)
    await _pay_latest_invoice(stack, subscription)
    await _settled(stack, system_pool)
    assert (await _plan(stack, account))["status"] == "active"
    assert _renewals(await _ledger(system_pool, account)) == [
        (500, f"renewal:{subscription}:{first}"),
        (500, f"renewal:{subscription}:{second}"),
    ]

    # Cancelled at period end: still pro until then; the period's end ends it.
    cancelled = await stack.api.delete("/api/billing/subscription", headers=account.headers)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["cancel_at_period_end"] is True
    assert cancelled.json()["plan"] == "pro"
    await _sim(stack, f"/_simulator/stripe/subscriptions/{subscription}/advance")
    await _settled(stack, system_pool)
    plan = await _plan(stack, account)
    assert (plan["plan"], plan["status"]) == ("free", "canceled")
    assert len(_renewals(await _ledger(system_pool, account))) == 2
    gone = await stack.api.delete("/api/billing/subscription", headers=account.headers)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "no_subscription"
    # The portal link is for the account's customer.
    portal = await stack.api.post("/api/billing/portal", headers=account.headers)
    assert portal.status_code == 201, portal.text
    page = await stack.sim.get(portal.json()["url"].removeprefix(str(stack.sim.base_url)))
    assert subscription in page.text and "canceled" in page.text
    assert await _balance(stack, account) == 1 + 1000


async def test_the_renewal_job_first_then_the_invoice_grants_the_period_once(
    stack, new_account, system_pool
):
    """The invoice's event is lost for a while (held): the renewal job re-reads the
    subscription, finds the period paid and grants it; the event, delivered late and
    twice, grants nothing more."""
    account = await new_account(credits_granted=1)
    subscription = await _subscribe(stack, account)
    await _settled(stack, system_pool)
    await _delivery(stack, hold=True, copies=2)
    await _sim(stack, f"/_simulator/stripe/subscriptions/{subscription}/advance")
    second = await _period_start(stack, subscription)
    report = await run_job(stack.temporal, stack.settings, "renewal")
    assert subscription in report["subscriptions_granted"]
    await _sim(stack, "/_simulator/stripe/flush")
    await _settled(stack, system_pool)
    renewals = _renewals(await _ledger(system_pool, account))
    assert len(renewals) == 2 and renewals[1] == (500, f"renewal:{subscription}:{second}")
    assert await _balance(stack, account) == 1 + 1000


async def test_subscription_events_out_of_order_end_in_stripes_state(
    stack, new_account, system_pool
):
    """Deleted is delivered before updated (and everything twice): each handler re-reads
    the subscription, so the account ends on the free plan, the subscription canceled."""
    account = await new_account(credits_granted=1)
    subscription = await _subscribe(stack, account)
    await _settled(stack, system_pool)
    await _delivery(stack, hold=True, order="reverse", copies=2)
    cancelled = await stack.api.delete("/api/billing/subscription", headers=account.headers)
    assert cancelled.status_code == 200
    await _sim(stack, f"/_simulator/stripe/subscriptions/{subscription}/end")
    flushed = await _sim(stack, "/_simulator/stripe/flush")
    assert len(flushed["delivered"]) == 2
    events = (await stack.sim.get("/_simulator/stripe/deliveries")).json()["events"]
    order = [e["type"] for e in events if e["id"] in flushed["delivered"]]
    assert order == ["customer.subscription.updated", "customer.subscription.deleted"]
    deliveries = await _settled(stack, system_pool)
    sent = [d["event_type"] for d in deliveries if d["event_id"] in flushed["delivered"]]
    assert sent.index("customer.subscription.deleted") < sent.index("customer.subscription.updated")
    plan = await _plan(stack, account)
    assert (plan["plan"], plan["status"], plan["cancel_at_period_end"]) == (
        "free",
        "canceled",
        True,
    )
    row = await system_pool.fetchrow(
        "SELECT status, account_id FROM subscriptions WHERE id = $1", subscription
    )
    assert (row["status"], row["account_id"]) == ("canceled", account.account_id)
    assert len(_renewals(await _ledger(system_pool, account))) == 1
    assert (
        await system_pool.fetchval("SELECT plan FROM accounts WHERE id = $1", account.account_id)
        == "free"
    )


async def test_a_period_paid_late_is_granted_even_after_the_next_one_began(
    stack, new_account, system_pool
):
    """Period 2's payment fails; Stripe goes on cycling the subscription, and period 3's
    fails too; then period 2's invoice is paid, then period 3's: each period is granted
    once, for itself (reading only the subscription's latest invoice would lose period 2)."""
    account = await new_account(credits_granted=1)
    subscription = await _subscribe(stack, account)
    await _settled(stack, system_pool)
    starts = [await _period_start(stack, subscription)]
    invoices = []
    for _ in range(2):
        await _sim(stack, f"/_simulator/stripe/subscriptions/{subscription}/advance", paid="false")
        starts.append(await _period_start(stack, subscription))
        sub = (await stack.sim.get(f"/v1/subscriptions/{subscription}")).json()
        invoices.append(sub["latest_invoice"])
    await _settled(stack, system_pool)
    assert (await _plan(stack, account))["status"] == "past_due"
    assert _renewals(await _ledger(system_pool, account)) == [
        (500, f"renewal:{subscription}:{starts[0]}")
    ]
    await _sim(stack, f"/_simulator/stripe/invoices/{invoices[0]}/pay")
    await _settled(stack, system_pool)
    assert (await _plan(stack, account))["status"] == "past_due"  # period 3 is still unpaid
    await _sim(stack, f"/_simulator/stripe/invoices/{invoices[1]}/pay")
    await _settled(stack, system_pool)
    assert (await _plan(stack, account))["status"] == "active"
    assert _renewals(await _ledger(system_pool, account)) == [
        (500, f"renewal:{subscription}:{start}") for start in starts
    ]


async def test_stripe_down_answers_503_and_delays_events_without_dead_lettering(
    stack, new_account, system_pool
):
    account = await new_account(credits_granted=1)
    subscription = await _subscribe(stack, account)
    await _settled(stack, system_pool)
    await _sim(stack, "/_simulator/stripe/outage", on="true")
    bought = await stack.api.post(
        "/api/credits/purchase", json={"package": "starter"}, headers=account.headers
    )
    assert bought.status_code == 503, bought.text
    assert bought.json()["error"]["code"] == "payment_provider_unavailable"
    # The next period's events arrive while Stripe cannot be asked about them: their
    # workflows wait (2 tries, then a pause, again and again) instead of dead-lettering.
    await _sim(stack, f"/_simulator/stripe/subscriptions/{subscription}/advance")
    events = (await stack.sim.get("/_simulator/stripe/deliveries")).json()["events"]
    paid = next(e["id"] for e in reversed(events) if e["type"] == "invoice.paid")
    await asyncio.sleep(6)  # several rounds of tries and pauses
    status = await system_pool.fetchval("SELECT status FROM stripe_events WHERE id = $1", paid)
    assert status == "received"
    assert len(_renewals(await _ledger(system_pool, account))) == 1
    await _sim(stack, "/_simulator/stripe/outage", on="false")
    await _settled(stack, system_pool)
    assert (
        await system_pool.fetchval("SELECT status FROM stripe_events WHERE id = $1", paid)
        == "processed"
    )
    assert len(_renewals(await _ledger(system_pool, account))) == 2
    await record_history(stack.temporal, "", "stripe_outage_wait", workflow_id=f"stripe-{paid}")


async def test_concurrent_first_purchases_make_one_stripe_customer(stack, new_account, system_pool):
    account = await new_account(credits_granted=1)
    answers = await asyncio.gather(
        *(
            stack.api.post(
                "/api/credits/purchase", json={"package": "starter"}, headers=account.headers
            )
            for _ in range(5)
        )
    )
    assert [a.status_code for a in answers] == [201] * 5, [a.text for a in answers]
    assert len({a.json()["session_id"] for a in answers}) == 5
    customer = await system_pool.fetchval(
        "SELECT stripe_customer_id FROM accounts WHERE id = $1", account.account_id
    )
    for answer in answers:
        session = await stack.sim.get(f"/v1/checkout/sessions/{answer.json()['session_id']}")
        assert session.json()["customer"] == customer


async def test_the_renewal_job_ends_a_subscription_stripe_forgot_and_goes_on(
    stack, new_account, system_pool
):
    """One subscription Stripe answers 404 for (its customer was deleted there): it ends
    here, its account back on the free plan; the job still re-reads the others."""
    forgotten, kept = await new_account(credits_granted=1), await new_account(credits_granted=1)
    ghost = f"sub_ghost{uuid4().hex[:12]}"
    await system_pool.execute(
        """INSERT INTO subscriptions (id, account_id, customer_id, plan, status,
               current_period_start, current_period_end)
           VALUES ($1, $2, 'cus_ghost', 'pro', 'active', now(), now() + interval '30 days')""",
        ghost,
        forgotten.account_id,
    )
    await system_pool.execute(
        "UPDATE accounts SET plan = 'pro' WHERE id = $1", forgotten.account_id
    )
    subscription = await _subscribe(stack, kept)
    await _settled(stack, system_pool)
    await _delivery(stack, hold=True)  # the next period's events are lost for now
    await _sim(stack, f"/_simulator/stripe/subscriptions/{subscription}/advance")
    report = await run_job(stack.temporal, stack.settings, "renewal")
    assert subscription in report["subscriptions_granted"]
    row = await system_pool.fetchrow(
        "SELECT s.status, a.plan FROM subscriptions s JOIN accounts a ON a.id = s.account_id "
        "WHERE s.id = $1",
        ghost,
    )
    assert (row["status"], row["plan"]) == ("canceled", "free")
    assert len(_renewals(await _ledger(system_pool, kept))) == 2
    await _sim(stack, "/_simulator/stripe/flush")
    await _settled(stack, system_pool)
    assert len(_renewals(await _ledger(system_pool, kept))) == 2


def test_a_subscription_is_the_plan_its_price_is():
    """The plan comes from the price, not from what metadata said at Checkout: a portal
    change of price changes the plan; a price no plan has is no plan."""
    plans = {
        "free": Plan(name="Free"),
        "pro": Plan(name="Pro", price_cents=4_900),
        "business": Plan(name="Business", price_cents=19_900),
        "team": Plan(name="Team", stripe_price="price_team"),
    }

    def plan(price_id: str | None, amount: int, named: str | None = "pro") -> str | None:
        return plan_for(plans, price_id=price_id, amount=amount, currency="usd", named=named)

    assert plan("price_inline1", 4_900) == "pro"
    assert plan("price_inline2", 19_900) == "business"  # metadata says pro: the price wins
    assert plan("price_team", 1) == "team"
    assert plan("price_inline3", 5_000) is None
    assert plan_for(plans, price_id=None, amount=4_900, currency="eur", named="pro") is None


async def test_the_api_role_reads_its_own_subscriptions_and_sets_only_its_own_customer(
    settings, new_account, system_pool
):
    mine, theirs = await new_account(credits_granted=1), await new_account(credits_granted=1)
    for account in (mine, theirs):
        await system_pool.execute(
            """INSERT INTO subscriptions (id, account_id, customer_id, plan, status,
                   current_period_start, current_period_end)
               VALUES ($1, $2, 'cus_x', 'pro', 'active', now(), now() + interval '30 days')""",
            f"sub_rls{uuid4().hex[:12]}",
            account.account_id,
        )
    conn = await asyncpg.connect(settings.api_dsn)
    try:
        async with as_tenant(conn, mine.account_id):
            seen = await conn.fetch("SELECT account_id FROM subscriptions")
            assert {r["account_id"] for r in seen} == {mine.account_id}
            # Another account's customer cannot be set from this account.
            other = await conn.fetchval(
                "SELECT set_stripe_customer($1, 'cus_stolen')", theirs.account_id
            )
            assert other is None
            first = await conn.fetchval(
                "SELECT set_stripe_customer($1, 'cus_first')", mine.account_id
            )
            second = await conn.fetchval(
                "SELECT set_stripe_customer($1, 'cus_second')", mine.account_id
            )
            assert (first, second) == ("cus_first", "cus_first")
        for statement in (
            "UPDATE subscriptions SET status = 'canceled'",
            "UPDATE subscriptions SET cancel_at_period_end = true",
            "INSERT INTO subscriptions (id, account_id, customer_id, plan, status, "
            "current_period_start, current_period_end) "
            f"VALUES ('sub_forged', '{mine.account_id}', 'cus_x', 'pro', 'active', now(), now())",
            "UPDATE accounts SET stripe_customer_id = 'cus_forged'",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with as_tenant(conn, mine.account_id):
                    await conn.execute(statement)
    finally:
        await conn.close()
    assert (
        await system_pool.fetchval(
            "SELECT stripe_customer_id FROM accounts WHERE id = $1", theirs.account_id
        )
        is None
    )
