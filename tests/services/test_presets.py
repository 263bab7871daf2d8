"""Presets over reference pools (control_plane/services/presets.py) through the HTTP API:
creating and listing presets, picking references (balance, uneven splits, no reuse, a dry
pool, seeds, reset), the gallery and usage kept by the event consumer as examples succeed or
fail (also after a retry), and concurrent picks never overlapping (threads, both databases)."""

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from itertools import count
from typing import Any

import pytest
from sqlmodel import col, func, select

from control_plane.access import LOCAL
from control_plane.errors import Conflict
from control_plane.models import (
    Dispatch,
    EventCursor,
    Job,
    JobMode,
    Output,
    PresetExample,
    PresetUsage,
    PresetUsageStatus,
    Upload,
)
from control_plane.schemas import PresetExamplesRequest
from control_plane.services import presets
from control_plane.services.presets import even_split, pick
from tests.conftest import png_bytes
from tests.fakes.api import Api, finish_job, hook, succeeded_result

COLOURS = count()


def pool(api: Api, group_id: str, **per_value: int) -> dict[str, list[str]]:
    """Uploads of `group_id` with `{"gender": value}`, `n` for each value: their ids."""
    ids: dict[str, list[str]] = {}
    for value, n in per_value.items():
        files = []
        for _ in range(n):
            colour = next(COLOURS)
            image = png_bytes(24, 24, (colour % 256, colour // 256, 77))
            files.append(("files", (f"{value}{colour}.png", image, "image/png")))
        response = api.client.post(
            "/api/uploads",
            data={"group_id": group_id, "attributes": json.dumps({"gender": value})},
            files=files,
        )
        assert response.status_code == 201, response.text
        ids[value] = [image["id"] for image in response.json()["images"]]
    return ids


def preset(api: Api, **body: Any) -> dict[str, Any]:
    response = api.client.post(
        "/api/presets", json={"name": "headshot", "prompt": "studio headshot", **body}
    )
    assert response.status_code == 201, response.text
    return response.json()


def examples(api: Api, preset_id: str, **body: Any) -> dict[str, Any]:
    response = api.client.post(f"/api/presets/{preset_id}/examples", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def gender_of(api: Api, upload_ids: list[str]) -> list[str]:
    with api.session() as session:
        uploads = {u.id: u for u in session.exec(select(Upload)).all()}
    return [(uploads[i].attributes or {})["gender"] for i in upload_ids]


def usage(api: Api, preset_id: str) -> dict[str, str]:
    with api.session() as session:
        rows = session.exec(select(PresetUsage).where(PresetUsage.preset_id == preset_id)).all()
    return {row.upload_id: row.status for row in rows}


def counts(api: Api) -> tuple[int, int, int]:
    with api.session() as session:
        return tuple(  # type: ignore[return-value]
            session.exec(select(func.count()).select_from(table)).one()
            for table in (Job, Output, PresetUsage)
        )


# -- presets ------------------------------------------------------------------------------


def test_create_list_get_and_delete_presets(api: Api) -> None:
    made = preset(api, config={"aspect_ratio": "3:4"}, examples_per_reference=2)
    assert made["id"].startswith("pre_") and made["examples_per_reference"] == 2
    assert made["config"] == {
        "aspect_ratio": "3:4",
        "model": "gemini-2.5-flash-image",
        "image_size": "1K",
        "negative_prompt": None,
    }
    assert made["usage"] == {"used": 0, "reserved": 0} and made["examples"] == 0
    other = preset(api, name="other")
    listed = api.client.get("/api/presets", params={"limit": 1}).json()
    assert listed["total"] == 2 and [p["id"] for p in listed["data"]] == [other["id"]]
    shown = api.client.get(f"/api/presets/{made['id']}").json()
    assert shown["name"] == "headshot" and shown["gallery"] == {
        "data": [],
        "total": 0,
        "page": 1,
        "limit": 20,
    }
    assert api.client.delete(f"/api/presets/{made['id']}").status_code == 204
    assert api.client.get(f"/api/presets/{made['id']}").status_code == 404
    assert api.client.delete(f"/api/presets/{made['id']}").status_code == 404
    assert api.client.get("/api/presets/pre_nope").status_code == 404


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"config": {"model": "dall-e"}}, "unknown model 'dall-e'"),
        ({"config": {"aspect_ratio": "7:1"}}, "does not support aspect_ratio"),
        ({"examples_per_reference": 9}, "examples_per_reference"),
        ({"examples_per_reference": 0}, "examples_per_reference"),
        ({"prompt": "a {red, blue} jacket"}, "its braces make 2 prompts"),
        ({"prompt": "a {red"}, "brace"),
        ({"name": " "}, "name"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_presets_are_refused(api: Api, body: dict[str, Any], says: str) -> None:
    response = api.client.post(
        "/api/presets", json={"name": "headshot", "prompt": "studio headshot", **body}
    )
    assert response.status_code == 422, response.text
    assert says in response.json()["detail"]
    assert api.client.get("/api/presets").json()["total"] == 0


# -- picking ------------------------------------------------------------------------------


def test_even_split_gives_the_extra_to_values_in_sorted_order() -> None:
    assert even_split(20, ["male", "female"]) == {"female": 10, "male": 10}
    assert even_split(5, ["male", "female"]) == {"female": 3, "male": 2}
    assert even_split(7, ["c", "a", "b"]) == {"a": 3, "b": 2, "c": 2}
    assert even_split(1, ["b", "a"]) == {"a": 1, "b": 0}


def test_pick_is_balanced_reproducible_and_skips_the_unavailable() -> None:
    pool_rows = [(f"f{i}", {"gender": "female"}) for i in range(6)]
    pool_rows += [(f"m{i}", {"gender": "male"}) for i in range(6)]
    pool_rows += [("n0", None), ("n1", {"age": 3}), ("x0", {"gender": 7})]
    picks = pick(pool_rows, {"f0", "f1"}, 3, "gender", 42, "grp_pool")
    assert picks.split == {"7": 1, "female": 1, "male": 1}  # values as JSON unless strings
    assert picks.reference_ids[0] == "x0"
    assert pick(pool_rows, {"f0", "f1"}, 3, "gender", 42, "grp_pool") == picks
    assert not {"f0", "f1", "n0", "n1"} & set(picks.reference_ids)
    with pytest.raises(Conflict, match=r"\(gender\): 7 1 of 2 needed, female 4, male 6"):
        pick(pool_rows, {"f0", "f1"}, 6, "gender", 42, "grp_pool")
    plain = pick(pool_rows, set(), 15, None, 1, "grp_pool")
    assert sorted(plain.reference_ids) == sorted(i for i, _ in pool_rows) and plain.split is None
    with pytest.raises(Conflict, match="no upload in pool grp_pool has the attribute 'hair'"):
        pick(pool_rows, set(), 2, "hair", 1, "grp_pool")


def test_examples_are_balanced_and_make_one_job(api: Api) -> None:
    group_id = api.group("pool")
    ids = pool(api, group_id, female=5, male=5)
    api.upload(group_id, [("plain.png", png_bytes(30, 30))])  # no gender: never picked
    made = preset(api, examples_per_reference=2, config={"negative_prompt": "blur"})

    answer = examples(api, made["id"], pool_group_id=group_id, count=4, balance_by="gender")
    assert answer["split"] == {"female": 2, "male": 2}
    picked = answer["reference_ids"]
    assert gender_of(api, picked) == ["female", "female", "male", "male"]
    assert set(picked) <= set(ids["female"]) | set(ids["male"])
    [job] = answer["jobs"]
    assert job["mode"] == JobMode.PRESET and job["group_id"] == group_id
    assert job["batch_id"] == answer["batch_id"] and job["progress"]["total"] == 8
    assert job["config"]["split"] == {"female": 2, "male": 2}
    assert job["config"]["preset_id"] == made["id"] and job["config"]["balance_by"] == "gender"
    detail = api.client.get(f"/api/jobs/{job['id']}").json()
    assert [image["reference_ids"] for image in detail["images"]] == [
        [ref] for ref in picked for _ in range(2)
    ]
    assert {image["prompt"] for image in detail["images"]} == {"studio headshot"}
    with api.session() as session:
        row = session.get(Job, job["id"])
        assert row is not None and row.source_id == made["id"]
        outputs = session.exec(select(Output).where(Output.job_id == job["id"])).all()
        assert {output.params["negative_prompt"] for output in outputs} == {"blur"}
    assert usage(api, made["id"]) == dict.fromkeys(picked, PresetUsageStatus.RESERVED)
    assert api.client.get(f"/api/presets/{made['id']}").json()["usage"] == {
        "used": 0,
        "reserved": 4,
    }
    api.drain()
    [sent] = api.run_bodies
    assert len(sent["input"]["items"]) == 8
    assert all(len(item["reference_uris"]) == 1 for item in sent["input"]["items"])


def test_uneven_counts_and_values_say_how_they_split(api: Api) -> None:
    group_id = api.group("pool")
    pool(api, group_id, female=5, male=4, nonbinary=4)
    made = preset(api)
    answer = examples(api, made["id"], pool_group_id=group_id, count=7, balance_by="gender")
    assert answer["split"] == {"female": 3, "male": 2, "nonbinary": 2}
    assert Counter(gender_of(api, answer["reference_ids"])) == answer["split"]
    second = examples(api, made["id"], pool_group_id=group_id, count=5, balance_by="gender")
    assert second["split"] == {"female": 2, "male": 2, "nonbinary": 1}
    assert not set(answer["reference_ids"]) & set(second["reference_ids"])


def test_no_reuse_across_runs_then_a_dry_pool_is_409_and_writes_nothing(api: Api) -> None:
    group_id = api.group("pool")
    ids = pool(api, group_id, female=4, male=6)
    made = preset(api)
    body = {"pool_group_id": group_id, "count": 4, "balance_by": "gender"}
    first = examples(api, made["id"], **body)["reference_ids"]
    second = examples(api, made["id"], **body)["reference_ids"]
    assert not set(first) & set(second)
    assert set(first + second) >= set(ids["female"])  # every female reference is taken

    before = counts(api)
    dry = api.client.post(f"/api/presets/{made['id']}/examples", json=body)
    assert dry.status_code == 409
    assert dry.json()["detail"] == (
        f"not enough unused references in pool {group_id} (gender): female 0 of 2 needed, male 2"
    )
    assert counts(api) == before
    unbalanced = api.client.post(
        f"/api/presets/{made['id']}/examples", json={"pool_group_id": group_id, "count": 3}
    )
    assert unbalanced.status_code == 409
    assert unbalanced.json()["detail"] == (
        f"not enough unused references in pool {group_id}: 2 of 3 needed"
    )
    assert counts(api) == before
    # another preset has the whole pool to itself
    fresh = examples(api, preset(api, name="other")["id"], **{**body, "count": 8})
    assert fresh["split"] == {"female": 4, "male": 4}


def test_seed_picks_the_same_references_and_seeds_the_images(api: Api) -> None:
    group_id = api.group("pool")
    pool(api, group_id, female=6, male=6)
    body = {"pool_group_id": group_id, "count": 4, "balance_by": "gender", "seed": 7}
    one = examples(api, preset(api)["id"], **body)
    two = examples(api, preset(api, name="two")["id"], **body)
    assert one["reference_ids"] == two["reference_ids"]
    assert one["jobs"][0]["config"]["seed"] == 7
    other = examples(api, preset(api, name="three")["id"], **{**body, "seed": 8})
    assert other["reference_ids"] != one["reference_ids"]
    fixed = preset(api, name="fixed", config={"seed": 1000})
    job = examples(api, fixed["id"], **body)["jobs"][0]
    images = api.client.get(f"/api/jobs/{job['id']}").json()["images"]
    assert [image["seed"] for image in images] == [1000, 1001, 1002, 1003]


def test_examples_into_another_group_use_the_pool_references(api: Api) -> None:
    pool_id, out_id = api.group("pool"), api.group("out")
    ids = pool(api, pool_id, female=2, male=2)
    made = preset(api)
    answer = examples(api, made["id"], pool_group_id=pool_id, group_id=out_id, count=4)
    [job] = answer["jobs"]
    assert job["group_id"] == out_id and job["config"]["pool_group_id"] == pool_id
    assert sorted(answer["reference_ids"]) == sorted(ids["female"] + ids["male"])
    assert api.client.get(f"/api/groups/{out_id}").json()["counts"]["outputs"] == 4
    finish_job(api, job["id"], ["succeeded"] * 4)
    api.drain()
    assert api.client.get(f"/api/presets/{made['id']}").json()["examples"] == 4


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"pool_group_id": "grp_" + "0" * 26}, 404, "pool group grp_"),
        ({"pool_group_id": "nope"}, 404, "group nope does not exist"),
        ({"group_id": "grp_" + "0" * 26}, 404, "group grp_"),
        ({"count": 0}, 422, "count"),
        ({"count": 1_001}, 422, "count"),
        ({"balance_by": ""}, 422, "balance_by"),
        ({"seed": -1}, 422, "seed"),
        ({"extra": 1}, 422, "extra"),
    ],
)
def test_bad_example_requests_write_nothing(
    api: Api, body: dict[str, Any], status: int, says: str
) -> None:
    group_id = api.group("pool")
    pool(api, group_id, female=2)
    made = preset(api)
    before = counts(api)
    response = api.client.post(
        f"/api/presets/{made['id']}/examples", json={"pool_group_id": group_id, **body}
    )
    assert response.status_code == status, response.text
    assert says in response.json()["detail"]
    assert counts(api) == before
    unknown = api.client.post(
        "/api/presets/pre_" + "0" * 26 + "/examples", json={"pool_group_id": group_id}
    )
    assert unknown.status_code == 404 and "preset pre_" in unknown.json()["detail"]


