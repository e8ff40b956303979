"""What each tier asks the AI: the parts run in parallel, their output schemas and prompts.

The prompts are deliberately plain for now (a later issue writes the real ones and the cost
model). They keep the order prompt caching needs: the static instructions and the business
context first, the per-lead profile last.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from core.models import AIPart, BusinessContext, Profile
from core.tiers import Tier


class FitLight(BaseModel):
    score: int = Field(ge=0, le=100, description="How well this account fits as a lead")
    summary: str = Field(description="One paragraph on who this is and why they fit or not")
    niche: str = Field(description="The account's niche in a few words")
    red_flags: list[str] = Field(description="Reasons for caution; empty when none")


class FitDeep(FitLight):
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

# The independent AI calls of each tier; deep and xray run theirs in parallel.
TIER_PARTS: dict[Tier, tuple[AIPart, ...]] = {
    Tier.light: ("fit_light",),
    Tier.deep: ("fit_deep", "outreach"),
    Tier.xray: ("fit_deep", "psychographics"),
}

_TASKS: dict[AIPart, str] = {
    "fit_light": "Score how well this Instagram account fits as a sales lead for the business.",
    "fit_deep": (
        "Score how well this Instagram account fits as a sales lead for the business, read "
        "its audience engagement and list the selling points that would resonate."
    ),
    "outreach": "Write a short, personal first outreach message from the business to this lead.",
    "psychographics": (
        "Describe this lead's motivations, communication style, likely objections and buying "
        "triggers, and write a first message suited to that personality."
    ),
}


def instructions(part: AIPart, business: BusinessContext) -> str:
    return (
        "You qualify Instagram accounts as sales leads for a business. Answer only from the "
        "profile given; do not invent facts.\n\n"
        f"Task: {_TASKS[part]}\n\n"
        f"Business: {business.name}\n"
        f"About: {business.description}\n"
        f"Offering: {business.offering}\n"
        f"Target audience: {business.target_audience}\n"
    )


def profile_input(profile: Profile) -> str:
    data = profile.model_dump(
        mode="json", exclude={"profile_pic_url", "instagram_id"}, exclude_none=True
    )
    data["engagement_rate_percent"] = profile.engagement_rate
    return "Instagram profile:\n" + json.dumps(data, ensure_ascii=False)
