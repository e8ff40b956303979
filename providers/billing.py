"""Stripe through its SDK (`StripeClient`, async calls over httpx): Checkout sessions,
customers, subscriptions and the billing portal, and how a Stripe subscription maps onto an
account, a plan and a paid period (DESIGN.md section 8).

`STRIPE_API_BASE` points the SDK at the simulator; without it the SDK talks to Stripe.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import stripe

from core.settings import Plan, Settings
from providers.errors import ProviderRejected, ProviderUnavailable

PROVIDER = "stripe"


class StripeNotConfigured(RuntimeError):
    """No STRIPE_API_KEY: billing is off in this deployment."""


def client(settings: Settings) -> stripe.StripeClient:
    if settings.stripe_api_key is None:
        raise StripeNotConfigured("Billing is not configured (STRIPE_API_KEY).")
    return stripe.StripeClient(
        settings.stripe_api_key.get_secret_value(),
        base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else {},
        http_client=stripe.HTTPXClient(timeout=settings.stripe_timeout_seconds),
        max_network_retries=2,
    )


def provider_error(exc: stripe.StripeError) -> ProviderUnavailable | ProviderRejected:
    """A Stripe failure in the provider tree: retryable (network, 5xx, 429, a lock) or not."""
    status = exc.http_status or 0
    message = exc.user_message or str(exc) or type(exc).__name__
    if isinstance(exc, stripe.APIConnectionError) or status >= 500 or status in (409, 429):
        return ProviderUnavailable(PROVIDER, message)
    return ProviderRejected(PROVIDER, message)


def as_dict(obj: Any) -> dict[str, Any]:
    """A StripeObject as plain data (what webhook payloads hold)."""
    data = obj.to_dict() if hasattr(obj, "to_dict") else obj
    return dict(data)


@dataclass(frozen=True)
class SubscriptionFacts:
    """What this system needs from a Stripe subscription, read from its current state."""

    id: str
    customer_id: str
    account_hint: UUID | None  # metadata.account_id, set at Checkout
    plan: str | None  # None: no configured plan matches
    status: str
    period_start: datetime
    period_end: datetime
    cancel_at_period_end: bool
    canceled_at: datetime | None
    period_paid: bool  # the invoice of the current period is paid


def subscription_facts(sub: dict[str, Any], plans: dict[str, Plan]) -> SubscriptionFacts:
    """Reads a subscription (with `latest_invoice` expanded). The period lives on the
    subscription item in current API versions, on the subscription in older ones."""
    items = (sub.get("items") or {}).get("data") or [{}]
    item = items[0]
    start = item.get("current_period_start", sub.get("current_period_start"))
    end = item.get("current_period_end", sub.get("current_period_end"))
    if start is None or end is None:
        raise ValueError(f"subscription {sub.get('id')} has no current period")
    metadata = sub.get("metadata") or {}
    try:
        hint: UUID | None = UUID(str(metadata.get("account_id")))
    except ValueError:
        hint = None
    invoice = sub.get("latest_invoice")
    paid = False
    if isinstance(invoice, dict) and invoice.get("status") == "paid":
        lines = (invoice.get("lines") or {}).get("data") or []
        line_start = (lines[0].get("period") or {}).get("start") if lines else None
        paid = line_start is None or int(line_start) == int(start)
    return SubscriptionFacts(
        id=str(sub["id"]),
        customer_id=str(sub.get("customer")),
        account_hint=hint,
        plan=_plan_of(metadata, (item.get("price") or {}).get("id"), plans),
        status=str(sub.get("status")),
        period_start=_time(start),
        period_end=_time(end),
        cancel_at_period_end=bool(sub.get("cancel_at_period_end")),
        canceled_at=_time(sub["canceled_at"]) if sub.get("canceled_at") else None,
        period_paid=paid and sub.get("status") in ("active", "trialing"),
    )


def invoice_subscription(invoice: dict[str, Any]) -> str | None:
    """The subscription an invoice bills: under `parent` in current API versions."""
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    sub = details.get("subscription") or invoice.get("subscription")
    if isinstance(sub, dict):
        sub = sub.get("id")
    return str(sub) if sub else None


def _plan_of(metadata: dict[str, Any], price_id: str | None, plans: dict[str, Plan]) -> str | None:
    named = metadata.get("plan")
    if named in plans:
        return str(named)
    for name, plan in plans.items():
        if price_id is not None and plan.stripe_price == price_id:
            return name
    return None


def _time(value: Any) -> datetime:
    return datetime.fromtimestamp(int(value), tz=UTC)
