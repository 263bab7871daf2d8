"""The client class (client/api.py) against the whole stack on real sockets: groups, resumable
uploads in batches, submissions, following jobs, ZIPs, errors, the password, retries."""

import io
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from client import ApiError, ApiUnreachable, Client, ClientError
from client.files import local_file
from control_plane.settings import Settings
from tests.conftest import jpeg_bytes, png_bytes
from tests.fakes.servers import free_port
from tests.fakes.stack import Stack, run_stack

PASSWORD = "client-test-password-0123456789"


def photos(folder: Path, n: int, start: int = 0) -> Path:
    """`n` distinct small images in `folder` (made if needed), plus a file that is not one."""
    folder.mkdir(exist_ok=True)
    for i in range(start, start + n):
        maker = png_bytes if i % 2 else jpeg_bytes
        suffix = ".png" if i % 2 else ".jpg"
        (folder / f"photo {i:03d}{suffix}").write_bytes(maker(40 + i, 30, (i * 9 % 256, 80, 40)))
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    with Client(str(stack.http.base_url), backoff_s=0.01) as api:
        yield api


def test_groups_are_created_and_found_by_name_or_id(client: Client) -> None:
    created = client.create_group("cats")
    by_name, by_id = client.find_group("cats"), client.find_group(created.id)
    assert by_name and by_id and by_name.id == by_id.id == created.id
    assert client.find_group("dogs") is None
    assert client.find_group("grp_01J0000000000000000000000Z") is None
    client.create_group("cats")
    with pytest.raises(ClientError, match="2 groups are named 'cats'"):
        client.find_group("cats")


def test_a_folder_uploads_once_and_resumes(client: Client, tmp_path: Path) -> None:
    group = client.create_group("photos")
    folder = photos(tmp_path / "photos", 5)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    batches: list[int] = []
    first = client.upload_folder(group.id, folder, on_batch=lambda done: batches.append(len(done)))
    states = {upload.file.path.name: upload.state for upload in first}
    assert states == {
        **{f"photo {i:03d}{'.png' if i % 2 else '.jpg'}": "uploaded" for i in range(5)},
        "broken.png": "rejected",
    }
    assert sum(batches) == 6
    rejected = next(upload for upload in first if upload.state == "rejected")
    assert rejected.upload_id is None and rejected.reason == "not a PNG, JPEG or WebP image"
    listed = {upload.id: upload.sha256 for upload in client.uploads(group.id)}
    assert {u.upload_id: u.file.sha256 for u in first if u.upload_id} == listed

    photos(folder, 2, start=5)  # two more files, and a copy of one already sent
    (folder / "copy.jpg").write_bytes((folder / "photo 000.jpg").read_bytes())
    again = {upload.file.path.name: upload for upload in client.upload_folder(group.id, folder)}
    assert again["photo 000.jpg"].state == "skipped"
    assert again["copy.jpg"].state == "skipped"
    assert again["copy.jpg"].upload_id == again["photo 000.jpg"].upload_id
    assert [again[f"photo 00{i}.png" if i % 2 else f"photo 00{i}.jpg"].state for i in (5, 6)] == [
        "uploaded",
        "uploaded",
    ]
    assert len(list(client.uploads(group.id))) == 7
    [resent] = client.upload_files(group.id, [local_file(folder / "photo 000.jpg")])
    assert (resent.state, resent.upload_id) == ("duplicate", again["photo 000.jpg"].upload_id)


def test_batches_over_the_servers_limit_are_split(
    stack: Stack, client: Client, tmp_path: Path
) -> None:
    group = client.create_group("split")
    folder = photos(tmp_path / "split", 6)
    one_file = max(path.stat().st_size for path in folder.iterdir())
    stack.settings.upload_max_request_bytes = 2 * one_file + 4096  # about two files a request
    uploads = client.upload_folder(group.id, folder)
    assert [upload.state for upload in uploads] == ["uploaded"] * 6
    assert len({upload.upload_id for upload in uploads}) == 6


