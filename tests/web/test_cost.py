"""Cost (issue 11 §3): the model table, estimates of every kind of submission (nothing
written, nothing sent), estimates in the 201s, job and group costs, spend caps (402 before
any row or RunPod call, safe against two submissions at once) and usage by bucket."""

import contextlib
import threading
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, func, select

from control_plane.access import Viewer
from control_plane.db import session_scope
from control_plane.errors import PaymentRequired
from control_plane.models import (
    Catalog,
    Dispatch,
    Event,
    IdempotentRequest,
    Job,
    Output,
    Persona,
    PresetUsage,
    User,
    UserTier,
    utcnow,
)
from control_plane.schemas import AutomaticSubmit
from control_plane.services import groups, spending, submissions, users
from shared.model_table import DEFAULT_MODEL, model_table
from tests.fakes.api import Api, hook, succeeded_result

FLASH = "gemini-2.5-flash-image"
PRO = "gemini-3-pro-image"
FLASH_31 = "gemini-3.1-flash-image"
COUNTED = (Job, Output, Dispatch, Event, Persona, PresetUsage, IdempotentRequest, Catalog)


def small_catalog() -> dict[str, Any]:
    """5 prompts tagged male, 4 tagged female."""
    tags = [["male"]] * 5 + [["female"]] * 4
    prompts = [{"id": f"p-{n}", "tags": t, "prompt": f"portrait {n}"} for n, t in enumerate(tags)]
    return {"name": "models", "prompts": prompts}


def price(model: str, size: str | None = None) -> float:
    return model_table()[model].price_for(size)


def row_counts(api: Api) -> dict[str, int]:
    with api.session() as session:
        return {
            table.__name__: session.exec(select(func.count()).select_from(table)).one()
            for table in COUNTED
        }


def post(api: Api, path: str, body: dict[str, Any], status: int = 201, **kw: Any) -> Any:
    response = api.client.post(path, json=body, **kw)
    assert response.status_code == status, response.text
    return response.json()


def automatic(group_id: str, images: list[str], **config: Any) -> dict[str, Any]:
    return {"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images,
            "config": config}  # fmt: skip


def report(api: Api, job_id: str, costs: list[float | None], status: str = "succeeded") -> None:
    """Send the job's dispatches to (mocked) RunPod and report every image with `costs`."""
    api.drain()
    outputs = api.outputs(job_id)
    with api.session() as session:
        dispatches = {o.dispatch_id: session.get(Dispatch, o.dispatch_id) for o in outputs}
    results: dict[str | None, list[dict[str, Any]]] = {}
    for output, cost in zip(outputs, costs, strict=True):
        result = {**succeeded_result(api, output), "model": output.model}
        if status != "succeeded":
            result = {"output_id": output.id, "status": status, "error": "on purpose"}
        results.setdefault(output.dispatch_id, []).append({**result, "cost_usd": cost})
    for dispatch_id, items in results.items():
        dispatch = dispatches[dispatch_id]
        assert dispatch is not None
        body = {"version": 2, "dispatch_id": dispatch.id, "results": items}
        assert hook(api, dispatch, {"status": "COMPLETED", "output": body}).status_code == 200


# -- the model table -------------------------------------------------------------------


def test_models_list_the_table_with_prices_and_the_default(api: Api) -> None:
    answer = api.client.get("/api/models").json()
    assert answer["default_model"] == DEFAULT_MODEL
    models = {model["id"]: model for model in answer["models"]}
    assert set(models) == set(model_table())
    assert [m["id"] for m in answer["models"] if m["default"]] == [DEFAULT_MODEL]
    flash = models[FLASH_31]
    assert flash["size_prices_usd"] == {"512": 0.045, "1K": 0.067, "2K": 0.101, "4K": 0.151}
    assert flash["batch_price_usd"] == 0.0335 and flash["max_reference_images"] == 14
    assert "1:8" in flash["aspect_ratios"] and flash["default_image_size"] == "1K"


# -- estimates -------------------------------------------------------------------------


