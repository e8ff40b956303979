"""The three analysis tiers and the twelve steps of an analysis run."""

from __future__ import annotations

from enum import StrEnum


class Tier(StrEnum):
    light = "light"
    deep = "deep"
    xray = "xray"


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
    """DESIGN.md section 3; the value is the name shown in progress documents."""

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
