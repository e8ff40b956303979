"""Tokens in the shape the API accepts (Supabase-compatible claims)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import jwt

from core.settings import Settings


def mint_token(settings: Settings, user_id: UUID, *, valid_for: timedelta) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": str(user_id),
        "aud": settings.jwt_audience,
        "role": "authenticated",
        "iat": now,
        "exp": now + valid_for,
    }
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")
