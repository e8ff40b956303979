"""What exporting many leads costs the API, printed as JSON.

Starts `oslira dev` (bench/devstack.py), gives one account N leads (100,000 by default,
written straight into the database), then downloads `GET /api/leads/export` as CSV and as
JSON lines, reading the stream as it comes. For each: the time to the first byte and to
the end, the rows and bytes received, and the API process's resident memory before and at
its peak (sampled every 50 ms while the export streams).

Usage: .venv/bin/python bench/export_bench.py [--leads 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from batch_bench import create_account, headers  # the bench folder is on sys.path
from devstack import dev_stack


def _api_process(dev_pid: int) -> psutil.Process:
    for child in psutil.Process(dev_pid).children(recursive=True):
        if child.cmdline()[-1:] == ["api"]:
            return child
    raise SystemExit("no API process under oslira dev")


async def _fill(home: Path, account: dict[str, str], n: int) -> None:
    stack_env = dict(
        line.split("=", 1) for line in (home / "stack.env").read_text().splitlines() if line
    )
    conn = await asyncpg.connect(stack_env["DATABASE_URL"])
    try:
        await conn.execute(
            """INSERT INTO leads (account_id, business_profile_id, username, full_name,
                   biography, followers_count, last_score, last_analyzed_at)
               SELECT $1::uuid, $2::uuid, 'lead_' || i, 'Lead number ' || i,
                      repeat('Coffee, travel and long walks. ', 4), i * 7 % 1000003,
                      i % 101, now() - i * interval '1 second'
               FROM generate_series(1, $3) i""",
            account["account_id"],
            account["business_profile_id"],
            n,
        )
    finally:
        await conn.close()


async def _export(
    api_url: str, account: dict[str, str], fmt: str, api: psutil.Process
) -> dict[str, Any]:
    before = api.memory_info().rss / 2**20
    peak = before
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, api.memory_info().rss / 2**20)
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    received = lines = 0
    first_byte: float | None = None
    started = time.perf_counter()
    async with (
        httpx.AsyncClient(base_url=api_url, timeout=300) as client,
        client.stream(
            "GET", "/api/leads/export", params={"format": fmt}, headers=headers(account)
        ) as response,
    ):
        assert response.status_code == 200, response.status_code
        async for chunk in response.aiter_bytes():
            if first_byte is None:
                first_byte = time.perf_counter() - started
            received += len(chunk)
            lines += chunk.count(b"\n")
    total = time.perf_counter() - started
    stop.set()
    await sampler
    return {
        "format": fmt,
        "rows": lines - (1 if fmt == "csv" else 0),
        "megabytes": round(received / 2**20, 1),
        "first_byte_s": round(first_byte or 0.0, 3),
        "total_s": round(total, 2),
        "rows_per_s": round((lines / total) if total else 0),
        "api_rss_mb_before": round(before, 1),
        "api_rss_mb_peak": round(peak, 1),
    }


async def run(home: Path, env: dict[str, str], dev_pid: int, n: int) -> dict[str, Any]:
    account = create_account(env, credits=0)
    await _fill(home, account, n)
    api = _api_process(dev_pid)
    api_url = f"http://127.0.0.1:{env['API_PORT']}"
    return {
        "leads": n,
        "exports": [await _export(api_url, account, fmt, api) for fmt in ("csv", "jsonl")],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=100_000)
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    with dev_stack() as (home, env, dev_pid):
        result |= asyncio.run(run(home, env, dev_pid, args.leads))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
