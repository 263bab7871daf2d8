"""The Storage contract (shared/storage/base.py), on every backend: local disk and GCS
(against gcp-storage-emulator). What only one backend does is in test_local_storage.py and
test_gcs_storage.py."""

import hashlib
import io
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.storage import LocalStorage, ObjectNotFound, Storage, StorageError
from shared.storage.gcs import GCSStorage

MIB = 1024 * 1024


@pytest.fixture(params=["local", "gcs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    gcs: GCSStorage = request.getfixturevalue("gcs_storage")
    return gcs


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
