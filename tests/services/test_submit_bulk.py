"""Submissions written in bulk (control_plane/lifecycle.py `add_job`, `db.insert_many`): the
rows are what the plan says, dispatches are sized to the job (`lifecycle.dispatch_chunk`),
and a refused submission writes nothing."""

import json
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col, func, select

from control_plane import lifecycle
from control_plane.models import Dispatch, Event, EventKind, Group, Job, Output
from control_plane.runpod.rate import TokenBucket
from control_plane.services import references
from control_plane.settings import Settings
from shared.model_table import model_table
from tests.fakes.api import Api

MODEL = "gemini-2.5-flash-image"


def submit(api: Api, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    answer = api.client.post("/api/jobs/submit", json=body)
    assert answer.status_code == status, answer.text
    result: dict[str, Any] = answer.json()
    return result


def counts(api: Api) -> dict[str, int]:
    with api.session() as session:
        return {
            model.__name__: session.exec(select(func.count()).select_from(model)).one()
            for model in (Job, Output, Dispatch, Event)
        }


def test_a_job_written_in_bulk_holds_what_its_plan_says(api: Api) -> None:
    """Positions image by image, seeds from the base seed, permutations, references, params,
    one dispatch per chunk in position order, counters, estimate and events."""
    api.platform.settings.dispatch_max_per_job = 2  # 12 images: chunks of 16 still
    group_id = api.group()
    images = api.upload_ids(group_id, 3)
    answer = submit(
        api,
        {
            "group_id": group_id,
            "mode": "automatic",
            "prompt": "a {red, blue} car",
            "images": images,
            "config": {"seed": 7, "outputs_per_image": 2, "negative_prompt": "blur"},
        },
    )
    job_id = answer["jobs"][0]["id"]
    price = model_table()[MODEL].price_for("1K")
    assert answer["estimate"]["images"] == 12
    assert answer["estimate"]["cost_usd"] == pytest.approx(12 * price)
    with api.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.total, job.succeeded, job.failed, job.blocked) == (12, 0, 0, 0)
        assert job.estimate_usd == pytest.approx(12 * price) and job.cost_usd == 0
        outputs = session.exec(
            select(Output).where(Output.job_id == job_id).order_by(col(Output.position))
        ).all()
        dispatches = session.exec(
            select(Dispatch)
            .where(Dispatch.job_id == job_id)
            .order_by(col(Dispatch.created_at), col(Dispatch.id))
        ).all()
        events = session.exec(
            select(Event).where(Event.job_id == job_id).order_by(col(Event.id))
        ).all()
        raw_tags = session.connection().execute(
            sa.text("SELECT tags FROM outputs WHERE job_id = :job"), {"job": job_id}
        )
        assert {row[0] for row in raw_tags} == {"null"}  # JSON null, as the ORM wrote it
    prompts = ["a red car", "a red car", "a blue car", "a blue car"]
    assert [(o.position, o.seed, o.prompt, o.reference_ids) for o in outputs] == [
        (position, 7 + position, prompts[position % 4], [images[position // 4]])
        for position in range(12)
    ]
    params = {"model": MODEL, "aspect_ratio": "1:1", "image_size": "1K", "negative_prompt": "blur"}
    # The sender, woken by the commit, may have sent the dispatch meanwhile (then its images
    # are running, all of them in the one statement that recorded the send): either way every
    # image was written pending.
    assert {output.status for output in outputs} in ({"pending"}, {"running"})
    for output in outputs:
        assert (output.kind, output.model, output.params) == ("image", MODEL, params)
        assert (output.group_id, output.attempts, output.tags, output.usage) == (
            group_id,
            0,
            None,
            None,
        )
        assert output.storage_key is None
        assert output.status == "running" or output.created_at == output.updated_at
    assert len(dispatches) == 1 and {o.dispatch_id for o in outputs} == {dispatches[0].id}
    assert [e.kind for e in events][:2] == [EventKind.JOB_QUEUED, EventKind.DISPATCH_QUEUED]
    assert events[0].data == {"total": 12} and events[1].data == {"attempt": 1}


def test_every_row_of_a_big_job_holds_what_its_plan_says(api: Api) -> None:
    """4,500 images (insert batches of 2,000): each row's position, seed, prompt, reference,
    dispatch and shared columns; what every row shares (the job, params, timestamps…) is
    bound once per statement, not once per row."""
    group_id = api.group()
    images = api.upload_ids(group_id, 3)
    statements: list[tuple[int, str]] = []  # (values bound, first words)

    def note(
        _conn: object, _cursor: object, sql: str, parameters: Any, _ctx: object, many: bool
    ) -> None:
        if sql.startswith("INSERT INTO outputs"):
            statements.append((sum(map(len, parameters)) if many else len(parameters), sql))

    engine = api.platform.engine
    sa.event.listen(engine, "before_cursor_execute", note)
    try:
        answer = submit(
            api,
            {
                "group_id": group_id,
                "mode": "automatic",
                "prompt": "a {red, blue} car",
                "images": images * 750,
                "config": {"seed": 11, "negative_prompt": "blur"},
            },
        )
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)
    job_id, total = answer["jobs"][0]["id"], 4_500
    with api.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        outputs = session.exec(
            select(Output).where(Output.job_id == job_id).order_by(col(Output.position))
        ).all()
        dispatches = session.exec(
            select(Dispatch.id)
            .where(Dispatch.job_id == job_id)
            .order_by(col(Dispatch.created_at), col(Dispatch.id))
        ).all()
    chunk = lifecycle.dispatch_chunk(api.platform.settings, [{"prompt": "a blue car"}] * total)
    assert len(dispatches) == -(-total // chunk) and len({o.id for o in outputs}) == total
    params = {"model": MODEL, "aspect_ratio": "1:1", "image_size": "1K", "negative_prompt": "blur"}
    assert [(o.position, o.seed, o.prompt, o.reference_ids, o.dispatch_id) for o in outputs] == [
        (
            position,
            11 + position,
            ["a red car", "a blue car"][position % 2],
            [images[position // 2 % 3]],
            dispatches[position // chunk],
        )
        for position in range(total)
    ]
    shared = {(o.group_id, o.kind, o.model, o.attempts, o.tags, o.usage) for o in outputs}
    assert shared == {(group_id, "image", MODEL, 0, None, None)}
    assert len({o.created_at for o in outputs}) == 1
    assert all(o.params == params for o in outputs)
    assert all(o.status == "pending" or o.status == "running" for o in outputs)
    # id, dispatch, position, prompt, seed, reference per row; the rest once per statement
    assert sum(values for values, _ in statements) <= 6 * total + 12 * len(statements)


def test_dispatches_are_sized_to_the_job_and_sent_in_position_order(api: Api) -> None:
    settings = api.platform.settings
    settings.dispatch_chunk_size, settings.dispatch_max_per_job = 2, 3
    group_id = api.group()
    images = api.upload_ids(group_id, 10)
    body = {"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images}
    job_id = submit(api, body)["jobs"][0]["id"]
    with api.session() as session:
        dispatches = session.exec(
            select(Dispatch)
            .where(Dispatch.job_id == job_id)
            .order_by(col(Dispatch.created_at), col(Dispatch.id))
        ).all()
        by_dispatch = {
            dispatch.id: session.exec(
                select(Output.position)
                .where(Output.dispatch_id == dispatch.id)
                .order_by(col(Output.position))
            ).all()
            for dispatch in dispatches
        }
    # 10 images in at most 3 dispatches: chunks of 4, not 2; in the queue's order of a
    # user's dispatches (created_at, id: queueing._turn_column), positions go up
    assert [by_dispatch[d.id] for d in dispatches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len({d.webhook_token for d in dispatches}) == 3
    # Written pending as first tries; the sender, woken by the commit, may have claimed or
    # sent some before they were read (one send each).
    assert {(d.attempt, d.losses) for d in dispatches} == {(1, 0)}
    for d in dispatches:
        assert (d.status, d.submit_attempts) in {
            ("pending", 0),
            ("submitting", 1),
            ("submitted", 1),
        }
    api.drain()
    assert sorted(len(b["input"]["items"]) for b in api.run_bodies) == [2, 4, 4]


def test_sets_stay_one_dispatch_whatever_their_size(api: Api) -> None:
    settings = api.platform.settings
    settings.dispatch_chunk_size, settings.dispatch_max_per_job = 1, 1
    group_id = api.group()
    submit(
        api,
        {
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"prompt": "a lighthouse"}],
            "config": {"total_images": 12, "images_per_set": 6},
        },
    )
    api.drain()
    assert [len(b["input"]["items"]) for b in api.run_bodies] == [6, 6]


def rows(count: int, prompt: str = "p", references: int = 0) -> list[lifecycle.OutputRow]:
    params = {"model": MODEL, "negative_prompt": None}
    refs = [f"img_{index}" for index in range(references)]
    return [{"prompt": prompt, "params": params, "reference_ids": refs}] * count


@pytest.mark.parametrize(
    ("images", "prompt", "expected"),
    [
        (1, "p", 16),  # never under dispatch_chunk_size
        (512, "p", 16),
        (1_600, "p", 16),
        (1_601, "p", 17),  # grows so the job fits in 100 dispatches
        (20_000, "p", 200),
        (50_000, "p", 200),  # at most dispatch_chunk_max: more dispatches
        # 10,000 characters escaped to 6 bytes each in JSON: a 4 MB body holds 68 of them
        (20_000, "é" * 10_000, 4 * 2**20 // (lifecycle.ITEM_BYTES + 60_002 + 2)),
    ],
)
def test_dispatch_chunk_grows_with_the_job_within_its_bounds(
    images: int, prompt: str, expected: int
) -> None:
    settings = Settings(
        dispatch_chunk_size=16,
        dispatch_max_per_job=100,
        dispatch_chunk_max=200,
        dispatch_max_body_bytes=4 * 2**20,
    )
    assert lifecycle.dispatch_chunk(settings, rows(images, prompt)) == expected


@pytest.mark.parametrize(
    ("images", "prompt", "expected"),
    [
        (1, "p", 200),  # one Gemini batch per dispatch: as many as a dispatch holds
        (20_000, "p", 200),
        (20_000, "é" * 10_000, 4 * 2**20 // (lifecycle.ITEM_BYTES + 60_002 + 2)),
    ],
)
def test_dispatches_of_the_batch_lane_carry_all_a_dispatch_may(
    images: int, prompt: str, expected: int
) -> None:
    settings = Settings(
        dispatch_chunk_size=16, dispatch_chunk_max=200, dispatch_max_body_bytes=4 * 2**20
    )
    assert lifecycle.dispatch_chunk(settings, rows(images, prompt), "batch") == expected


def test_a_big_dispatch_body_stays_within_its_byte_budget(api: Api) -> None:
    """The estimate per image is an upper bound of what the `/run` body carries."""
    settings = api.platform.settings
    settings.dispatch_max_per_job, settings.dispatch_max_body_bytes = 1, 64 * 2**10
    group_id = api.group()
    images = api.upload_ids(group_id, 2)
    prompt = 'a "quoted" prompt, ünïcode ✓ ' * 300
    body = {"group_id": group_id, "mode": "automatic", "prompt": prompt, "images": images * 40}
    submit(api, body)
    api.drain()
    assert len(api.run_bodies) > 1
    for run in api.run_bodies:
        assert len(json.dumps(run)) <= settings.dispatch_max_body_bytes


def test_a_group_deleted_meanwhile_is_a_conflict_with_nothing_written(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 2)
    checked = references.check

    def check_then_delete_the_group(*args: Any, **kwargs: Any) -> None:
        checked(*args, **kwargs)
        with api.platform.session_scope() as other:
            other.exec(sa.delete(lifecycle.OUTPUTS).where(col(Output.group_id) == group_id))
            other.execute(sa.text("DELETE FROM uploads WHERE group_id = :g"), {"g": group_id})
            other.execute(sa.delete(Group).where(col(Group.id) == group_id))

    monkeypatch.setattr(references, "check", check_then_delete_the_group)
    before = counts(api)
    body = {"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images * 30}
    answer = submit(api, body, status=409)
    assert "was deleted meanwhile" in answer["detail"]
    assert counts(api) == before
    api.drain()
    assert api.run_bodies == []


def test_an_estimate_of_a_big_job_writes_nothing(api: Api) -> None:
    api.platform.settings.dispatch_max_per_job = 2
    group_id = api.group()
    images = api.upload_ids(group_id, 3)
    before = counts(api)
    body = {"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images * 100}
    answer = api.client.post("/api/jobs/estimate", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["images"] == 300
    assert counts(api) == before
    api.drain()
    assert api.run_bodies == []


def test_the_default_send_limits_keep_within_runpods() -> None:
    """RunPod allows 1,000 `/run` per 10 s and 200 jobs in flight: the token bucket's burst
    (a second's worth) plus ten seconds of its rate stay within the first, the endpoint's
    in-flight cap within the second."""
    settings = Settings()
    bucket = TokenBucket(settings.run_rate_per_s)
    assert bucket.burst + 10 * settings.run_rate_per_s <= 1_000
    assert 0 < settings.max_inflight_dispatches <= 200
