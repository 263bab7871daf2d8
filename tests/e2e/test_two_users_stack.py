"""Two users with their own keys on one deployment (real sockets, offline worker): every id of
one answers the other exactly as a missing id does, on every route that takes an id (the
routes are read from the app, so a new route cannot skip the check); lists show only one's
own rows; the other's ids used inside a submission are "does not exist" and nothing is
written; an admin sees everyone's."""

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from control_plane.app import create_app
from control_plane.db import make_engine, session_scope
from control_plane.models import UserTier
from control_plane.services import users
from control_plane.settings import Settings
from shared.ids import new_id
from tests.conftest import png_bytes
from tests.fakes.stack import Stack, read_zip, run_stack

# A path parameter → the kind of id it takes (its prefix) and the name of A's row of that kind.
PARAMETERS = {
    "group_id": ("grp", "group"),
    "job_id": ("job", "job"),
    "upload_id": ("img", "upload"),
    "output_id": ("out", "output"),
    "catalog_id": ("cat", "catalog"),
    "preset_id": ("pre", "preset"),
    "character_id": ("chr", "character"),
    "persona_id": ("per", "persona"),
    "batch_id": ("bat", "batch"),
}


def make_key(database_url: str, name: str, tier: UserTier, *, admin: bool = False) -> str:
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            user = users.add_user(session, name, tier, admin=admin)
            _, secret = users.create_key(session, user)
        return secret
    finally:
        engine.dispose()


@contextmanager
def client_of(stack: Stack, key: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=stack.http.base_url, headers=headers, timeout=60) as client:
        yield client


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (response.request.url, response.text)
    return response.json() if response.content else None


def wait_until(check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.2)


def make_everything(stack: Stack) -> dict[str, str]:
    """A's rows of every kind, with finished jobs (an automatic one and a semi-automatic
    set), a catalog job, a preset, a character and a persona."""
    http = stack.http
    group = stack.group()
    uploads = stack.upload(group, 4)
    automatic = ok(
        http.post(
            "/api/jobs/submit",
            json={"group_id": group, "mode": "automatic", "prompt": "p", "images": uploads[:2]},
        ),
        201,
    )["jobs"][0]["id"]
    semi_submission = ok(
        http.post(
            "/api/jobs/submit",
            json={
                "group_id": group,
                "mode": "semi-automatic",
                "items": [{"images": [uploads[2]], "prompt": "a set"}],
                "config": {"total_images": 4, "images_per_set": 4},
            },
        ),
        201,
    )
    semi = semi_submission["jobs"][0]["id"]
    catalog = ok(
        http.post(
            "/api/catalogs",
            json={"name": "a's", "prompts": [{"id": "one", "tags": ["t"], "prompt": "a fox"}]},
        ),
        201,
    )["id"]
    catalog_job = ok(
        http.post(
            "/api/jobs/submit",
            json={
                "group_id": group,
                "mode": "catalog",
                "catalog_id": catalog,
                "tags": ["t"],
                "count": 1,
            },
        ),
        201,
    )["jobs"][0]["id"]
    jobs = stack.wait_for([automatic, semi, catalog_job])
    assert [job["status"] for job in jobs] == ["completed"] * 3
    preset = ok(http.post("/api/presets", json={"name": "a's", "prompt": "studio"}), 201)["id"]
    character = ok(
        http.post("/api/characters", json={"name": "Ada", "references": uploads[:1]}), 201
    )["id"]
    persona = ok(http.post("/api/personas", json={"group_id": group, "count": 1}), 201)
    persona_id = persona["personas"][0]["id"]
    wait_until(
        lambda: http.get(f"/api/personas/{persona_id}").json()["status"] in ("completed", "failed")
    )
    return {
        "group": group,
        "upload": uploads[0],
        "job": automatic,
        "semi": semi,
        "output": jobs[0]["images"][0]["id"],
        "set_output": jobs[1]["images"][0]["id"],
        "catalog": catalog,
        "preset": preset,
        "character": character,
        "persona": persona_id,
        "batch": semi_submission["batch_id"],
    }


