"""A job's images a page at a time: GET /api/jobs/{id}?image_limit= and
GET /api/jobs/{id}/images (control_plane/services/jobs.py page_of_images), and URLs built
with one route lookup per answer (control_plane/web/present.py route_url)."""

from typing import Any

import pytest
from fastapi import FastAPI
from sqlmodel import col, select, update
from starlette.requests import Request

from control_plane.models import Output, OutputStatus
from control_plane.web.present import route_url
from tests.fakes.api import Api, finish_job

IMAGES = 40  # 5 uploads x 8 images each


def make_job(api: Api) -> str:
    group_id = api.group()
    images = api.upload_ids(group_id, 5)
    answer = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "automatic",
            "prompt": "p",
            "images": images,
            "config": {"outputs_per_image": 8},
        },
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["jobs"][0]["id"])


def all_pages(api: Api, job_id: str, between: Any = None, **params: Any) -> list[list[dict]]:
    pages: list[list[dict]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        answer = api.client.get(f"/api/jobs/{job_id}/images", params=query)
        assert answer.status_code == 200, answer.text
        pages.append(answer.json()["images"])
        cursor = answer.json()["next"]
        if cursor is None:
            return pages
        if between is not None:
            between(len(pages))


def set_status(api: Api, job_id: str, positions: range, status: OutputStatus) -> None:
    with api.session() as session:
        session.exec(  # type: ignore[call-overload]
            update(Output)
            .where(col(Output.job_id) == job_id, col(Output.position).in_(list(positions)))
            .values(status=status)
        )
        session.commit()


def test_pages_hold_every_image_once_in_order_while_statuses_change(api: Api) -> None:
    job_id = make_job(api)

    def finish_some(pages_read: int) -> None:  # images before and after the cursor change
        set_status(api, job_id, range(pages_read * 7 - 3, pages_read * 7 + 3), OutputStatus.FAILED)

    pages = all_pages(api, job_id, finish_some, limit=7)
    assert [len(page) for page in pages] == [7, 7, 7, 7, 7, 5]
    positions = [image["position"] for page in pages for image in page]
    assert positions == list(range(IMAGES))
    assert len({image["id"] for page in pages for image in page}) == IMAGES
    assert {"variations", "url", "thumbnail_url", "seed", "status"} <= set(pages[0][0])


def test_a_status_filter_pages_only_that_status_even_as_it_changes(api: Api) -> None:
    job_id = make_job(api)
    set_status(api, job_id, range(0, IMAGES, 3), OutputStatus.FAILED)  # 0, 3, ..., 39: 14

    def fail_more(pages_read: int) -> None:  # later failures show up, earlier ones never twice
        set_status(api, job_id, range(1, IMAGES, 3), OutputStatus.FAILED)

    pages = all_pages(api, job_id, fail_more, limit=4, status="failed")
    positions = [image["position"] for page in pages for image in page]
    later = [position for position in range(10, IMAGES) if position % 3 != 2]
    assert positions == [0, 3, 6, 9, *later]  # the first page was read before `fail_more`
    assert {image["status"] for page in pages for image in page} == {"failed"}


def test_the_job_answer_carries_at_most_image_limit_images_and_a_cursor(api: Api) -> None:
    job_id = make_job(api)
    whole = api.client.get(f"/api/jobs/{job_id}").json()  # default 500: all 40
    assert len(whole["images"]) == IMAGES and whole["images_next"] is None
    assert whole["progress"]["total"] == IMAGES and whole["progress"]["pending"] == IMAGES
    first = api.client.get(f"/api/jobs/{job_id}", params={"image_limit": 15}).json()
    assert [image["position"] for image in first["images"]] == list(range(15))
    assert first["progress"] == whole["progress"]
    rest = api.client.get(
        f"/api/jobs/{job_id}/images", params={"cursor": first["images_next"], "limit": 1000}
    ).json()
    assert [image["position"] for image in rest["images"]] == list(range(15, IMAGES))
    assert rest["next"] is None
    none = api.client.get(f"/api/jobs/{job_id}", params={"image_limit": 0}).json()
    assert none["images"] == [] and none["images_next"] is None
    exact = api.client.get(f"/api/jobs/{job_id}", params={"image_limit": IMAGES}).json()
    assert len(exact["images"]) == IMAGES and exact["images_next"] is None


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("", {"image_limit": 1001}, "image_limit"),
        ("", {"image_limit": -1}, "image_limit"),
        ("/images", {"limit": 1001}, "limit"),
        ("/images", {"limit": 0}, "limit"),
        ("/images", {"status": "done"}, "status"),
        ("/images", {"cursor": "bogus!"}, "is not one this API gave out"),
        ("/images", {"cursor": "cG9zOi0x"}, "is not one this API gave out"),  # "pos:-1"
        ("/images", {"cursor": "x" * 101}, "cursor"),
    ],
)
def test_bad_paging_parameters_are_refused(
    api: Api, path: str, params: dict[str, Any], message: str
) -> None:
    job_id = make_job(api)
    answer = api.client.get(f"/api/jobs/{job_id}{path}", params=params)
    assert answer.status_code == 422, answer.text
    assert message in answer.text


