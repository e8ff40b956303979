"""One workflow per Stripe event, named `stripe-<event id>` (DESIGN.md section 8)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.billing import BillingActivities
    from core.models import DeadLetterInput, StripeEventInput


def stripe_workflow_id(event_id: str) -> str:
    return f"stripe-{event_id}"


@workflow.defn(name="StripeEventWorkflow")
class StripeEventWorkflow:
    """Applies the event, retried `attempts` times; an event that still fails lands in the
    dead-letter state (`failed`) rather than retrying forever."""

    @workflow.run
    async def run(self, input: StripeEventInput) -> str:
        try:
            status: str = await workflow.execute_activity_method(
                BillingActivities.process_stripe_event,
                input.event_id,
                start_to_close_timeout=timedelta(minutes=1),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=1),
                    maximum_interval=timedelta(minutes=1),
                    maximum_attempts=input.attempts,
                ),
            )
            return status
        except ActivityError as exc:
            cause = exc.cause or exc
            await workflow.execute_activity_method(
                BillingActivities.dead_letter,
                DeadLetterInput(event_id=input.event_id, error=str(cause)),
                start_to_close_timeout=timedelta(minutes=1),
                retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
            )
            return "failed"
