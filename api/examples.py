"""Example bodies shown in the OpenAPI document (and so in /docs), in one place.

They describe one story: a deep analysis of @natgeo for the business profile "Acme Fitness".
"""

from __future__ import annotations

from typing import Any

RUN_ID = "9b2f4c1e-3d5a-4e6f-8a7b-1c2d3e4f5a6b"
ACCOUNT_ID = "8d3f2c1e-5b7a-4e0f-9a6d-2c4b1e7f0a93"
PROFILE_ID = "1f0c3a52-8c1e-4d3a-9d55-0b4f6a1e2c77"
LEAD_ID = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b"
CREATED = "2026-11-23T10:15:00.120000Z"
FINISHED = "2026-11-23T10:15:04.870000Z"

LINKS: dict[str, Any] = {
    "progress": f"/api/analysis/{RUN_ID}/progress",
    "result": f"/api/analysis/{RUN_ID}/result",
    "cancel": f"/api/analysis/{RUN_ID}/cancel",
}


def _step(name: str, status: str = "done", attempt: int = 1) -> dict[str, Any]:
    done = status == "done"
    return {
        "name": name,
        "status": status,
        "started_at": CREATED if done or status == "running" else None,
        "finished_at": CREATED if done else None,
        "attempt": attempt if status != "pending" else 0,
    }


STEPS_RUNNING: list[dict[str, Any]] = [
    _step("generate_run_id"),
    _step("create_pending_record"),
    _step("check_duplicate"),
    _step("check_credits"),
    _step("deduct_credits"),
    _step("check_cache"),
    _step("scrape_profile", "running", 2),
    _step("store_in_cache", "pending"),
    _step("analyze_profile", "pending"),
    _step("upsert_lead", "pending"),
    _step("save_analysis", "pending"),
    _step("complete", "pending"),
]
STEPS_DONE: list[dict[str, Any]] = [
    _step(s["name"], "done", s["attempt"] or 1) for s in STEPS_RUNNING
]

RUN_ACCEPTED: dict[str, Any] = {
    "run_id": RUN_ID,
    "status": "pending",
    "username": "natgeo",
    "analysis_type": "deep",
    "business_profile_id": PROFILE_ID,
    "credits_cost": 3,
    "free": False,
    "created_at": CREATED,
    "links": LINKS,
}

PROGRESS: dict[str, Any] = {
    "run_id": RUN_ID,
    "status": "processing",
    "progress": 30,
    "current_step": "scrape_profile",
    "steps": STEPS_RUNNING,
    "error": None,
    "cancel_requested": False,
    "source": "workflow",
}

RUN_SUMMARY: dict[str, Any] = {
    "run_id": RUN_ID,
    "status": "failed",
    "username": "natgeo",
    "analysis_type": "deep",
    "business_profile_id": PROFILE_ID,
    "credits_cost": 3,
    "free": False,
    "credits_charged": 0,
    "progress": 30,
    "current_step": "scrape_profile",
    "error": {"code": "profile_private", "message": "@natgeo is private"},
    "cancel_requested": False,
    "created_at": CREATED,
    "finished_at": FINISHED,
    "links": LINKS,
}

CANCELLED: dict[str, Any] = {"run_id": RUN_ID, "status": "processing", "cancel_requested": True}

LEAD: dict[str, Any] = {
    "id": LEAD_ID,
    "username": "natgeo",
    "full_name": "National Geographic",
    "biography": "Experience the world through the eyes of National Geographic photographers.",
    "external_url": "https://natgeo.com",
    "profile_pic_url": "https://instagram.example/natgeo.jpg",
    "followers_count": 280000000,
    "follows_count": 150,
    "posts_count": 30000,
    "is_private": False,
    "is_verified": True,
    "is_business": True,
    "business_category": "Media",
    "engagement_rate": 0.412,
}

ENGAGEMENT: dict[str, Any] = {
    "posts_analyzed": 12,
    "engagement_rate": 0.412,
    "avg_likes": 1150000.0,
    "avg_comments": 3400.0,
    "avg_video_views": 5200000.0,
    "posts_per_week": 20.5,
    "last_post_at": FINISHED,
    "top_hashtags": [{"tag": "natgeo", "posts": 9}, {"tag": "travel", "posts": 4}],
}
LEAD_WITH_FIGURES: dict[str, Any] = LEAD | {"engagement": ENGAGEMENT}

