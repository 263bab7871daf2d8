"""Settings both processes read. Every variable is prefixed PIXELFLEET_ (see the README)."""

from pathlib import Path
from typing import Literal

from pydantic import ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIXELFLEET_", env_file=".env", extra="ignore")

    data_dir: Path = Path("pixelfleet-data")
    storage_url: str = ""  # default: {data_dir}/storage
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"  # json: one JSON object a line

    @model_validator(mode="after")
    def _default_storage(self) -> "CommonSettings":
        if not self.storage_url:
            self.storage_url = str((self.data_dir / "storage").resolve())
        return self


def describe_settings_error(exc: ValidationError) -> str:
    """Settings validation errors as one line a person reads: `NAME: problem; …`."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        name = "_".join(str(part) for part in error["loc"]).upper()
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"PIXELFLEET_{name}: {message}" if name else message)
    return "; ".join(parts)
