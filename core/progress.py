"""A run's statuses, its twelve steps, and its progress document (DESIGN.md section 3).

`Tracker` is the one place step records are built. The workflow keeps one, and so does
every activity that persists the document: an activity receives the workflow's document,
applies the same changes the workflow will apply on its return, and writes the result.
The flow goes one way, from the workflow through its activities to the `analyses` row.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal
from uuid import UUID

from pydantic import BaseModel


class RunStatus(StrEnum):
    pending = "pending"
    processing = "processing"
    complete = "complete"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.complete, RunStatus.failed, RunStatus.cancelled)


IN_FLIGHT = (RunStatus.pending, RunStatus.processing)


class Step(StrEnum):
    """The value is the name shown in progress documents."""

    generate_run_id = "generate_run_id"
    create_pending_record = "create_pending_record"
    check_duplicate = "check_duplicate"
    check_credits = "check_credits"
    deduct_credits = "deduct_credits"
    check_cache = "check_cache"
    scrape_profile = "scrape_profile"
    store_in_cache = "store_in_cache"
    analyze_profile = "analyze_profile"
    upsert_lead = "upsert_lead"
    save_analysis = "save_analysis"
    complete = "complete"

    @property
    def progress_after(self) -> int:
        return PROGRESS_AFTER[self]

    @property
    def number(self) -> int:
        return list(Step).index(self) + 1


PROGRESS_AFTER: dict[Step, int] = {
    Step.generate_run_id: 0,
    Step.create_pending_record: 5,
    Step.check_duplicate: 10,
    Step.check_credits: 15,
    Step.deduct_credits: 25,
    Step.check_cache: 30,
    Step.scrape_profile: 55,
    Step.store_in_cache: 60,
    Step.analyze_profile: 85,
    Step.upsert_lead: 90,
    Step.save_analysis: 95,
    Step.complete: 100,
}

# Steps 1-4 happen in the API before the workflow starts.
API_STEPS = (
    Step.generate_run_id,
    Step.create_pending_record,
    Step.check_duplicate,
    Step.check_credits,
)

StepState = Literal["pending", "running", "done", "skipped", "failed", "cancelled"]


class StepRecord(BaseModel):
    name: Step
    status: StepState = "pending"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # How many times the step was tried, whatever ended each try (a provider's failure, a
    # lost worker): the number an operator sees in the worker's log.
    attempt: int = 0


class StepDone(BaseModel):
    """When and on which attempt an activity did its step; part of every activity output."""

    started_at: datetime
    finished_at: datetime
    attempt: int


class RunError(BaseModel):
    """Why a run did not complete: a stable code and a sentence a user can act on."""

    code: str
    message: str


class Progress(BaseModel):
    """What the progress query answers, and what the `analyses` row keeps a copy of."""

    run_id: UUID
    status: RunStatus
    progress: int
    current_step: Step | None
    steps: list[StepRecord]
    error: RunError | None = None
    # Grows with every change: the row keeps a copy only from a newer document.
    version: int = 0


class Tracker:
    """Builds and changes a run's progress document. Deterministic: the caller gives every
    time, so the workflow can use it."""

    def __init__(self, document: Progress) -> None:
        self._doc = document.model_copy(deep=True)
        self._steps = {record.name: record for record in self._doc.steps}

    @classmethod
    def accepted(cls, run_id: UUID, at: datetime) -> Tracker:
        """A run the API has just accepted: steps 1-4 done."""
        steps = [
            StepRecord(name=step, status="done", started_at=at, finished_at=at, attempt=1)
            if step in API_STEPS
            else StepRecord(name=step)
            for step in Step
        ]
        return cls(
            Progress(
                run_id=run_id,
                status=RunStatus.pending,
                progress=Step.check_credits.progress_after,
                current_step=Step.check_credits,
                steps=steps,
            )
        )

    @property
    def document(self) -> Progress:
        return self._doc.model_copy(deep=True)

    @property
    def status(self) -> RunStatus:
        return self._doc.status

    def step(self, step: Step) -> StepRecord:
        return self._steps[step]

    def begin(self, step: Step, at: datetime, attempt: int = 1) -> None:
        self._set(StepRecord(name=step, status="running", started_at=at, attempt=attempt))
        self._doc.current_step = step

    def retrying(self, step: Step, attempt: int) -> None:
        """The step is tried again (the provider failed): same start, a later attempt."""
        record = self._steps[step]
        attempt = max(attempt, record.attempt)
        self._set(record.model_copy(update={"status": "running", "attempt": attempt}))

    def done(self, step: Step, done: StepDone) -> None:
        self._finish(step, "done", done)

    def failed(self, step: Step, done: StepDone) -> None:
        """A step that did not succeed and that the run goes on without (a cache)."""
        self._finish(step, "failed", done)

    def skip(self, *steps: Step) -> None:
        for step in steps:
            self._set(StepRecord(name=step, status="skipped"))

    def charged(self, done: StepDone) -> None:
        """Step 5 done: the run is processing (the charge and this land together)."""
        self.done(Step.deduct_credits, done)
        self.set_status(RunStatus.processing)

    def completed(self, upserted: StepDone, saved: StepDone, completed: StepDone) -> None:
        """Steps 10-12 done: the commit point."""
        self.done(Step.upsert_lead, upserted)
        self.done(Step.save_analysis, saved)
        self.done(Step.complete, completed)
        self.set_status(RunStatus.complete)

    def stopping(self, error: RunError, cancelled: bool) -> None:
        """The run is being given up (its refund is under way): the step that was running
        stopped, and why is known. The status changes once the compensation has landed."""
        current = self._doc.current_step
        if current is not None and self._steps[current].status == "running":
            stopped: StepState = "cancelled" if cancelled else "failed"
            self._set(self._steps[current].model_copy(update={"status": stopped}))
        self._doc.error = error
        self._doc.version += 1

    def set_status(self, status: RunStatus, error: RunError | None = None) -> None:
        self._doc.status = status
        self._doc.error = error
        if status is RunStatus.complete:
            self._doc.current_step = Step.complete
            self._doc.progress = 100
        self._doc.version += 1

    def _finish(self, step: Step, status: StepState, done: StepDone) -> None:
        self._set(
            StepRecord(
                name=step,
                status=status,
                started_at=done.started_at,
                finished_at=done.finished_at,
                attempt=done.attempt,
            )
        )

    def _set(self, record: StepRecord) -> None:
        self._steps[record.name] = record
        self._doc.steps = [self._steps[step] for step in Step]
        if record.status in ("done", "skipped"):
            self._doc.progress = max(self._doc.progress, record.name.progress_after)
        self._doc.version += 1
