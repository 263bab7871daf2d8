"""Jobs (control_plane/services/jobs.py) through the HTTP API: cancel, retry, listing (by
cursor: every job once, newest first, stable under inserts; by page number)."""

from itertools import cycle
from typing import Any

import httpx
from sqlmodel import col, select

from control_plane.models import Job, JobMode, JobStatus
from tests.fakes.api import RUNPOD, Api, completed_body, hook, submit_one_dispatch


def test_cancel_and_retry(api: Api) -> None:
    cancel_route = api.runpod.post(url__regex=rf"{RUNPOD}/cancel/.*").mock(
        return_value=httpx.Response(200, json={})
    )
    job_id, dispatch = submit_one_dispatch(api)
    cancelled = api.client.post(f"/api/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    api.drain()
    assert cancel_route.call_count == 1
    assert api.client.post(f"/api/jobs/{job_id}/cancel").status_code == 409
    late = hook(api, dispatch, completed_body(api, dispatch))  # a late webhook changes nothing
    assert late.status_code == 200
    assert api.client.get(f"/api/jobs/{job_id}").json()["progress"]["failed"] == 3
    retried = api.client.post(f"/api/jobs/{job_id}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "processing"
    api.drain()
    assert len(api.run_bodies) == 2


def test_jobs_listing_filters_and_pages(api: Api) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 2)
    for prompt in ("a", "b", "c"):
        api.client.post(
            "/api/jobs/submit",
            json={"group_id": group_id, "mode": "automatic", "prompt": prompt, "images": images},
        )
    page = api.client.get("/api/jobs", params={"limit": 2, "page": 2}).json()
    assert page["total"] == 3 and [j["prompt"] for j in page["data"]] == ["a"]
    assert page["page"] == 2 and page["next"] is None
    completed = api.client.get("/api/jobs", params={"status": "completed", "with_total": True})
    assert completed.json()["total"] == 0
    assert api.client.get("/api/jobs", params={"status": "bogus"}).status_code == 422
    assert api.client.get("/api/jobs/job_missing").status_code == 404


def _add_jobs(api: Api, group_ids: list[str], n: int) -> None:
    """`n` job rows straight into the table, spread over groups, statuses and modes."""
    kinds = cycle(
        zip(
            cycle(group_ids),
            cycle([JobStatus.QUEUED, JobStatus.COMPLETED, JobStatus.FAILED]),
            cycle([JobMode.AUTOMATIC, JobMode.AUTOMATIC, JobMode.SEMI_AUTOMATIC, JobMode.IMPORT]),
            strict=False,
        )
    )
    with api.session() as session:
        for _, (group_id, status, mode) in zip(range(n), kinds, strict=False):
            session.add(Job(group_id=group_id, batch_id="b", mode=mode, status=status, prompt="p"))
        session.commit()


def _expected(api: Api, filters: dict[str, str]) -> list[str]:
    with api.session() as session:
        clauses = [getattr(Job, name) == value for name, value in filters.items()]
        return list(session.exec(select(Job.id).where(*clauses).order_by(col(Job.id).desc())))


def _walk(api: Api, params: dict[str, Any], between: Any = None) -> list[str]:
    """Every page by cursor, `between` run after the first page."""
    seen: list[str] = []
    cursor = None
    while True:
        query = {**params, "limit": 4} | ({"cursor": cursor} if cursor else {})
        answer = api.client.get("/api/jobs", params=query)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert page["total"] is None and page["page"] is None and len(page["data"]) <= 4
        seen += [job["id"] for job in page["data"]]
        cursor = page["next"]
        if cursor is None:
            return seen
        assert cursor == seen[-1]
        if between is not None and len(seen) == 4:
            between()


def test_cursor_pages_return_every_job_once_newest_first_with_filters(api: Api) -> None:
    groups = [api.group("a"), api.group("b")]
    _add_jobs(api, groups, 26)
    for filters in (
        {},
        {"status": "completed"},
        {"group_id": groups[1]},
        {"mode": "import"},
        {"group_id": groups[0], "status": "queued"},
    ):
        assert _walk(api, filters) == _expected(api, filters), filters
    counted = api.client.get("/api/jobs", params={"status": "failed", "with_total": True}).json()
    assert counted["total"] == len(_expected(api, {"status": "failed"}))
    assert api.client.get("/api/jobs", params={"group_id": "grp_none"}).json()["data"] == []


def test_cursor_pages_stay_stable_when_jobs_arrive_between_them(api: Api) -> None:
    groups = [api.group()]
    _add_jobs(api, groups, 10)
    before = _expected(api, {})
    assert _walk(api, {}, between=lambda: _add_jobs(api, groups, 3)) == before
    newest = api.client.get("/api/jobs", params={"limit": 3}).json()["data"]
    assert [job["id"] for job in newest] == _expected(api, {})[:3] != before[:3]


def test_page_numbers_still_work_with_their_total_and_a_cursor_onwards(api: Api) -> None:
    _add_jobs(api, [api.group()], 10)
    expected = _expected(api, {})
    page = api.client.get("/api/jobs", params={"page": 2, "limit": 4}).json()
    assert [job["id"] for job in page["data"]] == expected[4:8]
    assert page["total"] == 10 and page["page"] == 2 and page["next"] == expected[7]
    onwards = api.client.get("/api/jobs", params={"cursor": page["next"], "limit": 4}).json()
    assert [job["id"] for job in onwards["data"]] == expected[8:] and onwards["next"] is None


def test_a_bad_cursor_is_a_clear_422(api: Api) -> None:
    for params, message in (
        ({"cursor": "bogus"}, "cursor 'bogus' is not one this list gave"),
        ({"cursor": "job_" + "A" * 26}, "is not one this list gave"),
        ({"cursor": "job_01jabcdefghjkmnpqrstvwxyz0", "page": 2}, "give either cursor or page"),
    ):
        answer = api.client.get("/api/jobs", params=params)
        assert answer.status_code == 422 and message in answer.json()["detail"], answer.text
