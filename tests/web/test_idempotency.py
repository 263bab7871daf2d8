"""`Idempotency-Key` (control_plane/web/idempotency.py, services/idempotency.py) through
HTTP: replays create nothing, a changed body is refused, only final answers are kept, racing
requests run once, keys expire, refusals by auth or limits leave no record, and an upload's
body is hashed as it streams, never held."""

import hashlib
import threading
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlmodel import select, update

from control_plane.app import create_app
from control_plane.errors import Unavailable
from control_plane.models import Group, IdempotentRequest, Job, Upload, utcnow
from control_plane.services import idempotency, submissions
from control_plane.settings import Settings
from control_plane.web.idempotency import BodyDigest
from tests.conftest import png_bytes
from tests.fakes.api import Api
from tests.fakes.servers import run_server

MiB = 2**20
REPLAYED = "idempotent-replayed"


def _count(api: Api, table: type) -> int:
    with api.session() as session:
        return len(session.exec(select(table)).all())


def _records(api: Api) -> list[IdempotentRequest]:
    with api.session() as session:
        return list(session.exec(select(IdempotentRequest)).all())


def _submit(api: Api, key: str, body: dict[str, Any]) -> httpx.Response:
    return api.client.post("/api/jobs/submit", json=body, headers={"Idempotency-Key": key})


def _automatic(group_id: str, images: list[str], prompt: str = "as a watercolour") -> dict:
    return {"group_id": group_id, "mode": "automatic", "prompt": prompt, "images": images}


def test_a_retry_replays_the_first_answer_and_creates_nothing(api: Api) -> None:
    key = {"Idempotency-Key": "retry-1"}  # one key on every route: keys are per route
    created = api.client.post("/api/groups", json={"name": "cats"}, headers=key)
    again = api.client.post("/api/groups", json={"name": "cats"}, headers=key)
    assert created.status_code == again.status_code == 201, again.text
    assert again.json() == created.json()
    assert again.headers[REPLAYED] == "true" and REPLAYED not in created.headers
    group_id = created.json()["id"]

    files = [("files", ("a.png", png_bytes(), "image/png"))]
    form = {"group_id": group_id}
    uploaded = api.client.post("/api/uploads", data=form, files=files, headers=key)
    reuploaded = api.client.post("/api/uploads", data=form, files=files, headers=key)
    assert uploaded.status_code == reuploaded.status_code == 201, reuploaded.text
    assert reuploaded.json() == uploaded.json() and reuploaded.headers[REPLAYED] == "true"
    assert not reuploaded.json()["images"][0]["duplicate"]  # the first answer, as it was
    image_id = uploaded.json()["images"][0]["id"]

    submitted = _submit(api, "retry-1", _automatic(group_id, [image_id]))
    api.drain()
    resubmitted = _submit(api, "retry-1", _automatic(group_id, [image_id]))
    api.drain()
    assert submitted.status_code == resubmitted.status_code == 201, resubmitted.text
    assert resubmitted.json() == submitted.json() and resubmitted.headers[REPLAYED] == "true"
    assert (_count(api, Group), _count(api, Upload), _count(api, Job)) == (1, 1, 1)
    assert len(api.run_bodies) == 1  # RunPod was asked once
    assert len(_records(api)) == 3

    other = _submit(api, "retry-2", _automatic(group_id, [image_id]))
    assert other.status_code == 201 and other.json()["batch_id"] != submitted.json()["batch_id"]


def test_an_import_retried_with_its_key_is_one_job(api: Api) -> None:
    group_id = api.group()
    key = {"Idempotency-Key": "import-1"}

    def send(rows: str) -> httpx.Response:
        files = {"file": ("rows.csv", rows.encode(), "text/csv")}
        return api.client.post(
            "/api/jobs/import", data={"group_id": group_id}, files=files, headers=key
        )

    first, again = send("prompt\na cat\na dog\n"), send("prompt\na cat\na dog\n")
    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == first.json() and again.headers[REPLAYED] == "true"
    changed = send("prompt\na cat\na cow\n")
    assert changed.status_code == 422 and "Idempotency-Key" in changed.json()["detail"]
    assert _count(api, Job) == 1


