"""The Temporal client every process uses: same namespace, same (pydantic) data converter."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from core.settings import Settings

# Registered on the server (`oslira dev` does it at start-up) so operators can filter runs.
SEARCH_ATTRIBUTES = {
    "AccountId": "Keyword",
    "AnalysisType": "Keyword",
    "Username": "Keyword",
    "RunStatus": "Keyword",
}


async def connect(settings: Settings, *, lazy: bool = False) -> Client:
    return await Client.connect(
        settings.require_temporal_address(),
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        lazy=lazy,
    )


def workflow_id(run_id: object) -> str:
    return f"analysis-{run_id}"
