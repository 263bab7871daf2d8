"""Upload attributes (reference pools pick by them): the form field `attributes` of
`POST /api/uploads`, and `PATCH /api/uploads/{id}` merging changes into them."""

import json

import httpx
import pytest

from tests.conftest import png_bytes
from tests.fakes.api import Api


def upload_with(
    api: Api, group_id: str, files: list[tuple[str, bytes]], attributes: str
) -> httpx.Response:
    return api.client.post(
        "/api/uploads",
        data={"group_id": group_id, "attributes": attributes},
        files=[("files", (name, data, "image/png")) for name, data in files],
    )


def test_attributes_go_to_every_new_file_and_not_to_duplicates(api: Api) -> None:
    group_id = api.group()
    first = upload_with(
        api,
        group_id,
        [("a.png", png_bytes(20, 20)), ("b.png", png_bytes(21, 20))],
        json.dumps({"gender": "female", "age": 28, "height": 1.7, "studio": True}),
    )
    assert first.status_code == 201, first.text
    images = first.json()["images"]
    assert [image["attributes"] for image in images] == [
        {"gender": "female", "age": 28, "height": 1.7, "studio": True}
    ] * 2

    again = upload_with(
        api,
        group_id,
        [("a.png", png_bytes(20, 20)), ("c.png", png_bytes(22, 20))],
        '{"gender": "male"}',
    )
    assert again.status_code == 201, again.text
    duplicate, new = again.json()["images"]
    assert duplicate["duplicate"] and duplicate["id"] == images[0]["id"]
    assert duplicate["attributes"]["gender"] == "female"  # a duplicate keeps its own
    assert new["attributes"] == {"gender": "male"}

    plain = api.upload(group_id, [("d.png", png_bytes(23, 20))]).json()["images"][0]
    assert plain["attributes"] is None
    blank = upload_with(api, group_id, [("e.png", png_bytes(24, 20))], "  ")
    assert blank.json()["images"][0]["attributes"] is None


@pytest.mark.parametrize(
    ("attributes", "says"),
    [
        ("{gender: female}", "form field attributes: Invalid JSON"),
        ('["female"]', "Input should be an object"),
        ('{"pose": {"arms": "up"}}', "'pose' is an object: each value must be a string"),
        ('{"tags": ["a"]}', "'tags' is a list"),
        ('{"gender": null}', "'gender' is null"),
        ('{"": "x"}', "attribute names are 1 to 64 characters; got ''"),
        (json.dumps({"k" * 65: "x"}), "attribute names are 1 to 64 characters"),
        (json.dumps({f"k{i}": i for i in range(33)}), "at most 32 attributes; got 33"),
        (json.dumps({"bio": "x" * 1_001}), "'bio' is longer than 1,000 characters"),
        ('{"ratio": NaN}', "'ratio' is not a finite number"),
        ('{"n": 1e400}', "'n' is not a finite number"),
    ],
)
def test_bad_attributes_are_refused_and_nothing_is_stored(
    api: Api, attributes: str, says: str
) -> None:
    group_id = api.group()
    response = upload_with(api, group_id, [("a.png", png_bytes(20, 20))], attributes)
    assert response.status_code == 422, response.text
    assert says in response.json()["detail"]
    assert api.client.get(f"/api/groups/{group_id}").json()["counts"]["uploads"] == 0
    assert list(api.platform.storage.list()) == []


def test_patch_merges_attributes_and_null_deletes(api: Api) -> None:
    group_id = api.group()
    [upload] = upload_with(
        api, group_id, [("a.png", png_bytes(20, 20))], '{"gender": "female", "age": 30}'
    ).json()["images"]
    path = f"/api/uploads/{upload['id']}"

    changed = api.client.patch(path, json={"attributes": {"age": 31, "hair": "red"}})
    assert changed.status_code == 200, changed.text
    assert changed.json()["attributes"] == {"gender": "female", "age": 31, "hair": "red"}
    assert changed.json()["id"] == upload["id"] and changed.json()["url"]

    dropped = api.client.patch(path, json={"attributes": {"hair": None, "unknown": None}})
    assert dropped.json()["attributes"] == {"gender": "female", "age": 31}
    cleared = api.client.patch(path, json={"attributes": None})
    assert cleared.json()["attributes"] is None
    emptied = api.client.patch(path, json={"attributes": {"gender": "male"}})
    assert emptied.json()["attributes"] == {"gender": "male"}
    assert (
        api.client.patch(path, json={"attributes": {"gender": None}}).json()["attributes"] is None
    )


def test_patch_refusals_change_nothing(api: Api) -> None:
    group_id = api.group()
    [upload] = upload_with(
        api, group_id, [("a.png", png_bytes(20, 20))], json.dumps({f"k{i}": i for i in range(30)})
    ).json()["images"]
    path = f"/api/uploads/{upload['id']}"
    too_many = api.client.patch(path, json={"attributes": {"x": 1, "y": 2, "z": 3}})
    assert too_many.status_code == 422
    assert "would have 33 attributes; the limit is 32" in too_many.json()["detail"]
    nested = api.client.patch(path, json={"attributes": {"x": [1]}})
    assert nested.status_code == 422 and "'x' is a list" in nested.json()["detail"]
    assert api.client.patch(path, json={}).status_code == 422  # `attributes` is required
    assert api.client.patch(path, json={"attributes": {}, "name": "x"}).status_code == 422
    unchanged = api.client.patch(path, json={"attributes": {}})
    assert unchanged.json()["attributes"] == upload["attributes"]

    missing = api.client.patch("/api/uploads/img_" + "0" * 26, json={"attributes": {}})
    assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]
    assert api.client.patch("/api/uploads/nope", json={"attributes": {}}).status_code == 404
