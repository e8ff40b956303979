"""Step 5 (deduct credits) and the compensation that refunds a failed or cancelled run."""

from __future__ import annotations

import asyncpg
from temporalio import activity

from activities.common import done_since, expected, now, record
from core.errors import ErrorCode, business_error
from core.models import BusinessContext, ChargeInput, ChargeOutput, FinishInput, FinishOutput
from core.tiers import IN_FLIGHT, RunStatus, Step
from db import analyses, business_profiles, credits


class CreditActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn
    async def deduct_credits(self, input: ChargeInput) -> ChargeOutput:
        """Charges the run once, after checking it is still wanted and its business exists.

        The run row lock orders this against a cancel request and the compensation, so a
        charge can never land after the run was given up.
        """
        started = now()
        async with self._pool.acquire() as conn, conn.transaction():
            run = await analyses.lock(conn, input.run_id)
            if run is None:
                raise expected(
                    business_error(ErrorCode.invalid_input, f"run {input.run_id} does not exist")
                )
            if run["status"] not in IN_FLIGHT or run["cancel_requested_at"] is not None:
                raise expected(business_error(ErrorCode.run_cancelled, "the run was cancelled"))
            business = await business_profiles.get_live(conn, input.business_profile_id)
            if business is None or business["account_id"] != input.account_id:
                raise expected(
                    business_error(
                        ErrorCode.business_profile_not_found,
                        "the business profile no longer exists",
                    )
                )
            try:
                movement = await credits.charge_run(
                    conn, account_id=input.account_id, run_id=input.run_id, cost=input.credits_cost
                )
            except credits.InsufficientCreditsError as exc:
                raise expected(
                    business_error(
                        ErrorCode.insufficient_credits,
                        f"the balance of {exc.balance} credits cannot cover {exc.cost}",
                    )
                ) from exc
            done = done_since(started)
            await analyses.record_step(
                conn, input.run_id, record(Step.deduct_credits, done), status=RunStatus.processing
            )
        return ChargeOutput(
            done=done,
            balance_after=movement.balance_after,
            business=BusinessContext(
                id=business["id"],
                name=business["name"],
                description=business["description"],
                offering=business["offering"],
                target_audience=business["target_audience"],
            ),
        )

    @activity.defn
    async def finish_unsuccessful(self, input: FinishInput) -> FinishOutput:
        """Refunds the run if it was charged and records it as failed or cancelled.

        Safe to repeat: the refund has its own idempotency key and a finished run is left as
        it is.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            run = await analyses.lock(conn, input.run_id)
            if run is None:
                return FinishOutput(refunded_credits=0, status=input.status)
            if run["status"] == RunStatus.complete:
                # Past the commit point the run keeps its charge, whatever asked otherwise.
                return FinishOutput(
                    refunded_credits=0, status=RunStatus.complete, lead_id=run["lead_id"]
                )
            refund = await credits.refund_run(
                conn, account_id=run["account_id"], run_id=input.run_id
            )
            await analyses.finish_unsuccessful(
                conn,
                input.run_id,
                status=input.status,
                error_code=input.error.code,
                error_message=input.error.message,
                steps=input.steps,
            )
        # A run that had already ended (say the API failed it) keeps the status it has.
        final = input.status if run["status"] in IN_FLIGHT else RunStatus(run["status"])
        return FinishOutput(refunded_credits=refund.delta if refund else 0, status=final)
