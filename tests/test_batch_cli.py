"""`oslira batch` as a script runs it: against a real `oslira api` process over HTTP, with an
API key, a worker polling the session's queue."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from uuid import uuid4

import pytest

from cli import stack
from tests.helpers import ApiProcess, running_api


@pytest.fixture(scope="module")
def batch_api(settings) -> ApiProcess:
    with running_api(settings) as api:
        yield api


def _oslira(
    api: ApiProcess, key: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OSLIRA_API_URL": api.url, "OSLIRA_API_KEY": key, "COLUMNS": "120"}
    return subprocess.run(
        [*stack.oslira_command("batch", *args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def _key(api, account) -> str:
    created = await api.post("/api/api-keys", json={"name": "cli"}, headers=account.headers)
    assert created.status_code == 201, created.text
    key: str = created.json()["key"]
    return key


async def test_start_attach_results_and_exit_codes(
    api, worker, batch_api, new_account, tmp_path: Path
):
    account = await new_account(credits_granted=50)
    key = await _key(api, account)
    tag = uuid4().hex[:6]
    leads = tmp_path / "leads.csv"
    leads.write_text(
        "username,source\n"
        + "".join(f"@Lead{tag}_{i},ads\n" for i in range(6))
        + f"lead{tag}_0,dupe\n,blank\n"
    )
    profile = str(account.business_profile_id)

    first = await asyncio.to_thread(
        _oslira, batch_api, key, "start", str(leads), "--business-profile", profile
    )

    assert first.returncode == 0, first.stderr
    batch_id = first.stdout.strip()
    assert "6 items accepted" in first.stderr and "1 repeats collapsed" in first.stderr
    assert f"Batch {batch_id} complete: 6 complete, 0 failed" in first.stderr

    # The same command again attaches to the same batch: no second batch, no second charge.
    again = await asyncio.to_thread(
        _oslira, batch_api, key, "start", str(leads), "--business-profile", profile
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == batch_id
    listed = (await api.get("/api/leads/analyze/bulk", headers=account.headers)).json()
    assert listed["total"] == 1
    balance = (await api.get("/api/credits/balance", headers=account.headers)).json()
    assert balance["balance"] == 44

    out = tmp_path / "results.csv"
    written = await asyncio.to_thread(
        _oslira, batch_api, key, "results", batch_id, "--out", str(out)
    )
    assert written.returncode == 0, written.stderr
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["username"] for r in rows] == [f"lead{tag}_{i}" for i in range(6)]
    assert all(r["status"] == "complete" and 0 <= int(r["score"]) <= 100 for r in rows)
    assert all(r["summary"] and r["run_id"] and not r["error"] for r in rows)

    # A text file with a header and a profile that does not exist: exit code 3.
    names = tmp_path / "names.txt"
    names.write_text(f"username\n@lead{tag}_9\n\nnotfound{tag}\n")
    mixed = await asyncio.to_thread(
        _oslira, batch_api, key, "start", str(names), "--business-profile", profile
    )
    assert mixed.returncode == 3, mixed.stderr
    mixed_id = mixed.stdout.strip()
    jsonl = tmp_path / "failed.jsonl"
    await asyncio.to_thread(
        _oslira, batch_api, key, "results", mixed_id, "--out", str(jsonl), "--status", "failed"
    )
    failed = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert failed == [
        failed[0] | {"username": f"notfound{tag}", "status": "failed", "error": "profile_not_found"}
    ]


async def test_ctrl_c_detaches_and_the_batch_goes_on(
    api, worker, batch_api, new_account, tmp_path: Path
):
    account = await new_account(credits_granted=10)
    key = await _key(api, account)
    leads = tmp_path / "slow.txt"
    leads.write_text(f"slow{uuid4().hex[:6]}\n")
    env = {**os.environ, "OSLIRA_API_URL": batch_api.url, "OSLIRA_API_KEY": key}
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [
            *stack.oslira_command("batch"),
            "start",
            str(leads),
            "--business-profile",
            str(account.business_profile_id),
            "--interval",
            "0.2",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    batch_id = await asyncio.to_thread(proc.stdout.readline)
    assert batch_id.strip(), proc.stderr.read() if proc.stderr else ""
    await asyncio.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, stderr = await asyncio.to_thread(
        proc.communicate, timeout=max(1, deadline - time.monotonic())
    )
    assert proc.returncode == 130, stderr
    assert f"oslira batch watch {batch_id.strip()}" in stderr
    assert f"oslira batch cancel {batch_id.strip()}" in stderr

    progress = await api.get(
        f"/api/leads/analyze/bulk/{batch_id.strip()}/progress", headers=account.headers
    )
    assert progress.json()["status"] in ("pending", "running")  # not cancelled: detached
    assert not progress.json()["cancel_requested"]
    cancelled = await asyncio.to_thread(_oslira, batch_api, key, "cancel", batch_id.strip())
    assert cancelled.returncode == 0, cancelled.stderr
    watched = await asyncio.to_thread(_oslira, batch_api, key, "watch", batch_id.strip())
    assert watched.returncode == 3 and "cancelled" in watched.stderr


async def test_a_refusal_is_reported_with_exit_code_1(api, batch_api, new_account, tmp_path):
    account = await new_account(credits_granted=1)
    key = await _key(api, account)
    leads = tmp_path / "leads.txt"
    leads.write_text("a\nb\nc\n")
    refused = await asyncio.to_thread(
        _oslira,
        batch_api,
        key,
        "start",
        str(leads),
        "--business-profile",
        str(account.business_profile_id),
        "--tier",
        "deep",
    )
    assert refused.returncode == 1
    assert "HTTP 402" in refused.stderr and "insufficient_credits" in refused.stderr
    bad_key = await asyncio.to_thread(_oslira, batch_api, "osk_not_a_key", "watch", str(uuid4()))
    assert bad_key.returncode == 1 and "HTTP 401" in bad_key.stderr
