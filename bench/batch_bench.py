"""Batches through the whole stack (`oslira dev` in a temporary folder), printed as JSON.

Scenarios (each on a stack of its own, configured for it):
- `bound`: N light items with an Apify cap of C and a scrape latency of L (AI answers at
  once): the batch's time from the POST to its `finished_at`, against the provider bound
  ceil(N/C) x L, and the most Apify calls the simulator saw in flight. With `--single-after`,
  another account starts one light analysis that many seconds into the batch: its time to
  complete while the backlog fills the cap.
- `scale`: N light items with zero-latency providers: the POST's time, analyses per second,
  the workers' and the API's memory (RSS) at the start and the end, and the progress
  endpoint's latency (p50/p99, polled 20 times a second) while the batch runs.

Usage:
  .venv/bin/python bench/batch_bench.py bound --items 100 --cap 10 --latency-ms 2000
  .venv/bin/python bench/batch_bench.py bound --items 1000 --single-after 20
  .venv/bin/python bench/batch_bench.py scale --items 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import psutil
from devstack import dev_stack  # the bench folder is on sys.path when run as a script

from cli import stack

BULK = "/api/leads/analyze/bulk"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1) if ordered else 0.0


def create_account(env: dict[str, str], credits: int = 1_000_000) -> dict[str, str]:
    created = subprocess.run(
        [
            *stack.oslira_command(
                "accounts",
                "create",
                "--name",
                "Bench",
                "--credits",
                str(credits),
                "--plan",
                "business",  # its hourly limit fits a batch of 10,000
            )
        ],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        text=True,
    )
    account: dict[str, str] = json.loads(created.stdout)
    return account


def headers(account: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {account['token']}"}


def rss_mb(dev_pid: int) -> dict[str, float]:
    """Resident memory of the stack's workers and API processes, by name, in MB."""
    found: dict[str, float] = {}
    for child in psutil.Process(dev_pid).children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
            rss = child.memory_info().rss / 2**20
        except psutil.Error:
            continue
        for role in ("worker", "api"):
            if f"cli.main {role}" in cmd or cmd.endswith(f"oslira {role}"):
                name = f"{role}-{child.pid}"
                found[name] = round(rss, 1)
    return found


def cpu_seconds(dev_pid: int) -> dict[str, float]:
    """CPU time (user + system) used so far by each part of the stack: workers, API,
    Temporal server, simulators, PostgreSQL (its server runs detached, found by name)."""
    used: dict[str, float] = {}
    procs = psutil.Process(dev_pid).children(recursive=True)
    procs += [p for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]
    for proc in procs:
        try:
            cmd = " ".join(proc.cmdline())
            times = proc.cpu_times()
        except psutil.Error:
            continue
        if proc.name() == "postgres":
            role = "postgres"
        elif "temporal" in cmd and "server" in cmd:
            role = "temporal"
        else:
            role = next((r for r in ("worker", "api", "simulate") if f" {r}" in cmd), "other")
        used[role] = used.get(role, 0.0) + times.user + times.system
    return used


async def start_batch(
    api: httpx.AsyncClient, account: dict[str, str], usernames: list[str]
) -> tuple[str, float]:
    started = time.perf_counter()
    response = await api.post(
        BULK,
        json={
            "usernames": usernames,
            "analysis_type": "light",
            "business_profile_id": account["business_profile_id"],
        },
        headers=headers(account),
    )
    elapsed = time.perf_counter() - started
    assert response.status_code == 202, response.text
    return response.json()["batch_id"], elapsed


async def wait_batch(
    api: httpx.AsyncClient, account: dict[str, str], batch_id: str, every: float = 0.5
) -> dict[str, Any]:
    while True:
        response = await api.get(f"{BULK}/{batch_id}/progress", headers=headers(account))
        body: dict[str, Any] = response.json()
        if body["status"] in ("complete", "cancelled", "failed"):
            return body
        await asyncio.sleep(every)