# -- gallery and usage, following the jobs ------------------------------------------------


def test_failed_references_are_released_and_succeeded_ones_used(api: Api) -> None:
    group_id = api.group("pool")
    pool(api, group_id, female=3, male=3)
    made = preset(api, examples_per_reference=2)
    answer = examples(api, made["id"], pool_group_id=group_id, count=4, balance_by="gender")
    a, b, c, d = answer["reference_ids"]
    # a: both succeed, b: one of two, c: both fail, d: one blocked and one failed
    statuses = ["succeeded"] * 3 + ["failed"] * 3 + ["blocked", "failed"]
    finish_job(api, answer["jobs"][0]["id"], statuses)
    api.drain()
    assert usage(api, made["id"]) == {a: PresetUsageStatus.USED, b: PresetUsageStatus.USED}
    shown = api.client.get(f"/api/presets/{made['id']}").json()
    assert shown["usage"] == {"used": 2, "reserved": 0} and shown["examples"] == 3
    gallery = shown["gallery"]["data"]
    assert [example["upload_id"] for example in gallery] == [b, a, a]  # newest first
    assert all(example["url"] for example in gallery)  # the fake worker makes no thumbnails
    assert {example["prompt"] for example in gallery} == {"studio headshot"}
    # c and d may be picked again: with 1 female and 1 male never picked, 4 are free
    again = examples(api, made["id"], pool_group_id=group_id, count=4)
    assert {c, d} <= set(again["reference_ids"]) and not {a, b} & set(again["reference_ids"])