def test_submit_follow_and_download_one_jobs_zip(client: Client, tmp_path: Path) -> None:
    group = client.create_group("zip")
    uploads = client.upload_folder(group.id, photos(tmp_path / "zip", 3))
    ids = [upload.upload_id for upload in uploads if upload.upload_id]
    body = {"group_id": group.id, "mode": "automatic", "prompt": "in snow", "images": ids}
    first = client.submit(body).jobs[0]
    other = client.submit({**body, "prompt": "in rain", "images": ids[:1]}).jobs[0]
    snapshots = list(client.follow([first.id, other.id], interval_s=0.1))
    assert all(job.status == "completed" for job in snapshots[-1])
    assert [job.progress.succeeded for job in snapshots[-1]] == [3, 1]
    listed = client.jobs(group_id=group.id, with_total=True)
    assert listed.total == 2 and {job.id for job in listed.data} == {first.id, other.id}
    assert listed.next is None

    target = tmp_path / "out" / "first.zip"
    target.parent.mkdir()
    chunks: list[int] = []
    size = client.download_zip(
        group.id, target, job_ids=[first.id], on_progress=lambda n, _: chunks.append(n)
    )
    assert size == target.stat().st_size == sum(chunks)
    assert list(target.parent.iterdir()) == [target]  # no partial file left behind
    with zipfile.ZipFile(target) as archive:
        images = [name for name in archive.namelist() if not name.endswith(".jsonl")]
    assert len(images) == 3 and all(name.startswith(f"{first.id}/") for name in images)


def test_jobs_are_read_with_all_their_images_a_page_at_a_time(stack: Stack, tmp_path: Path) -> None:
    with Client(str(stack.http.base_url), backoff_s=0.01, image_page=2) as client:
        group = client.create_group("pages")
        uploads = client.upload_folder(group.id, photos(tmp_path / "pages", 5))
        ids = [upload.upload_id for upload in uploads if upload.upload_id]
        body = {"group_id": group.id, "mode": "automatic", "prompt": "p", "images": ids}
        job_id = client.submit(body).jobs[0].id
        snapshots = list(client.follow([job_id], interval_s=0.1))
        assert all(not job.images for [job] in snapshots[:-1])  # polls skip the images
        [last] = snapshots[-1]
        assert [image.position for image in last.images] == [0, 1, 2, 3, 4]
        assert last.images_next is None
        whole = client.job(job_id)
        assert [image.id for image in whole.images] == [image.id for image in last.images]
        assert client.job(job_id, images=False).images == []
        succeeded = list(client.job_images(job_id, status="succeeded"))
        assert [image.position for image in succeeded] == [0, 1, 2, 3, 4]
        assert list(client.job_images(job_id, status="failed")) == []


def test_api_errors_carry_status_detail_and_errors(client: Client) -> None:
    with pytest.raises(ApiError) as missing:
        client.job("job_01J0000000000000000000000Z")
    assert missing.value.status == 404 and "does not exist" in missing.value.detail
    with pytest.raises(ApiError) as invalid:
        client.submit({"group_id": "grp_x", "mode": "automatic", "prompt": "", "images": []})
    assert invalid.value.status == 422 and invalid.value.errors
    assert "422" in str(invalid.value)


def test_an_unreachable_api_is_one_error_after_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, retries=2, backoff_s=0.01) as api, pytest.raises(ApiUnreachable) as error:
        api.create_group("x")
    assert error.value.refused and url in str(error.value) and "pixelfleet up" in str(error.value)


