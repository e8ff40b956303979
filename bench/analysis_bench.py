"""Latency and throughput of analyses through the whole stack, printed as JSON.

Starts `oslira dev` in a temporary state folder with zero-latency simulators (so what is
measured is our orchestration, not the providers), creates an account, then:
- runs analyses one at a time per tier (cold cache: a new username each time) and reports
  p50/p95 of the time from the POST to the run's `finished_at` (server), to the moment the
  bench saw it complete (observed, polling the database every 2 ms), and of the POST itself
  (post: the API's steps 1-4 and the workflow start);
- starts 100 light analyses at once and reports analyses completed per second.

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
    async with httpx.AsyncClient(base_url=api_url, timeout=60) as api:
        bench = Bench(api, db, account)
        await bench.single("light", 5)  # warm-up: imports, pools, sticky caches
        results: dict[str, object] = {}
        for tier in ("light", "deep", "xray"):
            results[f"{tier}_cold"] = await bench.single(tier, runs)
        cached = f"cached_{uuid4().hex[:8]}"
        await bench.single("light", 1, cached)
        results["light_cache_hit"] = await bench.single("light", runs, cached)
        results["throughput"] = await bench.burst(burst)
    await db.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=25, help="sequential runs per tier")
    parser.add_argument("--burst", type=int, default=100, help="analyses started at once")
    args = parser.parse_args()

    with dev_stack() as (home, env, _):
        results = asyncio.run(measure(home, create_account(env), env, args.runs, args.burst))
    print(
        json.dumps(
            {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, **results},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
