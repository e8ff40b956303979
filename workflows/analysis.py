"""AnalysisWorkflow: steps 5-12 of one analysis run (DESIGN.md section 3).

Layout, chosen for latency without losing per-step retries:
- database steps (5 deduct, 6 cache check, 10-12 commit) are local activities: they run
  inside the workflow task, with their own retry policies, and cost no server round trip;
- provider calls (7 scrape, 9 AI) are regular activities: they heartbeat so a cancel
  reaches them, survive a worker crash without redoing earlier steps, and an operator sees
  them, with attempts and failures, in the Temporal UI. The scrape activity also stores
  the profile in the cache (step 8), best-effort;
- steps 10, 11 and 12 are one transaction, the commit point: lead, analysis and status
  land together or not at all.

Failures after the charge are compensated by one local activity that refunds (once, by its
idempotency key) and records the final status. Compensation and the commit step run shielded
from cancellation, so a cancel cannot interrupt them half-way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar
from uuid import UUID

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    FailureError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from activities.ai import AIActivities
    from activities.cache import CacheActivities
    from activities.credits import CreditActivities
    from activities.results import ResultActivities
    from activities.scrape import ScrapeActivities
    from core.analysis import TIER_PARTS
    from core.errors import ErrorCode, code_for_type
    from core.models import (
        AIInput,
        AIOutput,
        AnalysisInput,
        AnalysisOutcome,
        BusinessContext,
        CacheLookupInput,
        ChargeInput,
        CostBreakdown,
        FinishInput,
        Profile,
        Progress,
        RunError,
        SaveResultInput,
        ScrapeInput,
        StepDone,
        StepRecord,
    )
    from core.tiers import API_STEPS, RunStatus, Step

T = TypeVar("T")

ACCOUNT_ID = SearchAttributeKey.for_keyword("AccountId")
ANALYSIS_TYPE = SearchAttributeKey.for_keyword("AnalysisType")
USERNAME = SearchAttributeKey.for_keyword("Username")
RUN_STATUS = SearchAttributeKey.for_keyword("RunStatus")

# Retry policies (DESIGN.md section 3). Business failures are raised non-retryable by the
# activities themselves, so these only ever retry what may pass.
DB_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=8,
)
# A refund is never given up on: compensation retries until the database answers, and an
# operator sees the attempts in the UI meanwhile.
COMPENSATION_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=0,
)
CACHE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    maximum_interval=timedelta(seconds=2),
    maximum_attempts=3,
)
SCRAPE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=3,
)
AI_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=2,
)

DB_TIMEOUT = timedelta(seconds=15)
# Apify answers 408 to a synchronous run past 300 s.
SCRAPE_TIMEOUT = timedelta(seconds=330)
AI_TIMEOUT = timedelta(seconds=150)
# Provider activities heartbeat every second; a worker that dies mid-call is noticed here.
PROVIDER_HEARTBEAT = timedelta(seconds=5)


@workflow.defn
class AnalysisWorkflow:
    @workflow.init
    def __init__(self, input: AnalysisInput) -> None:
        self._input = input
        self._status = RunStatus.pending
        self._progress = Step.check_credits.progress_after
        self._current: Step | None = Step.check_credits
        self._error: RunError | None = None
        self._lead_id: UUID | None = None
        started = workflow.info().start_time
        self._steps = {step: StepRecord(name=step) for step in Step}
        for step in API_STEPS:
            self._steps[step] = StepRecord(
                name=step, status="done", started_at=started, finished_at=started, attempt=1
            )

    @workflow.query
    def progress(self) -> Progress:
        return Progress(
            run_id=self._input.run_id,
            status=self._status,
            progress=self._progress,
            current_step=self._current,
            steps=list(self._steps.values()),
            error=self._error,
        )

    @workflow.run
    async def run(self, input: AnalysisInput) -> AnalysisOutcome:
        try:
            return await self._analyse(input)
        except (asyncio.CancelledError, FailureError) as exc:
            # A failed regular activity arrives as ActivityError; a failed local activity
            # may arrive as its ApplicationError itself.
            if is_cancelled_exception(exc):
                # Cancelled through Temporal (the API or an operator): refund, then end the
                # workflow as cancelled, unless the commit had already landed.
                await self._give_up(RunStatus.cancelled, ErrorCode.run_cancelled, "cancelled")
                if self._status is RunStatus.complete:
                    return self._outcome()
                raise
            assert isinstance(exc, FailureError)
            code, message = _describe(exc)
            # run_cancelled here means a step saw the cancel flag on the run's row before
            # the Temporal cancel request arrived.
            status = RunStatus.cancelled if code is ErrorCode.run_cancelled else RunStatus.failed
            await self._give_up(status, code, message)
            if self._status is not RunStatus.failed:
                return self._outcome()
            raise ApplicationError(message, type=code.value, non_retryable=True) from exc

    async def _analyse(self, input: AnalysisInput) -> AnalysisOutcome:
        charge = await self._local(
            Step.deduct_credits,
            CreditActivities.deduct_credits,
            ChargeInput(
                run_id=input.run_id,
                account_id=input.account_id,
                business_profile_id=input.business_profile_id,
                credits_cost=input.credits_cost,
            ),
            DB_RETRY,
        )
        self._set_status(RunStatus.processing)

        cost = CostBreakdown()
        profile = await self._cached_profile(input)
        if profile is not None:
            cost.cache_hit = True
            self._skip(Step.scrape_profile, Step.store_in_cache)
        else:
            scraped = await self._remote(
                Step.scrape_profile,
                ScrapeActivities.scrape_profile,
                ScrapeInput(run_id=input.run_id, username=input.username),
                SCRAPE_RETRY,
                SCRAPE_TIMEOUT,
                task_queue=input.scrape_task_queue or workflow.info().task_queue,
            )
            profile = scraped.profile
            cost.apify_usd = scraped.cost_usd
            if scraped.stored is not None:
                self._record(scraped.stored)

        analysis = await self._analyse_with_ai(input, charge.business, profile, cost)

        self._begin(Step.upsert_lead)
        saved, cancel_requested = await _shielded(
            self._execute_local(
                ResultActivities.save_result,
                SaveResultInput(
                    run_id=input.run_id,
                    account_id=input.account_id,
                    business_profile_id=input.business_profile_id,
                    profile=profile,
                    analysis=analysis,
                    cost=cost,
                    steps=list(self._steps.values()),
                ),
                DB_RETRY,
                summary="steps 10-12: upsert lead, save analysis, complete (commit point)",
            )
        )
        if cancel_requested:
            workflow.logger.info("cancel requested after the commit point: the run completes")
        self._finish(Step.upsert_lead, saved.upserted)
        self._finish(Step.save_analysis, saved.saved)
        self._finish(Step.complete, saved.saved)
        self._lead_id = saved.lead_id
        self._set_status(RunStatus.complete)
        return self._outcome()

    async def _cached_profile(self, input: AnalysisInput) -> Profile | None:
        """Step 6. A cache that cannot be read is a miss, not a failed run."""
        try:
            found = await self._local(
                Step.check_cache,
                CacheActivities.check_cache,
                CacheLookupInput(run_id=input.run_id, username=input.username, tier=input.tier),
                CACHE_RETRY,
            )
        except FailureError as exc:
            if is_cancelled_exception(exc):
                raise
            workflow.logger.warning("cache check failed, scraping instead: %s", exc)
            self._steps[Step.check_cache].status = "failed"
            return None
        return found.profile

    async def _analyse_with_ai(
        self,
        input: AnalysisInput,
        business: BusinessContext,
        profile: Profile,
        cost: CostBreakdown,
    ) -> dict[str, Any]:
        """Step 9: the tier's AI calls, in parallel; one failing cancels the others."""
        self._begin(Step.analyze_profile)
        calls = [
            asyncio.ensure_future(
                workflow.execute_activity_method(
                    AIActivities.analyze_profile,
                    AIInput(
                        run_id=input.run_id,
                        part=part,
                        tier=input.tier,
                        business=business,
                        profile=profile,
                    ),
                    start_to_close_timeout=AI_TIMEOUT,
                    heartbeat_timeout=PROVIDER_HEARTBEAT,
                    retry_policy=AI_RETRY,
                    summary=f"step 9: AI {part} for @{input.username}",
                )
            )
            for part in TIER_PARTS[input.tier]
        ]
        try:
            results: list[AIOutput] = list(await asyncio.gather(*calls))
        except BaseException:
            for call in calls:
                call.cancel()
            raise
        self._finish(
            Step.analyze_profile,
            StepDone(
                started_at=min(r.done.started_at for r in results),
                finished_at=max(r.done.finished_at for r in results),
                attempt=max(r.done.attempt for r in results),
            ),
        )
        analysis: dict[str, Any] = {}
        for result in results:
            analysis.update(result.fields)
            cost.ai.append(result.usage)
        return analysis

    # --- running steps ----------------------------------------------------------------

    async def _local(
        self, step: Step, method: Callable[[Any, Any], Awaitable[T]], arg: Any, retry: RetryPolicy
    ) -> T:
        self._begin(step)
        result = await self._execute_local(
            method, arg, retry, summary=f"step {_number(step)}: {step}"
        )
        self._finish(step, result.done)  # type: ignore[attr-defined]
        return result

    def _execute_local(
        self,
        method: Callable[[Any, Any], Awaitable[T]],
        arg: Any,
        retry: RetryPolicy,
        *,
        summary: str,
    ) -> Awaitable[T]:
        return workflow.execute_local_activity_method(
            method,
            arg,
            start_to_close_timeout=DB_TIMEOUT,
            retry_policy=retry,
            # A cancel interrupts the wait at once (waiting could let a step that completes
            # meanwhile swallow the cancel). A charge still in flight is then ordered
            # against the compensation by the run's row lock: either it lands first and is
            # refunded, or it finds the run finished and takes nothing.
            cancellation_type=workflow.ActivityCancellationType.TRY_CANCEL,
            summary=summary,
        )

    async def _remote(
        self,
        step: Step,
        method: Callable[[Any, Any], Awaitable[T]],
        arg: Any,
        retry: RetryPolicy,
        timeout: timedelta,
        *,
        task_queue: str,
    ) -> T:
        self._begin(step)
        result = await workflow.execute_activity_method(
            method,
            arg,
            task_queue=task_queue,
            start_to_close_timeout=timeout,
            heartbeat_timeout=PROVIDER_HEARTBEAT,
            retry_policy=retry,
            summary=f"step {_number(step)}: {step} @{self._input.username}",
        )
        self._finish(step, result.done)  # type: ignore[attr-defined]
        return result

    async def _give_up(self, status: RunStatus, code: ErrorCode, message: str) -> None:
        """Refunds what was charged (at most once) and records the final status."""
        current = self._current
        if current is not None and self._steps[current].status == "running":
            self._steps[current].status = "cancelled" if status is RunStatus.cancelled else "failed"
        self._error = RunError(code=code.value, message=message)
        finished, _ = await _shielded(
            self._execute_local(
                CreditActivities.finish_unsuccessful,
                FinishInput(
                    run_id=self._input.run_id,
                    status=status,
                    error=self._error,
                    steps=list(self._steps.values()),
                ),
                COMPENSATION_RETRY,
                summary=f"compensation: refund and mark {status}",
            )
        )
        if finished.status is RunStatus.complete:
            # The commit had landed before the failure or cancel was seen.
            self._error = None
            self._lead_id = finished.lead_id
            self._progress = 100
        self._set_status(finished.status)

    # --- progress ---------------------------------------------------------------------

    def _begin(self, step: Step) -> None:
        self._current = step
        self._steps[step] = StepRecord(
            name=step, status="running", started_at=workflow.now(), attempt=1
        )
        workflow.set_current_details(
            f"**{self._status}** — step {_number(step)}/12 `{step}` ({self._progress}%)"
        )

    def _finish(self, step: Step, done: StepDone) -> None:
        self._record(
            StepRecord(
                name=step,
                status="done",
                started_at=done.started_at,
                finished_at=done.finished_at,
                attempt=done.attempt,
            )
        )

    def _skip(self, *steps: Step) -> None:
        for step in steps:
            self._record(StepRecord(name=step, status="skipped"))

    def _record(self, record: StepRecord) -> None:
        """Keeps a step's state; progress moves on past steps done or skipped (the same rule
        the persisted copy follows, db.analyses.record_step)."""
        self._steps[record.name] = record
        if record.status in ("done", "skipped"):
            self._progress = max(self._progress, record.name.progress_after)

    def _set_status(self, status: RunStatus) -> None:
        self._status = status
        if status.terminal:
            self._current = Step.complete if status is RunStatus.complete else self._current
            workflow.set_current_details(f"**{status}** ({self._progress}%)")
        workflow.upsert_search_attributes([RUN_STATUS.value_set(status.value)])

    def _outcome(self) -> AnalysisOutcome:
        return AnalysisOutcome(
            run_id=self._input.run_id,
            status=self._status,
            lead_id=self._lead_id,
            error=self._error,
        )


async def _shielded(awaitable: Awaitable[T]) -> tuple[T, bool]:
    """Awaits to the end even if the workflow is cancelled meanwhile.

    Returns the result and whether a cancel arrived while waiting.
    """
    task = asyncio.ensure_future(awaitable)
    cancel_requested = False
    while True:
        try:
            return await asyncio.shield(task), cancel_requested
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancel_requested = True


def _describe(exc: FailureError) -> tuple[ErrorCode, str]:
    cause = exc.cause if isinstance(exc, ActivityError) else exc
    if isinstance(cause, ApplicationError):
        return code_for_type(cause.type), cause.message
    if isinstance(cause, CancelledError):
        return ErrorCode.run_cancelled, "cancelled by request"
    return ErrorCode.internal_error, str(cause or exc)


def _number(step: Step) -> int:
    return list(Step).index(step) + 1
