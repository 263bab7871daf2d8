"""RunPod's API client (control_plane/runpod/client.py): how long one call can take, which is
what a sender's claim is judged stale against (control_plane/runpod/sender.py)."""

import asyncio
import time

import httpx
import pytest
import respx

from control_plane.runpod.client import RunPodClient, RunPodError

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
