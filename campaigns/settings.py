"""Every setting of the engine, read from the environment in one place.

Engine settings use the ``CAMPAIGNS_`` prefix; the LiveKit credentials keep the
names LiveKit's own tools use (``LIVEKIT_URL``, ``LIVEKIT_API_KEY``,
``LIVEKIT_API_SECRET``) so one environment serves the engine and the agent.

The secrets have built-in values so the embedded default (a SQLite database)
runs with no set-up; anywhere else :func:`require_secrets` makes the worker,
beat and servers refuse to start until each is set to a real value.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from campaigns.errors import CampaignError

DATA_DIR = Path(".campaigns").absolute()


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
        description="Redis for pacing shared by all workers; unset: the broker when it is "
        "Redis, else in-process pacing and a single worker process.",
    )
    report_secret: SecretStr = Field(
        default=SecretStr("change-me-report-secret"),
        description="Signs the per-attempt token the agent presents with its outcome report.",
    )
    audit_key: SecretStr = Field(
        default=SecretStr("dev-audit-key-for-the-embedded-default-only"),
        description="Keys the audit log's HMAC chain; keep it outside the database.",
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
        # Long enough for HS256; only the local simulator accepts it.
        default=SecretStr("dev-secret-for-the-local-simulator-only"),
        validation_alias=AliasChoices("LIVEKIT_API_SECRET", "CAMPAIGNS_LIVEKIT_API_SECRET"),
    )
    livekit_trunk_id: str | None = Field(
        default=None,
        validation_alias=AliasChoices("LIVEKIT_SIP_TRUNK_ID", "CAMPAIGNS_LIVEKIT_TRUNK_ID"),
        description="Outbound trunk used for clinics that name none.",
    )
    agent_name: str = Field(
        default="appointment-confirmer", description="Agent dispatched per call."
    )
    agent_script_version: str = Field(default="confirm-v1", description="Recorded with every dial.")
    # "local" selects the models of agent.local_models: no cloud, no key, no download.
    agent_llm: str = Field(
        default="openai/gpt-4.1-mini",
        description="The agent's LLM (LiveKit Inference model); local: keyword rules.",
    )
    agent_stt: str = Field(
        default="deepgram/nova-3",
        description="The agent's speech-to-text model; local: pocketsphinx with Silero VAD.",
    )
    agent_tts: str = Field(
        default="cartesia/sonic-2",
        description="The agent's text-to-speech model; local: Debian's espeak-ng.",
    )
    agent_amd_llm: str | None = Field(
        default=None,
        description=(
            "Answering-machine classifier model; unset: the agent's LLM; local: keyword rules."
        ),
    )
    agent_amd_timeout_seconds: float = Field(
        default=8.0, gt=0, description="No AMD verdict by then: the agent talks as to a person."
    )
    agent_max_calls: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Calls one agent worker takes at once, with as many job runners kept warm; unset: "
            "LiveKit's default, the worker takes jobs while its host's CPU is under 70%. Set it "
            "where the CPU is shared with other work (the agent's own load is small with cloud "
            "models)."
        ),
    )
    agent_job_executor: Literal["process", "thread"] = Field(
        default="process",
        description=(
            "How the agent worker runs each call: its own process (LiveKit's default, "
            "isolated) or a thread of the worker (starts at once and shares loaded models: "
            "for local models on a small host)."
        ),
    )
    agent_http_port: int = Field(
        default=8081, ge=0, le=65535, description="The agent worker's health port; 0: any free one."
    )
    ringing_timeout_seconds: int = Field(default=30, ge=15, description="Calls ring 15 s or more.")
    max_call_duration_seconds: int = Field(default=300, ge=30)
    tick_seconds: float = Field(default=5.0, gt=0, description="How often beat claims due calls.")
    tick_batch: int = Field(default=1000, ge=1, description="Attempts claimed per tick at most.")
    reconcile_seconds: float = Field(
        default=10.0, gt=0, description="How often stuck and orphaned attempts are settled."
    )
    queued_timeout_seconds: int = Field(
        default=30, ge=10, description="A queued attempt no worker took is queued again after this."
    )
    worker_lost_seconds: float = Field(
        default=20.0,
        ge=2,
        description="A worker silent this long is presumed dead and its calls reconciled; "
        "each worker beats four times as often.",
    )
    dial_grace_seconds: float = Field(
        default=90.0,
        ge=1,
        description="Past ringing timeout + this, a dialing attempt is reconciled.",
    )
    report_grace_seconds: float = Field(
        default=120.0,
        ge=1,
        description="Past max call duration + this, a silent answered call is reconciled.",
    )
    pacing_max_wait_seconds: float = Field(
        default=5.0, ge=0, description="A call waiting longer for its trunk goes back to the queue."
    )
    worker_concurrency: int = Field(default=200, ge=1, description="Calls in flight per worker.")
    session_hours: float = Field(
        default=12.0, gt=0, description="A console sign-in lasts this long."
    )
    api_token_days: float = Field(default=30.0, gt=0, description="An API token lasts this long.")
    login_max_failures: int = Field(
        default=5, ge=1, description="Failed sign-ins in a row before the account is locked."
    )
    login_lockout_minutes: float = Field(
        default=15.0, gt=0, description="How long a locked account stays locked."
    )
    api_url: str | None = Field(
        default=None,
        description="The console's address, where an agent outside the broker's network "
        "posts its outcome reports (e.g. https://console.example.org).",
    )

    @property
    def pacing_redis_url(self) -> str | None:
        """The Redis that paces every worker's calls; None: in-process pacing."""
        if self.redis_url:
            return self.redis_url
        if self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


MIN_SECRET_BYTES = 32
# Each secret and the variable that sets it.
_SECRETS = {
    "report_secret": "CAMPAIGNS_REPORT_SECRET",
    "livekit_api_secret": "LIVEKIT_API_SECRET",
    "audit_key": "CAMPAIGNS_AUDIT_KEY",
}


class InsecureSecretError(CampaignError):
    pass


def require_secrets(settings: Settings) -> None:
    """Refuse built-in or short secrets outside the embedded default (a SQLite database).

    Called by every long-running process that acts on real data (worker, beat,
    servers) before it starts. Raises :class:`InsecureSecretError` naming each
    variable to set.
    """
    if settings.database_url.startswith("sqlite"):
        return
    problems = []
    for field, variable in _SECRETS.items():
        value: SecretStr = getattr(settings, field)
        default = Settings.model_fields[field].default
        if value.get_secret_value() == default.get_secret_value():
            problems.append(f"{variable} is the built-in default")
        elif len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            problems.append(f"{variable} is shorter than {MIN_SECRET_BYTES} bytes")
    if problems:
        raise InsecureSecretError(
            "; ".join(problems) + ": set a random value outside the embedded SQLite default "
            "(e.g. `openssl rand -hex 32`)"
        )
