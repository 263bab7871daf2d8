"""The JSON API's own rules (control_plane/web/api/, web/deps.py): paging parameters."""

from tests.fakes.api import Api


def test_pages_beyond_any_database_are_refused(api: Api) -> None:
    for path in ("/api/groups", "/api/jobs"):
        huge = api.client.get(path, params={"page": 2**62})
        assert huge.status_code == 422, huge.text
        assert "page" in huge.json()["detail"]
