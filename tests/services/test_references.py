"""Reference images (control_plane/services/references.py): an upload or a succeeded image
(`out_…`) wherever references are accepted (submissions of both modes, imports), refused
with the reason otherwise, with nothing written."""

import sqlalchemy as sa
from sqlmodel import func, select, update

from control_plane.models import Job, Output
from tests.fakes.api import Api, finish_job


def made_images(api: Api, group_id: str, statuses: list[str]) -> list[str]:
    """An automatic job of the group whose images end as `statuses` say; their ids."""
    uploads = api.upload_ids(group_id, len(statuses))
    answer = api.client.post(
        "/api/jobs/submit",
        json={"group_id": group_id, "mode": "automatic", "prompt": "base", "images": uploads},
    )
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["jobs"][0]["id"]
    finish_job(api, job_id, statuses)
    images = api.client.get(f"/api/jobs/{job_id}").json()["images"]
    return [image["id"] for image in images]


def storage_uri(api: Api, output_id: str) -> str:
    with api.session() as session:
        output = session.get(Output, output_id)
        assert output is not None and output.storage_key is not None
        return api.platform.storage.uri(output.storage_key)


def job_count(api: Api) -> int:
    with api.session() as session:
        return session.exec(select(func.count()).select_from(Job)).one()


def test_a_succeeded_image_is_a_reference_in_both_modes(api: Api) -> None:
    group_id = api.group()
    [made] = made_images(api, group_id, ["succeeded"])
    [upload] = api.upload_ids(group_id, 1)
    automatic = api.client.post(
        "/api/jobs/submit",
        json={"group_id": group_id, "mode": "automatic", "prompt": "p", "images": [made, upload]},
    )
    assert automatic.status_code == 201, automatic.text
    semi = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"images": [made, upload], "prompt": "both"}],
            "config": {"total_images": 4, "images_per_set": 4},
        },
    )
    assert semi.status_code == 201, semi.text
    api.drain()
    sent = {body["input"]["job_id"]: body for body in api.run_bodies}  # sent in either order
    first, second = (sent[answer.json()["jobs"][0]["id"]] for answer in (automatic, semi))
    uri = storage_uri(api, made)
    assert first["input"]["items"][0]["reference_uris"] == [uri]
    assert all(item["reference_uris"][0] == uri for item in second["input"]["items"])
    assert len(second["input"]["items"]) == 4


def test_images_that_cannot_be_references_are_refused_with_the_reason(api: Api) -> None:
    group_id, other = api.group(), api.group("other")
    good, failed = made_images(api, group_id, ["succeeded", "failed"])
    [elsewhere] = made_images(api, other, ["succeeded"])
    [upload_elsewhere] = api.upload_ids(other, 1)
    pending_job = api.client.post(
        "/api/jobs/submit",
        json={"group_id": group_id, "mode": "automatic", "prompt": "p", "images": [good]},
    ).json()["jobs"][0]["id"]
    api.drain()
    [running] = [i["id"] for i in api.client.get(f"/api/jobs/{pending_job}").json()["images"]]
    [text] = made_images(api, group_id, ["succeeded"])
    with api.session() as session:
        session.exec(update(Output).where(sa.column("id") == text).values(kind="text"))
        session.commit()
    unknown = "out_" + "0" * 26
    before = job_count(api)
    cases = {
        failed: f"{failed} has not succeeded (status failed)",
        running: f"{running} has not succeeded (status running)",
        elsewhere: f"no image {elsewhere} in group {group_id}",
        upload_elsewhere: f"no upload {upload_elsewhere} in group {group_id}",
        unknown: f"no image {unknown} in group {group_id}",
        text: f"{text} is a text answer, not an image",
    }
    for image_id, reason in cases.items():
        for body in (
            {"mode": "automatic", "prompt": "p", "images": [good, image_id]},
            {"mode": "semi-automatic", "items": [{"images": [image_id], "prompt": "p"}]},
        ):
            answer = api.client.post("/api/jobs/submit", json={"group_id": group_id, **body})
            assert answer.status_code == 422, answer.text
            detail = answer.json()["detail"]
            assert detail == (
                f"1 image id(s) cannot be used as references of group {group_id}: {reason}"
            )
    everything = api.client.post(
        "/api/jobs/submit",
        json={"group_id": group_id, "mode": "automatic", "prompt": "p", "images": list(cases)},
    )
    assert everything.status_code == 422
    assert all(reason in everything.json()["detail"] for reason in cases.values())
    assert job_count(api) == before


def test_an_import_row_may_name_a_succeeded_image(api: Api) -> None:
    group_id = api.group()
    good, failed = made_images(api, group_id, ["succeeded", "failed"])
    before = job_count(api)
    refused = api.client.post(
        "/api/jobs/import",
        data={"group_id": group_id},
        files={"file": ("rows.csv", f"prompt,image\na,{good}\nb,{failed}\n".encode(), "text/csv")},
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"] == [
        {"row": 2, "column": "image", "message": f"{failed} has not succeeded (status failed)"}
    ]
    assert job_count(api) == before
    imported = api.client.post(
        "/api/jobs/import",
        data={"group_id": group_id},
        files={"file": ("rows.csv", f"prompt,image\na,{good}\nb,\n".encode(), "text/csv")},
    )
    assert imported.status_code == 201, imported.text
    api.drain()
    items = api.run_bodies[-1]["input"]["items"]
    assert [item["reference_uris"] for item in items] == [[storage_uri(api, good)], []]
