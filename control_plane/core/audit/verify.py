"""Verifying the audit trail: walk the chain in sequence order and name the first record that is wrong.

Detected: an edited field (hash), a forged or recomputed record (MAC), a deleted or swapped row (sequence gap or
broken link), and a cut tail (shorter than, or different from, the last signed checkpoint). A tail cut after
the last checkpoint cannot be seen; the checkpoint interval bounds that window.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from control_plane.core.audit import chain
from control_plane.core.audit.checkpoints import Checkpoint, CheckpointError, latest_checkpoint
from control_plane.core.audit.tables import GENESIS_HASH, records
from control_plane.core.audit.trail import AuditTrail

FETCH_ROWS = 5000


@dataclass(frozen=True)
class Break:
    seq: int
    id: str | None
    reason: str

    def __str__(self) -> str:
        named = f" (id {self.id})" if self.id else ""
        return f"audit record {self.seq}{named}: {self.reason}"


@dataclass(frozen=True)
class VerifyReport:
    records: int
    head_seq: int
    checkpoint: Checkpoint | None
    first_break: Break | None

    @property
    def ok(self) -> bool:
        return self.first_break is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "head_seq": self.head_seq,
            "checkpoint_seq": self.checkpoint.seq if self.checkpoint else None,
            "first_broken": (
                {"seq": self.first_break.seq, "id": self.first_break.id, "reason": self.first_break.reason}
                if self.first_break
                else None
            ),
        }


def _rows(engine: Engine) -> Iterator[dict[str, Any]]:
    """All records in sequence order, fetched in pages so memory stays flat on long chains."""
    after = 0
    while True:
        query = sa.select(records).where(records.c.seq > after).order_by(records.c.seq).limit(FETCH_ROWS)
        with engine.connect() as connection:
            page = [dict(row._mapping) for row in connection.execute(query)]
        if not page:
            return
        yield from page
        after = page[-1]["seq"]


def verify_chain(engine: Engine, mac_key: bytes, checkpoint: Checkpoint | None) -> VerifyReport:
    expected_seq, prev_hash, count = 1, GENESIS_HASH, 0
    checkpoint_hash: str | None = None
    for row in _rows(engine):
        count += 1
        problem = _check(row, expected_seq, prev_hash, mac_key)
        if problem is not None:
            return VerifyReport(count, row["seq"], checkpoint, problem)
        if checkpoint is not None and row["seq"] == checkpoint.seq:
            checkpoint_hash = row["hash"]
        expected_seq, prev_hash = row["seq"] + 1, row["hash"]
    head_seq = expected_seq - 1
    if checkpoint is not None:
        if head_seq < checkpoint.seq:
            reason = (
                f"missing: the chain ends at {head_seq} but was checkpointed at {checkpoint.seq} (tail cut)"
            )
            return VerifyReport(count, head_seq, checkpoint, Break(head_seq + 1, None, reason))
        if checkpoint_hash != checkpoint.hash:
            reason = "differs from the signed checkpoint of this sequence"
            return VerifyReport(count, head_seq, checkpoint, Break(checkpoint.seq, None, reason))
    return VerifyReport(count, head_seq, checkpoint, None)


def _check(row: dict[str, Any], expected_seq: int, prev_hash: str, mac_key: bytes) -> Break | None:
    if row["seq"] != expected_seq:
        return Break(expected_seq, None, f"missing (the next record present is {row['seq']})")
    if row["prev_hash"] != prev_hash:
        return Break(
            row["seq"], row["id"], "does not link to the previous record (rows reordered or replaced)"
        )
    digest = chain.record_hash(row)
    if not hmac.compare_digest(digest, row["hash"]):
        return Break(row["seq"], row["id"], "content does not match its hash (edited)")
    if not hmac.compare_digest(chain.record_mac(mac_key, digest), row["mac"]):
        return Break(row["seq"], row["id"], "MAC is invalid (forged or re-hashed without the key)")
    return None


def verify_trail(trail: AuditTrail) -> VerifyReport:
    """Verify ``trail`` against its MAC key and its newest checkpoint (an altered checkpoint file fails too)."""
    try:
        checkpoint = latest_checkpoint(trail.checkpoint_file, trail.keys.signing_key.public_key())
    except CheckpointError as exc:
        return VerifyReport(0, 0, None, Break(0, None, f"checkpoint file altered: {exc}"))
    return verify_chain(trail.engine, trail.keys.mac_key, checkpoint)
