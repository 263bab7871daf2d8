"""Prompt permutations and N outputs per image in submissions (services/submissions.py),
through the HTTP API: what is planned, and what is refused without writing anything."""

from typing import Any

from sqlmodel import func, select

from control_plane.models import Job, Output
from tests.fakes.api import Api


def _rows(api: Api) -> tuple[int, int]:
    with api.session() as session:
        jobs = session.exec(select(func.count()).select_from(Job)).one()
        outputs = session.exec(select(func.count()).select_from(Output)).one()
    return jobs, outputs


def _automatic(api: Api, group_id: str, images: list[str], prompt: str, **config: Any) -> Any:
    return api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "automatic",
            "prompt": prompt,
            "images": images,
            "config": config,
        },
    )


def test_automatic_makes_outputs_per_image_per_prompt_image_major(api: Api) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 2)
    answer = _automatic(api, group_id, images, "a {red, blue} bird", seed=100, outputs_per_image=3)
    assert answer.status_code == 201, answer.text
    [job] = answer.json()["jobs"]
    assert job["progress"]["total"] == 2 * 2 * 3
    assert job["prompt"] == "a {red, blue} bird"  # the job keeps what was asked
    assert job["config"]["outputs_per_image"] == 3
    outputs = api.outputs(job["id"])
    assert [(o.reference_ids[0], o.prompt) for o in outputs] == [
        (image, prompt)
        for image in images
        for prompt in ("a red bird", "a blue bird")
        for _ in range(3)
    ]
    assert [o.seed for o in outputs] == list(range(100, 112))  # base seed + position
    assert all(o.prompt_id is None and o.tags is None for o in outputs)
    api.drain()
    sent = [item for body in api.run_bodies for item in body["input"]["items"]]
    assert sorted(item["params"]["seed"] for item in sent) == list(range(100, 112))


def test_outputs_per_image_is_checked_and_only_for_automatic(api: Api) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 1)
    for bad in (0, 9, "two"):
        answer = _automatic(api, group_id, images, "p", outputs_per_image=bad)
        assert answer.status_code == 422, answer.text
        assert "outputs_per_image" in answer.json()["detail"]
    semi = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"images": images, "prompt": "p"}],
            "config": {"outputs_per_image": 2},
        },
    )
    assert semi.status_code == 422
    assert "outputs_per_image is for automatic mode and imports" in semi.json()["detail"]
    assert "images_per_set" in semi.json()["detail"]
    assert _rows(api) == (0, 0)


def test_the_job_limit_counts_images_prompts_and_outputs_per_image(api: Api) -> None:
    api.platform.settings.submit_max_images = 30
    group_id = api.group()
    images = api.upload_ids(group_id, 4)
    over = _automatic(api, group_id, images, "{a, b} {c, d}", outputs_per_image=2)
    assert over.status_code == 422
    assert over.json()["detail"] == (
        "32 images in one job (4 images x 4 prompts x 2 outputs per image); the limit is 30"
    )
    assert _rows(api) == (0, 0)
    within = _automatic(api, group_id, images[:3], "{a, b} {c, d}", outputs_per_image=2)
    assert within.status_code == 201, within.text
    assert within.json()["jobs"][0]["progress"]["total"] == 24


def test_bad_permutations_in_a_submission_write_nothing(api: Api) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 1)
    unbalanced = _automatic(api, group_id, images, "a {red, blue bird")
    assert unbalanced.status_code == 422 and "never closed" in unbalanced.json()["detail"]
    over = _automatic(api, group_id, images, "{a,b,c,d,e,f,g,h,i,j}" * 4)
    assert over.status_code == 422
    assert "make 10,000 prompts; the limit is 1,000 per prompt" in over.json()["detail"]
    semi = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"images": images, "prompt": "ok"}, {"images": images, "prompt": "x}"}],
            "config": {"total_images": 8, "images_per_set": 4},
        },
    )
    assert semi.status_code == 422
    assert semi.json()["detail"].startswith("items[1].prompt: prompt permutations: unbalanced")
    assert _rows(api) == (0, 0)


def test_semi_automatic_items_expand_into_sets_of_their_own(api: Api) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 2)
    answer = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [
                {"images": images[:1], "prompt": "portrait, {studio, park}"},
                {"images": images[1:], "prompt": "walking"},
            ],
            "config": {"total_images": 12, "images_per_set": 2, "seed": 5},
        },
    )
    assert answer.status_code == 201, answer.text
    jobs = answer.json()["jobs"]
    assert [job["prompt"] for job in jobs] == [
        "portrait, studio",
        "portrait, park",
        "walking",
    ] * 2
    for job in jobs:
        outputs = api.outputs(job["id"])
        assert {o.prompt for o in outputs} == {job["prompt"]}
        assert [o.seed for o in outputs] == [5 + 2 * job["set_index"], 6 + 2 * job["set_index"]]
    assert jobs[0]["config"]["total_images"] == 12


def test_semi_automatic_needs_a_set_for_every_expanded_prompt(api: Api) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 1)
    answer = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [
                {"images": images, "prompt": "{a, b, c}"},
                {"images": images, "prompt": "d"},
            ],
            "config": {"total_images": 12, "images_per_set": 4},
        },
    )
    assert answer.status_code == 422
    assert answer.json()["detail"] == (
        "2 items make 4 prompts once their {…} permutations are expanded, each needing a set "
        "of its own, but there are only 3 set(s) (total_images 12 / images_per_set 4): raise "
        "total_images to at least 16 or send fewer items"
    )
    assert _rows(api) == (0, 0)
