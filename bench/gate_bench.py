"""What an oversized or unauthenticated request costs the API, printed as JSON.

Starts `oslira dev` (bench/devstack.py) and, against its real uvicorn API process, sends a
150 MB body three ways: declared in Content-Length without a token, streamed (chunked)
without a token, streamed with a valid token. For each: the status, how long the answer
took, how much of the body had been sent when it came, and the API's resident memory
before and after.

Usage: .venv/bin/python bench/gate_bench.py [--megabytes 150]
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import time

import psutil
from devstack import dev_stack  # the bench folder is on sys.path when run as a script

MIB = 1024 * 1024


def _api_process(dev_pid: int) -> psutil.Process:
    for child in psutil.Process(dev_pid).children(recursive=True):
        if child.cmdline()[-1:] == ["api"]:
            return child
    raise SystemExit("no API process under oslira dev")


def _send(port: int, headers: dict[str, str], body_bytes: int) -> dict[str, object]:
    head = "\r\n".join(
        ["POST /api/leads/analyze HTTP/1.1", "Host: bench", "Content-Type: application/json"]
        + [f"{k}: {v}" for k, v in headers.items()]
    )
    chunk = b"1" * MIB
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    chunked = headers.get("Transfer-Encoding") == "chunked"
    sent = 0
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(f"{head}\r\n\r\n".encode())
        conn.setblocking(False)
        while sent < body_bytes:
            readable, writable, _ = select.select([conn], [conn], [], 30)
            if readable:
                break
            if writable and chunked:
                try:
                    sent += conn.send(framed)
                except BlockingIOError:
                    continue
            elif not chunked:
                select.select([conn], [], [], 30)  # a declared body: wait for the answer
                break
        conn.setblocking(True)
        answer = conn.recv(4096)
    return {
        "status": int(answer.split(b" ", 2)[1]),
        "answered_ms": round((time.perf_counter() - started) * 1000, 1),
        "body_sent_mb": round(sent / MIB, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=150)
    args = parser.parse_args()
    size = args.megabytes * MIB
    with dev_stack(WORKER_PROCESSES="1") as (home, env, dev_pid):
        api = _api_process(dev_pid)
        port = int(env["API_PORT"])
        token = next(
            line.split("TOKEN=")[1].split()[0]
            for line in (home / "dev.out").read_text().splitlines()
            if "export OSLIRA_API=" in line
        )
        cases = {
            "declared_without_token": {"Content-Length": str(size)},
            "chunked_without_token": {"Transfer-Encoding": "chunked"},
            "chunked_with_token": {
                "Transfer-Encoding": "chunked",
                "Authorization": f"Bearer {token}",
            },
        }
        results: dict[str, object] = {}
        for name, headers in cases.items():
            before = api.memory_info().rss
            outcome = _send(port, headers, size)
            time.sleep(0.3)
            outcome["api_rss_mb"] = {
                "before": round(before / MIB, 1),
                "after": round(api.memory_info().rss / MIB, 1),
            }
            results[name] = outcome
    print(json.dumps({"body_mb": args.megabytes, **results}, indent=2))


if __name__ == "__main__":
    main()
