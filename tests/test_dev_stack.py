"""`make run` / `oslira dev` as a newcomer meets them: the README's commands work as pasted, a
second stack on the same machine neither steals ports nor work, and a signal to `make run`
or to `oslira dev` stops everything they started."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import httpx
import jwt
import psutil
import pytest
from pgserver import get_server
from temporalio.service import RPCError

from cli import stack

ROOT = Path(__file__).resolve().parent.parent
STOP_WITHIN = 15.0
# The default secret that earlier versions published in core/settings.py.
PUBLISHED_SECRETS = ["dev-only-insecure-jwt-secret-change-me"]


@dataclass
class DevStack:
    proc: subprocess.Popen[bytes]
    home: Path
    env: dict[str, str]
    banner: str
    out: Path  # what oslira dev prints

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.env['API_PORT']}"

    @property
    def exports(self) -> str:
        return re.search(r"^\s*(export OSLIRA_API=.*)$", self.banner, re.M).group(1)

    def exported(self, name: str) -> str:
        return re.search(rf"\b{name}=(\S+)", self.exports).group(1)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.exported('TOKEN')}"}

    def stack_env(self) -> dict[str, str]:
        lines = (self.home / "stack.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if line)


def _clean_env(env: dict[str, str]) -> dict[str, str]:
    """Without the outer make's variables (the suite may itself run under `make test`)."""
    inherited = {
        k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    }
    return inherited | env


def _spawn(command: list[str], env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command,
        env=_clean_env(env),
        stdout=out.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a signal to the test's group never reaches it by accident
        cwd=ROOT,
    )


def _start(command: list[str], env: dict[str, str], out: Path) -> DevStack:
    proc = _spawn(command, env, out)
    deadline = time.monotonic() + 120
    while "Press Ctrl-C to stop." not in out.read_text(errors="replace"):
        assert proc.poll() is None, out.read_text()
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.2)
    return DevStack(proc, Path(env["OSLIRA_HOME"]), env, out.read_text(), out)


def _everything_started_by(pid: int, home: Path) -> list[psutil.Process]:
    """The process, its descendants, and the embedded PostgreSQL (pg_ctl detaches it)."""
    root = psutil.Process(pid)
    found = [root, *root.children(recursive=True)]
    pgdata = str(home / "pgdata")
    for proc in psutil.process_iter(["cmdline"]):
        if pgdata in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def _assert_all_stop(stack_: DevStack, sig: signal.Signals, target: psutil.Process) -> float:
    """Sends `sig` to `target`; everything the stack started must be gone within 15 s."""
    processes = _everything_started_by(stack_.proc.pid, stack_.home)
    names = {p.name() for p in processes if p.is_running()}
    assert "postgres" in names, names  # what is watched includes the detached database
    started = time.monotonic()
    target.send_signal(sig)
    _, alive = psutil.wait_procs(processes, timeout=STOP_WITHIN)
    took = time.monotonic() - started
    assert not alive, f"still running {took:.1f} s after {sig.name}: {alive}"
    return took


@contextmanager
def _home() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="oslira-dev-") as tmp:
        home = Path(tmp)
        os.chmod(home, 0o755)  # pgserver runs postgres as its own user when root
        yield home


def _dev_env(state: Path, **extra: str) -> dict[str, str]:
    return stack.isolated_dev_env(
        state, SIM_APIFY_LATENCY_MS="0", SIM_OPENAI_LATENCY_MS="0", WORKER_PROCESSES="1", **extra
    )


