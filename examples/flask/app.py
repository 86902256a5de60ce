"""A Flask app that enqueues jobs from its views, on a connection pool.

* ``POST /signups`` ``{"email": ..., "fail": false}``: inserts the signup and enqueues
  its welcome mail on the same pooled connection, in one transaction (``enqueue`` with
  ``connection=``): with ``"fail": true`` it raises after enqueueing and both roll back.
* ``POST /newsletter``: enqueues a job alone, straight on the pool (``pool=``).
* ``GET /signups``: the signups and whether they were welcomed.

One psycopg_pool ``ConnectionPool`` for the process: no request opens a connection of
its own.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

from flask import Flask, jsonify, request
from jobs import send_newsletter, send_welcome
from psycopg_pool import ConnectionPool

pool = ConnectionPool(os.environ["DJMASTER_DATABASE_URL"], min_size=1, max_size=4, open=True)
atexit.register(pool.close)
with pool.connection() as conn:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS signups (id bigserial PRIMARY KEY, email text NOT NULL,"
        " welcomed_at timestamptz)"
    )

app = Flask(__name__)


class PaymentDeclined(Exception):
    pass


@app.post("/signups")
def sign_up() -> Any:
    body = request.get_json(force=True)
    try:
        with pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "INSERT INTO signups (email) VALUES (%s) RETURNING id", (body["email"],)
            ).fetchone()
            assert row is not None
            # The job joins this transaction: it exists only if the signup does.
            job_id = send_welcome.enqueue([row[0]], connection=conn)
            if body.get("fail"):
                raise PaymentDeclined(f"signup of {body['email']} declined")
    except PaymentDeclined as exc:
        return jsonify(error=str(exc), rolled_back=True), 402
    return jsonify(signup=row[0], job=job_id), 201


@app.post("/newsletter")
def newsletter() -> Any:
    # No transaction of our own: the statement borrows a pooled connection, commits.
    return jsonify(job=send_newsletter.enqueue(["2026-12"], pool=pool)), 201


@app.get("/signups")
def signups() -> Any:
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT id, email, welcomed_at IS NOT NULL FROM signups ORDER BY id"
        ).fetchall()
    return jsonify([{"id": r[0], "email": r[1], "welcomed": r[2]} for r in rows])
