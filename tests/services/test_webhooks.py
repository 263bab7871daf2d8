"""Webhooks to users' own URLs (services/webhooks.py, control_plane/deliveries.py) through the
API: every kind of submission stores its webhook; bad URLs, production's rules and missing
secrets refused with nothing written; each event kind delivered signed to a real local
receiver, filtered by `events`; the deliveries listed to the job's owner only."""

import base64
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlmodel import func, select

from control_plane.models import Job, WebhookDelivery
from control_plane.services import users
from control_plane.settings import Settings
from tests.conftest import png_bytes
from tests.fakes.api import Api, answer_text_job, finish_job
from tests.fakes.receiver import HANG, Receiver, run_receiver, verify

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
EVERYTHING = ["job.completed", "job.failed", "job.cancelled"] + [
    f"image.{status}" for status in ("succeeded", "failed", "blocked")
]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_secret": SECRET, "webhook_retry_delays_s": "0.2"})


@pytest.fixture
def receiver(api: Api) -> Iterator[Receiver]:
    with run_receiver() as receiver:
        api.runpod.route(host="127.0.0.1").pass_through()  # RunPod stays mocked
        yield receiver


def submit(api: Api, group_id: str, n: int = 1, **extra: Any) -> Any:
    body = {
        "group_id": group_id,
        "mode": "automatic",
        "prompt": "a watercolour",
        "images": api.upload_ids(group_id, n),
        **extra,
    }
    return api.client.post("/api/jobs/submit", json=body)


def job_id_of(response: Any) -> str:
    assert response.status_code == 201, response.text
    return response.json()["jobs"][0]["id"]


def settled_deliveries(api: Api, job_id: str, timeout_s: float = 30) -> list[dict[str, Any]]:
    """The job's deliveries once none is waiting: a receiver's answer reaches the receiver
    before the deliverer records it."""
    deadline = time.monotonic() + timeout_s
    while True:
        listed = api.client.get(f"/api/jobs/{job_id}/webhooks").json()["data"]
        if all(d["status"] != "pending" for d in listed) or time.monotonic() > deadline:
            return listed
        time.sleep(0.05)


def count_rows(api: Api, table: type) -> int:
    with api.session() as session:
        return session.exec(select(func.count()).select_from(table)).one()


def test_every_kind_of_submission_stores_its_webhook(api: Api) -> None:
    hook = {"url": "http://127.0.0.1:9/hook", "events": ["image.failed", "job.failed"]}
    group_id = api.group()
    images = api.upload_ids(group_id, 2)
    answers = {
        "automatic": api.client.post(
            "/api/jobs/submit",
            json={"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images}
            | {"webhook": hook},
        ),
        "semi-automatic": api.client.post(
            "/api/jobs/submit",
            json={
                "group_id": group_id,
                "mode": "semi-automatic",
                "items": [{"images": images, "prompt": "p"}],
                "config": {"total_images": 2, "images_per_set": 2},
                "webhook": hook,
            },
        ),
        "import": api.client.post(
            "/api/jobs/import",
            data={"group_id": group_id, "webhook": json.dumps(hook)},
            files={"file": ("rows.csv", b"prompt\na cat\n", "text/csv")},
        ),
        "persona": api.client.post(
            "/api/personas", json={"group_id": group_id, "count": 1, "webhook": hook}
        ),
    }
    catalog = api.client.post(
        "/api/catalogs",
        json={"name": "c", "prompts": [{"id": "a", "tags": ["t"], "prompt": "a dog"}]},
    ).json()
    answers["catalog"] = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "catalog",
            "catalog_id": catalog["id"],
            "tags": ["t"],
            "count": 1,
            "webhook": hook,
        },
    )
    source = job_id_of(submit(api, group_id))
    finish_job(api, source, ["succeeded"])
    output_id = api.outputs(source)[0].id
    answers["variations"] = api.client.post(
        f"/api/outputs/{output_id}/variations", json={"count": 2, "webhook": hook}
    )
    answers["rerun"] = api.client.post(f"/api/jobs/{source}/rerun", json={"webhook": hook})
    character = api.client.post(
        "/api/characters", json={"name": "Mina", "references": images[:1]}
    ).json()
    answers["pack"] = api.client.post(
        f"/api/characters/{character['id']}/packs", json={"size": 5, "webhook": hook}
    )
    preset = api.client.post("/api/presets", json={"name": "h", "prompt": "headshot"}).json()
    answers["preset"] = api.client.post(
        f"/api/presets/{preset['id']}/examples",
        json={"pool_group_id": group_id, "count": 2, "webhook": hook},
    )
    for kind, answer in answers.items():
        assert answer.status_code == 201, (kind, answer.text)
        body = answer.json()
        job_ids = (
            [body["personas"][0]["data_job_id"]]
            if kind == "persona"
            else [body["id"]]
            if kind == "rerun"
            else [job["id"] for job in body["jobs"]]
        )
        for job_id in job_ids:
            assert api.client.get(f"/api/jobs/{job_id}").json()["webhook"] == hook, kind
    plain = api.client.post(f"/api/jobs/{source}/rerun")  # no body: no webhook
    assert plain.status_code == 201 and plain.json()["webhook"] is None
    url_only = api.client.post(
        "/api/jobs/import",
        data={"group_id": group_id, "webhook": "https://example.com/h"},
        files={"file": ("rows.csv", b"prompt\na cat\n", "text/csv")},
    )
    assert url_only.json()["jobs"][0]["webhook"] == {
        "url": "https://example.com/h",
        "events": ["job.completed", "job.failed", "job.cancelled"],
    }


