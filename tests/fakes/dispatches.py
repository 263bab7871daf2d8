"""Dispatches for the worker's tests: a stored reference and `n` items that use it."""

from shared.contract import DispatchInput, ImageParams, WorkItem
from shared.storage import LocalStorage
from tests.conftest import png_bytes


def make_dispatch(storage: LocalStorage, n: int, prompt: str = "p") -> DispatchInput:
    ref = storage.put_bytes("groups/g/inputs/ref.png", png_bytes(), content_type="image/png")
    return DispatchInput(
        dispatch_id="dsp_1",
        job_id="job_1",
        items=[
            WorkItem(
                output_id=f"out_{i}",
                prompt=prompt,
                reference_uris=[storage.uri(ref.key)],
                params=ImageParams(model="gemini-3.1-flash-image", seed=i, image_size="512"),
                output_key=f"groups/g/outputs/job_1/out_{i}",
            )
            for i in range(n)
        ],
    )
