"""Every setting of the engine, read from the environment in one place.

Engine settings use the ``CAMPAIGNS_`` prefix; the LiveKit credentials keep the
names LiveKit's own tools use (``LIVEKIT_URL``, ``LIVEKIT_API_KEY``,
``LIVEKIT_API_SECRET``) so one environment serves the engine and the agent.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DATA_DIR = Path.cwd() / ".campaigns"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAMPAIGNS_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default=f"sqlite:///{DATA_DIR / 'campaigns.db'}",
        description="SQLAlchemy URL; PostgreSQL as postgresql+psycopg://user@host/db.",
    )
    broker_url: str = Field(
        default=f"sqla+sqlite:///{DATA_DIR / 'broker.db'}",
        description="Celery broker; redis://host:6379/0 in production.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for pacing shared by all workers; in-process pacing when unset.",
    )
    report_secret: SecretStr = Field(
        default=SecretStr("change-me-report-secret"),
        description="Signs the per-attempt token the agent presents with its outcome report.",
    )
    livekit_url: str = Field(
        default="http://127.0.0.1:7880",
        validation_alias=AliasChoices("LIVEKIT_URL", "CAMPAIGNS_LIVEKIT_URL"),
    )
    livekit_api_key: str = Field(
        default="devkey",
        validation_alias=AliasChoices("LIVEKIT_API_KEY", "CAMPAIGNS_LIVEKIT_API_KEY"),
    )
    livekit_api_secret: SecretStr = Field(
        default=SecretStr("secret"),
        validation_alias=AliasChoices("LIVEKIT_API_SECRET", "CAMPAIGNS_LIVEKIT_API_SECRET"),
    )
    livekit_trunk_id: str | None = Field(
        default=None,
        validation_alias=AliasChoices("LIVEKIT_SIP_TRUNK_ID", "CAMPAIGNS_LIVEKIT_TRUNK_ID"),
        description="Outbound trunk used for clinics that name none.",
    )
    agent_name: str = Field(default="appointment-confirmer", description="Agent dispatched per call.")
    ringing_timeout_seconds: int = Field(default=30, ge=15)
    max_call_duration_seconds: int = Field(default=300, ge=30)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
