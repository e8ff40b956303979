"""The pure rules under the workflow and the simulators, and the guard that keeps the
database's progress copy from going back."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from core.models import ProviderBudget
from core.progress import RunStatus, Step, StepDone, Tracker
from db import analyses
from simulators.faults import Faults
from tests.helpers import insert_run


def test_a_provider_budget_pauses_longer_each_time_up_to_its_longest():
    budget = ProviderBudget(attempts=8, first_pause_seconds=1, max_pause_seconds=30)
    pauses = [budget.pause(n).total_seconds() for n in range(1, 8)]
    assert pauses == [1, 2, 4, 8, 16, 30, 30]
    assert sum(pauses) == 91  # "8 tries over about 90 s"


def test_faults_are_a_fixed_function_of_seed_and_call_with_the_asked_shares():
    faults = Faults(unavailable=0.15, dropped=0.10, hung=0.05, seed=7)
    picks = [faults.pick(f"apify:user{i}:1") for i in range(20_000)]
    assert picks == [faults.pick(f"apify:user{i}:1") for i in range(20_000)]
    shares = {fault: count / len(picks) for fault, count in Counter(picks).items()}
    assert abs(shares["503"] - 0.15) < 0.01
    assert abs(shares["drop"] - 0.10) < 0.01
    assert abs(shares["hang"] - 0.05) < 0.01
    other_seed = Faults(unavailable=0.15, dropped=0.10, hung=0.05, seed=8)
    assert picks != [other_seed.pick(f"apify:user{i}:1") for i in range(20_000)]


def test_every_change_to_a_progress_document_makes_a_newer_version():
    tracker = Tracker.accepted(uuid4(), datetime.now(UTC))
    versions = [tracker.document.version]
    at = datetime.now(UTC)
    for change in (
        lambda: tracker.begin(Step.deduct_credits, at),
        lambda: tracker.charged(StepDone(started_at=at, finished_at=at, attempt=1)),
        lambda: tracker.skip(Step.scrape_profile),
        lambda: tracker.retrying(Step.analyze_profile, 2),
    ):
        change()
        versions.append(tracker.document.version)
    assert versions == sorted(set(versions))
    assert tracker.status is RunStatus.processing
    assert tracker.document.progress == Step.scrape_profile.progress_after


async def test_an_older_progress_document_never_replaces_a_newer_one(new_account, system_pool):
    account = await new_account()
    run_id = await insert_run(system_pool, account, f"guard_{uuid4().hex[:8]}")
    at = datetime.now(UTC)
    older = Tracker.accepted(run_id, at)
    older.begin(Step.deduct_credits, at)
    newer = Tracker(older.document)
    newer.begin(Step.check_cache, at + timedelta(seconds=1))
    async with system_pool.acquire() as conn:
        await analyses.save_progress(conn, newer.document)
        await analyses.save_progress(conn, older.document)  # a retried step, late
        row = await analyses.get(conn, run_id)
    assert row is not None
    assert analyses.progress_of(row).current_step is Step.check_cache
    assert row["progress_version"] == newer.document.version
    await system_pool.execute(
        "UPDATE analyses SET status = 'failed', finished_at = now() WHERE id = $1", run_id
    )
