"""The Storage contract on local disk and on GCS (gcp-storage-emulator), plus GCS specifics."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from google.cloud import storage
from google.cloud.storage.blob import Blob
from google.oauth2 import service_account

from shared.storage import LocalStorage, ObjectNotFound, Storage, StorageError, gcs, open_storage
from shared.storage.gcs import GCSStorage, client_from_env, parse_gs_url

if TYPE_CHECKING:
    from tests.gcs_emulator import GCSEmulator

pytest_plugins = ["tests.gcs_emulator"]  # fixtures: gcs_emulator, gcs_env, gcs_storage

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


@pytest.fixture(params=["local", "gcs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    gcs: GCSStorage = request.getfixturevalue("gcs_storage")
    return gcs


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_of(emulator: GCSEmulator, store: GCSStorage, key: str) -> Blob:
    blob = emulator.client.bucket(emulator.bucket).get_blob(f"{store.prefix}/{key}")
    assert blob is not None, f"no blob for {key}"
    return blob


class NonSeekable(io.RawIOBase):
    """A pipe-like source: read() only."""

    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._src.read(min(len(buffer), 100_000))
        buffer[: len(chunk)] = chunk
        return len(chunk)


# -- the contract, on both backends --------------------------------------------------------


def test_put_get_round_trip(store: Storage) -> None:
    data = b"\x89PNG fake image bytes"
    stored = store.put_bytes("jobs/1/a.png", data, content_type="image/png")
    assert stored.key == "jobs/1/a.png"
    assert stored.size == len(data)
    assert stored.sha256 == sha(data)
    assert stored.content_type == "image/png"
    assert store.get_bytes("jobs/1/a.png") == data
    assert store.size("jobs/1/a.png") == len(data)
    assert store.exists("jobs/1/a.png")
    store.put_bytes("jobs/1/a.png", b"replaced", content_type="image/png")
    assert store.get_bytes("jobs/1/a.png") == b"replaced"


def test_put_file_streams_from_the_current_position(store: Storage) -> None:
    src = io.BytesIO(b"HEADERpayload after the header")
    src.seek(6)
    stored = store.put_file("x/rest.bin", src, content_type="application/octet-stream")
    assert store.get_bytes("x/rest.bin") == b"payload after the header"
    assert stored.size == len(b"payload after the header")
    assert stored.sha256 == sha(b"payload after the header")


def test_put_file_from_a_non_seekable_source(store: Storage) -> None:
    data = os.urandom(300_000)
    stored = store.put_file("pipe/data.bin", NonSeekable(data), content_type="image/webp")  # type: ignore[arg-type]
    assert (stored.size, stored.sha256) == (len(data), sha(data))
    assert store.get_bytes("pipe/data.bin") == data


def test_iter_bytes_yields_bounded_chunks(store: Storage) -> None:
    store.put_bytes("c/ten.bin", b"0123456789", content_type="application/octet-stream")
    assert list(store.iter_bytes("c/ten.bin", chunk_size=4)) == [b"0123", b"4567", b"89"]
    store.put_bytes("c/empty.bin", b"", content_type="application/octet-stream")
    assert list(store.iter_bytes("c/empty.bin")) == []
    assert store.size("c/empty.bin") == 0
    data = os.urandom(3 * MIB + 5)
    store.put_bytes("c/three.bin", data, content_type="application/octet-stream")
    chunks = list(store.iter_bytes("c/three.bin", chunk_size=MIB))
    assert [len(c) for c in chunks] == [MIB, MIB, MIB, 5]
    assert b"".join(chunks) == data


def test_list_with_prefix(store: Storage) -> None:
    for key in ["a/1.png", "a/2.png", "a/b/3.png", "ab/4.png", "c.png"]:
        store.put_bytes(key, key.encode(), content_type="image/png")
    assert {i.key for i in store.list("a")} == {"a/1.png", "a/2.png", "a/b/3.png"}
    assert {i.key for i in store.list("a/")} == {"a/1.png", "a/2.png", "a/b/3.png"}
    assert {i.key for i in store.list("a/b")} == {"a/b/3.png"}
    assert {i.key for i in store.list()} == {"a/1.png", "a/2.png", "a/b/3.png", "ab/4.png", "c.png"}
    assert list(store.list("nothing")) == []
    info = next(i for i in store.list("ab"))
    assert info.size == len(b"ab/4.png")
    assert info.updated.tzinfo is not None
    assert abs(datetime.now(UTC) - info.updated) < timedelta(minutes=5)
    for escaping in ("../outside", "a/../.."):
        with pytest.raises(StorageError, match="invalid storage key"):
            list(store.list(escaping))


def test_delete_and_delete_prefix(store: Storage) -> None:
    for key in ["d/1.png", "d/2.png", "d/e/3.png", "de/4.png", "keep.png"]:
        store.put_bytes(key, b"x", content_type="image/png")
    store.delete("keep.png")
    assert not store.exists("keep.png")
    store.delete("keep.png")  # missing is fine
    store.delete("never/existed.png")
    assert store.delete_prefix("d") == 3
    assert {i.key for i in store.list()} == {"de/4.png"}
    assert store.delete_prefix("d") == 0


def test_missing_object_is_object_not_found(store: Storage) -> None:
    with pytest.raises(ObjectNotFound):
        store.get_bytes("no/such.png")
    with pytest.raises(ObjectNotFound):
        store.size("no/such.png")
    with pytest.raises(ObjectNotFound):
        next(iter(store.iter_bytes("no/such.png")))
    assert not store.exists("no/such.png")


def test_keys_and_uris(store: Storage) -> None:
    uri = store.uri("jobs/7/out.png")
    assert uri == store.url.rstrip("/") + "/jobs/7/out.png"
    assert store.key_of(uri) == "jobs/7/out.png"
    for outside in [
        "gs://another-bucket/jobs/7/out.png",
        store.url.rstrip("/") + "-sibling/jobs/7/out.png",
        "/etc/passwd",
    ]:
        with pytest.raises(StorageError, match="outside"):
            store.key_of(outside)
    for bad in ["../escape.png", "a/../../b.png", "a//b.png", "/abs.png", "a/./b.png", ""]:
        with pytest.raises(StorageError, match="invalid storage key"):
            store.key_of(store.url.rstrip("/") + "/" + bad)
        with pytest.raises(StorageError, match="invalid storage key"):
            store.put_bytes(bad, b"x", content_type="image/png")


def test_large_put_file_round_trip(store: Storage, tmp_path: Path) -> None:
    data = os.urandom(20 * MIB)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    with src.open("rb") as handle:
        stored = store.put_file("big/20mb.bin", handle, content_type="application/octet-stream")
    assert (stored.size, stored.sha256) == (len(data), sha(data))
    assert store.size("big/20mb.bin") == len(data)
    digest = hashlib.sha256()
    for chunk in store.iter_bytes("big/20mb.bin", chunk_size=MIB):
        assert len(chunk) <= MIB
        digest.update(chunk)
    assert digest.hexdigest() == sha(data)


@pytest.mark.parametrize("prefetch", [0, 1, 3, 8])
def test_iter_many_preserves_order_and_content(store: Storage, prefetch: int) -> None:
    if isinstance(store, GCSStorage):
        store.prefetch_max_object_bytes = 64 * 1024  # so some objects take the streamed path
    sizes = [10, 0, 200_000, 5, 70_000, 1, 300_000, 64 * 1024, 3, 2, 150_000, 7]
    contents = {f"many/{i:02d}.bin": os.urandom(n) for i, n in enumerate(sizes)}
    for key, data in contents.items():
        store.put_bytes(key, data, content_type="application/octet-stream")
    order = [*sorted(contents, reverse=True), "many/03.bin"]  # not listing order; a repeat
    seen = []
    for key, chunks in store.iter_many(order, chunk_size=32 * 1024, prefetch=prefetch):
        parts = list(chunks)
        assert all(len(p) <= 32 * 1024 for p in parts)
        seen.append((key, b"".join(parts)))
    assert seen == [(key, contents[key]) for key in order]


def test_iter_many_reports_a_missing_object_from_its_chunks(store: Storage) -> None:
    store.put_bytes("m/a.bin", b"aaa", content_type="application/octet-stream")
    store.put_bytes("m/c.bin", b"ccc", content_type="application/octet-stream")
    results: list[tuple[str, bytes | str]] = []
    for key, chunks in store.iter_many(["m/a.bin", "m/b.bin", "m/c.bin"], prefetch=2):
        try:
            results.append((key, b"".join(chunks)))
        except ObjectNotFound:
            results.append((key, "missing"))
    assert results == [("m/a.bin", b"aaa"), ("m/b.bin", "missing"), ("m/c.bin", b"ccc")]


def test_local_storage_has_no_signed_urls(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path)
    local.put_bytes("a.png", b"x", content_type="image/png")
    assert local.signed_url("a.png") is None


# -- GCS specifics -------------------------------------------------------------------------


def test_gcs_object_naming_and_properties(
    gcs_emulator: GCSEmulator, gcs_storage: GCSStorage
) -> None:
    data = b"generated image"
    stored = gcs_storage.put_bytes(
        "jobs/9/img.png",
        data,
        content_type="image/png",
        metadata={"job_id": "9", "sha256": "caller cannot override this"},
    )
    assert gcs_storage.uri("jobs/9/img.png") == (
        f"gs://{gcs_emulator.bucket}/{gcs_storage.prefix}/jobs/9/img.png"
    )
    blob = blob_of(gcs_emulator, gcs_storage, "jobs/9/img.png")
    assert blob.content_type == "image/png"
    assert blob.cache_control == "private, max-age=31536000, immutable"
    assert blob.metadata == {"job_id": "9", "sha256": sha(data)}
    assert stored.sha256 == sha(data)
    # Last: a download resets blob.cache_control (the emulator sends no Cache-Control).
    assert blob.download_as_bytes() == data


def test_gcs_large_upload_is_resumable_and_small_is_single_request(
    gcs_emulator: GCSEmulator, gcs_storage: GCSStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, int | None]] = []
    for method in ("_do_multipart_upload", "_do_resumable_upload"):
        original = getattr(Blob, method)

        def spy(self: Blob, *args: Any, _m: str = method, _o: Any = original, **kw: Any) -> Any:
            calls.append((_m, self.chunk_size))
            return _o(self, *args, **kw)

        monkeypatch.setattr(Blob, method, spy)
    big = os.urandom(20 * MIB)
    gcs_storage.put_file("r/big.bin", io.BytesIO(big), content_type="application/octet-stream")
    gcs_storage.put_bytes("r/small.bin", b"small", content_type="application/octet-stream")
    assert calls == [("_do_resumable_upload", 8 * MIB), ("_do_multipart_upload", 8 * MIB)]
    blob = blob_of(gcs_emulator, gcs_storage, "r/big.bin")
    assert blob.size == len(big)
    assert blob.metadata == {"sha256": sha(big)}
    assert blob.cache_control == "private, max-age=31536000, immutable"
    assert gcs_storage.get_bytes("r/big.bin") == big


def test_gcs_refuses_a_source_that_changes_during_upload(gcs_storage: GCSStorage) -> None:
    class Shifty(io.BytesIO):
        """Gives other bytes once rewound after the hashing pass."""

        seeks = 0

        def seek(self, pos: int, whence: int = 0) -> int:
            self.seeks += 1
            if self.seeks == 2:  # the upload starts reading
                self.getbuffer()[0:4] = b"EVIL"
            return super().seek(pos, whence)

    with pytest.raises(StorageError, match="changed while uploading"):
        gcs_storage.put_file("s/x.bin", Shifty(b"good data"), content_type="image/png")
    assert not gcs_storage.exists("s/x.bin")


def test_gcs_retries_transient_errors(
    gcs_emulator: GCSEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.gcs_emulator import anonymous_client

    client = anonymous_client(gcs_emulator.url)
    store = GCSStorage(f"gs://{gcs_emulator.bucket}/retry", client=client)
    session = client._http
    real_request = session.request
    attempts: list[str] = []

    def flaky(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        attempts.append(method)
        # Fail the first try of: the small upload, the download, the first resumable chunk.
        if len(attempts) in (1, 3, 6):
            raise requests.ConnectionError("connection reset by peer (simulated)")
        return real_request(method, url, *args, **kwargs)

    monkeypatch.setattr(session, "request", flaky)
    stored = store.put_bytes("r.png", b"retried", content_type="image/png")
    assert store.get_bytes("r.png") == b"retried"
    big = os.urandom(9 * MIB)  # resumable: an 8 MiB chunk and a 1 MiB one
    src = io.BytesIO(b"skip" + big)
    src.seek(4)
    stored_big = store.put_file("big.bin", src, content_type="application/octet-stream")
    monkeypatch.undo()
    assert attempts == ["POST", "POST", "GET", "GET", "POST", "PUT", "PUT", "PUT"]
    assert stored.sha256 == sha(b"retried")
    assert stored_big.sha256 == sha(big)
    assert store.get_bytes("big.bin") == big


def test_upload_view_rewinds_within_its_slice_and_hashes_once() -> None:
    from shared.storage.gcs import _SourceView

    src = io.BytesIO(b"HEAD" + b"0123456789")
    view = _SourceView(src, start=4, size=10)
    assert view.read(6) == b"012345"
    assert view.seek(2) == 2  # the server kept only 2 bytes of the chunk: resend from there
    assert view.read(3) == b"234"
    assert view.tell() == 5
    assert view.sha256() is None  # not everything read yet
    assert view.read() == b"56789"
    assert view.read() == b""
    assert view.sha256() == sha(b"0123456789")
    assert view.seek(-3, os.SEEK_END) == 7
    assert view.read(100) == b"789"


def test_gcs_iter_many_reads_ahead_within_its_window(
    gcs_storage: GCSStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [f"w/{i:02d}.bin" for i in range(12)]
    for key in keys:
        gcs_storage.put_bytes(key, key.encode() * 100, content_type="application/octet-stream")
    gcs_storage.put_bytes("w/large.bin", os.urandom(50_000), content_type="image/png")
    gcs_storage.prefetch_max_object_bytes = 10_000
    started: list[str] = []
    kinds: dict[str, str] = {}
    lock = threading.Lock()
    real_prefetch = gcs_storage._prefetch

    def spy(key: str) -> Any:
        with lock:
            started.append(key)
        result = real_prefetch(key)
        kinds[key] = "whole" if isinstance(result, bytes) else "streamed"
        return result

    monkeypatch.setattr(gcs_storage, "_prefetch", spy)
    many = gcs_storage.iter_many([*keys, "w/large.bin"], prefetch=3)
    first_key, first_chunks = next(many)
    # Without consuming anything: the current object and 3 ahead are fetched, no more.
    wait_until(lambda: len(started) == 4)
    time.sleep(0.3)
    assert sorted(started) == keys[:4]
    assert first_key == keys[0]
    assert b"".join(first_chunks) == keys[0].encode() * 100
    rest = {key: b"".join(chunks) for key, chunks in many}
    assert list(rest) == [*keys[1:], "w/large.bin"]
    assert kinds["w/00.bin"] == "whole"
    assert kinds["w/large.bin"] == "streamed"
    assert rest["w/large.bin"] == gcs_storage.get_bytes("w/large.bin")


def test_gcs_iter_many_reads_the_head_of_large_objects_ahead(
    gcs_storage: GCSStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large objects (4K PNGs) are not a first byte's latency each: their first range is
    fetched ahead like small objects are, the rest streamed in turn, checksum verified."""
    monkeypatch.setattr(gcs, "RANGE_SIZE", 16_384)
    gcs_storage.prefetch_max_object_bytes = 10_000
    bodies = {f"big/{i}.bin": os.urandom(40_000) for i in range(4)}
    for key, data in bodies.items():
        gcs_storage.put_bytes(key, data, content_type="image/png")
    ranges: list[tuple[str, int]] = []
    real_read_range = gcs_storage._read_range

    def spy(blob: Any, key: str, start: int, stop: int) -> bytes:
        ranges.append((key, start))
        return real_read_range(blob, key, start, stop)

    monkeypatch.setattr(gcs_storage, "_read_range", spy)
    many = gcs_storage.iter_many(list(bodies), chunk_size=4096, prefetch=3)
    first_key, first_chunks = next(many)
    wait_until(lambda: len(ranges) == 4)  # nothing consumed yet: 4 heads read ahead
    assert sorted(ranges) == [(key, 0) for key in bodies]
    assert b"".join(first_chunks) == bodies[first_key]
    assert {key: b"".join(chunks) for key, chunks in many} == dict(list(bodies.items())[1:])
    assert sorted(ranges) == sorted((key, start) for key in bodies for start in (0, 16_384, 32_768))


