"""Stripe's webhook: the signature checked on the raw body, the event stored once, and its
workflow (`stripe-<event id>`) started to apply it (DESIGN.md section 8)."""

from __future__ import annotations

import json

import stripe
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from temporalio.common import WorkflowIDReusePolicy

from api import runs
from api.deps import SettingsDep, Temporal, TemporalState
from api.errors import ApiError, Unavailable, error_entry, error_example
from core.models import StripeEventInput
from db import stripe_events
from db.pool import connection
from workflows.billing import StripeEventWorkflow, stripe_workflow_id

router = APIRouter(tags=["webhooks"])


class BadWebhook(ApiError):
    status, code = 400, "invalid_signature"


class WebhookAck(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"received": True, "duplicate": False, "queued": True}]}
    )

    received: bool
    duplicate: bool = Field(description="The event had been received before")
    queued: bool = Field(
        description="Its workflow was started (or had been); false when Temporal was out of "
        "reach: the stripe-events job starts it within minutes"
    )


@router.post(
    "/api/webhooks/stripe",
    response_model=WebhookAck,
    summary="Stripe's events (signed; no bearer token)",
    responses={
        400: error_entry(
            400, error_example(400, "invalid_signature", "The Stripe-Signature does not match.")
        ),
        503: error_entry(503),
    },
)
async def stripe_webhook(
    request: Request, settings: SettingsDep, temporal: Temporal, health: TemporalState
) -> WebhookAck:
    """The signature is checked on the raw body (`Stripe-Signature`, 5 minutes of
    tolerance): a missing, wrong or stale one answers 400 and stores nothing. A valid event
    is stored once by its id and answered 200; its workflow is started (a repeat delivery
    changes nothing). With Temporal out of reach the answer is still 200 (`queued` false):
    the event is kept, and the `stripe-events` job starts its workflow within minutes."""
    secret = settings.secret("stripe_webhook_secret")  # rotated through Secrets Manager
    if secret is None:
        raise Unavailable("Stripe webhooks are not configured (STRIPE_WEBHOOK_SECRET).")
    raw = await request.body()
    header = request.headers.get("stripe-signature")
    if not header:
        raise BadWebhook("The Stripe-Signature header is missing.", field="Stripe-Signature")
    try:
        event = stripe.Webhook.construct_event(raw, header, secret.get_secret_value())
    except stripe.SignatureVerificationError:
        raise BadWebhook(
            "The Stripe-Signature does not match, or is too old.", field="Stripe-Signature"
        ) from None
    except ValueError:
        raise BadWebhook("The body is not a Stripe event.", code="invalid_payload") from None
    payload = json.loads(raw)
    event_id, event_type = payload.get("id"), payload.get("type")
    if not isinstance(event_id, str) or not event_id.startswith("evt_") or not event_type:
        raise BadWebhook("The body is not a Stripe event.", code="invalid_payload")
    async with connection(request.app.state.pool) as conn:
        new = await stripe_events.receive(conn, event_id, str(event_type), payload)

    queued = True

    async def stored() -> bool:
        nonlocal queued
        queued = False  # kept: a later delivery, or the stripe-events job, starts it
        return False

    await runs.start_workflow(
        temporal,
        settings,
        health,
        StripeEventWorkflow.run,
        StripeEventInput.of(event.id, settings),
        {
            "id": stripe_workflow_id(event.id),
            "task_queue": settings.task_queue,
            # A delivery after the event was applied starts nothing (a replay does).
            "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
        },
        give_up=stored,
        unavailable=lambda: Unavailable("unused: a stored event is never given up"),
    )
    return WebhookAck(received=True, duplicate=not new, queued=queued)
