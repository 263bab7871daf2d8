"""A group's gallery (GET /api/groups/{id}/gallery and the page /groups/{id}/gallery), one
image's page (/outputs/{id}, what the lightbox shows) and a submission's sets (/batches/{id}):
keyset pages over every job, the filters, the index the query walks, and the pages' content,
on SQLite and MariaDB (control_plane/services/gallery.py, control_plane/web/ui/gallery.py)."""

import re
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from sqlmodel import col, select

from control_plane.models import Group, Job, Output, OutputStatus, UserTier
from control_plane.services import users
from control_plane.services.gallery import GalleryFilters, gallery_cursor, gallery_query
from tests.conftest import png_bytes
from tests.fakes.api import Api, finish_job

GALLERY_INDEX = "ix_outputs_group_id_job_id_position"


@dataclass(frozen=True)
class Made:
    group_id: str
    uploads: list[str]
    sale: str  # automatic, prompt "sale 50% off", 6 images: 4 succeeded, 1 failed, 1 blocked
    plain: str  # automatic, prompt "sale 50 off", 3 images, all succeeded
    batch_id: str
    sets: list[str]  # semi-automatic, 2 sets of 2: all succeeded


def _submit(api: Api, body: dict) -> dict:
    answer = api.client.post("/api/jobs/submit", json=body)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


@pytest.fixture
def made(api: Api) -> Made:
    group_id = api.group()
    uploads = api.upload_ids(group_id, 3)

    def automatic(prompt: str, images: list[str], per_image: int) -> str:
        body = {"group_id": group_id, "mode": "automatic", "prompt": prompt, "images": images}
        body["config"] = {"outputs_per_image": per_image}
        return str(_submit(api, body)["jobs"][0]["id"])

    sale = automatic("sale 50% off", uploads, 2)
    finish_job(api, sale, ["succeeded"] * 4 + ["failed", "blocked"])
    plain = automatic("sale 50 off", uploads, 1)
    finish_job(api, plain, ["succeeded"] * 3)
    batch = _submit(
        api,
        {
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [
                {"images": [uploads[0]], "prompt": "a fox"},
                {"images": [uploads[1]], "prompt": "a heron"},
            ],
            "config": {"total_images": 4, "images_per_set": 2},
        },
    )
    sets = [job["id"] for job in batch["jobs"]]
    for job_id in sets:
        finish_job(api, job_id, ["succeeded", "succeeded"])
    return Made(group_id, uploads, sale, plain, batch["batch_id"], sets)


def _gallery(api: Api, group_id: str, **params: object) -> list[dict]:
    """Every page of the gallery's answer, following `next`."""
    pages, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        answer = api.client.get(f"/api/groups/{group_id}/gallery", params=query)
        assert answer.status_code == 200, answer.text
        pages.append(answer.json()["images"])
        cursor = answer.json()["next"]
        if cursor is None:
            return pages


def _newest_job_first(api: Api, group_id: str) -> list[str]:
    with api.session() as session:
        rows = session.exec(select(Output).where(col(Output.group_id) == group_id)).all()
    return [o.id for o in sorted(rows, key=lambda o: (o.job_id, o.position), reverse=True)]


def test_the_gallery_pages_every_image_once_newest_job_first_and_filters_them(
    api: Api, made: Made
) -> None:
    pages = _gallery(api, made.group_id, limit=4)
    assert [len(page) for page in pages] == [4, 4, 4, 1]
    shown = [image for page in pages for image in page]
    assert [image["id"] for image in shown] == _newest_job_first(api, made.group_id)
    assert {image["job_id"] for image in shown} == {made.sale, made.plain, *made.sets}
    for image in shown:
        assert (image["url"] is not None) == (image["status"] == "succeeded"), image

    def ids(**params: object) -> list[str]:
        return [image["id"] for page in _gallery(api, made.group_id, **params) for image in page]

    sale = [output.id for output in reversed(api.outputs(made.sale))]
    assert ids(job_id=made.sale, limit=2) == sale
    assert ids(status="failed") == [api.outputs(made.sale)[4].id]
    assert ids(status="blocked", job_id=made.plain) == []
    assert ids(prompt="50%") == sale  # % is the text itself, not a wildcard
    assert len(ids(prompt="sale 50")) == 9
    assert ids(prompt="heron") == [o.id for o in reversed(api.outputs(made.sets[1]))]

    base = f"/api/groups/{made.group_id}/gallery"
    answer = api.client.get(base, params={"cursor": "not-a-cursor"})
    assert answer.status_code == 422 and "not one this gallery gave out" in answer.text
    assert api.client.get(base, params={"status": "sleeping"}).status_code == 422
    assert api.client.get(base, params={"limit": 0}).status_code == 422
    missing = api.client.get("/api/groups/grp_01aaaaaaaaaaaaaaaaaaaaaaaa/gallery")
    assert missing.status_code == 404


