"""One HTTP server for the provider simulators: Apify under /v2, OpenAI under /v1/responses,
Stripe under the rest of /v1 (with its Checkout and portal pages), with optional provider
faults (simulators/faults.py)."""

from __future__ import annotations

import os

from fastapi import FastAPI

from simulators.apify import ApifySimulator
from simulators.faults import FaultMiddleware, Faults
from simulators.openai import OpenAISimulator
from simulators.stripe import StripeSimulator


def create_app(
    apify_latency_ms: float | None = None,
    openai_latency_ms: float | None = None,
    faults: Faults | None = None,
) -> FastAPI:
    if apify_latency_ms is None:
        apify_latency_ms = float(os.environ.get("SIM_APIFY_LATENCY_MS", "300"))
    if openai_latency_ms is None:
        openai_latency_ms = float(os.environ.get("SIM_OPENAI_LATENCY_MS", "500"))
    app = FastAPI(title="Oslira provider simulators", docs_url=None, redoc_url=None)
    app.include_router(ApifySimulator(apify_latency_ms).router)
    app.include_router(OpenAISimulator(openai_latency_ms).router)
    app.include_router(StripeSimulator().router)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    faults = faults or Faults.from_environment()
    if faults.any:
        app.add_middleware(FaultMiddleware, faults=faults)
    return app