def test_the_password_is_sent_from_the_environment(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = settings.model_copy(update={"api_password": PASSWORD})
    with contextmanager(run_stack)(locked) as stack:
        url = str(stack.http.base_url)
        monkeypatch.delenv("PIXELFLEET_API_PASSWORD", raising=False)
        with Client(url) as anonymous, pytest.raises(ApiError) as refused:
            anonymous.create_group("x")
        assert refused.value.status == 401
        monkeypatch.setenv("PIXELFLEET_API_PASSWORD", PASSWORD)
        with Client(url) as api:
            assert api.create_group("x").name == "x"
        wrong = Client(url, password="wrong-password-0123456789")
        with wrong, pytest.raises(ApiError, match="401"):
            wrong.jobs()


class LostAnswers(httpx.HTTPTransport):
    """Sends every request, but the first answer to each path is lost (a read timeout)."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[tuple[str, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.keys.append((request.url.path, request.headers.get("idempotency-key")))
        response = super().handle_request(request)
        if [path for path, _ in self.keys].count(request.url.path) == 1:
            response.close()
            raise httpx.ReadTimeout("answer lost", request=request)
        return response


def test_a_retried_post_sends_the_same_idempotency_key(stack: Stack) -> None:
    transport = LostAnswers()
    with Client(str(stack.http.base_url), backoff_s=0.01, transport=transport) as api:
        created = api.create_group("once")
        api.create_group("twice")
    keys = [key for path, key in transport.keys if path == "/api/groups"]
    assert len(keys) == 3 and keys[0] == keys[1] and keys[2] not in keys[:2]
    assert all(keys)
    assert created.name == "once"
    names = sorted(group["name"] for group in stack.http.get("/api/groups").json()["data"])
    assert names == ["once", "twice"]  # the retry was answered from the first request


def test_cancel_and_retry_are_not_repeated_after_a_lost_answer(stack: Stack) -> None:
    transport = LostAnswers()
    api = Client(str(stack.http.base_url), backoff_s=0.01, transport=transport)
    with api, pytest.raises(ApiUnreachable) as lost:
        api.cancel("job_01J0000000000000000000000Z")
    assert not lost.value.refused and "no answer" in str(lost.value)
    assert [path for path, _ in transport.keys] == [
        "/api/jobs/job_01J0000000000000000000000Z/cancel"
    ]


def test_upload_answers_are_matched_to_files_by_name(tmp_path: Path) -> None:
    """A rejected file between accepted ones keeps every other file's upload id."""
    folder = photos(tmp_path / "m", 3)
    names = sorted(path.name for path in folder.glob("photo*"))

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"data": [], "total": 0, "page": 1, "limit": 200})
        images = [_image(f"img_{i}", name) for i, name in enumerate(names) if i != 1]
        return httpx.Response(
            201, json={"images": images, "rejected": [{"filename": names[1], "reason": "bad"}]}
        )

    with Client("http://pixelfleet.test", transport=httpx.MockTransport(answer)) as api:
        uploads = api.upload_folder("grp_x", sorted(folder.glob("photo*")))
    assert [(u.state, u.upload_id) for u in uploads] == [
        ("uploaded", "img_0"),
        ("rejected", None),
        ("uploaded", "img_2"),
    ]


def _image(upload_id: str, name: str) -> dict[str, object]:
    return {
        "id": upload_id,
        "group_id": "grp_x",
        "filename": name,
        "content_type": "image/png",
        "width": 1,
        "height": 1,
        "bytes": 1,
        "sha256": "0" * 64,
        "url": "http://pixelfleet.test/file",
        "thumbnail_url": None,
        "created_at": "2026-01-01T00:00:00Z",
    }


def test_a_zip_that_is_cut_off_is_downloaded_again(tmp_path: Path) -> None:
    whole = io.BytesIO()
    with zipfile.ZipFile(whole, "w") as archive:
        archive.writestr("manifest.jsonl", "{}\n")
    attempts: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        if len(attempts) == 1:
            raise httpx.RemoteProtocolError("peer closed connection", request=request)
        return httpx.Response(200, content=whole.getvalue())

    target = tmp_path / "g.zip"
    with Client(
        "http://pixelfleet.test", backoff_s=0.01, transport=httpx.MockTransport(answer)
    ) as api:
        assert api.download_zip("grp_x", target) == len(whole.getvalue())
    assert target.read_bytes() == whole.getvalue() and len(attempts) == 2


def test_a_key_still_being_answered_is_asked_again_after_retry_after() -> None:
    """The server answers 409 with Retry-After while the same Idempotency-Key is in progress:
    the client waits and asks again with the same key; a cancel is never asked twice."""
    keys: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers.get("idempotency-key"))
        if len(keys) == 1 or request.url.path.endswith("/cancel"):
            return httpx.Response(409, json={"detail": "in progress"}, headers={"Retry-After": "0"})
        group = {"id": "grp_x", "name": "g", "created_at": "2026-01-01T00:00:00Z"}
        return httpx.Response(201, json={**group, "updated_at": group["created_at"]})

    with Client("http://pixelfleet.test", transport=httpx.MockTransport(answer)) as api:
        assert api.create_group("g").id == "grp_x"
        with pytest.raises(ApiError) as conflict:
            api.cancel("job_x")
    assert len(keys) == 3 and keys[0] == keys[1] and keys[0] and keys[2] is None
    assert conflict.value.status == 409 and conflict.value.retry_after == 0
