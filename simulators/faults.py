"""Provider faults on demand, for demos and tests: a share of calls answered 503, dropped
mid-answer, or left hanging.

Deterministic for a given seed: whether a call fails, and how, depends on the seed, the
endpoint, what was asked (the usernames of an Apify run; the model, the profile's username
and the answer's schema of an OpenAI request) and how many times it was asked before, never
on the order in which different calls arrive. Settings:
`SIM_FAULT_503`, `SIM_FAULT_DROP`, `SIM_FAULT_HANG` (shares, 0 to 1), `SIM_FAULT_SEED`,
`SIM_HANG_SECONDS` (default 600: longer than any client waits).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Only the providers' own endpoints fail; the simulators' helpers never do.
FAULTY_PATHS = ("/v2/acts/", "/v1/responses")


@dataclass(frozen=True)
class Faults:
    unavailable: float = 0.0  # 503
    dropped: float = 0.0  # the connection closes mid-answer
    hung: float = 0.0  # no answer before the client gives up
    seed: int = 0
    hang_seconds: float = 600.0

    @classmethod
    def from_environment(cls) -> Faults:
        env = os.environ
        return cls(
            unavailable=float(env.get("SIM_FAULT_503", 0)),
            dropped=float(env.get("SIM_FAULT_DROP", 0)),
            hung=float(env.get("SIM_FAULT_HANG", 0)),
            seed=int(env.get("SIM_FAULT_SEED", 0)),
            hang_seconds=float(env.get("SIM_HANG_SECONDS", 600)),
        )

    @property
    def any(self) -> bool:
        return self.unavailable + self.dropped + self.hung > 0

    def pick(self, key: str) -> str | None:
        """The fault for this call, or None: a fixed function of the seed and the key."""
        digest = hashlib.sha256(f"{self.seed}:{key}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        for fault, share in (
            ("503", self.unavailable),
            ("drop", self.dropped),
            ("hang", self.hung),
        ):
            if draw < share:
                return fault
            draw -= share
        return None


class FaultMiddleware:
    """Injects `Faults` into the provider endpoints of the simulator app."""

    def __init__(self, app: ASGIApp, faults: Faults) -> None:
        self.app = app
        self.faults = faults
        self.calls: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(FAULTY_PATHS):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        what = _what_was_asked(scope["path"], body)
        self.calls[what] += 1
        fault = self.faults.pick(f"{what}:{self.calls[what]}")
        if fault == "503":
            await _answer(
                send, 503, b'{"error": {"type": "platform-busy", "message": "try later"}}'
            )
            return
        if fault == "hang":
            await asyncio.sleep(self.faults.hang_seconds)
        if fault == "drop":
            # Announce a body, send part of it, and stop: the server closes the connection.
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"4096"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b'{"partial": ', "more_body": True})
            return  # uvicorn closes a connection whose answer was left unfinished

        async def replay() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _what_was_asked(path: str, body: bytes) -> str:
    if path.startswith("/v2/acts/"):
        try:
            usernames = json.loads(body).get("usernames", [])
        except (ValueError, AttributeError):
            usernames = []
        return f"apify:{','.join(sorted(str(u).lower() for u in usernames))}"
    try:
        request = json.loads(body)
        schema = request["text"]["format"]["name"]
        username = re.search(r'"username":\s*"([^"]+)"', json.dumps(request["input"]))
        return f"openai:{request['model']}:{schema}:{username.group(1) if username else ''}"
    except (ValueError, KeyError, TypeError):
        return f"openai:{hashlib.sha256(body).hexdigest()}"


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
