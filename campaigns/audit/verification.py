"""Verifying the audit log's chains, and checkpoints that anchor them.

See :mod:`campaigns.audit` for the contract.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PositiveInt, ValidationError
from sqlalchemy.orm import Session
from sqlmodel import col, select

from campaigns.audit.log import (
    CHECKPOINT_KIND,
    NO_CLINIC_CHAIN,
    ChainKey,
    chain_key,
    chain_name,
    genesis_hash,
    iter_events,
    record,
    stored_material,
    write_pending,
)
from campaigns.errors import CampaignError, InvalidInputError
from campaigns.models import AuditEvent


class InvalidCheckpointError(InvalidInputError):
    """A checkpoint file that cannot be read as one."""


class Checkpoint(BaseModel):
    """The log's head at one moment, to keep outside the database (exactly these keys)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    seq: PositiveInt
    hash: str = Field(pattern="^[0-9a-f]{64}$")
    at: AwareDatetime
    count: PositiveInt

    @classmethod
    def parse(cls, document: str) -> Checkpoint:
        try:
            return cls.model_validate_json(document)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "checkpoint"
            raise InvalidCheckpointError(f"{where}: {first['msg']}") from exc


@dataclass(frozen=True)
class VerifyResult:
    """A verify run: ``events`` walked (up to the bad one), where it broke and why."""

    ok: bool
    events: int
    first_bad_seq: int | None = None
    problem: str | None = None
    checkpoint: Checkpoint | None = None
    chain: int | None = None  # the chain of ``first_bad_seq``
    chains: int = 0  # chains walked

    @property
    def where(self) -> str:
        assert self.chain is not None
        return f"event {self.first_bad_seq} of {chain_name(self.chain)}"

    def document(self) -> dict[str, Any]:
        """As ``audit verify --json`` prints it."""
        return {
            "ok": self.ok,
            "events": self.events,
            "chains": self.chains,
            "chain": self.chain,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
            "checkpoint": self.checkpoint.model_dump(mode="json") if self.checkpoint else None,
        }


def _missing(first: int, last: int) -> str:
    return f"event {first} is missing" if first == last else f"events {first}-{last} are missing"


def _chain_problem(
    event: AuditEvent, expected_seq: int, expected_prev: str, key: ChainKey
) -> str | None:
    if event.seq != expected_seq:
        if event.seq < expected_seq:
            return f"sequence number {event.seq} where {expected_seq} was expected"
        if expected_seq == 1:
            jump = f"the chain starts at {event.seq}"
        else:
            jump = f"the sequence jumps from {expected_seq - 1} to {event.seq}"
        return f"{_missing(expected_seq, event.seq - 1)} ({jump}): removed"
    # Before the links: a clinic chain's genesis is keyed too.
    if event.key_id != key.id:
        return (
            f"chained with key id {event.key_id or '(none)'}, not CAMPAIGNS_AUDIT_KEY's {key.id}: "
            "a different key, or re-chained without it"
        )
    if event.prev_hash != expected_prev:
        return "previous hash does not match: an event was removed, reordered or moved"
    if not hmac.compare_digest(key.seal(stored_material(event)), event.hash):
        return "content does not match its hash: the event was altered"
    if event.chain not in (NO_CLINIC_CHAIN, event.clinic_id):
        return f"an event of clinic {event.clinic_id} in {chain_name(event.chain)}"
    return None


Heads = dict[int, tuple[int, str]]  # chain: (seq, hash) of an event in it


def _anchored_heads(event: AuditEvent) -> Heads:
    """The clinic chains' heads a checkpoint's event anchors (none in an older one's)."""
    chains = json.loads(event.payload).get("chains", {}) if event.kind == CHECKPOINT_KIND else {}
    return {int(chain): (seq, digest) for chain, (seq, digest) in chains.items()}


