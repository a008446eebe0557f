"""Configuration and scripted callee behaviours of the LiveKit simulator.

Everything here is pure: which behaviour a dialled number gets, and how long
each simulated phase lasts, are functions of the number, the room and the
scenario, so a run is reproducible. The server (``simulator.app``) only
sleeps for the durations computed here.

Scenario file (JSON, every key optional)::

    {
      "seed": "demo",
      "weights": {"confirmed": 55, "no_answer": 15, "voicemail": 10, ...},
      "suffixes": {"42": "busy", "43": null},
      "numbers": {"+15550000099": "declined"},
      "latency": {"answer": [3, 8], "reject": [1, 6], "fail_fast": [0.2, 2],
                  "call": [20, 45], "api": [0, 0]},
      "default_ringing_timeout": 30,
      "fail_first_n_requests_with_503": 0,
      "fail_methods": ["CreateSIPParticipant"],
      "fail_503_after_dialing": false,
      "down": false
    }

``suffixes`` are merged over the built-in map of the last two digits (``null``
removes an entry); ``numbers`` match the full ``sip_call_to``. ``down`` is
``false``, ``true``/``"503"`` (every Twirp request gets 503 ``unavailable``) or
``"drop"`` (the connection is closed without a response).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# --- behaviours -----------------------------------------------------------

ANSWERED_OUTCOMES = (
    "confirmed",
    "cancelled",
    "reschedule_requested",
    "voicemail",
    "opted_out",
    "wrong_number",
    "transferred",
)


@dataclass(frozen=True)
class SipFailure:
    """How a failed dial is reported: HTTP status, Twirp code, message, metadata."""

    http_status: int
    code: str
    msg: str
    sip_status_code: int | None = None
    sip_status: str | None = None
    latency: str = "reject"  # which latency range precedes the failure

    def meta(self) -> dict[str, str]:
        if self.sip_status_code is None:
            return {}
        meta = {"sip_status_code": str(self.sip_status_code)}
        if self.sip_status:
            meta["sip_status"] = self.sip_status
        return meta


# The final answers the SIP bridge reports as "INVITE failed"; any other is an
# "unexpected status" (livekit/sip, pkg/sip/outbound.go).
_INVITE_FAILED_CODES = frozenset({400, 404, 480, 486, 488})


def _invite_failed(code: int, reason: str) -> str:
    """The Twirp message livekit-server gives a dial the callee refused."""
    what = (
        "INVITE failed"
        if code in _INVITE_FAILED_CODES
        else "unexpected status from INVITE response"
    )
    return f"twirp error unknown: {what}: sip status: {code}: {reason}"


# What a real LiveKit server (and its SIP bridge) returns for each failed callee,
# as the conformance suite (tests/live/) observes it.
FAILURES: dict[str, SipFailure] = {
    "busy": SipFailure(
        429, "resource_exhausted", _invite_failed(486, "Busy Here"), 486, "Busy Here"
    ),
    "busy_everywhere": SipFailure(
        429, "resource_exhausted", _invite_failed(600, "Busy Everywhere"), 600, "Busy Everywhere"
    ),
    "unavailable": SipFailure(
        429,
        "resource_exhausted",
        _invite_failed(480, "Temporarily Unavailable"),
        480,
        "Temporarily Unavailable",
    ),
    "no_answer": SipFailure(408, "canceled", "sip request timed out", latency="ringing_timeout"),
    "aborted": SipFailure(
        409, "aborted", _invite_failed(487, "Request Terminated"), 487, "Request Terminated"
    ),
    "declined": SipFailure(
        403, "permission_denied", _invite_failed(603, "Decline"), 603, "Decline"
    ),
    "invalid_number": SipFailure(
        404, "not_found", _invite_failed(404, "Not Found"), 404, "Not Found", latency="fail_fast"
    ),
    "carrier_failure": SipFailure(
        412,
        "failed_precondition",
        _invite_failed(503, "Service Unavailable"),
        503,
        "Service Unavailable",
        latency="fail_fast",
    ),
}

BEHAVIOURS = frozenset(ANSWERED_OUTCOMES) | frozenset(FAILURES)

DEFAULT_SUFFIXES: dict[str, str] = {
    "00": "confirmed",
    "01": "busy",
    "02": "no_answer",
    "03": "voicemail",
    "04": "declined",
    "05": "invalid_number",
    "06": "carrier_failure",
    "07": "cancelled",
    "08": "reschedule_requested",
    "09": "opted_out",
    "10": "wrong_number",
    "11": "transferred",
    "12": "unavailable",
    "13": "busy_everywhere",
    "14": "aborted",
}

DEFAULT_WEIGHTS: dict[str, float] = {
    "confirmed": 55,
    "no_answer": 15,
    "voicemail": 10,
    "busy": 7,
    "reschedule_requested": 5,
    "cancelled": 3,
    "declined": 2,
    "invalid_number": 1,
    "carrier_failure": 1,
    "opted_out": 1,
}

DEFAULT_LATENCY: dict[str, tuple[float, float]] = {
    "answer": (3.0, 8.0),  # ringing before an answer (person or voicemail)
    "reject": (1.0, 6.0),  # ringing before busy / decline / 480 / 487
    "fail_fast": (0.2, 2.0),  # invalid number, carrier failure
    "call": (20.0, 45.0),  # answered call until the agent reports and hangs up
    "api": (0.0, 0.0),  # extra latency of every Twirp response
}

DOWN_MODES = frozenset({"503", "drop"})


def result_string(behaviour: str) -> str:
    """The stable ``result`` of a dial in ``/_sim/calls``."""
    return f"answered:{behaviour}" if behaviour in ANSWERED_OUTCOMES else behaviour


# --- scenario ---------------------------------------------------------------


class ScenarioError(ValueError):
    """A scenario file or dict that cannot be used."""


@dataclass(frozen=True)
class Scenario:
    seed: str = "clinic-campaigns"
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    suffixes: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_SUFFIXES))
    numbers: Mapping[str, str] = field(default_factory=dict)
    latency: Mapping[str, tuple[float, float]] = field(
        default_factory=lambda: dict(DEFAULT_LATENCY)
    )
    default_ringing_timeout: float = 30.0
    fail_first_n_requests_with_503: int = 0
    fail_methods: frozenset[str] | None = None  # None: every Twirp method
    fail_503_after_dialing: bool = False
    down: str | None = None  # None, "503" or "drop"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        known = {
            "seed",
            "weights",
            "suffixes",
            "numbers",
            "latency",
            "default_ringing_timeout",
            "fail_first_n_requests_with_503",
            "fail_methods",
            "fail_503_after_dialing",
            "down",
        }
        unknown = set(data) - known
        if unknown:
            raise ScenarioError(f"unknown scenario keys: {sorted(unknown)}")
        base = cls()
        weights = dict(data.get("weights", base.weights))
        for name, weight in weights.items():
            _check_behaviour(name, "weights")
            if not isinstance(weight, int | float) or weight < 0:
                raise ScenarioError(f"weight of {name!r} must be a number >= 0")
        if sum(weights.values()) <= 0:
            raise ScenarioError("weights must not all be zero")
        suffixes = dict(base.suffixes)
        for suffix, name in dict(data.get("suffixes", {})).items():
            if not (isinstance(suffix, str) and len(suffix) == 2 and suffix.isdigit()):
                raise ScenarioError(f"suffix {suffix!r} must be two digits")
            if name is None:
                suffixes.pop(suffix, None)
            else:
                suffixes[suffix] = _check_behaviour(name, "suffixes")
        numbers = {
            str(k): _check_behaviour(v, "numbers") for k, v in dict(data.get("numbers", {})).items()
        }
        latency = dict(base.latency)
        for key, value in dict(data.get("latency", {})).items():
            if key not in DEFAULT_LATENCY:
                raise ScenarioError(f"unknown latency {key!r}; known: {sorted(DEFAULT_LATENCY)}")
            latency[key] = _range(key, value)
        down = data.get("down", False)
        if down is True:
            down = "503"
        if down is False or down is None:
            down = None
        elif str(down) not in DOWN_MODES:
            raise ScenarioError("down must be false, true, '503' or 'drop'")
        fail_methods = data.get("fail_methods")
        return cls(
            seed=str(data.get("seed", base.seed)),
            weights=weights,
            suffixes=suffixes,
            numbers=numbers,
            latency=latency,
            default_ringing_timeout=float(
                data.get("default_ringing_timeout", base.default_ringing_timeout)
            ),
            fail_first_n_requests_with_503=int(data.get("fail_first_n_requests_with_503", 0)),
            fail_methods=None if fail_methods is None else frozenset(map(str, fail_methods)),
            fail_503_after_dialing=bool(data.get("fail_503_after_dialing", False)),
            down=None if down is None else str(down),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Scenario:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ScenarioError(f"cannot read scenario {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ScenarioError("a scenario is a JSON object")
        return cls.from_dict(data)

    # -- decisions (pure) --

    def behaviour_for(self, number: str, room: str) -> str:
        """The scripted behaviour of the callee ``number`` for the call in ``room``."""
        if number in self.numbers:
            return self.numbers[number]
        digits = "".join(ch for ch in number if ch.isdigit())
        if len(digits) >= 2 and digits[-2:] in self.suffixes:
            return self.suffixes[digits[-2:]]
        point = _unit(self.seed, "behaviour", number, room) * sum(self.weights.values())
        acc = 0.0
        chosen = ""
        for name, weight in self.weights.items():
            if weight <= 0:
                continue
            chosen = name
            acc += weight
            if point < acc:
                break
        return chosen

    def duration(self, kind: str, number: str, room: str) -> float:
        """Seconds (before speed scaling) of phase ``kind`` of this call."""
        low, high = self.latency[kind]
        return low + (high - low) * _unit(self.seed, kind, number, room)


def _check_behaviour(name: object, where: str) -> str:
    if not isinstance(name, str) or name not in BEHAVIOURS:
        raise ScenarioError(f"{where}: unknown behaviour {name!r}; known: {sorted(BEHAVIOURS)}")
    return name


def _range(key: str, value: object) -> tuple[float, float]:
    if isinstance(value, int | float):
        return float(value), float(value)
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int | float) for v in value)
    ):
        low, high = float(value[0]), float(value[1])
        if 0 <= low <= high:
            return low, high
    raise ScenarioError(f"latency {key!r} must be a number or [low, high] with 0 <= low <= high")


def _unit(*parts: str) -> float:
    """A deterministic number in [0, 1) from the parts (stable across runs)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# --- simulator configuration ---------------------------------------------------


