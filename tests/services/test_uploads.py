"""Uploads (control_plane/services/uploads.py) through the HTTP API: what is accepted,
what is rejected and why, limits, files the group already has (duplicates, also two
requests at once), and a group deleted while an upload (or a submission) is being
written."""

import io
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from PIL import Image
from sqlmodel import Session, select

from control_plane.models import Upload
from control_plane.services import uploads as uploads_service
from tests.conftest import jpeg_bytes, png_bytes
from tests.fakes.api import Api


def test_upload_accepts_images_and_rejects_bad_files(api: Api) -> None:
    group_id = api.group()
    webp = io.BytesIO()
    Image.new("RGB", (20, 10), "blue").save(webp, "WEBP")
    truncated = png_bytes(300, 300)[:200]
    response = api.upload(
        group_id,
        [
            ("a.png", png_bytes()),
            ("b.jpg", jpeg_bytes()),
            ("c.webp", webp.getvalue()),
            ("evil.png", b"#!/bin/sh\necho not an image\n"),
            ("empty.png", b""),
            ("cut.png", truncated),
            ("../../etc/passwd.png", png_bytes(10, 10)),
        ],
    )
    assert response.status_code == 201, response.text
    body = response.json()
    accepted = {image["filename"]: image for image in body["images"]}
    assert set(accepted) == {"a.png", "b.jpg", "c.webp", "passwd.png"}
    assert accepted["a.png"]["width"] == 64 and accepted["a.png"]["height"] == 48
    assert accepted["c.webp"]["content_type"] == "image/webp"
    reasons = {item["filename"]: item["reason"] for item in body["rejected"]}
    assert "not a PNG, JPEG or WebP" in reasons["evil.png"]
    assert "empty" in reasons["empty.png"]
    assert "truncated" in reasons["cut.png"] or "corrupt" in reasons["cut.png"]
    fetched = api.client.get(accepted["a.png"]["url"])
    assert fetched.status_code == 200 and fetched.content == png_bytes()
    thumb = api.client.get(accepted["a.png"]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.content[:4] == b"RIFF"
    with api.session() as session:
        keys = [u.storage_key for u in session.exec(select(Upload)).all()]
    assert all(key.startswith(f"groups/{group_id}/inputs/") for key in keys)
    stored = {info.key for info in api.platform.storage.list()}
    assert len(stored) == 8  # 4 images + 4 thumbnails: nothing from rejected files


def test_upload_accepts_camera_jpegs_with_extra_frames(api: Api) -> None:
    """Phones and cameras write MPO: a JPEG followed by more frames. It is a JPEG to everyone."""
    mpo = io.BytesIO()
    first, second = Image.new("RGB", (40, 30), "red"), Image.new("RGB", (40, 30), "green")
    first.save(mpo, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(mpo.getvalue())).format == "MPO"
    response = api.upload(api.group(), [("camera.jpg", mpo.getvalue())])
    assert response.status_code == 201, response.text
    image = response.json()["images"][0]
    assert image["content_type"] == "image/jpeg" and (image["width"], image["height"]) == (40, 30)
    assert image["url"].endswith("/file")
    served = api.client.get(image["url"])
    assert served.headers["content-type"] == "image/jpeg" and served.content == mpo.getvalue()


@contextmanager
def _group_deleted_before(api: Api, statement: str, group_id: str) -> Iterator[None]:
    """Another request deletes the group just before this one runs `statement` (its start,
    table names unquoted)."""
    engine, fired = api.platform.engine, []

    def delete_group_first(*args: object) -> None:
        if fired or not str(args[2]).replace("`", "").startswith(statement):
            return
        fired.append(statement)
        other = sa.create_engine(api.platform.settings.database_url)
        with other.begin() as connection:
            for sql in (
                "DELETE FROM uploads WHERE group_id = :id",
                "DELETE FROM `groups` WHERE id = :id",
            ):
                connection.execute(sa.text(sql), {"id": group_id})
        other.dispose()

    sa.event.listen(engine, "before_cursor_execute", delete_group_first)
    try:
        yield
    finally:
        sa.event.remove(engine, "before_cursor_execute", delete_group_first)
    assert fired, f"no {statement} ran"


def test_a_group_deleted_during_upload_or_submit_is_409_and_leaves_nothing(api: Api) -> None:
    group_id = api.group()
    with _group_deleted_before(api, "UPDATE groups", group_id):  # uploads lock the group
        response = api.upload(group_id, [("a.png", png_bytes()), ("b.png", png_bytes(50))])
    assert response.status_code == 409, response.text
    assert "was deleted meanwhile" in response.json()["detail"]
    assert list(api.platform.storage.list()) == []

    group_id = api.group()
    images = api.upload_ids(group_id, 2)
    with _group_deleted_before(api, "INSERT INTO jobs", group_id):
        submitted = api.client.post(
            "/api/jobs/submit",
            json={"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images},
        )
    assert submitted.status_code == 409, submitted.text
    assert api.client.get("/api/jobs").json()["data"] == []
    assert api.run_bodies == []


def test_upload_applies_exif_orientation(api: Api) -> None:
    group_id = api.group()
    image = Image.new("RGB", (40, 20), "red")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    response = api.upload(group_id, [("phone.jpg", buffer.getvalue())])
    uploaded = response.json()["images"][0]
    assert (uploaded["width"], uploaded["height"]) == (20, 40)
    stored = Image.open(io.BytesIO(api.client.get(uploaded["url"]).content))
    assert stored.size == (20, 40)


def test_upload_limits_and_missing_group(api: Api) -> None:
    group_id = api.group()
    api.platform.settings.upload_max_file_bytes = 1000
    api.platform.settings.upload_max_pixels = 10_000
    too_big = api.upload(group_id, [("big.png", png_bytes(400, 400, (1, 2, 3)) + b"\0" * 2000)])
    assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]
    api.platform.settings.upload_max_file_bytes = 20_000_000
    bomb = api.upload(group_id, [("bomb.png", png_bytes(200, 200))])
    assert bomb.status_code == 422 and "pixels" in bomb.json()["detail"]
    unknown = api.upload("grp_missing", [("a.png", png_bytes())])
    assert unknown.status_code == 404
    no_files = api.client.post("/api/uploads", data={"group_id": group_id})
    assert no_files.status_code == 422
    garbage = api.client.post(
        "/api/uploads",
        content=b"--xyz\r\nnot a part header\r\n",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert garbage.status_code == 422, garbage.text
    assert "could not read the multipart body" in garbage.json()["detail"]
    api.platform.settings.upload_max_files = 2
    too_many = api.upload(group_id, [(f"{i}.png", png_bytes()) for i in range(3)])
    assert too_many.status_code == 422 and "Too many files" in too_many.json()["detail"]
    assert list(api.platform.storage.list()) == []


def test_a_groups_uploads_are_listed_page_by_page(api: Api) -> None:
    group_id, other = api.group(), api.group("other")
    stored = api.upload_ids(group_id, 3)
    api.upload_ids(other, 1)
    first = api.client.get(f"/api/groups/{group_id}/uploads", params={"limit": 2}).json()
    second = api.client.get(f"/api/groups/{group_id}/uploads", params={"page": 2, "limit": 2})
    listed = first["data"] + second.json()["data"]
    assert first["total"] == 3 and sorted(upload["id"] for upload in listed) == sorted(stored)
    assert all(len(upload["sha256"]) == 64 and upload["url"] for upload in listed)
    assert api.client.get("/api/groups/grp_missing/uploads").status_code == 404


def _rotated_jpeg() -> bytes:
    image = Image.new("RGB", (40, 20), "red")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: stored re-encoded upright
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def _stored_keys(api: Api) -> set[str]:
    return {info.key for info in api.platform.storage.list()}


def test_a_file_the_group_already_has_is_answered_with_its_upload_not_stored_again(
    api: Api,
) -> None:
    group_id = api.group()
    first = api.upload(group_id, [("a.png", png_bytes()), ("phone.jpg", _rotated_jpeg())])
    assert first.status_code == 201, first.text
    a, phone = first.json()["images"]
    assert not a["duplicate"] and not phone["duplicate"]
    keys = _stored_keys(api)

    again = api.upload(
        group_id,
        [
            ("copy of a.png", png_bytes()),
            ("new.png", png_bytes(50)),
            ("phone again.jpg", _rotated_jpeg()),
            ("new twice.png", png_bytes(50)),
            ("bad.png", b"not an image"),
        ],
    )
    assert again.status_code == 201, again.text
    images = again.json()["images"]
    assert [image["duplicate"] for image in images] == [True, False, True, True]
    assert images[0] == {**a, "duplicate": True}  # the upload as first recorded, its name too
    assert images[2]["id"] == phone["id"]
    assert images[3]["id"] == images[1]["id"]  # the second of two identical files in a request
    assert [r["filename"] for r in again.json()["rejected"]] == ["bad.png"]
    new_keys = _stored_keys(api) - keys
    assert len(new_keys) == 2 and all(images[1]["id"] in key for key in new_keys)
    with api.session() as session:
        assert len(session.exec(select(Upload)).all()) == 3

    other_group = api.group("another")
    elsewhere = api.upload(other_group, [("a.png", png_bytes())]).json()["images"][0]
    assert not elsewhere["duplicate"] and elsewhere["id"] != a["id"]

    only_known = api.upload(group_id, [("a.png", png_bytes())])
    assert only_known.status_code == 201 and only_known.json()["images"][0]["duplicate"]


def test_concurrent_uploads_of_one_new_file_record_it_once(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both requests store the file before either records it: under the group's lock the
    second finds the first's row, answers with it and deletes its own copy."""
    group_id = api.group()
    both_stored = threading.Barrier(2, timeout=30)
    lock_group = uploads_service._lock_group

    def after_both_stored(session: Session, group_id: str) -> None:
        both_stored.wait()
        lock_group(session, group_id)

    monkeypatch.setattr(uploads_service, "_lock_group", after_both_stored)
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda name: api.upload(group_id, [(name, png_bytes())]), "ab"))
    assert [answer.status_code for answer in answers] == [201, 201], [a.text for a in answers]
    images = [answer.json()["images"][0] for answer in answers]
    assert images[0]["id"] == images[1]["id"]
    assert sorted(image["duplicate"] for image in images) == [False, True]
    with api.session() as session:
        rows = session.exec(select(Upload)).all()
    assert [row.id for row in rows] == [images[0]["id"]]
    assert _stored_keys(api) == {rows[0].storage_key, rows[0].thumbnail_key}
