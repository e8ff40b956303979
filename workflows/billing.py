"""One workflow per Stripe event, named `stripe-<event id>` (DESIGN.md section 8)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.billing import BillingActivities
    from core.models import DeadLetterInput, StripeEventInput


# Stripe itself out of reach (the handler re-reads objects from it) is no reason to
# dead-letter an event: the workflow waits and tries again, for as long as Stripe would go on
# delivering it (3 days).
OUTAGE_PATCH = "stripe-outage-waits"
OUTAGE_DAYS = 3


def stripe_workflow_id(event_id: str) -> str:
    return f"stripe-{event_id}"


@workflow.defn(name="StripeEventWorkflow")
class StripeEventWorkflow:
    """Applies the event, retried `attempts` times; an event that still fails lands in the
    dead-letter state (`failed`) rather than retrying forever. When the attempts failed
    because Stripe was out of reach, it waits and tries again instead, for up to 3 days."""

    @workflow.run
    async def run(self, input: StripeEventInput) -> str:
        waits = 0
        while True:
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
                if (
                    _stripe_unavailable(cause)
                    and waits * input.outage_pause_seconds < OUTAGE_DAYS * 86_400
                    and workflow.patched(OUTAGE_PATCH)
                ):
                    waits += 1
                    await workflow.sleep(timedelta(seconds=input.outage_pause_seconds))
                    continue
                return await self._dead_letter(input, cause)

    async def _dead_letter(self, input: StripeEventInput, cause: BaseException) -> str:
        await workflow.execute_activity_method(
            BillingActivities.dead_letter,
            DeadLetterInput(event_id=input.event_id, error=str(cause)),
            start_to_close_timeout=timedelta(minutes=1),
            retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
        )
        return "failed"


def _stripe_unavailable(error: BaseException) -> bool:
    return isinstance(error, ApplicationError) and error.type == "ProviderUnavailable"
