"""Do-not-call lists: a global internal list, one per clinic, and the national registry.

Every change bumps the list's version; each policy decision records the
versions it checked, so a reviewer can tell which data a call was cleared against.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, insert
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns import audit
from campaigns.db import insert_or_skip, one_of, utcnow
from campaigns.errors import InvalidInputError
from campaigns.masking import mask_phone
from campaigns.models import DncEntry, DncList, DncSource
from campaigns.phones import to_e164

GLOBAL_LIST = "global"
NATIONAL_LIST = "national"
_BULK_CHUNK = 5000


def clinic_list(clinic_id: int) -> str:
    return f"clinic:{clinic_id}"


def _list(session: Session, name: str) -> DncList:
    """The list's row, locked until the transaction ends; created first when missing.

    Two first additions at once (two patients of a new clinic opting out) must not
    both create it: the loser of the insert waits for the winner's row and locks it.
    """
    found = session.get(DncList, name, with_for_update=True)
    if found is None:
        session.execute(
            insert_or_skip(session, DncList)
            .values(name=name, version=0, entries=0, updated_at=utcnow())
            .on_conflict_do_nothing(index_elements=["name"])
        )
        found = session.get(DncList, name, with_for_update=True, populate_existing=True)
        assert found is not None
    return found


def _editable_list(session: Session, clinic_id: int | None) -> DncList:
    """The clinic's own list, or the global one without a clinic; locked for the edit."""
    return _list(session, clinic_list(clinic_id) if clinic_id is not None else GLOBAL_LIST)


def _entry_on(list_name: str, phone_e164: str) -> ColumnElement[bool]:
    return and_(col(DncEntry.list_name) == list_name, col(DncEntry.phone_e164) == phone_e164)


def _bump(dnc_list: DncList, entries_delta: int) -> None:
    dnc_list.version += 1
    dnc_list.entries = max(0, dnc_list.entries + entries_delta)
    dnc_list.updated_at = utcnow()


def add(
    session: Session,
    phone_e164: str,
    *,
    clinic_id: int | None,
    source: DncSource,
    reason: str | None,
    actor: str,
) -> DncEntry:
    """Put a number on the clinic's list (or the global one); adding twice changes nothing."""
    dnc_list = _editable_list(session, clinic_id)
    name = dnc_list.name
    existing = session.execute(
        select(DncEntry).where(_entry_on(name, phone_e164))
    ).scalar_one_or_none()
    if existing is not None:
        return existing
    entry = DncEntry(
        list_name=name,
        phone_e164=phone_e164,
        clinic_id=clinic_id,
        source=source,
        reason=reason,
        added_by=actor,
    )
    session.add(entry)
    _bump(dnc_list, 1)
    session.flush()
    audit.record(
        session,
        "dnc.added",
        {
            "list": name,
            "list_version": dnc_list.version,
            "phone": phone_e164,
            "source": source,
            "reason": reason,
        },
        actor=actor,
        clinic_id=clinic_id,
    )
    return entry


def remove(
    session: Session,
    phone_e164: str,
    *,
    clinic_id: int | None,
    actor: str,
    reason: str | None = None,
) -> bool:
    dnc_list = _editable_list(session, clinic_id)
    name = dnc_list.name
    removed = session.execute(delete(DncEntry).where(_entry_on(name, phone_e164))).rowcount  # type: ignore[attr-defined]
    if not removed:
        return False
    _bump(dnc_list, -removed)
    audit.record(
        session,
        "dnc.removed",
        {"list": name, "list_version": dnc_list.version, "phone": phone_e164, "reason": reason},
        actor=actor,
        clinic_id=clinic_id,
    )
    return True


def entries(session: Session, *, clinic_id: int | None = None) -> list[DncEntry]:
    query = select(DncEntry).order_by(col(DncEntry.added_at), col(DncEntry.id))
    if clinic_id is not None:
        query = query.where(col(DncEntry.list_name).in_([GLOBAL_LIST, clinic_list(clinic_id)]))
    else:
        query = query.where(col(DncEntry.list_name) != NATIONAL_LIST)
    return list(session.execute(query).scalars())


def parse_registry_line(line: str) -> str | None:
    """A registry flat-file line (``3055550100`` or ``305,5550100``) -> E.164, None if blank."""
    text = line.strip().replace(" ", "")
    if not text or text.startswith("#"):
        return None
    digits = "".join(text.split(","))
    if not digits.isdigit():
        raise InvalidInputError(f"not a number: {mask_phone(text)!r}")
    if len(digits) == 11 and digits.startswith("1"):
        digits = digits[1:]
    if len(digits) != 10:
        raise InvalidInputError("expected 10 digits (area code and number)")
    return "+1" + digits


@dataclass(frozen=True)
class RegistryImport:
    list_name: str
    version: int
    entries: int
    rejected_lines: tuple[int, ...]


