"""Signed checkpoints of the chain head, written outside the audit table.

A MACed chain alone cannot reveal a cut tail: the remaining prefix still verifies. A checkpoint (sequence and
hash of the head, signed with Ed25519) kept in a file the database writer cannot touch can: a chain shorter than
its last checkpoint, or one whose record at that sequence hashes differently, has been tampered with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from control_plane.core import clock


class CheckpointError(Exception):
    """The checkpoint file itself has been altered (a line with a bad signature or a bad shape)."""


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    time: datetime

    def message(self) -> bytes:
        return f"refsys-audit-checkpoint:{self.seq}:{self.hash}:{clock.rfc3339(self.time)}".encode()


def write_checkpoint(path: Path, key: Ed25519PrivateKey, *, seq: int, hash: str) -> Checkpoint:
    """Append one signed checkpoint line (O_APPEND keeps concurrent writers' lines whole)."""
    checkpoint = Checkpoint(seq=seq, hash=hash, time=clock.utcnow())
    line = orjson.dumps(
        {
            "seq": seq,
            "hash": hash,
            "time": clock.rfc3339(checkpoint.time),
            "sig": key.sign(checkpoint.message()).hex(),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return checkpoint


def latest_checkpoint(path: Path, key: Ed25519PublicKey) -> Checkpoint | None:
    """The checkpoint with the highest sequence, after checking every line's signature."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return None
    latest: Checkpoint | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = orjson.loads(line)
            checkpoint = Checkpoint(
                seq=int(data["seq"]), hash=str(data["hash"]), time=clock.parse_rfc3339(data["time"])
            )
            key.verify(bytes.fromhex(data["sig"]), checkpoint.message())
        except InvalidSignature:
            raise CheckpointError(f"{path}:{number}: checkpoint signature is invalid") from None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}:{number}: not a checkpoint line") from None
        if latest is None or checkpoint.seq > latest.seq:
            latest = checkpoint
    return latest