def test_the_images_of_a_missing_job_are_404(api: Api) -> None:
    assert api.client.get("/api/jobs/job_missing/images").status_code == 404


def test_file_urls_are_the_route_urls(api: Api) -> None:
    job_id = make_job(api)
    finish_job(api, job_id, ["succeeded", "failed"] * (IMAGES // 2))
    images = api.client.get(f"/api/jobs/{job_id}/images", params={"limit": 6}).json()["images"]
    app: FastAPI = api.client.app  # type: ignore[assignment]
    for image in images:
        if image["status"] != "succeeded":
            assert image["url"] is None and image["thumbnail_url"] is None
            continue
        file_path = app.url_path_for("output_file", output_id=image["id"])
        assert image["url"] == f"http://testserver{file_path}"
        assert image["thumbnail_url"] is None  # the fake results have none: see the next test


def test_route_url_equals_url_for_behind_a_prefix(api: Api) -> None:
    app: FastAPI = api.client.app  # type: ignore[assignment]
    scope = {
        "type": "http",
        "app": app,
        "router": app.router,
        "scheme": "https",
        "server": ("example.org", 8443),
        "root_path": "/pixelfleet",
        "path": "/pixelfleet/api/jobs/x",
        "headers": [(b"host", b"example.org:8443")],
        "query_string": b"",
    }
    request = Request(scope)
    for output_id in ("out_a1", "out_b2"):
        for route in ("output_file", "output_thumbnail"):
            expected = str(request.url_for(route, output_id=output_id))
            assert route_url(request, route, output_id=output_id) == expected
    assert route_url(request, "upload_file", upload_id="upl_c3") == str(
        request.url_for("upload_file", upload_id="upl_c3")
    )


def test_variations_are_shown_on_every_page(api: Api) -> None:
    job_id = make_job(api)
    finish_job(api, job_id, ["succeeded"] * IMAGES)
    with api.session() as session:
        late = session.exec(
            select(Output).where(Output.job_id == job_id, Output.position == 33)
        ).one()
    varied = api.client.post(f"/api/outputs/{late.id}/variations", json={"count": 2})
    assert varied.status_code == 201, varied.text
    variation_id = varied.json()["jobs"][0]["id"]
    pages = all_pages(api, job_id, limit=10)
    shown = {image["position"]: image["variations"] for page in pages for image in page}
    assert shown[33] == [variation_id]
    assert all(not variations for position, variations in shown.items() if position != 33)


def test_an_image_reads_the_same_on_a_page_in_the_gallery_and_on_its_own(api: Api) -> None:
    """Pages and galleries read rows of the shown columns, an image on its own reads its ORM
    object (control_plane/web/present.py `_output_fields`): the answers must agree."""
    job_id = make_job(api)
    finish_job(api, job_id, ["succeeded", "failed", "blocked", "succeeded"] * (IMAGES // 4))
    paged = [image for page in all_pages(api, job_id, limit=7) for image in page]
    group_id = api.client.get(f"/api/jobs/{job_id}").json()["group_id"]
    gallery = api.client.get(f"/api/groups/{group_id}/gallery", params={"limit": 100}).json()
    in_gallery = {image["id"]: image for image in gallery["images"]}
    assert len(paged) == len(in_gallery) == IMAGES
    for image in paged:
        alone = api.client.get(f"/api/outputs/{image['id']}").json()
        assert alone.pop("job_id") == job_id and alone.pop("group_id") == group_id
        assert image == alone
        assert in_gallery[image["id"]] == {**alone, "job_id": job_id, "group_id": group_id}
    assert {image["status"] for image in paged} == {"succeeded", "failed", "blocked"}
    assert all(image["url"] for image in paged if image["status"] == "succeeded")
