"""A FastAPI app that enqueues jobs from its async endpoints, on a connection pool.

* ``POST /signups`` ``{"email": ..., "fail": false}``: inserts the signup and enqueues
  its welcome mail on the same pooled connection, in one transaction (``aenqueue`` with
  ``connection=``): with ``"fail": true`` it raises after enqueueing and both roll back.
* ``POST /newsletter``: enqueues a job alone, straight on the pool (``pool=``): the
  statement borrows a connection and commits at once.
* ``GET /signups``: the signups and whether they were welcomed.

The pool (psycopg_pool's ``AsyncConnectionPool``) opens with the app and closes with it;
no request opens a connection of its own.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from jobs import send_newsletter, send_welcome
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

pool = AsyncConnectionPool(os.environ["DJMASTER_DATABASE_URL"], min_size=1, max_size=4, open=False)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await pool.open(wait=True)
    async with pool.connection() as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS signups (id bigserial PRIMARY KEY, email text NOT NULL,"
            " welcomed_at timestamptz)"
        )
    yield
    await pool.close()


app = FastAPI(lifespan=lifespan)


class SignUp(BaseModel):
    email: str
    fail: bool = False


class PaymentDeclined(Exception):
    pass


@app.post("/signups", status_code=201)
async def sign_up(signup: SignUp) -> Any:
    async with pool.connection() as conn:
        try:
            async with conn.transaction():
                cursor = await conn.execute(
                    "INSERT INTO signups (email) VALUES (%s) RETURNING id", (signup.email,)
                )
                row = await cursor.fetchone()
                assert row is not None
                # The job joins this transaction: it exists only if the signup does.
                job_id = await send_welcome.aenqueue([row[0]], connection=conn)
                if signup.fail:
                    raise PaymentDeclined(f"signup of {signup.email} declined")
        except PaymentDeclined as exc:
            return JSONResponse({"error": str(exc), "rolled_back": True}, status_code=402)
    return {"signup": row[0], "job": job_id}


@app.post("/newsletter", status_code=201)
async def newsletter() -> dict[str, int]:
    # No transaction of our own: the statement borrows a pooled connection, commits.
    return {"job": await send_newsletter.aenqueue(["2026-12"], pool=pool)}


@app.get("/signups")
async def signups() -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT id, email, welcomed_at IS NOT NULL FROM signups ORDER BY id"
        )
        rows = await cursor.fetchall()
    return [{"id": r[0], "email": r[1], "welcomed": r[2]} for r in rows]
