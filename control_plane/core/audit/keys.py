"""The two audit keys, kept outside the database: the chain's HMAC key and the checkpoints' Ed25519 key."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control_plane.core import secretfiles

MAC_KEY_BYTES = 32


class AuditKeyError(Exception):
    """An audit key is missing or unreadable."""


@dataclass(frozen=True)
class AuditKeys:
    mac_key: bytes
    signing_key: Ed25519PrivateKey

    @classmethod
    def load(cls, *, mac_key_file: Path, signing_key_file: Path, create: bool) -> AuditKeys:
        """Read both keys; with ``create`` (the server and commands that append), make missing ones."""
        if create:
            mac = secretfiles.read_or_create_secret(mac_key_file, lambda: secrets.token_bytes(MAC_KEY_BYTES))
            pem = secretfiles.read_or_create_secret(signing_key_file, _new_signing_key_pem)
        else:
            mac, pem = _read(mac_key_file), _read(signing_key_file)
        if len(mac) < MAC_KEY_BYTES:
            raise AuditKeyError(f"audit MAC key {mac_key_file} is shorter than {MAC_KEY_BYTES} bytes")
        signing_key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(signing_key, Ed25519PrivateKey):
            raise AuditKeyError(f"{signing_key_file} is not an Ed25519 private key")
        return cls(mac_key=mac, signing_key=signing_key)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AuditKeyError(f"cannot read audit key {path}: {exc.strerror}") from None


def _new_signing_key_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
