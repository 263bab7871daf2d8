"""pytest fixtures: an in-process GCS emulator (gcp-storage-emulator) with one bucket, and
a service-account key that can sign URLs (the emulator does not check signatures;
`verify_v4_signature` does).

tests/conftest.py registers the fixtures (`gcs_emulator`, `gcs_env`, `gcs_storage`,
`service_account_info`) for every test.

Emulator gaps: no signature or expiry checks on signed URLs,
`if_generation_match` and page sizes ignored, one request at a time, and downloads carry
no Cache-Control header (so `blob.download_as_bytes()` resets `blob.cache_control`).
"""

import hashlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from gcp_storage_emulator.server import create_server
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.oauth2 import service_account

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
