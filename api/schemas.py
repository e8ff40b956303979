"""Request and response bodies of the API (snake_case JSON)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api import examples
from core.engagement import Engagement
from core.models import CostBreakdown
from core.progress import RunError, RunStatus, Step, StepRecord
from core.tiers import Tier

# Instagram's rules for a handle, with the leading @ this API ignores: 1-30 letters, digits,
# '.' and '_', with no '.' first, last or twice in a row. One pattern for the check and the
# OpenAPI schema.
HANDLE_PATTERN = r"^@?(?=[A-Za-z0-9._]{1,30}$)[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*$"
HANDLE_SCHEMA: dict[str, Any] = {"pattern": HANDLE_PATTERN, "maxLength": 31}
_HANDLE = re.compile(HANDLE_PATTERN)

T = TypeVar("T")


def instagram_handle(value: str) -> str:
    """`@Nat.Geo` -> `nat.geo`. ASCII is checked before anything is lower-cased: lower-casing
    some non-ASCII letters gives ASCII ones (the Kelvin sign U+212A becomes `k`)."""
    if not value.isascii():
        raise ValueError("must be an Instagram handle: ASCII letters, digits, '.' and '_'")
    if not _HANDLE.fullmatch(value):
        raise ValueError(
            "must be an Instagram handle: 1-30 letters, digits, '.' and '_', with no '.' "
            "at the start or end or twice in a row"
        )
    return value.removeprefix("@").lower()


def handle_field(description: str) -> Any:
    """A username field whose schema states the rule `instagram_handle` applies."""
    return Field(
        description=description,
        json_schema_extra=HANDLE_SCHEMA,
        examples=["@natgeo"],
    )


class AnalyzeRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "username": "@natgeo",
                    "analysis_type": "deep",
                    "business_profile_id": examples.PROFILE_ID,
                }
            ]
        },
    )

    username: str = handle_field("Instagram handle; a leading @ is ignored, case does not matter")
    analysis_type: Tier = Field(description="light (1 credit), deep (3) or xray (5)")
    business_profile_id: UUID

    _handle = field_validator("username")(instagram_handle)


class RunAccepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.RUN_ACCEPTED]})

    run_id: UUID
    status: RunStatus
    username: str
    analysis_type: Tier
    business_profile_id: UUID
    credits_cost: int
    free: bool = Field(
        description="Covered by this month's free allowance of the account's plan: charges "
        "nothing (credits instead, should the allowance be spent before it starts)"
    )
    created_at: datetime
    links: dict[str, str]


class RunSummary(RunAccepted):
    """One run in the account's list: what its start answered, and where it is now."""

    model_config = ConfigDict(json_schema_extra={"examples": [examples.RUN_SUMMARY]})

    credits_charged: int
    progress: int = Field(ge=0, le=100)
    current_step: Step | None
    error: RunError | None
    cancel_requested: bool
    finished_at: datetime | None


class ProgressResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.PROGRESS]})

    run_id: UUID
    status: RunStatus
    progress: int = Field(ge=0, le=100)
    current_step: Step | None
    steps: list[StepRecord]
    error: RunError | None = None
    cancel_requested: bool = False
    source: str = Field(description="`workflow` (live query) or `database` (persisted copy)")


class CancelResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.CANCELLED]})

    run_id: UUID
    status: RunStatus
    cancel_requested: bool = True


class LeadOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.LEAD]})

    id: UUID
    username: str
    full_name: str
    biography: str
    external_url: str | None
    profile_pic_url: str | None
    followers_count: int
    follows_count: int
    posts_count: int
    is_private: bool
    is_verified: bool
    is_business: bool
    business_category: str | None
    engagement_rate: float | None


class LeadWithFigures(LeadOut):
    engagement: Engagement | None = Field(
        description="Figures computed from the latest posts at the latest analysis: "
        "engagement rate, average likes, comments and video views, posts per week, top hashtags"
    )


class LeadSort(StrEnum):
    last_analyzed_at = "last_analyzed_at"
    score = "score"
    followers = "followers"