def import_file(
    session: Session,
    lines: Iterable[str],
    *,
    source: str,
    as_of: date,
    actor: str,
    default_region: str = "US",
) -> RegistryImport:
    """Load a DNC file.

    ``national`` replaces the registry snapshot; ``internal`` adds to the global list.
    """
    if source not in ("national", "internal"):
        raise InvalidInputError("--source must be national or internal")
    name = NATIONAL_LIST if source == "national" else GLOBAL_LIST
    entry_source = DncSource.NATIONAL_REGISTRY if source == "national" else DncSource.INTERNAL
    dnc_list = _list(session, name)
    rejected: list[int] = []

    def numbers() -> Iterator[str]:
        for line_no, line in enumerate(lines, start=1):
            try:
                number = (
                    parse_registry_line(line)
                    if source == "national"
                    else (to_e164(line, default_region) if line.strip() else None)
                )
            except InvalidInputError:
                rejected.append(line_no)
                continue
            if number is not None:
                yield number

    if source == "national":
        # A registry download is a full snapshot: what is no longer listed may be called.
        session.execute(delete(DncEntry).where(col(DncEntry.list_name) == name))
        existing: set[str] = set()
    else:
        existing = set(
            session.execute(
                select(DncEntry.phone_e164).where(col(DncEntry.list_name) == name)
            ).scalars()
        )
    now = utcnow()
    batch: list[dict[str, Any]] = []
    for number in numbers():
        if number in existing:
            continue
        existing.add(number)
        batch.append(
            {
                "list_name": name,
                "phone_e164": number,
                "source": entry_source,
                "added_by": actor,
                "added_at": now,
            }
        )
        if len(batch) >= _BULK_CHUNK:
            session.execute(insert(DncEntry), batch)
            batch = []
    if batch:
        session.execute(insert(DncEntry), batch)
    count = session.execute(
        select(func.count()).select_from(DncEntry).where(col(DncEntry.list_name) == name)
    ).scalar_one()
    _bump(dnc_list, 0)
    dnc_list.entries = count
    if source == "national":
        dnc_list.registry_as_of = as_of
    audit.record(
        session,
        "dnc.imported",
        {
            "list": name,
            "list_version": dnc_list.version,
            "entries": count,
            "as_of": as_of.isoformat(),
            "rejected_lines": rejected[:1000],
            "rejected": len(rejected),
        },
        actor=actor,
    )
    return RegistryImport(name, dnc_list.version, count, tuple(rejected))


@dataclass(frozen=True)
class DncLookup:
    blocked_by: tuple[str, ...]
    registry_as_of: date | None
    list_versions: Mapping[str, int]


def consulted_lists(clinic_id: int) -> dict[str, str]:
    """The lists a call for this clinic is checked against, by name, with their labels."""
    return {
        GLOBAL_LIST: "global",
        clinic_list(clinic_id): "clinic",
        NATIONAL_LIST: "national_registry",
    }


@dataclass(frozen=True)
class DncSnapshot:
    """Which lists hold each of some numbers, and the version of every list, read at once."""

    hits: Mapping[str, frozenset[str]]
    versions: Mapping[str, int]
    registry_as_of: date | None
    # Per clinic: the lists it consults and their versions, the same for all its numbers.
    _consulted: dict[int, tuple[dict[str, str], Mapping[str, int]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def lookup(self, phone_e164: str, clinic_id: int) -> DncLookup:
        """Which lists consulted for this clinic hold the number, and their versions."""
        consulted = self._consulted.get(clinic_id)
        if consulted is None:
            labels = consulted_lists(clinic_id)
            versions = {label: self.versions.get(name, 0) for name, label in labels.items()}
            consulted = self._consulted.setdefault(clinic_id, (labels, MappingProxyType(versions)))
        labels, list_versions = consulted
        found = self.hits.get(phone_e164)
        return DncLookup(
            blocked_by=tuple(sorted(label for name, label in labels.items() if name in found))
            if found
            else (),
            registry_as_of=self.registry_as_of,
            list_versions=list_versions,
        )


def snapshot(session: Session, phones: Sequence[str]) -> DncSnapshot:
    """Every list's version and which lists hold each of ``phones``, in one statement: each
    list once, and once more per number on it (an entry always belongs to a list)."""
    hits: dict[str, set[str]] = {}
    versions: dict[str, int] = {}
    registry_as_of: date | None = None
    for name, version, as_of, phone in session.execute(
        select(
            col(DncList.name),
            col(DncList.version),
            col(DncList.registry_as_of),
            col(DncEntry.phone_e164),
        )
        .select_from(DncList)
        .outerjoin(
            DncEntry,
            (col(DncEntry.list_name) == col(DncList.name))
            & one_of(session, col(DncEntry.phone_e164), phones),
        )
    ).all():
        versions[name] = version
        if name == NATIONAL_LIST:
            registry_as_of = as_of
        if phone is not None:
            hits.setdefault(phone, set()).add(name)
    return DncSnapshot(
        hits={phone: frozenset(names) for phone, names in hits.items()},
        versions=versions,
        registry_as_of=registry_as_of,
    )


def lookup(session: Session, phone_e164: str, clinic_id: int) -> DncLookup:
    """Which lists hold this number, and the versions of every list consulted."""
    return snapshot(session, [phone_e164]).lookup(phone_e164, clinic_id)
