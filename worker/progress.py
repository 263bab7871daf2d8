"""Progress posts (contract version 3): each stored result reaches the control plane soon,
not when the whole dispatch ends.

A `ProgressPoster` sends a dispatch's results to its `progress_url` as they come: the first
at once, later ones coalesced into one post at most every `interval_s` (so a result waits at
most that long, plus the post before it). It is best effort: a post that fails is retried
`attempts` times in all, then dropped with a warning, and nothing here ever fails the
dispatch, because the dispatch's output (RunPod's webhook and `/status`) still carries every
result. An answer of 4xx other than 408/429 is not retried, and once the control plane says
the dispatch has ended (`"ignored"`), the poster stops posting.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx

from shared.contract import ItemResult, ProgressReport

log = logging.getLogger(__name__)
Sleep = Callable[[float], Awaitable[None]]
RETRYABLE_4XX = frozenset({408, 429})
POST_TIMEOUT_S = 10.0


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
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None  # made at the first post

    async def add(self, result: ItemResult) -> None:
        """Queue a stored result for the next post (the `on_result` of `Runner.run_dispatch`)."""
        if self._stopped:
            return
        self._waiting.append(result)
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Stop posting: what is still waiting travels in the dispatch's output."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        while not self._stopped:
            await self._wake.wait()
            self._wake.clear()
            batch, self._waiting = self._waiting, []
            if batch:
                await self._post(batch)
                await self.sleep(self.interval_s)  # what arrives meanwhile goes in one post

    async def _post(self, batch: list[ItemResult]) -> None:
        body = ProgressReport(dispatch_id=self.dispatch_id, results=batch).model_dump_json()
        headers = {"content-type": "application/json"}
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=POST_TIMEOUT_S)
        for attempt in range(1, self.attempts + 1):
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
            if attempt < self.attempts:
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
            self._stopped = True
