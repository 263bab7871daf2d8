"""Image-by-image progress on the whole stack: the real worker (Gemini provider against the
fake Gemini) posts each stored image to the control plane, so a job's images arrive while
its dispatch is still running; RunPod's webhook ends the dispatch afterwards."""

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response

from control_plane.settings import Settings
from tests.fakes.gemini import FakeGemini
from tests.fakes.stack import run_stack

KEY = "e2e-progress-key"


class HoldingGemini(FakeGemini):
    """Answers its first call at once and holds every later one until `release()`."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.answered = 0
        super().__init__(api_key=KEY)

        @self.app.middleware("http")
        async def hold(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Any:
            self.answered += 1
            if self.answered > 1:
                while not self.released.is_set():
                    await asyncio.sleep(0.02)
            return await call_next(request)

    def release(self) -> None:
        self.released.set()


def test_a_jobs_images_arrive_before_its_dispatch_ends(settings: Settings) -> None:
    with HoldingGemini() as fake:
        stack_of = run_stack(
            settings,
            provider="gemini",
            gemini_api_key=KEY,
            gemini_base_url=fake.base_url,
            gemini_rpm=60_000,
            worker_progress_interval_s=0.05,
        )
        stack = next(stack_of)
        try:
            group_id = stack.group()
            images = stack.upload(group_id, 3)
            submitted = stack.http.post(
                "/api/jobs/submit",
                json={"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images},
            )
            assert submitted.status_code == 201, submitted.text
            [job_id] = [job["id"] for job in submitted.json()["jobs"]]
            deadline = time.monotonic() + 60
            while True:  # one image answered, two held: it arrives through progress alone
                job = stack.http.get(f"/api/jobs/{job_id}").json()
                if job["progress"]["succeeded"] == 1:
                    break
                assert time.monotonic() < deadline, job["progress"]
                time.sleep(0.05)
            assert job["status"] == "processing" and job["progress"]["pending"] == 2
            [done] = [image for image in job["images"] if image["status"] == "succeeded"]
            assert stack.http.get(done["url"]).status_code == 200
            fake.release()
            [finished] = stack.wait_for([job_id])
            assert finished["progress"]["succeeded"] == 3
            assert all(image["attempts"] == 1 for image in finished["images"])
        finally:
            fake.release()
            stack_of.close()