def test_bad_webhooks_are_refused_with_nothing_written(api: Api) -> None:
    group_id = api.group()
    cases = [
        ({"url": "ftp://example.com/x"}, "not an http(s) URL"),
        ({"url": "example.com/hook"}, "not an http(s) URL"),
        ({"url": "http://"}, "not an http(s) URL"),
        ({"url": "http://example.com:99999/"}, "webhook.url"),
        ({"url": "http://example.com/", "events": ["job.exploded"]}, "job.completed"),
        ({"url": "http://example.com/", "events": []}, "webhook.events"),
        ({"url": "http://example.com/", "secret": "x"}, "secret"),
    ]
    for hook, words in cases:
        answer = submit(api, group_id, webhook=hook)
        assert answer.status_code == 422, (hook, answer.text)
        assert words in answer.text, (hook, answer.text)
    bad_form = api.client.post(
        "/api/jobs/import",
        data={"group_id": group_id, "webhook": '{"url": "gopher://x"}'},
        files={"file": ("rows.csv", b"prompt\na cat\n", "text/csv")},
    )
    assert bad_form.status_code == 422 and "webhook" in bad_form.text
    assert count_rows(api, Job) == 0


def test_production_takes_only_https_to_public_addresses(api: Api) -> None:
    api.platform.settings = api.platform.settings.model_copy(update={"environment": "production"})
    group_id = api.group()
    refused = {
        "http://93.184.215.14/hook": "not https",
        "https://127.0.0.1/hook": "127.0.0.1, not a public address",
        "https://localhost:8443/hook": "not a public address",
        "https://10.1.2.3/hook": "10.1.2.3, not a public address",
        "https://192.168.0.7/hook": "not a public address",
        "https://169.254.169.254/latest/meta-data": "not a public address",
        "https://100.64.0.1/": "not a public address",
        "https://0.0.0.0/": "not a public address",
        "https://[::1]/hook": "::1, not a public address",
        "https://[::ffff:127.0.0.1]/hook": "not a public address",
        "https://[fd00::1]/hook": "not a public address",
        "https://no-such-host.invalid/hook": "does not resolve",
    }
    for url, words in refused.items():
        answer = submit(api, group_id, webhook={"url": url})
        assert answer.status_code == 422, (url, answer.text)
        assert words in answer.json()["detail"], (url, answer.text)
    assert count_rows(api, Job) == 0
    accepted = submit(api, group_id, webhook={"url": "https://93.184.215.14/hook"})
    assert accepted.status_code == 201, accepted.text


