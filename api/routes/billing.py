"""Buying credits and subscribing, through Stripe Checkout (DESIGN.md section 8). Nothing
here grants credits or changes a plan: Stripe's events do, through the webhook, so a user
who closes the page after paying still gets what they paid for, once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar
from uuid import uuid4

import stripe
from fastapi import APIRouter, Header, Request, status

from api.deps import SettingsDep, Tenant
from api.errors import (
    BadGateway,
    Conflict,
    Invalid,
    NotFound,
    Unavailable,
    error_example,
    responses,
)
from api.schemas import CheckoutOut, PortalOut, PurchaseIn, SubscribeIn, SubscriptionOut
from core.settings import Settings
from db import allowances, billing
from providers import billing as stripe_api
from providers.errors import ProviderUnavailable

router = APIRouter(tags=["billing"])

T = TypeVar("T")

_MANAGERS_ONLY = error_example(
    403, "forbidden", "Only an owner or admin of the account can do this."
)
_NOT_CONFIGURED = error_example(
    503, "billing_unavailable", "Billing is not configured (STRIPE_API_KEY)."
)
_KEY_REUSED = error_example(
    409,
    "idempotency_key_reused",
    "This Idempotency-Key was used with another request.",
    field="Idempotency-Key",
)
_IDEMPOTENCY_KEY = Header(
    min_length=1,
    max_length=200,
    description="The same key and body give the same Checkout session (24 h); another body "
    "with the same key is refused with 409",
)


def _stripe(request: Request, settings: Settings) -> stripe.StripeClient:
    """The SDK client for the current key (kept per key by providers.billing)."""
    try:
        return stripe_api.client(settings)
    except stripe_api.StripeNotConfigured as exc:
        raise Unavailable(str(exc), code="billing_unavailable") from None


async def _call(what: Callable[[], Awaitable[T]]) -> T:
    """A Stripe call. Stripe out of reach (or overloaded) answers 503, a refusal 502, a
    reused idempotency key 409; the message names the failure, never the request."""
    try:
        return await what()
    except stripe.IdempotencyError:
        raise Conflict(
            "This Idempotency-Key was used with another request.",
            code="idempotency_key_reused",
            field="Idempotency-Key",
        ) from None
    except stripe.StripeError as exc:
        error = stripe_api.provider_error(exc)
        if isinstance(error, ProviderUnavailable):
            raise Unavailable(
                "Stripe is unavailable; nothing was bought or changed. Retry shortly.",
                code="payment_provider_unavailable",
            ) from None
        raise BadGateway(f"Stripe refused the request: {error.message}.") from None


async def _customer(scope: Tenant, client: stripe.StripeClient) -> str:
    """The account's Stripe customer, created the first time (once, even when two requests
    race: the same idempotency key makes one customer, and the first recorded wins)."""
    async with scope.transaction() as conn:
        existing = await billing.customer_of(conn, scope.account_id)
    if existing is not None:
        return existing

    async def create() -> Any:
        return await client.v1.customers.create_async(
            params={"metadata": {"account_id": str(scope.account_id)}},
            options={"idempotency_key": f"customer-{scope.account_id}"},
        )

    try:
        created = await _call(create)
    except Conflict:
        # A concurrent first purchase holds the key at Stripe: its answer is ours too.
        await asyncio.sleep(1.0)
        created = await _call(create)
    async with scope.transaction() as conn:
        return await billing.set_customer(conn, scope.account_id, created.id)


async def _checkout(
    scope: Tenant,
    settings: Settings,
    request: Request,
    *,
    mode: str,
    item: dict[str, Any],
    metadata: dict[str, str],
    key: str | None,
    **extra: Any,
) -> CheckoutOut:
    """A Checkout session for the account's customer: one item, the account in metadata,
    back to BILLING_RETURN_URL; the same key gives the same session (Stripe keeps keys 24 h)."""
    client = _stripe(request, settings)
    customer = await _customer(scope, client)
    back = "checkout" if mode == "payment" else "subscription"
    params: dict[str, Any] = {
        "mode": mode,
        "customer": customer,
        "client_reference_id": str(scope.account_id),
        "line_items": [{"quantity": 1, **item}],
        "metadata": metadata,
        "success_url": f"{settings.return_url}?{back}=success",
        "cancel_url": f"{settings.return_url}?{back}=cancelled",
        **extra,
    }
    idempotency = f"{mode}-{scope.account_id}-{key or uuid4()}"
    session = await _call(
        lambda: client.v1.checkout.sessions.create_async(
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": idempotency},
        )
    )
    return CheckoutOut(session_id=session.id, url=str(session.url))


@router.post(
    "/api/credits/purchase",
    status_code=status.HTTP_201_CREATED,
    response_model=CheckoutOut,
    summary="Buy a credit package (owner or admin): a Stripe Checkout page to pay on",
    responses=responses(
        403,
        409,
        422,
        502,
        503,
        e403=_MANAGERS_ONLY,
        e409=_KEY_REUSED,
        e422=error_example(422, "unknown_package", "No package 'huge'.", field="package"),
        e503=_NOT_CONFIGURED,
    ),
)
async def purchase(
    body: PurchaseIn,
    scope: Tenant,
    settings: SettingsDep,
    request: Request,
    idempotency_key: Annotated[str | None, _IDEMPOTENCY_KEY] = None,
) -> CheckoutOut:
    """Credits arrive when Stripe reports the payment (`checkout.session.completed`), once
    per session, whatever the number of deliveries; never on the redirect back."""
    scope.require_manager()
    package = settings.packages.get(body.package)
    if package is None:
        raise Invalid(
            f"No package {body.package!r}; see GET /api/credits/pricing.",
            code="unknown_package",
            field="package",
        )
    return await _checkout(
        scope,
        settings,
        request,
        mode="payment",
        item={
            "price_data": {
                "currency": package.currency,
                "unit_amount": package.amount_cents,
                "product_data": {"name": f"{package.credits} Oslira credits"},
            }
        },
        metadata={"account_id": str(scope.account_id), "package": body.package},
        key=idempotency_key,
    )


@router.post(
    "/api/billing/subscription",
    status_code=status.HTTP_201_CREATED,
    response_model=CheckoutOut,
    summary="Subscribe to a plan (owner or admin): a Stripe Checkout page to pay on",
    responses=responses(
        403,
        409,
        422,
        502,
        503,
        e403=_MANAGERS_ONLY,
        e409=error_example(
            409,
            "subscription_exists",
            "The account already has an active subscription (or the Idempotency-Key was "
            "used with another request: idempotency_key_reused).",
        ),
        e422=error_example(422, "unknown_plan", "No plan 'gold' is sold.", field="plan"),
        e503=_NOT_CONFIGURED,
    ),
)
async def subscribe(
    body: SubscribeIn,
    scope: Tenant,
    settings: SettingsDep,
    request: Request,
    idempotency_key: Annotated[str | None, _IDEMPOTENCY_KEY] = None,
) -> CheckoutOut:
    """The plan, and each period's credits, start when Stripe reports the first invoice
    paid. To change plans, use the billing portal (`POST /api/billing/portal`)."""
    scope.require_manager()
    plan = settings.plans.get(body.plan)
    if plan is None or (plan.price_cents == 0 and plan.stripe_price is None):
        raise Invalid(f"No plan {body.plan!r} is sold.", code="unknown_plan", field="plan")
    async with scope.transaction() as conn:
        current = await billing.current(conn, scope.account_id)
    if current is not None and current["status"] in billing.LIVE:
        raise Conflict(
            f"The account already has a {current['status']} subscription to "
            f"{current['plan']}; cancel it first or use the billing portal.",
            code="subscription_exists",
        )
    # Without a key of the client's, one per account, plan and subscription history: two
    # tabs subscribing to the same plan get the same Checkout, not two subscriptions.
    metadata = {"account_id": str(scope.account_id), "plan": body.plan}
    return await _checkout(
        scope,
        settings,
        request,
        mode="subscription",
        item=(
            {"price": plan.stripe_price}
            if plan.stripe_price
            else {
                "price_data": {
                    "currency": plan.currency,
                    "unit_amount": plan.price_cents,
                    "recurring": {"interval": "month"},
                    "product_data": {"name": f"Oslira {plan.name}"},
                }
            }
        ),
        metadata=metadata,
        key=idempotency_key or f"{body.plan}-{current['id'] if current else 'first'}",
        subscription_data={"metadata": metadata},
    )


@router.get(
    "/api/billing/subscription",
    response_model=SubscriptionOut,
    summary="The account's plan and subscription (status, current period, credits per period)",
)
async def get_subscription(scope: Tenant, settings: SettingsDep) -> SubscriptionOut:
    """Answered from what Stripe's events last said; `status` is `none` for an account that
    never subscribed."""
    async with scope.transaction() as conn:
        row = await billing.current(conn, scope.account_id)
        plan = await allowances.account_plan(conn, scope.account_id)
    return _subscription_out(settings, plan, row)


@router.delete(
    "/api/billing/subscription",
    response_model=SubscriptionOut,
    summary="Cancel the subscription at the end of its period (owner or admin)",
    responses=responses(
        403,
        404,
        502,
        503,
        e403=_MANAGERS_ONLY,
        e404=error_example(404, "no_subscription", "The account has no active subscription."),
        e503=_NOT_CONFIGURED,
    ),
)
async def cancel_subscription(
    scope: Tenant, settings: SettingsDep, request: Request
) -> SubscriptionOut:
    """The plan and its credits last until the period ends; no renewal after. Asking again
    changes nothing."""
    scope.require_manager()
    async with scope.transaction() as conn:
        row = await billing.current(conn, scope.account_id)
        plan = await allowances.account_plan(conn, scope.account_id)
    if row is None or row["status"] not in billing.LIVE:
        raise NotFound("The account has no active subscription.", code="no_subscription")
    if row["cancel_at_period_end"]:
        return _subscription_out(settings, plan, row)
    client = _stripe(request, settings)
    subscription_id = str(row["id"])
    updated = await _call(
        lambda: client.v1.subscriptions.update_async(
            subscription_id, params={"cancel_at_period_end": True}
        )
    )
    # Stripe's event stores the change (under the subscription's lock, in order with the
    # others); this answer says what Stripe answered.
    answered = dict(row) | {"cancel_at_period_end": bool(updated.cancel_at_period_end)}
    return _subscription_out(settings, plan, answered)


@router.post(
    "/api/billing/portal",
    status_code=status.HTTP_201_CREATED,
    response_model=PortalOut,
    summary="A Stripe customer portal link (owner or admin): invoices, card, cancellation",
    responses=responses(
        403,
        409,
        502,
        503,
        e403=_MANAGERS_ONLY,
        e409=error_example(409, "no_customer", "The account has not bought anything yet."),
        e503=_NOT_CONFIGURED,
    ),
)
async def portal(scope: Tenant, settings: SettingsDep, request: Request) -> PortalOut:
    scope.require_manager()
    client = _stripe(request, settings)
    async with scope.transaction() as conn:
        customer = await billing.customer_of(conn, scope.account_id)
    if customer is None:
        raise Conflict("The account has not bought anything yet.", code="no_customer")
    session = await _call(
        lambda: client.v1.billing_portal.sessions.create_async(
            params={"customer": customer, "return_url": settings.return_url}
        )
    )
    return PortalOut(url=str(session.url))


def _subscription_out(settings: Settings, plan: str, row: Any) -> SubscriptionOut:
    credits = settings.plan(plan).monthly_credits
    if row is None:
        return SubscriptionOut(plan=plan, status="none", credits_per_period=credits)
    return SubscriptionOut(
        plan=plan,
        status=row["status"],
        subscription_id=row["id"],
        current_period_start=row["current_period_start"],
        current_period_end=row["current_period_end"],
        cancel_at_period_end=row["cancel_at_period_end"],
        credits_per_period=settings.plan(row["plan"]).monthly_credits,
    )