RESULT: dict[str, Any] = {
    "run_id": RUN_ID,
    "status": "complete",
    "username": "natgeo",
    "analysis_type": "deep",
    "business_profile_id": PROFILE_ID,
    "lead": LEAD_WITH_FIGURES,
    "analysis": {
        "score": 72,
        "score_factors": [
            {
                "factor": "audience and niche match",
                "effect": "positive",
                "evidence": "outdoor and adventure stories reach the explorers Acme serves",
            },
            {
                "factor": "reach",
                "effect": "negative",
                "evidence": "280,000,000 followers: reachable only through its partnerships team",
            },
        ],
        "summary": "A global photography and travel publisher with a huge, engaged audience.",
        "niche": "travel and nature photography",
        "red_flags": ["audience far larger than a boutique partner needs"],
        "content_mix": [
            {"category": "travel", "percent": 55},
            {"category": "photography", "percent": 45},
        ],
        "languages": [{"language": "en", "percent": 100}],
        "sentiment": {"average": 0.31, "label": "positive"},
        "engagement_read": "Steady likes and comments on photo essays; video drives reach.",
        "selling_points": ["outdoor and fitness stories", "trusted by an active audience"],
        "outreach_message": "Hi NatGeo team, Acme Fitness builds programmes for explorers...",
        "engine": "ai",
        "engine_version": "v2",
    },
    "credits_charged": 3,
    "cost": {
        "apify_usd": 0.0023,
        "cache_hit": False,
        "ai": [
            {
                "model": "gpt-5-mini",
                "input_tokens": 1820,
                "cached_input_tokens": 0,
                "output_tokens": 410,
                "cost_usd": 0.001275,
            }
        ],
        "ai_usd": 0.001275,
        "total_usd": 0.003575,
    },
    "steps": STEPS_DONE,
    "created_at": CREATED,
    "finished_at": FINISHED,
}

BALANCE: dict[str, Any] = {"account_id": ACCOUNT_ID, "balance": 97}

LEDGER_ENTRY: dict[str, Any] = {
    "id": 42,
    "delta": -3,
    "balance_after": 97,
    "kind": "charge",
    "run_id": RUN_ID,
    "batch_id": None,
    "reference": None,
    "description": "analysis",
    "created_at": CREATED,
}

BUSINESS_PROFILE_IN: dict[str, Any] = {
    "name": "Acme Fitness",
    "description": "Boutique gym chain in Lisbon",
    "offering": "Personal training packages and brand partnerships",
    "target_audience": "Fitness creators with 10k-500k followers",
}

BUSINESS_PROFILE: dict[str, Any] = {
    "id": PROFILE_ID,
    **BUSINESS_PROFILE_IN,
    "created_at": CREATED,
    "updated_at": CREATED,
}

HEALTH: dict[str, Any] = {
    "status": "degraded",
    "version": "0.1.0",
    "components": {
        "database": {"status": "ok", "latency_ms": 0.8, "detail": None},
        "temporal": {"status": "ok", "latency_ms": 1.9, "detail": None},
        "workers": {"status": "ok", "latency_ms": 3.1, "detail": "4 pollers on oslira"},
        "schedules": {"status": "ok", "latency_ms": 4.2, "detail": None},
        "ai_circuits": {
            "status": "degraded",
            "latency_ms": 1.1,
            "detail": "open: openai:gpt-5-mini on 4242@worker-1",
        },
        "profile_cache": {"status": "ok", "latency_ms": 0.9, "detail": "postgres"},
    },
}

LIVENESS: dict[str, Any] = {"status": "ok", "version": "0.1.0"}

API_KEY_ID = "3c2b1a09-8f7e-4d6c-9b5a-4e3d2c1b0a98"
API_KEY: dict[str, Any] = {
    "id": API_KEY_ID,
    "name": "nightly batch",
    "prefix": "osk_Xq3vR8mK",
    "created_at": CREATED,
    "last_used_at": None,
    "revoked_at": None,
}
API_KEY_CREATED: dict[str, Any] = API_KEY | {
    "key": "osk_Xq3vR8mKp2LwN5tYc7Hj0bFd9sGz4aVe1uQiOoXrWk"
}

BATCH_ID = "6a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d"
BATCH_LINKS: dict[str, Any] = {
    "progress": f"/api/leads/analyze/bulk/{BATCH_ID}/progress",
    "items": f"/api/leads/analyze/bulk/{BATCH_ID}/items",
    "cancel": f"/api/leads/analyze/bulk/{BATCH_ID}/cancel",
}
BATCH_ACCEPTED: dict[str, Any] = {
    "batch_id": BATCH_ID,
    "status": "pending",
    "analysis_type": "light",
    "business_profile_id": PROFILE_ID,
    "total": 2,
    "duplicates": 1,
    "rejected": [{"username": "not a handle", "code": "invalid_username", "run_id": None}],
    "credits_cost": 1,
    "free_items": 0,
    "credits_charged": 2,
    "created_at": CREATED,
    "links": BATCH_LINKS,
}
BATCH_SUMMARY: dict[str, Any] = {
    "batch_id": BATCH_ID,
    "status": "running",
    "analysis_type": "light",
    "business_profile_id": PROFILE_ID,
    "total": 2,
    "credits_cost": 1,
    "cancel_requested": False,
    "error": None,
    "created_at": CREATED,
    "started_at": CREATED,
    "finished_at": None,
    "links": BATCH_LINKS,
}
BATCH_PROGRESS: dict[str, Any] = {
    "batch_id": BATCH_ID,
    "status": "running",
    "total": 2,
    "counts": {"pending": 0, "processing": 1, "complete": 1, "failed": 0, "cancelled": 0},
    "progress": 50,
    "credits_charged": 2,
    "credits_refunded": 0,
    "cancel_requested": False,
    "error": None,
    "created_at": CREATED,
    "started_at": CREATED,
    "finished_at": None,
    "items_per_second": 0.2,
    "eta": FINISHED,
}
BATCH_ITEM: dict[str, Any] = {
    "position": 0,
    "username": "natgeo",
    "run_id": RUN_ID,
    "status": "complete",
    "error": None,
    "score": 82,
    "summary": "A large, engaged audience that matches the offer.",
}

