"""Local image files as the client sends them: which files, their hashes, their batches."""

import hashlib
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# Names the server may accept (it decides by content: PNG, JPEG, WebP).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class LocalFile:
    path: Path
    size: int
    sha256: str


def images_in(folder: Path) -> list[Path]:
    """The image files directly in `folder` (not its subfolders, not hidden ones), by name."""
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and is_image_name(path)
    )


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def local_file(path: Path) -> LocalFile:
    """The file's size and sha256 (what the server records of an upload)."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as stream:
        while chunk := stream.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return LocalFile(path, size, digest.hexdigest())


def wire_name(path: Path) -> str:
    """The name to send for `path`: one the server keeps as it is (its own name, NFC, no
    control characters, at most 255 characters), so its answer can be matched to the file."""
    name = "".join(
        ch for ch in unicodedata.normalize("NFC", path.name) if unicodedata.category(ch)[0] != "C"
    )
    return name.strip()[:255] or "unnamed"


def batches(
    files: Sequence[LocalFile], max_bytes: int, max_files: int
) -> Iterator[list[LocalFile]]:
    """`files` in order, in batches of at most `max_files` files and `max_bytes` bytes (a
    file larger than `max_bytes` goes alone)."""
    batch: list[LocalFile] = []
    size = 0
    for file in files:
        if batch and (len(batch) == max_files or size + file.size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(file)
        size += file.size
    if batch:
        yield batch
