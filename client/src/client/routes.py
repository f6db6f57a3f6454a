"""The pages. Each GET renders what the services answer; each POST is a form that the client
turns into an API call, then redirects (post/redirect/get). A refused form is shown again with
the service's messages next to their fields and the input kept.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.responses import RedirectResponse

from client.api import Api, ApiError, Order
from client.csrf import CsrfChecked
from client.i18n import LANGUAGE_COOKIE, LANGUAGES
from client.templating import render
from ticketing_common.auth import SESSION_COOKIE, UserClaims
from ticketing_common.observability import request_id_var

router = APIRouter(include_in_schema=False)

LANGUAGE_COOKIE_SECONDS = 365 * 24 * 3600


class SignInRequiredError(Exception):
    """A page for signed-in people, asked for by someone who is not (sent to sign in)."""


async def _api(request: Request) -> Api:
    return Api(
        request.app.state.http,
        request.app.state.settings,
        request.cookies.get(SESSION_COOKIE),
        request_id_var.get(),
    )


async def _signed_in(request: Request) -> UserClaims:
    user: UserClaims | None = request.state.user
    if user is None:
        raise SignInRequiredError()
    return user


ApiDep = Annotated[Api, Depends(_api)]
SignedIn = Annotated[UserClaims, Depends(_signed_in)]
FormText = Annotated[str, Form(max_length=1000)]


async def _signed_in_form(user: SignedIn, _: CsrfChecked) -> UserClaims:
    """A form only a signed-in person may post: signed in first, then a valid CSRF token."""
    return user


SignedInForm = Annotated[UserClaims, Depends(_signed_in_form)]


@dataclass(frozen=True)
class TicketFields:
    title: str
    price: str


async def _ticket_fields(title: FormText = "", price: FormText = "") -> TicketFields:
    return TicketFields(title, price)


TicketFieldsDep = Annotated[TicketFields, Depends(_ticket_fields)]


def local_path(target: str | None) -> str:
    """Where to go next, if it is a path on this site (never an open redirect)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


def redirect(target: str, api: Api | None = None) -> RedirectResponse:
    """303 to ``target``, passing on the cookies a service set (a session begun or ended)."""
    response = RedirectResponse(target, status_code=303)
    for cookie in api.set_cookies if api else []:
        response.headers.append("set-cookie", cookie)
    return response


def form_page(
    request: Request,
    template: str,
    error: ApiError | None,
    *,
    fields: tuple[str, ...] = (),
    **context: Any,
) -> Response:
    """A page with a form, shown again after a refusal with the status the service answered:
    a message about one of ``fields`` goes next to it, any other above the form."""
    messages = error.errors if error else []
    return render(
        request,
        template,
        error.status_code if error else 200,
        field_errors={e["field"]: e["message"] for e in messages if e.get("field") in fields},
        errors=[e["message"] for e in messages if e.get("field") not in fields],
        **context,
    )


# -- tickets for sale -----------------------------------------------------------------------


@router.get("/")
async def home(
    request: Request, api: ApiDep, cursor: Annotated[str | None, Query(max_length=200)] = None
) -> Response:
    page = await api.tickets_for_sale(cursor)
    return render(request, "index.html", page=page, first_page=cursor is None)


# -- signing up, in and out -----------------------------------------------------------------

AuthMode = Literal["signup", "signin"]


def _auth_page(
    request: Request,
    mode: AuthMode,
    *,
    email: str = "",
    next_path: str = "/",
    error: ApiError | None = None,
) -> Response:
    return form_page(
        request,
        "auth.html",
        error,
        fields=("email", "password"),
        mode=mode,
        email=email,
        next_path=local_path(next_path),
    )


@router.get("/auth/signup")
async def signup_page(request: Request) -> Response:
    return _auth_page(request, "signup")


@router.get("/auth/signin")
async def signin_page(request: Request, next: str = "/") -> Response:
    return _auth_page(request, "signin", next_path=next)


@dataclass(frozen=True)
class Credentials:
    email: str
    password: str
    next: str


async def _credentials(
    email: FormText = "", password: FormText = "", next: FormText = "/"
) -> Credentials:
    return Credentials(email, password, next)


CredentialsDep = Annotated[Credentials, Depends(_credentials)]


async def _sign_up_or_in(request: Request, api: Api, mode: AuthMode, form: Credentials) -> Response:
    try:
        if mode == "signup":
            await api.sign_up(form.email, form.password)
        else:
            await api.sign_in(form.email, form.password)
    except ApiError as error:
        return _auth_page(request, mode, email=form.email, next_path=form.next, error=error)
    return redirect(local_path(form.next), api)


@router.post("/auth/signup")
async def sign_up(request: Request, api: ApiDep, _: CsrfChecked, form: CredentialsDep) -> Response:
    return await _sign_up_or_in(request, api, "signup", form)


@router.post("/auth/signin")
async def sign_in(request: Request, api: ApiDep, _: CsrfChecked, form: CredentialsDep) -> Response:
    return await _sign_up_or_in(request, api, "signin", form)


@router.get("/auth/signout")
async def signout_page(request: Request) -> Response:
    return render(request, "signout.html")


@router.post("/auth/signout")
async def sign_out(api: ApiDep, _: CsrfChecked) -> Response:
    await api.sign_out()
    return redirect("/", api)


# -- selling ---------------------------------------------------------------------------------


def _ticket_form(
    request: Request,
    *,
    ticket_id: uuid.UUID | None = None,
    title: str = "",
    price: str = "",
    reserved: bool = False,
    error: ApiError | None = None,
) -> Response:
    return form_page(
        request,
        "ticket_form.html",
        error,
        fields=("title", "price"),
        ticket_id=ticket_id,
        title=title,
        price=price,
        reserved=reserved,
    )


