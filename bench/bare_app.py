"""The reference for ``POST /api/orders`` (and ``POST /api/tickets``): only what the route must
do before its business.

It checks the session cookie (the same JWT verification as the services) and validates the
body with pydantic, then answers 201; no database, no events, no middleware. Served by the same
uvicorn, with the same options, as a service (``ticketing_common.cli``).

    python bench/bare_app.py --port 8001   # JWT_KEY from the environment
"""

from __future__ import annotations

import argparse
import os
import uuid
from decimal import Decimal
from typing import Annotated

import jwt
import uvicorn
from fastapi import Cookie, Depends, FastAPI, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

JWT_KEY = os.environ.get("JWT_KEY", "")


class OrderIn(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    ticket_id: uuid.UUID


class TicketIn(BaseModel):
    title: str = Field(min_length=1, max_length=120)
    price: Decimal = Field(gt=0, le=1000000, decimal_places=2)


async def current_user(session: Annotated[str | None, Cookie()] = None) -> uuid.UUID:
    # async: a plain ``def`` dependency would be run in a worker thread, a cost the route
    # does not have to pay.
    try:
        claims = jwt.decode(
            session or "",
            JWT_KEY,
            algorithms=["HS256"],
            options={"require": ["sub", "email", "iat", "exp"]},
            leeway=30,
        )
        return uuid.UUID(claims["sub"])
    except (jwt.PyJWTError, ValueError, KeyError) as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Not signed in") from exc


UserId = Annotated[uuid.UUID, Depends(current_user)]
app = FastAPI()


@app.post("/api/orders", status_code=status.HTTP_201_CREATED)
async def create_order(body: OrderIn, user_id: UserId) -> dict[str, str]:
    return {"ticketId": str(body.ticket_id), "userId": str(user_id)}


@app.post("/api/tickets", status_code=status.HTTP_201_CREATED)
async def create_ticket(body: TicketIn, user_id: UserId) -> dict[str, str]:
    return {"title": body.title, "price": str(body.price), "userId": str(user_id)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None, access_log=False)
