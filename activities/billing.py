"""Stripe events, processed once each (DESIGN.md section 8): a completed Checkout payment
grants its package's credits, once per session, whatever the number of deliveries;
subscription and invoice events re-read the subscription from Stripe (events arrive out of
order; the object's current state does not) and apply it: the account's plan, and the
period's credits once the period's invoice is paid, once per subscription and period."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

import asyncpg
import stripe
from temporalio import activity

from core.models import DeadLetterInput
from core.settings import FREE_PLAN, Settings
from db import accounts, billing, credits, stripe_events
from db.pool import Connection, connection
from providers import billing as stripe_api

log = logging.getLogger(__name__)


class UnusableEvent(Exception):
    """An event this system cannot apply as it is: retried, then dead-lettered."""


SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    }
)
INVOICE_EVENTS = frozenset({"invoice.paid", "invoice.payment_failed"})


def period_grant_key(subscription_id: str, period_start: str) -> str:
    """One grant per subscription and period, whether the invoice's event or the renewal
    job applies it first."""
    return f"renewal:{subscription_id}:{period_start}"


class SubscriptionSync:
    """Brings one subscription from Stripe into the database, in the caller's transaction."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def _stripe(self) -> stripe.StripeClient:
        """The client for the current key (a rotated key is used from its first call)."""
        try:
            return stripe_api.client(self._settings)
        except stripe_api.StripeNotConfigured as exc:
            raise UnusableEvent(str(exc)) from None

    async def _call(self, what: Any) -> Any:
        try:
            return stripe_api.as_dict(await what)
        except stripe.StripeError as exc:
            raise stripe_api.provider_error(exc) from None

    async def sync(
        self,
        conn: Connection,
        subscription_id: str,
        *,
        invoice_id: str | None = None,
        recent_invoices: bool = False,
    ) -> int:
        """Re-reads the subscription under a lock per subscription (two events for it apply
        one after the other), stores what Stripe says now and settles the account's plan.
        Then grants each period a paid invoice paid for, once per subscription and period:
        the subscription's latest invoice, the event's own invoice (`invoice_id`: a period
        paid late, after the next one began) and, for the renewal job, its last paid
        invoices. Answers the number of periods granted now."""
        await billing.lock_subscription(conn, subscription_id)
        client = self._stripe()
        try:
            sub = stripe_api.as_dict(
                await client.v1.subscriptions.retrieve_async(
                    subscription_id, params={"expand": ["latest_invoice"]}
                )
            )
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404 and await billing.forget(conn, subscription_id):
                # Stripe no longer knows it (deleted with its customer, say): it bills
                # nobody, so it sets no plan.
                log.error("subscription %s is unknown to Stripe: ended here", subscription_id)
                return 0
            raise stripe_api.provider_error(exc) from None
        except stripe.StripeError as exc:
            raise stripe_api.provider_error(exc) from None
        facts = stripe_api.subscription_facts(sub, self._settings.plans)
        if facts.plan is None:
            raise UnusableEvent(f"subscription {facts.id}: its price is no configured plan's")
        account_id = await conn.fetchval(
            "SELECT id FROM accounts WHERE stripe_customer_id = $1", facts.customer_id
        )
        hint = facts.account_hint
        if account_id is None and hint is not None and await accounts.account_exists(conn, hint):
            account_id = hint
        if account_id is None:
            raise UnusableEvent(f"subscription {facts.id}: no account for {facts.customer_id}")
        await billing.store(
            conn,
            billing.SubscriptionState(
                id=facts.id,
                account_id=account_id,
                customer_id=facts.customer_id,
                plan=facts.plan,
                status=facts.status,
                current_period_start=facts.period_start,
                current_period_end=facts.period_end,
                cancel_at_period_end=facts.cancel_at_period_end,
                canceled_at=facts.canceled_at,
            ),
        )
        await billing.settle_plan(conn, account_id, FREE_PLAN)
        live = await billing.live_count(conn, account_id)
        if live > 1:
            log.error("account %s has %d live subscriptions: see Stripe", account_id, live)

        invoices: dict[str, dict[str, Any]] = {}
        if isinstance(sub.get("latest_invoice"), dict):
            invoices[sub["latest_invoice"]["id"]] = sub["latest_invoice"]
        if invoice_id is not None and invoice_id not in invoices:
            invoices[invoice_id] = await self._call(client.v1.invoices.retrieve_async(invoice_id))
        if recent_invoices:
            paid = await self._call(
                client.v1.invoices.list_async(
                    params={"subscription": facts.id, "status": "paid", "limit": 3}
                )
            )
            invoices |= {i["id"]: i for i in paid.get("data") or []}
        granted = 0
        metadata_plan = (sub.get("metadata") or {}).get("plan")
        for invoice in invoices.values():
            for period in stripe_api.paid_periods(invoice, self._settings.plans, metadata_plan):
                if period.subscription_id != facts.id:
                    continue
                if period.plan is None:
                    raise UnusableEvent(
                        f"invoice {invoice.get('id')}: its price is no configured plan's"
                    )
                amount = self._settings.plan(period.plan).monthly_credits
                if amount == 0:
                    continue
                movement = await credits.grant(
                    conn,
                    account_id=account_id,
                    amount=amount,
                    key=period_grant_key(facts.id, period.start.isoformat()),
                    kind="renewal",
                    reference=facts.id,
                    description=f"{period.plan} plan credits from {period.start:%Y-%m-%d}",
                )
                granted += movement.new
        return granted


