"""Build the console around a test database and sign people in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from campaigns import users
from campaigns.attempts.pipeline import Pipeline
from campaigns.db import session_factory
from campaigns.settings import Settings
from campaigns.telephony.pacing.local_pacer import LocalPacer
from console.app import create_app
from simulator.testing import TEST_API_SECRET

REPORT_SECRET = "report-secret-for-console-tests"
PASSWORD = "correct horse battery staple"


def console_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "report_secret": SecretStr(REPORT_SECRET),
        "livekit_api_key": "devkey",
        "livekit_api_secret": SecretStr(TEST_API_SECRET),
        "login_max_failures": 3,
    }
    return Settings(**(values | overrides))


@dataclass
class Console:
    client: TestClient
    sessions: sessionmaker[Session]
    pipeline: Pipeline

    def add_user(self, email: str, role: str, *clinics: str) -> str:
        with self.sessions() as session:
            users.add_user(session, email, role, PASSWORD, clinic_names=clinics, actor="test")
            session.commit()
        return email

    def token(self, email: str, *, lifetime: timedelta = timedelta(hours=1)) -> str:
        with self.sessions() as session:
            user = users.get_user(session, email)
            token, _ = users.open_session(session, user, users.API, datetime.now(UTC), lifetime)
            session.commit()
        return token

    def auth(self, email: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(email)}"}


@contextmanager
def running_console(engine: Engine, **settings: Any) -> Iterator[Console]:
    url = engine.url.render_as_string(hide_password=False)
    sessions = session_factory(engine)
    pipeline = Pipeline(
        sessions=sessions, settings=console_settings(url, **settings), pacer=LocalPacer()
    )
    with TestClient(create_app(pipeline)) as client:
        yield Console(client, sessions, pipeline)