def test_a_gallery_page_walks_the_gallery_index_without_sorting(api: Api, made: Made) -> None:
    """At any depth and with any filter, the query reads an index in order (no sort of the
    group's rows), on SQLite and MariaDB."""
    in_plain, in_sale = api.outputs(made.plain)[1], api.outputs(made.sale)[3]
    engine = api.platform.engine
    _another_groups_images(api, 3000)  # a table the planners do not just read whole
    for filters, cursor in (
        (GalleryFilters(), None),
        (GalleryFilters(), gallery_cursor(in_plain)),
        (GalleryFilters(job_id=made.sale), gallery_cursor(in_sale)),
        (GalleryFilters(status=OutputStatus.FAILED), gallery_cursor(in_plain)),
        (GalleryFilters(prompt="50%"), None),
    ):
        query = gallery_query(made.group_id, filters, cursor, 60)
        compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                plan = " ".join(
                    str(row[-1])
                    for row in connection.execute(sa.text(f"EXPLAIN QUERY PLAN {compiled}"))
                )
                assert "TEMP B-TREE" not in plan, (filters, plan)
                assert re.search(rf"INDEX (ix_outputs_job_id_position|{GALLERY_INDEX})", plan)
            else:
                rows = connection.execute(sa.text(f"EXPLAIN {compiled}")).mappings().all()
                assert rows[0]["key"] in (GALLERY_INDEX, "ix_outputs_job_id_position"), rows
                assert "filesort" not in str(rows[0]["Extra"]), rows


def _another_groups_images(api: Api, count: int) -> None:
    with api.session() as session:
        group = Group(name="filler")
        job = Job(group_id=group.id, batch_id="bat_filler", mode="automatic", prompt="x")
        session.add_all([group, job])
        session.flush()
        rows = [
            {
                "id": f"out_filler{n:016d}",
                "job_id": job.id,
                "group_id": group.id,
                "position": n,
                "prompt": "x",
                "seed": n,
                "reference_ids": [],
                "params": {},
            }
            for n in range(count)
        ]
        session.execute(sa.insert(Output), rows)
        session.commit()
    if api.platform.engine.dialect.name != "sqlite":
        with api.platform.engine.connect() as connection:
            connection.execute(sa.text("ANALYZE TABLE outputs"))


def test_the_gallery_page_links_each_image_to_its_viewer_and_its_next_page(
    api: Api, made: Made
) -> None:
    page = api.client.get(f"/groups/{made.group_id}/gallery", params={"job": made.sale})
    assert page.status_code == 200
    viewers = re.findall(r'data-lightbox="(/outputs/out_\w+)"', page.text)
    assert viewers == [f"/outputs/{o.id}" for o in reversed(api.outputs(made.sale))]
    assert 'loading="lazy"' in page.text
    assert "Job" in page.text and "Prompt contains" in page.text
    everything = api.client.get(f"/groups/{made.group_id}/gallery")
    assert len(re.findall(r"data-lightbox=", everything.text)) == 13
    refused = api.client.get(f"/groups/{made.group_id}/gallery", params={"status": "x"})
    assert refused.status_code == 422 and "is none of" in refused.text

    first = api.client.get(
        f"/groups/{made.group_id}/gallery", params={"prompt": "sale", "limit": 4}
    )
    (more,) = re.findall(r'href="([^"]+)" rel="next" data-gallery-more', first.text)
    more = more.replace("&amp;", "&")
    assert "prompt=sale" in more and "limit=4" in more and "cursor=" in more
    second = api.client.get(more)
    assert second.status_code == 200
    shown = re.findall(r'data-lightbox="/outputs/(out_\w+)"', first.text + second.text)
    expected = [i for i in _newest_job_first(api, made.group_id) if i not in _batch_ids(api, made)]
    assert shown == expected[:8]

    image = api.outputs(made.sale)[0]
    page = api.client.get(f"/outputs/{image.id}")
    assert page.status_code == 200
    assert "sale 50% off" in page.text and str(image.seed) in page.text
    assert f"/api/uploads/{image.reference_ids[0]}/" in page.text  # its reference, shown
    assert re.search(rf'href="[^"]*/api/outputs/{image.id}/file" download="', page.text)
    assert 'role="dialog"' not in page.text and "data-viewer" in page.text

    failed = api.outputs(made.sale)[4]
    page = api.client.get(f"/outputs/{failed.id}")
    assert "failed on purpose" in page.text and " download=" not in page.text
    assert api.client.get("/outputs/out_01aaaaaaaaaaaaaaaaaaaaaaaa").status_code == 404


def _batch_ids(api: Api, made: Made) -> set[str]:
    return {o.id for job_id in made.sets for o in api.outputs(job_id)}


