from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status

from auth.schemas import Credentials, CurrentUserOut, SigninCredentials, UserOut
from auth.service import Passwords, sign_in, sign_up
from auth.settings import AuthSettings
from ticketing_common.auth import (
    OptionalUser,
    UserClaims,
    clear_session_cookie,
    create_session_token,
    set_session_cookie,
)
from ticketing_common.db import SessionDep, SessionmakerDep
from ticketing_common.errors import error_responses
from ticketing_common.settings import settings_dependency

router = APIRouter(prefix="/api/users", tags=["users"])


async def _passwords(request: Request) -> Passwords:
    passwords: Passwords = request.app.state.passwords
    return passwords


async def _client_address(request: Request) -> str:
    # uvicorn has already chosen it: the peer, or what a proxy it trusts (FORWARDED_ALLOW_IPS:
    # the edge, the Ingress) put in X-Forwarded-For. Never read that header here: any client
    # can send one.
    return request.client.host[:64] if request.client else "unknown"


SettingsDep = Annotated[AuthSettings, Depends(settings_dependency(AuthSettings))]
PasswordsDep = Annotated[Passwords, Depends(_passwords)]
ClientAddressDep = Annotated[str, Depends(_client_address)]


def _start_session(response: Response, user: UserOut, settings: AuthSettings) -> None:
    token = create_session_token(UserClaims(id=user.id, email=user.email), settings)
    set_session_cookie(response, token, settings)


@router.post(
    "/signup",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(400),
)
async def signup(
    body: Credentials,
    response: Response,
    session: SessionDep,
    passwords: PasswordsDep,
    settings: SettingsDep,
) -> UserOut:
    user = UserOut.model_validate(await sign_up(session, passwords, body.email, body.password))
    _start_session(response, user, settings)
    return user


@router.post("/signin", responses=error_responses(400, 429))
async def signin(
    body: SigninCredentials,
    response: Response,
    sessionmaker: SessionmakerDep,
    passwords: PasswordsDep,
    settings: SettingsDep,
    client: ClientAddressDep,
) -> UserOut:
    user = UserOut.model_validate(
        await sign_in(sessionmaker, passwords, settings, body.email, body.password, client)
    )
    _start_session(response, user, settings)
    return user


@router.post("/signout")
async def signout(response: Response, settings: SettingsDep) -> dict[str, str]:
    clear_session_cookie(response, settings)
    return {}


@router.get("/currentuser")
async def current_user(user: OptionalUser) -> CurrentUserOut:
    return CurrentUserOut(current_user=UserOut(id=user.id, email=user.email) if user else None)