class SortOrder(StrEnum):
    desc = "desc"
    asc = "asc"


class ExportFormat(StrEnum):
    csv = "csv"
    jsonl = "jsonl"


class LeadRecord(LeadOut):
    """A lead in a list or an export: its profile and its latest analysis in brief."""

    model_config = ConfigDict(json_schema_extra={"examples": [examples.LEAD_RECORD]})

    business_profile_id: UUID
    score: int | None = Field(description="The latest analysis's fit score (0-100)")
    analysis_type: Tier | None = Field(description="The latest analysis's tier")
    summary: str | None = Field(description="The latest analysis's summary")
    last_analysis_id: UUID | None
    last_analyzed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class LatestAnalysis(BaseModel):
    run_id: UUID
    analysis_type: Tier
    score: int | None
    analysis: dict[str, Any] = Field(description="As GET /api/analysis/{run_id}/result has it")
    credits_charged: int
    finished_at: datetime | None


class LeadDetail(LeadRecord):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.LEAD_DETAIL]})

    engagement: Engagement | None = Field(
        description="Figures computed from the latest posts at the latest analysis: "
        "engagement rate, average likes, comments and video views, posts per week, top hashtags"
    )
    latest_analysis: LatestAnalysis | None


class LeadAnalysis(BaseModel):
    """One run in a lead's history."""

    model_config = ConfigDict(json_schema_extra={"examples": [examples.LEAD_ANALYSIS]})

    run_id: UUID
    analysis_type: Tier
    status: RunStatus
    score: int | None
    summary: str | None
    credits_charged: int
    created_at: datetime
    finished_at: datetime | None


class ProfileChangeOut(BaseModel):
    field: str = Field(description="followers_count, biography, is_private or is_verified")
    before: Any
    after: Any
    amount: float | None = Field(
        default=None,
        description="followers: the relative change (0.25 is +25%); biography: the "
        "normalised edit distance (0-1)",
    )
    detected_at: datetime


class ResultResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.RESULT]})

    run_id: UUID
    status: RunStatus
    username: str
    analysis_type: Tier
    business_profile_id: UUID
    lead: LeadWithFigures | None = Field(description="None once the lead has been purged")
    analysis: dict[str, Any] = Field(
        description="The tier's fields (the schemas LightResult, DeepResult, XrayResult): "
        "score (0-100) with the score_factors that explain it, summary, niche, red_flags; "
        "deep adds engagement_read, content_mix, languages, sentiment, selling_points, "
        "outreach_message; xray adds motivations, communication_style, objections, "
        "buying_triggers. engine says who answered: ai, or rules (the fallback used when the "
        "AI provider was down; such a run is refunded), with its engine_version."
    )
    credits_charged: int
    cost: CostBreakdown | dict[str, Any]
    changes: list[ProfileChangeOut] = Field(
        default_factory=list,
        description="What changed on the profile since the lead's previous analysis: "
        "followers by more than 10%, the bio by more than 30%, private or verified flipped",
    )
    steps: list[StepRecord]
    created_at: datetime
    finished_at: datetime | None


class BalanceResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.BALANCE]})

    account_id: UUID
    balance: int


class LedgerEntry(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.LEDGER_ENTRY]})

    id: int
    delta: int
    balance_after: int
    kind: str
    run_id: UUID | None
    batch_id: UUID | None
    reference: str | None
    description: str
    created_at: datetime


class Page(BaseModel, Generic[T]):
    page: int = Field(examples=[1])
    page_size: int = Field(examples=[50])
    total: int = Field(description="Items across all pages", examples=[1])
    data: list[T]


