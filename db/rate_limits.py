"""Rate limits per account and family of endpoints, counted in PostgreSQL so every API
process shares them (migration 0012)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from uuid import UUID

from db.pool import Connection

# Each family's window: analyses are counted per hour (a batch counts its items), every
# other call per minute.
WINDOWS = {"analyses": "hour", "requests": "minute"}


@dataclass(frozen=True)
class Verdict:
    family: str
    limit: int
    hits: int  # in the current window, these included
    reset_seconds: float

    @property
    def allowed(self) -> bool:
        return self.hits <= self.limit

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.hits)

    @property
    def reset(self) -> int:
        """Whole seconds until the window resets (at least 1)."""
        return max(1, math.ceil(self.reset_seconds))

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
        }


async def hit(conn: Connection, account_id: UUID, family: str, n: int) -> tuple[int, float, str]:
    """Counts `n` hits in the account's current window of `family`; answers the window's
    hits so far, the seconds until it resets, and the account's plan."""
    row = await conn.fetchrow(
        "SELECT hits, reset_seconds, plan FROM rate_limit_hit($1, $2, $3, $4)",
        account_id,
        family,
        WINDOWS[family],
        n,
    )
    assert row is not None
    return int(row["hits"]), float(row["reset_seconds"]), str(row["plan"] or "free")
