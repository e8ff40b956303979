"""Live progress as Server-Sent Events, from a real `oslira api` process over HTTP (as
`curl -N` would read it): every change of a run in order until it ends, a resumed stream
after a dropped connection, keep-alive comments, a batch's stream, another tenant's 404."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import httpx

from tests.conftest import make_settings
from tests.helpers import running_api, running_worker


@dataclass
class Event:
    id: int | None
    name: str
    data: dict[str, Any] = field(default_factory=dict)


async def _events(response: httpx.Response, keepalives: list[str]) -> AsyncIterator[Event]:
    """Parses the stream as a browser's EventSource does."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            keepalives.append(line)
        elif line == "":
            if "data" in fields:
                yield Event(
                    id=int(fields["id"]) if "id" in fields else None,
                    name=fields.get("event", "message"),
                    data=json.loads(fields["data"]),
                )
            fields = {}
        else:
            key, _, value = line.partition(":")
            fields[key] = value.removeprefix(" ")


async def _follow(
    http: httpx.AsyncClient,
    path: str,
    headers: dict[str, str],
    *,
    stop_when: Any = None,
) -> tuple[list[Event], list[str]]:
    """The events of a stream until its `end` (or until `stop_when(event)` is true: then
    the connection is dropped)."""
    received: list[Event] = []
    keepalives: list[str] = []
    async with http.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for event in _events(response, keepalives):
            received.append(event)
            if event.name == "end" or (stop_when and stop_when(event)):
                break
    return received, keepalives


async def test_a_run_streams_every_change_in_order_and_resumes_after_a_drop(servers, new_account):
    settings = make_settings(
        servers, task_queue=f"sse-{uuid4().hex[:8]}", sse_keepalive_seconds=0.3
    )
    account = await new_account(credits_granted=10)
    other = await new_account()
    with running_api(settings) as api:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}", timeout=60) as http:
            # Accepted while no worker runs: the stream opens on a pending run.
            started = await http.post(
                "/api/leads/analyze",
                json={
                    "username": f"slowai_{uuid4().hex[:6]}",
                    "analysis_type": "light",
                    "business_profile_id": str(account.business_profile_id),
                },
                headers=account.headers,
            )
            assert started.status_code == 202, started.text
            run_id = started.json()["run_id"]
            path = f"/api/analysis/{run_id}/events"

            theirs = await http.get(path, headers=other.headers)
            assert theirs.status_code == 404
            assert theirs.json()["error"]["code"] == "run_not_found"

            # Nothing moves without a worker: keep-alive comments.
            async def first_then_quiet() -> tuple[list[Event], list[str]]:
                return await _follow(
                    http,
                    path,
                    account.headers,
                    stop_when=lambda e: e.data.get("status") == "pending",
                )

            quiet, _ = await first_then_quiet()
            assert quiet[0].data["status"] == "pending"
            keepalives: list[str] = []
            async with http.stream("GET", path, headers=account.headers) as response:
                lines = response.aiter_lines()
                async for line in lines:
                    if line.startswith(":"):
                        keepalives.append(line)
                        break
            assert keepalives == [": keep-alive"]

            async with running_worker(settings):
                # Follow until the AI step (slow here), then drop the connection.
                before, _ = await _follow(
                    http,
                    path,
                    account.headers,
                    stop_when=lambda e: e.data.get("current_step") == "analyze_profile",
                )
                seen = before[-1].id
                assert seen is not None
                # Reconnect as a browser does: only newer events.
                after, _ = await _follow(http, path, account.headers | {"Last-Event-ID": str(seen)})
            progress = [e for e in before + after if e.name == "progress"]
            ids = [e.id for e in progress]
            assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
            assert all(e.id is not None and e.id > seen for e in after if e.name == "progress")
            assert after[-1].name == "end"
            final = progress[-1].data
            assert final["status"] == "complete" and final["progress"] == 100
            assert {s["status"] for s in final["steps"]} == {"done"}

            # Every step, in order: no event shows a step done while an earlier one is not,
            # and each step is done from its first event on.
            for event in progress:
                states = [s["status"] for s in event.data["steps"]]
                done = [status in ("done", "skipped") for status in states]
                assert done == sorted(done, reverse=True), states
            percents = [e.data["progress"] for e in progress]
            assert percents == sorted(percents)
            assert len(progress) >= 4  # pending, charged, scraped, analysing, complete

            # A finished run: its last state at once, then the end.
            again, _ = await _follow(http, path, account.headers)
            assert [e.name for e in again] == ["progress", "end"]
            assert again[0].data["status"] == "complete"


async def test_a_batch_streams_until_it_ends(servers, new_account):
    settings = make_settings(servers, task_queue=f"sse-batch-{uuid4().hex[:8]}")
    account = await new_account(credits_granted=10)
    other = await new_account()
    with running_api(settings) as api:
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}", timeout=60) as http,
            running_worker(settings),
        ):
            response = await http.post(
                "/api/leads/analyze/bulk",
                json={
                    "usernames": [f"sse_batch_{i}_{uuid4().hex[:4]}" for i in range(3)],
                    "analysis_type": "light",
                    "business_profile_id": str(account.business_profile_id),
                },
                headers=account.headers,
            )
            assert response.status_code == 202, response.text
            batch_id = response.json()["batch_id"]
            path = f"/api/leads/analyze/bulk/{batch_id}/events"
            assert (await http.get(path, headers=other.headers)).status_code == 404
            received, _ = await asyncio.wait_for(_follow(http, path, account.headers), 60)
    progress = [e for e in received if e.name == "progress"]
    ids = [e.id for e in progress]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
    assert received[-1].name == "end"
    assert progress[-1].data["status"] == "complete"
    assert progress[-1].data["counts"]["complete"] == 3
