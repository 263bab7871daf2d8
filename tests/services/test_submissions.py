"""Submissions (control_plane/services/submissions.py) through the HTTP API: planning jobs,
outputs and dispatches for both modes, and refusing bad input without writing anything."""

import json

import pytest

from tests.fakes.api import Api


def test_submit_automatic_plans_one_output_per_image_in_chunks(api: Api) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 40)
    response = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "automatic",
            "prompt": "make it blue",
            "images": images,
            "config": {"aspect_ratio": "16:9", "seed": 7},
        },
    )
    assert response.status_code == 201, response.text
    job = response.json()["jobs"][0]
    assert job["progress"] == {
        "total": 40,
        "succeeded": 0,
        "failed": 0,
        "blocked": 0,
        "pending": 40,
    }
    api.drain()
    assert len(api.run_bodies) == 3  # 16 + 16 + 8
    sent = [item for body in api.run_bodies for item in body["input"]["items"]]
    assert sorted(item["params"]["seed"] for item in sent) == list(range(7, 47))
    first = api.run_bodies[0]
    assert first["policy"] == {"executionTimeout": 600_000, "ttl": 86_400_000}
    assert "token=" in first["webhook"] and "dispatch=" in first["webhook"]
    assert all(uri.startswith("file://") for item in sent for uri in item["reference_uris"])
    assert len(json.dumps(first)) < 20_000  # URIs, never image bytes
    detail = api.client.get(f"/api/jobs/{job['id']}").json()
    assert detail["status"] == "processing"
    assert {image["status"] for image in detail["images"]} == {"running"}
    assert detail["images"][0]["prompt"] == "make it blue" and detail["images"][0]["seed"] == 7


def test_submit_semi_automatic_spreads_sets_over_items(api: Api) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 3)
    response = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [
                {"images": images[:2], "prompt": "castle"},
                {"images": images[2:], "prompt": "forest"},
            ],
            "config": {"total_images": 40, "images_per_set": 4},
        },
    )
    assert response.status_code == 201, response.text
    jobs = response.json()["jobs"]
    assert len(jobs) == 10 and all(j["progress"]["total"] == 4 for j in jobs)
    assert [j["prompt"] for j in jobs] == ["castle", "forest"] * 5
    assert len({j["batch_id"] for j in jobs}) == 1
    api.drain()
    assert len(api.run_bodies) == 10  # one dispatch per set
    assert all(len(body["input"]["items"]) == 4 for body in api.run_bodies)
    listing = api.client.get(
        "/api/jobs", params={"group_id": group_id, "mode": "semi-automatic", "limit": 200}
    )
    assert len(listing.json()["data"]) == 10


@pytest.mark.parametrize(
    ("change", "status", "needle"),
    [
        ({"config": {"aspect_ratio": "7:3"}}, 422, "aspect_ratio"),
        ({"config": {"model": "dall-e"}}, 422, "unknown model"),
        ({"config": {"image_size": "4K"}}, 422, "image_size"),
        ({"images": ["img_missing"]}, 422, "not uploads or images of group"),
        ({"prompt": ""}, 422, "prompt"),
        ({"group_id": "grp_missing"}, 404, "does not exist"),
        ({"mode": "manual"}, 422, "mode"),
        ({"unexpected": 1}, 422, "unexpected"),
    ],
)
def test_submit_rejects_bad_input_and_writes_nothing(
    api: Api, change: dict, status: int, needle: str
) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 1)
    body = {"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images, **change}
    response = api.client.post("/api/jobs/submit", json=body)
    assert response.status_code == status, response.text
    assert needle in response.json()["detail"]
    assert api.client.get("/api/jobs").json()["data"] == []


def test_semi_automatic_limits(api: Api) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 4)
    uneven = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"images": images[:1], "prompt": "x"}],
            "config": {"total_images": 10, "images_per_set": 4},
        },
    )
    assert uneven.status_code == 422 and "multiple of images_per_set" in uneven.json()["detail"]
    too_many_refs = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"images": images, "prompt": "x"}],
            "config": {"model": "gemini-2.5-flash-image"},
        },
    )
    assert (
        too_many_refs.status_code == 422 and "at most 3 reference" in too_many_refs.json()["detail"]
    )
    unused_items = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"images": [image], "prompt": f"p{i}"} for i, image in enumerate(images)],
            "config": {"total_images": 8, "images_per_set": 4},
        },
    )
    assert unused_items.status_code == 422
    assert "4 items but only 2 set(s)" in unused_items.json()["detail"]
    assert api.client.get("/api/jobs").json()["data"] == []
