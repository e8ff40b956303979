"""Rate limits as the API applies them: per account and family, shared by every API
process through PostgreSQL, with the plan's limits from configuration.

Every call acting for an account counts in `requests` (per minute); starting analyses also
counts in `analyses` (per hour), a batch counting its accepted items, inside the start's
own transaction, so a refusal creates and charges nothing. Over the limit: 429 with
Retry-After; every answer carries RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset
(of the analyses family on analysis starts, of requests elsewhere).
"""

from __future__ import annotations

from uuid import UUID

from api.errors import TooManyRequests
from core.settings import Settings
from db import rate_limits
from db.pool import Connection
from db.rate_limits import Verdict

STATE_KEY = "rate_limits"  # request.state: the verdicts of this request, by family


async def check(
    conn: Connection,
    settings: Settings,
    account_id: UUID,
    family: str,
    n: int = 1,
    verdicts: dict[str, Verdict] | None = None,
) -> Verdict:
    """Counts `n` hits; raises TooManyRequests when they go over the plan's limit (inside a
    transaction, the hits roll back with it)."""
    hits, reset_seconds, plan_name = await rate_limits.hit(conn, account_id, family, n)
    plan = settings.plan(plan_name)
    limit = plan.analyses_per_hour if family == "analyses" else plan.requests_per_minute
    verdict = Verdict(family=family, limit=limit, hits=hits, reset_seconds=reset_seconds)
    if verdicts is not None:
        # Refused analyses are rolled back with their transaction: the headers count
        # what is left without them.
        counted = hits - n if not verdict.allowed and family == "analyses" else hits
        verdicts[family] = Verdict(family, limit, counted, reset_seconds)
    if not verdict.allowed:
        left = max(0, limit - (hits - n))  # before this request
        if family == "analyses":
            message = (
                f"The {plan_name} plan allows {limit} analyses an hour; {left} left in this "
                f"window, not enough for {n}. Retry in {verdict.reset} s."
            )
        else:
            message = (
                f"The {plan_name} plan allows {limit} requests a minute. "
                f"Retry in {verdict.reset} s."
            )
        raise TooManyRequests(message, retry_after=verdict.reset)
    return verdict


def response_headers(verdicts: dict[str, Verdict]) -> dict[str, str]:
    """The headers a response carries: the analyses family's where it was counted."""
    chosen = verdicts.get("analyses") or verdicts.get("requests")
    return chosen.headers() if chosen else {}
