"""Waiting with a time limit, without losing a cancel."""

import asyncio
import contextlib
from collections.abc import Awaitable


async def wait_at_most(awaitable: Awaitable[object], timeout_s: float | None) -> None:
    """Await `awaitable` for up to `timeout_s` (None: no limit), then go on quietly.

    Not `asyncio.wait_for`: on Python 3.11, a cancel that arrives as the awaited thing ends is
    swallowed (wait_for returns its result instead), and a task cancelled to stop it waits
    on forever. `asyncio.timeout` keeps the cancel.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await awaitable
