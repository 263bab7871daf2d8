"""Uploads (control_plane/services/uploads.py) through the HTTP API: what is accepted,
what is rejected and why, limits, and a group deleted while an upload (or a submission)
is being written."""

import io
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from PIL import Image
from sqlmodel import select

from control_plane.models import Upload
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
def _group_deleted_before(api: Api, table: str, group_id: str) -> Iterator[None]:
    """Another request deletes the group just before this one inserts into `table`."""
    engine, fired = api.platform.engine, []

    def delete_group_first(*args: object) -> None:
        if fired or not str(args[2]).startswith(f"INSERT INTO {table}"):
            return
        fired.append(table)
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
    assert fired, f"nothing was inserted into {table}"


def test_a_group_deleted_during_upload_or_submit_is_409_and_leaves_nothing(api: Api) -> None:
    group_id = api.group()
    with _group_deleted_before(api, "uploads", group_id):
        response = api.upload(group_id, [("a.png", png_bytes()), ("b.png", png_bytes(50))])
    assert response.status_code == 409, response.text
    assert "was deleted meanwhile" in response.json()["detail"]
    assert list(api.platform.storage.list()) == []

    group_id = api.group()
    images = api.upload_ids(group_id, 2)
    with _group_deleted_before(api, "jobs", group_id):
        submitted = api.client.post(
            "/api/jobs/submit",
            json={"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images},
        )
    assert submitted.status_code == 409, submitted.text
    assert api.client.get("/api/jobs").json()["total"] == 0
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
