"""The API against its own OpenAPI document: schemathesis, with and without a token, finds
nothing (every answer documented, every schema-valid request accepted or refused as
documented, 405s with Allow, no 5xx); and every operation carries examples."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from api.middleware import PUBLIC_PATHS
from tests.conftest import make_settings
from tests.helpers import ApiProcess, running_api

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
CONFIG = Path(__file__).parent / "schemathesis.toml"


@pytest.fixture(scope="module")
def contract_api(servers) -> Iterator[ApiProcess]:
    # A queue no worker polls: the runs schemathesis starts stay pending and cost nothing.
    # A plan for sale, so subscribing has a valid body; Stripe is the simulator.
    settings = make_settings(
        servers,
        task_queue=f"contract-{uuid4().hex[:8]}",
        plans={
            "free": {"name": "Free", "analyses_per_hour": 10**6, "requests_per_minute": 10**6},
            "pro": {"name": "Pro", "price_cents": 4_900, "requests_per_minute": 10**6},
        },
    )
    with running_api(settings) as api:
        yield api


def _schemathesis(api: ApiProcess, *headers: str) -> subprocess.CompletedProcess[str]:
    args = [SCHEMATHESIS, "--config-file", str(CONFIG), "run", f"{api.url}/openapi.json"]
    args += ["--checks", "all"]
    args += ["--max-examples", "20", "--seed", "1", "--generation-database", "none"]
    args += ["--no-color", "--request-timeout", "10"]
    for header in headers:
        args += ["-H", header]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


async def test_schemathesis_finds_nothing_with_a_token(contract_api, new_account):
    account = await new_account(credits_granted=1_000_000)  # valid runs must not hit 402
    result = await asyncio.to_thread(
        _schemathesis, contract_api, f"Authorization: Bearer {account.token}"
    )
    assert result.returncode == 0, result.stdout[-6000:]
    assert " passed" in result.stdout


def test_schemathesis_finds_nothing_without_a_token(contract_api):
    result = _schemathesis(contract_api)
    assert result.returncode == 0, result.stdout[-6000:]
    assert " passed" in result.stdout


async def test_every_operation_documents_examples_and_its_common_answers(api):
    spec = (await api.get("/openapi.json")).json()
    missing = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            for parameter in operation.get("parameters", []):
                if "example" not in parameter:
                    missing.append(f"{where}: parameter {parameter['name']}")
                if "anyOf" in parameter["schema"]:
                    missing.append(f"{where}: parameter {parameter['name']} may be null")
            for media in operation.get("requestBody", {}).get("content", {}).values():
                if "example" not in media:
                    missing.append(f"{where}: request body")
            for status, answer in operation["responses"].items():
                contents = answer.get("content", {})
                if method == "head":
                    if contents:
                        missing.append(f"{where} {status}: a HEAD answer with a body")
                    continue
                if not contents and status != "204":  # 204: no content, by definition
                    missing.append(f"{where} {status}: no content")
                for media in contents.values():
                    if "example" not in media:
                        missing.append(f"{where} {status}: response example")
            if path.startswith("/api/") and path not in PUBLIC_PATHS:
                names = {p["name"].lower() for p in operation.get("parameters", [])}
                expected = (
                    {"401", "503"}
                    | ({"403", "422", "429"} if "x-account-id" in names else set())
                    | ({"413", "422"} if "requestBody" in operation else set())
                )
                absent = expected - set(operation["responses"])
                if absent:
                    missing.append(f"{where}: undocumented {sorted(absent)}")
    assert missing == []
    analyze = spec["paths"]["/api/leads/analyze"]["post"]
    assert set(analyze["responses"]["202"]["links"]) == {"progress", "result", "cancel"}
    username = spec["components"]["schemas"]["AnalyzeRequest"]["properties"]["username"]
    assert username["maxLength"] == 31 and username["pattern"].startswith("^@?")
