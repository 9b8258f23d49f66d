"""Database engines and sessions: one engine and one sessionmaker per process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def create_db_engine(url: str, pre_ping: bool = True, **options: Any) -> Engine:
    """An engine for `url`, tuned for many short transactions from many processes.

    `pre_ping` tests each connection before use (a round trip): workers hold connections for
    hours. The API turns it off, for speed: after a database restart its first request on a
    stale connection answers 503 and SQLAlchemy replaces the whole pool.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **options)
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    # pre_ping: a worker holds its pool for hours; connections dropped by a database restart
    # must be replaced, not handed to the next state change.
    # A database that is down must fail a request within seconds, not hang it.
    connect_args = {"connect_timeout": 5} if parsed.get_backend_name() == "postgresql" else {}
    return create_engine(url, pool_pre_ping=pre_ping, connect_args=connect_args, **options)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while a worker writes progress; the busy timeout makes writers
    # from several processes wait for each other instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    """The sessionmaker for `engine`; callers own each session's lifetime."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def changed_rows(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE changed: its cursor's count. Session.execute is typed
    as returning the base Result, which has none; a DML statement's result is a CursorResult."""
    assert isinstance(result, CursorResult)
    return result.rowcount
