"""AnalysisWorkflow: steps 5-12 of one analysis run (DESIGN.md sections 3 and 11).

Layout, chosen for latency without losing per-step retries:
- database steps (5 deduct, 6 cache check, 10-12 commit) are local activities: they run
  inside the workflow task, with their own retry policies, and cost no server round trip;
- provider calls (7 scrape, 9 AI) are regular activities: they heartbeat so a cancel
  reaches them, survive a worker crash without redoing earlier steps, and an operator sees
  them, with attempts and failures, in the Temporal UI. The scrape activity also stores
  the profile in the cache (step 8), best-effort;
- steps 10, 11 and 12 are one transaction, the commit point: lead, analysis and status
  land together or not at all.

What our own infrastructure does to a run delays it, never fails it: database steps retry
until the database answers, and a provider activity lost with its worker is retried by
Temporal without limit. What a provider does is counted: each failure of the provider
(5xx, 429, timeout, dropped connection) ends the activity, and this workflow tries again
after a pause until the step's provider budget is spent.

Failures after the charge are compensated by one local activity that refunds (once, by its
idempotency key) and records the final status. Compensation and the commit step run shielded
from cancellation, so a cancel cannot interrupt them half-way.

The progress document is built by `core.progress.Tracker` here; activities carry it to the
`analyses` row (db/analyses.py names every field's writer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar
from uuid import UUID

from temporalio import workflow
from temporalio.common import (
    Priority,
    RetryPolicy,
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
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
    from activities.compensation import CompensationActivities
    from activities.credits import CreditActivities
    from activities.results import ResultActivities
    from activities.scrape import ScrapeActivities
    from core.errors import (
        PROVIDER_UNAVAILABLE,
        ErrorCode,
        code_for_type,
        details_of,
        type_for,
        user_message,
    )
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
        ProviderBudget,
        SaveResultInput,
        ScrapeInput,
    )
    from core.progress import Progress, RunError, RunStatus, Step, StepDone, Tracker
    from core.temporal import workflow_id
    from core.tiers import TIER_PARTS

T = TypeVar("T")

ACCOUNT_ID = SearchAttributeKey.for_keyword("AccountId")
ANALYSIS_TYPE = SearchAttributeKey.for_keyword("AnalysisType")
USERNAME = SearchAttributeKey.for_keyword("Username")
RUN_STATUS = SearchAttributeKey.for_keyword("RunStatus")
BATCH_ID = SearchAttributeKey.for_keyword("BatchId")

# Database steps, the charge, the commit and the compensation alike, retry until the
# database answers: an outage of minutes delays a run, and the refund is never given up on.
# Business failures and our own bugs are raised non-retryable by the activities.
DB_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=0,
)
# A cache that cannot be read is a miss after this.
CACHE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    maximum_interval=timedelta(seconds=2),
    maximum_attempts=3,
)
# What Temporal retries of a provider activity: only what is not the provider's doing (a
# worker lost mid-call, noticed by its heartbeat). Provider failures end the activity.
LOST_WORKER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=0,
)


DB_TIMEOUT = timedelta(seconds=15)
# Apify answers 408 to a synchronous run past 300 s; our client gives up at 320 s.
SCRAPE_TIMEOUT = timedelta(seconds=330)
AI_TIMEOUT = timedelta(seconds=150)
# Provider activities heartbeat every second; a worker that dies mid-call is noticed here.
PROVIDER_HEARTBEAT = timedelta(seconds=5)


SINGLE_PRIORITY = 2  # Temporal priority keys: 1-5, lower first, 3 by default
BATCH_ITEM_PRIORITY = 4


def start_options(input: AnalysisInput, task_queue: str) -> dict[str, Any]:
    """How a run's workflow is started, by the API's client or as a batch's child: its
    id, its search attributes, a summary, and never twice for one run."""
    return {
        "id": workflow_id(input.run_id),
        "task_queue": task_queue,
        "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
        "search_attributes": TypedSearchAttributes(
            [
                SearchAttributePair(ACCOUNT_ID, str(input.account_id)),
                SearchAttributePair(ANALYSIS_TYPE, input.tier.value),
                SearchAttributePair(USERNAME, input.username),
                SearchAttributePair(RUN_STATUS, RunStatus.pending.value),
            ]
            + ([SearchAttributePair(BATCH_ID, str(input.batch_id))] if input.batch_id else [])
        ),
        "static_summary": f"{input.tier} analysis of @{input.username}",
        # Temporal's dispatch order (PROVIDERS.md): accounts in turn, single analyses before
        # batch items. Provider slots keep their own fair order (activities.slots).
        "priority": Priority(
            priority_key=BATCH_ITEM_PRIORITY if input.batch_id else SINGLE_PRIORITY,
            fairness_key=str(input.account_id),
        ),
    }


@workflow.defn
class AnalysisWorkflow:
    @workflow.init
    def __init__(self, input: AnalysisInput) -> None:
        self._input = input
        self._tracker = Tracker.accepted(
            input.run_id, input.accepted_at or workflow.info().start_time
        )
        self._lead_id: UUID | None = None

    @workflow.query
    def progress(self) -> Progress:
        return self._tracker.document

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
                await self._give_up(
                    RunStatus.cancelled,
                    RunError(code=ErrorCode.run_cancelled, message="Cancelled."),
                )
                if self._tracker.status is RunStatus.complete:
                    return self._outcome()
                raise
            assert isinstance(exc, FailureError)
            code, error = self._describe(exc)
            # run_cancelled here means a step saw the cancel flag on the run's row before
            # the Temporal cancel request arrived.
            status = RunStatus.cancelled if code is ErrorCode.run_cancelled else RunStatus.failed
            await self._give_up(status, error)
            if self._tracker.status is not RunStatus.failed:
                return self._outcome()
            raise ApplicationError(error.message, type=type_for(code), non_retryable=True) from exc

    async def _analyse(self, input: AnalysisInput) -> AnalysisOutcome:
        self._begin(Step.deduct_credits)
        charge = await self._local(
            CreditActivities.deduct_credits,
            ChargeInput(
                run_id=input.run_id,
                account_id=input.account_id,
                business_profile_id=input.business_profile_id,
                credits_cost=input.credits_cost,
                progress=self._tracker.document,
            ),
            DB_RETRY,
            Step.deduct_credits,
        )
        self._tracker.charged(charge.done)
        self._status_changed()

        cost = CostBreakdown()
        profile = await self._cached_profile(input)
        if profile is not None:
            cost.cache_hit = True
            self._tracker.skip(Step.scrape_profile, Step.store_in_cache)
        else:
            profile, cost.apify_usd = await self._scrape(input)

        analysis = await self._analyse_with_ai(input, charge.business, profile, cost)

        self._begin(Step.upsert_lead)
        saved, cancel_requested = await shielded(
            self._local(
                ResultActivities.save_result,
                SaveResultInput(
                    run_id=input.run_id,
                    account_id=input.account_id,
                    business_profile_id=input.business_profile_id,
                    profile=profile,
                    analysis=analysis,
                    cost=cost,
                    progress=self._tracker.document,
                ),
                DB_RETRY,
                summary="steps 10-12: upsert lead, save analysis, complete (commit point)",
            )
        )
        if cancel_requested:
            workflow.logger.info("cancel requested after the commit point: the run completes")
        self._tracker.completed(saved.upserted, saved.saved, saved.completed)
        self._lead_id = saved.lead_id
        self._status_changed()
        return self._outcome()

    async def _cached_profile(self, input: AnalysisInput) -> Profile | None:
        """Step 6. A cache that cannot be read is a miss, not a failed run."""
        self._begin(Step.check_cache)
        try:
            found = await self._local(
                CacheActivities.check_cache,
                CacheLookupInput(
                    run_id=input.run_id,
                    username=input.username,
                    tier=input.tier,
                    progress=self._tracker.document,
                ),
                CACHE_RETRY,
                Step.check_cache,
            )
        except FailureError as exc:
            if is_cancelled_exception(exc):
                raise
            workflow.logger.warning("cache check failed, scraping instead: %s", exc)
            self._tracker.failed(Step.check_cache, self._stopped_now(Step.check_cache, exc))
            return None
        self._tracker.done(Step.check_cache, found.done)
        return found.profile

    async def _scrape(self, input: AnalysisInput) -> tuple[Profile, float]:
        """Steps 7 and 8."""
        self._begin(Step.scrape_profile)

        def scrape(attempts_before: int, last_try: bool) -> Awaitable[Any]:
            return workflow.execute_activity_method(
                ScrapeActivities.scrape_profile,
                ScrapeInput(
                    run_id=input.run_id,
                    username=input.username,
                    turn=input.turn,
                    attempts_before=attempts_before,
                    progress=self._tracker.document,
                ),
                task_queue=input.scrape_task_queue or workflow.info().task_queue,
                start_to_close_timeout=SCRAPE_TIMEOUT,
                heartbeat_timeout=PROVIDER_HEARTBEAT,
                retry_policy=LOST_WORKER_RETRY,
                summary=f"step 7: scrape @{input.username} (try {attempts_before + 1})",
            )

        scraped = await self._within_budget(Step.scrape_profile, input.provider_budget, scrape)
        self._tracker.done(Step.scrape_profile, scraped.done)
        if scraped.stored:
            self._tracker.done(Step.store_in_cache, scraped.store)
        else:
            self._tracker.failed(Step.store_in_cache, scraped.store)
        return scraped.profile, scraped.cost_usd

    async def _analyse_with_ai(
        self,
        input: AnalysisInput,
        business: BusinessContext,
        profile: Profile,
        cost: CostBreakdown,
    ) -> dict[str, Any]:
        """Step 9: the tier's AI calls, in parallel; one failing for good cancels the others."""
        self._begin(Step.analyze_profile)

        def ask(part: Any) -> Callable[[int, bool], Awaitable[Any]]:
            def call(attempts_before: int, last_try: bool) -> Awaitable[Any]:
                return workflow.execute_activity_method(
                    AIActivities.analyze_profile,
                    AIInput(
                        run_id=input.run_id,
                        part=part,
                        turn=input.turn,
                        tier=input.tier,
                        business=business,
                        profile=profile,
                        attempts_before=attempts_before,
                        last_try=last_try,
                        progress=self._tracker.document,
                    ),
                    start_to_close_timeout=AI_TIMEOUT,
                    heartbeat_timeout=PROVIDER_HEARTBEAT,
                    retry_policy=LOST_WORKER_RETRY,
                    summary=f"step 9: AI {part} for @{input.username} (try {attempts_before + 1})",
                )

            return call

        calls = [
            asyncio.ensure_future(
                self._within_budget(Step.analyze_profile, input.provider_budget, ask(part))
            )
            for part in TIER_PARTS[input.tier]
        ]
        try:
            results: list[AIOutput] = list(await asyncio.gather(*calls))
        except BaseException:
            for call in calls:
                call.cancel()
            raise
        self._tracker.done(
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
            if result.usage is not None:
                cost.ai.append(result.usage)
        # A part the rule-based fallback answered makes the whole result a rules one: the
        # run did not get the AI analysis it paid for, and the commit step refunds it.
        for result in results:
            if result.engine == "rules":
                analysis["engine"] = "rules"
                analysis["engine_version"] = result.fields.get("engine_version")
        return analysis

    # --- running steps ----------------------------------------------------------------

    async def _within_budget(
        self, step: Step, budget: ProviderBudget, call: Callable[[int, bool], Awaitable[T]]
    ) -> T:
        """Runs a provider activity until it succeeds, fails for good, or its provider has
        failed `budget.attempts` times; pauses between tries grow as the budget says. The
        call is told the tries before it and whether it is the last."""
        attempts_before = 0
        for failures in range(1, budget.attempts + 1):
            try:
                return await call(attempts_before, failures == budget.attempts)
            except ActivityError as exc:
                failure = exc.cause
                if not isinstance(failure, ApplicationError):
                    raise
                # The try that failed, lost workers' retries included.
                attempts_before = int(details_of(failure).get("attempt", attempts_before + 1))
                self._tracker.retrying(step, attempts_before)
                if failure.type != PROVIDER_UNAVAILABLE or failures == budget.attempts:
                    raise
                await workflow.sleep(budget.pause(failures))
        raise AssertionError("unreachable: the last failure is raised")

    async def _local(
        self,
        method: Callable[[Any, Any], Awaitable[T]],
        arg: Any,
        retry: RetryPolicy,
        step: Step | None = None,
        *,
        summary: str | None = None,
    ) -> T:
        return await workflow.execute_local_activity_method(
            method,
            arg,
            start_to_close_timeout=DB_TIMEOUT,
            retry_policy=retry,
            # A cancel interrupts the wait at once (waiting could let a step that completes
            # meanwhile swallow the cancel). A charge still in flight is then ordered
            # against the compensation by the run's row lock: either it lands first and is
            # refunded, or it finds the run finished and takes nothing.
            cancellation_type=workflow.ActivityCancellationType.TRY_CANCEL,
            summary=summary or (f"step {step.number}: {step}" if step else None),
        )

    async def _give_up(self, status: RunStatus, error: RunError) -> None:
        """Refunds what was charged (at most once) and records the final status. Until the
        refund has landed, progress says why but the run stays in flight."""
        self._tracker.stopping(error, cancelled=status is RunStatus.cancelled)
        ended = Tracker(self._tracker.document)
        ended.set_status(status, error)
        finished, _ = await shielded(
            self._local(
                CompensationActivities.finish_unsuccessful,
                FinishInput(progress=ended.document),
                DB_RETRY,
                summary=f"compensation: refund and mark {status}",
            )
        )
        if finished.status is RunStatus.complete:
            # The commit had landed before the failure or cancel was seen.
            self._tracker.set_status(RunStatus.complete)
            self._lead_id = finished.lead_id
        else:  # as asked, or as the API had already ended it (it never started)
            self._tracker.set_status(finished.status, error)
        self._status_changed()

    def _describe(self, exc: FailureError) -> tuple[ErrorCode, RunError]:
        """The error code and the user's sentence for what ended the run; the raw failure
        goes to the log."""
        cause = exc.cause if isinstance(exc, ActivityError) else exc
        details: dict[str, Any] = {}
        if isinstance(cause, ApplicationError):
            code, details = code_for_type(cause.type), details_of(cause)
        elif isinstance(cause, CancelledError):
            code = ErrorCode.run_cancelled
        else:
            code = ErrorCode.internal_error
        raw = getattr(cause, "message", None) or str(cause or exc)
        # The activity that failed has logged it; this line is for debugging the mapping.
        workflow.logger.debug("run %s ends %s: %s", self._input.run_id, code, raw)
        message = user_message(code, username=self._input.username, details=details, raw=raw)
        return code, RunError(code=code, message=message)

    # --- progress ---------------------------------------------------------------------

    def _begin(self, step: Step) -> None:
        self._tracker.begin(step, workflow.now())
        document = self._tracker.document
        workflow.set_current_details(
            f"**{document.status}** — step {step.number}/12 `{step}` ({document.progress}%)"
        )

    def _stopped_now(self, step: Step, failure: FailureError) -> StepDone:
        """A step that failed in the workflow's sight: the attempt its last error reported."""
        record = self._tracker.step(step)
        cause = failure.cause if isinstance(failure, ActivityError) else failure
        reported = details_of(cause).get("attempt") if isinstance(cause, ApplicationError) else None
        return StepDone(
            started_at=record.started_at or workflow.now(),
            finished_at=workflow.now(),
            attempt=int(reported or max(record.attempt, 1)),
        )

    def _status_changed(self) -> None:
        document = self._tracker.document
        if document.status.terminal:
            workflow.set_current_details(f"**{document.status}** ({document.progress}%)")
        workflow.upsert_search_attributes([RUN_STATUS.value_set(document.status.value)])

    def _outcome(self) -> AnalysisOutcome:
        document = self._tracker.document
        return AnalysisOutcome(
            run_id=self._input.run_id,
            status=document.status,
            lead_id=self._lead_id,
            error=document.error,
        )


async def shielded(awaitable: Awaitable[T]) -> tuple[T, bool]:
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
