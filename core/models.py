"""Inputs and outputs of the analysis workflow and its activities.

Every workflow and activity takes one model and returns one, so fields can be added without
breaking the histories of runs in flight. New fields need defaults.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Literal
from uuid import UUID

from pydantic import BaseModel, Field, computed_field

from core.progress import Progress, RunError, RunStatus, StepDone
from core.tiers import AIPart, Tier

if TYPE_CHECKING:
    from core.settings import Settings


class Post(BaseModel):
    id: str
    type: str = "Image"
    caption: str = ""
    hashtags: list[str] = Field(default_factory=list)
    likes_count: int = 0
    comments_count: int = 0
    video_view_count: int | None = None
    timestamp: datetime | None = None
    is_pinned: bool = False


class Profile(BaseModel):
    """A public Instagram profile as scraped, in our own names."""

    username: str
    instagram_id: str | None = None
    full_name: str = ""
    biography: str = ""
    external_url: str | None = None
    followers_count: int = 0
    follows_count: int = 0
    posts_count: int = 0
    is_private: bool = False
    is_verified: bool = False
    is_business: bool = False
    business_category: str | None = None
    profile_pic_url: str | None = None
    posts: list[Post] = Field(default_factory=list)

    @property
    def engagement_rate(self) -> float | None:
        """Mean likes + comments per post over followers, in percent."""
        if not self.posts or self.followers_count <= 0:
            return None
        interactions = sum(p.likes_count + p.comments_count for p in self.posts)
        return round(100 * interactions / len(self.posts) / self.followers_count, 3)


class BusinessContext(BaseModel):
    """What the AI needs to know about the business the lead is qualified for."""

    id: UUID
    name: str
    description: str = ""
    offering: str = ""
    target_audience: str = ""


class AIUsage(BaseModel):
    model: str
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class CostBreakdown(BaseModel):
    cache_hit: bool = False
    apify_usd: float = 0.0
    ai: list[AIUsage] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ai_usd(self) -> float:
        """Every AI call's cost (tokens x the model's prices)."""
        return round(sum(u.cost_usd for u in self.ai), 8)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_usd(self) -> float:
        """The scrape's cost (none on a cache hit) and the AI calls'."""
        return round(self.apify_usd + self.ai_usd, 8)


# --- workflow -------------------------------------------------------------------------


class ProviderBudget(BaseModel):
    """How many failures of its provider a step bears (each AI call counts its own), and
    the pauses between tries: the first, doubling up to the longest."""

    attempts: int = Field(default=8, ge=1)
    first_pause_seconds: float = Field(default=1.0, ge=0)
    max_pause_seconds: float = Field(default=30.0, ge=0)

    def pause(self, failures: int) -> timedelta:
        seconds = min(self.first_pause_seconds * 2 ** (failures - 1), self.max_pause_seconds)
        return timedelta(seconds=seconds)


class AnalysisInput(BaseModel):
    run_id: UUID
    account_id: UUID
    business_profile_id: UUID
    username: str
    tier: Tier
    # Fixed when the request was accepted, so a price change cannot alter a run in flight.
    credits_cost: int
    # None: scrape on the workflow's own task queue.
    scrape_task_queue: str | None = None
    # When the API accepted the run (steps 1-4); None: when the workflow started.
    accepted_at: datetime | None = None
    # Fixed when the run starts, like its cost.
    provider_budget: ProviderBudget = Field(default_factory=ProviderBudget)
    # The batch this run is an item of (DESIGN.md section 6); None: a single analysis.
    batch_id: UUID | None = None

    @property
    def turn(self) -> Turn:
        return Turn(account_id=self.account_id, batch_id=self.batch_id)


class AnalysisOutcome(BaseModel):
    run_id: UUID
    status: RunStatus
    lead_id: UUID | None = None
    error: RunError | None = None


# --- activities -----------------------------------------------------------------------


class ChargeInput(BaseModel):
    run_id: UUID
    account_id: UUID
    business_profile_id: UUID
    credits_cost: int
    progress: Progress  # the workflow's document, this step running


class ChargeOutput(BaseModel):
    done: StepDone
    balance_after: int
    business: BusinessContext


class CacheLookupInput(BaseModel):
    run_id: UUID
    username: str
    tier: Tier
    progress: Progress


class CacheLookupOutput(BaseModel):
    done: StepDone
    profile: Profile | None = None
    age_seconds: float | None = None


class Turn(BaseModel):
    """Whose provider call it is, for the fair order of provider slots (activities.slots):
    accounts take turns, and an account's single analyses go before its batch items."""

    account_id: UUID
    batch_id: UUID | None = None


class ScrapeInput(BaseModel):
    run_id: UUID
    username: str
    turn: Turn | None = None  # None: scheduled by a version before turns (no account known)
    # Tries of earlier executions, ended by the provider's failures (the workflow's count).
    attempts_before: int = 0
    # The workflow's document, this step running: noted on the run's row, best-effort, so
    # the database (and the event streams) see the step start. None: an older workflow.
    progress: Progress | None = None


