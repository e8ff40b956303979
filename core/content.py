"""Content intelligence: what a profile posts about, in which languages, in what mood.

Deep and xray results hold it as structured fields (`ContentIntelligence`). The model fills
them from the posts; the rule-based analyzer derives them here: categories from hashtags and
caption keywords, languages with py3langid (a maintained fork of langid.py, deterministic and
small), sentiment with VADER (a lexicon tuned for social media text, English-centred)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from functools import cache
from typing import Literal, TypeVar

from py3langid.langid import MODEL_FILE, LanguageIdentifier
from pydantic import BaseModel, Field
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from core.models import Post, Profile

S = TypeVar("S")


def _keywords(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Keywords (hashtags or caption words, lower case) that mark a post's category.
CATEGORIES: dict[str, frozenset[str]] = {
    "fitness": _keywords(
        "fitness workout gym training health motivation fit yoga running crossfit muscle "
        "cardio wellness athlete"
    ),
    "food": _keywords(
        "food recipe foodie homecooking yum restaurant chef cooking dinner lunch breakfast "
        "vegan baking delicious"
    ),
    "travel": _keywords(
        "travel wanderlust explore adventure trip vacation holiday beach hotel travelgram "
        "backpacking roadtrip"
    ),
    "beauty": _keywords(
        "skincare makeup beauty selfcare glow cosmetics hair nails spa salon lashes"
    ),
    "fashion": _keywords(
        "fashion style ootd streetwear outfit clothing designer model outfits vintage shoes"
    ),
    "tech": _keywords(
        "tech startup coding artificialintelligence machinelearning productivity software "
        "developer saas gadgets programming innovation"
    ),
    "coffee": _keywords("coffee latte barista cafe espresso morning brew"),
    "photography": _keywords(
        "photography portrait light camera photooftheday photographer photo shoot lens"
    ),
    "business": _keywords(
        "business entrepreneur marketing founder sales branding leadership growth ecommerce "
        "smallbusiness"
    ),
    "lifestyle": _keywords("lifestyle vibes weekend family home life love happy"),
    "education": _keywords("tips learn tutorial howto education questions advice"),
    "community": _keywords("giveaway community thankyou followers anniversary tag"),
}
OTHER = "other"

_WORD = re.compile(r"[#@]?[^\W_]+", re.UNICODE)
_MIN_LANGUAGE_CONFIDENCE = 0.5


class CategoryShare(BaseModel):
    category: str = Field(description="A content category, e.g. fitness, food, travel")
    percent: int = Field(ge=0, le=100, description="Share of the posts in this category")


class LanguageShare(BaseModel):
    language: str = Field(description="ISO 639-1 code, e.g. en, es, fr")
    percent: int = Field(ge=0, le=100, description="Share of the captions in this language")


class Sentiment(BaseModel):
    average: float = Field(
        ge=-1, le=1, description="Mean sentiment of the captions: -1 negative to 1 positive"
    )
    label: Literal["positive", "neutral", "negative"]


class ContentIntelligence(BaseModel):
    content_mix: list[CategoryShare] = Field(
        description="What the posts are about, largest share first"
    )
    languages: list[LanguageShare] = Field(
        description="The dominant languages of the captions, largest share first"
    )
    sentiment: Sentiment


def content_intelligence(profile: Profile) -> ContentIntelligence:
    posts = profile.posts
    return ContentIntelligence(
        content_mix=_shares(
            [category_of(p) for p in posts],
            lambda name, pc: CategoryShare(category=name, percent=pc),
        ),
        languages=_shares(
            [lang for p in posts if (lang := language_of(_prose(p.caption))) is not None],
            lambda name, pc: LanguageShare(language=name, percent=pc),
        ),
        sentiment=sentiment_of([_prose(p.caption) for p in posts if p.caption.strip()]),
    )


def category_of(post: Post) -> str:
    """The category most of the post's hashtags and caption words point to; ties go to the
    category listed first."""
    # The caption's words and hashtags, each hashtag once (captions repeat them as text).
    found = _WORD.findall(post.caption)
    words = [w.lower() for w in found if not w.startswith(("#", "@"))]
    words += sorted(
        {h.lstrip("#").lower() for h in post.hashtags}
        | {w.lstrip("#").lower() for w in found if w.startswith("#")}
    )
    votes = Counter(
        name for word in words for name, keywords in CATEGORIES.items() if word in keywords
    )
    if not votes:
        return OTHER
    best = max(votes.values())
    return next(name for name in CATEGORIES if votes[name] == best)


def language_of(text: str) -> str | None:
    """The text's language (ISO 639-1), or None when too short or too uncertain to say."""
    if len(text) < 12:
        return None
    language, probability = _identifier().classify(text)
    return str(language) if probability >= _MIN_LANGUAGE_CONFIDENCE else None


def sentiment_of(texts: list[str]) -> Sentiment:
    if not texts:
        return Sentiment(average=0.0, label="neutral")
    analyzer = _sentiment_analyzer()
    average = round(sum(analyzer.polarity_scores(t)["compound"] for t in texts) / len(texts), 3)
    # VADER's own thresholds for its compound score.
    label: Literal["positive", "neutral", "negative"] = (
        "positive" if average >= 0.05 else "negative" if average <= -0.05 else "neutral"
    )
    return Sentiment(average=average, label=label)


def warm_up() -> None:
    """Loads the language model and the sentiment lexicon (a few hundred milliseconds)."""
    _identifier()
    _sentiment_analyzer()


def _prose(caption: str) -> str:
    """A caption without its hashtags and mentions, which are not sentences in a language."""
    return " ".join(w for w in caption.split() if not w.startswith(("#", "@"))).strip()


def _shares(names: list[str], make: Callable[[str, int], S]) -> list[S]:
    """Each name's share of the list in whole percent, largest first (ties by name)."""
    counts = Counter(names)
    total = len(names)
    return [
        make(name, round(100 * n / total))
        for name, n in sorted(counts.items(), key=lambda c: (-c[1], c[0]))
    ]


@cache
def _identifier() -> LanguageIdentifier:
    # Probabilities normalised to 0-1, so a confidence threshold means something.
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


@cache
def _sentiment_analyzer() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()