class _Walk:
    """:func:`verify`'s state: each chain's last event that holds, what the checkpoint
    anchors, and the anchored chains not yet left behind."""

    def __init__(self, checkpoint: Checkpoint | None) -> None:
        self.checkpoint = checkpoint
        self.key = chain_key()
        self.heads: Heads = {}
        self.anchored: Heads = {}
        self.unchecked: list[int] = []  # highest first
        if checkpoint is not None:
            self.anchored[NO_CLINIC_CHAIN] = (checkpoint.seq, checkpoint.hash)
            self.unchecked.append(NO_CLINIC_CHAIN)
        self.count = 0
        self.chain: int | None = None

    def _taken(self) -> str:
        assert self.checkpoint is not None
        return f"the checkpoint taken {self.checkpoint.at.isoformat()}"

    def start(self, chain: int) -> tuple[int, int, str] | None:
        """Enter ``chain``; (chain, seq, problem) when a chain anchored before it falls short."""
        problem = self.finish(until=chain)
        self.chain = chain
        self.heads[chain] = (0, genesis_hash(chain, self.key))
        return problem

    def finish(self, until: int | None = None) -> tuple[int, int, str] | None:
        """Check that every anchored chain before ``until`` (all: at the end) reaches its
        anchor, also the ones the log no longer holds at all."""
        while self.unchecked and (until is None or self.unchecked[-1] < until):
            chain = self.unchecked.pop()
            last, _ = self.heads.get(chain, (0, ""))
            anchor, _ = self.anchored[chain]
            if last < anchor:
                ends = f"ends at event {last}" if last else "is gone"
                return (
                    chain,
                    last + 1,
                    f"{_missing(last + 1, anchor)}: the chain {ends}, {self._taken()} "
                    f"anchors it at event {anchor} (truncated)",
                )
        return None

    def step(self, event: AuditEvent) -> str | None:
        """Check the next event of the current chain; its problem, if any."""
        self.count += 1
        last, prev = self.heads[event.chain]
        problem = _chain_problem(event, last + 1, prev, self.key)
        if problem is None and self.checkpoint is not None:
            problem = self._anchor_problem(event)
        if problem is None:
            self.heads[event.chain] = (event.seq, event.hash)
        return problem

    def _anchor_problem(self, event: AuditEvent) -> str | None:
        assert self.checkpoint is not None
        seq, digest = self.anchored.get(event.chain, (0, ""))
        if event.seq != seq:
            return None
        if event.hash != digest:
            return f"does not match {self._taken()}: the chain was rewritten up to it"
        if event.chain == NO_CLINIC_CHAIN:
            clinics = _anchored_heads(event)
            anchored = seq + sum(head for head, _ in clinics.values())
            if self.checkpoint.count != anchored:
                return (
                    f"the checkpoint counted {self.checkpoint.count} events, "
                    f"its event anchors {anchored}"
                )
            self.anchored.update(clinics)
            self.unchecked = sorted(self.anchored, reverse=True)
        return None


def _walk(session: Session, checkpoint: Checkpoint | None) -> tuple[VerifyResult, Heads]:
    walk = _Walk(checkpoint)

    def broken(chain: int, seq: int, problem: str) -> tuple[VerifyResult, Heads]:
        failed = VerifyResult(False, walk.count, seq, problem, checkpoint, chain, len(walk.heads))
        return failed, walk.heads

    for event in iter_events(session):
        if event.chain != walk.chain and (gone := walk.start(event.chain)) is not None:
            return broken(*gone)
        if (problem := walk.step(event)) is not None:
            return broken(event.chain, event.seq, problem)
    if (gone := walk.finish()) is not None:
        return broken(*gone)
    return VerifyResult(True, walk.count, checkpoint=checkpoint, chains=len(walk.heads)), walk.heads


def verify(session: Session, checkpoint: Checkpoint | None = None) -> VerifyResult:
    """Re-walk every chain; stop at the first event that does not hold.

    With a checkpoint, also fail when a chain no longer holds the events it anchors
    as they were then. Events are streamed: memory does not grow with the log.
    """
    return _walk(session, checkpoint)[0]


def take_checkpoint(session: Session, *, actor: str, out: str) -> Checkpoint:
    """Verify the log, record who anchors it (``out`` says where to) with every clinic
    chain's verified head, and return that event as the checkpoint.

    The checkpoint covers its own event; it counts once the caller's transaction commits.
    """
    verified, heads = _walk(session, None)
    if not verified.ok:
        raise CampaignError(
            f"audit log broken at {verified.where}: {verified.problem}; no checkpoint taken"
        )
    clinics = {chain: head for chain, head in sorted(heads.items()) if chain != NO_CLINIC_CHAIN}
    anchors = {str(chain): list(head) for chain, head in clinics.items()}
    payload = {"out": out, "verified_events": verified.events, "chains": anchors}
    record(session, CHECKPOINT_KIND, payload, actor=actor)
    write_pending(session)
    head = session.execute(
        select(AuditEvent)
        .where(col(AuditEvent.chain) == NO_CLINIC_CHAIN)
        .order_by(col(AuditEvent.seq).desc())
        .limit(1)
    ).scalar_one()
    count = head.seq + sum(seq for seq, _ in clinics.values())
    return Checkpoint(seq=head.seq, hash=head.hash, at=head.at, count=count)
