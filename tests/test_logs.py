"""A worker's log, as an operator reads it: one line per expected outcome (a profile not
found, a provider's 503 that is retried, a cancellation), each naming its run; no
tracebacks, which are kept for our own bugs."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from uuid import uuid4

from cli import stack
from tests.conftest import app_client, make_settings
from tests.helpers import process_env, start_ok, wait_for


def _lines_about(log: Path, run_id: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if f"analysis-{run_id}" in line]


async def test_worker_logs_expected_outcomes_in_one_line_each(servers, new_account):
    settings = make_settings(servers, task_queue=f"logs-{uuid4().hex[:8]}")
    tag = uuid4().hex[:6]
    with tempfile.TemporaryDirectory() as home:
        log = Path(home) / "worker.log"
        worker = stack.spawn(stack.oslira_command("worker"), process_env(settings, home), log)
        try:
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
        finally:
            await asyncio.to_thread(stack.stop, worker)

        text = log.read_text()
        assert "Traceback" not in text, text
        (not_found,) = _lines_about(log, missing)
        assert f"ProfileNotFound: @notfound_{tag} does not exist" in not_found
        retried = _lines_about(log, flaky)
        assert [line.split(" (attempt ")[1][:1] for line in retried] == ["1", "2"], retried
        assert all("WARNING" in line and "Apify answered 503" in line for line in retried)
        (cancelled,) = _lines_about(log, slow)
        assert "CancelledError" in cancelled
