"""Secrets from AWS Secrets Manager (DESIGN.md section 9; PROVIDERS.md, Secrets Manager).

With `SECRETS_MANAGER_SECRET_ID` set, one JSON secret holds the JWT secret and the provider
keys under their environment names (`{"JWT_SECRET": "...", "OPENAI_API_KEY": "...", ...}`).
It is read with boto3 when the process starts, kept for `SECRETS_MANAGER_TTL_SECONDS`, and
read again once that has passed, so a rotated secret is picked up without a restart. A name
the secret does not hold falls back to the environment (the settings).

The read after expiry runs in a thread and never holds up a caller: until it lands, callers
get the value they had. If Secrets Manager cannot be reached, the last values stay in use
(logged) and the read is tried again after another TTL, so an outage of Secrets Manager
never takes the service down once it has started.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config

log = logging.getLogger(__name__)

# The settings a secret may hold, by the names the JSON secret (and the environment) use.
SECRET_FIELDS = {
    "JWT_SECRET": "jwt_secret",
    "APIFY_TOKEN": "apify_token",
    "OPENAI_API_KEY": "openai_api_key",
    "STRIPE_API_KEY": "stripe_api_key",
    "STRIPE_WEBHOOK_SECRET": "stripe_webhook_secret",
    "SENTRY_DSN": "sentry_dsn",
}


# A setting's field -> the name the secret holds it under.
SECRET_NAMES = {field: name for name, field in SECRET_FIELDS.items()}


class SecretsUnavailable(RuntimeError):
    """The secret could not be read when the process started."""


class SecretsManagerSource:
    def __init__(
        self,
        secret_id: str,
        *,
        ttl_seconds: float,
        endpoint_url: str | None = None,
        region: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._secret_id = secret_id
        self._ttl = ttl_seconds
        self._clock = clock
        self._client: Any = boto3.session.Session().client(
            "secretsmanager",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(
                connect_timeout=2, read_timeout=5, retries={"max_attempts": 2, "mode": "standard"}
            ),
        )
        self._lock = threading.Lock()
        self._refreshing = False
        try:
            self._values = self._read()
        except Exception as exc:
            raise SecretsUnavailable(
                f"cannot read secret {secret_id!r} from Secrets Manager: {exc}"
            ) from exc
        self._read_at = self._clock()

    def get(self, name: str) -> str | None:
        """The secret's value for `name` (an environment name), None when it holds none."""
        with self._lock:
            if self._clock() - self._read_at >= self._ttl and not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self._refresh, name="secrets-refresh", daemon=True).start()
            return self._values.get(name)

    def _refresh(self) -> None:
        try:
            values = self._read()
        except Exception as exc:
            log.warning("secret %s not re-read, the last values stay: %s", self._secret_id, exc)
            values = None
        with self._lock:
            if values is not None:
                self._values = values
            self._read_at = self._clock()
            self._refreshing = False

    def _read(self) -> dict[str, str]:
        answer = self._client.get_secret_value(SecretId=self._secret_id)
        data = json.loads(answer["SecretString"])
        if not isinstance(data, dict):
            raise ValueError("the secret is not a JSON object")
        unknown = set(data) - set(SECRET_FIELDS)
        if unknown:
            log.warning("secret %s holds names no setting reads: %s", self._secret_id, unknown)
        return {k: str(v) for k, v in data.items() if k in SECRET_FIELDS and v not in (None, "")}
