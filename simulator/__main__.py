"""``python -m simulator``: run the LiveKit simulator (same as ``campaigns simulator``)."""

from __future__ import annotations

import argparse
import logging

from simulator.app import run
from simulator.scenario import AGENT_MODES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7880)
    parser.add_argument(
        "--speed", type=float, default=1.0, help="divide every simulated duration by N"
    )
    parser.add_argument("--scenario", help="JSON scenario file")
    parser.add_argument(
        "--trunk", help="pre-create an outbound trunk with this id, e.g. ST_default"
    )
    parser.add_argument(
        "--no-report",
        action="store_true",
        help="record agent outcomes but do not send them to the broker",
    )
    parser.add_argument("--broker-url", help="Celery broker (default: $CAMPAIGNS_BROKER_URL)")
    parser.add_argument(
        "--webhook-url",
        help="send LiveKit webhooks here, e.g. http://127.0.0.1:8000/livekit/webhook",
    )
    parser.add_argument(
        "--agent",
        choices=AGENT_MODES,
        default="real",
        help="real: the agent plays each answered call; instant: report the callee's "
        "scripted outcome at once (load tests of the engine)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    run(
        args.host,
        args.port,
        args.speed,
        args.scenario,
        trunk=args.trunk,
        no_report=args.no_report,
        broker_url=args.broker_url,
        webhook_url=args.webhook_url,
        agent=args.agent,
    )


if __name__ == "__main__":
    main()
