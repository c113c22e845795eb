"""Where product files live, behind a small interface: the local filesystem now, an object store later.

A product's bytes are addressed by a *key* (``products/<id>/<name>``); the catalog row keeps the storage's URI
for it. Writes go to a temporary name and are renamed into place, so a key never holds half a file: a control
plane that dies mid-copy leaves only a temporary file, which the next copy of the same key replaces.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

COPY_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    """What a copy into storage measured on the way: its key, size and SHA-256 (hex)."""

    key: str
    size: int
    sha256: str


class StorageError(Exception):
    """A key or URI the storage cannot accept (outside its root, not one of its URIs)."""


class Storage(ABC):
    """Keys to bytes. Keys are relative POSIX paths made of plain names (no ``..``, no leading ``/``)."""

    @abstractmethod
    def put(self, source: Path, key: str) -> StoredObject:
        """Copy ``source`` to ``key`` (replacing what is there), hashing and counting while copying."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """The object's bytes for reading (seekable); ``FileNotFoundError`` when absent."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The object's size; ``FileNotFoundError`` when absent."""

    @abstractmethod
    def move(self, key: str, new_key: str) -> None:
        """Move an object to another key, replacing what is there."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Delete the object; False when it was already gone (deleting twice is fine)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def uri(self, key: str) -> str:
        """The URI the catalog records for ``key``."""

    @abstractmethod
    def key(self, uri: str) -> str:
        """The key behind one of this storage's URIs (``StorageError`` for any other URI)."""

    @abstractmethod
    def local_path(self, key: str) -> Path:
        """A filesystem path to the object, for executors that hand inputs to processes."""


def check_key(key: str) -> str:
    """``key`` if it is a safe relative key; ``StorageError`` naming it otherwise."""
    parts = PurePosixPath(key).parts
    if not parts or key.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\\" in key:
        raise StorageError(f"storage key {key!r}: must be a relative path of plain names")
    return key


class LocalStorage(Storage):
    """Objects as files under one root directory; URIs are ``file://`` URIs of those files."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().absolute()

    def put(self, source: Path, key: str) -> StoredObject:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".part-")
        try:
            with source.open("rb") as reader, os.fdopen(handle, "wb") as writer:
                while chunk := reader.read(COPY_CHUNK_BYTES):
                    digest.update(chunk)
                    writer.write(chunk)
                    size += len(chunk)
                writer.flush()
                os.fsync(writer.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return StoredObject(key=key, size=size, sha256=digest.hexdigest())

    def open(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def move(self, key: str, new_key: str) -> None:
        target = self._path(new_key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._path(key), target)
        self._prune(self._path(key).parent)

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        self._prune(path.parent)
        return True

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def key(self, uri: str) -> str:
        parts = urlsplit(uri)
        if parts.scheme != "file":
            raise StorageError(f"{uri!r} is not a file:// URI of local storage")
        path = Path(unquote(parts.path))
        if not path.is_relative_to(self.root):
            raise StorageError(f"{uri!r} is outside the storage directory {self.root}")
        return check_key(path.relative_to(self.root).as_posix())

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _prune(self, directory: Path) -> None:
        """Remove emptied per-product directories up to the root, so evictions leave no litter."""
        while directory != self.root and directory.is_relative_to(self.root):
            try:
                directory.rmdir()
            except OSError:  # not empty (or already gone): stop here
                return
            directory = directory.parent
