"""Step 5: deduct the run's credits, once, after checking it is still wanted and its
business profile still exists."""

from __future__ import annotations

import asyncpg
from temporalio import activity

from activities.common import done_since, expected, now, step_activity
from core.errors import ErrorCode, business_error
from core.models import BusinessContext, ChargeInput, ChargeOutput
from core.progress import IN_FLIGHT, Tracker
from core.settings import Settings
from core.tiers import Tier
from db import allowances, analyses, business_profiles, credits
from db.pool import Connection, connection


class CreditActivities:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings

    async def _draw(self, conn: Connection, run: asyncpg.Record) -> bool:
        """Draws the unit of a free allowance the API promised the run, if the allowance
        still has one (the plan may have changed since); False: charge credits instead."""
        if run["allowance_month"] is None:
            return False
        if run["status"] != "pending" or await credits.run_charged(conn, run["id"]):
            # An earlier attempt committed: a unit, or credits.
            return await allowances.drew(conn, run["id"])
        plan = self._settings.plan(await allowances.account_plan(conn, run["account_id"]))
        covered = await allowances.draw(
            conn,
            account_id=run["account_id"],
            month=run["allowance_month"],
            action=run["analysis_type"],
            allowance=plan.allowances.get(Tier(run["analysis_type"]), 0),
            run_ids=[run["id"]],
        )
        return bool(covered)

    @activity.defn
    @step_activity
    async def deduct_credits(self, input: ChargeInput) -> ChargeOutput:
        """The run row lock orders this against a cancel request and the compensation, so a
        charge can never land after the run was given up. The run leaves `pending` in the
        same transaction."""
        started = now()
        async with connection(self._pool) as conn, conn.transaction():
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
            if run["batch_id"] is None and not await self._draw(conn, run):
                try:
                    movement = await credits.charge_run(
                        conn,
                        account_id=input.account_id,
                        run_id=input.run_id,
                        cost=input.credits_cost,
                    )
                except credits.InsufficientCredits as exc:
                    raise expected(
                        business_error(ErrorCode.insufficient_credits, str(exc))
                    ) from exc
                balance_after = movement.balance_after
            elif run["batch_id"] is None or await allowances.drew(conn, input.run_id):
                # Covered by a free allowance (drawn now, or by its batch's charge).
                balance_after = await credits.balance(conn, input.account_id)
            else:
                # An item of a batch: paid up front by the batch, which starts its items only
                # once charged (DESIGN.md section 4).
                if not await credits.batch_charged(conn, run["batch_id"]):
                    raise RuntimeError(f"batch {run['batch_id']} of run {input.run_id} is unpaid")
                balance_after = await credits.balance(conn, input.account_id)
            done = done_since(started)
            progress = Tracker(input.progress)
            progress.charged(done)
            await analyses.save_progress(conn, progress.document)
        return ChargeOutput(
            done=done,
            balance_after=balance_after,
            business=BusinessContext(
                id=business["id"],
                name=business["name"],
                description=business["description"],
                offering=business["offering"],
                target_audience=business["target_audience"],
            ),
        )
