"""Twirp on the wire: request decoding, protobuf/JSON replies and error encoding.

A request is ``POST /twirp/livekit.<Service>/<Method>`` with a protobuf body
(``application/protobuf``) or its JSON form (``application/json``); the reply
uses the same encoding. Errors are Twirp JSON ``{"code", "msg", "meta"}`` with
the HTTP status a real LiveKit server uses. A finished :class:`Reply` is what
the request-id cache keeps, so a retried request gets the very same answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from simulator.scenario import SipFailure

REQUEST_ID_HEADER = "X-Livekit-Request-Id"


class TwirpError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        msg: str,
        meta: dict[str, str] | None = None,
        *,
        plain: bool = False,
    ) -> None:
        super().__init__(msg)
        self.status = status
        self.code = code
        self.msg = msg
        self.meta = meta or {}
        # livekit-server's auth middleware answers a token it cannot read in plain
        # text, not Twirp JSON (the client then reads the code as "unknown").
        self.plain = plain

    @classmethod
    def from_sip(cls, failure: SipFailure) -> TwirpError:
        return cls(failure.http_status, failure.code, failure.msg, failure.meta())


@dataclass(frozen=True)
class Reply:
    """A finished HTTP answer, cached per ``X-Livekit-Request-Id``."""

    status: int
    body: bytes
    content_type: str

    def response(self) -> web.Response:
        return web.Response(status=self.status, body=self.body, content_type=self.content_type)


def error_reply(err: TwirpError) -> Reply:
    if err.plain:
        return Reply(err.status, err.msg.encode(), "text/plain")
    payload: dict[str, Any] = {"code": err.code, "msg": err.msg}
    if err.meta:
        payload["meta"] = err.meta
    return Reply(err.status, json.dumps(payload).encode(), "application/json")


def message_reply(message: Message, as_json: bool) -> Reply:
    if as_json:
        body = json_format.MessageToJson(message, preserving_proto_field_name=True).encode()
        return Reply(200, body, "application/json")
    return Reply(200, message.SerializeToString(), "application/protobuf")


def decode_request(request_type: type[Message], body: bytes, as_json: bool) -> Message:
    """The request message, or a ``malformed`` Twirp error."""
    try:
        if as_json:
            return json_format.Parse(body or b"{}", request_type(), ignore_unknown_fields=True)
        return request_type.FromString(body)
    except (DecodeError, json_format.ParseError) as exc:
        raise TwirpError(400, "malformed", f"could not decode request: {exc}") from None
