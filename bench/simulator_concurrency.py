"""How many ringing calls the LiveKit simulator holds at once, and at what memory.

Starts ``python -m simulator`` on a free loopback port, fires N concurrent
CreateSIPParticipant requests (wait_until_answered, callee never answers,
ringing_timeout R simulated seconds) through the real livekit client, samples
the server's calls in flight and RSS every second, and stops by itself.

    .venv/bin/python bench/simulator_concurrency.py --calls 5000 --ring 20 --speed 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from livekit import api
from livekit.protocol.sip import CreateSIPParticipantRequest

from harness.processes import free_port

SECRET = "bench-secret-0123456789abcdef0123456789"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def stats(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/_sim/stats") as resp:
        document: dict[str, Any] = await resp.json()
        return document


async def bench(url: str, pid: int, calls: int, ring: int, speed: float, limit: float) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=limit)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for _ in range(100):
            try:
                await stats(session, url)
                break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        base = rss_mb(pid)
        print(f"server RSS idle: {base:.0f} MB")
        lk = api.LiveKitAPI(url, "devkey", SECRET, session=session, failover=False)

        async def one(i: int) -> str:
            req = CreateSIPParticipantRequest(
                sip_trunk_id="ST_default",
                sip_call_to=f"+1555{i:06d}02",
                room_name=f"bench-{i}",
                participant_identity=f"callee-{i}",
                wait_until_answered=True,
            )
            req.ringing_timeout.seconds = ring
            try:
                # The client's own floor (ring + 2 s) is too tight while this one
                # process opens thousands of connections at once.
                await lk.sip.create_sip_participant(req, timeout=ring / speed + 60)
            except api.TwirpError as exc:
                return exc.code
            except (aiohttp.ClientError, TimeoutError) as exc:
                return type(exc).__name__
            return "answered"

        started = time.monotonic()
        tasks = [asyncio.ensure_future(one(i)) for i in range(calls)]
        peak_flight, peak_rss = 0, base
        while not all(t.done() for t in tasks):
            await asyncio.sleep(1)
            s = await stats(session, url)
            rss = rss_mb(pid)
            peak_flight, peak_rss = max(peak_flight, s["in_flight"]), max(peak_rss, rss)
            print(
                f"t={time.monotonic() - started:5.1f}s in_flight={s['in_flight']:5d} "
                f"dials={s['dials']:5d} server_rss={rss:.0f} MB"
            )
        results = Counter(t.result() for t in tasks)
        elapsed = time.monotonic() - started
        print(f"\n{calls} calls ringing {ring}s: done in {elapsed:.1f}s; results {dict(results)}")
        print(
            f"peak in flight {peak_flight} (server max_in_flight "
            f"{(await stats(session, url))['max_in_flight']}); server RSS idle {base:.0f} MB, "
            f"peak {peak_rss:.0f} MB (+{(peak_rss - base) * 1024 / max(calls, 1):.1f} KB/call)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--ring", type=int, default=20, help="simulated ringing seconds")
    parser.add_argument("--speed", type=float, default=1.0)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.calls * 2 + 100:
        sys.exit(f"need {args.calls * 2 + 100} file descriptors, the hard limit is {hard}")

    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"latency": {"api": 0}}, f)
    env = {**os.environ, "LIVEKIT_API_KEY": "devkey", "LIVEKIT_API_SECRET": SECRET}
    env.pop("CAMPAIGNS_BROKER_URL", None)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--speed",
            str(args.speed),
            "--scenario",
            f.name,
            "--trunk",
            "ST_default",
            "--no-report",
            "--log-level",
            "WARNING",
        ],
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    limit = args.ring / args.speed + 120
    try:
        asyncio.run(
            asyncio.wait_for(
                bench(
                    f"http://127.0.0.1:{port}", server.pid, args.calls, args.ring, args.speed, limit
                ),
                limit,
            )
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
        os.unlink(f.name)


if __name__ == "__main__":
    main()
