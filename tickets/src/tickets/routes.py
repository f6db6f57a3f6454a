from __future__ import annotations

import uuid
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Response, status

from ticketing_common.auth import CurrentUser
from ticketing_common.db import SessionDep
from ticketing_common.errors import error_responses
from tickets import service
from tickets.schemas import TicketIn, TicketOut

router = APIRouter(prefix="/api/tickets", tags=["tickets"])

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


@router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(400, 401))
async def create_ticket(body: TicketIn, user: CurrentUser, session: SessionDep) -> TicketOut:
    ticket = await service.create_ticket(session, user.id, body.title, body.price)
    return TicketOut.model_validate(ticket)


@router.get(
    "",
    responses={
        200: {"description": 'Tickets available to buy; `Link: <...>; rel="next"` if more'},
        **error_responses(400),
    },
)
async def list_tickets(
    response: Response,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, Query(max_length=200, description="from a Link header")] = None,
) -> list[TicketOut]:
    after = service.Cursor.decode(cursor) if cursor is not None else None
    tickets, next_cursor = await service.list_available(session, limit, after)
    if next_cursor is not None:
        # Relative, so it stays right behind any proxy or edge.
        query = urlencode({"limit": limit, "cursor": next_cursor.encode()})
        response.headers["Link"] = f'<{router.prefix}?{query}>; rel="next"'
    return [TicketOut.model_validate(t) for t in tickets]


@router.get("/{ticket_id}", responses=error_responses(400, 404))
async def show_ticket(ticket_id: uuid.UUID, session: SessionDep) -> TicketOut:
    return TicketOut.model_validate(await service.get_ticket(session, ticket_id))


@router.put("/{ticket_id}", responses=error_responses(400, 401, 403, 404))
async def update_ticket(
    ticket_id: uuid.UUID, body: TicketIn, user: CurrentUser, session: SessionDep
) -> TicketOut:
    ticket = await service.update_ticket(session, user.id, ticket_id, body.title, body.price)
    return TicketOut.model_validate(ticket)
