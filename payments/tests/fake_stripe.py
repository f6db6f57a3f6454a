"""A local stand-in for the part of Stripe's HTTP API the stripe provider uses.

It behaves like Stripe where our code depends on it (idempotent replays, a PaymentIntent paid at
most once, single-use PaymentMethods, the minimum charge, test tokens, card errors, cancel,
refunds) and records every request so tests can check what our code sent. ``down`` makes it
answer every request with a 500 (an outage), ``delay`` makes it slow to answer. It listens on
127.0.0.1 in the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ticketing_common.embedded import free_port


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]


def _error(status: int, type_: str, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"error": {"type": type_, "code": code, "message": message, **extra}}, status
    )


@dataclass
class FakeStripe:
    requests: list[Recorded] = field(default_factory=list)
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)  # PaymentMethod id -> card token
    # A PaymentMethod not attached to a Customer pays one PaymentIntent only: id -> that intent.
    method_used_by: dict[str, str] = field(default_factory=dict)
    refunds: list[dict[str, Any]] = field(default_factory=list)
    _replays: dict[tuple[str, str], tuple[int, bytes]] = field(default_factory=dict)
    url: str = ""
    down: bool = False
    delay: float = 0.0
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def captures(self) -> list[str]:
        return [i["id"] for i in self.intents.values() if i["captured"]]

    def calls(self, method: str, path_prefix: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    async def _dispatch(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        self.requests.append(
            Recorded(
                request.method,
                request.url.path,
                {k.lower(): v for k, v in request.headers.items()},
                form,
            )
        )
        if self.delay:
            with contextlib.suppress(TimeoutError):  # cut short when the fake shuts down
                await asyncio.wait_for(self._closing.wait(), self.delay)
        if self.down:
            return _error(500, "api_error", "", "An unknown error occurred (fake outage)")
        if not request.headers.get("authorization", "").startswith("Bearer sk_test_"):
            return _error(401, "invalid_request_error", "api_key_invalid", "Invalid API Key")
        key = request.headers.get("idempotency-key")
        if request.method == "POST" and key and (request.url.path, key) in self._replays:
            status, body = self._replays[(request.url.path, key)]
            return Response(
                body, status, media_type="application/json", headers={"Idempotent-Replayed": "true"}
            )
        response = self._handle(request.method, request.url.path, form)
        if request.method == "POST" and key:
            self._replays[(request.url.path, key)] = (response.status_code, bytes(response.body))
        # As a load balancer in front of an API may: our client must never send it back.
        response.set_cookie("lb-affinity", f"node-{len(self.requests)}")
        return response

    def _handle(self, method: str, path: str, form: dict[str, str]) -> JSONResponse:
        parts = path.strip("/").split("/")  # v1, payment_intents, {id}, confirm
        if parts[:2] == ["v1", "payment_intents"]:
            if method == "POST" and len(parts) == 2:
                return self._create(form)
            intent = self.intents.get(parts[2])
            if intent is None:
                return _error(
                    404, "invalid_request_error", "resource_missing", "No such payment_intent"
                )
            if method == "GET":
                return JSONResponse(self._public(intent))
            if parts[3:] == ["confirm"]:
                return self._confirm(intent, form)
            if parts[3:] == ["cancel"]:
                if intent["status"] in ("succeeded", "canceled"):
                    return self._unexpected_state(intent)
                intent["status"] = "canceled"
                return JSONResponse(self._public(intent))
        if parts == ["v1", "payment_methods"] and method == "POST":
            token = form.get("card[token]", "")
            if form.get("type") != "card" or not token.startswith(
                ("tok_visa", "tok_chargeDeclined")
            ):
                return _error(
                    400,
                    "invalid_request_error",
                    "resource_missing",
                    f"No such token: '{token}'",
                    param="card[token]",
                )
            method_id = f"pm_{uuid.uuid4().hex[:24]}"
            self.methods[method_id] = token
            return JSONResponse({"id": method_id, "object": "payment_method", "type": "card"})
        if parts == ["v1", "refunds"] and method == "POST":
            intent = self.intents.get(form.get("payment_intent", ""))
            if intent is None or intent["status"] != "succeeded":
                return _error(
                    400, "invalid_request_error", "charge_not_refundable", "Not refundable"
                )
            refund = {
                "id": f"re_{uuid.uuid4().hex[:24]}",
                "object": "refund",
                "status": "succeeded",
                "amount": intent["amount"],
                "payment_intent": intent["id"],
            }
            intent["amount_refunded"] = intent["amount"]
            self.refunds.append(refund)
            return JSONResponse(refund)
        return _error(
            404,
            "invalid_request_error",
            "unknown_route",
            f"Unrecognized request URL ({method} {path})",
        )

    def _create(self, form: dict[str, str]) -> JSONResponse:
        if form["currency"] == "usd" and int(form["amount"]) < 50:
            return _error(
                400,
                "invalid_request_error",
                "amount_too_small",
                "Amount must be at least $0.50 usd",
                param="amount",
            )
        intent: dict[str, Any] = {
            "id": f"pi_{uuid.uuid4().hex[:24]}",
            "object": "payment_intent",
            "amount": int(form["amount"]),
            "currency": form["currency"],
            "metadata": {
                k[len("metadata[") : -1]: v for k, v in form.items() if k.startswith("metadata[")
            },
            "status": "requires_payment_method",
            "amount_refunded": 0,
            "captured": False,
        }
        self.intents[intent["id"]] = intent
        return JSONResponse(self._public(intent))

    def _confirm(self, intent: dict[str, Any], form: dict[str, str]) -> JSONResponse:
        if intent["status"] in ("succeeded", "canceled"):
            return self._unexpected_state(intent)
        method = form.get("payment_method", "")
        token = self.methods.get(method)
        if token is None:
            return _error(
                400,
                "invalid_request_error",
                "resource_missing",
                f"No such PaymentMethod: '{method}'",
                param="payment_method",
            )
        used_by = self.method_used_by.setdefault(method, intent["id"])
        if used_by != intent["id"]:
            return _error(
                400,
                "invalid_request_error",
                "payment_method_unexpected_state",
                "The provided PaymentMethod was previously used with a PaymentIntent without "
                "Customer attachment, shared with a connected account without Customer "
                "attachment, or was detached from a Customer. It may not be used again.",
                param="payment_method",
            )
        if token.startswith("tok_chargeDeclined"):
            return _error(
                402,
                "card_error",
                "card_declined",
                "Your card was declined.",
                decline_code="generic_decline",
                payment_intent=self._public(intent),
            )
        intent["status"] = "succeeded"
        intent["captured"] = True
        return JSONResponse(self._public(intent))

    def _unexpected_state(self, intent: dict[str, Any]) -> JSONResponse:
        return _error(
            400,
            "invalid_request_error",
            "payment_intent_unexpected_state",
            f"This PaymentIntent's status is {intent['status']}.",
            payment_intent=self._public(intent),
        )

    @staticmethod
    def _public(intent: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in intent.items() if k != "captured"}

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[FakeStripe]:
        routes = [Route("/{path:path}", self._dispatch, methods=["GET", "POST", "DELETE"])]
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                Starlette(routes=routes),
                host="127.0.0.1",
                port=port,
                log_level="warning",
                lifespan="off",
            )
        )
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            self._closing.set()
            server.should_exit = True
            await task
