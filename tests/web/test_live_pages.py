"""The live pages' fragments (control_plane/web/ui/live.py), as live.js polls them: the job
page's regions and the tiles of one page of images, the group page's counts and jobs, the
index's groups, and the jobs dashboard with its filters and keyset pages; each says in its
X-Pixelfleet-Running header whether anything shown still runs (the script stops when not).
RunPod is mocked; the tests run on SQLite and MariaDB."""

import html
import re
from datetime import timedelta
from typing import Any

import httpx
from sqlmodel import col, update

from control_plane.models import Job, OutputStatus
from control_plane.web.ui import live
from tests.fakes.api import Api, finish_job, hook
from tests.runpod.test_batch_lane import batch_output, submit_batch, the_batch
from tests.web.test_job_pages import set_status
from tests.web.test_ui import Page

RUNNING = "X-Pixelfleet-Running"


def _submit(api: Api, group_id: str, images: list[str], **config: Any) -> str:
    body = {"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images}
    answer = api.client.post("/api/jobs/submit", json={**body, "config": config})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["jobs"][0]["id"])


def _fragment(api: Api, path: str, **params: Any) -> tuple[httpx.Response, Page]:
    answer = api.client.get(path, params=params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    return answer, Page(answer.text)


def _badges(html: str) -> list[str]:
    """The status words of the image tiles, in position order."""
    tiles = re.findall(r'<figure class="tile".*?</figure>', html, re.S)
    return [re.search(r'class="badge[^"]*">([^<]+)<', tile).group(1) for tile in tiles]  # type: ignore[union-attr]


def test_each_image_is_queued_then_running_then_ends_and_polling_stops(api: Api) -> None:
    group_id = api.group()
    job_id = _submit(api, group_id, api.upload_ids(group_id, 3))
    path = f"/live/jobs/{job_id}"

    api.drain()  # RunPod accepted the dispatch: its images run
    answer, _ = _fragment(api, path)
    assert answer.headers[RUNNING] == "1"
    assert _badges(answer.text) == ["running"] * 3
    assert '<span id="job-status" data-part class="badge status-processing">running</span>' in (
        answer.text
    )
    assert 'aria-valuenow="0"' in answer.text and 'role="progressbar"' in answer.text
    assert "<html" not in answer.text and "0 of 3 images done" in answer.text

    set_status(api, job_id, range(3), OutputStatus.PENDING)  # as before its dispatch was sent
    answer, _ = _fragment(api, path)
    assert _badges(answer.text) == ["queued"] * 3  # waiting for RunPod: not "running"
    set_status(api, job_id, range(3), OutputStatus.RUNNING)

    finish_job(api, job_id, ["succeeded", "failed", "blocked"])
    answer, page = _fragment(api, path)
    assert answer.headers[RUNNING] == "0"
    assert _badges(answer.text) == ["succeeded", "failed", "blocked"]
    assert len(page.images) == 1  # the succeeded image's picture, in its tile
    assert 'aria-valuenow="3"' in answer.text and "data-announce-final" in answer.text
    assert f"/jobs/{job_id}/retry" in page.forms and f"/jobs/{job_id}/cancel" not in page.forms

    full = api.client.get(f"/jobs/{job_id}").text  # the page renders the same regions
    assert _badges(full) == ["succeeded", "failed", "blocked"] and "http-equiv" not in full


def test_after_the_first_answer_only_changed_images_are_sent_again(
    api: Api, monkeypatch: Any
) -> None:
    monkeypatch.setattr(live, "RECENT", timedelta(0))
    group_id = api.group()
    job_id = _submit(api, group_id, api.upload_ids(group_id, 3))
    api.drain()  # its images run
    page = api.client.get(f"/jobs/{job_id}").text
    [version] = re.findall(r'data-live-version="(\d+)"', page)
    assert 'id="job-images" data-parts' in page  # the full list: tiles not in it go

    unchanged, _ = _fragment(api, f"/live/jobs/{job_id}", since=version)
    assert _badges(unchanged.text) == [] and 'id="job-progress"' in unchanged.text
    assert 'id="job-images" data-parts' not in unchanged.text  # some tiles: the rest stay
    later = unchanged.headers["x-pixelfleet-version"]
    assert int(later) >= int(version)

    finish_job(api, job_id, ["succeeded", "succeeded", "failed"])
    ended, _ = _fragment(api, f"/live/jobs/{job_id}", since=later)
    assert _badges(ended.text) == ["succeeded", "succeeded", "failed"]
    again, _ = _fragment(api, f"/live/jobs/{job_id}", since=ended.headers["x-pixelfleet-version"])
    assert _badges(again.text) == []
    first = api.outputs(job_id)[0]
    assert api.client.post(f"/api/outputs/{first.id}/variations", json={}).status_code == 201
    varied, _ = _fragment(api, f"/live/jobs/{job_id}", since=again.headers["x-pixelfleet-version"])
    assert _badges(varied.text) == ["succeeded"]  # its tile, with the link to the new set
    assert f'id="tile-{first.id}"' in varied.text and "variations 1" in varied.text
    bad = api.client.get(f"/live/jobs/{job_id}", params={"since": "yesterday"})
    assert bad.status_code == 422


def test_a_big_jobs_fragment_holds_only_its_page_of_images(api: Api, monkeypatch: Any) -> None:
    monkeypatch.setattr(live, "IMAGES_ON_JOB_PAGE", 4)
    group_id = api.group()
    job_id = _submit(api, group_id, api.upload_ids(group_id, 1), outputs_per_image=8)
    first = api.client.get(f"/jobs/{job_id}").text
    [next_link] = set(re.findall(r'href="(/jobs/[^"]+\?cursor=[^"]+)"', first))
    cursor = next_link.split("cursor=")[1]
    assert f'data-live-src="/live/jobs/{job_id}?cursor={cursor}"' in api.client.get(next_link).text

    answer, page = _fragment(api, f"/live/jobs/{job_id}", cursor=cursor)
    positions = [int(n) for n in re.findall(r"#(\d+) · seed", page.all_text)]
    assert positions == [4, 5, 6, 7]  # the visible page's tiles only, with the job's counts
    assert 'aria-valuemax="8"' in answer.text
    assert api.client.get(f"/live/jobs/{job_id}", params={"cursor": "x"}).status_code == 422


def test_the_batch_lane_in_words_with_googles_counts_and_the_fallbacks(api: Api) -> None:
    job = submit_batch(api, 3)
    api.drain()
    dispatch = the_batch(api, job["id"])
    pending = batch_output(dispatch, "batch_submit", "pending", requests=3, pending=3)
    assert hook(api, dispatch, pending).status_code == 200
    with api.session() as session:
        reasons = {"the batch could not be polled": 2, "the batch failed": 1}
        session.exec(update(Job).where(col(Job.id) == job["id"]).values(fallback=reasons))  # type: ignore[call-overload]
        session.commit()

    _, page = _fragment(api, f"/live/jobs/{job['id']}")
    assert "batch lane 1 Gemini batch pending at Google" in page.all_text
    assert "Google: 0 succeeded, 0 failed, 3 pending of 3" in page.all_text
    assert "deadline" in page.all_text
    assert (
        "Sent to the online lane: 2 images because the batch could not be polled; "
        "1 image because the batch failed"
    ) in page.all_text
    _, dashboard = _fragment(api, "/live/jobs")
    assert "pending at Google" in dashboard.all_text


def test_the_group_and_index_fragments_follow_their_jobs(api: Api) -> None:
    group_id = api.group("followed")
    job_id = _submit(api, group_id, api.upload_ids(group_id, 2))

    answer, page = _fragment(api, f"/live/groups/{group_id}")
    assert answer.headers[RUNNING] == "1"
    assert "2 uploads · 1 jobs · 0 generated, 2 pending" in page.all_text
    assert f"/jobs/{job_id}" in page.links and 'id="group-counts"' in answer.text
    answer, page = _fragment(api, "/live/groups")
    assert answer.headers[RUNNING] == "1" and f'id="group-row-{group_id}"' in answer.text

    finish_job(api, job_id, ["succeeded", "succeeded"])
    answer, page = _fragment(api, f"/live/groups/{group_id}")
    assert answer.headers[RUNNING] == "0" and "2 generated" in page.all_text
    assert f"/api/download/{group_id}/zip" in page.links
    answer, page = _fragment(api, "/live/groups")
    assert answer.headers[RUNNING] == "0" and "2 ok" in page.all_text

    assert api.client.get(f"/live/groups/grp_{'0' * 26}").status_code == 404


def test_the_dashboard_filters_and_pages_by_keyset(api: Api) -> None:
    group_id, other_id = api.group("mine"), api.group("other")
    images = api.upload_ids(group_id, 5)
    mine = [_submit(api, group_id, [image]) for image in images]  # oldest first
    other = _submit(api, other_id, api.upload_ids(other_id, 1))
    finish_job(api, mine[0], ["failed"])

    def shown(path: str) -> tuple[list[str], Page]:
        answer = api.client.get(path)
        assert answer.status_code == 200, answer.text
        links.clear()
        for href, text in re.findall(r'<a href="([^"]+)">([^<]+)</a>', answer.text):
            links[text] = html.unescape(href)
        return re.findall(r'id="dashboard-job-(job_\w+)"', answer.text), Page(answer.text)

    links: dict[str, str] = {}

    everything, _ = shown("/jobs")
    assert everything == [other, *reversed(mine)]
    assert "/jobs" in Page(api.client.get("/").text).links  # the header links to it

    path: str | None = f"/jobs?group_id={group_id}&limit=2"
    pages: list[list[str]] = []
    while path:
        ids, _ = shown(path)
        pages.append(ids)
        newer = links.get("← newer jobs")
        assert (newer is None) == (len(pages) == 1)
        path = links.get("older jobs →")
    assert pages == [[mine[4], mine[3]], [mine[2], mine[1]], [mine[0]]]
    assert newer is not None
    ids, _ = shown(newer)  # back from the last page: the one before it
    assert ids == [mine[2], mine[1]]

    assert shown(f"/jobs?status=failed&group_id={group_id}&mode=")[0] == [mine[0]]
    assert shown("/jobs?mode=catalog")[0] == []
    assert "No jobs match these filters" in shown("/jobs?mode=catalog")[1].all_text
    answer, _ = _fragment(api, "/live/jobs", status="failed", group_id="")
    assert answer.headers[RUNNING] == "0" and mine[0] in answer.text and other not in answer.text

    bad_status = api.client.get("/jobs", params={"status": "finished"})
    assert bad_status.status_code == 422 and "queued" in Page(bad_status.text).all_text
    bad_cursor = api.client.get("/jobs", params={"cursor": "nonsense"})
    assert bad_cursor.status_code == 422
    assert "this page of jobs does not exist" in Page(bad_cursor.text).all_text
    unknown = api.client.get("/jobs", params={"group_id": f"grp_{'0' * 26}"})
    assert unknown.status_code == 404


def test_the_uploads_fragment_shows_the_counts_and_a_page_of_uploads(api: Api) -> None:
    group_id = api.group()
    empty, _ = _fragment(api, f"/live/groups/{group_id}/uploads")
    assert "No uploads yet." in empty.text and '<span id="uploads-total">0</span>' in empty.text
    uploaded = api.upload_ids(group_id, 3)
    answer, page = _fragment(api, f"/live/groups/{group_id}/uploads", page=1)
    assert answer.headers[RUNNING] == "0" and "<html" not in answer.text
    assert '<span id="uploads-total">3</span>' in answer.text
    assert re.search(r'id="group-counts" data-part class="muted">3 uploads', answer.text)
    tick = r'<input type="checkbox" name="images" value="(\w+)" data-tick >'
    ticks = re.findall(tick, answer.text)
    assert sorted(ticks) == sorted(uploaded)  # none ticked: the script keeps what was
    assert len(page.images) == 3
    assert "aria-invalid" not in answer.text
    assert api.client.get(f"/live/groups/{group_id}/uploads", params={"page": 0}).status_code == 422