AGENT_MODES = ("real", "instant")


@dataclass(frozen=True)
class SimulatorConfig:
    api_key: str = "devkey"
    api_secret: str = "secret"  # noqa: S105 - LiveKit's documented dev secret
    speed: float = 1.0
    scenario: Scenario = field(default_factory=Scenario)
    # Outbound trunk pre-created at start-up with this id (e.g. "ST_default"), or none.
    default_trunk_id: str | None = None
    # Celery broker for agent outcome reports; None: reports are only recorded.
    broker_url: str | None = None
    # Real seconds (not scaled by speed) a room stays after its last call ended,
    # like LiveKit's departure timeout; DeleteRoom in that window still succeeds.
    departure_timeout: float = 20.0
    # Answered calls the agent plays at once; more wait their turn (each costs ~15-20 ms
    # of CPU on the event loop, and hundreds at once only add memory and switching).
    agent_concurrency: int = 32
    # "real": the agent plays every answered call. "instant": the callee's scripted
    # outcome is reported at once, so a load test measures the engine, not the agent.
    agent: str = "real"
    # Where to send LiveKit webhooks (room_finished, participant_left), signed like LiveKit.
    webhook_url: str | None = None
    request_id_cache_size: int = 10_000
    max_call_log: int = 200_000

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError("speed must be > 0")
        if self.agent not in AGENT_MODES:
            raise ValueError(f"agent must be one of {', '.join(AGENT_MODES)}")

    @classmethod
    def from_env(cls, **overrides: Any) -> SimulatorConfig:
        """Credentials from LIVEKIT_API_KEY / LIVEKIT_API_SECRET ("devkey"/"secret"
        when unset), broker from CAMPAIGNS_BROKER_URL; ``overrides`` win."""
        env: dict[str, Any] = {
            "api_key": os.environ.get("LIVEKIT_API_KEY") or "devkey",
            "api_secret": os.environ.get("LIVEKIT_API_SECRET") or "secret",
            "broker_url": os.environ.get("CAMPAIGNS_BROKER_URL") or None,
        }
        env.update(overrides)
        return cls(**env)

    def scaled(self, seconds: float) -> float:
        return seconds / self.speed

    def with_scenario(self, scenario: Scenario) -> SimulatorConfig:
        return replace(self, scenario=scenario)


def coerce_config(**config: Any) -> SimulatorConfig:
    """Build a config from keyword arguments; ``scenario`` may be a Scenario,
    a dict or a path to a JSON file."""
    scenario = config.pop("scenario", None)
    if isinstance(scenario, Mapping):
        scenario = Scenario.from_dict(scenario)
    elif isinstance(scenario, str | os.PathLike):
        scenario = Scenario.load(scenario)
    if scenario is not None:
        config["scenario"] = scenario
    return SimulatorConfig(**config)
