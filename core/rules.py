"""The rule-based analyzer: each tier's fields derived deterministically from the profile and
its posts, with no model (DESIGN.md section 3, step 9's fallback; from the analytics backend
the system we replace had).

Used when `AI_FALLBACK=rules` and the AI provider is down: the run completes with a result
marked `"engine": "rules"`, and is refunded, since it did not get what was paid for. It scores
on the rubric the prompts give the model (core/prompt_templates), with the same weights, so
its scores sit on the same scale; its prose is templated, plainer than a model's.
"""

from __future__ import annotations

import re

from pydantic import BaseModel
from rapidfuzz import fuzz

from core.content import CATEGORIES, ContentIntelligence, content_intelligence, warm_up
from core.engagement import Engagement, engagement
from core.models import BusinessContext, Profile
from core.prompts import (
    SCHEMAS,
    Effect,
    FitDeep,
    FitLight,
    Outreach,
    Psychographics,
    ScoreFactor,
)
from core.tiers import AIPart

RULES_VERSION = "rules-1"
_ARTICLES = {"the", "a", "an", "le", "la", "les", "el", "los", "las", "die", "der", "das"}

_CONTACT = re.compile(r"\b(dm|email|e-mail|contact|collab|collabs|book|booking|inquiries)\b", re.I)

# What drives people who post mostly in a category, and what would make them buy.
_MOTIVATIONS: dict[str, tuple[list[str], list[str]]] = {
    "fitness": (
        ["helping followers reach their goals", "discipline and visible progress"],
        ["a measurable result for their clients", "tools that save them coaching time"],
    ),
    "food": (
        ["sharing what they cook or serve", "recognition for their craft"],
        ["better ingredients or equipment", "more covers or orders"],
    ),
    "travel": (
        ["discovery and storytelling", "inspiring others to go"],
        ["experiences worth sharing", "partnerships that fund the next trip"],
    ),
    "beauty": (
        ["self-expression", "trust earned by honest reviews"],
        ["products they can vouch for", "exclusive launches"],
    ),
    "fashion": (
        ["personal style and identity", "staying ahead of trends"],
        ["limited drops", "collaborations that suit their look"],
    ),
    "tech": (
        ["building and shipping", "productivity and leverage"],
        ["a clear return on time saved", "tools their audience asks about"],
    ),
    "business": (
        ["growth and revenue", "credibility as an expert"],
        ["a clear return on investment", "case studies from peers"],
    ),
}
_DEFAULT_MOTIVATIONS = (
    ["sharing their interests with a community", "recognition for their content"],
    [
        "an offer tied to what they already post about",
        "a partnership that adds value for followers",
    ],
)


class RulesAnalyzer:
    """Stateless and deterministic: the same profile and business give the same fields."""

    version = RULES_VERSION

    def __init__(self) -> None:
        # Loads the language model and the sentiment lexicon now (at worker start), not in
        # the first fallback's call, in the middle of an outage.
        warm_up()

    def analyze(self, part: AIPart, business: BusinessContext, profile: Profile) -> BaseModel:
        read = _Reading(business, profile)
        result: BaseModel
        if part == "fit_light":
            result = read.fit_light()
        elif part == "fit_deep":
            result = read.fit_deep()
        elif part == "outreach":
            result = Outreach(outreach_message=read.message())
        else:
            result = read.psychographics()
        assert isinstance(result, SCHEMAS[part])
        return result


