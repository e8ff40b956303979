"""Secrets from AWS Secrets Manager, against a local one over HTTP (moto's server mode): the
JWT secret and provider keys come from one JSON secret, a rotation is picked up once the TTL
has passed, names the secret does not hold come from the environment, and an unreachable
Secrets Manager keeps the last values."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import uuid4

import boto3
import pytest

from core.auth import mint_token
from core.secrets import SecretsManagerSource, SecretsUnavailable
from tests.conftest import JWT_SECRET, app_client, make_settings
from tests.helpers import moto_server

FIRST = "first-secret-" + "a" * 40
SECOND = "second-secret-" + "b" * 40


@pytest.fixture(scope="module")
def aws_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # boto3's usual chain (an instance role in production) finds these.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def _manager(url: str) -> Any:
    return boto3.client("secretsmanager", endpoint_url=url, region_name="us-east-1")


def _secret(url: str, values: dict[str, str]) -> str:
    secret_id = f"oslira/test/{uuid4().hex[:8]}"
    _manager(url).create_secret(Name=secret_id, SecretString=json.dumps(values))
    return secret_id


async def test_a_rotated_jwt_secret_is_picked_up_after_the_ttl(servers, aws_url):
    secret_id = _secret(aws_url, {"JWT_SECRET": FIRST, "STRIPE_API_KEY": "sk_test_first"})
    settings = make_settings(
        servers,
        secrets_manager_secret_id=secret_id,
        secrets_manager_endpoint_url=aws_url,
        secrets_manager_ttl_seconds=1.0,
    )
    # The environment's JWT secret is not the one in force: Secrets Manager's is.
    assert settings.jwt_secret is not None and settings.jwt_secret.get_secret_value() == JWT_SECRET
    signer = make_settings(servers, jwt_secret=FIRST)
    rotated_signer = make_settings(servers, jwt_secret=SECOND)
    user = uuid4()
    old = {"Authorization": f"Bearer {mint_token(signer, user, valid_for=timedelta(hours=1))}"}
    new = {
        "Authorization": f"Bearer {mint_token(rotated_signer, user, valid_for=timedelta(hours=1))}"
    }
    from_env = mint_token(make_settings(servers), user, valid_for=timedelta(hours=1))
    env = {"Authorization": f"Bearer {from_env}"}

    async with app_client(settings) as api:
        # A user unknown to the database: a valid token gets past authentication (403 or
        # 404 for lack of an account), an invalid one answers 401.
        assert (await api.get("/api/me", headers=old)).status_code != 401
        assert (await api.get("/api/me", headers=env)).status_code == 401
        stripe_key = settings.secret("stripe_api_key")
        assert stripe_key is not None and stripe_key.get_secret_value() == "sk_test_first"

        _manager(aws_url).put_secret_value(
            SecretId=secret_id, SecretString=json.dumps({"JWT_SECRET": SECOND})
        )
        # Within the TTL the value read at start stays.
        assert (await api.get("/api/me", headers=new)).status_code == 401
        for _ in range(50):  # after it, the next use re-reads (in a thread), then it applies
            await asyncio.sleep(0.1)
            if (await api.get("/api/me", headers=new)).status_code != 401:
                break
        assert (await api.get("/api/me", headers=new)).status_code != 401
        assert (await api.get("/api/me", headers=old)).status_code == 401
        # The secret no longer holds the Stripe key: the environment's is used.
        assert settings.secret("stripe_api_key") == settings.stripe_api_key


def test_an_unreachable_secrets_manager_keeps_the_last_values(aws_url):
    secret_id = _secret(aws_url, {"OPENAI_API_KEY": "sk-first"})
    now = [0.0]
    source = SecretsManagerSource(
        secret_id, ttl_seconds=10, endpoint_url=aws_url, clock=lambda: now[0]
    )
    assert source.get("OPENAI_API_KEY") == "sk-first"
    _manager(aws_url).delete_secret(SecretId=secret_id, ForceDeleteWithoutRecovery=True)
    now[0] = 11.0  # expired: the re-read fails (no such secret), the last value stays
    assert source.get("OPENAI_API_KEY") == "sk-first"
    time.sleep(0.5)
    assert source.get("OPENAI_API_KEY") == "sk-first"

    # It tries again after another TTL, and takes the secret once it is back.
    _manager(aws_url).create_secret(
        Name=secret_id, SecretString=json.dumps({"OPENAI_API_KEY": "sk-second"})
    )
    assert source.get("OPENAI_API_KEY") == "sk-first"  # not yet: the failed read was at 11
    now[0] = 22.0
    source.get("OPENAI_API_KEY")
    for _ in range(50):
        if source.get("OPENAI_API_KEY") == "sk-second":
            break
        time.sleep(0.05)
    assert source.get("OPENAI_API_KEY") == "sk-second"

    _manager(aws_url).delete_secret(SecretId=secret_id, ForceDeleteWithoutRecovery=True)
    with pytest.raises(SecretsUnavailable):  # at start, a secret that cannot be read stops it
        SecretsManagerSource(secret_id, ttl_seconds=10, endpoint_url=aws_url)