def test_a_retry_that_succeeds_marks_the_reference_used(api: Api) -> None:
    group_id = api.group("pool")
    pool(api, group_id, female=2)
    made = preset(api)
    answer = examples(api, made["id"], pool_group_id=group_id, count=2)
    job_id = answer["jobs"][0]["id"]
    finish_job(api, job_id, ["succeeded", "failed"])
    api.drain()
    first, second = answer["reference_ids"]
    assert usage(api, made["id"]) == {first: PresetUsageStatus.USED}

    assert api.client.post(f"/api/jobs/{job_id}/retry").status_code == 200
    api.drain()
    with api.session() as session:
        retried = session.exec(
            select(Output).where(Output.job_id == job_id, Output.position == 1)
        ).one()
    with api.session() as session:
        dispatch = session.exec(select(Dispatch).where(Dispatch.id == retried.dispatch_id)).one()
    body = {"version": 1, "dispatch_id": dispatch.id, "results": [succeeded_result(api, retried)]}
    assert hook(api, dispatch, {"status": "COMPLETED", "output": body}).status_code == 200
    api.drain()
    assert usage(api, made["id"]) == dict.fromkeys([first, second], PresetUsageStatus.USED)
    assert api.client.get(f"/api/presets/{made['id']}").json()["examples"] == 2


