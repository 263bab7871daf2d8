"""The RunPod serverless entry point (`python -m worker.main`, the worker image's CMD).

`runpod` is imported here and only here (and in `worker/scaling.py`, which only this imports):
importing it costs ~1.5 s and reconfigures logging.
A configuration problem (bad settings, a missing bucket, unusable credentials) ends the
process at once with one line saying what to fix and exit code 2, not a traceback.
"""

import sys

from pydantic import ValidationError

from shared.logs import configure_logging
from shared.settings import describe_settings_error
from shared.storage import StorageError
from worker.handler import make_handler
from worker.settings import WorkerSettings


def main() -> None:
    try:
        settings = WorkerSettings()
        configure_logging(settings.log_level, settings.secrets(), settings.log_format)
        handler, concurrency_modifier, _ = make_handler(settings)
    except (ValidationError, StorageError) as exc:
        problem = describe_settings_error(exc) if isinstance(exc, ValidationError) else exc
        sys.stderr.write(f"configuration error: {problem}\n")
        sys.exit(2)
    import runpod

    from worker import scaling

    scaling.install()  # the modifier follows the free image slots: see worker/scaling.py
    runpod.serverless.start({"handler": handler, "concurrency_modifier": concurrency_modifier})


if __name__ == "__main__":
    main()
