"""The API process as an attacker meets it: no secret, no start; oversized and
unauthenticated requests refused before their body is read, with the server's memory flat.

These run `oslira api` as a real uvicorn process and speak raw HTTP to it, so "before the body
is read" is literal: the answer arrives while the client has not sent the body at all.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from uuid import uuid4

import pytest

from cli import stack
from core.auth import mint_token
from tests.helpers import ApiProcess, process_env, running_api

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("secret", "complaint"),
    [("", "JWT_SECRET is not set"), ("too-short-but-not-empty", "at least 32 bytes")],
    ids=["no secret", "short secret"],
)
def test_standalone_api_refuses_to_start_without_a_real_secret(settings, secret, complaint):
    with tempfile.TemporaryDirectory() as home:
        port = stack.free_port()
        env = process_env(settings, home, JWT_SECRET=secret, API_PORT=str(port))
        result = subprocess.run(
            stack.oslira_command("api"),
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert complaint in result.stderr
    assert "Traceback" not in result.stderr
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # it never listened


@pytest.fixture(scope="module")
def api_process(settings) -> Iterator[ApiProcess]:
    with running_api(settings) as api:
        yield api


def _head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: api.test", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_response(conn: socket.socket, timeout: float = 10) -> tuple[int, bytes]:
    conn.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(rest) < length:
        rest += conn.recv(65536)
    return status, rest


def _bearer(settings) -> dict[str, str]:
    """A valid token (for a user without accounts: the gate only checks the signature)."""
    return {
        "Authorization": f"Bearer {mint_token(settings, uuid4(), valid_for=timedelta(minutes=5))}"
    }


def test_declared_oversized_body_answers_413_before_it_is_sent(api_process, settings):
    for headers in (
        {"Content-Length": str(150 * MIB)},  # no token
        {"Content-Length": str(64 * MIB)} | _bearer(settings),
    ):
        with api_process.connect() as conn:
            conn.sendall(_head("/api/leads/analyze", headers))  # and not one byte of body
            status, body = _read_response(conn)
        assert status == 413, body
        assert b'"code":"request_too_large"' in body


def test_unauthenticated_body_is_refused_unread(api_process):
    with api_process.connect() as conn:
        conn.sendall(_head("/api/leads/analyze", {"Content-Length": "100000"}))
        status, body = _read_response(conn)
    assert status == 401, body
    assert b'"code":"unauthorized"' in body


def _stream_until_answered(conn: socket.socket, total: int) -> tuple[int, int]:
    """Sends a chunked body of `total` bytes, stopping as soon as the server answers;
    returns the status and the bytes sent."""
    chunk = b"[" + b"1," * (MIB // 2 - 1) + b"1]"  # 1 MiB of valid JSON-ish bytes
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    conn.setblocking(False)
    while sent < total:
        readable, writable, _ = select.select([conn], [conn], [], 10)
        if readable:
            break
        if writable:
            try:
                sent += conn.send(framed)
            except BlockingIOError:
                continue
    conn.setblocking(True)
    status, _ = _read_response(conn)
    return status, sent


@pytest.mark.parametrize("authenticated", [True, False], ids=["with token", "without token"])
def test_chunked_flood_is_cut_off_with_memory_flat(api_process, settings, authenticated):
    before = api_process.rss_bytes()
    headers = {"Transfer-Encoding": "chunked"}
    if authenticated:
        headers |= _bearer(settings)
    with api_process.connect() as conn:
        conn.sendall(_head("/api/leads/analyze", headers))
        status, sent = _stream_until_answered(conn, 150 * MIB)
    time.sleep(0.2)
    grown = api_process.rss_bytes() - before
    assert status == (413 if authenticated else 401)
    assert sent < 150 * MIB  # the answer came before the body was all sent
    assert grown < 20 * MIB, f"the API grew by {grown / MIB:.1f} MiB"


def test_api_writes_one_access_line_per_request(api_process):
    marker = "access-log-probe"
    with api_process.connect() as conn:
        conn.sendall(f"GET /health?probe={marker} HTTP/1.1\r\nHost: api.test\r\n\r\n".encode())
        status, _ = _read_response(conn)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [ln for ln in api_process.log.read_text().splitlines() if marker in ln]
        if lines:
            break
        time.sleep(0.05)
    assert len(lines) == 1, api_process.log.read_text()[-2000:]
    assert f"GET /health?probe={marker} {status}" in lines[0]
    assert "request_id=" in lines[0]


async def test_a_body_just_under_the_limit_is_read(api_process, settings, new_account):
    """A batch of 10,000 usernames is about 330 kB; the default limit is 1 MiB."""
    account = await new_account()
    padding = "x" * (settings.max_request_bytes - 100)
    body = f'{{"name": "big", "description": "{padding}"}}'.encode()
    assert len(body) <= settings.max_request_bytes

    def send(framing: dict[str, str]) -> tuple[int, bytes]:
        with api_process.connect() as conn:
            conn.sendall(_head("/api/business-profiles", framing | account.headers))
            if "Content-Length" in framing:
                conn.sendall(body)
            else:
                conn.sendall(f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
            return _read_response(conn)

    for framing in ({"Content-Length": str(len(body))}, {"Transfer-Encoding": "chunked"}):
        status, answer = await asyncio.to_thread(send, framing)  # blocking sockets
        assert status == 422, answer  # read and validated: the description is too long
        assert b'"field":"description"' in answer
