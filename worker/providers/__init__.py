"""Image (and text) providers behind one interface; `build_provider` picks one from settings."""

from worker.providers.base import (
    BatchProvider,
    GeneratedImage,
    GeneratedText,
    GenerationBlocked,
    GenerationFailed,
    GenerationRequest,
    Provider,
    Reference,
    TextRequest,
)
from worker.settings import WorkerSettings

__all__ = [
    "BatchProvider",
    "GeneratedImage",
    "GeneratedText",
    "GenerationBlocked",
    "GenerationFailed",
    "GenerationRequest",
    "Provider",
    "Reference",
    "TextRequest",
    "build_batch_provider",
    "build_provider",
]


def build_provider(settings: WorkerSettings) -> Provider:
    name = settings.provider_name()
    if name == "gemini":
        from worker.providers.gemini import GeminiProvider

        key = settings.gemini_api_key
        return GeminiProvider(
            api_key=key.get_secret_value() if key else "",
            base_url=settings.gemini_base_url,
            api_version=settings.gemini_api_version,
            timeout_s=settings.gemini_timeout_s,
            max_attempts=settings.gemini_max_attempts,
            backoff_base_s=settings.gemini_backoff_s,
            rpm=settings.gemini_rpm,
            concurrency=settings.gemini_concurrency,
            reseed_on_block=settings.gemini_reseed_on_block,
        )
    from worker.providers.offline import OfflineProvider

    return OfflineProvider(latency_ms=settings.offline_latency_ms)


def build_batch_provider(settings: WorkerSettings, provider: Provider) -> BatchProvider:
    """The Batch API beside `provider`: Gemini's through its client, or the offline stand-in
    (batches kept under the data dir)."""
    if settings.provider_name() == "gemini":
        from worker.providers.gemini import GeminiProvider
        from worker.providers.gemini_batch import GeminiBatchProvider

        if not isinstance(provider, GeminiProvider):
            raise TypeError("the Gemini batch provider runs beside the Gemini provider")
        return GeminiBatchProvider(
            provider, inline_max_bytes=settings.gemini_batch_inline_max_bytes
        )
    from worker.providers.offline import OfflineProvider
    from worker.providers.offline_batch import OfflineBatchProvider

    return OfflineBatchProvider(
        OfflineProvider(latency_ms=settings.offline_latency_ms),
        settings.data_dir / "offline-batches",
        pending_s=settings.offline_batch_pending_s,
        running_s=settings.offline_batch_running_s,
    )
