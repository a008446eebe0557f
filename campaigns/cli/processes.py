"""The long-running processes: ``worker``, ``beat``, ``serve``, ``simulator`` and ``demo``.

Those that act on real data refuse to start with insecure secrets (exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from campaigns.cli import common
from campaigns.errors import InvalidInputError
from campaigns.settings import DATA_DIR, get_settings

app = common.command_group()


@app.command("worker")
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Calls in flight (threads)")] = None,
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Start a Celery worker that places calls."""
    common.refuse_insecure_secrets()
    from workers.celery_app import app as celery_app
    from workers.runtime import SoleWorkerError, claim_sole_worker

    settings = get_settings()
    try:
        claim_sole_worker(settings)
    except SoleWorkerError as exc:
        common.fail(str(exc), 2)
    celery_app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={concurrency or settings.worker_concurrency}",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@app.command("beat")
def beat(loglevel: Annotated[str, typer.Option()] = "INFO") -> None:
    """Start the scheduler: the tick, reconciliation and daily runs (run one)."""
    common.refuse_insecure_secrets()
    from workers.celery_app import app as celery_app

    schedule = DATA_DIR / "beat-schedule"
    schedule.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    celery_app.start(["beat", f"--schedule={schedule}", f"--loglevel={loglevel}"])


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
) -> None:
    """Serve the web console and the HTTP API."""
    common.refuse_insecure_secrets()
    import uvicorn

    from console.app import create_app
    from workers.runtime import get_pipeline

    uvicorn.run(
        create_app(get_pipeline()),
        host=host,
        port=port,
        proxy_headers=True,
        log_level="info",
    )


@app.command("simulator")
def simulator(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 7880,
    speed: Annotated[float, typer.Option(help="Divide every simulated duration by this")] = 1.0,
    scenario: Annotated[Path | None, typer.Option(exists=True, dir_okay=False)] = None,
    trunk: Annotated[
        str | None, typer.Option(help="Pre-create an outbound trunk with this id")
    ] = None,
    no_report: Annotated[
        bool, typer.Option(help="Do not send agent reports to the engine")
    ] = False,
    webhook_url: Annotated[
        str | None, typer.Option(help="Send LiveKit webhooks here (the console's /livekit/webhook)")
    ] = None,
    agent: Annotated[
        str,
        typer.Option(
            help="real: the agent plays each answered call; instant: report the callee's "
            "scripted outcome at once (load tests of the engine)"
        ),
    ] = "real",
) -> None:
    """Serve the LiveKit simulator (Twirp API; scripted callees talk to the real agent)."""
    from simulator.app import run
    from simulator.scenario import AGENT_MODES

    settings = get_settings()
    if speed <= 0:
        raise InvalidInputError("--speed must be positive")
    if agent not in AGENT_MODES:
        raise InvalidInputError(f"--agent must be one of {', '.join(AGENT_MODES)}")
    run(
        host,
        port,
        speed,
        str(scenario) if scenario else None,
        trunk=trunk,
        no_report=no_report,
        api_key=settings.livekit_api_key,
        api_secret=settings.livekit_api_secret.get_secret_value(),
        broker_url=settings.broker_url,
        webhook_url=webhook_url,
        agent=agent,
    )


@app.command("demo")
def demo(
    speed: Annotated[float, typer.Option(help="Simulated call speed-up")] = 10.0,
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave everything running after the campaign")
    ] = False,
    livekit: Annotated[
        str,
        typer.Option(
            help="simulator: the LiveKit simulator (fast); local: livekit-server, the SIP "
            "bridge and SIP phones on this machine (`make livekit` builds them)"
        ),
    ] = "simulator",
) -> None:
    """Run a whole campaign on the embedded default against the LiveKit simulator (or the
    real LiveKit on this machine), with the web console watching it."""
    from demo.runner import run_demo

    if livekit not in ("simulator", "local"):
        raise InvalidInputError("--livekit must be simulator or local")
    raise typer.Exit(run_demo(common.out, speed=speed, keep=keep, livekit=livekit))