def test_a_signing_secret_is_needed(api: Api) -> None:
    """The local user's webhooks need PIXELFLEET_WEBHOOK_SECRET; a user's, their own secret
    (made by `pixelfleet users webhook-secret`); nothing is written without one."""
    group_id = api.group()
    api.platform.settings = api.platform.settings.model_copy(update={"webhook_secret": ""})
    answer = submit(api, group_id, webhook={"url": "http://127.0.0.1:9/"})
    assert answer.status_code == 422 and "PIXELFLEET_WEBHOOK_SECRET" in answer.json()["detail"]

    with api.platform.session_scope() as session:
        mina = users.add_user(session, "mina", users.UserTier.FREE)
        _, key = users.create_key(session, mina)
    auth = {"Authorization": f"Bearer {key}"}
    own_group = api.client.post("/api/groups", json={"name": "mine"}, headers=auth).json()["id"]
    images = api.client.post(
        "/api/uploads",
        data={"group_id": own_group},
        files=[("files", ("a.png", png_bytes(), "image/png"))],
        headers=auth,
    ).json()["images"]
    body = {
        "group_id": own_group,
        "mode": "automatic",
        "prompt": "p",
        "images": [images[0]["id"]],
        "webhook": {"url": "http://127.0.0.1:9/"},
    }
    refused = api.client.post("/api/jobs/submit", json=body, headers=auth)
    assert refused.status_code == 422, refused.text
    assert "pixelfleet users webhook-secret mina" in refused.json()["detail"]
    assert count_rows(api, Job) == 0
    with api.platform.session_scope() as session:
        users.new_webhook_secret(session, users.find_user(session, "mina"))
    accepted = api.client.post("/api/jobs/submit", json=body, headers=auth)
    assert accepted.status_code == 201, accepted.text


def test_each_event_is_delivered_signed_as_asked(api: Api, receiver: Receiver) -> None:
    group_id = api.group()
    everything = job_id_of(
        submit(api, group_id, 3, webhook={"url": f"{receiver.url}/all", "events": EVERYTHING})
    )
    only_images = job_id_of(
        submit(
            api,
            group_id,
            3,
            webhook={"url": f"{receiver.url}/images", "events": ["image.failed", "image.blocked"]},
        )
    )
    default = job_id_of(submit(api, group_id, 2, webhook={"url": f"{receiver.url}/default"}))
    unwatched = job_id_of(submit(api, group_id, 1))
    for job_id in (everything, only_images):
        finish_job(api, job_id, ["succeeded", "failed", "blocked"])
    finish_job(api, unwatched, ["succeeded"])
    assert api.client.post(f"/api/jobs/{default}/cancel").status_code == 200

    received = receiver.wait_for("/all", 4)
    for request in receiver.received:
        verify(SECRET, request.headers, request.body)
    by_type = {request.json["type"]: request.json for request in received}
    assert sorted(by_type) == sorted(
        ["image.succeeded", "image.failed", "image.blocked", "job.completed"]
    )
    outputs = api.outputs(everything)
    job = by_type["job.completed"]["data"]["job"]
    assert job["id"] == everything and job["status"] == "completed"
    assert (job["total"], job["succeeded"], job["failed"], job["blocked"]) == (3, 1, 1, 1)
    image = by_type["image.succeeded"]["data"]["image"]
    assert image["id"] == outputs[0].id and image["status"] == "succeeded"
    assert image["url"] == f"{api.platform.settings.public_url}/api/outputs/{outputs[0].id}/file"
    failed = by_type["image.failed"]["data"]["image"]
    assert failed == {
        "id": outputs[1].id,
        "position": 1,
        "status": "failed",
        "error": "failed on purpose",
        "url": None,
    }
    assert by_type["image.failed"]["timestamp"].endswith("Z")
    assert sorted(r.json["type"] for r in receiver.wait_for("/images", 2)) == [
        "image.blocked",
        "image.failed",
    ]
    [cancelled] = receiver.wait_for("/default", 1)
    assert cancelled.json["type"] == "job.cancelled"
    assert cancelled.json["data"]["job"]["status"] == "cancelled"
    assert len({request.id for request in receiver.received}) == len(receiver.received) == 7

    listed = settled_deliveries(api, everything)
    assert sorted(d["event_type"] for d in listed) == sorted(by_type)
    assert {(d["status"], d["attempts"], d["last_status_code"]) for d in listed} == {
        ("delivered", 1, 204)
    }
    assert {d["id"] for d in listed} == {r.id for r in received}
    first = api.client.get(f"/api/jobs/{everything}/webhooks", params={"limit": 3}).json()
    rest = api.client.get(
        f"/api/jobs/{everything}/webhooks", params={"limit": 3, "cursor": first["next"]}
    ).json()
    assert first["data"] + rest["data"] == listed and rest["next"] is None
    assert api.client.get(f"/api/jobs/{unwatched}/webhooks").json()["data"] == []
    bad = api.client.get(f"/api/jobs/{everything}/webhooks", params={"cursor": "nope"})
    assert bad.status_code == 422 and "cursor" in bad.text
    assert count_rows(api, WebhookDelivery) == 7


