"""Run the simulator inside a test: ``with running_simulator(speed=50) as sim: ...``.

The server runs on a free loopback port in a background thread with its own
event loop, so synchronous tests, Celery workers and ``asyncio.run`` clients
can all talk to it over real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from simulator.app import bound_port, create_app, serve
from simulator.scenario import SimulatorConfig, coerce_config
from simulator.state import Reporter

# At least 32 bytes: PyJWT warns about shorter HMAC keys, fatal under
# ``filterwarnings = error`` when the livekit client signs its tokens.
TEST_API_SECRET = "simulator-test-secret-0123456789abcdef"  # noqa: S105 - test only

# Loopback only: never route through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class SimulatorHandle:
    url: str
    api_key: str
    api_secret: str
    config: SimulatorConfig
    loop: asyncio.AbstractEventLoop

    def _get(self, path: str) -> Any:
        with _OPENER.open(self.url + path, timeout=30) as resp:
            return json.loads(resp.read())

    def _post(self, path: str, payload: Any = None) -> Any:
        data = json.dumps(payload if payload is not None else {}).encode()
        req = urllib.request.Request(  # noqa: S310 - loopback
            self.url + path, data=data, headers={"Content-Type": "application/json"}
        )
        with _OPENER.open(req, timeout=30) as resp:
            return json.loads(resp.read())

    def calls(self) -> list[dict[str, Any]]:
        """Every dial so far (``GET /_sim/calls``)."""
        result: list[dict[str, Any]] = self._get("/_sim/calls")
        return result

    def reports(self) -> list[dict[str, Any]]:
        """Every agent outcome report so far (``GET /_sim/reports``)."""
        result: list[dict[str, Any]] = self._get("/_sim/reports")
        return result

    def dispatches(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get("/_sim/dispatches")
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/_sim/stats")
        return result

    def reset(self) -> None:
        self._post("/_sim/reset")

    def set_scenario(self, scenario: dict[str, Any]) -> None:
        """Replace the scenario while running (e.g. ``{"down": true}``)."""
        self._post("/_sim/scenario", scenario)


@contextmanager
def running_simulator(
    *, reporter: Reporter | None = None, host: str = "127.0.0.1", **config: Any
) -> Iterator[SimulatorHandle]:
    """Start a simulator; ``config`` are :class:`SimulatorConfig` fields
    (``speed``, ``scenario`` as Scenario / dict / path, ``default_trunk_id``,
    ``api_key``, ``api_secret``, ``broker_url``, ...). It does not read the
    environment; the API secret defaults to :data:`TEST_API_SECRET` (long
    enough for PyJWT not to warn), the key to "devkey". ``reporter`` is
    awaited on the simulator's own loop."""
    config.setdefault("api_secret", TEST_API_SECRET)
    cfg = coerce_config(**config)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict[str, Any] = {}

    async def _start() -> None:
        app = create_app(cfg, reporter)
        runner = await serve(app, host, 0)
        state["runner"] = runner
        state["port"] = bound_port(runner)

    def _main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(_start())
        except BaseException as exc:
            state["error"] = exc
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=_main, name="livekit-simulator", daemon=True)
    thread.start()
    started.wait(timeout=30)
    if "error" in state or "port" not in state:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        raise RuntimeError("simulator did not start") from state.get("error")
    handle = SimulatorHandle(
        url=f"http://{host}:{state['port']}",
        api_key=cfg.api_key,
        api_secret=cfg.api_secret,
        config=cfg,
        loop=loop,
    )
    try:
        yield handle
    finally:
        runner: web.AppRunner = state["runner"]
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
