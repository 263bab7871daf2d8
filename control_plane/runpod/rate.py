"""A token bucket pacing this process's `/run` calls under RunPod's own rate limit."""

import asyncio
import time


class TokenBucket:
    """`rate_per_s` tokens a second, at most `burst` saved up (default: one second's worth);
    a rate of 0 never waits. Takers are served in the order they asked."""

    def __init__(self, rate_per_s: float, burst: float | None = None) -> None:
        self.rate_per_s = rate_per_s
        self.burst = max(burst if burst is not None else rate_per_s, 1.0)
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        """Wait for a token and spend it."""
        if self.rate_per_s <= 0:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate_per_s)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate_per_s)
