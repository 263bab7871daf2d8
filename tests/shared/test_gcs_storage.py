"""GCS storage (shared/storage/gcs.py) against gcp-storage-emulator: object properties,
uploads, retries, read-ahead, signed URLs, configuration and credentials."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from google.cloud import storage
from google.cloud.storage.blob import Blob
from google.oauth2 import service_account

from shared.storage import ObjectNotFound, StorageError, gcs, open_storage
from shared.storage.gcs import GCSStorage, client_from_env, parse_gs_url
from tests.fakes.gcs_emulator import GCSEmulator, signing_client, verify_v4_signature
from tests.fakes.interpreter import run_python

MIB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_of(emulator: GCSEmulator, store: GCSStorage, key: str) -> Blob:
    blob = emulator.client.bucket(emulator.bucket).get_blob(f"{store.prefix}/{key}")
    assert blob is not None, f"no blob for {key}"
    return blob


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
    from tests.fakes.gcs_emulator import anonymous_client

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
    # All three injected resets happened and were retried (the exact order of the client
    # library's calls is its own business, and varied on a loaded machine).
    assert len(attempts) >= 8 and {"POST", "GET", "PUT"} <= set(attempts)
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