@router.get("/tickets/new")
async def new_ticket_page(request: Request, _: SignedIn) -> Response:
    return _ticket_form(request)


@router.post("/tickets/new")
async def create_ticket(
    request: Request, api: ApiDep, _: SignedInForm, form: TicketFieldsDep
) -> Response:
    try:
        ticket = await api.create_ticket(form.title, form.price)
    except ApiError as error:
        return _ticket_form(request, title=form.title, price=form.price, error=error)
    return redirect(f"/tickets/{ticket.id}")


@router.get("/tickets/mine")
async def my_tickets(request: Request, api: ApiDep, _: SignedIn) -> Response:
    return render(request, "my_tickets.html", sales=await api.sales())


@router.get("/tickets/{ticket_id}/edit")
async def edit_ticket_page(
    request: Request, ticket_id: uuid.UUID, api: ApiDep, user: SignedIn
) -> Response:
    ticket = await api.ticket(ticket_id)
    if ticket.user_id != user.id:
        raise ApiError(403, [])
    return _ticket_form(
        request,
        ticket_id=ticket.id,
        title=ticket.title,
        price=f"{ticket.price:.2f}",
        reserved=ticket.order_id is not None,
    )


@router.post("/tickets/{ticket_id}/edit")
async def update_ticket(
    request: Request, ticket_id: uuid.UUID, api: ApiDep, _: SignedInForm, form: TicketFieldsDep
) -> Response:
    try:
        await api.update_ticket(ticket_id, form.title, form.price)
    except ApiError as error:
        if error.status_code not in (400, 429):
            raise
        reserved = (await api.ticket(ticket_id)).order_id is not None
        return _ticket_form(
            request,
            ticket_id=ticket_id,
            title=form.title,
            price=form.price,
            reserved=reserved,
            error=error,
        )
    return redirect(f"/tickets/{ticket_id}")


# -- buying ----------------------------------------------------------------------------------


async def _ticket_page(
    request: Request, api: Api, ticket_id: uuid.UUID, error: ApiError | None = None
) -> Response:
    return form_page(
        request,
        "ticket.html",
        error,
        ticket=await api.ticket(ticket_id),
        # One key per page shown: a double click or a retried form makes one order.
        idempotency_key=uuid.uuid4(),
    )


@router.get("/tickets/{ticket_id}")
async def ticket_page(request: Request, ticket_id: uuid.UUID, api: ApiDep) -> Response:
    return await _ticket_page(request, api, ticket_id)


@router.post("/tickets/{ticket_id}/buy")
async def buy(
    request: Request,
    ticket_id: uuid.UUID,
    api: ApiDep,
    _: SignedInForm,
    idempotency_key: FormText = "",
) -> Response:
    try:
        order = await api.create_order(ticket_id, idempotency_key or str(uuid.uuid4()))
    except ApiError as error:
        if error.status_code not in (400, 404, 429):
            raise
        return await _ticket_page(request, api, ticket_id, error)
    return redirect(f"/orders/{order.id}")


@router.get("/orders")
async def my_orders(request: Request, api: ApiDep, _: SignedIn) -> Response:
    return render(request, "orders.html", orders=await api.orders(), now=datetime.now(UTC))


OrderView = Literal["payable", "confirming", "complete", "expired", "cancelled"]


def order_view(order: Order, now: datetime, paid: bool) -> OrderView:
    if order.status == "complete":
        return "complete"
    if order.expires_at <= now:
        return "expired"  # cancelled by its timer, or about to be
    if order.status == "cancelled":
        return "cancelled"
    return "confirming" if paid else "payable"


async def _order_page(
    request: Request, api: Api, order_id: uuid.UUID, paid: bool, error: ApiError | None = None
) -> Response:
    order = await api.order(order_id)
    now = datetime.now(UTC)
    return form_page(
        request,
        "order.html",
        error,
        order=order,
        view=order_view(order, now, paid),
        seconds_left=max(0, int((order.expires_at - now).total_seconds())),
        stripe_key=request.app.state.settings.stripe_publishable_key,
    )


@router.get("/orders/{order_id}")
async def order_page(
    request: Request, order_id: uuid.UUID, api: ApiDep, _: SignedIn, paid: bool = False
) -> Response:
    return await _order_page(request, api, order_id, paid)


@router.post("/orders/{order_id}/pay")
async def pay(
    request: Request,
    order_id: uuid.UUID,
    api: ApiDep,
    _: SignedInForm,
    token: FormText = "",
) -> Response:
    try:
        await api.pay(order_id, token)
    except ApiError as error:
        if error.status_code not in (400, 402, 404, 429):
            raise
        return await _order_page(request, api, order_id, paid=False, error=error)
    return redirect(f"/orders/{order_id}?paid=true")


@router.post("/orders/{order_id}/cancel")
async def cancel(order_id: uuid.UUID, api: ApiDep, _: SignedInForm) -> Response:
    await api.cancel_order(order_id)
    return redirect(f"/orders/{order_id}")


# -- language --------------------------------------------------------------------------------


@router.get("/language/{language}")
async def switch_language(language: str, next: str = "/") -> Response:
    if language not in LANGUAGES:
        raise ApiError(404, [])
    response = redirect(local_path(next))
    response.set_cookie(
        LANGUAGE_COOKIE, language, max_age=LANGUAGE_COOKIE_SECONDS, samesite="lax", path="/"
    )
    return response
