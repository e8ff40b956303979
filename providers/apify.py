"""Scrapes a public Instagram profile with Apify's instagram-profile-scraper actor."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

from core.models import Post, Profile
from providers.errors import ProfileNotFound, ProfilePrivate, ProviderRejected, ProviderUnavailable

APIFY = "Apify"


class ApifyScraper:
    def __init__(
        self, client: httpx.AsyncClient, *, token: str | Callable[[], str], actor: str
    ) -> None:
        """`token`: the API token, or what gives its current value (a rotated secret)."""
        self._client = client
        self._token = token if callable(token) else lambda: token
        self._path = f"/v2/acts/{actor}/run-sync-get-dataset-items"

    async def scrape(self, username: str) -> Profile:
        try:
            response = await self._client.post(
                self._path, params={"token": self._token()}, json={"usernames": [username]}
            )
        except httpx.TransportError as exc:  # refused, reset, dropped, timed out
            raise ProviderUnavailable(APIFY, f"Apify unreachable: {exc!r}") from exc
        if response.status_code in (408, 429) or response.status_code >= 500:
            raise ProviderUnavailable(APIFY, f"Apify answered {response.status_code}")
        if response.status_code >= 400:
            raise ProviderRejected(
                APIFY, f"Apify answered {response.status_code}: {response.text[:500]}"
            )
        try:
            items = response.json()
        except ValueError as exc:
            raise ProviderUnavailable(APIFY, "Apify answered something other than JSON") from exc
        if not isinstance(items, list):
            raise ProviderUnavailable(APIFY, "Apify answered something other than a list")
        item = _item_for(items, username)
        if item is None:
            raise ProfileNotFound(APIFY, f"@{username} does not exist")
        try:
            profile = parse_profile(item)
        except (ValueError, TypeError, KeyError) as exc:  # pydantic's errors are ValueErrors
            raise ProviderRejected(APIFY, f"Apify answered an item we cannot read: {exc}") from exc
        if profile.is_private:
            raise ProfilePrivate(APIFY, f"@{username} is private")
        return profile


def _item_for(items: list[Any], username: str) -> dict[str, Any] | None:
    for item in items:
        if not isinstance(item, dict) or item.get("error"):
            continue
        if str(item.get("username", "")).lower() == username:
            return item
    return None


def parse_profile(item: dict[str, Any]) -> Profile:
    category = item.get("businessCategoryName")
    return Profile(
        username=str(item["username"]).lower(),
        instagram_id=_str_or_none(item.get("id")),
        full_name=item.get("fullName") or "",
        biography=item.get("biography") or "",
        external_url=item.get("externalUrl") or None,
        followers_count=int(item.get("followersCount") or 0),
        follows_count=int(item.get("followsCount") or 0),
        posts_count=int(item.get("postsCount") or 0),
        is_private=bool(item.get("private")),
        is_verified=bool(item.get("verified")),
        is_business=bool(item.get("isBusinessAccount")),
        business_category=None if category in (None, "", "None") else str(category),
        profile_pic_url=item.get("profilePicUrlHD") or item.get("profilePicUrl"),
        posts=[_parse_post(p) for p in item.get("latestPosts") or [] if isinstance(p, dict)],
    )


def _parse_post(post: dict[str, Any]) -> Post:
    timestamp = post.get("timestamp")
    return Post(
        id=str(post.get("id") or post.get("shortCode") or ""),
        type=post.get("type") or "Image",
        caption=post.get("caption") or "",
        hashtags=[str(h) for h in post.get("hashtags") or []],
        likes_count=max(int(post.get("likesCount") or 0), 0),
        comments_count=max(int(post.get("commentsCount") or 0), 0),
        video_view_count=post.get("videoViewCount"),
        timestamp=datetime.fromisoformat(timestamp) if timestamp else None,
        is_pinned=bool(post.get("isPinned")),
    )


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
