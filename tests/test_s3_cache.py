"""The S3 profile cache over HTTP, against a local S3 server (moto's server mode): analyses
store and reuse profiles there; freshness by tier; a corrupt object is a miss the run
repairs; drop and purge."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import boto3
import pytest

from core.models import Profile
from providers.cache import S3ProfileCache
from tests.conftest import Servers, app_client, make_settings
from tests.helpers import moto_server, running_worker, start_ok, wait_for

BUCKET = "oslira-cache-test"
PREFIX = "profiles/"


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    with moto_server() as url:
        _s3(url).create_bucket(Bucket=BUCKET)
        yield url


def _s3(url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def _settings(servers: Servers, s3_url: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "task_queue": f"s3-{uuid4().hex[:8]}",
        "profile_cache": "s3",
        "s3_bucket": BUCKET,
        "s3_prefix": PREFIX,
        "s3_endpoint_url": s3_url,
        "s3_access_key_id": "test",
        "s3_secret_access_key": "test",
    }
    return make_settings(servers, **(values | overrides))


def _age(s3_url: str, username: str, hours: float) -> None:
    """Rewrites the stored object as if it had been stored `hours` ago."""
    s3 = _s3(s3_url)
    key = f"{PREFIX}instagram:{username}:v1"
    stored = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    stored["stored_at"] = (datetime.now(UTC) - timedelta(hours=hours)).isoformat()
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(stored).encode())


async def _analyse(api: Any, account: Any, username: str, tier: str) -> dict[str, Any]:
    run_id = await start_ok(api, account, username, tier)
    done = await wait_for(api, account, run_id)
    assert done["status"] == "complete", done
    result = await api.get(f"/api/analysis/{run_id}/result", headers=account.headers)
    body: dict[str, Any] = result.json()
    return body


async def test_runs_store_and_reuse_profiles_in_s3_fresh_enough_for_their_tier(
    servers, s3_url, new_account
):
    settings = _settings(servers, s3_url)
    account = await new_account(credits_granted=100)
    username = f"s3user_{uuid4().hex[:8]}"
    async with running_worker(settings), app_client(settings) as api:
        first = await _analyse(api, account, username, "light")
        assert first["cost"]["cache_hit"] is False
        stored = _s3(s3_url).get_object(Bucket=BUCKET, Key=f"{PREFIX}instagram:{username}:v1")
        assert json.loads(stored["Body"].read())["profile"]["username"] == username
        assert (await _analyse(api, account, username, "light"))["cost"]["cache_hit"] is True

        # 8 hours old: fresh for light (24 h) and deep (12 h), stale for xray (6 h).
        hits = {}
        for tier in ("light", "deep", "xray"):
            _age(s3_url, username, 8)
            hits[tier] = (await _analyse(api, account, username, tier))["cost"]["cache_hit"]
        assert hits == {"light": True, "deep": True, "xray": False}
        _age(s3_url, username, 13)
        assert (await _analyse(api, account, username, "deep"))["cost"]["cache_hit"] is False


async def test_a_corrupt_object_is_a_miss_and_the_run_stores_a_good_one(
    servers, s3_url, new_account
):
    settings = _settings(servers, s3_url)
    account = await new_account(credits_granted=10)
    username = f"s3corrupt_{uuid4().hex[:8]}"
    key = f"{PREFIX}instagram:{username}:v1"
    for garbage in (b"not json at all", b'{"stored_at": "yesterday", "profile": {}}'):
        _s3(s3_url).put_object(Bucket=BUCKET, Key=key, Body=garbage)
        async with running_worker(settings), app_client(settings) as api:
            result = await _analyse(api, account, username, "light")
        assert result["cost"]["cache_hit"] is False
        # Read as a miss, not a failed read; then scraped and stored again.
        steps = {s["name"]: s["status"] for s in result["steps"]}
        assert (steps["check_cache"], steps["store_in_cache"]) == ("done", "done")
        stored = json.loads(_s3(s3_url).get_object(Bucket=BUCKET, Key=key)["Body"].read())
        assert Profile.model_validate(stored["profile"]).username == username


async def test_drop_purge_and_stats(servers, s3_url):
    cache = S3ProfileCache(_settings(servers, s3_url, s3_prefix=f"purge-{uuid4().hex[:6]}/"))
    for name in ("one", "two"):
        await cache.put(Profile(username=name, followers_count=10))
    found = await cache.get("one")
    assert found is not None and found[0].followers_count == 10
    assert await cache.drop("one") is True
    assert await cache.drop("one") is False
    assert await cache.get("one") is None
    counted = await cache.stats([3600.0, 7200.0])
    assert (counted.entries, counted.by_age) == (1, [1, 0, 0]) and counted.total_bytes > 0
    assert await cache.purge(3600) == 0  # "two" was stored just now
    assert await cache.purge(0) == 1
    assert await cache.get("two") is None