def test_the_same_key_with_another_body_is_422_and_writes_nothing(api: Api) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 2)
    first = _submit(api, "k", _automatic(group_id, images))
    assert first.status_code == 201
    changed = _submit(api, "k", _automatic(group_id, images, prompt="as an oil painting"))
    assert changed.status_code == 422
    assert "already used with a different request body" in changed.json()["detail"]
    assert REPLAYED not in changed.headers
    renamed = api.client.post("/api/groups", json={"name": "x"}, headers={"Idempotency-Key": "g"})
    assert renamed.status_code == 201
    refused = api.client.post("/api/groups", json={"name": "y"}, headers={"Idempotency-Key": "g"})
    assert refused.status_code == 422
    api.drain()
    assert (_count(api, Group), _count(api, Job), len(api.run_bodies)) == (2, 1, 1)
    assert _submit(api, "k", _automatic(group_id, images)).headers[REPLAYED] == "true"


@pytest.mark.parametrize(
    "headers",
    [
        [("Idempotency-Key", "")],
        [("Idempotency-Key", "x" * 256)],
        [("Idempotency-Key", "caf\xe9".encode("latin-1"))],
        [("Idempotency-Key", "tab\x7f")],
        [("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
    ],
    ids=["empty", "256 characters", "not ASCII", "not printable", "two keys"],
)
def test_a_malformed_key_is_refused_with_the_reason(api: Api, headers: list) -> None:
    answer = api.client.post("/api/groups", json={"name": "g"}, headers=headers)
    assert answer.status_code == 422, answer.text
    assert "Idempotency-Key" in answer.json()["detail"]
    assert _count(api, Group) == 0 and _records(api) == []


def test_keys_of_255_printable_characters_and_other_routes_are_fine(api: Api) -> None:
    longest = "".join(chr(32 + i % 95) for i in range(255))
    answer = api.client.post(
        "/api/groups", json={"name": "g"}, headers={"Idempotency-Key": longest}
    )
    assert answer.status_code == 201, answer.text
    [record] = _records(api)
    scope = hashlib.sha256(b" POST /api/groups").hexdigest()  # the local user has no id
    assert record.key == longest and record.scope == scope
    group_id = answer.json()["id"]
    listed = api.client.get(f"/api/groups/{group_id}", headers={"Idempotency-Key": "\x01"})
    assert listed.status_code == 200  # routes that create nothing ignore the header


def test_a_4xx_answer_is_replayed_too(api: Api) -> None:
    key = {"Idempotency-Key": "bad-name"}
    refused = api.client.post("/api/groups", json={"name": ""}, headers=key)
    assert refused.status_code == 422
    again = api.client.post("/api/groups", json={"name": ""}, headers=key)
    assert again.status_code == 422 and again.json() == refused.json()
    assert again.headers[REPLAYED] == "true"
    missing = {"group_id": "grp_" + "0" * 26, "mode": "automatic", "prompt": "p"}
    missing["images"] = ["img_" + "0" * 26]  # type: ignore[assignment]
    first = _submit(api, "missing", missing)
    assert first.status_code == 404, first.text
    assert _submit(api, "missing", missing).headers[REPLAYED] == "true"


def test_a_5xx_or_a_crash_is_not_stored_and_the_retry_runs(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 1)
    submit = submissions.submit
    failures: list[BaseException] = [Unavailable("database unavailable"), RuntimeError("bug")]

    def fails_twice(*args: Any) -> Any:
        if failures:
            raise failures.pop(0)
        return submit(*args)

    monkeypatch.setattr(submissions, "submit", fails_twice)
    body = _automatic(group_id, images)
    unavailable = _submit(api, "k", body)
    assert unavailable.status_code == 503 and _records(api) == []
    with pytest.raises(RuntimeError, match="bug"):  # the TestClient re-raises the 500's cause
        _submit(api, "k", body)
    assert _records(api) == []
    retried = _submit(api, "k", body)
    assert retried.status_code == 201 and REPLAYED not in retried.headers
    assert _submit(api, "k", body).json() == retried.json()
    api.drain()
    assert (_count(api, Job), len(api.run_bodies)) == (1, 1)


def test_a_request_still_being_answered_makes_a_retry_wait(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 1)
    submit, started, finish = submissions.submit, threading.Event(), threading.Event()

    def slow(*args: Any) -> Any:
        started.set()
        assert finish.wait(30)
        return submit(*args)

    monkeypatch.setattr(submissions, "submit", slow)
    body = _automatic(group_id, images)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_submit, api, "k", body)
        assert started.wait(30)
        busy = _submit(api, "k", body)
        assert busy.status_code == 409, busy.text
        assert busy.headers["retry-after"] == "1" and "still being answered" in busy.text
        finish.set()
        answered = first.result(timeout=30)
    assert answered.status_code == 201
    retried = _submit(api, "k", body)
    assert retried.json() == answered.json() and retried.headers[REPLAYED] == "true"
    api.drain()
    assert (_count(api, Job), len(api.run_bodies)) == (1, 1)


def test_requests_racing_on_a_new_key_run_once(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both requests try to claim the key at the same moment: the insert of the claim is the
    lock, so one runs and the other is told to wait (or, if the first already finished,
    gets its answer)."""
    group_id = api.group()
    images = api.upload_ids(group_id, 2)
    claim, together = idempotency.claim, threading.Barrier(4, timeout=30)

    def claim_together(*args: Any) -> Any:
        together.wait()
        return claim(*args)

    monkeypatch.setattr(idempotency, "claim", claim_together)
    body = _automatic(group_id, images)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _submit(api, "race", body), range(4)))
    statuses = sorted(answer.status_code for answer in answers)
    assert set(statuses) <= {201, 409} and statuses[0] == 201, [a.text for a in answers]
    ran = [answer for answer in answers if answer.status_code == 201]
    assert len({answer.json()["batch_id"] for answer in ran}) == 1
    assert sum(REPLAYED not in answer.headers for answer in ran) == 1
    api.drain()
    assert (_count(api, Job), len(api.run_bodies)) == (1, 1)


def test_an_expired_key_runs_again_and_expired_records_are_purged(api: Api) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 1)
    body = _automatic(group_id, images)
    first = _submit(api, "old", body)
    assert first.status_code == 201
    [record] = _records(api)
    kept = record.expires_at - record.created_at  # 24 h from the answer
    assert timedelta(hours=24) <= kept < timedelta(hours=24, seconds=30)
    with api.session() as session:
        session.exec(update(IdempotentRequest).values(expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
    again = _submit(api, "old", body)  # expired: a new request, not a replay
    assert again.status_code == 201 and REPLAYED not in again.headers
    assert again.json()["batch_id"] != first.json()["batch_id"]

    api.platform.settings.idempotency_ttl_s = 0.05
    api.client.post("/api/groups", json={"name": "a"}, headers={"Idempotency-Key": "short"})
    threading.Event().wait(0.2)
    api.client.post("/api/groups", json={"name": "b"}, headers={"Idempotency-Key": "purger"})
    assert {record.key for record in _records(api)} == {"old", "purger"}  # "short" purged


def test_requests_refused_by_limits_or_auth_leave_no_record(api: Api, settings: Settings) -> None:
    api.platform.settings.request_max_body_bytes = 1_000
    key = {"Idempotency-Key": "k", "content-type": "application/json"}

    def chunked_body() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        yield b'{"name": "'
        yield b"x" * 2_000
        yield b'"}'

    too_large = api.client.post("/api/groups", content=chunked_body(), headers=key)
    assert too_large.status_code == 413, too_large.text
    assert _records(api) == []
    created = api.client.post("/api/groups", json={"name": "small"}, headers=key)
    assert created.status_code == 201 and REPLAYED not in created.headers

    password = "p" * 16
    guarded = settings.model_copy(update={"api_password": password})
    with TestClient(create_app(guarded, reconcile=False)) as client:
        refused = client.post("/api/groups", json={"name": "a"}, headers={"Idempotency-Key": "z"})
        assert refused.status_code == 401
        allowed = client.post(
            "/api/groups",
            json={"name": "b"},
            headers={"Idempotency-Key": "z", "Authorization": f"Bearer {password}"},
        )
        assert allowed.status_code == 201 and allowed.json()["name"] == "b"


BOUNDARY = "idempotency-test-boundary"


def _streamed_upload(group_id: str, path: Path, flip_last_byte: bool = False) -> Iterator[bytes]:
    """A multipart upload of the file at `path`, read from disk as it is sent."""
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="group_id"\r\n\r\n{group_id}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    with path.open("rb") as file:
        while chunk := file.read(MiB):
            if flip_last_byte and len(chunk) < MiB:
                chunk = chunk[:-1] + bytes([chunk[-1] ^ 1])
            yield chunk
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.fixture(scope="module")
def noisy_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PNG of noise: about 15 MB that does not compress."""
    path = tmp_path_factory.mktemp("big") / "noise.png"
    side = 2_250
    noise = Image.frombytes("RGB", (side, side), _noise(side * side * 3))
    noise.save(path, "PNG", compress_level=1)
    return path


def _noise(size: int) -> bytes:
    return hashlib.shake_256(b"pixelfleet").digest(size)


def test_an_upload_with_a_key_is_hashed_as_it_streams_never_held(
    settings: Settings, noisy_png: Path
) -> None:
    """Over a real socket: the ~15 MB body is never in memory on its way through (Python's
    allocations stay far below its size, for the first request and for the replay), yet its
    hash covers all of it: the same file replays, one changed last byte is refused."""
    size = noisy_png.stat().st_size
    assert size > 12 * MiB
    with (
        run_server(create_app(settings, reconcile=False)) as url,
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        group_id = http.post("/api/groups", json={"name": "big"}).json()["id"]
        headers = {
            "content-type": f"multipart/form-data; boundary={BOUNDARY}",
            "Idempotency-Key": "big-upload",
        }

        def post(flip: bool = False) -> tuple[httpx.Response, int]:
            tracemalloc.start()
            try:
                answer = http.post(
                    "/api/uploads",
                    content=_streamed_upload(group_id, noisy_png, flip),
                    headers=headers,
                )
                return answer, tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()

        first, first_peak = post()
        assert first.status_code == 201, first.text
        assert first.json()["images"][0]["bytes"] == size
        replay, replay_peak = post()
        assert replay.status_code == 201 and replay.headers[REPLAYED] == "true"
        assert replay.json() == first.json()
        changed, _ = post(flip=True)
        assert changed.status_code == 422, changed.text
        assert "different request body" in changed.json()["detail"]
        assert http.get(f"/api/groups/{group_id}").json()["counts"]["uploads"] == 1
    # measured about 4 MB and 3 MB: chunks in flight and the parser's 1 MiB spool
    assert first_peak < size / 2 and replay_peak < size / 2, (first_peak, replay_peak, size)


def _multipart(boundary: str, content: bytes) -> bytes:
    disposition = 'Content-Disposition: form-data; name="files"; filename="a.png"'
    head = f"--{boundary}\r\n{disposition}\r\n\r\n".encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.parametrize("piece", [1, 7, 64, 10_000])
def test_a_multipart_body_hashes_alike_whatever_its_boundary_or_pieces(piece: int) -> None:
    def digest(boundary: str, content: bytes) -> str:
        body, hashed = _multipart(boundary, content), BodyDigest(boundary.encode())
        for start in range(0, len(body), piece):
            hashed.update(body[start : start + piece])
        return hashed.hexdigest()

    content = bytes(range(256)) * 20
    expected = digest("curl-boundary-1", content)
    assert digest("httpx-boundary-0123456789abcdef", content) == expected
    assert digest("curl-boundary-1", content[:-1] + b"\0") != expected
    plain = BodyDigest(None)
    plain.update(b"--x\r\n")
    assert plain.hexdigest() == hashlib.sha256(b"--x\r\n").hexdigest()


def test_a_request_that_outlived_its_claim_neither_stores_nor_frees_the_next_claim(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request holds the key past its lease (its row expired), a retry claims the
    key anew: when the first then fails, it frees nothing of the retry's claim."""
    group_id = api.group()
    images = api.upload_ids(group_id, 1)
    submit = submissions.submit
    entered = [threading.Event(), threading.Event()]
    leave = [threading.Event(), threading.Event()]
    calls = iter(range(2))

    def held(*args: Any) -> Any:
        call = next(calls)
        entered[call].set()
        assert leave[call].wait(30)
        if call == 0:
            raise Unavailable("the first request fails late")
        return submit(*args)

    monkeypatch.setattr(submissions, "submit", held)
    body = _automatic(group_id, images)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_submit, api, "k", body)
        assert entered[0].wait(30)
        with api.session() as session:  # its lease ends
            session.exec(update(IdempotentRequest).values(expires_at=utcnow()))
            session.commit()
        second = pool.submit(_submit, api, "k", body)
        assert entered[1].wait(30)
        leave[0].set()
        assert first.result(timeout=30).status_code == 503
        assert _submit(api, "k", body).status_code == 409  # the second's claim still holds
        leave[1].set()
        answered = second.result(timeout=30)
    assert answered.status_code == 201
    assert _submit(api, "k", body).json() == answered.json()
    api.drain()
    assert (_count(api, Job), len(api.run_bodies)) == (1, 1)


def test_a_key_on_a_path_longer_than_a_scope_holds_is_ignored(api: Api) -> None:
    """No route has such a path (ids are 30 characters); MariaDB refused the stored scope."""
    for length in (60, 80, 300):
        path = "/api/characters/" + "é" * length + "/packs"
        answer = api.client.post(path, json={}, headers={"Idempotency-Key": "long-path"})
        assert answer.status_code == 404, answer.text[:300]
