"""The three analysis tiers (what each costs and runs is configuration: core.settings,
core.prompts)."""

from __future__ import annotations

from enum import StrEnum


class Tier(StrEnum):
    light = "light"
    deep = "deep"
    xray = "xray"
