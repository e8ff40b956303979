"""Latency and throughput of analyses through the whole stack, printed as JSON.

Starts `oslira dev` in a temporary state folder with zero-latency simulators (so what is
measured is our orchestration, not the providers), creates an account, then:
- runs analyses one at a time per tier (cold cache: a new username each time) and reports
  p50/p95 of the time from the POST to the run's `finished_at` (server), to the moment the
  bench saw it complete (observed, polling the database every 2 ms), and of the POST itself
  (post: the API's steps 1-4 and the workflow start);
- starts 100 light analyses at once and reports analyses completed per second;
- under load: 300 POSTs at once, then a steady 50 POSTs a second for 10 s, reporting the
  POST's latency and, meanwhile, the progress endpoint's (a client polling 20 times a
  second).

Usage: .venv/bin/python bench/analysis_bench.py [--runs 25] [--burst 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import httpx
from devstack import dev_stack  # the bench folder is on sys.path when run as a script

from cli import stack

TERMINAL = ("complete", "failed", "cancelled")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index], 1)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values, 0.5),
        "p95_ms": percentile(values, 0.95),
        "p99_ms": percentile(values, 0.99),
        "mean_ms": round(statistics.fmean(values), 1),
        "n": len(values),
    }


class Bench:
    def __init__(self, api: httpx.AsyncClient, db: asyncpg.Pool, account: dict[str, str]):
        self.api = api
        self.db = db
        self.account = account
        self.headers = {"Authorization": f"Bearer {account['token']}"}

    async def post(self, username: str, tier: str) -> UUID:
        response = await self.api.post(
            "/api/leads/analyze",
            json={
                "username": username,
                "analysis_type": tier,
                "business_profile_id": self.account["business_profile_id"],
            },
            headers=self.headers,
        )
        response.raise_for_status()
        return UUID(response.json()["run_id"])

    async def wait(self, run_ids: list[UUID], poll: float) -> dict[UUID, datetime]:
        while True:
            rows = await self.db.fetch(
                "SELECT id, status, finished_at FROM analyses WHERE id = ANY($1)", run_ids
            )
            if len(rows) == len(run_ids) and all(r["status"] in TERMINAL for r in rows):
                failed = [r["id"] for r in rows if r["status"] != "complete"]
                if failed:
                    raise RuntimeError(f"{len(failed)} runs did not complete: {failed[:3]}")
                return {r["id"]: r["finished_at"] for r in rows}
            await asyncio.sleep(poll)

    async def single(self, tier: str, runs: int, username: str | None = None) -> dict[str, object]:
        server, observed, accept = [], [], []
        for _ in range(runs):
            started = time.time()
            run_id = await self.post(username or f"bench_{uuid4().hex[:10]}", tier)
            accept.append((time.time() - started) * 1000)
            finished = (await self.wait([run_id], 0.002))[run_id]
            observed.append((time.time() - started) * 1000)
            server.append((finished.timestamp() - started) * 1000)
        return {"server": summary(server), "observed": summary(observed), "post": summary(accept)}

    async def timed_post(
        self, username: str, latencies: list[float], statuses: Counter[int]
    ) -> UUID | None:
        started = time.perf_counter()
        response = await self.api.post(
            "/api/leads/analyze",
            json={
                "username": username,
                "analysis_type": "light",
                "business_profile_id": self.account["business_profile_id"],
            },
            headers=self.headers,
        )
        latencies.append((time.perf_counter() - started) * 1000)
        statuses[response.status_code] += 1
        return UUID(response.json()["run_id"]) if response.status_code == 202 else None

    async def poll_progress(
        self, runs: list[UUID], latencies: list[float], statuses: Counter[int], every: float
    ) -> None:
        """A client following the runs just started (most still in flight, so the workflow
        is asked): one progress request every `every` seconds."""
        while True:
            if runs:
                run_id = runs[-1 - len(latencies) % min(len(runs), 10)]
                started = time.perf_counter()
                response = await self.api.get(
                    f"/api/analysis/{run_id}/progress", headers=self.headers
                )
                latencies.append((time.perf_counter() - started) * 1000)
                statuses[response.status_code] += 1
            await asyncio.sleep(every)

    async def under_load(self, posts: int, rate: float | None) -> dict[str, object]:
        """POST latency for `posts` analyses, all at once (rate None) or at a steady rate,
        and the progress endpoint's latency meanwhile (20 requests a second)."""
        post_ms: list[float] = []
        progress_ms: list[float] = []
        statuses: Counter[int] = Counter()
        progress_statuses: Counter[int] = Counter()
        runs: list[UUID] = []
        poller = asyncio.create_task(self.poll_progress(runs, progress_ms, progress_statuses, 0.05))
        tag = uuid4().hex[:6]

        async def one(i: int) -> None:
            if run_id := await self.timed_post(f"load_{tag}_{i}", post_ms, statuses):
                runs.append(run_id)

        started = time.perf_counter()
        if rate is None:
            await asyncio.gather(*(one(i) for i in range(posts)))
        else:
            pending = []
            for i in range(posts):
                pending.append(asyncio.create_task(one(i)))
                await asyncio.sleep(max(0.0, started + (i + 1) / rate - time.perf_counter()))
            await asyncio.gather(*pending)
        sent_s = time.perf_counter() - started
        poller.cancel()  # progress is measured while the POSTs go on
        await self.wait(runs, 0.05)
        return {
            "posts": posts,
            "rate_per_s": rate or "all at once",
            "sent_in_s": round(sent_s, 2),
            "statuses": dict(statuses),
            "progress_statuses": dict(progress_statuses),
            "post": summary(post_ms),
            "progress": summary(progress_ms),
        }

    async def burst(self, count: int) -> dict[str, object]:
        started = time.time()
        run_ids = await asyncio.gather(
            *(self.post(f"burst_{i}_{uuid4().hex[:8]}", "light") for i in range(count))
        )
        accepted = time.time()
        finished = await self.wait(list(run_ids), 0.02)
        last = max(f.timestamp() for f in finished.values())
        return {
            "analyses": count,
            "all_accepted_s": round(accepted - started, 2),
            "all_complete_s": round(last - started, 2),
            "analyses_per_s": round(count / (last - started), 1),
        }


