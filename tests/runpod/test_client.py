"""RunPod's API client (control_plane/runpod/client.py): how long one call can take, which is
what a sender's claim is judged stale against (control_plane/runpod/sender.py)."""

import asyncio
import time

import httpx
import pytest
import respx

from control_plane.runpod.client import RunPodClient, RunPodError, UnreadableAnswer

pytestmark = pytest.mark.anyio
ENDPOINT = "https://api.runpod.ai/v2/ep-test"


async def test_a_call_never_takes_longer_than_longest_call_s() -> None:
    """`timeout_s` bounds each attempt as a whole, however slowly RunPod answers (httpx's own
    timeouts bound each phase only), so `longest_call_s` is a real bound."""
    attempts: list[float] = []

    async def stalls(_: httpx.Request) -> httpx.Response:
        attempts.append(time.monotonic())
        await asyncio.sleep(30)
        return httpx.Response(200, json={"id": "never"})

    with respx.mock(assert_all_called=False) as router:
        router.post(f"{ENDPOINT}/run").mock(side_effect=stalls)
        client = RunPodClient(ENDPOINT, "rp-key", timeout_s=0.2, backoff_s=0.05)
        assert client.longest_call_s == pytest.approx(3 * 0.2 + (0.05 + 0.1) * 1.5)
        started = time.monotonic()
        with pytest.raises(RunPodError, match="TimeoutError"):
            await client.run({"input": {}})
        assert time.monotonic() - started <= client.longest_call_s + 0.5
    assert len(attempts) == 3
    await client.aclose()


@pytest.mark.parametrize(
    ("body", "problem"),
    [(b"<html>maintenance</html>", "JSONDecodeError"), (b"[" * 100_000, "RecursionError")],
)
async def test_a_2xx_answer_that_is_not_json_is_unreadable_and_not_retried(
    body: bytes, problem: str
) -> None:
    """RunPod did answer (and may have queued the job): the caller decides, the client does not
    send `/run` again."""
    with respx.mock(assert_all_called=False) as router:
        run = router.post(f"{ENDPOINT}/run").mock(return_value=httpx.Response(200, content=body))
        status = router.get(f"{ENDPOINT}/status/rp-1").mock(
            return_value=httpx.Response(200, content=body)
        )
        client = RunPodClient(ENDPOINT, "rp-key", backoff_s=0.001)
        for call in (client.run({"input": {}}), client.status("rp-1")):
            with pytest.raises(UnreadableAnswer, match=f"not JSON \\({problem}\\)") as raised:
                await call
            assert raised.value.status_code == 200 and not raised.value.retryable
        assert (run.call_count, status.call_count) == (1, 1)
    await client.aclose()
