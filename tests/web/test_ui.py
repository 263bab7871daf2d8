"""The web UI as a person uses it: forms and links over the real stack (control plane, local
endpoint, worker with the offline provider), on SQLite and MariaDB. Pages are parsed with
the standard library's HTML parser, so the tests follow the same links and forms a browser
would."""

import re
import time
from contextlib import contextmanager
from html.parser import HTMLParser

import httpx
import pytest
from sqlmodel import Session, create_engine, func, select

from control_plane.models import Group, Job, Upload
from control_plane.settings import Settings
from control_plane.web.ui import live as ui_live
from tests.conftest import png_bytes
from tests.fakes.api import Api, submit_one_dispatch
from tests.fakes.stack import Stack, check_zip_against_manifest, read_zip, run_stack


class Page(HTMLParser):
    """What a test needs from a page: links, images, form actions, inputs, alerts, text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []
        self.forms: list[str] = []
        self.inputs: dict[str, list[str]] = {}
        self.alerts: list[str] = []
        self.live = False  # a live region polls for changes: something on the page runs
        self.refresh = False  # the old self-reloading page: must never come back
        self._in_alert = False
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {key: value or "" for key, value in attrs}
        if "data-live-running" in a:
            self.live = True
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        elif tag == "img" and a.get("src"):
            self.images.append(a["src"])
        elif tag == "form":
            self.forms.append(a.get("action", ""))
        elif tag in ("input", "textarea", "select") and "name" in a:
            self.inputs.setdefault(a["name"], []).append(a.get("value", ""))
        elif tag == "meta" and a.get("http-equiv") == "refresh":
            self.refresh = True
        elif a.get("role") == "alert" or a.get("class") in ("error", "notice"):
            self._in_alert = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("p", "div"):
            self._in_alert = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_alert and data.strip():
            self.alerts.append(data.strip())

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def _count(settings: Settings, model: type) -> int:
    engine = create_engine(settings.database_url)
    try:
        with Session(engine) as session:
            return int(session.exec(select(func.count()).select_from(model)).one())
    finally:
        engine.dispose()


def _new_group(http: httpx.Client, name: str) -> str:
    response = http.post("/groups", data={"name": name})
    assert response.status_code == 303, response.text
    match = re.fullmatch(r"/groups/(grp_\w+)", response.headers["location"])
    assert match, response.headers["location"]
    return match.group(1)


def _upload(http: httpx.Client, group_id: str, files: list[tuple[str, bytes]]) -> httpx.Response:
    return http.post(
        f"/groups/{group_id}/uploads",
        follow_redirects=True,
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
    )


def _wait_for_job_page(http: httpx.Client, path: str, timeout: float = 60) -> Page:
    deadline = time.monotonic() + timeout
    while True:
        page = Page(http.get(path).text)
        assert not page.refresh
        if not page.live:  # the page stops following changes when the job has finished
            return page
        assert time.monotonic() < deadline, page.all_text
        time.sleep(0.2)


def test_a_dataset_from_the_browser(stack: Stack) -> None:
    http = stack.http
    home = http.get("/")
    assert home.status_code == 200 and "text/html" in home.headers["content-type"]
    assert "/groups" in Page(home.text).forms

    group_id = _new_group(http, "cats in the UI")
    assert f"/groups/{group_id}" in Page(http.get("/").text).links

    files = [(f"cat {i}.png", png_bytes(40 + i, 30, (i * 40, 90, 200))) for i in range(5)]
    uploaded = _upload(http, group_id, [*files, ("notes.txt", b"not an image at all")])
    assert uploaded.status_code == 201, uploaded.text
    page = Page(uploaded.text)
    assert "5 image(s) uploaded, 1 rejected" in page.alerts
    assert "notes.txt" in page.all_text and "not a PNG, JPEG or WebP image" in page.all_text
    upload_ids = page.inputs["images"]
    assert len(upload_ids) == 5
    thumbnails = [src for src in page.images if src.endswith("/thumbnail")]
    assert len(thumbnails) == 5
    assert http.get(thumbnails[0]).headers["content-type"] == "image/webp"

    # automatic, nothing ticked: every upload of the group, one prompt
    submitted = http.post(
        f"/groups/{group_id}/submit",
        data={"mode": "automatic", "prompt": "as a watercolour", "seed": "7", "model": ""},
    )
    assert submitted.status_code == 303, submitted.text
    job_path = submitted.headers["location"]
    assert job_path.startswith("/jobs/job_")
    first = Page(http.get(job_path).text)
    assert "as a watercolour" in first.all_text

    done = _wait_for_job_page(http, job_path)
    assert "completed" in done.all_text and "5 succeeded" in done.all_text
    outputs = [src for src in done.images if src.endswith("/thumbnail")]
    assert len(outputs) == 5
    assert all(http.get(src).status_code == 200 for src in outputs)

    group_page = Page(http.get(f"/groups/{group_id}").text)
    zip_link = f"/api/download/{group_id}/zip"
    assert zip_link in group_page.links and job_path in group_page.links
    _, archive, manifest = read_zip(stack, group_id)
    assert len(manifest) == 5 and all(line["status"] == "succeeded" for line in manifest)
    assert {line["seed"] for line in manifest} >= {7}
    check_zip_against_manifest(archive, manifest)
    assert f"{zip_link}?include=inputs" in group_page.links
    _, archive, manifest = read_zip(stack, group_id, include="inputs")
    check_zip_against_manifest(archive, manifest)
    assert len([name for name in archive.namelist() if name.startswith("inputs/")]) == 5


def test_a_clean_upload_redirects_and_duplicates_are_counted(stack: Stack) -> None:
    http = stack.http
    group_id = _new_group(http, "reload")
    files = [
        ("files", ("a.png", png_bytes(), "image/png")),
        ("files", ("b.png", png_bytes(50), "image/png")),
    ]
    posted = http.post(f"/groups/{group_id}/uploads", files=files)
    assert posted.status_code == 303
    assert posted.headers["location"] == f"/groups/{group_id}?page=1&uploaded=2"
    page = Page(http.get(posted.headers["location"]).text)
    assert "2 image(s) uploaded" in page.alerts and len(page.inputs["images"]) == 2
    assert _count(stack.settings, Upload) == 2

    files_again = [*files, ("files", ("c.png", png_bytes(60), "image/png"))]
    posted = http.post(f"/groups/{group_id}/uploads", files=files_again)
    assert posted.headers["location"] == f"/groups/{group_id}?page=1&uploaded=1&duplicates=2"
    page = Page(http.get(posted.headers["location"]).text)
    assert "1 image(s) uploaded, 2 already in the group (not stored again)" in page.alerts
    assert _count(stack.settings, Upload) == 3


def test_semi_automatic_from_ticked_images_with_their_own_prompts(stack: Stack) -> None:
    http = stack.http
    group_id = _new_group(http, "personas")
    page = Page(_upload(http, group_id, [("a.png", png_bytes()), ("b.png", png_bytes(50))]).text)
    first, second = page.inputs["images"]
    response = http.post(
        f"/groups/{group_id}/submit",
        data={
            "mode": "semi-automatic",
            "images": [first],  # the second is chosen by its prompt alone
            f"prompt_{first}": "studio portrait",
            f"prompt_{second}": "walking in the rain",
            "total_images": "8",
            "images_per_set": "4",
        },
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"/groups/{group_id}#jobs"
    jobs = http.get("/api/jobs", params={"group_id": group_id}).json()["data"]
    assert sorted(job["prompt"] for job in jobs) == ["studio portrait", "walking in the rain"]
    assert all(job["mode"] == "semi-automatic" and job["progress"]["total"] == 4 for job in jobs)
    stack.wait_for([job["id"] for job in jobs])
    group_page = Page(http.get(f"/groups/{group_id}").text)
    assert all(f"/jobs/{job['id']}" in group_page.links for job in jobs)


def test_bad_forms_say_why_and_change_nothing(stack: Stack) -> None:
    http = stack.http
    settings = stack.settings

    blank = http.post("/groups", data={"name": "   "})
    assert blank.status_code == 422 and "name" in " ".join(Page(blank.text).alerts)
    assert _count(settings, Group) == 0

    group_id = _new_group(http, "empty")
    nothing = http.post(f"/groups/{group_id}/submit", data={"mode": "automatic", "prompt": "x"})
    assert nothing.status_code == 422
    assert "images" in " ".join(Page(nothing.text).alerts)

    only_junk = _upload(http, group_id, [("a.png", b""), ("b.png", b"\x89PNG broken")])
    assert only_junk.status_code == 422
    assert "no image was accepted" in " ".join(Page(only_junk.text).alerts)
    assert "b.png" in Page(only_junk.text).all_text
    assert _count(settings, Upload) == 0
    assert not any(p.is_file() for p in (settings.data_dir / "storage").rglob("*"))

    page = Page(_upload(http, group_id, [("a.png", png_bytes())]).text)
    wrong_ratio = http.post(
        f"/groups/{group_id}/submit",
        data={"mode": "automatic", "prompt": "x", "aspect_ratio": "7:3"},
    )
    assert wrong_ratio.status_code == 422
    assert "allowed: 1:1" in " ".join(Page(wrong_ratio.text).alerts)
    no_prompts = http.post(
        f"/groups/{group_id}/submit",
        data={"mode": "semi-automatic", "images": page.inputs["images"], "total_images": "4"},
    )
    assert no_prompts.status_code == 422
    assert "Image \u2018a.png\u2019 has no prompt" in " ".join(Page(no_prompts.text).alerts)
    nothing_chosen = http.post(f"/groups/{group_id}/submit", data={"mode": "semi-automatic"})
    assert nothing_chosen.status_code == 422
    assert "No image chosen" in " ".join(Page(nothing_chosen.text).alerts)
    assert _count(settings, Job) == 0

    bad_page = http.get(f"/groups/{group_id}", params={"page": 0})
    assert bad_page.status_code == 422 and "text/html" in bad_page.headers["content-type"]
    assert "page" in " ".join(Page(bad_page.text).alerts)
    wrong_method = http.get("/groups")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"

    missing = http.get("/groups/grp_nope")
    assert missing.status_code == 404 and "text/html" in missing.headers["content-type"]
    assert "group grp_nope does not exist" in Page(missing.text).alerts
    assert http.get("/api/groups/grp_nope").json() == {"detail": "group grp_nope does not exist"}


def test_cancel_and_retry_buttons(settings: Settings) -> None:
    # A slow provider keeps the job running long enough to press Cancel.
    with contextmanager(run_stack)(
        settings, offline_latency_ms=2_000, worker_concurrency=1
    ) as stack:
        http = stack.http
        group_id = _new_group(http, "slow")
        page = Page(
            _upload(http, group_id, [(f"{i}.png", png_bytes(30 + i)) for i in range(3)]).text
        )
        job_path = http.post(
            f"/groups/{group_id}/submit", data={"mode": "automatic", "prompt": "slow"}
        ).headers["location"]
        running = Page(http.get(job_path).text)
        assert running.live and f"{job_path}/cancel" in running.forms
        cancelled = http.post(f"{job_path}/cancel", follow_redirects=True)
        assert cancelled.status_code == 200
        after = Page(cancelled.text)
        assert not after.live and "cancelled by user" in after.all_text
        assert f"{job_path}/retry" in after.forms
        again = http.post(f"{job_path}/cancel")
        assert again.status_code == 409 and "already cancelled" in Page(again.text).all_text

        retried = http.post(f"{job_path}/retry", follow_redirects=True)
        assert retried.status_code == 200 and Page(retried.text).live
        done = _wait_for_job_page(http, job_path, timeout=60)
        assert "3 succeeded" in done.all_text, done.all_text
        assert len(page.inputs["images"]) == 3


def test_oversize_only_upload_is_413_as_in_the_api(settings: Settings) -> None:
    small = settings.model_copy(update={"upload_max_file_bytes": 100})
    with contextmanager(run_stack)(small) as stack:
        group_id = _new_group(stack.http, "tight")
        page = _upload(stack.http, group_id, [("big.png", png_bytes(200, 200, (1, 2, 3)))])
        assert page.status_code == 413
        assert "big.png: file is" in " ".join(Page(page.text).alerts)
        api = stack.http.post(
            "/api/uploads",
            data={"group_id": group_id},
            files=[("files", ("big.png", png_bytes(200, 200, (1, 2, 3)), "image/png"))],
        )
        assert api.status_code == 413


def test_forms_posted_from_another_site_are_refused(stack: Stack) -> None:
    """Another site's page cannot make a visitor's browser create, upload or submit here."""
    http = stack.http
    for headers in (
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
    ):
        refused = http.post("/groups", data={"name": "forged"}, headers=headers)
        assert refused.status_code == 403, headers
        assert "another site" in refused.json()["detail"]
        api = http.post("/api/groups", json={"name": "forged"}, headers=headers)
        assert api.status_code == 403
    assert _count(stack.settings, Group) == 0
    host = httpx.URL(str(http.base_url)).netloc.decode()
    for headers in ({"Sec-Fetch-Site": "same-origin"}, {"Origin": f"http://{host}"}, {}):
        assert http.post("/groups", data={"name": "mine"}, headers=headers).status_code == 303
    assert http.get("/", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200  # a link
    assert _count(stack.settings, Group) == 3


def test_pages_allow_only_own_scripts_no_frames_and_send_no_address_elsewhere(api: Api) -> None:
    """Every page, error pages too, carries a policy that allows what the templates use
    (the control plane's own stylesheet and scripts, inline styles, requests and images to
    here, forms posting here) and nothing more."""
    job_id, _ = submit_one_dispatch(api, n=1)
    group_id = api.client.get(f"/api/jobs/{job_id}").json()["group_id"]
    expected = (
        "default-src 'none'; img-src 'self'; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
    for path, status_code in (
        ("/", 200),
        (f"/groups/{group_id}", 200),
        (f"/jobs/{job_id}", 200),
        ("/jobs/job_nothing", 404),
        ("/nowhere", 404),
    ):
        page = api.client.get(path)
        assert page.status_code == status_code, path
        assert page.headers["content-security-policy"] == expected, path
        assert page.headers["referrer-policy"] == "same-origin", path
    failed_form = api.client.post("/groups", data={"name": ""})
    assert failed_form.status_code == 422
    assert failed_form.headers["content-security-policy"] == expected
    # The API's own docs page loads Swagger UI's scripts: not a page of the UI.
    assert "content-security-policy" not in api.client.get("/docs").headers


def test_variation_and_rerun_buttons(stack: Stack) -> None:
    http = stack.http
    group_id = _new_group(http, "boats")
    [upload] = stack.upload(group_id, 1)
    submitted = http.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"images": [upload], "prompt": "a paper boat"}],
        },
    ).json()
    parent_id = submitted["jobs"][0]["id"]
    set_path = f"/jobs/{parent_id}"
    parent = _wait_for_job_page(http, set_path)
    images = [i["id"] for i in http.get(f"/api/jobs/{parent_id}").json()["images"]]
    assert [f"/outputs/{image}/variations" for image in images] == [
        form for form in parent.forms if form.startswith("/outputs/")
    ]
    assert "V2" in parent.all_text and f"{set_path}/rerun" in parent.forms

    varied = http.post(f"/outputs/{images[1]}/variations")
    assert varied.status_code == 303, varied.text
    variation_path = varied.headers["location"]
    variation = _wait_for_job_page(http, variation_path)
    assert "variations of image" in variation.all_text and set_path in variation.links
    assert "4 succeeded" in variation.all_text
    assert "V1" in variation.all_text  # a variation set can be varied again
    assert variation_path in Page(http.get(set_path).text).links

    rerun = http.post(f"{set_path}/rerun", follow_redirects=True)
    assert rerun.status_code == 200 and "rerun of" in Page(rerun.text).all_text
    [rerun_id] = http.get(f"/api/jobs/{parent_id}").json()["reruns"]
    assert str(rerun.url).endswith(f"/jobs/{rerun_id}")
    assert f"/jobs/{rerun_id}" in Page(http.get(set_path).text).links

    unknown = http.post(f"/outputs/out_{'0' * 26}/variations")
    assert unknown.status_code == 404 and "does not exist" in Page(unknown.text).all_text


def test_the_job_page_shows_a_page_of_images_with_links_to_the_others(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ui_live, "IMAGES_ON_JOB_PAGE", 3)
    group_id = api.group()
    [image] = api.upload_ids(group_id, 1)
    body = {
        "group_id": group_id,
        "mode": "automatic",
        "prompt": "p",
        "images": [image],
        "config": {"outputs_per_image": 8},
    }
    job_id = api.client.post("/api/jobs/submit", json=body).json()["jobs"][0]["id"]

    def shown(path: str) -> tuple[list[int], list[str], list[str]]:
        answer = api.client.get(path)
        assert answer.status_code == 200, answer.text
        page = Page(answer.text)
        positions = [int(found) for found in re.findall(r"#(\d+) · seed", page.all_text)]
        nexts = [link for link in page.links if "next images" in _link_text(answer.text, link)]
        previous = [link for link in page.links if "previous" in _link_text(answer.text, link)]
        return positions, sorted(set(nexts)), sorted(set(previous))

    path: str | None = f"/jobs/{job_id}"
    visited: list[str] = []
    seen: list[int] = []
    while path:
        positions, nexts, previous = shown(path)
        assert (previous == []) == (not visited)  # only the first page has no "previous"
        if visited:
            assert previous == [visited[-1]]  # back to the page it came from
        visited.append(path)
        seen += positions
        path = nexts[0] if nexts else None
    assert seen == list(range(8)) and len(visited) == 3
    bad = api.client.get(f"/jobs/{job_id}", params={"cursor": "nonsense"})
    assert bad.status_code == 422 and "is not one this API gave out" in bad.text


def _link_text(html: str, href: str) -> str:
    found = re.search(rf'<a href="{re.escape(href)}">([^<]*)</a>', html)
    return found.group(1) if found else ""
