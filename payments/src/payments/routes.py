from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, status

from payments.providers import PaymentProvider
from payments.schemas import PaymentIn, PaymentOut
from payments.service import create_payment
from payments.settings import PaymentsSettings
from ticketing_common.auth import CurrentUser
from ticketing_common.db import SessionmakerDep
from ticketing_common.errors import error_responses
from ticketing_common.settings import settings_dependency

router = APIRouter(prefix="/api/payments", tags=["payments"])


async def _provider(request: Request) -> PaymentProvider:
    provider: PaymentProvider = request.app.state.payment_provider
    return provider


ProviderDep = Annotated[PaymentProvider, Depends(_provider)]
SettingsDep = Annotated[PaymentsSettings, Depends(settings_dependency(PaymentsSettings))]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(400, 401, 402, 403, 404, 503),
    summary="Pay for an order (idempotent per order: never charged twice)",
)
async def pay(
    body: PaymentIn,
    user: CurrentUser,
    sessionmaker: SessionmakerDep,
    provider: ProviderDep,
    settings: SettingsDep,
) -> PaymentOut:
    payment = await create_payment(
        sessionmaker, provider, user, body.order_id, body.token, settings.currency
    )
    return PaymentOut.model_validate(payment)
