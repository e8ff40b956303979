"""The Temporal client every process uses: same namespace, same (pydantic) data converter."""

from __future__ import annotations

import functools
import logging

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.service import RetryConfig

from core.settings import Settings

# Registered on the server (`oslira dev` does it at start-up) so operators can filter runs.
SEARCH_ATTRIBUTES = {
    "AccountId": "Keyword",
    "AnalysisType": "Keyword",
    "Username": "Keyword",
    "RunStatus": "Keyword",
    "BatchId": "Keyword",
}


_made_a_client = False


def made_a_client() -> bool:
    """Whether this process connected a Temporal client (see cli.main.main)."""
    return _made_a_client


async def connect(
    settings: Settings,
    *,
    lazy: bool = False,
    patience: float = 10.0,
    sdk_metrics_address: str | None = None,
) -> Client:
    """`patience`: how long a call keeps retrying a server it cannot reach before it fails
    (the API gives up sooner than workers: it must answer). `sdk_metrics_address`: where the
    SDK's runtime serves its own Prometheus metrics (a worker's, re-served by its /metrics)."""
    global _made_a_client
    _made_a_client = True
    return await Client.connect(
        settings.require_temporal_address(),
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        lazy=lazy,
        retry_config=RetryConfig(max_elapsed_time_millis=int(patience * 1000)),
        runtime=runtime(sdk_metrics_address),
    )


@functools.cache
def runtime(metrics_address: str | None = None) -> Runtime:
    """The SDK's native runtime, one per process (and metrics address): its core's own log
    lines (warnings and up) go through Python logging (`temporalio.core`), so they come out
    as JSON like ours; with an address, it serves the SDK's metrics there."""
    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(
                filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
            ),
            metrics=(
                PrometheusConfig(bind_address=metrics_address, durations_as_seconds=True)
                if metrics_address
                else None
            ),
        )
    )


async def ensure_search_attributes(client: Client, namespace: str) -> list[str]:
    """Registers the search attributes operators filter runs by; returns those it added.

    The dev server gets them from its command line; a cluster (or temporal-compose.yml)
    gets them here, from `oslira migrate` or `oslira dev`.
    """
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    known = set(existing.custom_attributes) | set(existing.system_attributes)
    missing = {name: kind for name, kind in SEARCH_ATTRIBUTES.items() if name not in known}
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace,
                search_attributes={
                    name: IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{kind.upper()}")
                    for name, kind in missing.items()
                },
            )
        )
    return sorted(missing)


def workflow_id(run_id: object) -> str:
    return f"analysis-{run_id}"
