"""Live progress streams under load, printed as JSON: N open Server-Sent Event streams on one
API process, and how long a change takes to reach each client.

Starts `oslira dev` with one API process (bench/devstack.py), creates an account and N runs
that no workflow moves (written straight to the database, pending), opens one stream per run
over HTTP and waits for each stream's first event. Then, for each round, changes every run's
progress in the database (one committed UPDATE per run, as a worker's progress write is) and
records, per run, the time from its commit to its stream's event. Prints p50/p95/p99/max of
those latencies, the API process's memory and CPU with the streams open, and its database
connections (one listener, whatever N is).

Usage: .venv/bin/python bench/sse_bench.py [--streams 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import httpx
import psutil
from analysis_bench import create_account, summary
from devstack import dev_stack  # the bench folder is on sys.path when run as a script


def _api_process(dev_pid: int) -> psutil.Process:
    for child in psutil.Process(dev_pid).children(recursive=True):
        if child.cmdline()[-1:] == ["api"]:
            return child
    raise SystemExit("no API process under oslira dev")


async def _stream(
    http: httpx.AsyncClient,
    run_id: UUID,
    headers: dict[str, str],
    seen: dict[tuple[UUID, int], float],
    ready: asyncio.Event,
    opened: list[int],
    total: int,
) -> None:
    async with http.stream("GET", f"/api/analysis/{run_id}/events", headers=headers) as answer:
        event_id = None
        async for line in answer.aiter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line == "" and event_id is not None:
                seen[(run_id, event_id)] = time.perf_counter()
                if event_id == 0:
                    opened.append(1)
                    if len(opened) == total:
                        ready.set()
                event_id = None


async def measure(
    home: Path, env: dict[str, str], dev_pid: int, streams: int, rounds: int
) -> dict[str, object]:
    account = create_account(env)
    stack_env = dict(
        line.split("=", 1) for line in (home / "stack.env").read_text().splitlines() if line
    )
    db = await asyncpg.create_pool(stack_env["DATABASE_URL"], min_size=2, max_size=4)
    runs = [uuid4() for _ in range(streams)]
    await db.executemany(
        """INSERT INTO analyses (id, account_id, business_profile_id, username,
               analysis_type, credits_cost) VALUES ($1, $2, $3, $4, 'light', 1)""",
        [
            (run, UUID(account["account_id"]), UUID(account["business_profile_id"]), f"sse_{i}")
            for i, run in enumerate(runs)
        ],
    )
    api = _api_process(dev_pid)
    headers = {"Authorization": f"Bearer {account['token']}"}
    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=streams + 10)
    seen: dict[tuple[UUID, int], float] = {}
    ready = asyncio.Event()
    opened: list[int] = []
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{env['API_PORT']}", timeout=None, limits=limits
    ) as http:
        started = time.perf_counter()
        tasks = [
            asyncio.create_task(_stream(http, run, headers, seen, ready, opened, streams))
            for run in runs
        ]
        await asyncio.wait_for(ready.wait(), 120)
        open_s = time.perf_counter() - started
        api.cpu_percent()
        await asyncio.sleep(2)
        idle_cpu = api.cpu_percent()
        committed: dict[tuple[UUID, int], float] = {}
        for version in range(1, rounds + 1):
            for run in runs:
                await db.execute(
                    "UPDATE analyses SET progress_version = $2, updated_at = now() WHERE id = $1",
                    run,
                    version,
                )
                committed[(run, version)] = time.perf_counter()
            await asyncio.sleep(1)
        deadline = time.monotonic() + 30
        while len([k for k in committed if k in seen]) < len(committed):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        connections = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'oslira_api'"
        )
        rss = api.memory_info().rss
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await db.close()
    latencies = [(seen[k] - t) * 1000 for k, t in committed.items() if k in seen]
    return {
        "streams": streams,
        "rounds": rounds,
        "all_streams_open_s": round(open_s, 2),
        "changes": len(committed),
        "delivered": len(latencies),
        "change_to_client_ms": summary(latencies),
        "api_rss_mb_with_streams_open": round(rss / 2**20, 1),
        "api_cpu_percent_idle_streams": idle_cpu,
        "api_database_connections": connections,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with dev_stack(API_PROCESSES="1") as (home, env, dev_pid):
        results = asyncio.run(measure(home, env, dev_pid, args.streams, args.rounds))
    print(
        json.dumps(
            {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, **results},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
