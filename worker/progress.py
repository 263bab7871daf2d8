"""Progress posts (contract version 3): each stored result reaches the control plane soon,
not when the whole dispatch ends.

A `ProgressPoster` sends a dispatch's results to its `progress_url` as they come: the first
at once, later ones coalesced into one post at most every `interval_s` (so a result waits at
most that long, plus the post before it); when the dispatch returns, what is still waiting
goes in one last post. It is best effort: a post that fails is tried `attempts` times in all
(the last one once), then dropped with a warning, and nothing here ever fails the dispatch,
because the dispatch's output (RunPod's webhook and `/status`) still carries every result.
An answer of 4xx other than 408/429 is not retried, and once the control plane says the
dispatch is not running (`"ignored"`: it has ended), the poster stops posting.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx

from shared.contract import ItemResult, ProgressReport
from shared.tls import tls_context

log = logging.getLogger(__name__)
Sleep = Callable[[float], Awaitable[None]]
RETRYABLE_4XX = frozenset({408, 429})
POST_TIMEOUT_S = 5.0
CLOSE_BUDGET_S = 5.0  # the most a returning dispatch waits for its last progress post


class ProgressPoster:
    """Posts one dispatch's results to its progress URL; `add` never blocks or raises."""

    def __init__(
        self,
        url: str,
        dispatch_id: str,
        *,
        interval_s: float,
        attempts: int,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.url = url
        self.dispatch_id = dispatch_id
        self.interval_s = interval_s
        self.attempts = max(1, attempts)
        self.sleep = sleep
        self.posted: list[list[str]] = []  # output ids of each post the control plane took
        self._waiting: list[ItemResult] = []
        self._wake = asyncio.Event()
        self._stopped = False  # the dispatch is returning: no new posts
        self._ended = False  # the control plane ignores this dispatch's progress
        self._posting = False
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None  # made at the first post

    async def add(self, result: ItemResult) -> None:
        """Queue a stored result for the next post (the `on_result` of `Runner.run_dispatch`)."""
        if self._stopped or self._ended:
            return
        self._waiting.append(result)
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Finish a post under way, post what is still waiting (once), and stop: the
        dispatch is about to return its output, which waits `CLOSE_BUDGET_S` at most."""
        self._stopped = True
        try:
            async with asyncio.timeout(CLOSE_BUDGET_S):
                await self._finish_posting()
        except TimeoutError:
            log.warning("progress of dispatch %s: last post given up", self.dispatch_id)
        finally:
            if self._task is not None:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            if self._client is not None:
                await self._client.aclose()

    async def _finish_posting(self) -> None:
        if self._task is not None and self._posting:
            await asyncio.gather(self._task, return_exceptions=True)
        batch, self._waiting = self._waiting, []
        if batch and not self._ended:
            await self._post(batch, attempts=1)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._waiting = self._waiting, []
            if not batch:
                continue
            self._posting = True
            try:
                await self._post(batch, self.attempts)
            finally:
                self._posting = False
            if self._stopped or self._ended:
                return
            await self.sleep(self.interval_s)  # what arrives meanwhile goes in one post

    async def _post(self, batch: list[ItemResult], attempts: int) -> None:
        body = ProgressReport(dispatch_id=self.dispatch_id, results=batch).model_dump_json()
        headers = {"content-type": "application/json"}
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=POST_TIMEOUT_S, verify=tls_context())
        for attempt in range(1, attempts + 1):
            try:
                response = await self._client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    self._note_answer(response, batch)
                    return
                problem = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code not in RETRYABLE_4XX:
                    break
            if attempt < attempts:
                await self.sleep(self.interval_s)
        log.warning(
            "progress of dispatch %s: %d result(s) not posted (%s); the output carries them",
            self.dispatch_id,
            len(batch),
            problem,
        )

    def _note_answer(self, response: httpx.Response, batch: list[ItemResult]) -> None:
        self.posted.append([result.output_id for result in batch])
        try:
            ended = response.json().get("status") == "ignored"
        except (ValueError, AttributeError):
            ended = False
        if ended:
            log.info("dispatch %s ended at the control plane: no more progress", self.dispatch_id)
            self._ended = True