def _workers(stack_: DevStack) -> set[int]:
    """The live worker processes of the stack (a killed one may linger as a zombie)."""
    found = set()
    for child in psutil.Process(stack_.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE and child.cmdline()[-1:] == ["worker"]:
                found.add(child.pid)
    return found


def _kill_a_worker_and_see_it_back(stack_: DevStack) -> None:
    (victim,) = _workers(stack_)
    psutil.Process(victim).kill()
    deadline = time.monotonic() + 15
    while not (_workers(stack_) - {victim}):
        assert time.monotonic() < deadline, stack_.out.read_text()[-2000:]
        time.sleep(0.2)
    assert "worker exited with -9; restarting it" in stack_.out.read_text()


def _readme_commands(heading: str = "## Try it") -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n{heading}\n", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def _json_values(output: str) -> list:
    decoder, values, at = json.JSONDecoder(), [], 0
    while at < len(output):
        if output[at].isspace():
            at += 1
            continue
        value, at = decoder.raw_decode(output, at)
        values.append(value)
    return values


def _code_literals() -> set[str]:
    literals = set(PUBLISHED_SECRETS)
    files = [ROOT / "worker.py"]
    for package in (
        "api",
        "activities",
        "cli",
        "core",
        "db",
        "providers",
        "simulators",
        "workflows",
    ):
        files += (ROOT / package).rglob("*.py")
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value:
                literals.add(node.value)
    return literals


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_make_run_serves_the_readme_commands_and_stops_on_a_signal():
    with _home() as tmp:
        env = _dev_env(tmp / "state")
        first = _start(["make", "--no-print-directory", "run"], env, tmp / "first.out")
        try:
            # The README's lines, as pasted after the banner's export line.
            script = f'{first.exports}\n{_readme_commands()}\necho; echo "RUN_ID=$RUN_ID"\n'
            ran = subprocess.run(
                ["bash", "-c", script], capture_output=True, text=True, timeout=120
            )
            assert ran.returncode == 0, ran.stderr
            body, _, tail = ran.stdout.rpartition("RUN_ID=")
            run_id = tail.strip()
            progress, result, runs, ledger = _json_values(body)
            assert progress["run_id"] == run_id
            assert (result["status"], result["analysis_type"]) == ("complete", "deep")
            assert result["lead"]["username"] == "natgeo"
            assert runs["data"][0]["run_id"] == run_id
            assert {"kind": "charge", "delta": -3, "run_id": run_id}.items() <= ledger["data"][
                0
            ].items()

            # The README's batch lines: a batch accepted with its rejects, then followed.
            script = f'{first.exports}\n{_readme_commands("## Batches")}\necho "B=$BATCH_ID"\n'
            ran = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
            assert ran.returncode == 0, ran.stderr
            body, _, tail = ran.stdout.rpartition("B=")
            batch_progress, failed_items = _json_values(body)
            assert batch_progress["batch_id"] == tail.strip() and batch_progress["total"] == 3
            # Listed before or after notfound_x failed: only it can be there.
            assert {i["username"] for i in failed_items["data"]} <= {"notfound_x"}

            with httpx.Client(base_url=first.api, timeout=30) as api:
                batch = f"/api/leads/analyze/bulk/{tail.strip()}/progress"
                deadline = time.monotonic() + 60
                while (done := api.get(batch, headers=first.headers).json())["status"] != (
                    "complete"
                ):
                    assert time.monotonic() < deadline, done
                    time.sleep(0.2)
                assert (done["counts"]["complete"], done["counts"]["failed"]) == (2, 1)
                assert api.head("/health").status_code == 200
                docs = api.get("/docs")
                assert docs.status_code == 200 and "cdn" not in docs.text.lower()
                asset = re.search(r'src="([^"]+swagger-ui-bundle\.js)"', docs.text).group(1)
                assert api.get(asset).status_code == 200
                # No value written in the code signs a token this stack accepts.
                demo_user = jwt.decode(
                    first.exported("TOKEN"), options={"verify_signature": False}
                )["sub"]
                claims = {
                    "sub": demo_user,
                    "aud": "authenticated",
                    "exp": datetime.now(UTC) + timedelta(minutes=5),
                }
                accepted = [
                    secret
                    for secret in _code_literals()
                    if api.get(
                        "/api/credits/balance",
                        headers={"Authorization": f"Bearer {jwt.encode(claims, secret, 'HS256')}"},
                    ).status_code
                    != 401
                ]
                assert accepted == []
                assert api.get("/api/credits/balance", headers=first.headers).status_code == 200

                # Buying credits as the banner says: the Checkout page "pays", the Stripe
                # simulator's signed events reach the webhook, the worker grants them.
                balance = "/api/credits/balance"
                before = api.get(balance, headers=first.headers).json()["balance"]
                bought = api.post(
                    "/api/credits/purchase", json={"package": "starter"}, headers=first.headers
                )
                assert bought.status_code == 201, bought.text
                assert httpx.get(bought.json()["url"]).status_code == 200
                assert httpx.post(bought.json()["url"], timeout=30).status_code == 303
                deadline = time.monotonic() + 30
                while (now := api.get(balance, headers=first.headers).json())["balance"] != (
                    before + 100
                ):
                    assert time.monotonic() < deadline, (before, now)
                    time.sleep(0.2)

            # A worker that dies is started again, and the stack goes on working.
            _kill_a_worker_and_see_it_back(first)
            again = asyncio.run(_analyse(first, "after_restart", 1))
            assert again == ["complete None"], again

            # Another shell reaches the same stack through $OSLIRA_HOME/stack.env.
            created = subprocess.run(
                stack.oslira_command("accounts", "create", "--name", "Acme", "--credits", "7"),
                env=_clean_env({k: v for k, v in env.items() if v}),
                capture_output=True,
                text=True,
                check=True,
            )
            acme = {"Authorization": f"Bearer {json.loads(created.stdout)['token']}"}
        finally:
            took = _assert_all_stop(first, signal.SIGTERM, psutil.Process(first.proc.pid))
        assert not (tmp / "state" / "stack.env").exists()

        second = _start(stack.oslira_command("dev"), env, tmp / "second.out")
        try:
            with httpx.Client(base_url=second.api, timeout=30) as api:
                kept = api.get(f"/api/analysis/{run_id}/result", headers=first.headers)
                assert kept.status_code == 200, kept.text  # the first banner's token still works
                assert api.get("/api/credits/balance", headers=acme).json()["balance"] == 7
        finally:
            _assert_all_stop(second, signal.SIGINT, psutil.Process(second.proc.pid))
        assert second.proc.wait(5) == 0
        assert took < STOP_WITHIN


async def _analyse(stack_: DevStack, prefix: str, n: int) -> list[str]:
    async with httpx.AsyncClient(base_url=stack_.api, timeout=60) as api:

        async def one(i: int) -> str:
            started = await api.post(
                "/api/leads/analyze",
                json={
                    "username": f"{prefix}_{i}_{uuid4().hex[:6]}",
                    "analysis_type": "light",
                    "business_profile_id": stack_.exported("BUSINESS_PROFILE_ID"),
                },
                headers=stack_.headers,
            )
            assert started.status_code == 202, started.text
            run_id = started.json()["run_id"]
            deadline = time.monotonic() + 60
            while True:
                body = (
                    await api.get(f"/api/analysis/{run_id}/progress", headers=stack_.headers)
                ).json()
                if body["status"] in ("complete", "failed", "cancelled"):
                    return f"{body['status']} {body['error']}"
                assert time.monotonic() < deadline, body
                await asyncio.sleep(0.1)

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def test_a_second_stack_refuses_taken_ports_and_never_takes_the_first_stacks_work():
    with _home() as tmp:
        env_a = _dev_env(tmp / "a")
        first = _start(["make", "--no-print-directory", "run"], env_a, tmp / "a.out")
        try:
            # The same ports, another state folder: refused before anything starts.
            clash = subprocess.run(
                stack.oslira_command("dev"),
                env=_clean_env(env_a | {"OSLIRA_HOME": str(tmp / "b")}),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert clash.returncode != 0
            assert f"port {env_a['API_PORT']} (API_PORT) is already in use" in clash.stderr
            assert "Oslira is running" not in clash.stdout
            assert not (tmp / "b" / "pgdata").exists()

            # Free ports, its own database, but the first stack's Temporal server: the
            # riskiest sharing there is. Its workers poll a queue named after its database.
            env_b = _dev_env(tmp / "b", TEMPORAL_ADDRESS=first.stack_env()["TEMPORAL_ADDRESS"])
            second = _start(stack.oslira_command("dev"), env_b, tmp / "b.out")
            try:
                assert second.stack_env()["TASK_QUEUE"] != first.stack_env()["TASK_QUEUE"]

                async def both() -> tuple[list[str], list[str]]:
                    a, b = await asyncio.gather(_analyse(first, "a", 6), _analyse(second, "b", 6))
                    return a, b

                outcomes_a, outcomes_b = asyncio.run(both())
                assert outcomes_a == ["complete None"] * 6, outcomes_a
                assert outcomes_b == ["complete None"] * 6, outcomes_b
            finally:
                _assert_all_stop(second, signal.SIGTERM, psutil.Process(second.proc.pid))
            # PostgreSQL restarted by hand underneath the stack: stopping stops it too.
            pgdata = first.home / "pgdata"
            stack.stop_postgres(pgdata)
            get_server(pgdata, cleanup_mode=None).ensure_postgres_running()
        finally:
            _assert_all_stop(first, signal.SIGINT, psutil.Process(first.proc.pid))


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
