"""Stripe events, processed once each (DESIGN.md section 8): a completed Checkout payment
grants its package's credits, once per session, whatever the number of deliveries."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

import asyncpg
from temporalio import activity

from core.models import DeadLetterInput
from core.settings import Settings
from db import accounts, credits, stripe_events
from db.pool import Connection, connection

log = logging.getLogger(__name__)


class UnusableEvent(Exception):
    """An event this system cannot apply as it is: retried, then dead-lettered."""


class BillingActivities:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings

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
        if event_type == "checkout.session.completed":
            return await self._checkout_completed(conn, obj)
        return "ignored"  # subscriptions and invoices come with the billing issue

    async def _checkout_completed(self, conn: Connection, session: dict[str, Any]) -> str:
        if session.get("mode") != "payment" or session.get("payment_status") != "paid":
            return "ignored"  # a subscription, or a payment still settling
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