LEAD_RECORD: dict[str, Any] = LEAD | {
    "business_profile_id": PROFILE_ID,
    "score": 72,
    "analysis_type": "deep",
    "summary": "A global photography and travel publisher with a huge, engaged audience.",
    "last_analysis_id": RUN_ID,
    "last_analyzed_at": FINISHED,
    "created_at": FINISHED,
    "updated_at": FINISHED,
}
LEAD_DETAIL: dict[str, Any] = LEAD_RECORD | {
    "engagement": ENGAGEMENT,
    "latest_analysis": {
        "run_id": RUN_ID,
        "analysis_type": "deep",
        "score": 72,
        "analysis": RESULT["analysis"],
        "credits_charged": 3,
        "finished_at": FINISHED,
    },
}
LEAD_ANALYSIS: dict[str, Any] = {
    "run_id": RUN_ID,
    "analysis_type": "deep",
    "status": "complete",
    "score": 72,
    "summary": "A global photography and travel publisher with a huge, engaged audience.",
    "credits_charged": 3,
    "created_at": CREATED,
    "finished_at": FINISHED,
}

ME: dict[str, Any] = {
    "user": {"id": "2b7c9e14-6d3f-4a8b-9c1e-5f0a7d2b4c68", "email": "ana@acme.example"},
    "api_key": None,
    "accounts": [{"id": ACCOUNT_ID, "name": "Acme Fitness", "role": "owner"}],
}

PRICING: dict[str, Any] = {
    "tiers": [
        {"analysis_type": "light", "credits": 1},
        {"analysis_type": "deep", "credits": 3},
        {"analysis_type": "xray", "credits": 5},
    ],
    "plans": [
        {
            "id": "free",
            "name": "Free",
            "allowances": {"light": 10},
            "analyses_per_hour": 100,
            "requests_per_minute": 600,
            "monthly_credits": 0,
            "price_cents": 0,
            "currency": "usd",
        }
    ],
    "packages": [{"id": "starter", "credits": 100, "amount_cents": 1000, "currency": "usd"}],
}
USAGE: dict[str, Any] = {
    "month": "2026-11",
    "plan": "free",
    "credits_spent": 7,
    "credits_refunded": 1,
    "tiers": [
        {
            "analysis_type": "light",
            "runs": 14,
            "complete": 12,
            "failed": 1,
            "cancelled": 0,
            "in_flight": 1,
            "credits_spent": 4,
            "credits_refunded": 1,
            "allowance": 10,
            "allowance_used": 10,
            "allowance_left": 0,
        }
    ],
}
CHECKOUT: dict[str, Any] = {
    "session_id": "cs_test_a1b2c3d4e5f6a7b8c9d0e1f2",
    "url": "https://checkout.stripe.com/c/pay/cs_test_a1b2c3d4e5f6a7b8c9d0e1f2",
}
SUBSCRIPTION: dict[str, Any] = {
    "plan": "pro",
    "status": "active",
    "subscription_id": "sub_1a2b3c4d5e6f7a8b9c0d1e2f",
    "current_period_start": "2026-11-01T03:00:00Z",
    "current_period_end": "2026-12-01T03:00:00Z",
    "cancel_at_period_end": False,
    "credits_per_period": 500,
}

ANALYTICS_SUMMARY: dict[str, Any] = {
    "from": "2026-10-24T00:00:00Z",
    "to": "2026-11-23T00:00:00Z",
    "analyses": 120,
    "by_status": {"pending": 0, "processing": 1, "complete": 110, "failed": 7, "cancelled": 2},
    "by_tier": {
        "light": {"pending": 0, "processing": 0, "complete": 80, "failed": 5, "cancelled": 1},
        "deep": {"pending": 0, "processing": 1, "complete": 25, "failed": 2, "cancelled": 1},
        "xray": {"pending": 0, "processing": 0, "complete": 5, "failed": 0, "cancelled": 0},
    },
    "credits": {"spent": 193, "refunded": 12, "net": 181},
    "provider_cost": {"apify_usd": 0.2024, "ai_usd": 0.1432, "total_usd": 0.3456},
    "step_durations": {
        "scrape_profile": {"count": 88, "p50_ms": 1830.0, "p95_ms": 4210.5},
        "analyze_profile": {"count": 110, "p50_ms": 2410.2, "p95_ms": 6120.0},
    },
    "cache": {"complete_runs": 110, "hits": 22, "hit_rate": 0.2},
    "errors": {"profile_not_found": 4, "provider_unavailable": 3, "run_cancelled": 2},
}