def test_deliveries_are_shown_to_the_jobs_owner_only(api: Api) -> None:
    with api.platform.session_scope() as session:
        keys = {}
        for name in ("mina", "otto"):
            user = users.add_user(session, name, users.UserTier.FREE)
            users.new_webhook_secret(session, user)
            keys[name] = {"Authorization": f"Bearer {users.create_key(session, user)[1]}"}
    group_id = api.client.post("/api/groups", json={"name": "g"}, headers=keys["mina"]).json()["id"]
    images = api.client.post(
        "/api/uploads",
        data={"group_id": group_id},
        files=[("files", ("a.png", png_bytes(), "image/png"))],
        headers=keys["mina"],
    ).json()["images"]
    body = {
        "group_id": group_id,
        "mode": "automatic",
        "prompt": "p",
        "images": [images[0]["id"]],
        "webhook": {"url": "http://127.0.0.1:9/"},
    }
    job_id = job_id_of(api.client.post("/api/jobs/submit", json=body, headers=keys["mina"]))
    mine = api.client.get(f"/api/jobs/{job_id}/webhooks", headers=keys["mina"])
    assert mine.status_code == 200 and mine.json()["data"] == []
    theirs = api.client.get(f"/api/jobs/{job_id}/webhooks", headers=keys["otto"])
    assert theirs.status_code == 404 and job_id in theirs.text


def test_a_refusing_receiver_is_retried_until_it_takes_the_message(
    api: Api, receiver: Receiver
) -> None:
    """Two 500s, then a 2xx: three attempts of one message (one `webhook-id`, each signed
    afresh), delivered once; a redirect is not followed (it counts as a refusal)."""
    receiver.script("/flaky", 500, 302)
    job_id = job_id_of(submit(api, api.group(), webhook={"url": f"{receiver.url}/flaky"}))
    finish_job(api, job_id, ["succeeded"])
    attempts = receiver.wait_for("/flaky", 3)
    assert [request.status for request in attempts] == [500, 302, 204]
    assert len({request.id for request in attempts}) == 1
    assert len({request.body for request in attempts}) == 1
    for request in attempts:
        verify(SECRET, request.headers, request.body)
    assert attempts[1].arrived - attempts[0].answered >= 0.2  # PIXELFLEET_WEBHOOK_RETRY_DELAYS_S
    [delivery] = settled_deliveries(api, job_id)
    assert delivery["status"] == "delivered" and delivery["attempts"] == 3
    assert delivery["last_status_code"] == 204 and delivery["last_error"] is None
    assert delivery["next_attempt_at"] is None and delivery["delivered_at"]
    assert len(receiver.at("/flaky")) == 3


