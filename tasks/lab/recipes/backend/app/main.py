"""The lab's quant backend: /health, /health/db and /register writing to the users table.

Database settings come from the environment (DB_HOST, DB_PORT, DB_NAME, DB_USER and libpq's
PGPASSWORD). Each request opens its own connection, so a role dropped or re-created in PostgreSQL
shows on the next request, as it did in the incident.
"""
import logging
import os

import psycopg2
import psycopg2.errors
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel

log = logging.getLogger("uvicorn.error")
app = FastAPI(title="quant backend (lab)")


def connect():
    return psycopg2.connect(
        host=os.environ.get("DB_HOST", "localhost"),
        port=int(os.environ.get("DB_PORT", "5432")),
        dbname=os.environ.get("DB_NAME", "quant"),
        user=os.environ.get("DB_USER", "quant_user"),
        connect_timeout=5,
    )


class Registration(BaseModel):
    username: str
    email: str | None = None


@app.get("/health")
def health():
    return {"status": "ok"}


@app.get("/health/db")
def health_db():
    try:
        with connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM users")
            (users,) = cur.fetchone()
        return {"database": "ok", "users": users}
    except psycopg2.Error as exc:
        log.error("database unavailable: %s", str(exc).strip())
        return JSONResponse({"database": "error", "error": str(exc).strip()}, status_code=503)


@app.post("/register")
def register(reg: Registration):
    try:
        conn = connect()
    except psycopg2.OperationalError as exc:
        log.error("database unavailable: %s", str(exc).strip())
        return JSONResponse({"detail": "database unavailable"}, status_code=503)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO users (username, email) VALUES (%s, %s) RETURNING id",
                (reg.username, reg.email or f"{reg.username}@example.com"),
            )
            (user_id,) = cur.fetchone()
            cur.execute("INSERT INTO user_sessions (user_id, client) VALUES (%s, 'register')", (user_id,))
        return {"id": user_id, "username": reg.username}
    except psycopg2.errors.UniqueViolation:
        log.warning("Username already exists: %s", reg.username)
        return JSONResponse({"detail": "Username already registered"}, status_code=409)
    finally:
        conn.close()
