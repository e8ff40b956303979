"""What counts as a profile having changed (DESIGN.md section 7): followers moved by more
than 10%, the bio rewritten by more than 30% (normalised Levenshtein distance), the account
turned private or public, verified or not. Such a change makes an earlier analysis stale,
whatever its age."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel
from rapidfuzz.distance import Levenshtein

FOLLOWERS_SHARE = 0.10
BIO_DISTANCE = 0.30

ChangedField = Literal["followers_count", "biography", "is_private", "is_verified"]


class ProfileChange(BaseModel):
    field: ChangedField
    before: Any
    after: Any
    # followers: the relative change (0.25 is +25%); biography: the normalised distance.
    amount: float | None = None


class Snapshot(BaseModel):
    """The fields compared, as a lead or a cached profile holds them."""

    followers_count: int = 0
    biography: str = ""
    is_private: bool = False
    is_verified: bool = False


def changes(before: Snapshot, after: Snapshot) -> list[ProfileChange]:
    found: list[ProfileChange] = []
    old, new = before.followers_count, after.followers_count
    if old != new:
        share = abs(new - old) / old if old > 0 else 1.0
        if share > FOLLOWERS_SHARE:
            found.append(
                ProfileChange(
                    field="followers_count", before=old, after=new, amount=round(share, 4)
                )
            )
    if before.biography != after.biography:
        distance = Levenshtein.normalized_distance(before.biography, after.biography)
        if distance > BIO_DISTANCE:
            found.append(
                ProfileChange(
                    field="biography",
                    before=before.biography,
                    after=after.biography,
                    amount=round(distance, 4),
                )
            )
    for flag in ("is_private", "is_verified"):
        if getattr(before, flag) != getattr(after, flag):
            found.append(
                ProfileChange(field=flag, before=getattr(before, flag), after=getattr(after, flag))
            )
    return found
