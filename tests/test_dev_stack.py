"""`oslira dev` (what `make run` starts) and `oslira accounts create`, as a newcomer uses them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from uuid import uuid4

import httpx
from temporalio.service import RPCError

from cli import stack


def _start_dev(home: Path, env: dict[str, str], log: str) -> tuple[subprocess.Popen[bytes], str]:
    out = home / log
    proc = stack.spawn(stack.oslira_command("dev"), env, out)
    deadline = time.monotonic() + 120
    while "Press Ctrl-C to stop." not in out.read_text(errors="replace"):
        assert proc.poll() is None, out.read_text()
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.2)
    return proc, out.read_text()


def _stop_dev(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(60)


def _wait_complete(api: httpx.Client, run_id: str, headers: dict[str, str]) -> dict:
    deadline = time.monotonic() + 60
    while True:
        body = api.get(f"/api/analysis/{run_id}/progress", headers=headers).json()
        if body["status"] in ("complete", "failed", "cancelled") or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_dev_stack_runs_an_analysis_and_keeps_its_data_across_restarts():
    with tempfile.TemporaryDirectory(prefix="oslira-dev-") as tmp:
        home = Path(tmp)
        os.chmod(home, 0o755)
        env = stack.isolated_dev_env(
            home / "state",
            SIM_APIFY_LATENCY_MS="0",
            SIM_OPENAI_LATENCY_MS="0",
            WORKER_PROCESSES="1",
        )
        base = f"http://127.0.0.1:{env['API_PORT']}"

        proc, banner = _start_dev(home, env, "first.out")
        try:
            token = re.search(r"export TOKEN=(\S+)", banner).group(1)
            curl_body = re.search(r"-d '(\{.*\})'", banner).group(1)
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=base, timeout=30) as api:
                assert api.get("/health").json()["status"] == "ok"
                started = api.post(
                    "/api/leads/analyze", json=json.loads(curl_body), headers=headers
                )
                assert started.status_code == 202, started.text
                run_id = started.json()["run_id"]
                assert _wait_complete(api, run_id, headers)["status"] == "complete"

            # Another shell reaches the same stack through $OSLIRA_HOME/stack.env.
            created = subprocess.run(
                [*stack.oslira_command("accounts", "create", "--name", "Acme", "--credits", "7")],
                env={**os.environ, **{k: v for k, v in env.items() if v}},
                capture_output=True,
                text=True,
                check=True,
            )
            account = json.loads(created.stdout)
            assert set(account) == {"account_id", "user_id", "business_profile_id", "token"}
        finally:
            assert _stop_dev(proc) == 0
        assert not (home / "state" / "stack.env").exists()

        proc, _ = _start_dev(home, env, "second.out")
        try:
            with httpx.Client(base_url=base, timeout=30) as api:
                kept = api.get(f"/api/analysis/{run_id}/result", headers=headers)
                assert kept.status_code == 200, kept.text
                assert kept.json()["status"] == "complete"
                acme = {"Authorization": f"Bearer {account['token']}"}
                assert api.get("/api/credits/balance", headers=acme).json()["balance"] == 7
        finally:
            assert _stop_dev(proc) == 0


async def test_search_attributes_are_registered_on_a_namespace_that_lacks_them(temporal_client):
    from google.protobuf.duration_pb2 import Duration
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
    from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest

    from core.temporal import SEARCH_ATTRIBUTES, ensure_search_attributes

    namespace = f"fresh-{uuid4().hex[:8]}"
    await temporal_client.workflow_service.register_namespace(
        RegisterNamespaceRequest(
            namespace=namespace, workflow_execution_retention_period=Duration(seconds=86400)
        )
    )
    for _ in range(50):  # namespace creation propagates asynchronously
        try:
            added = await ensure_search_attributes(temporal_client, namespace)
            break
        except RPCError:
            await asyncio.sleep(0.1)
    assert added == sorted(SEARCH_ATTRIBUTES)
    listed = await temporal_client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    assert set(SEARCH_ATTRIBUTES) <= set(listed.custom_attributes)
    assert await ensure_search_attributes(temporal_client, namespace) == []
