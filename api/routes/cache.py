"""A lead's cached profile: is it stale for a tier, and why; drop it (and analyse again)
(DESIGN.md section 7)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Request

from api import runs
from api.deps import SettingsDep, Temporal, TemporalState, Tenant
from api.errors import NotFound, error_example, responses
from api.routes.analysis import _accepted
from api.routes.leads import _LEAD_NOT_FOUND, LeadId
from api.schemas import (
    AccountCacheOut,
    AgeBucketOut,
    AnalyzeRequest,
    CacheStatisticsOut,
    ForceRefreshIn,
    ForceRefreshOut,
    HitRateOut,
    ProfileChangeOut,
    RefreshCheckIn,
    RefreshCheckOut,
)
from core.changes import Snapshot, changes
from core.tiers import Tier
from db import leads
from providers.cache import ProfileCache

router = APIRouter(tags=["leads"])
statistics_router = APIRouter(tags=["cache"])
Window = Literal["24h", "7d", "30d"]
WINDOWS: tuple[Window, ...] = ("24h", "7d", "30d")


async def _lead(scope: Tenant, lead_id: LeadId) -> dict[str, object]:
    async with scope.transaction() as conn:
        lead = await leads.get(conn, lead_id)
    if lead is None:
        raise NotFound("No such lead.", code="lead_not_found")
    return dict(lead)


@router.post(
    "/api/leads/{lead_id}/refresh-check",
    response_model=RefreshCheckOut,
    summary="Whether the lead's cached profile is stale for a tier, and why",
    responses=responses(404, 422, e404=_LEAD_NOT_FOUND),
)
async def refresh_check(
    lead_id: LeadId, body: RefreshCheckIn, scope: Tenant, settings: SettingsDep, request: Request
) -> RefreshCheckOut:
    """Stale when an analysis now would scrape (`not_cached`, `older_than_ttl`), or would
    see a profile that changed since the lead was last analysed (`profile_changed`):
    followers by more than 10%, the bio by more than 30%, private or verified flipped."""
    lead = await _lead(scope, lead_id)
    cache: ProfileCache = request.app.state.profile_cache
    found = await cache.get(str(lead["username"]))
    ttl = settings.cache_ttl_seconds(body.analysis_type)
    reasons: list[str] = []
    age, changed = None, []
    if found is None:
        reasons.append("not_cached")
    else:
        profile, stored_at = found
        age = max(0.0, (datetime.now(UTC) - stored_at).total_seconds())
        if age > ttl:
            reasons.append("older_than_ttl")
        seen = datetime.now(UTC)
        changed = [
            ProfileChangeOut(**c.model_dump(), detected_at=seen)
            for c in changes(
                Snapshot.model_validate(lead),
                Snapshot.model_validate(profile.model_dump()),
            )
        ]
        if changed:
            reasons.append("profile_changed")
    return RefreshCheckOut(
        lead_id=lead_id,
        analysis_type=body.analysis_type,
        stale=bool(reasons),
        reasons=reasons,
        cached=found is not None,
        age_seconds=round(age, 3) if age is not None else None,
        ttl_seconds=ttl,
        changes=changed,
        last_analyzed_at=lead["last_analyzed_at"],  # type: ignore[arg-type]
    )


@router.post(
    "/api/leads/{lead_id}/force-refresh",
    response_model=ForceRefreshOut,
    summary="Drop the lead's cached profile (the next analysis scrapes); optionally analyse now",
    responses=responses(
        402,
        404,
        409,
        422,
        e404=_LEAD_NOT_FOUND,
        e409=error_example(
            409,
            "analysis_in_progress",
            "@natgeo is already being analysed for this business profile.",
        ),
        e422=error_example(
            422,
            None,
            "analysis_type: Input should be 'light', 'deep' or 'xray'",
            field="analysis_type",
        ),
    ),
)
async def force_refresh(
    lead_id: LeadId,
    body: ForceRefreshIn,
    scope: Tenant,
    settings: SettingsDep,
    temporal: Temporal,
    health: TemporalState,
    request: Request,
) -> ForceRefreshOut:
    """With `{"analyze": true}` the analysis starts as `POST /api/leads/analyze` would start
    it (charged, rate limited, 402 without credits), for the lead's username and business
    profile, at `analysis_type` or else the tier of the lead's latest analysis."""
    lead = await _lead(scope, lead_id)
    cache: ProfileCache = request.app.state.profile_cache
    dropped = await cache.drop(str(lead["username"]))
    run = None
    if body.analyze:
        tier = body.analysis_type
        if tier is None:
            async with scope.transaction() as conn:
                latest = await conn.fetchval(
                    "SELECT analysis_type FROM analyses WHERE id = $1", lead["last_analysis_id"]
                )
            tier = Tier(latest or Tier.light)
        request_body = AnalyzeRequest(
            username=str(lead["username"]),
            analysis_type=tier,
            business_profile_id=lead["business_profile_id"],  # type: ignore[arg-type]
        )
        run = _accepted(await runs.start(scope, settings, temporal, health, request_body, None))
    return ForceRefreshOut(lead_id=lead_id, dropped=dropped, run=run)


