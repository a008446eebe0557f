"""The embedded broker: Celery's SQLAlchemy transport on a SQLite file, minus its leftovers.

Kombu's SQLAlchemy transport marks a consumed message invisible and keeps the
row for ever, with its task arguments (report tokens, an agent's detail). This
transport deletes consumed rows once the message is handed to the worker. A
consumed message is never read from the table again either way: kombu keeps
unacknowledged messages in memory and writes them back as new rows on restore.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import sqlalchemy as kombu_sqlalchemy
from sqlalchemy import delete, text

EMBEDDED_PREFIX = "sqla+"
TRANSPORT = "workers.broker:Transport"


class Channel(kombu_sqlalchemy.Channel):
    def _get(self, queue: Any, timeout: Any = None) -> Any:
        payload = super()._get(queue)  # type: ignore[no-untyped-call]
        session = self.session
        if session.bind.name == "sqlite":
            session.execute(text("BEGIN IMMEDIATE TRANSACTION"))
        try:
            session.execute(delete(self.message_cls).where(self.message_cls.visible.is_(False)))
        finally:
            session.commit()
        return payload


class Transport(kombu_sqlalchemy.Transport):
    Channel = Channel


def celery_broker(broker_url: str) -> dict[str, Any]:
    """Celery settings for ``broker_url``: an ``sqla+`` URL gets this transport.

    Kombu picks its stock transport for a URL with the ``sqla+`` prefix, so the
    prefix is dropped and the transport named instead.
    """
    if not broker_url.startswith(EMBEDDED_PREFIX):
        return {"broker_url": broker_url}
    return {
        "broker_url": broker_url.removeprefix(EMBEDDED_PREFIX),
        "broker_transport": TRANSPORT,
    }
