"""A local Apify: the instagram-profile-scraper actor's run-sync-get-dataset-items endpoint.

Profiles are made up but deterministic: the same username always gives the same profile.
Usernames that start with these words behave as their name says, so anyone can demo
failures: `notfound` (no such profile), `private` (a private profile), `flaky` (503 twice,
then success), `slow` (takes 10 s; `slowai` is the OpenAI simulator's, not this one's),
`down` (always 503: a provider that stays down; `downai` is the OpenAI simulator's),
`changing` (each scrape shows a different profile: 25% more followers, another bio,
verified flipped: what invalidates a cached analysis), `fr_` and `es_` (captions in French
or Spanish).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse

SLOW_SECONDS = 10.0
FLAKY_FAILURES = 2
# Fixed, so the same username gives the same posts whatever the day.
EPOCH = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

_NICHES = [
    ("fitness", "Fitness coach", ["workout", "fitness", "gym", "health", "motivation"]),
    ("food", "Restaurant", ["food", "recipe", "foodie", "homecooking", "yum"]),
    ("travel", "Travel company", ["travel", "wanderlust", "explore", "adventure", "trip"]),
    ("beauty", "Beauty salon", ["skincare", "makeup", "beauty", "selfcare", "glow"]),
    ("tech", "Software company", ["tech", "startup", "coding", "ai", "productivity"]),
    ("fashion", "Clothing brand", ["fashion", "style", "ootd", "streetwear", "outfit"]),
    ("coffee", "Coffee shop", ["coffee", "latte", "barista", "cafe", "morning"]),
    ("photo", "Photographer", ["photography", "portrait", "light", "camera", "photooftheday"]),
]
_FIRST = ["Ava", "Liam", "Maya", "Noah", "Zoe", "Leo", "Iris", "Kai", "Nora", "Omar", "Lena"]
_LAST = ["Rivera", "Chen", "Novak", "Okafor", "Silva", "Berg", "Haddad", "Moreau", "Tanaka"]
_CAPTIONS = [
    "New {topic} drop today, which one is your favourite?",
    "Behind the scenes of this week's {topic} shoot.",
    "Three things I wish I knew when I started with {topic}.",
    "Thank you for 1 year of {topic} with this community!",
    "Quick {topic} tip: consistency beats intensity.",
    "Saturday vibes. {topic} all day.",
    "Giveaway! Tag a friend who loves {topic}.",
    "Answering your top {topic} questions in the comments.",
]

# Profiles whose username starts with `fr_` or `es_` write their captions in that language
# (for content intelligence's languages); as many captions as in English, so the same
# random draws pick them.
_CAPTIONS_IN = {
    "fr_": [
        "Nouvelle collection {topic} aujourd'hui, laquelle est votre préférée ?",
        "Les coulisses de notre séance {topic} de la semaine.",
        "Trois choses que j'aurais aimé savoir en commençant le {topic}.",
        "Merci pour cette première année de {topic} avec vous tous !",
        "Petit conseil {topic} : la régularité vaut mieux que l'intensité.",
        "Ambiance du samedi. Du {topic} toute la journée.",
        "Concours ! Identifiez un ami qui adore le {topic}.",
        "Je réponds à vos questions sur le {topic} dans les commentaires.",
    ],
    "es_": [
        "Nueva colección de {topic} hoy, ¿cuál es vuestra favorita?",
        "Detrás de las cámaras de la sesión de {topic} de esta semana.",
        "Tres cosas que me hubiera gustado saber cuando empecé con el {topic}.",
        "¡Gracias por un año de {topic} con esta comunidad!",
        "Consejo rápido de {topic}: la constancia gana a la intensidad.",
        "Ambiente de sábado. {topic} todo el día.",
        "¡Sorteo! Etiqueta a un amigo al que le encante el {topic}.",
        "Respondo a vuestras preguntas sobre {topic} en los comentarios.",
    ],
}
assert all(len(captions) == len(_CAPTIONS) for captions in _CAPTIONS_IN.values())


class ApifySimulator:
    def __init__(self, latency_ms: float = 300.0) -> None:
        self.latency_ms = latency_ms
        self._failures: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.router = APIRouter()
        self.router.add_api_route(
            "/v2/acts/{actor}/run-sync-get-dataset-items",
            self.run_sync_get_dataset_items,
            methods=["POST"],
            status_code=201,
        )
        self.router.add_api_route("/_simulator/apify/calls/{username}", self.call_count)
        self.router.add_api_route("/_simulator/apify/stats", self.stats)
        self.router.add_api_route(
            "/_simulator/apify/stats/reset", self.reset_stats, methods=["POST"]
        )
        self.in_flight = 0
        self.max_in_flight = 0

    async def stats(self) -> dict[str, int]:
        """The most runs ever in flight at once: what proves a concurrency cap holds."""
        return {
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "calls": sum(self.calls.values()),
        }

    async def reset_stats(self) -> dict[str, int]:
        self.max_in_flight = self.in_flight
        return await self.stats()

    async def call_count(self, username: str) -> dict[str, int]:
        """How many times the actor was asked for `username` (for demos and tests)."""
        return {"calls": self.calls[username]}

    async def run_sync_get_dataset_items(
        self, actor: str, request: Request, token: str = Query("")
    ) -> Any:
        if not token:
            raise HTTPException(401, "token required")
        if actor != "apify~instagram-profile-scraper":
            raise HTTPException(404, f"actor {actor} not found")
        body = await request.json()
        usernames = [str(u).lstrip("@").lower() for u in body.get("usernames", [])]
        if not usernames:
            raise HTTPException(400, "input.usernames is required")
        self.calls.update(usernames)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(usernames)
        finally:
            self.in_flight -= 1

    async def _answer(self, usernames: list[str]) -> Any:
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        if any(u.startswith("down") and not u.startswith("downai") for u in usernames):
            return JSONResponse({"error": {"type": "platform-down"}}, status_code=503)
        for username in usernames:
            if username.startswith("flaky") and self._failures[username] < FLAKY_FAILURES:
                self._failures[username] += 1
                return JSONResponse({"error": {"type": "platform-busy"}}, status_code=503)
        if any(u.startswith("slow") and not u.startswith("slowai") for u in usernames):
            await asyncio.sleep(SLOW_SECONDS)
        return [item for u in usernames if (item := profile_item(u, self.calls[u])) is not None]


def profile_item(username: str, scrape: int = 1) -> dict[str, Any] | None:
    """The dataset item the actor returns for a username (None: the profile does not exist);
    `scrape` counts the times it was asked for (what makes a `changing` profile change)."""
    if username.startswith("notfound"):
        return None
    rng = random.Random(hashlib.sha256(username.encode()).digest())
    niche, category, tags = rng.choice(_NICHES)
    followers = int(10 ** rng.uniform(2.3, 6.5))
    private = username.startswith("private")
    verified = followers > 500_000 and rng.random() < 0.6
    business = rng.random() < 0.55
    user_id = str(rng.randrange(10**9, 10**11))
    item: dict[str, Any] = {
        "id": user_id,
        "username": username,
        "url": f"https://www.instagram.com/{username}",
        "fullName": f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
        "biography": f"{category} | {niche} tips & stories | DM for collabs",
        "externalUrl": f"https://{username.replace('_', '').replace('.', '')}.example.com"
        if business
        else None,
        "externalUrls": [],
        "followersCount": followers,
        "followsCount": rng.randrange(50, 2_000),
        "postsCount": rng.randrange(12, 2_500),
        "highlightReelCount": rng.randrange(0, 20),
        "igtvVideoCount": rng.randrange(0, 5),
        "isBusinessAccount": business,
        "businessCategoryName": category if business else "None",
        "joinedRecently": False,
        "private": private,
        "verified": verified,
        "profilePicUrl": f"https://cdn.example.com/{user_id}/pic.jpg",
        "profilePicUrlHD": f"https://cdn.example.com/{user_id}/pic_hd.jpg",
        "fbid": str(rng.randrange(10**14, 10**15)),
        "latestPosts": [],
        "relatedProfiles": [],
    }
    if item["externalUrl"]:
        item["externalUrls"] = [{"title": "Website", "url": item["externalUrl"]}]
    if username.startswith("changing") and scrape > 1:
        followers = int(followers * 1.25 ** (scrape - 1))
        item["followersCount"] = followers
        item["biography"] = f"Chapter {scrape}: now helping founders grow, book a call below"
        item["verified"] = verified != (scrape % 2 == 0)  # flipped at every other scrape
    if not private:
        engagement = rng.uniform(0.005, 0.08)
        item["latestPosts"] = [
            _post(rng, username, user_id, niche, tags, followers, engagement, i) for i in range(12)
        ]
    return item


def _post(
    rng: random.Random,
    username: str,
    user_id: str,
    niche: str,
    tags: list[str],
    followers: int,
    engagement: float,
    index: int,
) -> dict[str, Any]:
    kind = rng.choice(["Image", "Image", "Sidecar", "Video"])
    likes = int(followers * engagement * rng.uniform(0.5, 1.5))
    hashtags = rng.sample(tags, 3)
    short_code = hashlib.sha1(f"{username}:{index}".encode()).hexdigest()[:11]
    post: dict[str, Any] = {
        "id": str(rng.randrange(10**18, 10**19)),
        "type": kind,
        "shortCode": short_code,
        "caption": rng.choice(_CAPTIONS_IN.get(username[:3], _CAPTIONS)).format(topic=niche)
        + " "
        + " ".join(f"#{h}" for h in hashtags),
        "hashtags": hashtags,
        "mentions": [],
        "url": f"https://www.instagram.com/p/{short_code}/",
        "commentsCount": int(likes * rng.uniform(0.01, 0.06)),
        "likesCount": likes,
        "timestamp": (EPOCH - timedelta(days=index * 3 + rng.random() * 2)).isoformat(),
        "ownerUsername": username,
        "ownerId": user_id,
        "isPinned": index == 0 and rng.random() < 0.3,
        "productType": "clips" if kind == "Video" else "feed",
    }
    if kind == "Video":
        post["videoViewCount"] = likes * rng.randrange(5, 20)
    return post
