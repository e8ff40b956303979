"""What each tier asks the AI: the output schema of each call and of each tier's result, and
the prompts, kept as versioned Jinja templates (core/prompt_templates/<version>/).

The layout is the one OpenAI's prompt cache rewards (PROVIDERS.md): the instructions are the
static part, the shared rubric first (over 1,024 tokens on its own), then the call's task,
then the business profile; the lead comes last, as the input. Two leads analysed for the same
business profile send the same instructions, and the provider reuses their prefix.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, Literal

import jinja2
from pydantic import BaseModel, Field

from core.content import ContentIntelligence
from core.engagement import engagement
from core.models import BusinessContext, Profile
from core.tiers import AIPart, Tier

PROMPT_VERSION = "v2"
TEMPLATES = Path(__file__).parent / "prompt_templates"
# The posts given to the model: the profile's latest, as scraped (12 from Apify by default).
MAX_POSTS = 12


Effect = Literal["positive", "negative", "neutral"]


class ScoreFactor(BaseModel):
    factor: str = Field(description="What was weighed, e.g. audience match, engagement")
    effect: Effect
    evidence: str = Field(description="What in the profile or its figures shows it")


class FitLight(BaseModel):
    score: int = Field(ge=0, le=100, description="How well this account fits as a lead")
    score_factors: list[ScoreFactor] = Field(
        description="Why the score is what it is: each factor that moved it, with evidence"
    )
    summary: str = Field(description="One paragraph on who this is and why they fit or not")
    niche: str = Field(description="The account's niche in a few words")
    red_flags: list[str] = Field(description="Reasons for caution; empty when none")


class FitDeep(FitLight, ContentIntelligence):
    engagement_read: str = Field(description="How engaged the audience is and what that means")
    selling_points: list[str] = Field(description="Angles that would resonate with this lead")


class Outreach(BaseModel):
    outreach_message: str = Field(description="A short, tailored first message to this lead")


class Psychographics(BaseModel):
    motivations: list[str]
    communication_style: str
    objections: list[str] = Field(description="Objections this lead is likely to raise")
    buying_triggers: list[str]
    outreach_message: str = Field(description="A first message written for this personality")


SCHEMAS: dict[AIPart, type[BaseModel]] = {
    "fit_light": FitLight,
    "fit_deep": FitDeep,
    "outreach": Outreach,
    "psychographics": Psychographics,
}


class Engine(BaseModel):
    engine: Literal["ai", "rules"] = Field(
        description="ai: the model's answer; rules: the rule-based fallback, used when the AI "
        "provider was down (such a run is refunded)"
    )
    engine_version: str = Field(description="The prompt templates' or the rules' version")


class LightResult(FitLight, Engine):
    """What a light analysis holds (GET /api/analysis/{run_id}/result, `analysis`)."""


class DeepResult(FitDeep, Outreach, Engine):
    """What a deep analysis holds: light's fields, the engagement read, the content
    intelligence, the selling points and an outreach message."""


class XrayResult(FitDeep, Psychographics, Engine):
    """What an xray analysis holds: deep's fields and the lead's psychographics."""


TIER_RESULTS: dict[Tier, type[BaseModel]] = {
    Tier.light: LightResult,
    Tier.deep: DeepResult,
    Tier.xray: XrayResult,
}


def instructions(part: AIPart, business: BusinessContext) -> str:
    """The static part of the call: the same for every lead of this business profile."""
    return _templates().get_template(f"{part}.j2").render(business=business)


def lead_input(profile: Profile) -> str:
    """The lead: its profile, its latest posts and the engagement figures from them."""
    data: dict[str, Any] = profile.model_dump(
        mode="json",
        exclude={"profile_pic_url", "instagram_id", "posts"},
        exclude_none=True,
    )
    data["posts"] = [
        post.model_dump(
            mode="json",
            include={
                "type",
                "caption",
                "likes_count",
                "comments_count",
                "video_view_count",
                "timestamp",
                "is_pinned",
            },
            exclude_none=True,
        )
        for post in profile.posts[:MAX_POSTS]
    ]
    data["engagement"] = engagement(profile).model_dump(mode="json")
    lead_json = json.dumps(data, ensure_ascii=False)
    return _templates().get_template("lead.j2").render(lead_json=lead_json)


@cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES / PROMPT_VERSION),
        undefined=jinja2.StrictUndefined,  # a misspelt variable fails, not renders empty
        autoescape=False,  # plain text for a model, not HTML
        keep_trailing_newline=True,
    )
