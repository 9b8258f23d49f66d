"""What every request reaches (`Services`, made once by `create_app`) and the per-request
database session (flaskr's `db.py`): opened on first use in a request, closed when the request
ends. Routes import both from here, so no blueprint imports another and none imports upward
from `api/__init__`."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import Flask, current_app, g
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import Settings
from shared.storage import Storage


@dataclass(frozen=True)
class Services:
    """What every request handler reaches: settings, database, storage, queue."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Storage
    celery: Celery


def services() -> Services:
    """This app's settings, database, storage and queue."""
    services: Services = current_app.extensions["oneiro"]
    return services


def get_db() -> Session:
    """This request's session, closed when the request ends."""
    if "db" not in g:
        g.db = services().sessions()
    session: Session = g.db
    return session


def close_db(_exc: BaseException | None = None) -> None:
    """Close this request's session, if it opened one."""
    session = g.pop("db", None)
    if session is not None:
        session.close()


def init_app(app: Flask) -> None:
    """Close each request's session when the request ends."""
    app.teardown_appcontext(close_db)
