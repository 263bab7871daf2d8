"""Groups (control_plane/services/groups.py) through the HTTP API: create, list, get, errors."""

from tests.fakes.api import Api


def test_groups_create_list_get(api: Api) -> None:
    first, second = api.group("first"), api.group("second")
    listing = api.client.get("/api/groups", params={"page": 1, "limit": 1}).json()
    assert listing["total"] == 2 and listing["limit"] == 1 and listing["page"] == 1
    assert [g["id"] for g in listing["data"]] == [second]  # newest first
    detail = api.client.get(f"/api/groups/{first}").json()
    assert detail["name"] == "first" and detail["counts"]["uploads"] == 0


def test_group_errors_are_clear(api: Api) -> None:
    missing = api.client.get("/api/groups/grp_nope")
    assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]
    blank = api.client.post("/api/groups", json={"name": "   "})
    assert blank.status_code == 422 and "name" in blank.json()["detail"]
