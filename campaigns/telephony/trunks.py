"""Outbound trunks: validated specs for LiveKit and the engine's per-trunk limits.

Creating a trunk asks the provider first and stores its limits only once the
provider has it: a failed create leaves no row behind."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session
from sqlmodel import select

from campaigns import audit
from campaigns.errors import InvalidInputError
from campaigns.models import Trunk
from campaigns.phones import to_e164
from campaigns.telephony.port import Telephony, TrunkInfo, TrunkSpec

DEFAULT_CPS = 1.0
DEFAULT_MAX_CONCURRENT = 10


def trunk_spec(
    name: str,
    address: str,
    numbers: str,
    auth_username: str | None,
    auth_password: str | None,
    destination_country: str | None,
) -> TrunkSpec:
    if not name.strip() or not address.strip():
        raise InvalidInputError("--name and --address must not be empty")
    parsed = tuple(to_e164(n, "US") for n in numbers.split(",") if n.strip())
    if not parsed:
        raise InvalidInputError("--numbers: give at least one E.164 number")
    if bool(auth_username) != bool(auth_password):
        raise InvalidInputError("--auth-username and --auth-password go together")
    if destination_country is not None and len(destination_country) != 2:
        raise InvalidInputError("--destination-country: a two-letter country code, e.g. US")
    return TrunkSpec(
        name=name.strip(),
        address=address.strip(),
        numbers=parsed,
        auth_username=auth_username,
        auth_password=auth_password,
        destination_country=destination_country.upper() if destination_country else None,
    )


def check_limits(cps: float, max_concurrent: int) -> None:
    if not cps > 0:
        raise InvalidInputError("--cps must be positive")
    if max_concurrent < 1:
        raise InvalidInputError("--max-concurrent must be at least 1")


def save_limits(
    session: Session, trunk_id: str, spec: TrunkSpec, cps: float, max_concurrent: int, *, actor: str
) -> Trunk:
    trunk = session.get(Trunk, trunk_id) or Trunk(sip_trunk_id=trunk_id, name=spec.name)
    trunk.name = spec.name
    trunk.numbers = ",".join(spec.numbers)
    trunk.calls_per_second = cps
    trunk.max_concurrent = max_concurrent
    session.add(trunk)
    session.flush()
    audit.record(
        session,
        "trunk.saved",
        {
            "sip_trunk_id": trunk_id,
            "name": spec.name,
            "address": spec.address,
            "numbers": list(spec.numbers),
            "cps": cps,
            "max_concurrent": max_concurrent,
            "destination_country": spec.destination_country,
        },
        actor=actor,
    )
    return trunk


async def create_trunk(
    session: Session,
    telephony: Telephony,
    spec: TrunkSpec,
    cps: float,
    max_concurrent: int,
    *,
    actor: str,
) -> str:
    """Create the outbound trunk at the provider and store its calling limits; its id."""
    trunk_id = await telephony.create_outbound_trunk(spec)
    save_limits(session, trunk_id, spec, cps, max_concurrent, actor=actor)
    return trunk_id


async def list_trunks(session: Session, telephony: Telephony) -> list[dict[str, Any]]:
    """The provider's outbound trunks, each with the engine's limits for it."""
    return describe(session, await telephony.list_outbound_trunks())


def describe(session: Session, found: Sequence[TrunkInfo]) -> list[dict[str, Any]]:
    limits = {t.sip_trunk_id: t for t in session.execute(select(Trunk)).scalars()}
    rows = []
    for info in found:
        local = limits.get(info.trunk_id)
        rows.append(
            {
                "sip_trunk_id": info.trunk_id,
                "name": info.name,
                "address": info.address,
                "numbers": list(info.numbers),
                "auth_username": info.auth_username,
                "destination_country": info.destination_country,
                "cps": local.calls_per_second if local else DEFAULT_CPS,
                "max_concurrent": local.max_concurrent if local else DEFAULT_MAX_CONCURRENT,
            }
        )
    return rows