def test_a_message_no_one_takes_fails_after_the_retry_window(api: Api, receiver: Receiver) -> None:
    api.platform.settings = api.platform.settings.model_copy(
        update={"webhook_retry_window_s": 1.0, "webhook_retry_delays_s": "0.1,0.3"}
    )
    receiver.script("/down", *[503] * 100)
    job_id = job_id_of(submit(api, api.group(), webhook={"url": f"{receiver.url}/down"}))
    finish_job(api, job_id, ["failed"])
    deadline = time.monotonic() + 30
    while True:
        deliveries = api.client.get(f"/api/jobs/{job_id}/webhooks").json()["data"]
        if deliveries and deliveries[0]["status"] != "pending":
            break
        assert time.monotonic() < deadline, deliveries
        time.sleep(0.1)
    [delivery] = deliveries
    assert delivery["status"] == "failed" and delivery["event_type"] == "job.failed"
    assert delivery["last_status_code"] == 503 and delivery["last_error"].startswith("HTTP 503")
    assert delivery["attempts"] == len(receiver.at("/down")) >= 3
    requests = receiver.at("/down")
    assert requests[-1].arrived - requests[0].arrived >= 1.0 - 0.3  # tried through the window


def test_a_personas_later_stages_keep_its_webhook(api: Api) -> None:
    hook = {"url": "http://127.0.0.1:9/hook", "events": ["job.failed"]}
    group_id = api.group()
    answer = api.client.post(
        "/api/personas", json={"group_id": group_id, "count": 1, "webhook": hook}
    )
    assert answer.status_code == 201, answer.text
    [created] = answer.json()["personas"]
    data = {
        "name": "Amara Mensah",
        "age": 29,
        "gender": "female",
        "ethnicity": "Black",
        "bio": "Amara is a nurse from Accra.",
        "appearance": "short curly black hair",
        "style": "sporty",
        "tags": ["nurse", "running", "sporty"],
    }
    answer_text_job(api, created["data_job_id"], json.dumps(data))
    api.drain()
    base_job = api.client.get(f"/api/personas/{created['id']}").json()["base_job_id"]
    assert api.client.get(f"/api/jobs/{base_job}").json()["webhook"] == hook
    finish_job(api, base_job, ["succeeded"])
    api.drain()
    variations = api.client.get(f"/api/personas/{created['id']}").json()["variations_job_id"]
    assert api.client.get(f"/api/jobs/{variations}").json()["webhook"] == hook


def test_attempts_in_flight_are_bounded(api: Api, receiver: Receiver) -> None:
    """With one slot, a hanging receiver holds the next message back until it answers (the
    service does not spin meanwhile: it is woken when the attempt ends)."""
    api.platform.settings = api.platform.settings.model_copy(update={"webhook_concurrency": 1})
    receiver.script("/hang", HANG)
    group_id = api.group()
    held = job_id_of(submit(api, group_id, webhook={"url": f"{receiver.url}/hang"}))
    finish_job(api, held, ["succeeded"])
    deadline = time.monotonic() + 30
    while not receiver.at("/hang"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    later = job_id_of(submit(api, group_id, webhook={"url": f"{receiver.url}/later"}))
    finish_job(api, later, ["succeeded"])
    passes = count_passes(api)
    time.sleep(1.0)
    assert receiver.at("/later") == [] and len(passes) < 10
    receiver.release()
    [told] = receiver.wait_for("/later", 1)
    [hung] = receiver.wait_for("/hang", 1)
    assert hung.answered is not None and told.arrived > hung.answered - 0.01


def count_passes(api: Api) -> list[float]:
    """From now on, when each pass of the webhooks service began."""
    loop = api.platform.loops["webhooks"]
    step, passes = loop.step, []

    async def counted() -> Any:
        passes.append(time.monotonic())
        return await step()

    loop.step = counted
    return passes
