"""Real calls through the real LiveKit on loopback: latency to answer and to the agent's
first audio at the phone, and the CPU each part spends per call.

livekit-server and the SIP bridge (``make livekit``), sipp with handsets as the
patients' phones, and ``campaigns agent start`` with the local models. N calls
to confirming patients are placed at once through the engine's gateway; each
is played to its end (the agent confirms and hangs up).

    .venv/bin/python bench/livekit_calls.py [--calls 20] [--executor thread|process]

Prints, per call and in total: CreateSIPParticipant to answer (the dial's
return), answer to the agent's first audible frame at the phone, the call's
length, and the CPU seconds of livekit-server, the SIP bridge and the agent
worker (with its job processes) divided by the calls. Calls still going after
``--call-limit`` seconds (an agent that misheard waits for an answer) are hung
up, as the engine's reconciliation would, and counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

from campaigns.telephony.livekit_gateway import LiveKitTelephony
from campaigns.telephony.port import CallRequest, TrunkSpec
from campaigns.tokens import sign_report_token
from harness.livekit.phones import running_phones
from harness.livekit.stack import running_stack
from harness.processes import processes, wait_until

AGENT = "appointment-confirmer-bench"
CALLER_ID = "+15550100000"
# The call metadata the engine dispatches (examples/agent-metadata.json), per call its own token.
METADATA = {
    key: value
    for key, value in json.loads(
        (Path(__file__).resolve().parent.parent / "examples" / "agent-metadata.json").read_text()
    ).items()
    if key not in ("attempt_id", "participant_identity", "report_token")
}


def cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its live children so far."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            times = p.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.NoSuchProcess:
            continue
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--executor", choices=["thread", "process"], default="thread")
    parser.add_argument(
        "--call-limit",
        type=float,
        default=150.0,
        help="seconds before unfinished calls are hung up",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="livekit-bench-"))
    with (
        running_stack(workdir / "livekit") as stack,
        running_phones(workdir / "phones", handsets=args.calls + 8) as phones,
    ):

        async def trunk() -> str:
            async with LiveKitTelephony(stack.url, stack.api_key, stack.api_secret) as tel:
                return await tel.create_outbound_trunk(
                    TrunkSpec(name="bench", address=phones.address, numbers=(CALLER_ID,))
                )

        trunk_id = asyncio.run(trunk())
        broker = stack.redis_url.rsplit("/", 1)[0] + "/1"
        env = (
            os.environ
            | stack.env()
            | {
                "CAMPAIGNS_BROKER_URL": broker,
                "CAMPAIGNS_AGENT_NAME": AGENT,
                "CAMPAIGNS_AGENT_LLM": "local",
                "CAMPAIGNS_AGENT_STT": "local",
                "CAMPAIGNS_AGENT_TTS": "local",
                "CAMPAIGNS_AGENT_MAX_CALLS": str(args.calls + 5),
                "CAMPAIGNS_AGENT_JOB_EXECUTOR": args.executor,
                "CAMPAIGNS_AGENT_HTTP_PORT": "0",
            }
        )
        with processes(env, workdir) as group:
            agent = group.start("agent", "agent", "start")
            wait_until(
                lambda: "registered worker" in agent.log.read_text(errors="replace"),
                timeout=120,
                what="the agent worker",
            )
            time.sleep(5)  # its job runners warm up
            parts = {"livekit-server": stack.pids["livekit-server"]}
            parts |= {"livekit-sip": stack.pids["livekit-sip"], "agent": agent.pid}
            cpu_before = {name: cpu_seconds(pid) for name, pid in parts.items()}
            expiry = datetime.now(UTC) + timedelta(hours=1)
            requests = []
            for n in range(args.calls):
                attempt = 900_000 + n
                room = f"bench-{attempt}-{uuid.uuid4().hex[:6]}"
                requests.append(
                    CallRequest(
                        attempt_id=attempt,
                        room_name=room,
                        participant_identity=f"patient-{attempt}",
                        trunk_id=trunk_id,
                        call_to=f"+1212{n:05d}00",  # ...00: answers and confirms
                        caller_id=CALLER_ID,
                        agent_name=AGENT,
                        agent_metadata=METADATA
                        | {"report_token": sign_report_token(attempt, room, expiry, "x" * 40)},
                        ringing_timeout=timedelta(seconds=15),
                        max_call_duration=timedelta(minutes=5),
                    )
                )

            async def place_all() -> list[float]:
                async with LiveKitTelephony(stack.url, stack.api_key, stack.api_secret) as tel:

                    async def one(req: CallRequest) -> float:
                        started = time.perf_counter()
                        result = await tel.place_call(req)
                        assert result.answered, result
                        return time.perf_counter() - started

                    return list(await asyncio.gather(*(one(r) for r in requests)))

            wall = time.perf_counter()
            to_answer = asyncio.run(place_all())
            handsets = phones.handsets

            def ended(req: CallRequest) -> bool:
                heard = handsets.heard(req.call_to)
                return bool(heard and heard[-1].ended_at)

            with contextlib.suppress(TimeoutError):
                wait_until(
                    lambda: all(ended(r) for r in requests),
                    timeout=args.call_limit,
                    what="",
                    every=1.0,
                )
            wall = time.perf_counter() - wall
            cpu_after = {name: cpu_seconds(pid) for name, pid in parts.items()}
            unfinished = [r for r in requests if not ended(r)]

            async def hang_up_unfinished() -> None:  # as the engine does past a call's limit
                async with LiveKitTelephony(stack.url, stack.api_key, stack.api_secret) as tel:
                    for req in unfinished:
                        await tel.hang_up(req.room_name)

            asyncio.run(hang_up_unfinished())
        calls = [handsets.heard(r.call_to)[-1] for r in requests if handsets.heard(r.call_to)]
        first_audio = [c.first_speech_at - c.answered_at for c in calls if c.first_speech_at]
        lengths = [c.ended_at - c.answered_at for c in calls if c.ended_at]
        print(f"{args.calls} calls at once, agent job executor {args.executor}, wall {wall:.1f} s")
        for what, values in (
            ("CreateSIPParticipant to answer (s)", to_answer),
            ("answer to agent's first audio at the phone (s)", first_audio),
            ("call length (s)", lengths),
        ):
            if values:
                print(
                    f"  {what:48} median {statistics.median(values):6.2f}  "
                    f"max {max(values):6.2f}  (n={len(values)})"
                )
        print(f"  calls where the phone heard the agent: {len(first_audio)} of {args.calls}")
        print(
            f"  calls the agent ended within {args.call_limit:.0f} s: "
            f"{args.calls - len(unfinished)} of {args.calls} (the rest hung up by the bench)"
        )
        for name in parts:
            spent = cpu_after[name] - cpu_before[name]
            print(
                f"  CPU {name:16} {spent:7.2f} s in all, {1000 * spent / args.calls:7.1f} ms/call"
            )


if __name__ == "__main__":
    main()
