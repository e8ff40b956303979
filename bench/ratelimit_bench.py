"""What the rate limit check costs a request, printed as JSON.

On the embedded PostgreSQL (a temporary one), as the API role, it times what a request
does to find its account with and without the check (`rate_limit_hit`, one statement on the
connection the account was found with), one request at a time and with several requests
of one account at once (they all update the account's one counter row).

Usage: .venv/bin/python bench/ratelimit_bench.py [--requests 5000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import UUID

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli import stack  # noqa: E402
from core.settings import Settings  # noqa: E402
from db import accounts, rate_limits  # noqa: E402
from db.migrate import migrate  # noqa: E402
from db.pool import connection, create_pool  # noqa: E402


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": round(statistics.median(ordered), 3),
        "p99": round(ordered[int(len(ordered) * 0.99) - 1], 3),
    }


async def _time(pool: Any, user_id: UUID, account_id: UUID, check: bool) -> float:
    started = time.perf_counter()
    async with connection(pool) as conn:
        await accounts.memberships(conn, user_id)
        if check:
            await rate_limits.hit(conn, account_id, "requests", 1)
    return (time.perf_counter() - started) * 1000


async def _series(
    pool: Any, user_id: UUID, account_id: UUID, n: int, concurrency: int
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for check in (False, True, False, True):  # interleaved, so drift hits both alike
        samples: list[float] = []

        async def one_client(count: int, into: list[float] = samples, c: bool = check) -> None:
            for _ in range(count):
                into.append(await _time(pool, user_id, account_id, c))

        started = time.perf_counter()
        await asyncio.gather(*(one_client(n // concurrency) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        key = "with_check" if check else "without_check"
        results.setdefault(key, []).extend(samples)
        results.setdefault(f"{key}_per_s", []).append(len(samples) / elapsed)
    out = {
        key: _summary(results[key]) | {"requests_per_s": round(min(results[f"{key}_per_s"]))}
        for key in ("without_check", "with_check")
    }
    out["check_costs_ms"] = {
        q: round(out["with_check"][q] - out["without_check"][q], 3) for q in ("p50", "p99")
    }
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="oslira-ratelimit-") as tmp:
        os.chmod(tmp, 0o755)
        server, admin_url = stack.start_postgres(Path(tmp) / "pgdata")
        try:
            database_url = await stack.ensure_database(admin_url, "bench")
            await migrate(database_url)
            settings = Settings(_env_file=None, database_url=database_url)  # type: ignore[call-arg]
            system = await create_pool(settings.worker_dsn, min_size=1, max_size=2)
            async with system.acquire() as conn:
                created = await accounts.create_with_owner(conn, name="Bench", credits_granted=0)
            await system.close()
            pool = await create_pool(settings.api_dsn, min_size=args.concurrency, max_size=20)
            for _ in range(200):  # warm-up
                await _time(pool, created.user_id, created.account_id, True)
            result = {
                "requests": args.requests,
                "one_at_a_time": await _series(
                    pool, created.user_id, created.account_id, args.requests, 1
                ),
                f"{args.concurrency}_at_once_one_account": await _series(
                    pool, created.user_id, created.account_id, args.requests, args.concurrency
                ),
            }
            await pool.close()
            return result
        finally:
            server.cleanup()  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    result = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    result |= asyncio.run(main_async(args))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
