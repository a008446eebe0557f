"""What every route depends on: the pipeline, a database session per request,
and who is asking.

A caller is identified by ``Authorization: Bearer <token>`` (scripts, the
API) or by the session cookie (the browser). A request carried by the cookie
that changes anything must also carry the session's CSRF token, in the form
field ``csrf_token`` or the ``X-CSRF-Token`` header; a bearer token is never
sent by a browser on its own, so it needs none.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from campaigns import users
from campaigns.attempts.pipeline import Pipeline
from campaigns.db import session_scope
from campaigns.models import Clinic
from campaigns.users import Principal

SESSION_COOKIE = "campaigns_session"
LOGIN_CSRF_COOKIE = "campaigns_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class NotSignedInError(Exception):
    """No valid session or token: the API answers 401, pages send the user to sign in."""


def get_pipeline(request: Request) -> Pipeline:
    pipeline: Pipeline = request.app.state.pipeline
    return pipeline


PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]


def now() -> datetime:
    return datetime.now(UTC)


def db(pipeline: Annotated[Pipeline, Depends(get_pipeline)]) -> Iterator[Session]:
    """One transaction per request: committed when the route returns, else rolled back."""
    with session_scope(pipeline.sessions) as session:
        yield session


DB = Annotated[Session, Depends(db)]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def csrf_sent(request: Request) -> str | None:
    """The CSRF token a request carries, in its header or its form."""
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        field = (await request.form()).get(CSRF_FIELD)
        sent = field if isinstance(field, str) else None
    return sent


def principal(
    request: Request, session: DB, sent: Annotated[str | None, Depends(csrf_sent)]
) -> Principal:
    token = _bearer(request)
    by_cookie = token is None
    if by_cookie:
        token = request.cookies.get(SESSION_COOKIE)
    found = users.principal_for(session, token, now()) if token else None
    if found is None:
        raise NotSignedInError
    csrf_ok = sent is not None and secrets.compare_digest(sent.encode(), found.csrf_token.encode())
    if by_cookie and request.method not in _SAFE_METHODS and not csrf_ok:
        raise HTTPException(403, "missing or wrong CSRF token")
    request.state.principal = found
    return found


CurrentUser = Annotated[Principal, Depends(principal)]


def auditor(user: CurrentUser) -> Principal:
    if not user.may_audit:
        raise HTTPException(403, "only reviewers and admins read the audit log")
    return user


def admin(user: CurrentUser) -> Principal:
    if not user.is_admin:
        raise HTTPException(403, "only admins may do this")
    return user


Auditor = Annotated[Principal, Depends(auditor)]
Admin = Annotated[Principal, Depends(admin)]


def readable_clinic(clinic_id: int, user: CurrentUser, session: DB) -> Clinic:
    """The clinic of the path; 404 when it does not exist or is not this user's."""
    return users.readable_clinic(session, user, clinic_id)


def operable_clinic(
    clinic: Annotated[Clinic, Depends(readable_clinic)], user: CurrentUser
) -> Clinic:
    """A clinic the user may change (staff of it, or admin); 403 for a reviewer."""
    assert clinic.id is not None
    if not user.may_operate_clinic(clinic.id):
        raise HTTPException(403, "read-only access to this clinic")
    return clinic


ReadableClinic = Annotated[Clinic, Depends(readable_clinic)]
OperableClinic = Annotated[Clinic, Depends(operable_clinic)]
