"""RunPod's serverless API (`/v2/{endpoint_id}/…`), as the control plane uses it.

Transient failures (connection errors, 429, 5xx) are retried here with backoff; anything
else surfaces as RunPodError for the caller to decide. A 2xx answer that cannot be read (not
JSON, or not what the call expects) is an UnreadableAnswer, never retried here: RunPod did
answer, and may have acted on the call.
"""

import asyncio
import logging
import random
from typing import Any

import httpx

from shared.tls import tls_context

log = logging.getLogger(__name__)


class RunPodError(Exception):
    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code

    @property
    def retryable(self) -> bool:
        return self.status_code is None or self.status_code == 429 or self.status_code >= 500


class UnreadableAnswer(RunPodError):
    """RunPod answered 2xx with a body that is not what the call expects."""


class RunPodClient:
    """Each call takes at most `timeout_s` per attempt (all of it: pool, connect, send, read)
    and `attempts` attempts with backoff between them (`longest_call_s`)."""

    def __init__(
        self,
        endpoint_url: str,
        api_key: str,
        *,
        timeout_s: float = 30.0,
        attempts: int = 3,
        backoff_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=endpoint_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout_s,
            transport=transport,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            verify=tls_context(),
        )
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._backoff_s = backoff_s

    @property
    def longest_call_s(self) -> float:
        """The longest one call can take, its retries and their backoffs included."""
        waits = sum(self._backoff_s_after(attempt) * 1.5 for attempt in range(1, self._attempts))
        return self._attempts * self._timeout_s + waits

    async def aclose(self) -> None:
        await self._http.aclose()

    async def run(self, body: dict[str, Any]) -> str:
        """Queue a job (`body`: input, webhook, policy); returns RunPod's job id."""
        reply = await self._request("POST", "run", json=body)
        if not isinstance(reply, dict) or not reply.get("id"):
            raise UnreadableAnswer(f"RunPod /run answered without a job id: {reply!r:.300}", 200)
        return str(reply["id"])

    async def status(self, runpod_job_id: str) -> Any:
        """The job's state as RunPod wrote it (any JSON value: the caller checks it), or None
        when RunPod no longer knows the job (expired or never existed)."""
        try:
            return await self._request("GET", f"status/{runpod_job_id}")
        except RunPodError as exc:
            if exc.status_code == 404:
                return None
            raise

    async def cancel(self, runpod_job_id: str) -> None:
        await self._request("POST", f"cancel/{runpod_job_id}")

    async def _request(self, method: str, path: str, json: Any = None) -> Any:
        for attempt in range(1, self._attempts + 1):
            try:
                async with asyncio.timeout(self._timeout_s):
                    response = await self._http.request(method, path, json=json)
                if response.status_code < 400:
                    return _json_of(response, f"RunPod {method} /{path}")
                code = response.status_code
                error = RunPodError(
                    f"RunPod {method} /{path} answered {code}: {response.text[:300]}",
                    code,
                )
            except (httpx.HTTPError, TimeoutError) as exc:
                error = RunPodError(f"RunPod {method} /{path} failed: {exc!r}")
            if not error.retryable or attempt == self._attempts:
                raise error
            delay = self._backoff_s_after(attempt) * (0.5 + random.random())
            log.warning("%s; retrying in %.1fs", error, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _backoff_s_after(self, attempt: int) -> float:
        """The wait after failed attempt `attempt`, before jitter (times 0.5 to 1.5)."""
        return min(8.0, self._backoff_s * 2 ** (attempt - 1))


def _json_of(response: httpx.Response, call: str) -> Any:
    try:
        return response.json()
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise UnreadableAnswer(
            f"{call} answered {response.status_code} with a body that is not JSON "
            f"({type(exc).__name__}): {response.text[:300]!r}",
            response.status_code,
        ) from None
