"""Replay of recorded workflow histories: a change to a workflow that would break runs
already in flight (a non-deterministic change) fails here, before it reaches a worker.

The histories in tests/histories/ were recorded from the suite's own runs: each tier
complete, a cache hit, provider failures retried, a fault storm, a provider down past its
budget, a worker lost mid-call, a commit held up by a database outage, failures before and
after the charge, a compensation retried, cancellations mid-scrape, by an operator and at
the commit point; batches: complete, continued as new, cancelled mid-way, and an item;
each scheduled job, and a Stripe purchase event.
Record them again (`OSLIRA_RECORD_HISTORIES=1 make test`) only when no run of the old
code can still be in flight; otherwise guard the change with `workflow.patched`.
"""

from __future__ import annotations

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.helpers import HISTORIES
from worker import WORKFLOWS

RECORDED = sorted(HISTORIES.glob("*.json"))


def test_the_recorded_histories_cover_every_path():
    names = {path.stem for path in RECORDED}
    assert {
        "complete_light",
        "complete_deep",
        "complete_xray",
        "complete_from_cache",
        "complete_by_rules",
        "provider_failures_retried",
        "provider_faults",
        "worker_lost_during_ai",
        "commit_through_database_outage",
        "failed_profile_not_found",
        "failed_profile_private",
        "failed_insufficient_credits",
        "failed_provider_unavailable",
        "compensation_retried",
        "cancelled_mid_scrape",
        "cancelled_by_operator",
        "cancelled_at_commit",
        "batch_item_complete",
        "bulk_complete",
        "bulk_continued_as_new",
        "bulk_cancelled",
        "job_stuck_runs",
        "job_ledger_check",
        "job_cleanup",
        "job_renewal",
        "stripe_purchase",
    } <= names


@pytest.mark.parametrize("path", RECORDED, ids=[path.stem for path in RECORDED])
async def test_the_workflow_replays_a_recorded_history(path):
    history = WorkflowHistory.from_json(f"replay-{path.stem}", path.read_text())
    replayer = Replayer(
        workflows=WORKFLOWS,
        data_converter=pydantic_data_converter,
    )
    await replayer.replay_workflow(history)  # raises on any non-determinism
