"""pytest fixtures: an in-process GCS emulator (gcp-storage-emulator) with one bucket.

Use them with `pytest_plugins = ["tests.gcs_emulator"]` in a test module or the root
conftest.

Emulator gaps (see PLATFORM-FACTS.md): no signature or expiry checks on signed URLs,
`if_generation_match` and page sizes ignored, one request at a time, and downloads carry
no Cache-Control header (so `blob.download_as_bytes()` resets `blob.cache_control`).
"""

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from gcp_storage_emulator.server import create_server
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from shared.storage.gcs import GCSStorage

BUCKET = "pixelfleet-test"


@dataclass(frozen=True)
class GCSEmulator:
    url: str  # http://127.0.0.1:PORT, the value for STORAGE_EMULATOR_HOST
    bucket: str
    client: storage.Client  # anonymous, pointed at the emulator


def anonymous_client(emulator_url: str) -> storage.Client:
    """A client for the emulator that needs no STORAGE_EMULATOR_HOST in the environment."""
    return storage.Client(
        project="test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": emulator_url},
    )


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GCSEmulator]:
    """One emulator for the session, serving bucket `pixelfleet-test` from memory."""
    # The emulator logs every response at WARNING ("Content handled as string").
    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    server = create_server("127.0.0.1", 0, in_memory=True)
    server.start()
    # Its HTTPServer listens with a backlog of 5 and serves one connection at a time: more
    # concurrent clients (iter_many's read-ahead pool) get SYNs dropped and stall ~1 s each.
    server._api._httpd.socket.listen(128)
    try:
        url = f"http://127.0.0.1:{server._api._httpd.server_address[1]}"
        emulator = GCSEmulator(url=url, bucket=BUCKET, client=anonymous_client(url))
        emulator.client.create_bucket(BUCKET)
        yield emulator
    finally:
        server.stop()


@pytest.fixture
def gcs_env(gcs_emulator: GCSEmulator, monkeypatch: pytest.MonkeyPatch) -> GCSEmulator:
    """STORAGE_EMULATOR_HOST set (for this test only), so `open_storage("gs://…")` uses it."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    for name in ("PIXELFLEET_GCS_CREDENTIALS_FILE", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    return gcs_emulator


@pytest.fixture
def gcs_storage(gcs_emulator: GCSEmulator) -> GCSStorage:
    """A GCSStorage under a fresh prefix of the emulator's bucket (tests do not collide)."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    return GCSStorage(f"gs://{gcs_emulator.bucket}/{prefix}", client=gcs_emulator.client)