def test_gcs_iter_many_can_be_abandoned(gcs_storage: GCSStorage) -> None:
    keys = [f"ab/{i}.bin" for i in range(20)]
    for key in keys:
        gcs_storage.put_bytes(key, b"x" * 1000, content_type="application/octet-stream")
    many = gcs_storage.iter_many(keys, prefetch=4)
    assert isinstance(many, Generator)
    key, chunks = next(many)
    assert (key, b"".join(chunks)) == (keys[0], b"x" * 1000)
    many.close()  # must not hang or raise
    assert gcs_storage.get_bytes(keys[1]) == b"x" * 1000


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- signed URLs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service_account_info() -> dict[str, str]:
    """A fake service-account key file's contents with a real RSA key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": "test",
        "private_key_id": "test-key-1",
        "private_key": pem,
        "client_email": "pixelfleet@test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


def signing_client(emulator: GCSEmulator, info: dict[str, str]) -> storage.Client:
    # Scoped already, so the client keeps this object (it re-scopes a copy otherwise), and
    # given a token that is valid: the emulator ignores it and nothing calls token_uri.
    credentials = service_account.Credentials.from_service_account_info(
        info, scopes=storage.Client.SCOPE
    )
    credentials.token = "test-token"
    credentials.expiry = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)
    return storage.Client(
        project="test", credentials=credentials, client_options={"api_endpoint": emulator.url}
    )


def verify_v4_signature(url: str, public_pem: bytes) -> dict[str, str]:
    """Check the URL's GOOG4-RSA-SHA256 signature (the emulator does not); returns its query."""
    parts = urlsplit(url)
    query, _, signature = parts.query.rpartition("&X-Goog-Signature=")
    params = {k: v[0] for k, v in parse_qs(query).items()}
    canonical = "\n".join(
        ["GET", parts.path, query, f"host:{parts.netloc}\n", "host", "UNSIGNED-PAYLOAD"]
    )
    scope = unquote(params["X-Goog-Credential"]).split("/", 1)[1]
    to_sign = "\n".join(
        [
            "GOOG4-RSA-SHA256",
            params["X-Goog-Date"],
            scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    public_key = serialization.load_pem_public_key(public_pem)
    assert isinstance(public_key, rsa.RSAPublicKey)
    public_key.verify(
        bytes.fromhex(signature), to_sign.encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    return params


def test_gcs_signed_url_fetches_the_object(
    gcs_emulator: GCSEmulator, service_account_info: dict[str, str]
) -> None:
    client = signing_client(gcs_emulator, service_account_info)
    store = GCSStorage(f"gs://{gcs_emulator.bucket}/signed", client=client, signed_url_expiry_s=600)
    data = os.urandom(50_000)
    store.put_bytes("out/img_1.v2.png", data, content_type="image/png")
    url = store.signed_url("out/img_1.v2.png")
    assert url is not None
    assert url.startswith(f"{gcs_emulator.url}/{gcs_emulator.bucket}/signed/out/img_1.v2.png?")
    private_key = serialization.load_pem_private_key(
        service_account_info["private_key"].encode(), password=None
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    params = verify_v4_signature(url, public_pem)
    assert params["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    assert params["X-Goog-Expires"] == "600"
    assert params["X-Goog-Credential"].startswith(service_account_info["client_email"] + "/")
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == "image/png"

    shorter = store.signed_url("out/img_1.v2.png", expiry_s=30)
    assert shorter is not None
    assert verify_v4_signature(shorter, public_pem)["X-Goog-Expires"] == "30"
    with pytest.raises(StorageError, match="expiry"):
        store.signed_url("out/img_1.v2.png", expiry_s=8 * 24 * 3600)


def test_gcs_anonymous_client_gives_no_signed_url(gcs_storage: GCSStorage) -> None:
    gcs_storage.put_bytes("a.png", b"x", content_type="image/png")
    assert gcs_storage.signed_url("a.png") is None


# -- configuration, validation, credentials --------------------------------------------------


def test_gcs_missing_bucket_is_a_clear_error(gcs_emulator: GCSEmulator) -> None:
    with pytest.raises(StorageError, match=r"no-such-bucket.*does not exist") as caught:
        GCSStorage("gs://no-such-bucket/prefix", client=gcs_emulator.client)
    assert not isinstance(caught.value, ObjectNotFound)


def test_gcs_write_to_a_vanished_bucket_names_the_bucket(gcs_emulator: GCSEmulator) -> None:
    """A bucket deleted after start-up: a write says the bucket is gone, not "no object"."""
    store = GCSStorage("gs://vanished-bucket/p", client=gcs_emulator.client, validate=False)
    with pytest.raises(StorageError, match=r"write .*'vanished-bucket' does not exist") as caught:
        store.put_bytes("a.png", b"x", content_type="image/png")
    assert not isinstance(caught.value, ObjectNotFound)


def test_gcs_credentials_that_cannot_authenticate_fail_at_construction(
    gcs_emulator: GCSEmulator, service_account_info: dict[str, str]
) -> None:
    info = {**service_account_info, "token_uri": f"{gcs_emulator.url}/token"}  # answers 501
    credentials = service_account.Credentials.from_service_account_info(
        info, scopes=storage.Client.SCOPE
    )
    client = storage.Client(
        project="test", credentials=credentials, client_options={"api_endpoint": gcs_emulator.url}
    )
    with pytest.raises(StorageError, match=r"authenticate.*pixelfleet-test") as caught:
        GCSStorage(f"gs://{gcs_emulator.bucket}/x", client=client)
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(caught.value)


@pytest.mark.parametrize(
    "url", ["gs://", "gs://Bad_Bucket/x", "gs://ab/x", "gs://bucket/../x", "gs://bucket/a//b"]
)
def test_invalid_gs_urls(url: str) -> None:
    with pytest.raises(StorageError, match="invalid GCS"):
        parse_gs_url(url)


def test_gs_url_forms() -> None:
    assert parse_gs_url("gs://bucket") == ("bucket", "")
    assert parse_gs_url("gs://bucket/") == ("bucket", "")
    assert parse_gs_url("gs://bucket/a/b/") == ("bucket", "a/b")


def test_gcs_store_at_bucket_root(gcs_emulator: GCSEmulator) -> None:
    store = GCSStorage(f"gs://{gcs_emulator.bucket}", client=gcs_emulator.client)
    assert store.uri("root-test/x.png") == f"gs://{gcs_emulator.bucket}/root-test/x.png"
    store.put_bytes("root-test/x.png", b"x", content_type="image/png")
    assert [i.key for i in store.list("root-test")] == ["root-test/x.png"]
    assert store.delete_prefix("root-test") == 1


def test_open_storage_gs_url_uses_the_emulator_from_env(gcs_env: GCSEmulator) -> None:
    store = open_storage(f"gs://{gcs_env.bucket}/opened")
    assert isinstance(store, GCSStorage)
    assert store.url == f"gs://{gcs_env.bucket}/opened"
    store.put_bytes("k.png", b"via env", content_type="image/png")
    assert gcs_env.client.bucket(gcs_env.bucket).blob("opened/k.png").download_as_bytes() == (
        b"via env"
    )
    with pytest.raises(StorageError, match="missing-bucket"):
        open_storage("gs://missing-bucket/x")


def test_credentials_file_env_is_used(tmp_path: Path, service_account_info: dict[str, str]) -> None:
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps(service_account_info))
    client = client_from_env("some-bucket", {"PIXELFLEET_GCS_CREDENTIALS_FILE": str(key_file)})
    assert client._credentials.service_account_email == service_account_info["client_email"]
    assert client.project == "test"


def test_unreadable_credentials_file_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("PIXELFLEET_GCS_CREDENTIALS_FILE", str(tmp_path / "missing.json"))
    with pytest.raises(StorageError, match=r"PIXELFLEET_GCS_CREDENTIALS_FILE.*my-bucket"):
        open_storage("gs://my-bucket/x")
    (tmp_path / "garbage.json").write_text("{not json")
    monkeypatch.setenv("PIXELFLEET_GCS_CREDENTIALS_FILE", str(tmp_path / "garbage.json"))
    with pytest.raises(StorageError, match="PIXELFLEET_GCS_CREDENTIALS_FILE"):
        open_storage("gs://my-bucket/x")


def test_missing_application_credentials_file_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("PIXELFLEET_GCS_CREDENTIALS_FILE", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "nope.json"))
    with pytest.raises(StorageError, match=r"GOOGLE_APPLICATION_CREDENTIALS.*my-bucket"):
        open_storage("gs://my-bucket/x")


def run_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run `code` in a clean interpreter: no Google credentials, no metadata server."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "HOME": str(tmp_path),
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        "NO_GCE_CHECK": "true",
    }
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def test_no_credentials_at_all_says_how_to_fix_it(tmp_path: Path) -> None:
    result = run_python(
        "from shared.storage import open_storage, StorageError\n"
        "try:\n"
        "    open_storage('gs://my-bucket/x')\n"
        "except StorageError as exc:\n"
        "    print(exc)\n",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    message = result.stdout
    assert "my-bucket" in message
    for name in [
        "PIXELFLEET_GCS_CREDENTIALS_FILE",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "STORAGE_EMULATOR_HOST",
    ]:
        assert name in message


def test_local_storage_does_not_import_google_cloud(tmp_path: Path) -> None:
    result = run_python(
        "import sys\n"
        "from shared.storage import open_storage\n"
        f"store = open_storage({str(tmp_path / 'local')!r})\n"
        "store.put_bytes('a.png', b'x', content_type='image/png')\n"
        "print(sorted(m for m in sys.modules if m.startswith('google')))\n",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
