"""One error type per case, one handler that shapes them all.

Every error response is ``{"errors": [{"message": ..., "field": ...}]}`` (``field`` only where
one field is at fault). Raise an :class:`AppError` subclass from anywhere in a request; FastAPI's
own validation errors, unknown routes and unexpected exceptions are shaped the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ticketing_common.db import connection_lost


class AppError(Exception):
    status_code = 500
    message = "Something went wrong"
    # The request field at fault, where one is (a subclass may fix it for every raise).
    field: str | None = None
    # Seconds, sent as Retry-After: when asking again may succeed.
    retry_after: int | None = None

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        self.message = message or type(self).message
        self.field = field or type(self).field
        super().__init__(self.message)

    def errors(self) -> list[dict[str, str]]:
        return [error_item(self.message, self.field)]


class BadRequestError(AppError):
    status_code = 400
    message = "Bad request"


class NotAuthorizedError(AppError):
    status_code = 401
    message = "Not authorized"


class PaymentRequiredError(AppError):
    status_code = 402
    message = "Payment declined"


class ForbiddenError(AppError):
    status_code = 403
    message = "Forbidden"


class NotFoundError(AppError):
    status_code = 404
    message = "Not found"


class TooManyRequestsError(AppError):
    status_code = 429
    message = "Too many requests"

    def __init__(self, message: str | None = None, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailableError(AppError):
    """The database is out of reach (restarting, or the connection died mid-request)."""

    status_code = 503
    message = "The service is unavailable; try again shortly"
    retry_after = 1


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps (SQLAlchemy's ``orig``, causes and contexts)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        link = pending.pop()
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        orig = getattr(link, "orig", None)
        pending += [link.__cause__, link.__context__]
        if isinstance(orig, BaseException):
            pending.append(orig)


def database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says the database is out of reach, not that a query was wrong."""
    return any(connection_lost(link) for link in _causes(exc))


def error_item(message: str, field: str | None = None) -> dict[str, str]:
    return {"message": message} | ({"field": field} if field else {})


def error_response(
    status_code: int, errors: Sequence[dict[str, str]], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"errors": list(errors)}, status_code=status_code, headers=headers)


def _field_of(loc: Sequence[Any]) -> str | None:
    # ("body", "price") -> "price"; ("query", "limit") -> "limit"; ("body",) -> None
    parts = [str(p) for p in loc[1:] if not isinstance(p, int)]
    return ".".join(parts) or None


def _validation_message(error: dict[str, Any]) -> str:
    if error.get("type") == "json_invalid":
        return "Request body is not valid JSON"
    if error.get("type") == "missing":
        return "Field required"
    message = str(error.get("msg", "Invalid value"))
    return message.removeprefix("Value error, ")


def app_error_response(exc: AppError) -> JSONResponse:
    headers = None if exc.retry_after is None else {"Retry-After": str(exc.retry_after)}
    return error_response(exc.status_code, exc.errors(), headers)


async def _app_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return app_error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    items = [error_item(_validation_message(e), _field_of(e.get("loc", ()))) for e in exc.errors()]
    return error_response(400, items)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, str(exc.detail))
    return error_response(exc.status_code, [error_item(message)], exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Shape every error: ours, FastAPI's validation errors and unknown routes. Anything
    unexpected is answered by ``observability.RequestIdMiddleware`` (so the answer carries the
    request id): a 503 if the database is out of reach (``database_unavailable``), else a 500;
    the app factory installs both."""
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    _document_error_shape(app)


def _document_error_shape(app: FastAPI) -> None:
    """OpenAPI as the service really answers: FastAPI documents a 422 ``{detail}`` for every
    route with input, but a validation error here is a 400 in the common shape."""
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = default_openapi()
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.get("responses", {})
                if responses.pop("422", None) is not None:
                    responses.setdefault("400", error_responses(400)[400])
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# Documents the error shape in every service's OpenAPI.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"message": {"type": "string"}, "field": {"type": "string"}},
                "required": ["message"],
            },
        }
    },
    "required": ["errors"],
}


def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each listed status documented with the common error shape."""
    return {
        code: {"description": "Error", "content": {"application/json": {"schema": ERROR_SCHEMA}}}
        for code in status_codes
    }
