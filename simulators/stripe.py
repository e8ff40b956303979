"""A local Stripe: the endpoints this backend calls (customers, Checkout sessions,
subscriptions, invoices, billing portal sessions), with a page that "pays" a Checkout session
and signed webhook deliveries, as Stripe makes them.

Each secret key is a separate Stripe account: its own objects and webhook endpoint, so tests
sharing one simulator never see each other's events. The endpoint comes from
`SIM_STRIPE_WEBHOOK_URL` and `SIM_STRIPE_WEBHOOK_SECRET` (what `oslira dev` sets), or per key
from `POST /_simulator/stripe/endpoint`.

Deliveries follow the account's delivery settings (`POST /_simulator/stripe/delivery`): `copies`
(each event sent that many times, concurrently), `order` (`sent`, `reverse`, `shuffle`) and
`hold` (events wait until `POST /_simulator/stripe/flush`). A delivery the endpoint does not accept
is retried in the background, as Stripe does, a few times. The simulator's own controls, under
`/_simulator/stripe`, also move a subscription to its next period (paid or failed) and end it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import logging
import os
import random
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

log = logging.getLogger(__name__)

PERIOD_SECONDS = 30 * 24 * 3600
DELIVERY_ATTEMPTS = 4
DELIVERY_PAUSE_SECONDS = 2.0

Json = dict[str, Any]


class StripeError(Exception):
    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str = ""
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = (
            "idempotency_error"
            if self.code == "idempotency_key_in_use"
            else "invalid_request_error"
        )
        error: Json = {"type": kind, "message": self.message}
        if self.param:
            error["param"] = self.param
        if self.code:
            error["code"] = self.code
        return JSONResponse({"error": error}, status_code=self.status)


def missing(kind: str, object_id: str) -> StripeError:
    return StripeError(404, f"No such {kind}: '{object_id}'", param="id", code="resource_missing")


def parse_form(pairs: list[tuple[str, str]]) -> Json:
    """Stripe's form encoding (`a[b][0][c]=v`) as nested dicts and lists."""
    root: Json = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+|\[\]", key)
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt = None if last else parts[i + 1]
            child_default: Any = [] if nxt == "[]" else {}
            if part == "[]":
                node.append(value if last else child_default)
                node = node[-1]
                continue
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, child_default)
    return {k: _lists(v) for k, v in root.items()}


def _lists(value: Any) -> Any:
    """`{"0": a, "1": b}` (how the SDK sends lists) as `[a, b]`."""
    if isinstance(value, dict):
        value = {k: _lists(v) for k, v in value.items()}
        if value and all(k.isdigit() for k in value):
            return [value[k] for k in sorted(value, key=int)]
    elif isinstance(value, list):
        return [_lists(v) for v in value]
    return value


def _int(params: Json, name: str) -> int:
    try:
        return int(params[name])
    except (KeyError, ValueError):
        raise StripeError(400, f"Invalid integer: {name}", param=name) from None


def _flag(value: Any) -> bool:
    return str(value).lower() in ("true", "1", "yes", "on")


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A `Stripe-Signature` header for this body, as Stripe computes it."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


@dataclass
class Delivery:
    event_id: str
    event_type: str
    status: int | None  # None: no answer
    at: float


@dataclass
class StripeAccount:
    """What one secret key sees."""

    objects: dict[str, Json] = field(default_factory=dict)
    idempotency: dict[str, tuple[str, int, Json]] = field(default_factory=dict)
    endpoint_url: str | None = None
    endpoint_secret: str | None = None
    outage: bool = False
    copies: int = 1
    order: str = "sent"
    hold: bool = False
    held: list[Json] = field(default_factory=list)
    events: list[Json] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)


