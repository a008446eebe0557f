"""People who use the console and the API: accounts, roles, sign-in and tokens.

Roles:

* ``staff`` of named clinics: imports, campaigns, appointments and attempts of
  those clinics, explain, a patient's do-not-call request, pause and resume;
* ``reviewer``: reads every clinic, plus the audit log (browse, verify,
  checkpoint, export);
* ``admin``: everything, including clinics and users.

A clinic a user may not read does not exist for that user (callers answer 404,
so names do not leak). Passwords are hashed with argon2; a browser session and
an API token are the same row, holding only the SHA-256 of the secret handed
out, so a database dump signs nobody in. Sessions expire and can be revoked;
repeated failed sign-ins lock the account for a while. Sign-ins, failed
sign-ins and every change to an account are audit events.

Callers own the transaction: nothing here commits.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns import audit
from campaigns.errors import CampaignError, InvalidInputError, NotFoundError
from campaigns.models import Clinic, Role, User, UserClinic, UserSession

BROWSER = "browser"
API = "api"
MIN_PASSWORD_LENGTH = 12

_hasher = PasswordHasher()
# Verified against when the email is unknown, so a wrong email costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class SignInError(CampaignError):
    """Wrong email or password, a disabled or a locked account: one message for all."""


@dataclass(frozen=True)
class Principal:
    """Who is asking, and what they may touch."""

    user_id: int
    email: str
    role: Role
    clinic_ids: frozenset[int]
    session_id: int
    csrf_token: str

    @property
    def actor(self) -> str:
        return actor_for(self.email)

    def may_read_clinic(self, clinic_id: int) -> bool:
        return self.role in (Role.ADMIN, Role.REVIEWER) or clinic_id in self.clinic_ids

    def may_operate_clinic(self, clinic_id: int) -> bool:
        """Import, pause, resume, add a do-not-call request."""
        return self.role == Role.ADMIN or (self.role == Role.STAFF and clinic_id in self.clinic_ids)

    @property
    def may_audit(self) -> bool:
        return self.role in (Role.ADMIN, Role.REVIEWER)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    def sees_phone_numbers(self, clinic_id: int) -> bool:
        """Reviewers audit decisions; they do not need patients' numbers."""
        return self.may_operate_clinic(clinic_id)


def actor_for(email: str) -> str:
    """How a user appears as the actor of audit events (the column holds 100 characters)."""
    return f"user:{email}"[:100]


def normalise_email(email: str) -> str:
    cleaned = email.strip().lower()
    if "@" not in cleaned or len(cleaned) > 254 or any(c.isspace() for c in cleaned):
        raise InvalidInputError(f"{email!r} is not an email address")
    return cleaned


def parse_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError as exc:
        raise InvalidInputError(f"role must be one of {', '.join(r.value for r in Role)}") from exc


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_user(
    session: Session,
    email: str,
    role: str,
    password: str,
    *,
    clinic_names: Sequence[str] = (),
    actor: str,
) -> User:
    """Create an account; staff must name at least one clinic, others none."""
    address = normalise_email(email)
    parsed_role = parse_role(role)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInputError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if parsed_role == Role.STAFF and not clinic_names:
        raise InvalidInputError("a staff user needs at least one --clinic")
    if parsed_role != Role.STAFF and clinic_names:
        raise InvalidInputError(f"an {parsed_role} sees every clinic; give no --clinic")
    clinic_ids = []
    for name in clinic_names:
        found = session.execute(select(Clinic.id).where(col(Clinic.name) == name)).scalar()
        if found is None:
            raise NotFoundError(f"no clinic named {name!r}")
        clinic_ids.append(found)
    if session.execute(select(User.id).where(col(User.email) == address)).first():
        raise InvalidInputError(f"a user {address} already exists")
    user = User(email=address, password_hash=_hasher.hash(password), role=parsed_role)
    session.add(user)
    session.flush()
    assert user.id is not None
    session.add_all(UserClinic(user_id=user.id, clinic_id=c) for c in sorted(set(clinic_ids)))
    audit.record(
        session,
        "user.added",
        {"email": address, "role": parsed_role, "clinics": list(clinic_names)},
        actor=actor,
    )
    return user


def get_user(session: Session, email: str) -> User:
    user = session.execute(
        select(User).where(col(User.email) == email.strip().lower())
    ).scalar_one_or_none()
    if user is None:
        raise NotFoundError(f"no user {email}")
    return user


def describe(session: Session, user: User) -> dict[str, Any]:
    """The JSON shape of a user (``user list --json`` and ``GET /api/v1/users``)."""
    names = session.execute(
        select(Clinic.name)
        .join(UserClinic, col(UserClinic.clinic_id) == col(Clinic.id))
        .where(col(UserClinic.user_id) == user.id)
        .order_by(col(Clinic.name))
    ).scalars()
    return {
        "email": user.email,
        "role": user.role,
        "clinics": list(names),
        "disabled": user.disabled,
        "locked_until": user.locked_until.isoformat() if user.locked_until else None,
        "created_at": user.created_at.isoformat(),
    }


