from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response, status
from fastapi.responses import JSONResponse

from orders import service
from orders.schemas import OrderIn, OrderOut, SaleOut
from orders.settings import OrdersSettings
from ticketing_common.auth import CurrentUser
from ticketing_common.clock import utcnow
from ticketing_common.db import SessionDep
from ticketing_common.errors import BadRequestError, error_responses
from ticketing_common.settings import settings_dependency

router = APIRouter(prefix="/api/orders", tags=["orders"])


SettingsDep = Annotated[OrdersSettings, Depends(settings_dependency(OrdersSettings))]
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, as Stripe's keys


async def _idempotency_key(
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Retrying with the same key returns the first answer, not a second order.",
        ),
    ] = None,
) -> str | None:
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        raise BadRequestError(
            "Idempotency-Key must be 1 to 255 printable ASCII characters", field="Idempotency-Key"
        )
    return key


IdempotencyKeyDep = Annotated[str | None, Depends(_idempotency_key)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=OrderOut,
    responses=error_responses(400, 401, 404),
)
async def create_order(
    body: OrderIn,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyDep,
) -> JSONResponse:
    answer = await service.create_order(
        session,
        user.id,
        body,
        expires_at=utcnow() + timedelta(seconds=settings.order_expiration_seconds),
        idempotency_key=idempotency_key,
    )
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else None
    return JSONResponse(answer.body, status_code=answer.status_code, headers=headers)


@router.get("", responses=error_responses(401))
async def list_orders(user: CurrentUser, session: SessionDep) -> list[OrderOut]:
    return await service.list_orders(session, user.id)


@router.get("/sales", responses=error_responses(401))
async def list_sales(user: CurrentUser, session: SessionDep) -> list[SaleOut]:
    """The tickets the caller sells, each available, reserved or sold (declared before
    ``/{order_id}`` so that "sales" is not read as an order id)."""
    return await service.list_sales(session, user.id)


@router.get("/{order_id}", responses=error_responses(400, 401, 403, 404))
async def show_order(order_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> OrderOut:
    return await service.get_order(session, user.id, order_id)


@router.delete(
    "/{order_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(400, 401, 403, 404),
)
async def cancel_order(order_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> None:
    await service.cancel_order(session, order_id, buyer=user.id)