@pytest.fixture
def world(api: Api) -> dict[str, Any]:
    """A group with uploads, a finished job (to vary and rerun), a catalog, a preset over the
    group as its pool, and a character."""
    group_id = api.group()
    images = api.upload_ids(group_id, 3)
    job = post(api, "/api/jobs/submit", automatic(group_id, images[:2], model=PRO))["jobs"][0]
    report(api, job["id"], [price(PRO)] * 2)
    catalog = post(api, "/api/catalogs", small_catalog())
    preset = post(
        api,
        "/api/presets",
        {"name": "golden", "prompt": "golden hour", "config": {"model": FLASH_31,
         "image_size": "2K"}, "examples_per_reference": 2},
    )  # fmt: skip
    character = post(
        api,
        "/api/characters",
        {"name": "Mina", "references": [images[0]], "style": {"model": PRO, "image_size": "4K"}},
    )
    api.drain()
    return {
        "group_id": group_id,
        "images": images,
        "job_id": job["id"],
        "output_id": api.outputs(job["id"])[0].id,
        "catalog_id": catalog["id"],
        "preset_id": preset["id"],
        "character_id": character["id"],
    }


def estimate_bodies(world: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each kind of JSON body, with the estimate it must get: {model: (images, cost)}."""
    g, images = world["group_id"], world["images"]
    return [
        (
            automatic(g, images, model=FLASH_31, image_size="2K", outputs_per_image=2),
            {FLASH_31: (6, 6 * price(FLASH_31, "2K"))},
        ),
        (
            {
                "group_id": g,
                "mode": "semi-automatic",
                "items": [{"prompt": "a {red, blue} kite", "images": images[:1]}],
                "config": {"total_images": 8, "images_per_set": 4},
            },
            {DEFAULT_MODEL: (8, 8 * price(DEFAULT_MODEL))},
        ),
        (
            {
                "group_id": g,
                "mode": "catalog",
                "catalog_id": world["catalog_id"],
                "tags": ["male", "female"],
                "count": 3,
                "config": {"model": PRO},
            },
            {PRO: (6, 6 * price(PRO))},
        ),
        (
            {"mode": "variation", "output_id": world["output_id"], "count": 3},
            {PRO: (3, 3 * price(PRO))},
        ),
        ({"mode": "rerun", "job_id": world["job_id"]}, {PRO: (2, 2 * price(PRO))}),
        (
            {"mode": "preset", "preset_id": world["preset_id"], "pool_group_id": g, "count": 2},
            {FLASH_31: (4, 4 * price(FLASH_31, "2K"))},
        ),
        (
            {"mode": "character-pack", "character_id": world["character_id"], "size": 5},
            {PRO: (5, 5 * price(PRO, "4K"))},
        ),
        (
            {"mode": "persona", "group_id": g, "count": 2, "config": {"model": FLASH}},
            {"gemini-2.5-flash": (2, 0.0), FLASH: (10, 10 * price(FLASH))},
        ),
    ]


def check_estimate(answer: dict[str, Any], expected: dict[str, Any]) -> None:
    by_model = {m: (e["images"], e["cost_usd"]) for m, e in answer["by_model"].items()}
    assert by_model.keys() == expected.keys()
    for model, (images, cost) in expected.items():
        assert by_model[model][0] == images and by_model[model][1] == pytest.approx(cost)
    assert answer["images"] == sum(images for images, _ in expected.values())
    assert answer["cost_usd"] == pytest.approx(sum(cost for _, cost in expected.values()))


def test_every_kind_of_submission_is_estimated_and_nothing_is_written_or_sent(
    api: Api, world: dict[str, Any]
) -> None:
    before, sends = row_counts(api), api.run_route.call_count
    for body, expected in estimate_bodies(world):
        answer = post(api, "/api/jobs/estimate", body, 200, headers={"Idempotency-Key": "k1"})
        check_estimate(answer, expected)
    rows = 'id,prompt,image_size\na,one,1K\nb,"two {x, y}",4K\n'
    response = api.client.post(
        "/api/jobs/import/estimate",
        data={"group_id": world["group_id"], "config": '{"model": "gemini-3-pro-image"}'},
        files={"file": ("rows.csv", rows.encode(), "text/csv")},
    )
    assert response.status_code == 200, response.text
    check_estimate(response.json(), {PRO: (3, price(PRO) + 2 * price(PRO, "4K"))})
    api.drain()
    assert row_counts(api) == before
    assert api.run_route.call_count == sends


def test_an_estimate_is_refused_as_its_submission_would_be(api: Api, world: dict[str, Any]) -> None:
    g = world["group_id"]
    bad_size = automatic(g, world["images"], model=FLASH, image_size="4K")
    assert "image_size" in post(api, "/api/jobs/estimate", bad_size, 422)["detail"]
    unknown = automatic("grp_" + "x" * 20, world["images"])
    assert post(api, "/api/jobs/estimate", unknown, 404)["detail"].startswith("group")
    too_many = {"mode": "preset", "preset_id": world["preset_id"], "pool_group_id": g,
                "count": 50}  # fmt: skip
    post(api, "/api/jobs/estimate", too_many, 409)
    post(api, "/api/jobs/estimate", {"mode": "rerun", "job_id": "nope"}, 404)


def test_each_submission_answers_its_estimate_and_the_job_its_cost(
    api: Api, world: dict[str, Any]
) -> None:
    """The 201 carries the same estimate as /estimate; the job keeps it, and its cost is the
    sum of its ended images' actual costs; the group's cost sums its jobs'."""
    for body, expected in estimate_bodies(world):
        if body["mode"] in ("automatic", "semi-automatic", "catalog"):
            answer = post(api, "/api/jobs/submit", body)
        elif body["mode"] == "variation":
            answer = post(api, f"/api/outputs/{body['output_id']}/variations", {"count": 3})
        elif body["mode"] == "rerun":
            answer = post(api, f"/api/jobs/{body['job_id']}/rerun", {})
        elif body["mode"] == "preset":
            fields = {"pool_group_id": body["pool_group_id"], "count": 2}
            answer = post(api, f"/api/presets/{body['preset_id']}/examples", fields)
        elif body["mode"] == "character-pack":
            answer = post(api, f"/api/characters/{body['character_id']}/packs", {"size": 5})
        else:
            answer = post(api, "/api/personas", {k: v for k, v in body.items() if k != "mode"})
        check_estimate(answer["estimate"], expected)
        for job in answer.get("jobs", [answer] if "progress" in answer else []):
            assert job["cost_usd"] == 0.0 and job["estimate_usd"] > 0
    finished = api.client.get(f"/api/jobs/{world['job_id']}").json()
    assert finished["estimate_usd"] == pytest.approx(2 * price(PRO))
    assert finished["cost_usd"] == pytest.approx(2 * price(PRO))
    counts = api.client.get(f"/api/groups/{world['group_id']}").json()["counts"]
    assert counts["cost_usd"] == pytest.approx(2 * price(PRO))


def test_a_job_adds_up_the_actual_costs_its_images_report(api: Api) -> None:
    group_id = api.group()
    job = post(api, "/api/jobs/submit", automatic(group_id, api.upload_ids(group_id, 3)))
    job_id = job["jobs"][0]["id"]
    assert job["estimate"]["cost_usd"] == pytest.approx(3 * price(DEFAULT_MODEL))
    report(api, job_id, [0.05, None, 0.02])
    answer = api.client.get(f"/api/jobs/{job_id}?image_limit=0").json()
    assert answer["cost_usd"] == pytest.approx(0.07)
    assert answer["estimate_usd"] == pytest.approx(3 * price(DEFAULT_MODEL))
    assert "cost $0.07 of an estimated $0.12" in api.client.get(f"/jobs/{job_id}").text
    assert [job["cost_usd"] for job in api.client.get("/api/jobs").json()["data"]] == [
        pytest.approx(0.07)
    ]


# -- spend caps ------------------------------------------------------------------------


def make_user(api: Api, name: str, cap: float | None, admin: bool = False) -> dict[str, str]:
    """A user with a monthly cap, and the headers that act as them."""
    with session_scope(api.platform.engine) as session:
        user = users.add_user(session, name, UserTier.PAID, admin=admin)
        users.set_cap(session, user, cap)
        _, secret = users.create_key(session, user)
    return {"Authorization": f"Bearer {secret}"}


def as_user(api: Api, headers: dict[str, str]) -> tuple[str, list[str]]:
    response = api.client.post("/api/groups", json={"name": "mine"}, headers=headers)
    assert response.status_code == 201, response.text
    group_id = response.json()["id"]
    files = [("files", (f"i{n}.png", png(n), "image/png")) for n in range(4)]
    uploaded = api.client.post(
        "/api/uploads", data={"group_id": group_id}, files=files, headers=headers
    )
    assert uploaded.status_code == 201, uploaded.text
    return group_id, [image["id"] for image in uploaded.json()["images"]]


def png(n: int) -> bytes:
    from tests.conftest import png_bytes

    return png_bytes(32 + n, 32)


def test_a_submission_over_the_cap_is_402_before_any_row_or_runpod_call(api: Api) -> None:
    headers = make_user(api, "ana", cap=1.0)
    group_id, images = as_user(api, headers)
    # 4 images x 2 = 8 at 0.101 = 0.808: within the cap, left in flight
    first = automatic(group_id, images, model=FLASH_31, image_size="2K", outputs_per_image=2)
    post(api, "/api/jobs/submit", first, headers=headers)
    api.drain()
    before, sends = row_counts(api), api.run_route.call_count
    second = automatic(group_id, images, model=FLASH_31, image_size="2K")  # 0.404 more
    refused = post(api, "/api/jobs/submit", second, 402, headers=headers)
    assert refused["detail"] == (
        "this submission's 4 images cost about $0.40; you have spent $0.81 of your $1.00 "
        "monthly cap, $0.81 of it in flight; nothing was submitted"
    )
    pack = {"mode": "persona", "group_id": group_id, "count": 1}
    persona = {k: v for k, v in pack.items() if k != "mode"}
    assert post(api, "/api/personas", persona, 402, headers=headers)["detail"].startswith(
        "this submission's 6 images cost about $0.20"
    )
    api.drain()
    assert row_counts(api) == before and api.run_route.call_count == sends
    post(api, "/api/jobs/submit", automatic(group_id, images[:1]), headers=headers)  # 0.039


def test_actual_costs_of_the_month_count_and_the_local_admin_has_no_cap(api: Api) -> None:
    headers = make_user(api, "bo", cap=0.5)
    group_id, images = as_user(api, headers)
    job = post(api, "/api/jobs/submit", automatic(group_id, images[:2]), headers=headers)
    report(api, job["jobs"][0]["id"], [0.2, 0.2])  # actual 0.40, more than the estimate
    with api.session() as session:
        user = session.exec(select(User).where(User.name == "bo")).one()
        spend = spending.month_spend(session, user.id)
        last_month = spending.month_spend(session, user.id, utcnow() + timedelta(days=40))
    assert spend.actual_usd == pytest.approx(0.4) and spend.in_flight_usd == 0
    assert last_month.actual_usd == 0
    refused = post(api, "/api/jobs/submit", automatic(group_id, images), 402, headers=headers)
    assert (
        "you have spent $0.40 of your $0.50 monthly cap, $0.00 of it in flight"
        in (refused["detail"])
    )
    with session_scope(api.platform.engine) as session:  # the local user's: no owner, no cap
        local_group = groups.create_group(session, "local", None)
        assert spending.lock_capped_owner(session, local_group.id) is None


def test_two_submissions_at_once_cannot_both_pass_the_cap(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each would fit alone, not both: the owner's row lock makes the second read the
    first's jobs (without it both read the same spend while the other plans)."""
    headers = make_user(api, "cy", cap=0.1)
    group_id, images = as_user(api, headers)
    body = AutomaticSubmit.model_validate(automatic(group_id, images[:2]))  # 0.078 each
    read = threading.Barrier(2, timeout=1.5)
    month_spend = spending.month_spend

    def slow_spend(session: Session, user_id: str, now: Any = None) -> spending.Spend:
        spend = month_spend(session, user_id, now)
        with contextlib.suppress(threading.BrokenBarrierError):
            read.wait()  # without the lock both get here before either writes
        return spend

    monkeypatch.setattr(spending, "month_spend", slow_spend)
    outcomes: list[str] = []

    with Session(api.platform.engine) as session:
        viewer = Viewer.of(users.find_user(session, "cy"))

    def submit() -> None:
        with Session(api.platform.engine, expire_on_commit=False) as session:
            try:
                submissions.submit(session, api.platform.settings, body, viewer)
                outcomes.append("201")
            except PaymentRequired:
                outcomes.append("402")

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["201", "402"]
    with api.session() as session:
        assert session.exec(select(func.count()).select_from(Job)).one() == 1


# -- usage -----------------------------------------------------------------------------


def test_usage_by_day_model_user_and_group(api: Api) -> None:
    admin = make_user(api, "root", cap=None, admin=True)
    ana = make_user(api, "ana", cap=None)
    bo = make_user(api, "bo", cap=None)
    ana_group, ana_images = as_user(api, ana)
    bo_group, bo_images = as_user(api, bo)
    one = post(api, "/api/jobs/submit", automatic(ana_group, ana_images[:2]), headers=ana)
    two = post(api, "/api/jobs/submit", automatic(ana_group, ana_images[:1], model=PRO),
               headers=ana)  # fmt: skip
    three = post(api, "/api/jobs/submit", automatic(bo_group, bo_images[:3]), headers=bo)
    report(api, one["jobs"][0]["id"], [0.039, 0.039])
    report(api, two["jobs"][0]["id"], [0.134])
    report(api, three["jobs"][0]["id"], [None] * 3, status="failed")
    today = utcnow().date().isoformat()

    def usage(headers: dict[str, str], **query: str) -> dict[str, Any]:
        response = api.client.get("/api/usage", params=query, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()

    by_day = usage(ana)
    assert [(b["key"], b["images"], b["succeeded"]) for b in by_day["buckets"]] == [(today, 3, 3)]
    assert by_day["cost_usd"] == pytest.approx(0.212)
    by_model = {b["key"]: b["cost_usd"] for b in usage(ana, group_by="model")["buckets"]}
    assert by_model == {FLASH: pytest.approx(0.078), PRO: pytest.approx(0.134)}
    everyone = usage(admin, group_by="user")["buckets"]
    assert {b["name"]: (b["images"], b["succeeded"]) for b in everyone} == {
        "ana": (3, 3),
        "bo": (3, 0),
    }
    assert usage(bo, group_by="user")["images"] == 3  # only their own
    by_group = usage(admin, group_by="group")["buckets"]
    assert {b["key"]: b["name"] for b in by_group} == {ana_group: "mine", bo_group: "mine"}
    assert usage(admin, **{"from": "2020-01-01", "to": "2020-01-31"})["buckets"] == []
    bad = api.client.get("/api/usage", params={"from": today, "to": "2020-01-01"}, headers=admin)
    assert bad.status_code == 422


def test_estimates_take_no_idempotency_record_and_the_mysql_relay_no_gap(api: Api) -> None:
    """A dry run hands out no event id (MySQL would not give it back, and the relay would
    wait for the gap)."""
    group_id = api.group()
    images = api.upload_ids(group_id, 1)
    with api.session() as session:
        last = session.exec(select(sa.func.max(Event.id))).one()
    post(api, "/api/jobs/estimate", automatic(group_id, images), 200)
    post(api, "/api/jobs/submit", automatic(group_id, images))
    with api.session() as session:
        first_new = session.exec(select(sa.func.min(Event.id)).where(Event.id > (last or 0))).one()
    assert first_new == (last or 0) + 1