@statistics_router.get(
    "/api/cache/statistics",
    response_model=CacheStatisticsOut,
    summary="The profile cache: hit rates by tier, entries, ages, size, and this account's hits",
)
async def cache_statistics(
    scope: Tenant, settings: SettingsDep, request: Request
) -> CacheStatisticsOut:
    """Hit rates count complete runs, of every account (counts only), over 24 hours, 7 days
    and 30 days. Ages are bucketed by the tiers' freshness, so each bucket says which tiers a
    profile that old still serves. This account's hits saved their scrapes' provider cost;
    credits are the same, hit or miss."""
    ttls = sorted({settings.cache_ttl_seconds(t) for t in Tier})
    cache: ProfileCache = request.app.state.profile_cache
    stored = await cache.stats(ttls)
    async with scope.transaction() as conn:
        rates = {
            (r["analysis_type"], r["window_name"]): r
            for r in await conn.fetch("SELECT * FROM cache_hit_rates()")
        }
        own = await conn.fetchrow(
            """SELECT count(*) AS runs,
                      count(*) FILTER (WHERE (cost ->> 'cache_hit')::boolean) AS hits
               FROM analyses
               WHERE account_id = $1 AND status = 'complete'
                 AND finished_at >= now() - interval '30 days'""",
            scope.account_id,
        )
    hit_rates = []
    for tier in Tier:
        for window in WINDOWS:
            row = rates.get((tier.value, window))
            runs, hits = (int(row["runs"]), int(row["hits"])) if row else (0, 0)
            hit_rates.append(
                HitRateOut(
                    analysis_type=tier,
                    window=window,
                    runs=runs,
                    hits=hits,
                    hit_rate=_rate(hits, runs),
                )
            )
    edges = [0.0, *ttls]
    buckets = [
        AgeBucketOut(
            from_hours=edges[i] / 3600,
            to_hours=ttls[i] / 3600 if i < len(ttls) else None,
            entries=stored.by_age[i],
            fresh_for=[t for t in Tier if settings.cache_ttl_seconds(t) > edges[i]],
        )
        for i in range(len(edges))
    ]
    assert own is not None  # an aggregate always answers a row
    runs, hits = int(own["runs"]), int(own["hits"])
    return CacheStatisticsOut(
        hit_rates=hit_rates,
        entries=stored.entries,
        total_bytes=stored.total_bytes,
        age_distribution=buckets,
        account=AccountCacheOut(
            runs=runs,
            hits=hits,
            hit_rate=_rate(hits, runs),
            provider_usd_saved=round(hits * settings.apify_usd_per_profile, 6),
        ),
    )


def _rate(hits: int, runs: int) -> float | None:
    return round(hits / runs, 4) if runs else None
