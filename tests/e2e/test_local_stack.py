"""End to end on real sockets: control plane ⇄ local RunPod endpoint ⇄ worker handler.

Nothing of ours is mocked: uploads go through multipart HTTP, dispatches through the local
endpoint's cloud API, results come back by its webhook (or, when that is lost, by the
reconciler's /status polls), and the ZIP is read back file by file against its manifest.
"""

import hashlib
import time

import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from control_plane.models import Dispatch
from control_plane.settings import Settings
from tests.fakes.servers import reserve_socket, url_of
from tests.fakes.stack import Stack, check_zip_against_manifest, read_zip, run_stack


def test_automatic_200_images_end_to_end(stack: Stack) -> None:
    group_id = stack.group()
    images = stack.upload(group_id, 200)
    submitted = stack.http.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "automatic",
            "prompt": "same scene at golden hour",
            "images": images,
            "config": {
                "model": "gemini-3.1-flash-image",
                "image_size": "512",
                "aspect_ratio": "4:3",
                "seed": 100,
            },
        },
    )
    assert submitted.status_code == 201, submitted.text
    [job] = stack.wait_for([submitted.json()["jobs"][0]["id"]])
    assert job["status"] == "completed"
    assert job["progress"] == {
        "total": 200,
        "succeeded": 200,
        "failed": 0,
        "blocked": 0,
        "pending": 0,
    }
    assert {(image["width"], image["height"]) for image in job["images"]} == {(592, 440)}
    assert sorted(image["seed"] for image in job["images"]) == list(range(100, 300))
    assert [
        image["reference_ids"][0] for image in job["images"]
    ] == images  # one output per input, in order

    listing = stack.http.get(f"/api/download/{group_id}").json()
    assert len(listing) == 200
    first = stack.http.get(listing[0]["url"])
    assert (
        first.status_code == 200
        and hashlib.sha256(first.content).hexdigest() == listing[0]["sha256"]
    )

    content, archive, manifest = read_zip(stack, group_id)
    assert len(manifest) == 200 and all(line["status"] == "succeeded" for line in manifest)
    check_zip_against_manifest(archive, manifest)
    assert archive.namelist()[2].endswith("_photo-0.jpg")  # source name kept, sanitised
    again = read_zip(stack, group_id)[1]  # deterministic order and content (timestamps are "now")
    assert [(i.filename, i.CRC, i.file_size) for i in again.infolist()] == [
        (i.filename, i.CRC, i.file_size) for i in archive.infolist()
    ]
    assert len(content) == len(read_zip(stack, group_id)[0])
    group = stack.http.get(f"/api/groups/{group_id}").json()
    assert group["counts"]["succeeded"] == 200 and group["counts"]["uploads"] == 200


def test_semi_automatic_40_as_10_sets_of_4(stack: Stack) -> None:
    group_id = stack.group()
    refs = stack.upload(group_id, 3)
    submitted = stack.http.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [
                {"images": refs[:2], "prompt": "the same character, studio portrait"},
                {"images": refs[2:], "prompt": "the same character, walking in rain"},
            ],
            "config": {
                "total_images": 40,
                "images_per_set": 4,
                "model": "gemini-3.1-flash-image",
                "image_size": "512",
            },
        },
    )
    assert submitted.status_code == 201, submitted.text
    jobs = stack.wait_for([job["id"] for job in submitted.json()["jobs"]])
    assert len(jobs) == 10 and all(job["status"] == "completed" for job in jobs)
    assert sum(job["progress"]["succeeded"] for job in jobs) == 40
    assert {tuple(job["images"][0]["reference_ids"]) for job in jobs} == {
        tuple(refs[:2]),
        tuple(refs[2:]),
    }
    shas = {image["sha256"] for job in jobs for image in job["images"]}
    assert len(shas) == 40  # every image of every set differs (own seed)

    _, archive, manifest = read_zip(stack, group_id)
    assert len(manifest) == 40 and {line["set_index"] for line in manifest} == set(range(10))
    check_zip_against_manifest(archive, manifest)


