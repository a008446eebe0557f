"""Schema migrations, run programmatically (``campaigns db upgrade``) or by ``alembic``."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from campaigns.db import make_engine


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", "campaigns:migrations")
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def check(url: str) -> None:
    """Raise when the models and the migrations disagree (schema drift)."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.check(config)
    finally:
        engine.dispose()
