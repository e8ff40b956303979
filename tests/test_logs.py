"""A worker's log, as an operator reads it: one line per expected outcome (a profile not
found, a provider's 503 that is retried, a cancellation), each naming its run; no
tracebacks, which are kept for our own bugs. In JSON (the default), every line is one JSON
object carrying the run's ids."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from uuid import uuid4

from cli import stack
from core.settings import Settings
from tests.conftest import app_client, make_settings
from tests.helpers import process_env, start_ok, wait_for


def _lines_about(log: Path, run_id: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if f"analysis-{run_id}" in line]


@asynccontextmanager
async def _worker_writing(settings: Settings, home: Path, log_format: str) -> AsyncIterator[Path]:
    """An `oslira worker` process logging in `log_format` to the file yielded, stopped when
    the block ends (the file is then complete)."""
    log = home / "worker.log"
    env = process_env(settings, str(home)) | {"LOG_FORMAT": log_format}
    worker = stack.spawn(stack.oslira_command("worker"), env, log)
    try:
        yield log
    finally:
        await asyncio.to_thread(stack.stop, worker)


async def test_worker_logs_expected_outcomes_in_one_line_each(servers, new_account, tmp_path):
    settings = make_settings(servers, task_queue=f"logs-{uuid4().hex[:8]}")
    tag = uuid4().hex[:6]
    async with _worker_writing(settings, tmp_path, "text") as log:
        async with app_client(settings) as api:
            account = await new_account()
            missing = await start_ok(api, account, f"notfound_{tag}")
            flaky = await start_ok(api, account, f"flaky_{tag}")
            slow = await start_ok(api, account, f"slow_{tag}")
            await wait_for(api, account, slow, {"processing"}, timeout=30)
            await api.post(f"/api/analysis/{slow}/cancel", headers=account.headers)
            outcomes = {
                run: (await wait_for(api, account, run, timeout=60))["status"]
                for run in (missing, flaky, slow)
            }
        assert outcomes == {missing: "failed", flaky: "complete", slow: "cancelled"}
        for _ in range(50):  # the cancelled activity notices at its next heartbeat
            if _lines_about(log, slow):
                break
            await asyncio.sleep(0.2)

    text = log.read_text()
    assert "Traceback" not in text, text
    (not_found,) = _lines_about(log, missing)
    assert f"ProfileNotFound: @notfound_{tag} does not exist" in not_found
    retried = _lines_about(log, flaky)
    assert [line.split(" (attempt ")[1][:1] for line in retried] == ["1", "2"], retried
    assert all("WARNING" in line and "Apify answered 503" in line for line in retried)
    (cancelled,) = _lines_about(log, slow)
    assert "CancelledError" in cancelled


async def test_json_log_lines_carry_the_runs_ids(servers, new_account, tmp_path):
    settings = make_settings(servers, task_queue=f"json-{uuid4().hex[:8]}")
    tag = uuid4().hex[:6]
    async with _worker_writing(settings, tmp_path, "json") as log, app_client(settings) as api:
        account = await new_account()
        missing = await start_ok(api, account, f"notfound_{tag}")
        flaky = await start_ok(api, account, f"flaky_{tag}")
        for run in (missing, flaky):
            await wait_for(api, account, run, timeout=60)
    lines = [line for line in log.read_text().splitlines() if line.strip()]

    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    about = {run: [r for r in records if r.get("run_id") == run] for run in (missing, flaky)}
    (not_found,) = [r for r in about[missing] if "ProfileNotFound" in r["message"]]
    assert not_found["account_id"] == str(account.account_id)
    assert not_found["workflow_id"] == f"analysis-{missing}"
    assert not_found["activity_type"] == "scrape_profile" and not_found["activity_id"]
    assert not_found["level"] == "INFO"
    retried = [r for r in about[flaky] if "Apify answered 503" in r["message"]]
    assert [r["level"] for r in retried] == ["WARNING", "WARNING"]
    assert all(r["account_id"] == str(account.account_id) for r in retried)