def routes_with_ids(settings: Settings) -> list[tuple[str, str]]:
    """(method, path) of every route of the app whose path takes an id."""
    found = []
    for path, methods in all_routes(create_app(settings).routes):
        if "{" in path:
            found += [(method, path) for method in sorted(set(methods or ()) - {"HEAD"})]
    return found


def all_routes(routes: list[Any]) -> Iterator[tuple[str, Any]]:
    """(path, methods) of each route, those of included routers too."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)  # an included router
        if contexts is not None:
            yield from ((context.path, context.methods) for context in contexts())
        elif isinstance(route, Route):
            yield route.path, route.methods


def body_for(path: str, own_group: str) -> dict[str, Any]:
    """A request body that is valid for the route, so only the id can be refused."""
    if path == "/api/presets/{preset_id}/examples":
        return {"json": {"pool_group_id": own_group, "count": 1}}
    if path == "/api/characters/{character_id}/packs":
        return {"json": {"group_id": own_group}}
    if path == "/api/outputs/{output_id}/variations":
        return {"json": {}}
    if path == "/api/uploads/{upload_id}":
        return {"json": {"attributes": {"colour": "red"}}}
    if path == "/groups/{group_id}/uploads":
        return {"files": [("files", ("x.png", png_bytes(8, 8), "image/png"))]}
    if path == "/groups/{group_id}/submit":
        return {"data": {"mode": "automatic", "prompt": "p"}}
    return {}


def filled(path: str, ids: dict[str, str]) -> str:
    for parameter, (_, kind) in PARAMETERS.items():
        path = path.replace("{" + parameter + "}", ids[kind])
    assert "{" not in path, f"no id of A for {path}: add its parameter to PARAMETERS"
    return path


def missing_ids() -> dict[str, str]:
    """Well-formed ids that nobody has."""
    return {kind: new_id(prefix) for prefix, kind in PARAMETERS.values()}


def answer_text(response: httpx.Response, ids: dict[str, str]) -> str:
    """The answer with the ids it names put back as their kind: comparable across ids."""
    text = response.text
    for kind, row_id in ids.items():
        text = text.replace(row_id, f"<{kind}>")
    return text


def counts(admin: httpx.Client) -> tuple[int, ...]:
    """Everything there is, as an admin counts it."""
    return tuple(
        ok(admin.get(path, params={"limit": 1, "with_total": "true"}))["total"]
        for path in (
            "/api/groups",
            "/api/jobs",
            "/api/catalogs",
            "/api/presets",
            "/api/characters",
            "/api/personas",
        )
    )


@pytest.mark.mysql
def test_every_id_of_one_user_answers_404_to_another(settings: Settings) -> None:
    url = settings.database_url
    a_key = make_key(url, "ann", UserTier.PAID)
    b_key = make_key(url, "bob", UserTier.FREE)
    admin_key = make_key(url, "root", UserTier.PAID, admin=True)
    with contextmanager(run_stack)(settings) as stack:
        stack.http.headers["Authorization"] = f"Bearer {a_key}"
        a = make_everything(stack)
        with client_of(stack, b_key) as bob, client_of(stack, admin_key) as admin:
            b_group = ok(bob.post("/api/groups", json={"name": "bob's"}), 201)["id"]
            b_upload = ok(
                bob.post(
                    "/api/uploads",
                    data={"group_id": b_group},
                    files=[("files", ("b.png", png_bytes(20, 20, (1, 2, 3)), "image/png"))],
                ),
                201,
            )["images"][0]["id"]
            before = counts(admin)
            check_every_route(stack, bob, a, b_group)
            check_lists(bob, a)
            check_cross_references(bob, a, b_group, b_upload)
            check_filters(bob, a, b_group)
            assert counts(admin) == before  # B wrote nothing with A's ids
            check_admin_sees_both(admin, a, b_group)
            check_a_still_has_everything(stack.http, a)


def check_every_route(stack: Stack, bob: httpx.Client, a: dict[str, str], b_group: str) -> None:
    """Each route with an id: A's id answers B what a missing id does (status and words)."""
    routes = routes_with_ids(stack.settings)
    exercised = set()
    for method, path in routes:
        body = body_for(path, b_group)
        absent = missing_ids()
        theirs = bob.request(method, filled(path, a), **body)
        nobodys = bob.request(method, filled(path, absent), **body)
        assert nobodys.status_code == 404, (method, path, nobodys.text)
        assert theirs.status_code == 404, (method, path, theirs.text)
        assert answer_text(theirs, a) == answer_text(nobodys, absent), (method, path)
        exercised.add((method, path))
    assert exercised == set(routes) and len(routes) >= 30
    a_set = {**a, "job": a["semi"], "output": a["set_output"]}  # a set's job and image too
    for path in ("/api/jobs/{job_id}", "/api/outputs/{output_id}", "/jobs/{job_id}"):
        assert bob.get(filled(path, a_set)).status_code == 404
    assert bob.post(filled("/api/jobs/{job_id}/rerun", a_set)).status_code == 404
    assert bob.get(f"/api/download/{a['group']}/zip", params={"status": "all"}).status_code == 404
    images = bob.get(f"/api/jobs/{a['job']}/images", params={"status": "succeeded"})
    assert images.status_code == 404


