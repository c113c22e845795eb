"""Secret files kept outside the database (signing keys, the audit MAC key): created once, mode 0600.

A key that lives next to the data it protects protects nothing against someone who can write that data, so
these files are separate, never world-readable, and may instead be mounted from a secret store.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

SECRET_FILE_MODE = 0o600
SECRET_DIR_MODE = 0o700


def write_secret(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the first byte, atomically.

    The content goes to a private temporary file first, then is renamed over ``path`` (``replace``) or linked to
    it only if ``path`` does not exist yet (raising ``FileExistsError``), so no reader ever sees half a key.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=SECRET_DIR_MODE)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_or_create_secret(path: Path, create: Callable[[], bytes]) -> bytes:
    """The secret at ``path``, created with ``create()`` on first use; a concurrent creator's file wins."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    # Another process may create it between our read and our write: then theirs wins.
    with contextlib.suppress(FileExistsError):
        write_secret(path, create())
    return path.read_bytes()
