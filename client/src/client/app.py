"""The web client's app: pages, static files, health, and what every response gets.

Each request gets its language, a CSP nonce, the signed-in user (from the session cookie,
verified with the shared ``JWT_KEY``) and the security headers. Every failure becomes a page:
a refused form, a page that does not exist, a service that is down, anything unexpected.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlencode

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from client import i18n
from client.api import TIMEOUT, ApiError, ServiceDownError
from client.csrf import CSRF_COOKIE, CsrfRefusedError
from client.i18n import N_
from client.i18n import gettext as _
from client.routes import SignInRequiredError, router
from client.security import new_nonce, security_headers
from client.settings import ClientSettings
from client.templating import STATIC_DIGESTS, STATIC_DIR, render
from ticketing_common.auth import SESSION_COOKIE, decode_session_token
from ticketing_common.http import outbound_client
from ticketing_common.observability import RequestIdMiddleware

log = logging.getLogger(__name__)

IMMUTABLE = "public, max-age=31536000, immutable"


def create_app(settings: ClientSettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with outbound_client(timeout=TIMEOUT) as http:
            app.state.http = http
            yield

    app = FastAPI(
        title="Ticketing", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.settings = settings
    app.include_router(router)
    _install_error_pages(app)

    @app.middleware("http")
    async def every_page(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        language = i18n.choose_language(
            request.cookies.get(i18n.LANGUAGE_COOKIE), request.headers.get("accept-language")
        )
        i18n.set_language(language)
        request.state.nonce = new_nonce()
        token = request.cookies.get(SESSION_COOKIE)
        request.state.user = decode_session_token(token, settings) if token else None
        try:
            response = await call_next(request)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            response = _error_page(request, 500)
        response.headers.update(security_headers(request.state.nonce, settings))
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["Vary"] = "Cookie, Accept-Language"
        if new_secret := getattr(request.state, "new_csrf_secret", None):
            response.set_cookie(
                CSRF_COOKIE,
                new_secret,
                httponly=True,
                secure=settings.cookie_secure,
                samesite="lax",
                path="/",
            )
        return response

    # Outermost: a request id on every response and log line, as in every service.
    app.add_middleware(RequestIdMiddleware)

    @app.get("/static/{digest}/{name}", include_in_schema=False)
    async def static(digest: str, name: str) -> FileResponse:
        if STATIC_DIGESTS.get(name) != digest:
            raise StarletteHTTPException(404)
        return FileResponse(STATIC_DIR / name, headers={"Cache-Control": IMMUTABLE})

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        # The client owns no database and no connection: started is ready. A service that is
        # down shows as the "try again" page, not as the client being unready.
        return JSONResponse({"status": "ready"})

    return app


# A refused form is a 403 too, but says what to do about it.
FORM_EXPIRED = (
    N_("This form has expired"),
    N_(
        "For your safety, a form works only on the page it came from. Reload the page and try "
        "again."
    ),
)
NOT_FOUND = (
    N_("Page not found"),
    N_("There is nothing at this address. It may have been removed."),
)
ERROR_PAGES = {
    400: (N_("Something is wrong with that request"), N_("Go back and check what you sent.")),
    403: (N_("Not yours"), N_("This page belongs to someone else.")),
    404: NOT_FOUND,
    405: NOT_FOUND,
    500: (
        N_("Something went wrong"),
        N_("We could not show this page. Please try again in a moment."),
    ),
    503: (
        N_("Something is down"),
        N_("Part of the site is not answering right now. Please try again in a moment."),
    ),
}


def _error_page(
    request: Request, status_code: int, page: tuple[str, str] | None = None
) -> Response:
    title, explanation = page or ERROR_PAGES.get(status_code, ERROR_PAGES[400])
    response = render(
        request, "error.html", status_code, title=_(title), explanation=_(explanation)
    )
    if status_code == 503:
        response.headers["Retry-After"] = "5"
    return response


def _install_error_pages(app: FastAPI) -> None:
    async def service_down(request: Request, exc: Exception) -> Response:
        log.warning("service down: %s", exc)
        return _error_page(request, 503)

    async def sign_in_first(request: Request, exc: Exception) -> Response:
        # Back here after signing in (to a page, that is: a form's action is no page).
        back = request.url.path if request.method == "GET" else "/"
        return RedirectResponse(f"/auth/signin?{urlencode({'next': back})}", status_code=303)

    async def api_error(request: Request, exc: Exception) -> Response:
        """A refusal no page handled itself: send the person where it makes sense."""
        assert isinstance(exc, ApiError)
        if exc.status_code == 401:  # signed in, but the session expired since
            return await sign_in_first(request, exc)
        return _error_page(request, exc.status_code if exc.status_code in ERROR_PAGES else 400)

    async def csrf_refused(request: Request, exc: Exception) -> Response:
        return _error_page(request, 403, FORM_EXPIRED)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return _error_page(request, exc.status_code if exc.status_code in ERROR_PAGES else 400)

    async def invalid_request(request: Request, exc: Exception) -> Response:
        # A malformed id in a path is a page that does not exist; anything else is a bad request.
        assert isinstance(exc, RequestValidationError)
        in_path = any(error.get("loc", ("",))[0] == "path" for error in exc.errors())
        return _error_page(request, 404 if in_path else 400)

    app.add_exception_handler(SignInRequiredError, sign_in_first)
    app.add_exception_handler(ServiceDownError, service_down)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(CsrfRefusedError, csrf_refused)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