def check_lists(bob: httpx.Client, a: dict[str, str]) -> None:
    """B's lists hold only B's rows, whatever the filters."""
    assert [g["name"] for g in ok(bob.get("/api/groups"))["data"]] == ["bob's"]
    for params in (
        {},
        {"group_id": a["group"]},
        {"status": "completed"},
        {"mode": "automatic"},
        {"with_total": "true"},
        {"page": "1"},
    ):
        listed = ok(bob.get("/api/jobs", params=params))
        assert listed["data"] == [] and listed["total"] in (None, 0), params
    for path in ("/api/catalogs", "/api/presets", "/api/characters", "/api/personas"):
        listed = ok(bob.get(path))
        assert (listed["data"], listed["total"]) == ([], 0), path
    assert ok(bob.get("/api/personas", params={"group_id": a["group"]}))["total"] == 0
    index = bob.get("/")
    assert index.status_code == 200 and a["group"] not in index.text and "bob&#39;s" in index.text


def check_cross_references(
    bob: httpx.Client, a: dict[str, str], b_group: str, b_upload: str
) -> None:
    """A's ids inside B's requests are answered as missing ids are, and nothing is written."""
    absent = missing_ids()
    absent["output"] = new_id("out")

    def both(send: Callable[[dict[str, str]], httpx.Response]) -> None:
        theirs, nobodys = send(a), send(absent)
        assert theirs.status_code == nobodys.status_code and theirs.status_code in (404, 422)
        assert answer_text(theirs, a) == answer_text(nobodys, absent)

    both(
        lambda ids: bob.post(
            "/api/jobs/submit",
            json={
                "group_id": b_group,
                "mode": "automatic",
                "prompt": "p",
                "images": [ids["upload"]],
            },
        )
    )
    both(
        lambda ids: bob.post(
            "/api/jobs/submit",
            json={
                "group_id": b_group,
                "mode": "semi-automatic",
                "items": [{"images": [b_upload, ids["output"]], "prompt": "p"}],
                "config": {"total_images": 4, "images_per_set": 4},
            },
        )
    )
    both(
        lambda ids: bob.post(
            "/api/jobs/submit",
            json={
                "group_id": ids["group"],
                "mode": "automatic",
                "prompt": "p",
                "images": [b_upload],
            },
        )
    )
    both(
        lambda ids: bob.post(
            "/api/jobs/submit",
            json={
                "group_id": b_group,
                "mode": "catalog",
                "catalog_id": ids["catalog"],
                "tags": ["t"],
                "count": 1,
            },
        )
    )
    both(
        lambda ids: bob.post(
            "/api/characters", json={"name": "stolen", "references": [ids["upload"]]}
        )
    )
    both(
        lambda ids: bob.post(
            "/api/characters", json={"name": "stolen", "references": [ids["output"]]}
        )
    )
    both(lambda ids: bob.post("/api/personas", json={"group_id": ids["group"], "count": 1}))
    both(
        lambda ids: bob.post(
            "/api/uploads",
            data={"group_id": ids["group"]},
            files=[("files", ("x.png", png_bytes(9, 9), "image/png"))],
        )
    )
    both(
        lambda ids: bob.post(
            "/api/jobs/import",
            data={"group_id": ids["group"]},
            files=[("file", ("rows.csv", b"prompt\na cat\n", "text/csv"))],
        )
    )
    both(
        lambda ids: bob.post(
            "/api/jobs/import",
            data={"group_id": b_group},
            files=[
                (
                    "file",
                    ("rows.csv", f"prompt,image\na cat,{ids['upload']}\n".encode(), "text/csv"),
                )
            ],
        )
    )
    preset = ok(bob.post("/api/presets", json={"name": "bob's", "prompt": "p"}), 201)["id"]
    both(
        lambda ids: bob.post(
            f"/api/presets/{preset}/examples", json={"pool_group_id": ids["group"], "count": 1}
        )
    )
    both(
        lambda ids: bob.post(
            f"/api/presets/{preset}/examples",
            json={"pool_group_id": b_group, "group_id": ids["group"], "count": 1},
        )
    )
    ok(bob.delete(f"/api/presets/{preset}"), 204)
    both(
        lambda ids: bob.post(
            f"/groups/{b_group}/submit",
            data={"mode": "automatic", "prompt": "p", "images": ids["upload"]},
        )
    )