def test_a_batch_page_shows_its_sets_with_variation_and_rerun_buttons(api: Api, made: Made) -> None:
    page = api.client.get(f"/batches/{made.batch_id}")
    assert page.status_code == 200
    assert re.findall(r"<h2 id=\"set-job_\w+\">(Set \d)</h2>", page.text) == ["Set 1", "Set 2"]
    for job_id in made.sets:
        assert f'action="/jobs/{job_id}/rerun"' in page.text
        for output in api.outputs(job_id):
            assert f'action="/outputs/{output.id}/variations"' in page.text
    assert re.findall(r">(V\d)</button>", page.text) == ["V1", "V2", "V1", "V2"]
    assert api.client.get("/batches/bat_01aaaaaaaaaaaaaaaaaaaaaaaa").status_code == 404
    assert api.client.get("/batches/nonsense").status_code == 404
    job_page = api.client.get(f"/jobs/{made.sets[0]}")
    assert f'href="/batches/{made.batch_id}"' in job_page.text
    group_page = api.client.get(f"/groups/{made.group_id}")
    assert f'href="/batches/{made.batch_id}"' in group_page.text
    assert f'href="/groups/{made.group_id}/gallery"' in group_page.text


def test_the_batch_fragment_shows_new_variations_and_whether_a_set_runs(
    api: Api, made: Made
) -> None:
    path = f"/live/batches/{made.batch_id}"
    answer = api.client.get(path)
    assert answer.status_code == 200 and answer.headers["x-pixelfleet-running"] == "0"
    assert "<html" not in answer.text and answer.headers["cache-control"] == "no-store"
    assert [f'id="set-body-{job_id}" data-part' in answer.text for job_id in made.sets] == [
        True,
        True,
    ]
    assert "variations 1" not in answer.text
    output = api.outputs(made.sets[0])[1]
    varied = api.client.post(f"/outputs/{output.id}/variations", follow_redirects=False)
    assert varied.status_code == 303
    after = api.client.get(path)
    assert "variations 1" in after.text and after.headers["x-pixelfleet-running"] == "0"
    assert _set_versions(after.text)[0] != _set_versions(answer.text)[0]  # live.js replaces it
    assert _set_versions(after.text)[1] == _set_versions(answer.text)[1]

    running = _submit(
        api,
        {
            "group_id": made.group_id,
            "mode": "semi-automatic",
            "items": [{"images": [made.uploads[2]], "prompt": "an owl"}],
        },
    )
    answer = api.client.get(f"/live/batches/{running['batch_id']}")
    assert answer.headers["x-pixelfleet-running"] == "1"
    page = api.client.get(f"/batches/{running['batch_id']}")
    assert f'data-live-src="/live/batches/{running["batch_id"]}?page=1" data-live-running' in (
        page.text
    )
    assert api.client.get("/live/batches/bat_01aaaaaaaaaaaaaaaaaaaaaaaa").status_code == 404


def _set_versions(html: str) -> list[str]:
    return re.findall(r'id="set-body-job_\w+" data-part data-v="([^"]*)"', html)


def test_another_users_gallery_images_and_batches_do_not_exist_for_them(
    api: Api, made: Made
) -> None:
    with api.platform.session_scope() as session:
        user = users.add_user(session, "bob", UserTier.FREE)
        _, secret = users.create_key(session, user)
    as_bob = {"Authorization": f"Bearer {secret}"}
    image = api.outputs(made.sale)[0].id
    for path in (
        f"/api/groups/{made.group_id}/gallery",
        f"/groups/{made.group_id}/gallery",
        f"/outputs/{image}",
        f"/batches/{made.batch_id}",
    ):
        assert api.client.get(path, headers=as_bob).status_code == 404, path


def test_an_uploads_page_is_what_the_group_pages_grid_opens(api: Api) -> None:
    """The group page's upload thumbnails open the upload's own viewer (in the lightbox with
    JavaScript, as a page without): the image, its file, size and attributes, a download."""
    group_id = api.group()
    answer = api.client.post(
        "/api/uploads",
        data={"group_id": group_id, "attributes": '{"gender": "female", "age": 30}'},
        files=[("files", ("portrait one.png", png_bytes(48, 40), "image/png"))],
    )
    assert answer.status_code == 201, answer.text
    upload = answer.json()["images"][0]
    grid = api.client.get(f"/groups/{group_id}").text
    assert f'href="/uploads/{upload["id"]}" data-lightbox="/uploads/{upload["id"]}"' in grid

    page = api.client.get(f"/uploads/{upload['id']}")
    assert page.status_code == 200
    assert "data-viewer" in page.text and "portrait one.png" in page.text
    assert "48\N{MULTIPLICATION SIGN}40 px" in page.text
    assert f"{upload['bytes']:,} bytes" in page.text
    assert "age: 30" in page.text and "gender: female" in page.text
    download = rf'href="[^"]*/api/uploads/{upload["id"]}/file" download="portrait one.png"'
    assert re.search(download, page.text)
    assert api.client.get("/uploads/img_01aaaaaaaaaaaaaaaaaaaaaaaa").status_code == 404
