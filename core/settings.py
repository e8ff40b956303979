"""One settings class for every process (API, worker, CLI), read from the environment.

`oslira dev` writes the addresses of the stack it started to `$OSLIRA_HOME/stack.env`, so
commands run from another shell (`oslira accounts create`) reach the same stack. Variables
set in the environment always win over that file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.secrets import SECRET_NAMES, SecretsManagerSource
from core.tiers import Tier

log = logging.getLogger(__name__)

API_ROLE = "oslira_api"
WORKER_ROLE = "oslira_worker"
# HS256 keys shorter than the hash output are guessable offline from one token.
JWT_SECRET_MIN_BYTES = 32
# SHA-256 of secrets that were once published (the default of earlier versions): refused
# even at full length, since anyone can sign with them.
PUBLISHED_JWT_SECRETS = frozenset(
    {"80c0b5af0724d5e64e0b6da7b4f093730ae7367174a60608cb1e3ac30ac3c91f"}
)


class ConfigurationError(RuntimeError):
    """A process cannot start with the configuration it was given."""


class ModelPrice(BaseModel):
    """USD per million tokens."""

    input: float
    cached_input: float
    output: float


DEFAULT_MODEL_PRICES: dict[str, ModelPrice] = {
    "gpt-5-nano": ModelPrice(input=0.05, cached_input=0.005, output=0.40),
    "gpt-5-mini": ModelPrice(input=0.25, cached_input=0.025, output=2.00),
    "gpt-5": ModelPrice(input=1.25, cached_input=0.125, output=10.00),
}


class CreditPackage(BaseModel):
    """Credits sold in one Stripe Checkout payment."""

    credits: int = Field(ge=1)
    amount_cents: int = Field(ge=50, description="Price, in the currency's smallest unit")
    currency: str = "usd"


DEFAULT_PACKAGES: dict[str, CreditPackage] = {
    "starter": CreditPackage(credits=100, amount_cents=1_000),
    "growth": CreditPackage(credits=500, amount_cents=4_500),
    "scale": CreditPackage(credits=2_000, amount_cents=16_000),
}

PLAN_NAME = r"^[a-z0-9_-]{1,40}$"  # as the accounts table's CHECK has it
FREE_PLAN = "free"  # every account's plan until billing says otherwise


class Plan(BaseModel):
    """What a plan gives: free analyses each month per tier (the allowance), and its rate
    limits. Configured with PLANS (JSON), not code."""

    name: str = Field(min_length=1, description="As shown to users")
    allowances: dict[Tier, int] = Field(
        default_factory=dict, description="Free analyses a month (UTC) per tier"
    )
    analyses_per_hour: int = Field(default=100, ge=1, description="Analyses started per hour")
    requests_per_minute: int = Field(default=600, ge=1, description="Other API calls per minute")
    monthly_credits: int = Field(default=0, ge=0, description="Credits granted each period")
    price_cents: int = Field(
        default=0, ge=0, description="Monthly price through Stripe (0: not sold as a subscription)"
    )
    currency: str = "usd"
    stripe_price: str | None = Field(
        default=None, description="A Stripe Price id to bill with, instead of an inline price"
    )

    @field_validator("allowances")
    @classmethod
    def _not_negative(cls, allowances: dict[Tier, int]) -> dict[Tier, int]:
        if any(units < 0 for units in allowances.values()):
            raise ValueError("an allowance cannot be negative")
        return allowances


DEFAULT_PLANS: dict[str, Plan] = {
    FREE_PLAN: Plan(name="Free", allowances={Tier.light: 10}),
    "pro": Plan(
        name="Pro",
        allowances={Tier.light: 100, Tier.deep: 20},
        analyses_per_hour=1_000,
        requests_per_minute=1_200,
        monthly_credits=500,
        price_cents=4_900,
    ),
    "business": Plan(
        name="Business",
        allowances={Tier.light: 500, Tier.deep: 100, Tier.xray: 20},
        analyses_per_hour=20_000,
        requests_per_minute=6_000,
        monthly_credits=2_500,
        price_cents=19_900,
    ),
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        extra="ignore",
        env_nested_delimiter="__",
        env_ignore_empty=True,
        protected_namespaces=(),
        # Errors name the field, never its value: several are secrets.
        hide_input_in_errors=True,
    )

    environment: Literal["development", "test", "production"] = "development"
    # One JSON object per log line (core.logs); `oslira dev` uses text unless told otherwise.
    log_format: Literal["json", "text"] = "json"
    oslira_home: Path = Path(".oslira")

    # Database. DATABASE_URL is the owner (migrations, admin); the API and the workers
    # connect as their own roles, derived from it unless given explicitly.
    database_url: str | None = None
    api_database_url: str | None = None
    worker_database_url: str | None = None
    db_api_password: SecretStr | None = None
    db_worker_password: SecretStr | None = None
    db_pool_min: int = 2
    db_pool_max: int = 20

    # Temporal
    temporal_address: str | None = None
    temporal_namespace: str = "default"
    task_queue: str = "oslira-analysis"
    # Scrapes may run on their own queue (dedicated workers); by default they share the
    # main queue so the server can hand them to the worker eagerly.
    scrape_task_queue: str | None = None

    # Ports used by `oslira dev`
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    sim_port: int = 8010
    # Worker processes `oslira dev` starts (0: one per CPU). Temporal spreads the work.
    worker_processes: int = 0
    # Run workflows in Temporal's sandbox (isolated module state, non-deterministic calls
    # refused). Off saves the per-run re-import of the workflow modules (see README).
    workflow_sandbox: bool = True
    # Each worker serves Prometheus /metrics on this port (unset: none); `oslira dev` gives
    # its workers this port and the next ones.
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Processes `oslira api` serves with (0: one per two CPUs, at least one).
    api_processes: int = Field(default=0, ge=0)

    # Authentication. No default: the API and the token commands refuse to start without a
    # secret; `oslira dev` generates one per state folder.
    jwt_secret: SecretStr | None = None
    jwt_audience: str = "authenticated"

    # AWS Secrets Manager (core.secrets): one JSON secret holding the JWT secret and the
    # provider keys under their environment names, re-read after the TTL; what it does not
    # hold comes from the environment.
    secrets_manager_secret_id: str | None = None
    secrets_manager_ttl_seconds: float = Field(default=300.0, gt=0)
    secrets_manager_endpoint_url: str | None = None
    secrets_manager_region: str | None = None
    # Sentry (read now so Secrets Manager can hold it)
    sentry_dsn: SecretStr | None = None
    _secrets: SecretsManagerSource | None = PrivateAttr(default=None)

    # Requests whose body is larger answer 413 unread (a batch of 10,000 usernames is
    # about 330 kB).
    max_request_bytes: int = Field(default=1_048_576, ge=1024)

    # Apify
    apify_token: SecretStr | None = None
    apify_base_url: str = "https://api.apify.com"
    apify_actor: str = "apify~instagram-profile-scraper"
    # A whole call; under the scrape activity's 330 s, so the call fails before the activity.
    apify_timeout_seconds: float = Field(default=320.0, gt=0, le=320)
    apify_usd_per_profile: float = 0.0023
    # At most this many calls to each provider in flight, across every worker process.
    apify_max_concurrency: int = Field(default=10, ge=1)
    openai_max_concurrency: int = Field(default=20, ge=1)

    # Batches: items in flight at once per batch (above the provider caps, so no slot waits
    # for an item; at most 1,000, well inside Temporal's 2,000 pending children per run), and
    # items a batch's workflow starts before it continues as new.
    batch_window: int = Field(default=50, ge=1, le=1000)
    batch_page_size: int = Field(default=1000, ge=1, le=5000)

    # OpenAI
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    # A whole call; under the AI activity's 150 s.
    openai_timeout_seconds: float = Field(default=120.0, gt=0, le=140)
    # A circuit per model in each worker: open after this many failures in a row, for this
    # long, then one call probes.
    ai_breaker_threshold: int = Field(default=5, ge=1)
    ai_breaker_pause_seconds: float = Field(default=30.0, gt=0)
    # When the AI provider is down (the model's circuit is open, or the step's last try
    # failed): "rules" completes the run with the rule-based analyzer (core.rules) and
    # refunds it; "none" fails the run and refunds it.
    ai_fallback: Literal["none", "rules"] = "none"
    model_light: str = "gpt-5-nano"
    model_deep: str = "gpt-5-mini"
    model_xray: str = "gpt-5"
    model_prices: dict[str, ModelPrice] = Field(default_factory=lambda: dict(DEFAULT_MODEL_PRICES))

    # Credits per tier and cache freshness per tier (hours)
    credits_light: int = 1
    credits_deep: int = 3
    credits_xray: int = 5
    cache_ttl_hours_light: float = 24
    cache_ttl_hours_deep: float = 12
    cache_ttl_hours_xray: float = 6
    # Where scraped profiles are kept: the database (default), or S3 (AWS, Cloudflare R2,
    # MinIO: any S3 API at S3_ENDPOINT_URL). Credentials: S3_ACCESS_KEY_ID and
    # S3_SECRET_ACCESS_KEY, else boto3's usual chain (environment, profile, instance role).
    profile_cache: Literal["postgres", "s3"] = "postgres"
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    # Plans by name (accounts.plan), as JSON in PLANS: allowances and rate limits.
    plans: dict[str, Plan] = Field(default_factory=lambda: dict(DEFAULT_PLANS))
    # Stripe: the credit packages sold (JSON in PACKAGES), and the webhook endpoint's
    # signing secret (webhooks answer 503 without it).
    packages: dict[str, CreditPackage] = Field(default_factory=lambda: dict(DEFAULT_PACKAGES))
    stripe_webhook_secret: SecretStr | None = None
    # The Stripe API: its secret key (billing endpoints answer 503 without it) and, for the
    # simulator, its address (None: Stripe itself).
    stripe_api_key: SecretStr | None = None
    stripe_api_base: str | None = None
    stripe_timeout_seconds: float = Field(default=10.0, gt=0, le=25)
    # Where Checkout and the billing portal send the user back (None: the API's docs).
    billing_return_url: str | None = None
    stripe_event_attempts: int = Field(default=8, ge=1, description="before dead-lettering")
    # With Stripe out of reach, an event's workflow waits this long between its rounds of
    # attempts (for up to 3 days) rather than dead-lettering the event.
    stripe_outage_pause_seconds: float = Field(default=600, gt=0)

    # The provider budget of each scrape and each AI call (README: "How an analysis runs").
    provider_attempts: int = Field(default=8, ge=1)
    provider_first_pause_seconds: float = Field(default=1.0, ge=0)
    provider_max_pause_seconds: float = Field(default=30.0, ge=0)

    # How long the progress endpoint waits for a workflow query before it answers from the
    # database, and how long it then skips queries after one timed out (no worker running).
    progress_query_timeout_seconds: float = 0.5
    progress_query_backoff_seconds: float = 2.0
    # The longest the API waits for Temporal to start or cancel a workflow (a busy server is
    # slow) before it answers 503 (a start) or relies on the run's cancel flag (a cancel);
    # and how long it keeps retrying a server it cannot reach (a server that is down).
    temporal_call_timeout_seconds: float = 10.0
    temporal_unreachable_after_seconds: float = 1.5
    # How long the API then treats the server as down: starts answer 503, progress reads
    # the database, without trying.
    temporal_unreachable_backoff_seconds: float = 10.0
    # How often an event stream with nothing new sends a keep-alive comment (and re-reads).
    sse_keepalive_seconds: float = Field(default=15.0, gt=0)
    # The longest the API waits for a database connection before it answers 503.
    db_connect_timeout_seconds: float = 2.0

    @field_validator("jwt_secret")
    @classmethod
    def _usable(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is None:
            return None
        value = secret.get_secret_value().encode()
        if len(value) < JWT_SECRET_MIN_BYTES:
            raise ValueError(f"JWT_SECRET must be at least {JWT_SECRET_MIN_BYTES} bytes")
        if hashlib.sha256(value).hexdigest() in PUBLISHED_JWT_SECRETS:
            raise ValueError("JWT_SECRET is a published value: anyone can sign with it")
        return secret

    @field_validator("plans")
    @classmethod
    def _plans_named(cls, plans: dict[str, Plan]) -> dict[str, Plan]:
        if FREE_PLAN not in plans:
            raise ValueError(f"PLANS must define the {FREE_PLAN!r} plan (the default)")
        for name in plans:
            if not re.fullmatch(PLAN_NAME, name):
                raise ValueError(f"plan names match {PLAN_NAME}: {name!r} does not")
        return plans

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> Settings:
        if self.profile_cache == "s3" and not self.s3_bucket:
            raise ValueError("PROFILE_CACHE=s3 needs S3_BUCKET")
        return self

    @model_validator(mode="after")
    def _refuse_missing_services(self) -> Settings:
        if self.environment == "production":
            if self.database_url is None:
                raise ValueError("DATABASE_URL must be set outside development")
            if self.temporal_address is None:
                raise ValueError("TEMPORAL_ADDRESS must be set outside development")
        return self

    # --- derived values -----------------------------------------------------------------

    @property
    def scrape_queue(self) -> str:
        return self.scrape_task_queue or self.task_queue

    @property
    def api_process_count(self) -> int:
        return self.api_processes or max(1, (os.cpu_count() or 1) // 2)

    @property
    def uses_apify_simulator(self) -> bool:
        return self.apify_token is None

    def plan(self, name: str) -> Plan:
        """An account's plan; one no longer configured counts as the free plan."""
        return self.plans.get(name) or self.plans[FREE_PLAN]

    @property
    def return_url(self) -> str:
        return self.billing_return_url or f"http://{self.api_host}:{self.api_port}/docs"

    def credits_for(self, tier: Tier) -> int:
        return int(getattr(self, f"credits_{tier.value}"))

    def model_for(self, tier: Tier) -> str:
        return str(getattr(self, f"model_{tier.value}"))

    def cache_ttl_seconds(self, tier: Tier) -> float:
        return float(getattr(self, f"cache_ttl_hours_{tier.value}")) * 3600

    def secret(self, field: str) -> SecretStr | None:
        """A secret setting's current value: from Secrets Manager when configured and the
        secret holds it (re-read after its TTL), else from the environment."""
        if self.secrets_manager_secret_id is not None:
            name = SECRET_NAMES[field]
            value = self._secret_source().get(name)
            if value is not None:
                if field != "jwt_secret":
                    return SecretStr(value)
                try:
                    return self._usable(SecretStr(value))
                except ValueError as exc:
                    log.error("JWT_SECRET in Secrets Manager is refused (%s): not used", exc)
        current: SecretStr | None = getattr(self, field)
        return current

    def _secret_source(self) -> SecretsManagerSource:
        if self._secrets is None:
            assert self.secrets_manager_secret_id is not None
            self._secrets = SecretsManagerSource(
                self.secrets_manager_secret_id,
                ttl_seconds=self.secrets_manager_ttl_seconds,
                endpoint_url=self.secrets_manager_endpoint_url,
                region=self.secrets_manager_region,
            )
        return self._secrets

    def require_jwt_secret(self) -> str:
        jwt_secret = self.secret("jwt_secret")
        if jwt_secret is None:
            raise ConfigurationError(
                "JWT_SECRET is not set: give it a random value of at least "
                f"{JWT_SECRET_MIN_BYTES} bytes (for example `openssl rand -base64 48`), or "
                "start the whole stack with `oslira dev`, which keeps one per state folder."
            )
        return jwt_secret.get_secret_value()

    def require_database_url(self) -> str:
        if self.database_url is None:
            raise ConfigurationError(
                "No database configured: start the stack with `oslira dev` "
                "(or `make run`) or set DATABASE_URL."
            )
        return self.database_url

    def require_temporal_address(self) -> str:
        if self.temporal_address is None:
            raise ConfigurationError(
                "No Temporal server configured: start the stack with `oslira dev` "
                "(or `make run`) or set TEMPORAL_ADDRESS."
            )
        return self.temporal_address

    @cached_property
    def api_dsn(self) -> str:
        return self.api_database_url or _with_role(
            self.require_database_url(), API_ROLE, self.db_api_password
        )

    @cached_property
    def worker_dsn(self) -> str:
        return self.worker_database_url or _with_role(
            self.require_database_url(), WORKER_ROLE, self.db_worker_password
        )


def _with_role(dsn: str, role: str, password: SecretStr | None) -> str:
    """The same server and database as `dsn`, logged in as `role`."""
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    auth = quote(role)
    if password is not None:
        auth += ":" + quote(password.get_secret_value(), safe="")
    return urlunsplit(parts._replace(netloc=f"{auth}@{host}"))


def describe(error: ValidationError) -> str:
    """One line naming each setting at fault and why, never its value (some are secrets)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in error.errors()
    )


def stack_env_path(home: Path) -> Path:
    return home / "stack.env"


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, completed by the running dev stack's addresses."""
    home = Path(os.environ.get("OSLIRA_HOME", ".oslira"))
    env_file = stack_env_path(home)
    return Settings(_env_file=env_file if env_file.exists() else None, **overrides)  # type: ignore[arg-type, call-arg]