class ScrapeOutput(BaseModel):
    done: StepDone
    profile: Profile
    cost_usd: float
    # Step 8, done by the scrape activity right after scraping; best-effort.
    store: StepDone
    stored: bool


class AIInput(BaseModel):
    run_id: UUID
    part: AIPart
    turn: Turn | None = None
    tier: Tier
    business: BusinessContext
    profile: Profile
    attempts_before: int = 0
    # The step's provider budget ends with this try: if the provider fails it, the
    # rule-based fallback answers (when configured) rather than the run failing.
    last_try: bool = False
    progress: Progress | None = None  # as ScrapeInput's


class AIOutput(BaseModel):
    done: StepDone
    part: AIPart
    fields: dict[str, object]
    usage: AIUsage | None = None  # None: the rule-based fallback answered, no model called
    engine: Literal["ai", "rules"] = "ai"


class SaveResultInput(BaseModel):
    run_id: UUID
    account_id: UUID
    business_profile_id: UUID
    profile: Profile
    analysis: dict[str, object]
    cost: CostBreakdown
    progress: Progress


class SaveResultOutput(BaseModel):
    lead_id: UUID
    upserted: StepDone
    saved: StepDone
    completed: StepDone


class FinishInput(BaseModel):
    progress: Progress  # its status failed or cancelled, with its error


class FinishOutput(BaseModel):
    refunded_credits: int
    # The run's status after the step: `complete` when it had already passed the commit point.
    status: RunStatus
    lead_id: UUID | None = None


# --- batches (DESIGN.md section 6) ----------------------------------------------------


class BatchStatus(StrEnum):
    pending = "pending"
    running = "running"
    complete = "complete"
    cancelled = "cancelled"
    failed = "failed"


class BulkInput(BaseModel):
    """A batch's workflow: what every item shares, how the window slides, and where the
    previous run of the workflow stopped (continue-as-new)."""

    batch_id: UUID
    account_id: UUID
    business_profile_id: UUID
    tier: Tier
    credits_cost: int  # per item
    total: int
    scrape_task_queue: str | None = None
    provider_budget: ProviderBudget = Field(default_factory=ProviderBudget)
    # Items in flight at once: more than the provider caps, so no slot waits for an item.
    window: int = 50
    # Items started by one run of the workflow before it continues as new (history size).
    page_size: int = 1000
    # Carried over continue-as-new.
    charged: bool = False
    next_position: int = 0
    in_flight: list[UUID] = Field(default_factory=list)
    started: int = 0  # items started by earlier runs


class BatchRef(BaseModel):
    batch_id: UUID


class BatchStarted(BaseModel):
    status: BatchStatus
    refunded_credits: int = 0


class NextItemsInput(BaseModel):
    batch_id: UUID
    from_position: int
    limit: int


class BatchItem(BaseModel):
    run_id: UUID
    username: str
    position: int


class NextItems(BaseModel):
    items: list[BatchItem]
    cancel_requested: bool


class UnfinishedInput(BaseModel):
    run_ids: list[UUID]


class UnfinishedOutput(BaseModel):
    run_ids: list[UUID]


class StopBatchInput(BaseModel):
    batch_id: UUID
    # Items from here on were never started: they end cancelled and are refunded.
    from_position: int


class StopBatchOutput(BaseModel):
    cancelled: int
    refunded_credits: int


class FinishBatchInput(BaseModel):
    batch_id: UUID
    status: BatchStatus


class BulkOutcome(BaseModel):
    batch_id: UUID
    status: BatchStatus


class SweepInput(BaseModel):
    """The stuck-run sweep: runs and batches whose rows have not moved for this long."""

    older_than_seconds: float = 300.0
    limit: int = 1_000


class SweepOutput(BaseModel):
    checked: int
    failed: list[UUID]
    refunded_credits: int
    batches_ended: list[UUID] = []


class LedgerReport(BaseModel):
    violations: list[str]


class CleanupReport(BaseModel):
    leads: int
    business_profiles: int
    business_profiles_emptied: int
    cache_entries: int
    webhook_events: int = 0  # applied Stripe events received more than 90 days ago


class QueuedEventsReport(BaseModel):
    started: list[str]  # the Stripe events whose workflow was started now


class RenewalReport(BaseModel):
    period: str  # the month's first day
    granted: list[UUID]  # accounts granted their month (plans not billed through Stripe)
    subscriptions_granted: list[str] = []  # subscriptions granted their paid period


class StripeEventInput(BaseModel):
    event_id: str
    attempts: int = 8  # tries before the event is dead-lettered
    outage_pause_seconds: float = 600  # the wait before trying again when Stripe is down

    @classmethod
    def of(cls, event_id: str, settings: Settings) -> StripeEventInput:
        return cls(
            event_id=event_id,
            attempts=settings.stripe_event_attempts,
            outage_pause_seconds=settings.stripe_outage_pause_seconds,
        )


class DeadLetterInput(BaseModel):
    event_id: str
    error: str