def test_gallery_is_newest_first_and_paginated(api: Api) -> None:
    group_id = api.group("pool")
    pool(api, group_id, female=3, male=3)
    made = preset(api)
    jobs = []
    for _ in range(2):
        answer = examples(api, made["id"], pool_group_id=group_id, count=3)
        finish_job(api, answer["jobs"][0]["id"], ["succeeded"] * 3)
        api.drain()
        jobs.append(api.client.get(f"/api/jobs/{answer['jobs'][0]['id']}").json())
    newest_first = [image["id"] for job in reversed(jobs) for image in reversed(job["images"])]
    pages = [
        api.client.get(f"/api/presets/{made['id']}", params={"page": n, "limit": 4}).json()
        for n in (1, 2)
    ]
    assert [p["gallery"]["total"] for p in pages] == [6, 6]
    shown = [example["output_id"] for p in pages for example in p["gallery"]["data"]]
    assert shown == newest_first
    first = pages[0]["gallery"]["data"][0]
    assert first["job_id"] == jobs[1]["id"] and first["added_at"].endswith("Z")
    # a deleted job takes its images out of the gallery
    assert api.client.delete(f"/api/jobs/{jobs[0]['id']}").status_code == 204
    assert api.client.get(f"/api/presets/{made['id']}").json()["gallery"]["total"] == 3


