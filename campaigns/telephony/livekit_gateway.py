"""The LiveKit adapter of the telephony port, on the real ``livekit.api.LiveKitAPI``.

Never dial a patient twice for one attempt:

* The client is built with ``failover=False``: the SDK's region failover replays
  a request (CreateSIPParticipant included) to another region on any transport
  error or 5xx, i.e. a second dial. LiveKit does not deduplicate dials, and each
  SDK call gets a fresh ``X-Livekit-Request-Id``, so a re-sent request is a new one.
* ``CreateSIPParticipant`` is re-sent (tenacity, jittered exponential, 3 tries)
  only after :class:`aiohttp.ClientConnectorError`: the TCP/TLS connection was
  never established, so no request reached LiveKit. Every other failure after
  the request may have left (timeout, 5xx, connection lost) is *ambiguous*: the
  attempt ends ``failed``, its problem ``ambiguous``, and the retry policy creates a
  new attempt later.
* ``CreateDispatch`` is also re-sent after a 5xx, a timeout or a lost connection:
  a dispatch is not a dial. The worst case of re-sending one that did succeed is
  a second dispatch of the agent into the same, still empty, per-attempt room,
  before anything is dialed; the agent must leave a room that already has an
  agent of the same attempt. When the dispatch finally fails nothing is dialed
  (``failed``, not ambiguous).

Configuration errors (bad API key/secret, a key without the needed grant, an
unknown trunk id, a trunk whose credentials the carrier rejects) are returned by
:meth:`LiveKitTelephony.place_call` with the problem ``configuration`` and a
message naming the setting, so the pipeline records the attempt as not dialed
and pauses instead of retrying; the admin methods raise
:class:`~campaigns.telephony.port.ConfigurationError`.

After any failed ``place_call`` the room is deleted (best effort): the dispatched
agent must not linger, and an ambiguous call that may still be ringing is hung up
before the next attempt is scheduled.

One instance belongs to one event loop (its aiohttp session is created on first
use); create one per ``asyncio.run`` and ``aclose`` it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
from google.protobuf.duration_pb2 import Duration
from livekit.api import LiveKitAPI, ServerError
from livekit.protocol.agent_dispatch import CreateAgentDispatchRequest
from livekit.protocol.room import DeleteRoomRequest, ListParticipantsRequest
from livekit.protocol.sip import (
    CreateSIPOutboundTrunkRequest,
    CreateSIPParticipantRequest,
    ListSIPOutboundTrunkRequest,
    SIPOutboundTrunkInfo,
)
from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from campaigns.masking import mask_phone
from campaigns.settings import Settings
from campaigns.telephony.outcomes import (
    DialProblem,
    Outcome,
    Refusal,
    classify_dial_error,
    classify_refusal,
)
from campaigns.telephony.port import (
    BeforeDial,
    CallRequest,
    CallResult,
    ConfigurationError,
    TelephonyError,
    TrunkInfo,
    TrunkSpec,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# LiveKit wants at least this ringing window; calls must ring 15 s or 4 rings.
MIN_RINGING_TIMEOUT = timedelta(seconds=15)
# Request timeout of a dial beyond its ringing window: call set-up before the
# first ring, server latency. A client timeout is an ambiguous failure, so be generous.
DIAL_TIMEOUT_MARGIN = timedelta(seconds=10)

_CREDENTIALS_HINT = "check LIVEKIT_API_KEY and LIVEKIT_API_SECRET"


def _never_sent(exc: BaseException) -> bool:
    """The request provably never reached LiveKit (no connection was made)."""
    return isinstance(exc, aiohttp.ClientConnectorError)


def _transient(exc: BaseException) -> bool:
    """Worth re-sending for a request that is harmless to repeat."""
    if isinstance(exc, ServerError):
        return exc.status >= 500
    return isinstance(exc, aiohttp.ClientError | TimeoutError)


def _sip_status_code(err: ServerError) -> int | None:
    raw = err.metadata.get("sip_status_code")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ServerError):
        return f"{exc.status} {exc.code}: {exc.message}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _duration(value: timedelta) -> Duration:
    return Duration(seconds=max(0, int(value.total_seconds())))


class LiveKitTelephony:
    """:class:`~campaigns.telephony.port.Telephony` on a LiveKit server (or the simulator)."""

    def __init__(
        self,
        url: str,
        api_key: str,
        api_secret: str | SecretStr,
        *,
        session: aiohttp.ClientSession | None = None,
        attempts: int = 3,
        retry_initial: float = 0.2,
        retry_max: float = 2.0,
    ) -> None:
        if not url:
            raise ConfigurationError("LIVEKIT_URL is not set")
        secret = api_secret.get_secret_value() if isinstance(api_secret, SecretStr) else api_secret
        if not api_key or not secret:
            raise ConfigurationError("LIVEKIT_API_KEY and LIVEKIT_API_SECRET must both be set")
        self.url = url
        self._api_key = api_key
        self._api_secret = secret
        self._session = session
        self._own_session: aiohttp.ClientSession | None = None
        self._api: LiveKitAPI | None = None
        self._attempts = max(1, attempts)
        self._retry_initial = retry_initial
        self._retry_max = retry_max

    @classmethod
    def from_settings(
        cls, settings: Settings, *, session: aiohttp.ClientSession | None = None
    ) -> LiveKitTelephony:
        return cls(
            settings.livekit_url,
            settings.livekit_api_key,
            settings.livekit_api_secret,
            session=session,
        )

    def __repr__(self) -> str:
        return f"LiveKitTelephony(url={self.url!r}, api_key={self._api_key!r})"

    async def __aenter__(self) -> LiveKitTelephony:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        api, self._api = self._api, None
        if api is not None:
            await api.aclose()  # closes only a session it created itself
        own, self._own_session = self._own_session, None
        if own is not None:
            await own.close()

    def _client(self) -> LiveKitAPI:
        if self._api is None:
            session = self._session
            if session is None:
                # Each ringing call holds a connection until answered; aiohttp's default
                # pool of 100 would cap the calls a worker has in flight.
                self._own_session = session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0),
                    timeout=aiohttp.ClientTimeout(total=10),
                )
            # failover=False: region failover would replay CreateSIPParticipant (a second dial).
            self._api = LiveKitAPI(
                self.url,
                self._api_key,
                self._api_secret,
                session=session,
                failover=False,
            )
        return self._api

    async def _retry(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        retry_on: Callable[[BaseException], bool],
        what: str,
        attempt_id: int | None = None,
    ) -> T:
        def _log(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            logger.warning(
                "%s failed (%s), try %d of %d; retrying (attempt=%s)",
                what,
                _describe(exc) if exc else "?",
                state.attempt_number,
                self._attempts,
                attempt_id,
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            # jittered exponential: initial * 2**k (capped) plus up to ``initial`` at random
            wait=wait_exponential(multiplier=self._retry_initial, max=self._retry_max)
            + wait_random(0, self._retry_initial),
            retry=retry_if_exception(retry_on),
            before_sleep=_log,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await call()
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    # -- placing a call ------------------------------------------------------------

    def _metadata(self, req: CallRequest) -> str:
        data: dict[str, Any] = dict(req.agent_metadata)
        data["attempt_id"] = req.attempt_id
        data["participant_identity"] = req.participant_identity
        return json.dumps(data, separators=(",", ":"), sort_keys=True, default=str)

    async def place_call(
        self, req: CallRequest, before_dial: BeforeDial | None = None
    ) -> CallResult:
        api = self._client()
        where = f"attempt={req.attempt_id} room={req.room_name} to={mask_phone(req.call_to)}"
        dispatch_req = CreateAgentDispatchRequest(
            agent_name=req.agent_name, room=req.room_name, metadata=self._metadata(req)
        )
        ringing = max(req.ringing_timeout, MIN_RINGING_TIMEOUT)
        dial_req = CreateSIPParticipantRequest(
            sip_trunk_id=req.trunk_id,
            sip_call_to=req.call_to,
            sip_number=req.caller_id or "",
            room_name=req.room_name,
            participant_identity=req.participant_identity,
            participant_name="Patient",
            wait_until_answered=True,
            ringing_timeout=_duration(ringing),
            max_call_duration=_duration(req.max_call_duration),
            krisp_enabled=True,
        )
        request_timeout = (ringing + DIAL_TIMEOUT_MARGIN).total_seconds()

        # 1. the agent, into the attempt's own room
        try:
            dispatch = await self._retry(
                lambda: api.agent_dispatch.create_dispatch(dispatch_req),
                retry_on=lambda exc: _never_sent(exc) or _transient(exc),
                what="CreateDispatch",
                attempt_id=req.attempt_id,
            )
        except ServerError as err:
            result = self._dispatch_error(err, req)
            logger.warning("agent dispatch failed, nothing dialed %s: %s", where, result.error)
            await self._discard_room(req.room_name)
            return result
        except Exception as err:  # transport errors after the retries, or a bug: not dialed
            logger.warning(
                "agent dispatch failed, nothing dialed %s: %s",
                where,
                _describe(err),
                exc_info=not isinstance(err, aiohttp.ClientError | TimeoutError),
            )
            await self._discard_room(req.room_name)
            return CallResult(
                answered=False,
                outcome=Outcome.FAILED,
                error=f"LiveKit at {self.url} unreachable, agent not dispatched, nothing "
                f"dialed ({_describe(err)})",
            )

        # 2. the dial: paced right here, re-sent only when no connection was ever made
        if before_dial is not None and not await before_dial():
            logger.info("pacing start missed, nothing dialed %s", where)
            await self._discard_room(req.room_name)
            return CallResult(
                answered=False,
                outcome=None,
                dispatch_id=dispatch.id,
                error="the trunk's pacing start passed before the dial; nothing dialed",
                problem=DialProblem.MISSED_START,
            )
        logger.info("dialing %s trunk=%s dispatch=%s", where, req.trunk_id, dispatch.id)
        try:
            info = await self._retry(
                lambda: api.sip.create_sip_participant(dial_req, timeout=request_timeout),
                retry_on=_never_sent,
                what="CreateSIPParticipant",
                attempt_id=req.attempt_id,
            )
        except aiohttp.ClientConnectorError as err:
            logger.warning("LiveKit unreachable, nothing dialed %s: %s", where, _describe(err))
            await self._discard_room(req.room_name)
            return CallResult(
                answered=False,
                outcome=Outcome.FAILED,
                dispatch_id=dispatch.id,
                error=f"LiveKit at {self.url} refused the connection, nothing dialed "
                f"({_describe(err)})",
            )
        except ServerError as err:
            result = self._dial_error(err, dispatch.id)
        except Exception as err:  # anything failing after sending may have dialed
            if not isinstance(err, aiohttp.ClientError | TimeoutError):
                logger.exception("unexpected error placing the call %s", where)
            verdict = classify_dial_error(None, None, _describe(err), None)
            result = CallResult(
                answered=False,
                outcome=verdict.outcome,
                dispatch_id=dispatch.id,
                error=verdict.reason,
                problem=verdict.problem,
            )
        else:
            logger.info("answered %s sip_call_id=%s", where, info.sip_call_id)
            return CallResult(
                answered=True,
                outcome=None,
                dispatch_id=dispatch.id,
                sip_call_id=info.sip_call_id or None,
            )
        log = logger.error if result.problem is DialProblem.CONFIGURATION else logger.info
        log(
            "not answered %s outcome=%s sip=%s problem=%s: %s",
            where,
            result.outcome,
            result.sip_status_code,
            result.problem,
            result.error,
        )
        await self._discard_room(req.room_name)
        return result

    def _dial_error(self, err: ServerError, dispatch_id: str) -> CallResult:
        sip_code = _sip_status_code(err)
        verdict = classify_dial_error(err.status, err.code, err.message, sip_code)
        return CallResult(
            answered=False,
            outcome=verdict.outcome,
            dispatch_id=dispatch_id,
            sip_status_code=sip_code,
            sip_status=err.metadata.get("sip_status") or None,
            error=verdict.reason,
            problem=verdict.problem,
        )

    def _dispatch_error(self, err: ServerError, req: CallRequest) -> CallResult:
        refusal = classify_refusal(err.status, err.code, err.message)
        if refusal is Refusal.CREDENTIALS:
            message = f"LiveKit rejected the API credentials; {_CREDENTIALS_HINT}"
        elif refusal is Refusal.GRANT:
            message = "LiveKit denied CreateDispatch; LIVEKIT_API_KEY needs the roomAdmin grant"
        elif 400 <= err.status < 500:
            message = (
                f"LiveKit refused to dispatch agent {req.agent_name!r}; check the clinic's "
                "agent name (CAMPAIGNS_AGENT_NAME)"
            )
        else:
            return CallResult(
                answered=False,
                outcome=Outcome.FAILED,
                error=f"agent dispatch failed, nothing dialed ({_describe(err)})",
            )
        return CallResult(
            answered=False,
            outcome=None,
            error=f"{message} ({_describe(err)})",
            problem=DialProblem.CONFIGURATION,
        )

    async def _discard_room(self, room_name: str) -> None:
        try:
            await self.hang_up(room_name)
        except TelephonyError as err:
            logger.warning("could not delete room %s: %s", room_name, err)

    # -- rooms -------------------------------------------------------------------------

    async def hang_up(self, room_name: str) -> None:
        api = self._client()
        try:
            await self._retry(
                lambda: api.room.delete_room(DeleteRoomRequest(room=room_name)),
                retry_on=lambda exc: _never_sent(exc) or _transient(exc),  # idempotent
                what="DeleteRoom",
            )
        except ServerError as err:
            if err.status == 404 or err.code == "not_found":
                return
            raise self._admin_error(err, "DeleteRoom", "roomCreate") from err
        except (aiohttp.ClientError, TimeoutError) as err:
            raise TelephonyError(f"DeleteRoom failed: {_describe(err)}") from err

    async def room_participants(self, room_name: str) -> list[str]:
        api = self._client()
        try:
            resp = await self._retry(
                lambda: api.room.list_participants(ListParticipantsRequest(room=room_name)),
                retry_on=lambda exc: _never_sent(exc) or _transient(exc),  # read-only
                what="ListParticipants",
            )
        except ServerError as err:
            if err.status == 404 or err.code == "not_found":
                return []
            raise self._admin_error(err, "ListParticipants", "roomAdmin") from err
        except (aiohttp.ClientError, TimeoutError) as err:
            raise TelephonyError(f"ListParticipants failed: {_describe(err)}") from err
        return [p.identity for p in resp.participants]

    # -- trunks ------------------------------------------------------------------------

    async def create_outbound_trunk(self, spec: TrunkSpec) -> str:
        api = self._client()
        trunk = SIPOutboundTrunkInfo(
            name=spec.name,
            address=spec.address,
            numbers=list(spec.numbers),
            auth_username=spec.auth_username or "",
            auth_password=spec.auth_password or "",
            destination_country=spec.destination_country or "",
        )
        try:
            created = await self._retry(
                lambda: api.sip.create_outbound_trunk(CreateSIPOutboundTrunkRequest(trunk=trunk)),
                retry_on=_never_sent,  # not idempotent: a re-sent create makes a second trunk
                what="CreateSIPOutboundTrunk",
            )
        except ServerError as err:
            raise self._admin_error(err, "CreateSIPOutboundTrunk", "sip.admin") from err
        except (aiohttp.ClientError, TimeoutError) as err:
            raise TelephonyError(f"CreateSIPOutboundTrunk failed: {_describe(err)}") from err
        logger.info("outbound trunk %s created (%s)", created.sip_trunk_id, spec.name)
        return created.sip_trunk_id

    async def list_outbound_trunks(self) -> list[TrunkInfo]:
        api = self._client()
        try:
            resp = await self._retry(
                lambda: api.sip.list_outbound_trunk(ListSIPOutboundTrunkRequest()),
                retry_on=lambda exc: _never_sent(exc) or _transient(exc),  # read-only
                what="ListSIPOutboundTrunk",
            )
        except ServerError as err:
            raise self._admin_error(err, "ListSIPOutboundTrunk", "sip.admin") from err
        except (aiohttp.ClientError, TimeoutError) as err:
            raise TelephonyError(f"ListSIPOutboundTrunk failed: {_describe(err)}") from err
        return [
            TrunkInfo(
                trunk_id=t.sip_trunk_id,
                name=t.name,
                address=t.address,
                numbers=tuple(t.numbers),
                auth_username=t.auth_username or None,
                destination_country=t.destination_country or None,
            )
            for t in resp.items
        ]

    def _admin_error(self, err: ServerError, method: str, grant: str) -> TelephonyError:
        refusal = classify_refusal(err.status, err.code, err.message)
        if refusal is Refusal.CREDENTIALS:
            return ConfigurationError(
                f"LiveKit rejected the API credentials for {method}; {_CREDENTIALS_HINT} "
                f"({_describe(err)})"
            )
        if refusal is Refusal.GRANT:
            return ConfigurationError(
                f"LiveKit denied {method}; the key LIVEKIT_API_KEY needs the {grant} grant "
                f"({_describe(err)})"
            )
        return TelephonyError(f"{method} failed: {_describe(err)}")