class StripeSimulator:
    def __init__(self) -> None:
        self.accounts: dict[str, StripeAccount] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._default_url = os.environ.get("SIM_STRIPE_WEBHOOK_URL")
        self._default_secret = os.environ.get("SIM_STRIPE_WEBHOOK_SECRET")
        r = self.router = APIRouter()
        api = self._api
        r.add_api_route("/v1/customers", api(self.create_customer), methods=["POST"])
        r.add_api_route("/v1/customers/{object_id}", api(self.retrieve), methods=["GET"])
        r.add_api_route("/v1/checkout/sessions", api(self.create_session), methods=["POST"])
        r.add_api_route("/v1/checkout/sessions/{object_id}", api(self.retrieve), methods=["GET"])
        r.add_api_route("/v1/subscriptions/{object_id}", api(self.retrieve), methods=["GET"])
        r.add_api_route(
            "/v1/subscriptions/{object_id}", api(self.update_subscription), methods=["POST"]
        )
        r.add_api_route(
            "/v1/subscriptions/{object_id}", api(self.cancel_subscription), methods=["DELETE"]
        )
        r.add_api_route("/v1/invoices", api(self.list_invoices), methods=["GET"])
        r.add_api_route("/v1/invoices/{object_id}", api(self.retrieve), methods=["GET"])
        r.add_api_route(
            "/v1/billing_portal/sessions", api(self.create_portal_session), methods=["POST"]
        )
        # The simulator's own controls (no Stripe equivalent but its dashboard and clocks).
        r.add_api_route("/_simulator/stripe/endpoint", api(self.set_endpoint), methods=["POST"])
        r.add_api_route("/_simulator/stripe/delivery", api(self.set_delivery), methods=["POST"])
        r.add_api_route("/_simulator/stripe/flush", api(self.flush), methods=["POST"])
        r.add_api_route("/_simulator/stripe/outage", api(self.set_outage), methods=["POST"])
        r.add_api_route(
            "/_simulator/stripe/invoices/{object_id}/pay", api(self.pay_invoice), methods=["POST"]
        )
        r.add_api_route("/_simulator/stripe/deliveries", api(self.list_deliveries), methods=["GET"])
        r.add_api_route(
            "/_simulator/stripe/subscriptions/{object_id}/advance",
            api(self.advance_subscription),
            methods=["POST"],
        )
        r.add_api_route(
            "/_simulator/stripe/subscriptions/{object_id}/end",
            api(self.end_subscription),
            methods=["POST"],
        )
        # What a browser sees: the hosted Checkout page and the customer portal.
        r.add_api_route("/checkout/pay/{session_id}", self.pay_page, methods=["GET"])
        r.add_api_route("/checkout/pay/{session_id}", self.pay, methods=["POST"])
        r.add_api_route("/portal/{portal_id}", self.portal_page, methods=["GET"])

    # --- plumbing ----------------------------------------------------------------------

    def _api(self, handler: Any) -> Any:
        """Authenticates the key, parses the form, applies `Idempotency-Key` to POSTs, and
        answers Stripe's error shape."""

        async def endpoint(request: Request) -> Response:
            key = _secret_key(request)
            if key is None:
                return StripeError(401, "You did not provide an API key.").response()
            account = self._account(key)
            if account.outage and request.url.path.startswith("/v1/"):
                return JSONResponse(
                    {"error": {"type": "api_error", "message": "Simulated outage."}},
                    status_code=503,
                )
            params = parse_form(parse_qsl((await request.body()).decode(), keep_blank_values=True))
            params |= parse_form(list(request.query_params.multi_items()))
            idem = request.headers.get("idempotency-key")
            fingerprint = (
                f"{request.method} {request.url.path} {json.dumps(params, sort_keys=True)}"
            )
            if request.method == "POST" and idem and idem in account.idempotency:
                seen, status, body = account.idempotency[idem]
                if seen != fingerprint:
                    return StripeError(
                        400,
                        "Keys for idempotent requests can only be used with the same parameters "
                        "they were first used with.",
                        code="idempotency_key_in_use",
                    ).response()
                return JSONResponse(
                    body, status_code=status, headers={"Idempotent-Replayed": "true"}
                )
            try:
                body = await handler(request, account, params, **request.path_params)
                status = 200
            except StripeError as exc:
                return exc.response()
            if request.method == "POST" and idem:
                account.idempotency[idem] = (fingerprint, status, body)
            return JSONResponse(body, status_code=status)

        return endpoint

    def _account(self, key: str) -> StripeAccount:
        if key not in self.accounts:
            self.accounts[key] = StripeAccount(
                endpoint_url=self._default_url, endpoint_secret=self._default_secret
            )
        return self.accounts[key]

    def _owner(self, object_id: str) -> StripeAccount:
        for account in self.accounts.values():
            if object_id in account.objects:
                return account
        raise missing("object", object_id)

    def _new(self, account: StripeAccount, prefix: str, kind: str, **fields: Any) -> Json:
        object_id = f"{prefix}_{secrets.token_hex(12)}"
        obj: Json = {"id": object_id, "object": kind, "livemode": False}
        obj |= {"created": int(time.time()), **fields}
        account.objects[object_id] = obj
        return obj

    def _get(self, account: StripeAccount, object_id: str, kind: str) -> Json:
        obj = account.objects.get(object_id)
        if obj is None or obj["object"] != kind:
            raise missing(kind.replace("checkout.", "checkout ").replace("_", " "), object_id)
        return obj

    def _expanded(self, account: StripeAccount, obj: Json, params: Json) -> Json:
        out = json.loads(json.dumps(obj))
        for path in params.get("expand") or []:
            target = out
            *parents, leaf = str(path).split(".")
            for part in parents:
                target = target.get(part) or {}
            ref = target.get(leaf)
            if isinstance(ref, str) and ref in account.objects:
                target[leaf] = json.loads(json.dumps(account.objects[ref]))
        return out

    # --- the API ------------------------------------------------------------------------

    async def retrieve(
        self, request: Request, account: StripeAccount, params: Json, object_id: str
    ) -> Json:
        obj = account.objects.get(object_id)
        kind = request.url.path.split("/")[2]
        if obj is None:
            raise missing(kind.rstrip("s"), object_id)
        return self._expanded(account, obj, params)

    async def create_customer(self, request: Request, account: StripeAccount, params: Json) -> Json:
        return self._new(
            account,
            "cus",
            "customer",
            email=params.get("email"),
            name=params.get("name"),
            metadata=params.get("metadata") or {},
        )

    async def create_session(self, request: Request, account: StripeAccount, params: Json) -> Json:
        mode = params.get("mode")
        if mode not in ("payment", "subscription"):
            raise StripeError(400, "Invalid mode: must be payment or subscription", param="mode")
        if not params.get("success_url"):
            raise StripeError(400, "Missing required param: success_url.", param="success_url")
        customer = params.get("customer")
        if customer is not None:
            self._get(account, customer, "customer")
        items = params.get("line_items") or []
        if len(items) != 1:
            raise StripeError(400, "One line item is supported here.", param="line_items")
        price = _price(account, items[0], mode)
        quantity = int(items[0].get("quantity", 1))
        session = self._new(
            account,
            "cs_test",
            "checkout.session",
            mode=mode,
            status="open",
            payment_status="unpaid",
            customer=customer,
            client_reference_id=params.get("client_reference_id"),
            metadata=params.get("metadata") or {},
            subscription_data=params.get("subscription_data") or {},
            amount_total=price["unit_amount"] * quantity,
            currency=price["currency"],
            line_price=price,
            success_url=params["success_url"],
            cancel_url=params.get("cancel_url"),
            subscription=None,
            payment_intent=None,
        )
        session["url"] = f"{str(request.base_url).rstrip('/')}/checkout/pay/{session['id']}"
        return session

    async def update_subscription(
        self, request: Request, account: StripeAccount, params: Json, object_id: str
    ) -> Json:
        sub = self._get(account, object_id, "subscription")
        if sub["status"] == "canceled":
            raise StripeError(400, "A canceled subscription can only update its metadata.")
        if "cancel_at_period_end" in params:
            sub["cancel_at_period_end"] = _flag(params["cancel_at_period_end"])
        if "metadata" in params:
            sub["metadata"] = {**sub["metadata"], **params["metadata"]}
        await self._emit(account, "customer.subscription.updated", sub)
        return sub

    async def cancel_subscription(
        self, request: Request, account: StripeAccount, params: Json, object_id: str
    ) -> Json:
        sub = self._get(account, object_id, "subscription")
        await self._end(account, sub)
        return sub

    async def create_portal_session(
        self, request: Request, account: StripeAccount, params: Json
    ) -> Json:
        customer = params.get("customer")
        if not customer:
            raise StripeError(400, "Missing required param: customer.", param="customer")
        self._get(account, customer, "customer")
        portal = self._new(
            account,
            "bps",
            "billing_portal.session",
            customer=customer,
            return_url=params.get("return_url"),
        )
        portal["url"] = f"{str(request.base_url).rstrip('/')}/portal/{portal['id']}"
        return portal

    # --- paying, and what happens to a subscription later --------------------------------

    async def complete(self, account: StripeAccount, session: Json) -> None:
        """The customer paid: the session completes, a subscription starts (and its first
        invoice is paid) in subscription mode, and the events go out."""
        if session["status"] != "open":
            raise StripeError(400, f"This Checkout session is {session['status']}.")
        if session["customer"] is None:
            customer = self._new(account, "cus", "customer", email=None, name=None, metadata={})
            session["customer"] = customer["id"]
        session["status"] = "complete"
        session["payment_status"] = "paid"
        if session["mode"] == "subscription":
            now = int(time.time())
            price = session["line_price"]
            sub = self._new(
                account,
                "sub",
                "subscription",
                customer=session["customer"],
                status="active",
                cancel_at_period_end=False,
                canceled_at=None,
                ended_at=None,
                metadata=(session["subscription_data"] or {}).get("metadata") or {},
                items={
                    "object": "list",
                    "data": [
                        {
                            "id": f"si_{secrets.token_hex(8)}",
                            "object": "subscription_item",
                            "price": price,
                            "quantity": 1,
                            "current_period_start": now,
                            "current_period_end": now + PERIOD_SECONDS,
                        }
                    ],
                },
                latest_invoice=None,
            )
            session["subscription"] = sub["id"]
            invoice = self._invoice(account, sub, "subscription_create", paid=True)
            await self._emit(account, "customer.subscription.created", sub)
            await self._emit(account, "invoice.paid", invoice)
        else:
            session["payment_intent"] = f"pi_{secrets.token_hex(12)}"
        await self._emit(account, "checkout.session.completed", session)

    def _invoice(self, account: StripeAccount, sub: Json, reason: str, *, paid: bool) -> Json:
        item = sub["items"]["data"][0]
        invoice = self._new(
            account,
            "in",
            "invoice",
            customer=sub["customer"],
            status="paid" if paid else "open",
            billing_reason=reason,
            amount_due=item["price"]["unit_amount"],
            amount_paid=item["price"]["unit_amount"] if paid else 0,
            currency=item["price"]["currency"],
            parent={
                "type": "subscription_details",
                "subscription_details": {"subscription": sub["id"], "metadata": sub["metadata"]},
            },
            lines={
                "object": "list",
                "data": [
                    {
                        "id": f"il_{secrets.token_hex(8)}",
                        "object": "line_item",
                        "amount": item["price"]["unit_amount"],
                        "currency": item["price"]["currency"],
                        "quantity": 1,
                        "parent": {
                            "type": "subscription_item_details",
                            "subscription_item_details": {
                                "subscription": sub["id"],
                                "subscription_item": item["id"],
                                "proration": False,
                            },
                        },
                        "pricing": {
                            "type": "price_details",
                            "price_details": {"price": item["price"]["id"]},
                        },
                        "period": {
                            "start": item["current_period_start"],
                            "end": item["current_period_end"],
                        },
                    }
                ],
            },
        )
        sub["latest_invoice"] = invoice["id"]
        return invoice

    async def advance_subscription(
        self, request: Request, account: StripeAccount, params: Json, object_id: str
    ) -> Json:
        """The subscription's next period begins and its invoice is paid, or (`paid=false`)
        its payment fails and the subscription is past due (Stripe goes on cycling a past
        due subscription)."""
        sub = self._get(account, object_id, "subscription")
        if sub["status"] == "canceled":
            raise StripeError(400, "This subscription is canceled.")
        if sub["cancel_at_period_end"]:
            await self._end(account, sub)
            return sub
        item = sub["items"]["data"][0]
        item["current_period_start"] = item["current_period_end"]
        item["current_period_end"] += PERIOD_SECONDS
        paid = _flag(params.get("paid", True))
        invoice = self._invoice(account, sub, "subscription_cycle", paid=paid)
        sub["status"] = "active" if paid else "past_due"
        await self._emit(account, "invoice.paid" if paid else "invoice.payment_failed", invoice)
        await self._emit(account, "customer.subscription.updated", sub)
        return sub

    async def pay_invoice(
        self, request: Request, account: StripeAccount, params: Json, object_id: str
    ) -> Json:
        """An open invoice is paid (a retried card, say); a past due subscription whose
        latest invoice this is becomes active again."""
        invoice = self._get(account, object_id, "invoice")
        if invoice["status"] != "open":
            raise StripeError(400, f"This invoice is {invoice['status']}.")
        invoice |= {"status": "paid", "amount_paid": invoice["amount_due"]}
        sub_id = invoice["parent"]["subscription_details"]["subscription"]
        sub = self._get(account, sub_id, "subscription")
        await self._emit(account, "invoice.paid", invoice)
        if sub["latest_invoice"] == invoice["id"] and sub["status"] == "past_due":
            sub["status"] = "active"
            await self._emit(account, "customer.subscription.updated", sub)
        return invoice

    async def list_invoices(self, request: Request, account: StripeAccount, params: Json) -> Json:
        found = [
            o
            for o in account.objects.values()
            if o["object"] == "invoice"
            and (
                "subscription" not in params
                or o["parent"]["subscription_details"]["subscription"] == params["subscription"]
            )
            and ("status" not in params or o["status"] == params["status"])
        ]
        found.sort(key=lambda o: (o["created"], o["id"]), reverse=True)
        limit = int(params.get("limit", 10))
        return {
            "object": "list",
            "url": "/v1/invoices",
            "has_more": len(found) > limit,
            "data": found[:limit],
        }

    async def set_outage(self, request: Request, account: StripeAccount, params: Json) -> Json:
        """`on=true`: every API call of this account answers 503 until `on=false`."""
        account.outage = _flag(params.get("on", True))
        return {"outage": account.outage}

    async def end_subscription(
        self, request: Request, account: StripeAccount, params: Json, object_id: str
    ) -> Json:
        sub = self._get(account, object_id, "subscription")
        await self._end(account, sub)
        return sub

    async def _end(self, account: StripeAccount, sub: Json) -> None:
        if sub["status"] == "canceled":
            return
        now = int(time.time())
        sub |= {"status": "canceled", "canceled_at": now, "ended_at": now}
        await self._emit(account, "customer.subscription.deleted", sub)

    # --- the pages ------------------------------------------------------------------------

    async def pay_page(self, session_id: str) -> HTMLResponse:
        try:
            account = self._owner(session_id)
            session = self._get(account, session_id, "checkout.session")
        except StripeError:
            return HTMLResponse("<h1>No such Checkout session</h1>", status_code=404)
        price = session["line_price"]
        what = html.escape(str((price.get("product_data") or {}).get("name", "Oslira")))
        amount = f"{session['amount_total'] / 100:.2f} {session['currency'].upper()}"
        every = " a month" if session["mode"] == "subscription" else ""
        if session["status"] != "open":
            body = f"<p>This session is {html.escape(session['status'])}.</p>"
        else:
            body = (
                f'<form method="post"><button type="submit">Pay {amount}{every}</button></form>'
                "<p>Simulated card: nothing is charged. Paying sends the webhook events.</p>"
            )
        return HTMLResponse(
            f"<!doctype html><title>Checkout (simulated)</title><h1>{what}</h1>"
            f"<p>{amount}{every}</p>{body}"
        )

    async def pay(self, session_id: str) -> Response:
        try:
            account = self._owner(session_id)
            session = self._get(account, session_id, "checkout.session")
            await self.complete(account, session)
        except StripeError as exc:
            return exc.response()
        return RedirectResponse(session["success_url"], status_code=303)

    async def portal_page(self, portal_id: str) -> HTMLResponse:
        try:
            account = self._owner(portal_id)
            portal = self._get(account, portal_id, "billing_portal.session")
        except StripeError:
            return HTMLResponse("<h1>No such portal session</h1>", status_code=404)
        subs = [
            o
            for o in account.objects.values()
            if o["object"] == "subscription" and o["customer"] == portal["customer"]
        ]
        rows = "".join(
            f"<li>{html.escape(s['id'])}: {html.escape(s['status'])}"
            f"{' (ends at period end)' if s['cancel_at_period_end'] else ''}</li>"
            for s in subs
        )
        back = html.escape(str(portal.get("return_url") or ""))
        return HTMLResponse(
            "<!doctype html><title>Billing portal (simulated)</title>"
            f"<h1>Your subscriptions</h1><ul>{rows or '<li>none</li>'}</ul>"
            f'<p><a href="{back}">Back</a></p>'
        )

    # --- events and deliveries ----------------------------------------------------------

    async def _emit(self, account: StripeAccount, event_type: str, obj: Json) -> None:
        snapshot = {k: v for k, v in obj.items() if k not in ("line_price", "subscription_data")}
        event = {
            "id": f"evt_{secrets.token_hex(12)}",
            "object": "event",
            "api_version": "2026-10-28.endive",
            "created": int(time.time()),
            "livemode": False,
            "pending_webhooks": 1,
            "type": event_type,
            "data": {"object": json.loads(json.dumps(snapshot))},
        }
        account.events.append(event)
        account.held.append(event)
        if not account.hold:
            await self._deliver_held(account)

    async def _deliver_held(self, account: StripeAccount) -> None:
        events, account.held = account.held, []
        if account.order == "reverse":
            events.reverse()
        elif account.order == "shuffle":
            random.shuffle(events)
        for event in events:
            await asyncio.gather(*(self._send(account, event) for _ in range(account.copies)))

    async def _send(self, account: StripeAccount, event: Json, attempt: int = 1) -> None:
        if not account.endpoint_url or not account.endpoint_secret:
            return
        payload = json.dumps(event).encode()
        headers = {
            "Content-Type": "application/json",
            "Stripe-Signature": sign(payload, account.endpoint_secret),
        }
        status: int | None = None
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                answer = await client.post(account.endpoint_url, content=payload, headers=headers)
            status = answer.status_code
        except httpx.HTTPError as exc:
            log.warning("delivery of %s failed: %s", event["id"], exc)
        account.deliveries.append(Delivery(event["id"], event["type"], status, time.time()))
        if (status is None or status >= 300) and attempt < DELIVERY_ATTEMPTS:
            task = asyncio.create_task(self._retry(account, event, attempt + 1))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _retry(self, account: StripeAccount, event: Json, attempt: int) -> None:
        await asyncio.sleep(DELIVERY_PAUSE_SECONDS * attempt)
        await self._send(account, event, attempt)

    async def set_endpoint(self, request: Request, account: StripeAccount, params: Json) -> Json:
        account.endpoint_url = params.get("url") or None
        account.endpoint_secret = params.get("secret") or None
        return {"url": account.endpoint_url}

    async def set_delivery(self, request: Request, account: StripeAccount, params: Json) -> Json:
        if "copies" in params:
            account.copies = max(1, _int(params, "copies"))
        if "order" in params:
            if params["order"] not in ("sent", "reverse", "shuffle"):
                raise StripeError(400, "order is sent, reverse or shuffle", param="order")
            account.order = params["order"]
        if "hold" in params:
            account.hold = _flag(params["hold"])
        return {"copies": account.copies, "order": account.order, "hold": account.hold}

    async def flush(self, request: Request, account: StripeAccount, params: Json) -> Json:
        """Delivers the held events now, in the account's order."""
        sent = [e["id"] for e in account.held]
        await self._deliver_held(account)
        return {"delivered": sent}

    async def list_deliveries(self, request: Request, account: StripeAccount, params: Json) -> Json:
        return {
            "events": [{"id": e["id"], "type": e["type"]} for e in account.events],
            "deliveries": [vars(d) for d in account.deliveries],
        }


def _secret_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    key = auth.removeprefix("Bearer ").strip()
    return key if key.startswith(("sk_", "rk_")) else None


def _price(account: StripeAccount, item: Json, mode: str) -> Json:
    """The line item's price: inline `price_data`, or a stored price's id (kept simple:
    the simulator has no price endpoints, so only inline prices are known)."""
    data = item.get("price_data")
    if not isinstance(data, dict):
        raise StripeError(400, "line_items[0][price_data] is required here.", param="line_items")
    try:
        unit_amount = int(data["unit_amount"])
    except (KeyError, ValueError):
        raise StripeError(400, "Invalid unit_amount", param="line_items[0][price_data]") from None
    recurring = data.get("recurring")
    if (mode == "subscription") != isinstance(recurring, dict):
        raise StripeError(
            400, "Subscription mode needs a recurring price, payment mode a one-off price."
        )
    return {
        "id": f"price_{secrets.token_hex(8)}",
        "object": "price",
        "unit_amount": unit_amount,
        "currency": str(data.get("currency", "usd")).lower(),
        "recurring": recurring,
        "product_data": data.get("product_data") or {},
    }
