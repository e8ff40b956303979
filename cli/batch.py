"""`oslira batch`: start a batch from a file, follow it, cancel it, and fetch its results,
through the HTTP API with an API key (DESIGN.md section 6).

    oslira batch start leads.csv --tier light --business-profile ID
    oslira batch watch BATCH_ID
    oslira batch cancel BATCH_ID
    oslira batch results BATCH_ID --out results.csv

`start` is idempotent: its Idempotency-Key is derived from the usernames, tier and business
profile, so running the same command again attaches to the batch it started (`--new` starts
another). Ctrl-C while watching detaches; the batch goes on.

Exit codes: 0 every item complete; 3 the batch ended with items failed or cancelled;
1 the API refused or could not be reached; 130 detached with Ctrl-C.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from tenacity import (
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

batch_app = typer.Typer(no_args_is_help=True, help="Start, follow, cancel and read batches.")
console = Console(stderr=True, soft_wrap=True)  # messages a script may grep stay whole

BULK = "/api/leads/analyze/bulk"
MAX_ITEMS = 10_000
EXIT_SOME_UNSUCCESSFUL = 3
EXIT_API = 1
EXIT_DETACHED = 130
FINISHED = ("complete", "cancelled", "failed")

ApiUrl = Annotated[
    str,
    typer.Option(envvar="OSLIRA_API_URL", help="The API's base URL", show_default=True),
]
ApiKey = Annotated[
    str,
    typer.Option(
        envvar="OSLIRA_API_KEY",
        help="An API key (`POST /api/api-keys` or `oslira api-keys create`)",
        show_default=False,
    ),
]
BatchIdArg = Annotated[uuid.UUID, typer.Argument(help="The batch's id")]
Interval = Annotated[float, typer.Option(help="Seconds between progress reads", min=0.1)]


class ApiRefused(Exception):
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        try:
            error = response.json()["error"]
            message = f"{error['message']} ({error['code']}"
            message += f", field {error['field']})" if error.get("field") else ")"
        except (ValueError, KeyError, TypeError):
            message = response.text[:300] or response.reason_phrase
        super().__init__(f"HTTP {response.status_code}: {message}")


def _client(api_url: str, api_key: str) -> httpx.Client:
    return httpx.Client(
        base_url=api_url.rstrip("/"),
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=httpx.Timeout(60, connect=10),
    )


def _retryable(error: BaseException) -> bool:
    """Lost connections and 503s: the request is safe to repeat (reads, and starts carry
    their Idempotency-Key)."""
    if isinstance(error, httpx.TransportError):
        return True
    return isinstance(error, ApiRefused) and error.response.status_code in (502, 503, 504)


@retry(
    retry=retry_if_exception(_retryable),
    stop=stop_after_attempt(5),
    wait=wait_exponential(multiplier=0.5, max=8),
    reraise=True,
)
def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    response = client.request(method, path, **kwargs)
    if response.status_code >= 400:
        raise ApiRefused(response)
    return response.json()


def read_usernames(path: Path) -> list[str]:
    """Usernames from a CSV file with a `username` column, or a text file with one per
    line; blanks, a header line and a leading `@` are tolerated (the API normalises)."""
    text = path.read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    if path.suffix.lower() == ".csv" or "," in first:
        reader = csv.DictReader(io.StringIO(text))
        columns = {name.strip().lower(): name for name in reader.fieldnames or []}
        if "username" not in columns:
            raise typer.BadParameter(
                f"{path} has no `username` column (columns: {', '.join(columns) or 'none'})"
            )
        column = columns["username"]
        values = [(row.get(column) or "").strip() for row in reader]
    else:
        values = [line.strip() for line in lines]
        if values and values[0].lstrip("@").lower() in ("username", "usernames", "handle"):
            values = values[1:]
    return [value for value in values if value]


def idempotency_key(usernames: list[str], tier: str, business_profile: uuid.UUID) -> str:
    digest = hashlib.sha256(
        json.dumps([usernames, tier, str(business_profile)]).encode()
    ).hexdigest()
    return f"oslira-batch-{digest[:40]}"


@batch_app.command()
def start(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="CSV or text")
    ],
    business_profile: Annotated[
        uuid.UUID, typer.Option("--business-profile", help="The business profile's id")
    ],
    api_key: ApiKey,
    tier: Annotated[str, typer.Option(help="light, deep or xray")] = "light",
    api_url: ApiUrl = "http://127.0.0.1:8000",
    new: Annotated[
        bool, typer.Option("--new", help="Start another batch even if this one was started")
    ] = False,
    detach: Annotated[bool, typer.Option(help="Print the batch id and return")] = False,
    interval: Interval = 1.0,
) -> None:
    """Start a batch from FILE (or attach to the one this same command started), then follow
    it with a progress bar."""
    usernames = read_usernames(file)
    if not usernames:
        raise typer.BadParameter(f"{file} holds no usernames")
    if len(usernames) > MAX_ITEMS:
        raise typer.BadParameter(
            f"{file} holds {len(usernames)} usernames; a batch takes at most {MAX_ITEMS}: "
            "split the file"
        )
    key = idempotency_key(usernames, tier, business_profile)
    if new:
        key = f"{key[:40]}-{uuid.uuid4().hex[:12]}"
    with _client(api_url, api_key) as client:
        try:
            body = _call(
                client,
                "POST",
                BULK,
                json={
                    "usernames": usernames,
                    "analysis_type": tier,
                    "business_profile_id": str(business_profile),
                },
                headers={"Idempotency-Key": key},
            )
        except (ApiRefused, httpx.TransportError) as exc:
            _give_up(exc)
        batch_id = body["batch_id"]
        console.print(
            f"Batch [bold]{batch_id}[/]: {body['total']} items accepted, "
            f"{len(body['rejected'])} rejected, {body['duplicates']} repeats collapsed, "
            f"{body['credits_charged']} credits."
        )
        for rejected in body["rejected"][:10]:
            console.print(f"  rejected {rejected['username']!r}: {rejected['code']}")
        if len(body["rejected"]) > 10:
            console.print(f"  ... and {len(body['rejected']) - 10} more")
        print(batch_id)
        if detach:
            return
        raise typer.Exit(_follow(client, batch_id, interval))


@batch_app.command()
def watch(
    batch_id: BatchIdArg,
    api_key: ApiKey,
    api_url: ApiUrl = "http://127.0.0.1:8000",
    interval: Interval = 1.0,
) -> None:
    """Follow a batch with a progress bar until it ends (Ctrl-C detaches)."""
    with _client(api_url, api_key) as client:
        raise typer.Exit(_follow(client, str(batch_id), interval))


@batch_app.command()
def cancel(
    batch_id: BatchIdArg,
    api_key: ApiKey,
    api_url: ApiUrl = "http://127.0.0.1:8000",
) -> None:
    """Cancel a batch: unfinished items end cancelled and are refunded."""
    with _client(api_url, api_key) as client:
        try:
            body = _call(client, "POST", f"{BULK}/{batch_id}/cancel")
        except (ApiRefused, httpx.TransportError) as exc:
            _give_up(exc)
    console.print(f"Batch {batch_id}: cancel requested (now {body['status']}).")


@batch_app.command()
def results(
    batch_id: BatchIdArg,
    out: Annotated[Path, typer.Option(help="Where to write: .csv or .jsonl")],
    api_key: ApiKey,
    api_url: ApiUrl = "http://127.0.0.1:8000",
    status: Annotated[
        str | None, typer.Option(help="Only items with this status (e.g. complete, failed)")
    ] = None,
) -> None:
    """Write a batch's items (username, status, score, summary, error, run_id) to a file,
    page by page: the whole batch never sits in memory."""
    kind = out.suffix.lower()
    if kind not in (".csv", ".jsonl"):
        raise typer.BadParameter("--out must end in .csv or .jsonl")
    columns = ["username", "status", "score", "summary", "error", "error_message", "run_id"]
    written = 0
    with _client(api_url, api_key) as client, out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns) if kind == ".csv" else None
        if writer:
            writer.writeheader()
        try:
            for item in _pages(client, str(batch_id), status):
                error = item.get("error") or {}
                row = {
                    "username": item["username"],
                    "status": item["status"],
                    "score": item["score"],
                    "summary": item["summary"],
                    "error": error.get("code"),
                    "error_message": error.get("message"),
                    "run_id": item["run_id"],
                }
                if writer:
                    writer.writerow(row)
                else:
                    f.write(json.dumps(row) + "\n")
                written += 1
        except (ApiRefused, httpx.TransportError) as exc:
            _give_up(exc)
    console.print(f"{written} items written to {out}.")


def _pages(client: httpx.Client, batch_id: str, status: str | None) -> Iterator[dict[str, Any]]:
    page = 1
    params: dict[str, Any] = {"page_size": 200}
    if status:
        params["status"] = status
    while True:
        body = _call(client, "GET", f"{BULK}/{batch_id}/items", params={**params, "page": page})
        yield from body["data"]
        if page * body["page_size"] >= body["total"] or not body["data"]:
            return
        page += 1


def _follow(client: httpx.Client, batch_id: str, interval: float) -> int:
    """A progress bar until the batch ends; the exit code its outcome gives."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[counts]}"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("pending", total=None, counts="", rate="")
            while True:
                body = _call(client, "GET", f"{BULK}/{batch_id}/progress")
                counts = body["counts"]
                ended = counts["complete"] + counts["failed"] + counts["cancelled"]
                rate = body.get("items_per_second")
                bar.update(
                    task,
                    description=body["status"],
                    total=body["total"],
                    completed=ended,
                    counts=(
                        f"ok {counts['complete']} failed {counts['failed']} "
                        f"cancelled {counts['cancelled']} running {counts['processing']}"
                    ),
                    rate=f"{rate:.1f}/s" if rate else "",
                )
                if body["status"] in FINISHED:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        console.print(
            f"\nDetached; the batch goes on. Follow it: [bold]oslira batch watch {batch_id}[/]"
            f"\nCancel it: [bold]oslira batch cancel {batch_id}[/]"
        )
        return EXIT_DETACHED
    except (ApiRefused, httpx.TransportError) as exc:
        _give_up(exc)
    console.print(
        f"Batch {batch_id} {body['status']}: {counts['complete']} complete, "
        f"{counts['failed']} failed, {counts['cancelled']} cancelled; "
        f"{body['credits_charged']} credits charged, {body['credits_refunded']} refunded."
    )
    if body["status"] == "complete" and counts["complete"] == body["total"]:
        return 0
    return EXIT_SOME_UNSUCCESSFUL


def _give_up(error: Exception) -> Any:
    console.print(f"[red]error:[/] {error}")
    raise typer.Exit(EXIT_API)