def create_account(env: dict[str, str]) -> dict[str, str]:
    created = subprocess.run(
        [*stack.oslira_command("accounts", "create", "--name", "Bench", "--credits", "1000000")],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        text=True,
    )
    account: dict[str, str] = json.loads(created.stdout)
    return account


async def measure(
    home: Path, account: dict[str, str], env: dict[str, str], runs: int, burst: int
) -> dict[str, object]:
    stack_env = dict(
        line.split("=", 1) for line in (home / "stack.env").read_text().splitlines() if line
    )
    db = await asyncpg.create_pool(stack_env["DATABASE_URL"], min_size=1, max_size=4)
    api_url = f"http://127.0.0.1:{env['API_PORT']}"
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(base_url=api_url, timeout=120, limits=limits) as api:
        bench = Bench(api, db, account)
        await bench.single("light", 5)  # warm-up: imports, pools, sticky caches
        results: dict[str, object] = {}
        for tier in ("light", "deep", "xray"):
            results[f"{tier}_cold"] = await bench.single(tier, runs)
        cached = f"cached_{uuid4().hex[:8]}"
        await bench.single("light", 1, cached)
        results["light_cache_hit"] = await bench.single("light", runs, cached)
        results["throughput"] = await bench.burst(burst)
        results["load_300_at_once"] = await bench.under_load(300, None)
        results["load_50_per_s"] = await bench.under_load(500, 50.0)
    await db.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=25, help="sequential runs per tier")
    parser.add_argument("--burst", type=int, default=100, help="analyses started at once")
    parser.add_argument("--api-processes", type=int, default=0, help="0: the stack's default")
    args = parser.parse_args()

    extra = {"API_PROCESSES": str(args.api_processes)} if args.api_processes else {}
    with dev_stack(**extra) as (home, env, _):
        results = asyncio.run(measure(home, create_account(env), env, args.runs, args.burst))
    print(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                "api_processes": args.api_processes or "default",
                **results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