async def single_run(api: httpx.AsyncClient, account: dict[str, str]) -> float:
    """Seconds from the POST of one light analysis to its completion (server times)."""
    response = await api.post(
        "/api/leads/analyze",
        json={
            "username": f"single_{uuid4().hex[:8]}",
            "analysis_type": "light",
            "business_profile_id": account["business_profile_id"],
        },
        headers=headers(account),
    )
    assert response.status_code == 202, response.text
    run_id = response.json()["run_id"]
    created = datetime.fromisoformat(response.json()["created_at"])
    while True:
        progress = await api.get(f"/api/analysis/{run_id}/progress", headers=headers(account))
        if progress.json()["status"] in ("complete", "failed", "cancelled"):
            break
        await asyncio.sleep(0.1)
    runs = await api.get("/api/analysis", params={"page_size": 1}, headers=headers(account))
    finished = datetime.fromisoformat(runs.json()["data"][0]["finished_at"])
    assert progress.json()["status"] == "complete", progress.text
    return round((finished - created).total_seconds(), 2)


async def timeline(home: Path, batch_id: str, cap: int) -> dict[str, Any]:
    """Where the batch's time went beyond the scrapes, from the items' recorded steps: from
    the POST to the first scrape's start, and from the last scrape's end to the batch's."""
    stack_env = dict(
        line.split("=", 1) for line in (home / "stack.env").read_text().splitlines() if line
    )
    conn = await asyncpg.connect(stack_env["DATABASE_URL"])
    try:
        row = await conn.fetchrow(
            """SELECT min((a.steps -> 'scrape_profile' ->> 'started_at')::timestamptz)
                          - b.created_at AS before_first,
                      b.finished_at
                          - max((a.steps -> 'scrape_profile' ->> 'finished_at')::timestamptz)
                          AS after_last
               FROM batches b JOIN analyses a ON a.batch_id = b.id
               WHERE b.id = $1::uuid GROUP BY b.id""",
            batch_id,
        )
        finishes = [
            r["t"]
            for r in await conn.fetch(
                """SELECT (steps -> 'scrape_profile' ->> 'finished_at')::timestamptz AS t
                   FROM analyses WHERE batch_id = $1::uuid ORDER BY 1""",
                batch_id,
            )
        ]
    finally:
        await conn.close()
    assert row is not None
    # A slot's cycle: from one scrape's end to the end of the scrape that took its slot.
    cycles = [(b - a).total_seconds() for a, b in zip(finishes, finishes[cap:], strict=False)]
    return {
        "slot_cycle_s": {
            "p50": round(sorted(cycles)[len(cycles) // 2], 3) if cycles else None,
            "mean": round(sum(cycles) / len(cycles), 3) if cycles else None,
            "max": round(max(cycles), 3) if cycles else None,
        },
        "post_to_first_scrape_s": round(row["before_first"].total_seconds(), 2),
        "last_scrape_to_end_s": round(row["after_last"].total_seconds(), 2),
    }


async def bound(home: Path, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    api_url = f"http://127.0.0.1:{env['API_PORT']}"
    sim_url = f"http://127.0.0.1:{env['SIM_PORT']}"
    account = create_account(env)
    async with httpx.AsyncClient(base_url=api_url, timeout=120) as api:
        if args.warm_up:  # pools filled, modules imported: a stack that has been running
            warm, _ = await start_batch(
                api, account, [f"warm_{uuid4().hex[:6]}_{i}" for i in range(args.warm_up)]
            )
            await wait_batch(api, account, warm, every=0.2)
        async with httpx.AsyncClient(base_url=sim_url) as sim:
            await sim.post("/_simulator/apify/stats/reset")
        tag = uuid4().hex[:6]
        batch_id, post_s = await start_batch(
            api, account, [f"b{tag}_{i}" for i in range(args.items)]
        )
        single: float | None = None
        if args.single_after is not None:
            await asyncio.sleep(args.single_after)
            single = await single_run(api, create_account(env))
        done = await wait_batch(api, account, batch_id)
        async with httpx.AsyncClient(base_url=sim_url) as sim:
            stats = (await sim.get("/_simulator/apify/stats")).json()
    elapsed = (
        datetime.fromisoformat(done["finished_at"]) - datetime.fromisoformat(done["created_at"])
    ).total_seconds()
    provider_bound = math.ceil(args.items / args.cap) * args.latency_ms / 1000
    return {
        "items": args.items,
        "warm_up_items": args.warm_up,
        "cap": args.cap,
        "scrape_latency_s": args.latency_ms / 1000,
        "post_s": round(post_s, 2),
        "status": done["status"],
        "counts": done["counts"],
        "batch_s": round(elapsed, 1),
        "provider_bound_s": provider_bound,
        "ratio_to_bound": round(elapsed / provider_bound, 3),
        "apify_max_in_flight": stats.get("max_in_flight"),
        **await timeline(home, batch_id, args.cap),
        "other_accounts_single_s": single,
    }


async def scale(env: dict[str, str], dev_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    api_url = f"http://127.0.0.1:{env['API_PORT']}"
    account = create_account(env)
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=api_url, timeout=120, limits=limits) as api:
        # Warm-up: a small batch, so imports and pools are not counted.
        warm, _ = await start_batch(
            api, account, [f"warm_{uuid4().hex[:6]}_{i}" for i in range(20)]
        )
        await wait_batch(api, account, warm, every=0.2)
        memory_start = rss_mb(dev_pid)
        cpu_start = cpu_seconds(dev_pid)
        tag = uuid4().hex[:6]
        batch_id, post_s = await start_batch(
            api, account, [f"s{tag}_{i}" for i in range(args.items)]
        )
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        done: dict[str, Any] | None = None
        peak: dict[str, float] = {}
        last_sample = 0.0
        while done is None:
            started = time.perf_counter()
            response = await api.get(f"{BULK}/{batch_id}/progress", headers=headers(account))
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            body = response.json()
            if body["status"] in ("complete", "cancelled", "failed"):
                done = body
            if time.monotonic() - last_sample > 10:
                last_sample = time.monotonic()
                for name, mb in rss_mb(dev_pid).items():
                    peak[name] = max(peak.get(name, 0.0), mb)
            await asyncio.sleep(0.05)
        memory_end = rss_mb(dev_pid)
        cpu_end = cpu_seconds(dev_pid)
    run_s = (
        datetime.fromisoformat(done["finished_at"]) - datetime.fromisoformat(done["started_at"])
    ).total_seconds()
    total_s = (
        datetime.fromisoformat(done["finished_at"]) - datetime.fromisoformat(done["created_at"])
    ).total_seconds()
    return {
        "items": args.items,
        "post_s": round(post_s, 2),
        "status": done["status"],
        "counts": done["counts"],
        "batch_s": round(total_s, 1),
        "analyses_per_s": round(args.items / run_s, 1),
        # CPU milliseconds per analysis, by part of the stack (all on this one machine).
        "cpu_ms_per_analysis": {
            role: round((cpu_end[role] - cpu_start.get(role, 0.0)) * 1000 / args.items, 1)
            for role in sorted(cpu_end)
        },
        "memory_mb_start": memory_start,
        "memory_mb_peak": peak,
        "memory_mb_end": memory_end,
        "progress_ms": {
            "requests": len(latencies),
            "statuses": statuses,
            "p50": percentile(latencies, 0.5),
            "p99": percentile(latencies, 0.99),
            "max": round(max(latencies), 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="scenario", required=True)
    b = sub.add_parser("bound", help="batch time against the provider bound")
    b.add_argument("--items", type=int, default=100)
    b.add_argument("--cap", type=int, default=10)
    b.add_argument("--latency-ms", type=int, default=2000)
    b.add_argument("--single-after", type=float, default=None, help="seconds into the batch")
    b.add_argument("--warm-up", type=int, default=20, help="items of a batch run first (0: none)")
    s = sub.add_parser("scale", help="a big batch on zero-latency providers")
    s.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--worker-processes", type=int, default=0, help="0: the stack's default")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        help="KEY=VALUE for the stack, e.g. WORKFLOW_SANDBOX=false",
    )
    args = parser.parse_args()

    extra = {"WORKER_PROCESSES": str(args.worker_processes)} if args.worker_processes else {}
    extra |= dict(pair.split("=", 1) for pair in args.env)
    if args.scenario == "bound":
        extra |= {
            "SIM_APIFY_LATENCY_MS": str(args.latency_ms),
            "APIFY_MAX_CONCURRENCY": str(args.cap),
        }
    with dev_stack(**extra) as (home, env, dev_pid):
        if args.scenario == "bound":
            results = asyncio.run(bound(home, env, args))
        else:
            results = asyncio.run(scale(env, dev_pid, args))
    print(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                "scenario": args.scenario,
                "env": args.env,
                **results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