def list_users(session: Session) -> list[dict[str, Any]]:
    users = session.execute(select(User).order_by(col(User.email))).scalars().all()
    return [describe(session, user) for user in users]


def disable_user(session: Session, email: str, now: datetime, *, actor: str) -> bool:
    """Disable an account and revoke its sessions and tokens; False if already disabled."""
    user = get_user(session, email)
    if user.disabled:
        return False
    user.disabled = True
    session.execute(
        update(UserSession)
        .where(col(UserSession.user_id) == user.id, col(UserSession.revoked_at).is_(None))
        .values(revoked_at=now)
    )
    audit.record(session, "user.disabled", {"email": user.email}, actor=actor)
    return True


def sign_in(
    session: Session,
    email: str,
    password: str,
    now: datetime,
    *,
    max_failures: int,
    lockout: timedelta,
) -> User:
    """Check a password; count failures and lock the account after ``max_failures``.

    The caller commits even when this raises, so failures and lock-outs are kept.
    """
    address = email.strip().lower()
    user = session.execute(
        select(User).where(col(User.email) == address).with_for_update()
    ).scalar_one_or_none()
    if user is None:
        _password_matches(_DUMMY_HASH, password)
        audit.record(
            session,
            "user.login_failed",
            {"email": address, "why": "unknown"},
            actor=actor_for(address),
        )
        raise SignInError("wrong email or password")
    locked = user.locked_until is not None and user.locked_until > now
    if user.disabled or locked:
        why = "disabled" if user.disabled else "locked"
        audit.record(
            session, "user.login_failed", {"email": address, "why": why}, actor=actor_for(address)
        )
        raise SignInError("wrong email or password, or the account is locked")
    if not _password_matches(user.password_hash, password):
        user.failed_logins += 1
        payload: dict[str, Any] = {"email": address, "why": "password"}
        if user.failed_logins >= max_failures:
            user.locked_until = now + lockout
            user.failed_logins = 0
            payload["locked_until"] = user.locked_until.isoformat()
        audit.record(session, "user.login_failed", payload, actor=actor_for(address))
        raise SignInError("wrong email or password")
    user.failed_logins = 0
    user.locked_until = None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return user


def _password_matches(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def open_session(
    session: Session, user: User, kind: str, now: datetime, lifetime: timedelta
) -> tuple[str, datetime]:
    """A new browser session or API token for ``user``: the secret, and when it expires."""
    assert user.id is not None
    token = secrets.token_urlsafe(32)
    expires_at = now + lifetime
    session.add(
        UserSession(
            token_hash=_token_hash(token),
            user_id=user.id,
            kind=kind,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=expires_at,
        )
    )
    kind_of_event = "user.login" if kind == BROWSER else "user.token_issued"
    audit.record(session, kind_of_event, {"email": user.email}, actor=actor_for(user.email))
    return token, expires_at


def principal_for(session: Session, token: str, now: datetime) -> Principal | None:
    """Who holds ``token``; None when it is unknown, expired, revoked or its user disabled."""
    found = session.execute(
        select(UserSession, User)
        .join(User, col(User.id) == col(UserSession.user_id))
        .where(col(UserSession.token_hash) == _token_hash(token))
    ).first()
    if found is None:
        return None
    user_session, user = found
    if user_session.revoked_at is not None or user_session.expires_at <= now or user.disabled:
        return None
    assert user.id is not None and user_session.id is not None
    clinic_ids = session.execute(
        select(UserClinic.clinic_id).where(col(UserClinic.user_id) == user.id)
    ).scalars()
    return Principal(
        user_id=user.id,
        email=user.email,
        role=Role(user.role),
        clinic_ids=frozenset(clinic_ids),
        session_id=user_session.id,
        csrf_token=user_session.csrf_token,
    )


def revoke_session(session: Session, principal: Principal, now: datetime) -> None:
    """Sign out: this session (or token) no longer works."""
    session.execute(
        update(UserSession)
        .where(col(UserSession.id) == principal.session_id)
        .values(revoked_at=now)
    )
    audit.record(session, "user.logout", {"email": principal.email}, actor=principal.actor)


def visible_clinics(session: Session, principal: Principal) -> list[Clinic]:
    query = select(Clinic).order_by(col(Clinic.name))
    if principal.role == Role.STAFF:
        query = query.where(col(Clinic.id).in_(sorted(principal.clinic_ids) or [-1]))
    return list(session.execute(query).scalars())


def readable_clinic(session: Session, principal: Principal, clinic_id: int) -> Clinic:
    """The clinic, or NotFoundError when it does not exist or the user may not read it."""
    clinic = session.get(Clinic, clinic_id)
    if clinic is None or not principal.may_read_clinic(clinic_id):
        raise NotFoundError(f"no clinic {clinic_id}")
    return clinic
