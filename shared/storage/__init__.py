"""Storage behind one small interface; one URL picks the backend."""

from shared.storage.base import (
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
    StoredObject,
    check_key,
)
from shared.storage.local import LocalStorage

__all__ = [
    "LocalStorage",
    "ObjectInfo",
    "ObjectNotFound",
    "Storage",
    "StorageError",
    "StoredObject",
    "check_key",
    "open_storage",
]


def open_storage(url: str, *, signed_url_expiry_s: int = 3600) -> Storage:
    """`gs://bucket/prefix` → Google Cloud Storage; a path or `file://` URL → local disk.

    GCS credentials come from the environment (see `shared.storage.gcs.client_from_env`):
    STORAGE_EMULATOR_HOST, PIXELFLEET_GCS_CREDENTIALS_FILE, or application default
    credentials (GOOGLE_APPLICATION_CREDENTIALS, workload identity).
    """
    if url.startswith("gs://"):
        from shared.storage.gcs import GCSStorage  # lazy: google-cloud only when needed

        return GCSStorage(url, signed_url_expiry_s=signed_url_expiry_s)
    if url.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return LocalStorage(unquote(urlparse(url).path))
    return LocalStorage(url)
