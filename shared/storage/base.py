"""The storage interface both sides use. Keys are relative, '/'-separated paths."""

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

CHUNK_SIZE = 1024 * 1024
TEMPORARY_PREFIX = ".tmp-"  # names a local write in progress (see LocalStorage.put_file)
# A name, or a temporary file of an interrupted local write (listed, so gc can remove it).
_KEY_SEGMENT = re.compile(
    rf"^(?:{re.escape(TEMPORARY_PREFIX)}[A-Za-z0-9_]|[A-Za-z0-9])[A-Za-z0-9._-]*$"
)


class StorageError(Exception):
    """A storage operation failed; the message says which object and why."""


class ObjectNotFound(StorageError):
    pass


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str
    content_type: str


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    updated: datetime


def check_key(key: str) -> str:
    """Refuse keys that could escape the storage root or name nothing sensible."""
    segments = key.split("/")
    if not key or any(not _KEY_SEGMENT.match(s) or s in {".", ".."} for s in segments):
        raise StorageError(f"invalid storage key {key!r}")
    return key


class Storage(ABC):
    """A bucket-like store rooted at `url` (a directory or gs://bucket/prefix)."""

    url: str

    def uri(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{check_key(key)}"

    def key_of(self, uri: str) -> str:
        """The key for a URI under this store's root; anything else is refused."""
        root = self.url.rstrip("/") + "/"
        if not uri.startswith(root):
            raise StorageError(f"{uri!r} is outside the storage root {self.url!r}")
        return check_key(uri[len(root) :])

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str, metadata: dict[str, str] | None = None
    ) -> StoredObject:
        import io

        return self.put_file(key, io.BytesIO(data), content_type=content_type, metadata=metadata)

    @abstractmethod
    def put_file(
        self, key: str, src: BinaryIO, *, content_type: str, metadata: dict[str, str] | None = None
    ) -> StoredObject:
        """Stream `src` (from its current position) into `key`, atomically."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def iter_bytes(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]: ...

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete `key`; a missing key is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def delete_prefix(self, prefix: str) -> int:
        count = 0
        for info in list(self.list(prefix)):
            self.delete(info.key)
            count += 1
        return count

    def local_path(self, key: str) -> "str | None":
        """A filesystem path for `key` when the backend has one (local disk), else None."""
        return None

    def signed_url(self, key: str, expiry_s: int | None = None) -> str | None:
        """A time-limited URL a browser can GET `key` from, or None when the backend has none
        (local disk: serve the bytes through the app instead)."""
        return None

    def iter_many(
        self, keys: Iterable[str], chunk_size: int = CHUNK_SIZE, prefetch: int = 8
    ) -> Generator[tuple[str, Iterator[bytes]], None, None]:
        """Yield `(key, chunks)` for each key, in order (e.g. to stream a ZIP).

        Consume each `chunks` iterator before asking for the next pair: backends may read
        up to `prefetch` objects ahead, and only that look-ahead is memory-bounded. Errors
        for an object (ObjectNotFound, StorageError) are raised from its `chunks`. Closing
        the generator early stops any read-ahead. This default reads sequentially, with no
        look-ahead.
        """
        for key in keys:
            yield key, self.iter_bytes(key, chunk_size)


class HashingReader:
    """Wraps a binary stream and hashes and counts what is read through it."""

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        chunk = self._src.read(n)
        self.digest.update(chunk)
        self.size += len(chunk)
        return chunk
