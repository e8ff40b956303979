"""The three analysis tiers (what each costs and runs is configuration: core.settings,
core.prompts), and the AI calls each makes."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class Tier(StrEnum):
    light = "light"
    deep = "deep"
    xray = "xray"


AIPart = Literal["fit_light", "fit_deep", "outreach", "psychographics"]

# The independent AI calls of each tier; deep and xray run theirs in parallel.
TIER_PARTS: dict[Tier, tuple[AIPart, ...]] = {
    Tier.light: ("fit_light",),
    Tier.deep: ("fit_deep", "outreach"),
    Tier.xray: ("fit_deep", "psychographics"),
}
