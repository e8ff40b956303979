"""Engagement figures computed from a profile's latest posts: stored on the lead and given to
the model, so its engagement read rests on numbers rather than guesses."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from statistics import mean

from pydantic import BaseModel, Field

from core.models import Profile

TOP_HASHTAGS = 10


class HashtagCount(BaseModel):
    tag: str
    posts: int = Field(description="How many of the posts analysed carry it")


class Engagement(BaseModel):
    posts_analyzed: int = Field(description="The latest posts the figures are computed from")
    engagement_rate: float | None = Field(
        description="Mean likes + comments per post over followers, in percent"
    )
    avg_likes: float | None
    avg_comments: float | None
    avg_video_views: float | None = Field(description="Over the video posts only")
    posts_per_week: float | None = Field(
        description="Posting cadence over the span of the dated posts (pinned ones aside)"
    )
    last_post_at: datetime | None
    top_hashtags: list[HashtagCount]


def engagement(profile: Profile) -> Engagement:
    posts = profile.posts
    likes = [p.likes_count for p in posts]
    comments = [p.comments_count for p in posts]
    views = [p.video_view_count for p in posts if p.video_view_count is not None]
    # A pinned post can be years old: it says nothing about how often the account posts.
    dated = sorted(p.timestamp for p in posts if p.timestamp is not None and not p.is_pinned)
    cadence = None
    if len(dated) >= 2:
        span_days = (dated[-1] - dated[0]).total_seconds() / 86_400
        cadence = round((len(dated) - 1) / span_days * 7, 2) if span_days > 0 else None
    tags = Counter(tag for p in posts for tag in {t.lower().lstrip("#") for t in p.hashtags})
    return Engagement(
        posts_analyzed=len(posts),
        engagement_rate=profile.engagement_rate,
        avg_likes=round(mean(likes), 1) if likes else None,
        avg_comments=round(mean(comments), 1) if comments else None,
        avg_video_views=round(mean(views), 1) if views else None,
        posts_per_week=cadence,
        last_post_at=max((p.timestamp for p in posts if p.timestamp), default=None),
        # Ties broken by name, so the same posts always give the same list.
        top_hashtags=[
            HashtagCount(tag=tag, posts=n)
            for tag, n in sorted(tags.items(), key=lambda t: (-t[1], t[0]))[:TOP_HASHTAGS]
        ],
    )