class BillingActivities:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings
        self._subscriptions = SubscriptionSync(settings)

    @activity.defn
    async def process_stripe_event(self, event_id: str) -> str:
        """Applies the stored event and records how it ended (`processed` or `ignored`),
        in one transaction; an event already applied is not applied again."""
        async with connection(self._pool) as conn, conn.transaction():
            event = await stripe_events.lock(conn, event_id)
            if event is None:
                raise LookupError(f"no stored Stripe event {event_id}")
            if event["status"] in ("processed", "ignored"):
                return str(event["status"])
            status = await self._apply(conn, event["type"], event["payload"])
            await stripe_events.finish(conn, event_id, status)
        log.info("stripe event %s (%s): %s", event_id, event["type"], status)
        return status

    async def _apply(self, conn: Connection, event_type: str, payload: dict[str, Any]) -> str:
        obj = payload.get("data", {}).get("object", {})
        subscription: str | None = None
        if event_type == "checkout.session.completed":
            if obj.get("mode") != "subscription":
                return await self._checkout_completed(conn, obj)
            subscription = obj.get("subscription")
        elif event_type in SUBSCRIPTION_EVENTS:
            subscription = obj.get("id")
        elif event_type in INVOICE_EVENTS:
            subscription = stripe_api.invoice_subscription(obj)
            if subscription and event_type == "invoice.paid":
                await self._subscriptions.sync(conn, subscription, invoice_id=str(obj["id"]))
                return "processed"
        if not subscription:
            return "ignored"
        await self._subscriptions.sync(conn, str(subscription))
        return "processed"

    async def _checkout_completed(self, conn: Connection, session: dict[str, Any]) -> str:
        if session.get("payment_status") != "paid":
            return "ignored"  # a payment still settling
        metadata = session.get("metadata") or {}
        name = metadata.get("package")
        package = self._settings.packages.get(str(name))
        if package is None:
            raise UnusableEvent(f"session {session.get('id')}: no package {name!r}")
        if (session.get("amount_total"), session.get("currency")) != (
            package.amount_cents,
            package.currency,
        ):
            raise UnusableEvent(
                f"session {session.get('id')}: paid {session.get('amount_total')} "
                f"{session.get('currency')}, the {name} package costs {package.amount_cents} "
                f"{package.currency}"
            )
        try:
            account_id = UUID(str(metadata.get("account_id")))
        except ValueError:
            raise UnusableEvent(f"session {session.get('id')}: no account") from None
        if not await accounts.account_exists(conn, account_id):
            raise UnusableEvent(f"session {session.get('id')}: no account {account_id}")
        await credits.grant(
            conn,
            account_id=account_id,
            amount=package.credits,
            key=f"purchase:{session['id']}",
            kind="purchase",
            reference=str(session["id"]),
            description=f"{name} package ({package.credits} credits)",
        )
        return "processed"

    @activity.defn
    async def dead_letter(self, input: DeadLetterInput) -> None:
        """The event kept failing: `failed`, for an operator (`oslira webhooks list
        --failed`, `oslira webhooks replay`)."""
        async with connection(self._pool) as conn:
            await stripe_events.fail(conn, input.event_id, input.error)
        log.error("stripe event %s dead-lettered: %s", input.event_id, input.error)
