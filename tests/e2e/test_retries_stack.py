"""Retries on the whole stack over real sockets (offline provider, local endpoint): a folder
uploaded twice stores each image once, and a submission sent twice with one
`Idempotency-Key` makes one job, which runs to the end."""

from tests.conftest import png_bytes
from tests.fakes.stack import Stack


def test_a_retried_upload_and_submission_create_nothing_twice(stack: Stack) -> None:
    http = stack.http
    group_id = stack.group()
    folder = [(f"photo {i}.png", png_bytes(40 + i, 30)) for i in range(3)]

    def upload(files: list[tuple[str, bytes]]) -> list[dict]:
        answer = http.post(
            "/api/uploads",
            data={"group_id": group_id},
            files=[("files", (name, data, "image/png")) for name, data in files],
            headers={"Idempotency-Key": f"upload-{len(files)}"},
        )
        assert answer.status_code == 201, answer.text
        return answer.json()["images"]

    first = upload(folder)
    again = upload([*folder, ("new.png", png_bytes(90, 30))])  # the folder, one file added
    assert [image["duplicate"] for image in again] == [True, True, True, False]
    assert [image["id"] for image in again[:3]] == [image["id"] for image in first]
    replayed = http.post(  # a retry of the first upload: httpx draws a new boundary
        "/api/uploads",
        data={"group_id": group_id},
        files=[("files", (name, data, "image/png")) for name, data in folder],
        headers={"Idempotency-Key": "upload-3"},
    )
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json()["images"] == first
    images = [image["id"] for image in again]

    body = {"group_id": group_id, "mode": "automatic", "prompt": "as ink", "images": images}
    headers = {"Idempotency-Key": "submit-once"}
    submitted = http.post("/api/jobs/submit", json=body, headers=headers)
    retried = http.post("/api/jobs/submit", json=body, headers=headers)
    assert submitted.status_code == retried.status_code == 201, retried.text
    assert retried.json() == submitted.json()
    assert retried.headers["idempotent-replayed"] == "true"
    changed = http.post("/api/jobs/submit", json={**body, "prompt": "as oil"}, headers=headers)
    assert changed.status_code == 422 and "different request body" in changed.text

    [job] = stack.wait_for([submitted.json()["jobs"][0]["id"]])
    assert job["status"] == "completed" and job["progress"]["succeeded"] == 4
    assert len(http.get("/api/jobs", params={"group_id": group_id}).json()["data"]) == 1
    assert http.get(f"/api/groups/{group_id}").json()["counts"]["uploads"] == 4