def test_reset_keeps_reservations_of_running_jobs(api: Api) -> None:
    group_id = api.group("pool")
    pool(api, group_id, female=2, male=2)
    made = preset(api)
    done = examples(api, made["id"], pool_group_id=group_id, count=2, balance_by="gender")
    finish_job(api, done["jobs"][0]["id"], ["succeeded"] * 2)
    api.drain()
    running = examples(api, made["id"], pool_group_id=group_id, count=2, balance_by="gender")
    assert (
        api.client.post(
            f"/api/presets/{made['id']}/examples", json={"pool_group_id": group_id, "count": 1}
        ).status_code
        == 409
    )

    reset = api.client.delete(f"/api/presets/{made['id']}/usage")
    assert reset.status_code == 200 and reset.json() == {"released": 2, "kept_reserved": 2}
    assert set(usage(api, made["id"])) == set(running["reference_ids"])
    again = examples(api, made["id"], pool_group_id=group_id, count=2, balance_by="gender")
    assert sorted(again["reference_ids"]) == sorted(done["reference_ids"])
    assert api.client.delete("/api/presets/pre_" + "0" * 26 + "/usage").status_code == 404


def test_deleting_a_preset_keeps_its_jobs(api: Api) -> None:
    group_id = api.group("pool")
    pool(api, group_id, female=2)
    made = preset(api)
    answer = examples(api, made["id"], pool_group_id=group_id, count=2)
    job_id = answer["jobs"][0]["id"]
    assert api.client.delete(f"/api/presets/{made['id']}").status_code == 204
    finish_job(api, job_id, ["succeeded"] * 2)  # its events find no preset: nothing added
    api.drain()
    with api.session() as session:
        for table in (PresetUsage, PresetExample):
            assert session.exec(select(func.count()).select_from(table)).one() == 0
    assert api.client.get(f"/api/jobs/{job_id}").json()["status"] == "completed"


