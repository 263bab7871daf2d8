"""The RunPod serverless entry point (`python -m worker.main`, the worker image's CMD).

`runpod` is imported here and only here: importing it costs ~1.5 s and reconfigures logging.
"""

import logging

from worker.handler import make_handler
from worker.settings import WorkerSettings


def main() -> None:
    import runpod

    settings = WorkerSettings()
    logging.basicConfig(level=settings.log_level)
    handler, concurrency_modifier, _ = make_handler(settings)
    runpod.serverless.start({"handler": handler, "concurrency_modifier": concurrency_modifier})


if __name__ == "__main__":
    main()