class _Reading:
    def __init__(self, business: BusinessContext, profile: Profile) -> None:
        self.business = business
        self.profile = profile
        self.figures: Engagement = engagement(profile)
        self.content: ContentIntelligence = content_intelligence(profile)
        # The categories the business's description names: whom it sells to.
        self.wanted = _categories_in(
            " ".join(
                [business.target_audience, business.offering, business.description, business.name]
            )
        )
        self.top_category = next(
            (c.category for c in self.content.content_mix if c.category != "other"), None
        )

    # --- the score ----------------------------------------------------------------------

    def factors(self) -> list[tuple[ScoreFactor, int]]:
        return [
            self._audience(),
            self._engagement(),
            self._activity(),
            self._reach(),
            self._commercial(),
        ]

    def _audience(self) -> tuple[ScoreFactor, int]:
        business = self.business
        wanted = self.wanted
        shares = {c.category: c.percent for c in self.content.content_mix}
        overlap = sum(shares.get(c, 0) for c in wanted)
        effect: Effect
        if wanted and self.top_category in wanted:
            points, effect = 40, "positive"
        elif overlap:
            points, effect = 20 + min(overlap, 100) * 15 // 100, "positive"
        else:
            # No shared category: how close the words are, for at most a third of the points.
            # Sorted tokens, not token sets: a one-word bio is not a perfect match.
            similarity = fuzz.token_sort_ratio(
                f"{business.target_audience} {business.offering}".lower(),
                f"{self.profile.biography} {self.profile.business_category or ''}".lower(),
            )
            points = round(similarity * 13 / 100)
            effect = "neutral" if similarity > 50 else "negative"
        posts_on = ", ".join(f"{c.category} {c.percent}%" for c in self.content.content_mix[:3])
        looks_for = ", ".join(sorted(wanted)) or "an audience no category names"
        return _factor(
            "audience and niche match",
            effect,
            f"posts on {posts_on or 'nothing yet'}; the business looks for {looks_for}",
        ), points

    def _engagement(self) -> tuple[ScoreFactor, int]:
        rate = self.figures.engagement_rate
        if rate is None:
            why = "no posts to measure it on" if not self.profile.posts else "no followers"
            return _factor("engagement quality", "negative", why), 0
        points, effect = _band(
            rate, [(6, 25, "positive"), (3, 20, "positive"), (1, 12, "neutral"), (0, 5, "negative")]
        )
        return _factor(
            "engagement quality",
            effect,
            f"engagement rate {rate}% ({self.figures.avg_likes} likes and "
            f"{self.figures.avg_comments} comments per post on average)",
        ), points

    def _activity(self) -> tuple[ScoreFactor, int]:
        cadence = self.figures.posts_per_week
        if cadence is None:
            return _factor("activity", "negative", "too few dated posts to tell"), 0
        points, effect = _band(
            cadence,
            [(3, 15, "positive"), (1, 10, "positive"), (0.25, 5, "neutral"), (0, 0, "negative")],
        )
        return _factor("activity", effect, f"{cadence} posts a week"), points

    def _reach(self) -> tuple[ScoreFactor, int]:
        followers = self.profile.followers_count
        points, effect = _band(-followers, [(-100_000, 10, "positive"), (-1_000_000, 7, "neutral")])
        if followers < 1_000:
            points, effect = 3, "negative"
        elif followers > 1_000_000:
            points, effect = 4, "neutral"
        return _factor("reach", effect, f"{followers:,} followers"), points

    def _commercial(self) -> tuple[ScoreFactor, int]:
        signals = []
        points = 0
        if self.profile.is_business:
            signals.append("a business account")
            points += 5
        if self.profile.external_url:
            signals.append("a website link")
            points += 3
        if _CONTACT.search(self.profile.biography):
            signals.append("an invitation to get in touch in the bio")
            points += 2
        effect: Effect = "positive" if points >= 5 else "neutral" if points else "negative"
        evidence = ", ".join(signals) or "no business account, link or contact invitation"
        return _factor("commercial signals", effect, evidence), points

    def red_flags(self) -> list[str]:
        p, f = self.profile, self.figures
        flags = []
        if p.is_private:
            flags.append("The account is private: its posts cannot be seen.")
        if f.posts_analyzed < 3:
            flags.append(f"Only {f.posts_analyzed} posts to judge from.")
        if f.engagement_rate is not None and f.engagement_rate < 0.5 and p.followers_count > 5_000:
            flags.append(
                f"Engagement of {f.engagement_rate}% is very low for {p.followers_count:,} "
                "followers: a disengaged or bought audience."
            )
        if p.follows_count > 2 * max(p.followers_count, 1) and p.follows_count > 500:
            flags.append(
                f"Follows {p.follows_count:,} accounts but has {p.followers_count:,} followers."
            )
        if f.posts_per_week is not None and f.posts_per_week < 0.25:
            flags.append(f"Posts rarely: {f.posts_per_week} posts a week.")
        return flags

    def fit_light(self) -> FitLight:
        scored = self.factors()
        score = max(0, min(100, sum(points for _, points in scored)))
        return FitLight(
            score=score,
            score_factors=[factor for factor, _ in scored],
            summary=self.summary(score),
            niche=self.niche(),
            red_flags=self.red_flags(),
        )

    def fit_deep(self) -> FitDeep:
        light = self.fit_light()
        return FitDeep(
            **light.model_dump(),
            **self.content.model_dump(),
            engagement_read=self.engagement_read(),
            selling_points=self.selling_points(),
        )

    # --- prose --------------------------------------------------------------------------

    def niche(self) -> str:
        parts = [self.top_category or "general"]
        if self.profile.business_category:
            parts.append(f"({self.profile.business_category.lower()})")
        return " ".join(parts)

    def summary(self, score: int) -> str:
        p, f = self.profile, self.figures
        topic = self.top_category or "a mix of topics"
        cadence = (
            f"{f.posts_per_week} posts a week"
            if f.posts_per_week
            else "too few dated posts to tell how often"
        )
        verdict = (
            "a strong fit"
            if score >= 70
            else "a possible fit"
            if score >= 50
            else "a weak fit"
            if score >= 30
            else "not a fit"
        )
        rate = f"{f.engagement_rate}%" if f.engagement_rate is not None else "unknown"
        return (
            f"@{p.username} ({p.full_name or 'no name given'}) posts about {topic} to "
            f"{p.followers_count:,} followers, {cadence}, with an engagement rate of {rate}. "
            f"By the rules (the AI was unavailable), this is {verdict} for "
            f"{self.business.name}: score {score}/100."
        )

    def engagement_read(self) -> str:
        f = self.figures
        if f.engagement_rate is None:
            if not self.profile.posts:
                return "No posts to read engagement from."
            return "No followers to measure engagement against."
        level = (
            "excellent"
            if f.engagement_rate >= 6
            else "good"
            if f.engagement_rate >= 3
            else "average"
            if f.engagement_rate >= 1
            else "weak"
        )
        talk = (
            "people comment as well as like"
            if f.avg_comments and f.avg_likes and f.avg_comments / f.avg_likes >= 0.03
            else "people mostly like rather than comment"
        )
        tags = ", ".join(f"#{t.tag}" for t in f.top_hashtags[:3]) or "no hashtags"
        return (
            f"Engagement is {level} at {f.engagement_rate}% ({f.avg_likes} likes and "
            f"{f.avg_comments} comments per post): {talk}. Most used: {tags}."
        )

    def selling_points(self) -> list[str]:
        offering = self.business.offering or self.business.name
        points = []
        if self.top_category and self.top_category in self.wanted:
            points.append(f"Posts mostly about {self.top_category}: {offering} speaks to that.")
        elif self.top_category:
            points.append(
                f"Posts mostly about {self.top_category}: {offering} would be new to its "
                "audience, so lead with what links the two."
            )
        if self.figures.top_hashtags:
            points.append(
                f"Its audience follows #{self.figures.top_hashtags[0].tag}: a natural opening."
            )
        if self.profile.is_business:
            points.append("Runs a business account: open to commercial partnerships.")
        return points or [f"{offering} could be introduced as new to this audience."]

    def message(self) -> str:
        # A person by their first name; a brand, or a name we cannot split, by @username.
        names = self.profile.full_name.split()
        person = names and not self.profile.is_business and names[0].lower() not in _ARTICLES
        first_name = names[0] if person else f"@{self.profile.username}"
        topic = (
            f"#{self.figures.top_hashtags[0].tag}"
            if self.figures.top_hashtags
            else self.top_category or "your posts"
        )
        offering = self.business.offering or "what we do"
        return (
            f"Hi {first_name}, I came across your posts on {topic} and liked how your "
            f"audience responds to them. I work at {self.business.name}: {offering}. I think "
            "it could be useful to you and your followers. Would you be open to a short chat "
            "this week?"
        )

    def psychographics(self) -> Psychographics:
        motivations, triggers = _MOTIVATIONS.get(self.top_category or "", _DEFAULT_MOTIVATIONS)
        sentiment = self.content.sentiment.label
        questions = sum("?" in post.caption for post in self.profile.posts)
        style = (
            f"{'Upbeat' if sentiment == 'positive' else 'Measured'} and "
            f"{'conversational: asks its audience questions' if questions else 'declarative'}; "
            "write briefly and casually, about their content first."
        )
        return Psychographics(
            motivations=list(motivations),
            communication_style=style,
            objections=[
                "No time for another partnership: offer something that takes minutes.",
                "Doubts it suits the audience: point to the posts it would fit.",
            ],
            buying_triggers=list(triggers),
            outreach_message=self.message(),
        )


def _factor(factor: str, effect: Effect, evidence: str) -> ScoreFactor:
    return ScoreFactor(factor=factor, effect=effect, evidence=evidence)


def _band(value: float, bands: list[tuple[float, int, Effect]]) -> tuple[int, Effect]:
    """The points and effect of the first band whose floor the value reaches."""
    for floor, points, effect in bands:
        if value >= floor:
            return points, effect
    return bands[-1][1], bands[-1][2]


def _categories_in(text: str) -> set[str]:
    words = {w.lower() for w in re.findall(r"[^\W_]+", text)}
    return {name for name, keywords in CATEGORIES.items() if words & keywords or name in words}
