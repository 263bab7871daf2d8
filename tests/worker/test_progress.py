"""The worker's progress posts (worker/progress.py, used by worker/handler.py) against a real
loopback receiver: the first result at once, later ones coalesced, bounded retries, never
failing the dispatch; the handler posts while the output still carries every result."""

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any

import pytest

from shared.contract import DispatchInput, ItemResult, ResultStatus
from shared.storage import LocalStorage
from shared.tls import tls_context
from tests.fakes.dispatches import make_dispatch
from tests.fakes.receiver import Receiver, run_receiver
from tests.fakes.servers import reserve_socket, url_of
from worker.handler import make_handler
from worker.progress import ProgressPoster
from worker.settings import WorkerSettings


def result(output_id: str) -> ItemResult:
    return ItemResult(output_id=output_id, status=ResultStatus.SUCCEEDED, provider="p", model="m")


class Interval:
    """The poster's sleep, held until the test lets the interval pass."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.passed = asyncio.Event()

    async def sleep(self, _seconds: float) -> None:
        self.waiting.set()
        await self.passed.wait()
        self.passed.clear()
        self.waiting.clear()

    async def let_pass(self) -> None:
        await self.waiting.wait()
        self.passed.set()


def posted_ids(receiver: Receiver, n: int) -> list[list[str]]:
    return [
        [item["output_id"] for item in request.json["results"]]
        for request in receiver.wait_for("/progress", n)
    ]


def test_results_are_posted_at_once_then_coalesced() -> None:
    with run_receiver() as receiver:

        async def scenario() -> None:
            interval = Interval()
            poster = ProgressPoster(
                f"{receiver.url}/progress",
                "dsp_1",
                interval_s=0.5,
                attempts=3,
                sleep=interval.sleep,
            )
            await poster.add(result("o1"))
            assert await asyncio.to_thread(posted_ids, receiver, 1) == [["o1"]]
            await interval.waiting.wait()  # the poster waits out its interval
            await poster.add(result("o2"))
            await poster.add(result("o3"))
            assert len(receiver.at("/progress")) == 1  # held for the interval
            await interval.let_pass()
            assert await asyncio.to_thread(posted_ids, receiver, 2) == [["o1"], ["o2", "o3"]]
            await poster.close()

        asyncio.run(scenario())
    body = receiver.at("/progress")[1].json
    assert body["version"] == 4 and body["dispatch_id"] == "dsp_1"


def test_a_failing_receiver_is_retried_a_few_times_then_given_up() -> None:
    with run_receiver() as receiver:
        receiver.script("/progress", 503, 503, 503, 401)

        async def instant(_seconds: float) -> None:
            await asyncio.sleep(0)

        async def scenario() -> ProgressPoster:
            poster = ProgressPoster(
                f"{receiver.url}/progress", "dsp_1", interval_s=0.5, attempts=3, sleep=instant
            )
            await poster.add(result("o1"))  # 503 three times: dropped
            await asyncio.to_thread(receiver.wait_for, "/progress", 3)
            await poster.add(result("o2"))  # 401: not retried
            await asyncio.to_thread(receiver.wait_for, "/progress", 4)
            await poster.add(result("o3"))  # 204: taken
            await asyncio.to_thread(receiver.wait_for, "/progress", 5)
            await poster.close()
            return poster

        poster = asyncio.run(scenario())
    assert posted_ids(receiver, 5) == [["o1"], ["o1"], ["o1"], ["o2"], ["o3"]]
    assert poster.posted == [["o3"]]


def _with_progress(storage: LocalStorage, n: int, url: str) -> dict[str, object]:
    dispatch = make_dispatch(storage, n)
    wire = DispatchInput.model_validate(
        {**dispatch.model_dump(mode="json"), "progress_url": url}
    ).model_dump(mode="json")
    return {"id": "rp-1", "input": wire}


def test_the_handler_posts_every_result_and_still_returns_them_all(tmp_path: Path) -> None:
    settings = WorkerSettings(storage_url=str(tmp_path), provider="offline")
    handler, _, runner = make_handler(settings)
    with run_receiver() as receiver:
        job = _with_progress(runner.storage, 3, f"{receiver.url}/progress?dispatch=dsp_1&token=t")
        output = asyncio.run(handler(job))
        assert [r["status"] for r in output["results"]] == ["succeeded"] * 3
        posts = receiver.at("/progress")
    posted = [item for post in posts for item in json.loads(post.body)["results"]]
    assert sorted(posted, key=lambda item: item["output_id"]) == output["results"]


def test_dispatches_make_no_tls_context_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each dispatch's poster has an HTTP client of its own, verifying with the process's
    one TLS context: making a context reads the CA bundle, ~20 ms of CPU per dispatch."""
    settings = WorkerSettings(storage_url=str(tmp_path), provider="offline")
    handler, _, runner = make_handler(settings)
    tls_context()  # the process's one, made before any dispatch
    made: list[str] = []
    original = ssl.create_default_context

    def counted(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        made.append("a TLS context")
        return original(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    with run_receiver() as receiver:
        for n in range(3):
            job = _with_progress(runner.storage, 2, f"{receiver.url}/progress?dispatch=dsp_{n}")
            asyncio.run(handler(job))
        assert len(receiver.at("/progress")) >= 3  # each dispatch did post
    assert made == []


def test_an_unreachable_progress_url_never_fails_the_dispatch(tmp_path: Path) -> None:
    settings = WorkerSettings(
        storage_url=str(tmp_path), provider="offline", worker_progress_interval_s=0.01
    )
    handler, _, runner = make_handler(settings)
    with reserve_socket() as bound:  # bound, never listening: connections are refused
        job = _with_progress(runner.storage, 2, f"{url_of(bound)}/progress")
        output = asyncio.run(handler(job))
    assert [r["status"] for r in output["results"]] == ["succeeded"] * 2
