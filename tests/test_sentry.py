"""What reaches Sentry, through the real sentry-sdk pointed at a local HTTP endpoint that
accepts Sentry envelopes: an API error and a run's activity and workflow failures arrive
tagged (request, account, run, tier), with no secret in them, and replaying the run's
history sends nothing more."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import uuid4

import pytest
import sentry_sdk
from temporalio.worker import Replayer

from api.deps import Tenant
from core.sentry import SentryInterceptor
from core.temporal import pydantic_data_converter, workflow_id
from tests.conftest import JWT_SECRET, app_client, make_settings
from tests.helpers import running_worker, start_ok, wait_for
from worker import WORKFLOWS

OPENAI_KEY = "sk-proj-" + "s3cr3t" * 6
STRIPE_KEY = "sk_test_" + "x" * 24
API_KEY = "osk_" + uuid4().hex
COOKIE = "session=" + uuid4().hex  # built, so the test's own source (sent as context) lacks it
PASSWORD = uuid4().hex
DATABASE_URL = f"postgresql://oslira:{PASSWORD}@db.internal:5432/oslira"
APIFY_TOKEN = "apify_api_" + uuid4().hex


class Envelopes:
    """A Sentry ingestion endpoint: keeps every envelope it receives, raw and parsed."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.events: list[dict[str, Any]] = []
        store = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                store.raw.append(body)
                lines = body.split(b"\n")
                for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                    if json.loads(header).get("type") == "event":
                        store.events.append(json.loads(payload))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.dsn = f"http://public@127.0.0.1:{self.server.server_address[1]}/1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def everything(self) -> str:
        sentry_sdk.flush(timeout=5)
        return b"\n".join(self.raw).decode("utf-8", "replace")


@pytest.fixture
def sentry() -> Iterator[Envelopes]:
    envelopes = Envelopes()
    try:
        yield envelopes
    finally:
        sentry_sdk.get_client().close(timeout=2)
        sentry_sdk.init()  # no DSN: nothing is sent by the tests after this one
        envelopes.server.shutdown()


def _tags(event: dict[str, Any]) -> dict[str, str]:
    tags = event.get("tags", {})
    return dict(tags) if isinstance(tags, dict) else {k: v for k, v in tags}


async def test_an_api_error_arrives_tagged_and_without_secrets(servers, sentry, new_account):
    settings = make_settings(servers, sentry_dsn=sentry.dsn, stripe_api_key=STRIPE_KEY)
    account = await new_account()
    run_id = str(uuid4())
    instance = app_client(settings, raise_app_exceptions=False)
    async with instance as api:
        # A route that fails as a bug would, with secrets in its message and its locals.
        async def explode(run_id: str, scope: Tenant) -> None:
            api_key = STRIPE_KEY  # noqa: F841 (a local Sentry would show)
            raise RuntimeError(
                f"cannot charge with {STRIPE_KEY} for Bearer {account.token} "
                f"(database {DATABASE_URL}, scrape https://api.apify.com/x?token={APIFY_TOKEN})"
            )

        instance.app.add_api_route("/api/explode/{run_id}", explode)
        response = await api.get(
            f"/api/explode/{run_id}",
            headers=account.headers | {"X-Api-Key": API_KEY, "Cookie": COOKIE},
        )
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    sent = sentry.everything()
    errors = [e for e in sentry.events if e.get("exception")]
    assert len(errors) == 1, sentry.events
    event = errors[0]
    assert event["exception"]["values"][-1]["type"] == "RuntimeError"
    tags = _tags(event)
    assert tags["request_id"] == response.json()["error"]["request_id"]
    assert tags["account_id"] == str(account.account_id)
    assert tags["run_id"] == run_id
    assert tags["component"] == "api"
    for secret in (STRIPE_KEY, account.token, JWT_SECRET, API_KEY, COOKIE, PASSWORD, APIFY_TOKEN):
        assert secret not in sent


async def test_a_failed_run_reports_its_activity_and_workflow_once_and_never_on_replay(
    servers, sentry, new_account, temporal_client
):
    settings = make_settings(
        servers,
        task_queue=f"sentry-{uuid4().hex[:8]}",
        sentry_dsn=sentry.dsn,
        openai_api_key=OPENAI_KEY,
    )
    account = await new_account()
    async with app_client(settings) as api, running_worker(settings):
        # The AI provider refuses the request: a failure that needs a person.
        run_id = await start_ok(api, account, f"rejectai_{uuid4().hex[:6]}", "light")
        done = await wait_for(api, account, run_id)
        assert done["status"] == "failed" and done["error"]["code"] == "ai_failed"
        # A business outcome is no error: a profile that does not exist sends nothing.
        quiet = await start_ok(api, account, f"notfound_{uuid4().hex[:6]}", "light")
        assert (await wait_for(api, account, quiet))["status"] == "failed"
    sent = sentry.everything()
    assert len(sentry.events) == 2, sentry.events  # once each, nothing for the not-found run
    by_source = {
        _tags(e).get("temporal.activity") or _tags(e).get("temporal.workflow"): e
        for e in sentry.events
    }
    assert set(by_source) == {"analyze_profile", "AnalysisWorkflow"}, sentry.events
    for event in by_source.values():
        tags = _tags(event)
        assert tags["run_id"] == run_id
        assert tags["account_id"] == str(account.account_id)
        assert tags["tier"] == "light"
        assert tags["temporal.workflow_id"] == workflow_id(run_id)
        assert tags["component"] == "worker"
    assert by_source["analyze_profile"]["exception"]["values"][-1]["type"] == "ProviderRejected"
    for secret in (OPENAI_KEY, JWT_SECRET):
        assert secret not in sent

    # Replaying the run's history (a worker restart would) reports nothing.
    before = len(sentry.events)
    history = await temporal_client.get_workflow_handle(workflow_id(run_id)).fetch_history()
    replayer = Replayer(
        workflows=WORKFLOWS,
        interceptors=[SentryInterceptor()],
        data_converter=pydantic_data_converter,
    )
    await replayer.replay_workflow(history, raise_on_replay_failure=True)
    sentry.everything()
    assert len(sentry.events) == before
