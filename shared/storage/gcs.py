"""Google Cloud Storage backend: keys live as blobs under `gs://bucket/prefix/`.

Only imported for `gs://` URLs (see `open_storage`), so the local path never loads the
google-cloud libraries.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import IO, BinaryIO

import google_crc32c
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials, Signing
from google.auth.transport.requests import Request as AuthRequest
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
from google.cloud.storage.retry import DEFAULT_RETRY
from google.oauth2 import service_account

from shared.storage.base import (
    CHUNK_SIZE,
    HashingReader,
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
    StoredObject,
    check_key,
)

logger = logging.getLogger(__name__)

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
CREDENTIALS_FILE_ENV = "PIXELFLEET_GCS_CREDENTIALS_FILE"
ADC_FILE_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
PROJECT_ENV = "GOOGLE_CLOUD_PROJECT"

MIB = 1024 * 1024
# Uploads larger than this go resumable, in chunks of this size (a multiple of 256 KiB).
UPLOAD_CHUNK_SIZE = 8 * MIB
# Non-seekable sources are spooled to memory up to this size, then to a temporary file.
SPOOL_MAX_MEMORY = 8 * MIB
# Streaming reads fetch this much per ranged request and hand it out in `chunk_size` slices.
RANGE_SIZE = 8 * MIB
DEFAULT_CACHE_CONTROL = "private, max-age=31536000, immutable"
MAX_SIGNED_URL_EXPIRY_S = 7 * 24 * 3600  # the V4 limit
_MAX_PREFETCH_WORKERS = 8  # stays under requests' default pool of 10 connections per host
_CHECK_RETRY = DEFAULT_RETRY.with_timeout(30)
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")

# Failures of the google libraries and the transport under them; all become StorageError.
_BACKEND_ERRORS: tuple[type[BaseException], ...] = (
    api_exceptions.GoogleAPIError,
    auth_exceptions.GoogleAuthError,
    DataCorruption,
    InvalidResponse,
    OSError,  # includes requests' exceptions and unreadable sources
    ValueError,  # e.g. a source shorter than it was when hashed
)


def parse_gs_url(url: str) -> tuple[str, str]:
    """`gs://bucket/some/prefix` → ("bucket", "some/prefix"); the prefix may be empty."""
    if not url.startswith("gs://"):
        raise StorageError(f"not a gs:// URL: {url!r}")
    bucket, _, prefix = url[len("gs://") :].partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET_NAME.match(bucket):
        raise StorageError(f"invalid GCS bucket name {bucket!r} in {url!r}")
    if prefix:
        try:
            check_key(prefix)
        except StorageError:
            raise StorageError(f"invalid GCS prefix {prefix!r} in {url!r}") from None
    return bucket, prefix


def _credentials_help() -> str:
    return (
        f"set {CREDENTIALS_FILE_ENV} or {ADC_FILE_ENV} to a service-account key file, "
        "run with workload identity / `gcloud auth application-default login`, "
        f"or set {EMULATOR_ENV} to use a storage emulator"
    )


def client_from_env(bucket: str, environ: Mapping[str, str] | None = None) -> storage.Client:
    """A client configured from the environment, in this order of precedence:

    1. `STORAGE_EMULATOR_HOST` (e.g. `http://127.0.0.1:9023`): anonymous client for the emulator;
    2. `PIXELFLEET_GCS_CREDENTIALS_FILE`: that service-account key file;
    3. application default credentials: `GOOGLE_APPLICATION_CREDENTIALS`, workload identity,
       the metadata server or `gcloud auth application-default login`.

    `GOOGLE_CLOUD_PROJECT` names the project (only needed for billing/quota attribution).
    """
    env = os.environ if environ is None else environ
    project = env.get(PROJECT_ENV) or None
    emulator = env.get(EMULATOR_ENV)
    if emulator:
        logger.info("GCS bucket %s: using the storage emulator at %s", bucket, emulator)
        return storage.Client(
            project=project or "test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": emulator},
        )
    key_file = env.get(CREDENTIALS_FILE_ENV)
    if key_file:
        return _client_from_key_file(bucket, key_file, project)
    try:
        return storage.Client(project=project)
    except auth_exceptions.DefaultCredentialsError as exc:
        if env.get(ADC_FILE_ENV):
            raise StorageError(
                f"cannot use the credentials in {ADC_FILE_ENV}={env[ADC_FILE_ENV]!r} "
                f"for GCS bucket {bucket!r}: {exc}"
            ) from exc
        raise StorageError(
            f"no Google Cloud credentials found for GCS bucket {bucket!r}: {_credentials_help()}"
        ) from exc


def _client_from_key_file(bucket: str, key_file: str, project: str | None) -> storage.Client:
    try:
        credentials = service_account.Credentials.from_service_account_file(key_file)
    except (OSError, ValueError, auth_exceptions.GoogleAuthError) as exc:
        raise StorageError(
            f"cannot load the service-account key {CREDENTIALS_FILE_ENV}={key_file!r} "
            f"for GCS bucket {bucket!r}: {exc}"
        ) from exc
    logger.info(
        "GCS bucket %s: using service account %s from %s",
        bucket,
        credentials.service_account_email,
        CREDENTIALS_FILE_ENV,
    )
    return storage.Client(project=project or credentials.project_id, credentials=credentials)


class _SourceView:
    """A seekable view of `size` bytes of `src` starting at `start`, positioned from 0.

    The upload library insists on a stream at position 0 and rewinds it to resume a
    failed chunk; this view provides both. It also hashes each byte the first time it is
    read, so after the upload `sha256()` tells whether what was sent is what was hashed.
    """

    def __init__(self, src: IO[bytes], start: int, size: int) -> None:
        self._src = src
        self._start = start
        self._size = size
        self._pos = 0
        self._hashed = 0
        self._digest = hashlib.sha256()
        src.seek(start)

    def read(self, n: int | None = -1) -> bytes:
        remaining = self._size - self._pos
        if n is None or n < 0 or n > remaining:
            n = remaining
        data = self._src.read(n) if n else b""
        end = self._pos + len(data)
        if self._pos <= self._hashed < end:
            self._digest.update(memoryview(data)[self._hashed - self._pos :])
            self._hashed = end
        self._pos = end
        return data

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        self._src.seek(self._start + self._pos)
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def sha256(self) -> str | None:
        """The hash of the whole view, if every byte of it has been read."""
        return self._digest.hexdigest() if self._hashed == self._size else None


def _position(src: BinaryIO) -> int | None:
    """The current position of a seekable stream, or None when it cannot seek."""
    try:
        if not src.seekable():
            return None
        return src.tell()
    except (AttributeError, OSError, ValueError):
        return None


@contextmanager
def _staged(src: BinaryIO) -> Iterator[tuple[IO[bytes], int, int, str]]:
    """Hash `src` before uploading it: yields (stream, start, size, sha256).

    Why hash first rather than while uploading: the sha256 then goes into the object's
    metadata in the upload request itself, so the object never exists without it (no
    window where readers see it unhashed, no second metadata write that could fail on its
    own), and the size is known up front, which picks multipart (≤ 8 MiB) or resumable
    upload. The cost is reading a seekable source twice. A non-seekable source is spooled
    (memory up to 8 MiB, then a temporary file) while hashing, which a resumable upload
    needs anyway to rewind a failed chunk.
    """
    start = _position(src)
    if start is not None:
        reader = HashingReader(src)
        while reader.read(CHUNK_SIZE):
            pass
        src.seek(start)
        yield src, start, reader.size, reader.digest.hexdigest()
        return
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_MEMORY) as spool:
        reader = HashingReader(src)
        shutil.copyfileobj(reader, spool, CHUNK_SIZE)
        yield spool, 0, reader.size, reader.digest.hexdigest()


def _reason(exc: BaseException) -> str:
    """Some google-auth errors have no message; say at least what they are."""
    return str(exc) or type(exc).__name__


def _crc32c_b64(checksum: google_crc32c.Checksum) -> str:
    return base64.b64encode(checksum.digest()).decode("ascii")


class GCSStorage(Storage):
    """Objects in a GCS bucket under a prefix: key `a/b.png` ↔ blob `{prefix}/a/b.png`.

    Construction checks that the bucket exists and the credentials can list it
    (`validate=False` skips that). Without `client`, one is built by `client_from_env`.
    """

    # Objects up to this size are fetched whole ahead of time by `iter_many`.
    prefetch_max_object_bytes = 8 * MIB

    def __init__(
        self,
        url: str,
        client: storage.Client | None = None,
        signed_url_expiry_s: int = 3600,
        *,
        cache_control: str | None = DEFAULT_CACHE_CONTROL,
        validate: bool = True,
    ) -> None:
        self.bucket_name, self.prefix = parse_gs_url(url)
        self.url = f"gs://{self.bucket_name}/{self.prefix}".rstrip("/")
        self._root = f"{self.prefix}/" if self.prefix else ""
        self.signed_url_expiry_s = _checked_expiry(signed_url_expiry_s)
        self.cache_control = cache_control
        self._client = client if client is not None else client_from_env(self.bucket_name)
        self._bucket = self._client.bucket(self.bucket_name)
        if validate:
            self.check()

    def __repr__(self) -> str:
        return f"GCSStorage({self.url!r})"

    # -- naming and errors -------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self._root + check_key(key)

    def _key(self, name: str) -> str:
        return name[len(self._root) :]

    @contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Translate google-cloud failures into ObjectNotFound / StorageError."""
        where = f"{self.url}/{key}"
        try:
            yield
        except StorageError:
            raise
        except api_exceptions.NotFound as exc:
            if action in ("write", "list"):
                # Writing or listing cannot miss an object: only the bucket can be missing.
                raise StorageError(
                    f"could not {action} {where}: GCS bucket {self.bucket_name!r} does not exist"
                ) from exc
            raise ObjectNotFound(f"no object {key} in {self.url}") from exc
        except api_exceptions.Forbidden as exc:
            raise StorageError(
                f"permission denied to {action} {where}: {exc.message}; grant the service "
                f"account roles/storage.objectAdmin on bucket {self.bucket_name}"
            ) from exc
        except auth_exceptions.GoogleAuthError as exc:
            raise StorageError(
                f"could not authenticate to {action} {where}: {_reason(exc)}; {_credentials_help()}"
            ) from exc
        except _BACKEND_ERRORS as exc:
            raise StorageError(f"could not {action} {where}: {_reason(exc)}") from exc

    def check(self) -> None:
        """Fail with a StorageError that says how to fix it unless the bucket is usable."""
        try:
            pages = self._client.list_blobs(
                self._bucket, prefix=self._root, max_results=1, retry=_CHECK_RETRY
            )
            next(iter(pages), None)
        except api_exceptions.NotFound as exc:
            raise StorageError(
                f"GCS bucket {self.bucket_name!r} does not exist (storage URL {self.url}): "
                f"create it (`gcloud storage buckets create gs://{self.bucket_name}`) "
                "or fix the storage URL"
            ) from exc
        except (api_exceptions.Forbidden, api_exceptions.Unauthorized) as exc:
            raise StorageError(
                f"the credentials in use may not list GCS bucket {self.bucket_name!r}: "
                f"{exc.message}; grant the service account roles/storage.objectAdmin on it, "
                f"or {_credentials_help()}"
            ) from exc
        except auth_exceptions.GoogleAuthError as exc:
            raise StorageError(
                f"could not authenticate to GCS bucket {self.bucket_name!r}: {_reason(exc)}; "
                f"{_credentials_help()}"
            ) from exc
        except _BACKEND_ERRORS as exc:
            raise StorageError(
                f"cannot reach GCS bucket {self.bucket_name!r}: {_reason(exc)}"
            ) from exc

    # -- writing -----------------------------------------------------------------------

    def put_file(
        self, key: str, src: BinaryIO, *, content_type: str, metadata: dict[str, str] | None = None
    ) -> StoredObject:
        name = self._name(key)
        with self._errors("read the source for", key), _staged(src) as staged:
            stream, start, size, sha256 = staged
            view = _SourceView(stream, start, size)
            blob = self._bucket.blob(name, chunk_size=UPLOAD_CHUNK_SIZE)
            blob.cache_control = self.cache_control
            blob.metadata = {**(metadata or {}), "sha256": sha256}
            # Retrying is safe: the same bytes and metadata go to the same name, a resumable
            # upload resumes its own session, and a repeated multipart upload at worst makes
            # one more identical generation. crc32c guards the bytes in transit.
            with self._errors("write", key):
                blob.upload_from_file(
                    view,
                    size=size,
                    content_type=content_type,
                    checksum="crc32c",
                    retry=DEFAULT_RETRY,
                )
            if view.sha256() != sha256:
                self.delete(key)
                raise StorageError(f"the source for {self.url}/{key} changed while uploading")
        logger.debug("stored %s/%s (%d bytes)", self.url, key, size)
        return StoredObject(key, size, sha256, content_type)

    def delete(self, key: str) -> None:
        blob = self._bucket.blob(self._name(key))
        # A missing object is fine (also when a retried delete finds its first try done).
        with self._errors("delete", key), suppress(api_exceptions.NotFound):
            blob.delete(retry=DEFAULT_RETRY)

    def delete_prefix(self, prefix: str) -> int:
        keys = [info.key for info in self.list(prefix)]
        if keys:
            with ThreadPoolExecutor(max_workers=min(len(keys), _MAX_PREFETCH_WORKERS)) as pool:
                for _ in pool.map(self.delete, keys):
                    pass
        return len(keys)

    # -- reading -----------------------------------------------------------------------

    def _stat(self, key: str) -> storage.Blob:
        name = self._name(key)
        with self._errors("read", key):
            blob = self._bucket.get_blob(name, retry=DEFAULT_RETRY)
        if blob is None:
            raise ObjectNotFound(f"no object {key} in {self.url}")
        return blob

    def get_bytes(self, key: str) -> bytes:
        blob = self._bucket.blob(self._name(key))
        with self._errors("read", key):
            data: bytes = blob.download_as_bytes(
                raw_download=True, checksum="crc32c", retry=DEFAULT_RETRY
            )
        return data

    def iter_bytes(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        yield from self._iter_ranges(self._stat(key), key, chunk_size)

    def _iter_ranges(
        self, blob: storage.Blob, key: str, chunk_size: int, head: bytes = b""
    ) -> Iterator[bytes]:
        """Stream one generation of `blob` by ranged requests, then check its crc32c.

        `head`, if given, is the object's first bytes, already read. Memory stays at one
        range (max(chunk_size, RANGE_SIZE)); a range request is retried on its own, which a
        single long download could not be.
        """
        size = blob.size or 0
        span = max(chunk_size, RANGE_SIZE)
        crc = google_crc32c.Checksum(head)
        yield from _slices(head, chunk_size) if head else ()
        offset = len(head)
        while offset < size:
            data = self._read_range(blob, key, offset, min(offset + span, size))
            crc.update(data)
            offset += len(data)
            yield from _slices(data, chunk_size)
        if blob.crc32c and _crc32c_b64(crc) != blob.crc32c:
            raise StorageError(f"checksum mismatch reading {self.url}/{key}")

    def _read_range(self, blob: storage.Blob, key: str, start: int, stop: int) -> bytes:
        """Bytes start..stop-1 of this generation of `blob`, all of them or a StorageError."""
        with self._errors("read", key):
            data: bytes = blob.download_as_bytes(
                start=start, end=stop - 1, raw_download=True, checksum=None, retry=DEFAULT_RETRY
            )
        if len(data) != stop - start:
            raise StorageError(
                f"short read of {self.url}/{key} at byte {start}: "
                f"got {len(data)} of {stop - start} bytes"
            )
        return data

    def size(self, key: str) -> int:
        return self._stat(key).size or 0

    def exists(self, key: str) -> bool:
        blob = self._bucket.blob(self._name(key))
        with self._errors("check", key):
            return bool(blob.exists(retry=DEFAULT_RETRY))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under the directory-like `prefix` (`a/b` matches `a/b/…`, not `a/bc`)."""
        prefix = prefix.strip("/")
        name_prefix = self._root + (check_key(prefix) + "/" if prefix else "")
        with self._errors("list", prefix or "(all)"):
            for blob in self._client.list_blobs(
                self._bucket, prefix=name_prefix, retry=DEFAULT_RETRY
            ):
                yield ObjectInfo(
                    key=self._key(blob.name), size=blob.size or 0, updated=blob.updated
                )

    # -- read-ahead --------------------------------------------------------------------

    def iter_many(
        self, keys: Iterable[str], chunk_size: int = CHUNK_SIZE, prefetch: int = 4
    ) -> Generator[tuple[str, Iterator[bytes]], None, None]:
        """Like `Storage.iter_many`, with the next `prefetch` objects downloading meanwhile.

        Objects up to `prefetch_max_object_bytes` are fetched whole by a small thread pool;
        of larger ones the first range is fetched ahead and the rest streamed by ranges when
        their turn comes. Held in memory at most: (prefetch + 1) * max(RANGE_SIZE,
        prefetch_max_object_bytes), if each object is consumed in turn.
        """
        if prefetch < 1:
            yield from super().iter_many(keys, chunk_size, prefetch)
            return
        source = iter(keys)
        pending: deque[tuple[str, Future[_Prefetched]]] = deque()
        pool = ThreadPoolExecutor(
            max_workers=min(prefetch, _MAX_PREFETCH_WORKERS), thread_name_prefix="gcs-prefetch"
        )

        def fill() -> None:
            while len(pending) < prefetch:
                key = next(source, None)
                if key is None:
                    return
                pending.append((key, pool.submit(self._prefetch, key)))

        finished = False
        try:
            fill()
            while pending:
                key, future = pending.popleft()
                fill()
                yield key, self._replay(future, key, chunk_size)
            finished = True
        finally:
            # Abandoned early: drop what has not started. Finished: let the last ones run.
            pool.shutdown(wait=False, cancel_futures=not finished)

    def _prefetch(self, key: str) -> _Prefetched:
        """The whole object if small, else its metadata (pinned generation) and first range,
        to stream the rest later."""
        blob = self._stat(key)
        size = blob.size or 0
        if size > self.prefetch_max_object_bytes:
            return blob, self._read_range(blob, key, 0, min(RANGE_SIZE, size))
        with self._errors("read", key):
            data: bytes = blob.download_as_bytes(
                raw_download=True, checksum="crc32c", retry=DEFAULT_RETRY
            )
        return data

    def _replay(self, future: Future[_Prefetched], key: str, chunk_size: int) -> Iterator[bytes]:
        result = future.result()
        if isinstance(result, bytes):
            yield from _slices(result, chunk_size)
        else:
            blob, head = result
            yield from self._iter_ranges(blob, key, chunk_size, head)

    # -- signed URLs -------------------------------------------------------------------

    def signed_url(self, key: str, expiry_s: int | None = None) -> str | None:
        """A V4 signed GET URL, valid `expiry_s` seconds (default: the store's setting).

        Signs with the service account's key when the credentials have one, else through
        the IAM signBlob API (workload identity; needs roles/iam.serviceAccountTokenCreator
        on itself). Anonymous credentials (the emulator) cannot sign: None, like local disk.
        """
        expiry = _checked_expiry(self.signed_url_expiry_s if expiry_s is None else expiry_s)
        blob = self._bucket.blob(self._name(key))
        credentials = getattr(self._client, "_credentials", None)
        if credentials is None or isinstance(credentials, AnonymousCredentials):
            logger.debug("no signed URL for %s: anonymous credentials", key)
            return None
        with self._errors("sign a URL for", key):
            extra = {} if isinstance(credentials, Signing) else _iam_signing_args(credentials)
            url: str = blob.generate_signed_url(
                version="v4", expiration=timedelta(seconds=expiry), method="GET", **extra
            )
        return url


def _iam_signing_args(credentials: object) -> dict[str, str]:
    """For credentials without a private key: sign through IAM as their service account."""
    refresh = getattr(credentials, "refresh", None)
    if refresh is not None and not getattr(credentials, "valid", False):
        refresh(AuthRequest())
    email = getattr(credentials, "service_account_email", None)
    token = getattr(credentials, "token", None)
    if not email or not token:
        raise StorageError(
            f"credentials of type {type(credentials).__name__} cannot sign URLs: use a "
            f"service-account key ({CREDENTIALS_FILE_ENV}) or workload identity"
        )
    return {"service_account_email": str(email), "access_token": str(token)}


_Prefetched = bytes | tuple[storage.Blob, bytes]  # a whole object, or its blob and head


def _checked_expiry(expiry_s: int) -> int:
    if not 1 <= expiry_s <= MAX_SIGNED_URL_EXPIRY_S:
        raise StorageError(
            f"signed URL expiry must be 1..{MAX_SIGNED_URL_EXPIRY_S} s, not {expiry_s}"
        )
    return expiry_s


def _slices(data: bytes, chunk_size: int) -> Iterator[bytes]:
    if len(data) <= chunk_size:
        if data:
            yield data
        return
    for i in range(0, len(data), chunk_size):
        yield data[i : i + chunk_size]
