"""Stripe through its SDK (`StripeClient`, async calls over httpx): Checkout sessions,
customers, subscriptions and the billing portal, and how a Stripe subscription maps onto an
account, a plan and a paid period (DESIGN.md section 8).

`STRIPE_API_BASE` points the SDK at the simulator; without it the SDK talks to Stripe.
"""

from __future__ import annotations

import functools
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
    """The SDK client for the current key: a key rotated in Secrets Manager gets its own
    client at its first use (clients are kept per key, so calls share connections)."""
    api_key = settings.secret("stripe_api_key")
    if api_key is None:
        raise StripeNotConfigured("Billing is not configured (STRIPE_API_KEY).")
    return _client_for(
        api_key.get_secret_value(), settings.stripe_api_base, settings.stripe_timeout_seconds
    )


@functools.lru_cache(maxsize=4)
def _client_for(api_key: str, api_base: str | None, timeout: float) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base} if api_base else {},
        http_client=stripe.HTTPXClient(timeout=timeout),
        # One retry (with the SDK's own idempotency key): the whole call stays within the
        # API's patience and the webhook activity's time.
        max_network_retries=1,
    )


def provider_error(exc: stripe.StripeError) -> ProviderUnavailable | ProviderRejected:
    """A Stripe failure in the provider tree: retryable (network, 5xx, 429, a lock) or not.
    The message names the failure, never the request (no key, no request id)."""
    status = exc.http_status or 0
    kind = type(exc).__name__
    message = f"{kind} ({status})" + (f": {exc.code}" if exc.code else "")
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
    plan: str | None  # None: no configured plan matches what it bills
    status: str
    period_start: datetime
    period_end: datetime
    cancel_at_period_end: bool
    canceled_at: datetime | None


@dataclass(frozen=True)
class PaidPeriod:
    """A subscription period an invoice paid for, and the plan its price is."""

    subscription_id: str
    start: datetime
    plan: str | None


def subscription_facts(sub: dict[str, Any], plans: dict[str, Plan]) -> SubscriptionFacts:
    """Reads a subscription. The period lives on the subscription item in current API
    versions, on the subscription in older ones. The plan is the one its price is (see
    `plan_for`), not what its metadata said at Checkout: a change in the portal changes the
    price, never the metadata."""
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
    price = item.get("price") or {}
    return SubscriptionFacts(
        id=str(sub["id"]),
        customer_id=str(sub.get("customer")),
        account_hint=hint,
        plan=plan_for(
            plans,
            price_id=price.get("id"),
            amount=price.get("unit_amount"),
            currency=price.get("currency"),
            named=metadata.get("plan"),
        ),
        status=str(sub.get("status")),
        period_start=_time(start),
        period_end=_time(end),
        cancel_at_period_end=bool(sub.get("cancel_at_period_end")),
        canceled_at=_time(sub["canceled_at"]) if sub.get("canceled_at") else None,
    )


def paid_periods(
    invoice: dict[str, Any], plans: dict[str, Plan], named: str | None = None
) -> list[PaidPeriod]:
    """The subscription periods a paid invoice paid for: its subscription lines that are
    not prorations, each with the plan its price is. A draft, open, void or zero invoice
    (a trial) pays for nothing."""
    if invoice.get("status") != "paid" or not int(invoice.get("amount_paid") or 0) > 0:
        return []
    periods = []
    for line in (invoice.get("lines") or {}).get("data") or []:
        details = (line.get("parent") or {}).get("subscription_item_details")
        if details is not None:  # current API versions
            subscription, proration = details.get("subscription"), details.get("proration")
        else:
            subscription, proration = line.get("subscription"), line.get("proration")
        subscription = subscription or invoice_subscription(invoice)
        start = (line.get("period") or {}).get("start")
        if not subscription or proration or start is None:
            continue
        pricing = (line.get("pricing") or {}).get("price_details") or {}
        price = pricing.get("price") or line.get("price")
        price_id = price.get("id") if isinstance(price, dict) else price
        quantity = int(line.get("quantity") or 1)
        periods.append(
            PaidPeriod(
                subscription_id=str(subscription),
                start=_time(start),
                plan=plan_for(
                    plans,
                    price_id=price_id,
                    amount=int(line.get("amount") or 0) // quantity,
                    currency=line.get("currency") or invoice.get("currency"),
                    named=named,
                ),
            )
        )
    return periods


def invoice_subscription(invoice: dict[str, Any]) -> str | None:
    """The subscription an invoice bills: under `parent` in current API versions."""
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    sub = details.get("subscription") or invoice.get("subscription")
    if isinstance(sub, dict):
        sub = sub.get("id")
    return str(sub) if sub else None


def plan_for(
    plans: dict[str, Plan],
    *,
    price_id: str | None,
    amount: Any,
    currency: Any,
    named: Any = None,
) -> str | None:
    """The configured plan a price is: the plan with that Stripe Price id; else, for an
    inline price (Checkout's `price_data`), the plan named at Checkout if the price is
    still its price, else the one plan sold at that amount and currency. None when no
    plan is that price: nothing is granted for a price nobody configured."""
    for name, plan in plans.items():
        if price_id is not None and plan.stripe_price == price_id:
            return name
    try:
        paid = (int(amount), str(currency).lower())
    except (TypeError, ValueError):
        return None
    inline = {
        name: plan
        for name, plan in plans.items()
        if plan.stripe_price is None and plan.price_cents > 0
    }
    if named in inline and (inline[named].price_cents, inline[named].currency) == paid:
        return str(named)
    matching = [n for n, p in inline.items() if (p.price_cents, p.currency) == paid]
    return matching[0] if len(matching) == 1 else None


def _time(value: Any) -> datetime:
    return datetime.fromtimestamp(int(value), tz=UTC)
