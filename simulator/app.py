"""A LiveKit look-alike speaking the Twirp endpoints the engine uses.

The engine's real ``livekit.api.LiveKitAPI`` talks to this server over HTTP:
``POST /twirp/livekit.<Service>/<Method>`` with a protobuf (or JSON) body and a
``Authorization: Bearer <JWT>`` header; errors come back as Twirp JSON
``{"code", "msg", "meta"}`` with the HTTP status a real LiveKit server uses
(``simulator.twirp``; tokens and grants: ``simulator.auth``; the methods:
``simulator.services``). A request repeated with the same
``X-Livekit-Request-Id`` gets the first one's reply without acting twice.

Calls are asyncio tasks (no thread per call): a ringing call is a sleep, so
thousands can ring at once. After an answered call has lasted its simulated
duration, the real agent (``agent.rehearsal``) plays it with the room's dispatch
metadata and the scripted persona of the callee (``simulator.callee``,
``simulator.personas``); its reports go to a pluggable :data:`Reporter` (by
default the agent's Celery adapter, task ``campaigns.record_outcome``), its
hang-up ends the call and its transfer (as ``TransferSIPParticipant``) hands the
callee over.

Test endpoints: ``GET /_sim/calls``, ``GET /_sim/reports``,
``GET /_sim/dispatches``, ``GET /_sim/stats``, ``POST /_sim/reset``,
``POST /_sim/scenario`` (replace the scenario at run time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

from aiohttp import web

from agent.reporting import CeleryReporter
from simulator import auth
from simulator.scenario import Scenario, ScenarioError, SimulatorConfig
from simulator.services import METHODS, Method
from simulator.state import Reporter, Simulator
from simulator.twirp import (
    REQUEST_ID_HEADER,
    Reply,
    TwirpError,
    decode_request,
    error_reply,
    message_reply,
)

logger = logging.getLogger("simulator")

SIM_KEY: web.AppKey[Simulator] = web.AppKey("simulator", Simulator)


async def _execute(
    sim: Simulator,
    method: Method,
    req: Any,
    request_id: str,
    as_json: bool,
    received_at: float | None = None,
) -> Reply:
    low, high = sim.scenario.latency["api"]
    if high > 0:
        await asyncio.sleep(sim.config.scaled(random.uniform(low, high)))  # noqa: S311
    try:
        result = await method.handler(sim, req, request_id, received_at)
    except TwirpError as err:
        return error_reply(err)
    except Exception:
        logger.exception("%s failed", method.name)
        return error_reply(TwirpError(500, "internal", "simulator internal error"))
    return message_reply(result, as_json)


async def twirp_handler(request: web.Request) -> web.StreamResponse:
    received_at = time.time()
    sim = request.app[SIM_KEY]
    sim.counters["requests"] += 1
    path = f"{request.match_info['service']}/{request.match_info['method']}"
    method = METHODS.get(path)
    if method is None:
        return error_reply(
            TwirpError(404, "bad_route", f"no handler for path /twirp/{path}")
        ).response()
    scenario = sim.scenario
    if scenario.down == "drop":
        sim.counters["rejected_5xx"] += 1
        if request.transport is not None:
            request.transport.abort()
        raise web.HTTPServiceUnavailable  # never delivered: the connection is gone
    if scenario.down == "503":
        sim.counters["rejected_5xx"] += 1
        return error_reply(TwirpError(503, "unavailable", "service unavailable")).response()
    try:
        claims = auth.authenticate(request.headers.get("Authorization", ""), sim.config)
        as_json = request.content_type == "application/json"
        req = decode_request(method.request, await request.read(), as_json)
        if not method.grant(claims, req):
            raise auth.deny()
    except TwirpError as err:
        return error_reply(err).response()

    request_id = request.headers.get(REQUEST_ID_HEADER, "")
    key = (path, request_id)
    storm = scenario.fail_first_n_requests_with_503 > 0 and (
        scenario.fail_methods is None or method.name in scenario.fail_methods
    )
    if storm and sim.storm_seen < scenario.fail_first_n_requests_with_503:
        sim.storm_seen += 1
        sim.counters["rejected_5xx"] += 1
        if scenario.fail_503_after_dialing and method.name == "CreateSIPParticipant":
            # The ambiguous case: LiveKit dialled but the caller sees a 5xx.
            task = sim.spawn(_execute(sim, method, req, request_id, as_json, received_at))
            if request_id:
                sim.remember(key, task)
        return error_reply(TwirpError(503, "unavailable", "simulated server error")).response()

    if request_id and key in sim.replies:
        sim.counters["deduplicated"] += 1
        reply = await asyncio.shield(sim.replies[key])
        return reply.response()
    # No await between the look-up above and remember(): a concurrent duplicate
    # always finds this task.
    task = sim.spawn(_execute(sim, method, req, request_id, as_json, received_at))
    if request_id:
        sim.remember(key, task)
    reply = await asyncio.shield(task)
    return reply.response()


# --- /_sim endpoints -------------------------------------------------------------


async def sim_calls(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[SIM_KEY].calls))


async def sim_reports(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].reports)


async def sim_dispatches(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[SIM_KEY].dispatch_log))


async def sim_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].stats())


async def sim_reset(request: web.Request) -> web.Response:
    await request.app[SIM_KEY].reset()
    return web.json_response({"ok": True})


async def sim_scenario(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    try:
        data = await request.json()
        if not isinstance(data, dict):
            raise ScenarioError("a scenario is a JSON object")
        sim.scenario = Scenario.from_dict(data)
    except (ValueError, ScenarioError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    sim.storm_seen = 0
    return web.json_response({"ok": True})


def create_app(config: SimulatorConfig, reporter: Reporter | None = None) -> web.Application:
    """The simulator as an aiohttp application.

    ``reporter`` receives every agent outcome report; when None, a Celery
    reporter is built from ``config.broker_url`` if set, otherwise reports are
    only recorded (``GET /_sim/reports``).
    """
    if reporter is None and config.broker_url:
        reporter = CeleryReporter(config.broker_url)
    app = web.Application(client_max_size=1024 * 1024)
    sim = Simulator(config, reporter)
    app[SIM_KEY] = sim

    async def _shutdown(_app: web.Application) -> None:
        await sim.shutdown()

    app.on_shutdown.append(_shutdown)
    app.router.add_post("/twirp/{service}/{method}", twirp_handler)
    app.router.add_get("/_sim/calls", sim_calls)
    app.router.add_get("/_sim/reports", sim_reports)
    app.router.add_get("/_sim/dispatches", sim_dispatches)
    app.router.add_get("/_sim/stats", sim_stats)
    app.router.add_post("/_sim/reset", sim_reset)
    app.router.add_post("/_sim/scenario", sim_scenario)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start ``app`` on host:port (port 0: a free one); returns the runner."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("simulator is not listening")


def run(
    host: str = "127.0.0.1",
    port: int = 7880,
    speed: float = 1.0,
    scenario_path: str | None = None,
    *,
    trunk: str | None = None,
    no_report: bool = False,
    api_key: str | None = None,
    api_secret: str | None = None,
    broker_url: str | None = None,
    webhook_url: str | None = None,
    agent: str = "real",
) -> None:
    """Serve until interrupted (the ``campaigns simulator`` command)."""
    overrides: dict[str, Any] = {
        "speed": speed,
        "default_trunk_id": trunk,
        "webhook_url": webhook_url,
        "agent": agent,
    }
    if scenario_path:
        overrides["scenario"] = Scenario.load(scenario_path)
    if api_key:
        overrides["api_key"] = api_key
    if api_secret:
        overrides["api_secret"] = api_secret
    if broker_url:
        overrides["broker_url"] = broker_url
    if no_report:
        overrides["broker_url"] = None
    config = SimulatorConfig.from_env(**overrides)
    app = create_app(config)
    logger.info(
        "LiveKit simulator on http://%s:%s speed=%s api_key=%s reports=%s",
        host,
        port,
        speed,
        config.api_key,
        "celery" if config.broker_url else "recorded only",
    )
    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(
            app,
            host=host,
            port=port,
            access_log=None,
            print=None,
            shutdown_timeout=1.0,
            backlog=4096,
        )
