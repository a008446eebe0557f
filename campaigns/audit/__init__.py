"""Append-only audit log: one keyed hash chain per clinic, checkpoints kept elsewhere.

Each event belongs to one chain: its clinic's (``chain`` is the clinic's id) or,
for events of no clinic (sign-ins, users, the global do-not-call list,
checkpoints, exports), chain 0. Each event's hash is an HMAC-SHA256, keyed with
``CAMPAIGNS_AUDIT_KEY`` (kept outside the database), of its sequence number, its
content and the previous event's hash in its chain; a chain's first event links
to the chain's genesis (all zeros for chain 0, keyed per clinic otherwise), so an
event or a whole chain cannot pass for another clinic's. Editing, deleting,
reordering or moving a stored event breaks a chain at an event that
:func:`verify` names (chain and sequence number), and someone with the database
but not the key cannot re-chain a chain so that it verifies. Each event also
stores the key's fingerprint (``key_id``), so a wrong key is told apart from an
altered event. A log written before chains were per clinic is chain 0 as it was.

Sequence numbers run 1, 2, 3 ... per chain with no gap: appends to a chain are
serialized (an advisory lock per chain on PostgreSQL, taken in chain order so
transactions that write several clinics cannot deadlock; SQLite's single writer)
and each takes the chain's next number itself, so a rolled-back transaction
leaves no hole, a chain never forks, and a missing number is a removed event.
Appends to different chains never wait for each other.

A :class:`Checkpoint` (a head's seq and hash, its time and an event count),
stored outside the database, anchors every chain: taking one verifies the log,
then records a chain-0 event whose payload holds every clinic chain's verified
head, so chain 0's keyed hash covers them all; the checkpoint is that event's seq
and hash, and ``count`` the events of all chains up to those heads.
:func:`verify` given one fails when any chain lost, truncated or rewrote events
up to its anchored head (or chain 0 up to the checkpoint's event), even by
someone holding the key, and passes when chains only grew after it. Taking a
checkpoint is itself an audited event; so is every export.

Exports list events chain by chain (``chain``, then ``seq``), so each chain reads
in order and can be re-walked from the file; the console's listing is newest
first (``id``, the order events were written across chains).

Events recorded in a transaction are chained and written when it commits, after
its other changes are flushed, so a chain's lock is held for the last moment of a
transaction only. Events recorded inside a savepoint that rolls back are dropped
with it. These commit hooks listen on the engine's own sessions
(:class:`~campaigns.db.EngineSession`, what :func:`~campaigns.db.session_factory`
opens), not on other sessions in the process.
"""

from campaigns.audit.exports import (
    EVENTS_PAGE_SIZE,
    EXPORT_FIELDS,
    EXPORT_WRITERS,
    export,
    export_csv,
    export_jsonl,
    list_events,
    record_export,
)
from campaigns.audit.log import (
    CHECKPOINT_KIND,
    EXPORT_KIND,
    GENESIS_HASH,
    NO_CLINIC_CHAIN,
    ChainKey,
    Entry,
    canonical_json,
    chain_key,
    chain_name,
    chain_of,
    event_material,
    genesis_hash,
    iter_events,
    record,
    record_many,
    write_pending,
)
from campaigns.audit.verification import (
    Checkpoint,
    InvalidCheckpointError,
    VerifyResult,
    take_checkpoint,
    verify,
)

__all__ = [
    "CHECKPOINT_KIND",
    "EVENTS_PAGE_SIZE",
    "EXPORT_FIELDS",
    "EXPORT_KIND",
    "EXPORT_WRITERS",
    "GENESIS_HASH",
    "NO_CLINIC_CHAIN",
    "ChainKey",
    "Checkpoint",
    "Entry",
    "InvalidCheckpointError",
    "VerifyResult",
    "canonical_json",
    "chain_key",
    "chain_name",
    "chain_of",
    "event_material",
    "export",
    "export_csv",
    "export_jsonl",
    "genesis_hash",
    "iter_events",
    "list_events",
    "record",
    "record_export",
    "record_many",
    "take_checkpoint",
    "verify",
    "write_pending",
]