def test_lost_webhooks_are_recovered_by_polling_status(settings: Settings) -> None:
    """Webhooks are hints: with every one lost, /status polling still finishes the job."""
    unreachable = reserve_socket()  # bound, never listening: every webhook fails to connect
    lossy = settings.model_copy(update={"webhook_grace_s": 0.5})
    for stack in run_stack(lossy, webhook_attempts=1):
        stack.settings.public_url = url_of(unreachable)
        group_id = stack.group()
        images = stack.upload(group_id, 20)
        submitted = stack.http.post(
            "/api/jobs/submit",
            json={
                "group_id": group_id,
                "mode": "automatic",
                "prompt": "x",
                "images": images,
                "config": {"model": "gemini-3.1-flash-image", "image_size": "512"},
            },
        )
        [job] = stack.wait_for([submitted.json()["jobs"][0]["id"]], timeout=60)
        assert job["status"] == "completed" and job["progress"]["succeeded"] == 20
    unreachable.close()


def test_official_runpod_client_is_not_needed_for_mixed_failures(
    stack: Stack, settings: Settings
) -> None:
    """A corrupt reference fails its image with a reason; its neighbours succeed; ZIP lists both."""
    group_id = stack.group()
    images = stack.upload(group_id, 3)
    storage_root = settings.storage_url
    job_images = stack.http.get(f"/api/download/{group_id}").json()
    assert job_images == []
    # break one reference on disk after upload, as a disk fault would
    from shared.storage import open_storage

    storage = open_storage(storage_root)
    victim = next(
        info.key
        for info in storage.list(f"groups/{group_id}/inputs")
        if images[1] in info.key and "thumb" not in info.key
    )
    storage.delete(victim)
    submitted = stack.http.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "automatic",
            "prompt": "x",
            "images": images,
            "config": {"model": "gemini-3.1-flash-image", "image_size": "512"},
        },
    )
    [job] = stack.wait_for([submitted.json()["jobs"][0]["id"]])
    assert job["status"] == "completed"
    assert [image["status"] for image in job["images"]] == ["succeeded", "failed", "succeeded"]
    assert "reference unreadable" in job["images"][1]["error"]
    _, archive, manifest = read_zip(stack, group_id, status="all")
    assert [line["status"] for line in manifest] == ["succeeded", "failed", "succeeded"]
    check_zip_against_manifest(archive, manifest)


def test_a_job_survives_two_endpoint_restarts(settings: Settings) -> None:
    """The local endpoint keeps its RunPod jobs in memory, so a restart loses every queued and
    running one, as an outage at RunPod would. The poller finds each lost dispatch (`/status`
    answers 404) and sends it again under the loss budget, not the attempt budget: two
    restarts mid-job cost no image."""
    quick = settings.model_copy(update={"webhook_grace_s": 1.0, "reconcile_interval_s": 0.2})
    for stack in run_stack(quick, offline_latency_ms=100):
        group_id = stack.group()
        images = stack.upload(group_id, 300)
        submitted = stack.http.post(
            "/api/jobs/submit",
            json={
                "group_id": group_id,
                "mode": "automatic",
                "prompt": "x",
                "images": images,
                "config": {"model": "gemini-3.1-flash-image", "image_size": "512"},
            },
        )
        job_id = submitted.json()["jobs"][0]["id"]
        for succeeded in (60, 160):
            _wait_until_succeeded(stack, job_id, succeeded)
            stack.endpoint.stop()
            time.sleep(0.5)
            stack.endpoint.start()
        [job] = stack.wait_for([job_id], timeout=90)
        assert job["status"] == "completed"
        assert job["progress"] == {
            "total": 300,
            "succeeded": 300,
            "failed": 0,
            "blocked": 0,
            "pending": 0,
        }
        assert _lost_dispatches(stack.settings, job_id) > 0  # the restarts did lose work


def _wait_until_succeeded(stack: Stack, job_id: str, succeeded: int) -> None:
    deadline = time.monotonic() + 60
    while stack.http.get(f"/api/jobs/{job_id}").json()["progress"]["succeeded"] < succeeded:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _lost_dispatches(settings: Settings, job_id: str) -> int:
    engine = sa.create_engine(settings.database_url)
    with Session(engine) as session:
        lost = session.exec(
            select(func.count()).where(
                col(Dispatch.job_id) == job_id, col(Dispatch.error).contains("no longer knows")
            )
        ).one()
    engine.dispose()
    return lost