def assume_utc(moment: datetime | None) -> datetime | None:
    """A date given without a zone (a query string's) is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


# PostgreSQL text cannot hold NUL: the schema says so, and `no_nul` refuses it.
NO_NUL: dict[str, Any] = {"pattern": "^[^\\u0000]*$"}


def no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class BusinessProfileIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [examples.BUSINESS_PROFILE_IN]},
    )

    name: str = Field(min_length=1, max_length=200, json_schema_extra=NO_NUL)
    description: str = Field(default="", max_length=4000, json_schema_extra=NO_NUL)
    offering: str = Field(default="", max_length=4000, json_schema_extra=NO_NUL)
    target_audience: str = Field(default="", max_length=4000, json_schema_extra=NO_NUL)

    _no_nul = field_validator("name", "description", "offering", "target_audience")(no_nul)


class BusinessProfileOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.BUSINESS_PROFILE]})

    id: UUID
    name: str
    description: str
    offering: str
    target_audience: str
    created_at: datetime
    updated_at: datetime


class ComponentHealth(BaseModel):
    status: Literal["ok", "degraded", "down"]
    latency_ms: float | None = None
    detail: str | None = Field(default=None, description="What was found, or why it is not ok")


class HealthResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.HEALTH]})

    status: Literal["healthy", "degraded", "unhealthy"]
    version: str
    components: dict[str, ComponentHealth]


class Liveness(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.LIVENESS]})

    status: str
    version: str


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "nightly batch"}]}
    )

    name: str = Field(min_length=1, max_length=100, json_schema_extra=NO_NUL)

    _no_nul = field_validator("name")(no_nul)


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.API_KEY]})

    id: UUID
    name: str
    prefix: str = Field(description="The key's first characters, to tell keys apart")
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.API_KEY_CREATED]})

    key: str = Field(description="Send as `Authorization: Bearer <key>`; shown this once only")


# --- batches ----------------------------------------------------------------------------

MAX_BATCH = 10_000


class BulkAnalyzeRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "usernames": ["@natgeo", "nasa", "NatGeo", "not a handle"],
                    "analysis_type": "light",
                    "business_profile_id": examples.PROFILE_ID,
                }
            ]
        },
    )

    usernames: list[str] = Field(
        min_length=1,
        max_length=MAX_BATCH,
        description=(
            "1 to 10,000 Instagram handles, normalised as for one analysis; repeats collapse "
            "into one item, and invalid handles come back in `rejected`"
        ),
    )
    analysis_type: Tier = Field(description="light (1 credit), deep (3) or xray (5), per item")
    business_profile_id: UUID


class RejectedUsername(BaseModel):
    username: str = Field(description="As sent")
    code: str = Field(
        description="`invalid_username`, or `analysis_in_progress` (with the run's id)",
        examples=["analysis_in_progress"],
    )
    run_id: UUID | None = None


class BatchStatusName(StrEnum):
    pending = "pending"
    running = "running"
    complete = "complete"
    cancelled = "cancelled"
    failed = "failed"


class BatchAccepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.BATCH_ACCEPTED]})

    batch_id: UUID
    status: BatchStatusName
    analysis_type: Tier
    business_profile_id: UUID
    total: int = Field(description="Items accepted (0 when every username was rejected)")
    duplicates: int = Field(description="Repeated usernames collapsed into one item")
    rejected: list[RejectedUsername]
    credits_cost: int = Field(description="Per item")
    free_items: int = Field(
        description="Items covered by this month's free allowance (the first ones): they "
        "charge nothing"
    )
    credits_charged: int = Field(
        description=(
            "What the batch is charged, up front, for its other items: held for it from this "
            "answer on, taken from the balance when its workflow starts"
        )
    )
    created_at: datetime
    links: dict[str, str]


class BatchSummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.BATCH_SUMMARY]})

    batch_id: UUID
    status: BatchStatusName
    analysis_type: Tier
    business_profile_id: UUID
    total: int
    credits_cost: int
    cancel_requested: bool
    error: RunError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: dict[str, str]


class ItemCounts(BaseModel):
    pending: int
    processing: int
    complete: int
    failed: int
    cancelled: int


class BatchProgress(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.BATCH_PROGRESS]})

    batch_id: UUID
    status: BatchStatusName = Field(
        description="`complete` once every item has ended, whatever each outcome"
    )
    total: int
    counts: ItemCounts
    progress: int = Field(ge=0, le=100, description="Items ended, in percent")
    credits_charged: int = Field(description="Taken by the batch's charge (0 until it lands)")
    credits_refunded: int = Field(description="Given back for items that did not complete")
    cancel_requested: bool
    error: RunError | None = None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    items_per_second: float | None = Field(
        description="Items ended per second since the batch started"
    )
    eta: datetime | None = Field(description="When the last item should end, at that rate")


class BatchItemOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.BATCH_ITEM]})

    position: int = Field(description="The item's place in the batch, from 0")
    username: str
    run_id: UUID = Field(description="Works with the single-run endpoints")
    status: RunStatus
    error: RunError | None
    score: int | None = Field(description="The lead's fit score, once complete")
    summary: str | None = Field(description="The analysis's summary, once complete")


class BatchCancelResponse(BaseModel):
    batch_id: UUID
    status: BatchStatusName
    cancel_requested: bool = True


class MeUser(BaseModel):
    id: UUID
    email: str | None


class MeApiKey(BaseModel):
    id: UUID
    name: str


class MeAccount(BaseModel):
    id: UUID
    name: str
    role: str = Field(description="owner, admin or member (an API key acts as a member)")


class MeResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.ME]})

    user: MeUser | None = Field(description="None when an API key calls")
    api_key: MeApiKey | None = Field(description="The key that calls, if one does")
    accounts: list[MeAccount] = Field(
        description="The user's accounts, oldest membership first (an API key: its own)"
    )


class LedgerKind(StrEnum):
    purchase = "purchase"
    grant = "grant"
    renewal = "renewal"
    charge = "charge"
    refund = "refund"
    adjustment = "adjustment"


class TierPrice(BaseModel):
    analysis_type: Tier
    credits: int = Field(description="What one analysis of this tier costs")


class PlanOut(BaseModel):
    id: str = Field(description="The plan's name in accounts and configuration")
    name: str
    allowances: dict[Tier, int] = Field(description="Free analyses a month (UTC) per tier")
    analyses_per_hour: int
    requests_per_minute: int
    monthly_credits: int
    price_cents: int = Field(description="Monthly price (0: not sold as a subscription)")
    currency: str


class PackageOut(BaseModel):
    id: str = Field(description="What `POST /api/credits/purchase` takes")
    credits: int
    amount_cents: int
    currency: str


class PricingResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.PRICING]})

    tiers: list[TierPrice]
    plans: list[PlanOut]
    packages: list[PackageOut] = Field(description="Credit packages sold through Checkout")


class PurchaseIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"package": "starter"}]}
    )

    package: str = Field(min_length=1, max_length=40, description="A package id from the pricing")


class SubscribeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"plan": "pro"}]})

    plan: str = Field(min_length=1, max_length=40, description="A plan id with a price")


class CheckoutOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.CHECKOUT]})

    session_id: str = Field(description="The Stripe Checkout session")
    url: str = Field(description="Where to send the user to pay")


class PortalOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"url": "https://billing.stripe.com/p/session/test_1"}]}
    )

    url: str = Field(description="The customer portal, for this customer, for a short while")


class SubscriptionOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.SUBSCRIPTION]})

    plan: str = Field(description="The account's plan now")
    status: str = Field(
        description="Stripe's status of the subscription (`active`, `past_due`, `canceled`, "
        "...), or `none` when the account never subscribed"
    )
    subscription_id: str | None = None
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    cancel_at_period_end: bool = False
    credits_per_period: int = Field(description="Credits each paid period grants")


class TierUsageOut(BaseModel):
    analysis_type: Tier
    runs: int = Field(description="Runs accepted in the month")
    complete: int
    failed: int
    cancelled: int
    in_flight: int
    credits_spent: int = Field(description="Charged in the month (a batch's charge included)")
    credits_refunded: int
    allowance: int = Field(description="Free analyses a month on the account's plan")
    allowance_used: int = Field(description="Units of the month drawn and kept")
    allowance_left: int


class UsageResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.USAGE]})

    month: str = Field(examples=["2026-11"])
    plan: str
    credits_spent: int
    credits_refunded: int
    tiers: list[TierUsageOut]


class RefreshCheckIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"analysis_type": "deep"}]}
    )

    analysis_type: Tier = Field(description="The tier whose freshness (cache TTL) applies")


class RefreshCheckOut(BaseModel):
    lead_id: UUID
    analysis_type: Tier
    stale: bool = Field(
        description="Whether an analysis now would scrape, or see a changed profile"
    )
    reasons: list[str] = Field(
        description="`not_cached` (the next analysis scrapes), `older_than_ttl` (the cached "
        "profile is older than the tier accepts), `profile_changed` (the cached profile "
        "differs from the one last analysed: see `changes`)"
    )
    cached: bool
    age_seconds: float | None = Field(description="The cached profile's age")
    ttl_seconds: float = Field(description="The tier's freshness limit")
    changes: list[ProfileChangeOut] = Field(
        description="The cached profile against the lead as last analysed"
    )
    last_analyzed_at: datetime | None


class ForceRefreshIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"analyze": True, "analysis_type": "light"}]},
    )

    analyze: bool = Field(default=False, description="Also start an analysis (charged as usual)")
    analysis_type: Tier | None = Field(
        default=None,
        description="With `analyze`: the tier (default: that of the lead's latest analysis)",
    )


class ForceRefreshOut(BaseModel):
    lead_id: UUID
    dropped: bool = Field(description="Whether a cached profile was there to drop")
    run: RunAccepted | None = Field(description="The analysis started, with `analyze`")


class HitRateOut(BaseModel):
    analysis_type: Tier
    window: Literal["24h", "7d", "30d"]
    runs: int = Field(description="Complete runs in the window")
    hits: int = Field(description="Of which found their profile in the cache")
    hit_rate: float | None = Field(description="hits / runs (none without runs)")


class AgeBucketOut(BaseModel):
    from_hours: float
    to_hours: float | None = Field(description="None: and older")
    entries: int
    fresh_for: list[Tier] = Field(description="The tiers a profile this old still serves")


class AccountCacheOut(BaseModel):
    window: Literal["30d"] = "30d"
    runs: int
    hits: int
    hit_rate: float | None
    provider_usd_saved: float = Field(
        description="The scrapes the hits spared, at APIFY_USD_PER_PROFILE each"
    )


class CacheStatisticsOut(BaseModel):
    hit_rates: list[HitRateOut] = Field(description="Every account's runs, by tier and window")
    entries: int = Field(description="Profiles in the cache")
    total_bytes: int
    age_distribution: list[AgeBucketOut]
    account: AccountCacheOut = Field(description="This account's own runs")


class TierCounts(BaseModel):
    pending: int = 0
    processing: int = 0
    complete: int = 0
    failed: int = 0
    cancelled: int = 0


class CreditTotals(BaseModel):
    spent: int = Field(description="Credits charged in the window (runs and batches)")
    refunded: int = Field(description="Credits given back in the window")
    net: int


class ProviderCost(BaseModel):
    apify_usd: float
    ai_usd: float
    total_usd: float


class StepDuration(BaseModel):
    count: int = Field(description="Runs in which the step ran")
    p50_ms: float
    p95_ms: float


class CacheUse(BaseModel):
    complete_runs: int
    hits: int = Field(description="Complete runs that used a cached profile (no scrape)")
    hit_rate: float | None = Field(description="hits / complete_runs; None without runs")


class AnalyticsSummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.ANALYTICS_SUMMARY]})

    start: datetime = Field(serialization_alias="from")
    end: datetime = Field(serialization_alias="to")
    analyses: int = Field(description="Runs requested in the window")
    by_status: dict[RunStatus, int]
    by_tier: dict[Tier, TierCounts]
    credits: CreditTotals
    provider_cost: ProviderCost = Field(description="What the complete runs cost in providers")
    step_durations: dict[str, StepDuration] = Field(description="By step name")
    cache: CacheUse
    errors: dict[str, int] = Field(description="Failed or cancelled runs by error code")
