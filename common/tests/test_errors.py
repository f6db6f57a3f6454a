"""Every error, ours or FastAPI's, leaves in the one shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI
from pydantic import Field

from ticketing_common.errors import (
    BadRequestError,
    ForbiddenError,
    TooManyRequestsError,
    install_error_handlers,
)
from ticketing_common.models import CamelModel, Money
from ticketing_common.observability import RequestIdMiddleware


class Body(CamelModel):
    title: str = Field(min_length=1)
    unit_price: Money


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)

    @app.post("/things")
    async def create(body: Body) -> Body:
        return body

    @app.get("/forbidden")
    async def forbidden() -> None:
        raise ForbiddenError("Not your thing")

    @app.get("/slow-down")
    async def slow_down() -> None:
        raise TooManyRequestsError(retry_after=30)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_validation_error_is_400_with_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/things", json={"title": "", "unitPrice": "1.234"})
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert {e["field"] for e in errors} == {"title", "unitPrice"}
    assert all(e["message"] for e in errors)


async def test_invalid_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/things", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["message"] == "Request body is not valid JSON"


async def test_money_is_exact_and_a_string_on_the_wire(client: httpx.AsyncClient) -> None:
    response = await client.post("/things", json={"title": "x", "unitPrice": 0.1})
    assert response.status_code == 200
    assert response.json()["unitPrice"] == "0.10"
    assert Body.model_validate({"title": "x", "unitPrice": "19.99"}).unit_price == Decimal("19.99")


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        pytest.param("GET", "/forbidden", 403, "Not your thing", id="app-error"),
        pytest.param("GET", "/nowhere", 404, "Not found", id="unknown-route"),
        pytest.param("DELETE", "/things", 405, "Method not allowed", id="unknown-method"),
    ],
)
async def test_error_keeps_its_status_and_message(
    client: httpx.AsyncClient, method: str, path: str, status: int, message: str
) -> None:
    response = await client.request(method, path)
    assert response.status_code == status
    assert response.json() == {"errors": [{"message": message}]}


async def test_too_many_requests_says_when_to_retry(client: httpx.AsyncClient) -> None:
    response = await client.get("/slow-down")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"


async def test_unexpected_error_is_500_without_internals(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = await client.get("/boom", headers={"X-Request-Id": "trace-500"})
    assert response.status_code == 500
    assert response.json() == {"errors": [{"message": "Something went wrong"}]}
    assert "hunter2" not in response.text and "Traceback" not in response.text
    # The failure can be found in the logs by the id the caller saw.
    assert response.headers["x-request-id"] == "trace-500"
    (record,) = [r for r in caplog.records if r.name == "ticketing.errors"]
    assert record.exc_info is not None and "hunter2" in str(record.exc_info[1])
    assert "GET /boom" in record.getMessage()


@pytest.mark.parametrize("given", ["", "x" * 65, "bad id with spaces", "é"])
async def test_unusable_request_ids_are_replaced(client: httpx.AsyncClient, given: str) -> None:
    # Raw bytes, as a client may send anything (httpx would refuse a non-ASCII str).
    headers = [(b"X-Request-Id", given.encode())]
    response = await client.get("/forbidden", headers=headers)
    assert response.headers["x-request-id"] != given
    assert len(response.headers["x-request-id"]) == 32


async def test_openapi_documents_validation_errors_as_400_in_the_common_shape(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    responses = document["paths"]["/things"]["post"]["responses"]
    assert "422" not in responses
    schema = responses["400"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["errors"]
    assert "HTTPValidationError" not in document["components"]["schemas"]


class BadCursorError(BadRequestError):
    message = "Bad cursor"
    field = "cursor"


def test_an_error_class_may_name_its_field_once_for_every_raise() -> None:
    assert BadCursorError().errors() == [{"message": "Bad cursor", "field": "cursor"}]
    assert BadCursorError(field="after").errors() == [{"message": "Bad cursor", "field": "after"}]
    assert BadRequestError().errors() == [{"message": "Bad request"}]
