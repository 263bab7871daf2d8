"""Local-disk storage (shared/storage/local.py): what it does beyond the Storage contract."""

from pathlib import Path

from shared.storage import LocalStorage
from tests.fakes.interpreter import run_python


def test_local_storage_has_no_signed_urls(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path)
    local.put_bytes("a.png", b"x", content_type="image/png")
    assert local.signed_url("a.png") is None


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