# -- concurrency --------------------------------------------------------------------------


def test_concurrent_examples_never_pick_the_same_reference(api: Api) -> None:
    group_id = api.group("pool")
    pool(api, group_id, female=10, male=10)
    made = preset(api)
    request = PresetExamplesRequest(pool_group_id=group_id, count=4, balance_by="gender")

    def ask(_: int) -> list[str] | str:
        with api.platform.session() as session:
            try:
                _, picks = presets.request_examples(
                    session, api.platform.settings, made["id"], request, LOCAL
                )
            except Conflict as exc:
                return exc.message
        return picks.reference_ids

    with ThreadPoolExecutor(8) as threads:
        answers = list(threads.map(ask, range(8)))
    picked = [answer for answer in answers if isinstance(answer, list)]
    refused = [answer for answer in answers if isinstance(answer, str)]
    assert len(picked) == 5 and len(refused) == 3  # 20 references, 4 at a time
    every = [ref for refs in picked for ref in refs]
    assert len(every) == len(set(every)) == 20
    assert all("female 0 of 2 needed, male 0" in message for message in refused)
    with api.session() as session:
        reserved = session.exec(
            select(col(PresetUsage.upload_id)).where(PresetUsage.preset_id == made["id"])
        ).all()
        assert sorted(reserved) == sorted(every)
        jobs = session.exec(select(func.count()).select_from(Job)).one()
    assert jobs == 5


def test_creating_a_preset_twice_with_one_key_makes_one(api: Api) -> None:
    body = {"name": "headshot", "prompt": "studio headshot"}
    headers = {"Idempotency-Key": "preset-1"}
    first = api.client.post("/api/presets", json=body, headers=headers)
    again = api.client.post("/api/presets", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert api.client.get("/api/presets").json()["total"] == 1


def test_examples_retried_with_one_key_pick_and_submit_once(api: Api) -> None:
    group_id = api.group()
    pool(api, group_id, female=2, male=2)
    preset_id = preset(api)["id"]
    body = {"pool_group_id": group_id, "count": 2}
    headers = {"Idempotency-Key": "examples-1"}
    url = f"/api/presets/{preset_id}/examples"
    first = api.client.post(url, json=body, headers=headers)
    again = api.client.post(url, json=body, headers=headers)
    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert counts(api)[0] == 1 and len(usage(api, preset_id)) == 2


def test_events_handled_again_change_nothing(api: Api) -> None:
    """Were the consumer to see the events again (its cursor moved back), the gallery and
    the usage stay as they are, even after a reset."""
    group_id = api.group("pool")
    pool(api, group_id, female=2)
    made = preset(api)
    answer = examples(api, made["id"], pool_group_id=group_id, count=2)
    finish_job(api, answer["jobs"][0]["id"], ["succeeded", "failed"])
    api.drain()
    assert api.client.delete(f"/api/presets/{made['id']}/usage").json()["released"] == 1
    with api.session() as session:
        cursor = session.get(EventCursor, presets.CONSUMER)
        assert cursor is not None and cursor.position > 0
        cursor.position = 0
        session.add(cursor)
        session.commit()
    assert api.platform.relay.run_pass() > 0
    assert usage(api, made["id"]) == {}
    assert api.client.get(f"/api/presets/{made['id']}").json()["examples"] == 1


def test_a_preset_in_the_batch_lane_makes_its_examples_there(api: Api) -> None:
    group_id = api.group()
    pool(api, group_id, female=2)
    made = preset(api, config={"lane": "batch", "batch_deadline_s": 3600})
    [job] = examples(api, made["id"], pool_group_id=group_id, count=2)["jobs"]
    assert job["lane"] == "batch"
    assert job["estimate_usd"] == pytest.approx(2 * 0.0195)
    api.drain()
    assert [body["input"]["task"] for body in api.run_bodies] == ["batch_submit"]
    online = preset(api)
    [plain] = examples(api, online["id"], pool_group_id=group_id, count=2)["jobs"]
    assert plain["lane"] == "online"
