"""What the real agent costs per answered call in the simulator: each persona of
``simulator.personas`` rehearsed against ``agent.confirmer.ConfirmationAgent``,
one after another on one event loop (as the simulator runs them), CPU and wall
time per call.

    .venv/bin/python bench/agent_rehearsal.py [--calls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from agent.metadata import parse_metadata
from agent.ports import Report
from agent.rehearsal import rehearse
from simulator.personas import PERSONAS

METADATA = Path(__file__).resolve().parent.parent / "examples" / "agent-metadata.json"


async def run(calls: int) -> None:
    meta = parse_metadata(METADATA.read_text(encoding="utf-8"))

    async def drop(_report: Report) -> None:
        return None

    await rehearse(meta, PERSONAS["confirmed"], reporter=drop)  # warm-up: imports, caches
    print(f"{'persona':>22} {'calls':>6} {'cpu ms/call':>12} {'wall ms/call':>13}")
    for name, script in PERSONAS.items():
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(calls):
            await rehearse(meta, script, reporter=drop)
        cpu_ms = 1000 * (time.process_time() - cpu) / calls
        wall_ms = 1000 * (time.perf_counter() - wall) / calls
        print(f"{name:>22} {calls:>6} {cpu_ms:12.1f} {wall_ms:13.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    asyncio.run(run(parser.parse_args().calls))


if __name__ == "__main__":
    main()
