"""What the API accepts as proof of who calls: JWTs (Supabase-compatible claims, minted by the
operator commands) for people, API keys for scripts."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import jwt

from core.settings import Settings

ALGORITHM = "HS256"
# A token past this many days is refused at minting: long-lived access belongs to API keys.
MAX_TOKEN_DAYS = 3650


@dataclass(frozen=True)
class Principal:
    """Who calls: a user (a JWT), who may act for the accounts they belong to; or an
    account's API key, which acts for that account alone."""

    user_id: UUID | None = None
    api_key_id: UUID | None = None
    account_id: UUID | None = None


class InvalidToken(Exception):
    """The token is missing, malformed, expired or not ours; the message says which."""


def mint_token(settings: Settings, user_id: UUID, *, valid_for: timedelta) -> str:
    if not timedelta(0) < valid_for <= timedelta(days=MAX_TOKEN_DAYS):
        raise ValueError(f"a token is valid for 1 to {MAX_TOKEN_DAYS} days")
    now = datetime.now(UTC)
    claims = {
        "sub": str(user_id),
        "aud": settings.jwt_audience,
        "role": "authenticated",
        "iat": now,
        "exp": now + valid_for,
    }
    return jwt.encode(claims, settings.require_jwt_secret(), algorithm=ALGORITHM)


def verify_token(settings: Settings, token: str) -> UUID:
    """The user id a valid token names."""
    try:
        claims = jwt.decode(
            token,
            settings.require_jwt_secret(),
            algorithms=[ALGORITHM],  # fixed by the server, never taken from the token
            audience=settings.jwt_audience,
            options={"require": ["exp", "sub", "aud"]},
        )
        return UUID(str(claims["sub"]))
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("The token has expired.") from exc
    except (jwt.InvalidTokenError, ValueError) as exc:
        raise InvalidToken("The token is invalid.") from exc


# API keys for scripts: recognisable at a glance (a JWT has dots, a key this prefix).
API_KEY_PREFIX = "osk_"


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def api_key_hash(key: str) -> bytes:
    """What the database keeps of a key: its 256 random bits make a fast hash enough."""
    return hashlib.sha256(key.encode()).digest()


def is_api_key(token: str) -> bool:
    return token.startswith(API_KEY_PREFIX)