def check_filters(bob: httpx.Client, a: dict[str, str], b_group: str) -> None:
    """A's job named in the ZIP's filter of B's group is a job B's group does not have."""
    theirs = bob.get(f"/api/download/{b_group}/zip", params={"job_id": a["job"]})
    absent = new_id("job")
    nobodys = bob.get(f"/api/download/{b_group}/zip", params={"job_id": absent})
    assert theirs.status_code == nobodys.status_code == 422
    assert theirs.json()["detail"].replace(a["job"], "J") == nobodys.json()["detail"].replace(
        absent, "J"
    )


def check_admin_sees_both(admin: httpx.Client, a: dict[str, str], b_group: str) -> None:
    names = {g["name"] for g in ok(admin.get("/api/groups"))["data"]}
    assert {"bob's", "e2e dataset"} <= names
    for path in (
        f"/api/groups/{a['group']}",
        f"/api/groups/{b_group}",
        f"/api/jobs/{a['job']}",
        f"/api/outputs/{a['output']}",
        f"/api/uploads/{a['upload']}/thumbnail",
        f"/api/catalogs/{a['catalog']}",
        f"/api/presets/{a['preset']}",
        f"/api/characters/{a['character']}",
        f"/api/personas/{a['persona']}",
        f"/jobs/{a['job']}",
    ):
        assert admin.get(path).status_code == 200, path
    read_zip(admin, a["group"])
    assert ok(admin.get("/api/jobs", params={"group_id": a["group"]}))["data"]


def check_a_still_has_everything(http: httpx.Client, a: dict[str, str]) -> None:
    """Nothing B tried (deletes, cancels, retries, patches) touched A's rows."""
    for path in (
        f"/api/groups/{a['group']}",
        f"/api/jobs/{a['job']}",
        f"/api/catalogs/{a['catalog']}",
        f"/api/presets/{a['preset']}",
        f"/api/characters/{a['character']}",
        f"/api/personas/{a['persona']}",
        f"/api/uploads/{a['upload']}/file",
        f"/api/outputs/{a['output']}/file",
    ):
        assert http.get(path).status_code == 200, path
    job = ok(http.get(f"/api/jobs/{a['job']}"))
    assert job["status"] == "completed" and job["reruns"] == []
    assert ok(http.get(f"/api/outputs/{a['output']}"))["variations"] == []
    uploads = ok(http.get(f"/api/groups/{a['group']}/uploads"))["data"]
    assert all(upload["attributes"] is None for upload in uploads)
    assert len(ok(http.get("/api/jobs", params={"limit": 200}))["data"]) >= 3
