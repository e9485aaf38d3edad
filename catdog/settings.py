"""The one settings class: every tunable comes from ``CATDOG_*`` environment variables."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Where the bundled default model lives inside the installed package.
BUNDLED_MODEL = Path(__file__).parent / "models" / "default.keras"


class Settings(BaseSettings):
    """Configuration read from the environment (prefix ``CATDOG_``) or a ``.env`` file."""

    model_config = SettingsConfigDict(
        env_prefix="CATDOG_",
        env_file=".env",
        extra="ignore",
    )

    #: Celery broker. Unset means embedded: everything runs in-process.
    broker_url: SecretStr | None = None
    #: SQLAlchemy URL of the results database.
    database_url: SecretStr = SecretStr("sqlite:///catdog.db")
    #: A ``.keras`` file to use instead of the registry's production model.
    model: Path | None = None
    #: Where the model registry keeps versioned model files.
    models_dir: Path = Path("models")
    #: Roots workers may read from; files outside them are refused. Empty: any scanned root.
    #: NoDecode: the env value reaches _split_roots as text instead of failing JSON parsing.
    store_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    #: Images per queued batch task: big enough to amortise task overhead, small enough to
    #: redeliver cheaply after a worker dies.
    batch_size: int = 256
    #: Images per model call inside a batch task; None picks one for the device.
    predict_batch_size: int | None = None
    #: Seconds before an unacknowledged batch is redelivered to another worker. Must be longer
    #: than the slowest batch (256 images on a slow CPU take well under a minute).
    visibility_timeout: int = 600
    #: The producer waits while the inference queue holds more batches than this.
    queue_high_water: int = 64
    #: Below this top-class probability the label is ``uncertain``; None always picks a class.
    confidence_threshold: float | None = None
    #: Images with more pixels than this are refused (decompression bombs).
    max_image_pixels: int = 100_000_000
    #: Files larger than this many bytes are refused.
    max_file_bytes: int = 200 * 1024 * 1024
    #: Threads decoding images inside a worker while the model runs.
    decode_threads: int = 4
    #: Times a failing batch is retried before its images are recorded as failed.
    max_retries: int = 5
    #: Use float16 mixed precision on a GPU.
    mixed_precision: bool = False
    #: Cap the GPU memory of one worker process (MiB); None: grow as needed.
    gpu_memory_limit_mb: int | None = None
    #: Flower's HTTP basic auth, ``user:password`` (several users separated by commas).
    flower_basic_auth: SecretStr | None = None
    #: Flower's state file; set it to keep task history across Flower restarts.
    flower_db: Path | None = None

    @field_validator("store_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        # Environment variables are strings: accept "a:b" (os.pathsep) as well as JSON lists.
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [p for p in value.split(":") if p]
        return value

    @property
    def embedded(self) -> bool:
        """True when no broker is configured and work runs in this process."""
        return self.broker_url is None

    def database(self) -> str:
        """The database URL in clear, for the engine only (never log it)."""
        return self.database_url.get_secret_value()

    def broker(self) -> str | None:
        """The broker URL in clear, for Celery only (never log it)."""
        return None if self.broker_url is None else self.broker_url.get_secret_value()


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
