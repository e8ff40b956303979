"""A local OpenAI: the Responses API with structured (JSON schema) output.

Usernames starting with `slowai` are analysed slowly (SLOW_AI_SECONDS); with `downai`, the
model answers 503 every time (a model that stays down: what opens its circuit); with
`rejectai`, it refuses the request (400). `POST /_simulator/openai/outage?down=true` makes
every model answer 503 until `down=false`: the AI provider down, for demos of the circuit
breaker and of `AI_FALLBACK=rules`.

It answers any strict JSON schema it is sent with a valid instance, deterministic for the
same model and input, and reports token usage the way OpenAI does, including cached input
tokens for a repeated prefix of 1,024 tokens or more.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import time
from typing import Any

from fastapi import APIRouter, Header, HTTPException, Request

_WORDS = [
    "audience",
    "engaged",
    "consistent",
    "brand",
    "local",
    "community",
    "premium",
    "creator",
    "authentic",
    "growth",
    "content",
    "loyal",
    "niche",
    "visual",
    "storytelling",
    "partnership",
    "budget",
    "weekly",
    "results",
    "trust",
    "quality",
]
_MIN_CACHEABLE_TOKENS = 1024
# Profiles whose username starts with `slowai` take this long to analyse: time enough to
# cancel a run, or to kill a worker, in the middle of its AI call.
SLOW_AI_SECONDS = 5.0


def tokens(text: str) -> int:
    return max(1, len(text) // 4)


class OpenAISimulator:
    def __init__(self, latency_ms: float = 500.0) -> None:
        self.latency_ms = latency_ms
        self._seen_prefixes: set[str] = set()
        self.calls = 0
        self.down = False
        self.router = APIRouter()
        self.router.add_api_route("/v1/responses", self.create_response, methods=["POST"])
        self.router.add_api_route("/_simulator/openai/calls", self.call_count)
        self.router.add_api_route("/_simulator/openai/outage", self.outage, methods=["POST"])

    async def outage(self, down: bool) -> dict[str, bool]:
        """Takes every model down (503) or brings them back."""
        self.down = down
        return {"down": self.down}

    async def call_count(self) -> dict[str, int]:
        """How many requests reached the model endpoint (for demos and tests)."""
        return {"calls": self.calls}

    async def create_response(
        self, request: Request, authorization: str = Header("")
    ) -> dict[str, Any]:
        self.calls += 1
        if not authorization.startswith("Bearer ") or len(authorization) <= len("Bearer "):
            raise HTTPException(401, "missing API key")
        body = await request.json()
        model = body.get("model")
        fmt = (body.get("text") or {}).get("format") or {}
        if not model or fmt.get("type") != "json_schema" or "schema" not in fmt:
            raise HTTPException(400, "this simulator answers structured (json_schema) requests")
        instructions = body.get("instructions") or ""
        prompt = body.get("input")
        prompt_text = prompt if isinstance(prompt, str) else json.dumps(prompt)
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        if _subject(prompt_text).startswith("@slowai"):
            await asyncio.sleep(SLOW_AI_SECONDS)
        if self.down or _subject(prompt_text).startswith("@downai"):  # a model that stays down
            raise HTTPException(503, "the model is overloaded")
        if _subject(prompt_text).startswith("@rejectai"):  # a request the provider refuses
            raise HTTPException(400, "the request was refused")

        seed = hashlib.sha256(f"{model}\n{instructions}\n{prompt_text}".encode()).digest()
        rng = random.Random(seed)
        output = _instance(fmt["schema"], rng, _subject(prompt_text))
        text = json.dumps(output)

        input_tokens = tokens(instructions) + tokens(prompt_text)
        cached = 0
        prefix_key = f"{body.get('prompt_cache_key')}:{model}:{instructions}"
        if tokens(instructions) >= _MIN_CACHEABLE_TOKENS:
            if prefix_key in self._seen_prefixes:
                cached = tokens(instructions)
            self._seen_prefixes.add(prefix_key)
        output_tokens = tokens(text)
        response_id = "resp_" + hashlib.sha256(seed + b"id").hexdigest()[:24]
        return {
            "id": response_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": model,
            "instructions": instructions,
            "output": [
                {
                    "id": "msg_" + response_id[5:],
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "text": {"format": fmt},
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": cached},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
        }


def _subject(prompt: str) -> str:
    match = re.search(r'"username":\s*"([^"]+)"', prompt)
    return f"@{match.group(1)}" if match else "this account"


def _instance(schema: dict[str, Any], rng: random.Random, subject: str, root: Any = None) -> Any:
    """A value valid for `schema`, following $ref, anyOf, enums, bounds and arrays."""
    root = root or schema
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return _instance(root.get("$defs", {})[name], rng, subject, root)
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"] or schema["anyOf"]
        return _instance(options[0], rng, subject, root)
    if "enum" in schema:
        return rng.choice(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        return {
            name: _instance(prop, rng, subject, root)
            for name, prop in schema.get("properties", {}).items()
        }
    if kind == "array":
        low = schema.get("minItems", 1)
        high = max(low, min(schema.get("maxItems", 4), 4))
        return [
            _instance(schema.get("items", {}), rng, subject, root)
            for _ in range(rng.randint(low, high))
        ]
    if kind == "integer":
        return rng.randint(int(schema.get("minimum", 0)), int(schema.get("maximum", 100)))
    if kind == "number":
        return round(rng.uniform(schema.get("minimum", 0.0), schema.get("maximum", 1.0)), 3)
    if kind == "boolean":
        return rng.random() < 0.5
    title = schema.get("title", "note").lower()
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 14)))
    return f"{subject} {title}: {words}."
