"""Who may call what: API-key JWT verification and the grant each method needs.

A request carries ``Authorization: Bearer <JWT>`` signed HS256 with the API
secret, issued by the API key, with ``exp`` (``nbf`` honoured), both within
:data:`TOKEN_LEEWAY` of clock skew. As livekit-server answers: a header that
is not a bearer token, or a token it cannot verify, is a plain-text 401; no
header at all, or a token without the method's grant, is 401
``unauthenticated`` "permissions denied" in Twirp JSON.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import jwt
from jwt.utils import base64url_decode
from livekit.api.access_token import Claims, TokenVerifier

from simulator.scenario import SimulatorConfig
from simulator.twirp import TwirpError

TOKEN_LEEWAY = 60.0  # seconds of clock skew accepted, as livekit's TokenVerifier

GrantCheck = Callable[[Claims, Any], bool]


def authenticate(authorization: str, config: SimulatorConfig) -> Claims:
    """The claims of a valid ``Authorization`` header value."""
    if not authorization:
        raise deny()
    if not authorization.startswith("Bearer "):
        raise TwirpError(
            401,
            "unauthenticated",
            "invalid authorization header. Must start with Bearer ",
            plain=True,
        )
    token = authorization[len("Bearer ") :].strip()
    try:
        _check_token(token, config)
        # Signature and time claims checked above; this only parses grants.
        verifier = TokenVerifier(config.api_key, config.api_secret)
        return verifier.verify(token, verify_signature=False)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise TwirpError(401, "unauthenticated", "invalid authorization token", plain=True) from exc


def _check_token(token: str, config: SimulatorConfig) -> None:
    """HS256 signature by the API secret, issuer = API key, exp required.

    Checked by hand rather than by ``jwt.decode`` so a short dev secret
    ("secret") does not raise PyJWT's InsecureKeyLengthWarning in this thread
    (fatal under ``filterwarnings = error``).
    """
    header = jwt.get_unverified_header(token)
    if header.get("alg") != "HS256":
        raise jwt.InvalidAlgorithmError("alg must be HS256")
    signing_input, _, signature = token.rpartition(".")
    expected = hmac.new(config.api_secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, base64url_decode(signature)):
        raise jwt.InvalidSignatureError("signature verification failed")
    claims = jwt.decode(token, options={"verify_signature": False})
    if claims.get("iss") != config.api_key:
        raise jwt.InvalidIssuerError("unknown API key")
    now = time.time()
    exp = claims.get("exp")
    if not isinstance(exp, int | float):
        raise jwt.MissingRequiredClaimError("exp")
    if exp < now - TOKEN_LEEWAY:
        raise jwt.ExpiredSignatureError("token has expired")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and nbf > now + TOKEN_LEEWAY:
        raise jwt.ImmatureSignatureError("token is not yet valid")


def deny() -> TwirpError:
    return TwirpError(401, "unauthenticated", "permissions denied")


def sip_call(claims: Claims, _req: Any) -> bool:
    return bool(claims.sip and claims.sip.call)


def sip_admin(claims: Claims, _req: Any) -> bool:
    return bool(claims.sip and claims.sip.admin)


def room_admin(claims: Claims, req: Any) -> bool:
    video = claims.video
    return bool(video and video.room_admin and video.room == req.room)


def sip_call_and_room_admin(claims: Claims, req: Any) -> bool:
    video = claims.video
    in_room = bool(video and video.room_admin and video.room == req.room_name)
    return sip_call(claims, req) and in_room


def room_create(claims: Claims, _req: Any) -> bool:
    return bool(claims.video and claims.video.room_create)
