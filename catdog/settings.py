"""The one settings class: every tunable comes from ``CATDOG_*`` environment variables."""

from __future__ import annotations

import json
import ssl
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
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
    #: A file holding the broker URL (Docker secrets); wins over ``broker_url``.
    broker_url_file: Path | None = None
    #: SQLAlchemy URL of the results database.
    database_url: SecretStr = SecretStr("sqlite:///catdog.db")
    #: A file holding the database URL (Docker secrets); wins over ``database_url``.
    database_url_file: Path | None = None
    #: CA bundle that signs the Redis server certificate (``rediss://`` URLs).
    redis_ca_file: Path | None = None
    #: Client certificate and key, when Redis asks for mutual TLS.
    redis_cert_file: Path | None = None
    redis_key_file: Path | None = None
    #: Check the Redis server certificate; turn off only for a self-signed test server.
    redis_tls_verify: bool = True
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
    #: Threads decoding images inside a worker while the model runs. Default: the CPUs this
    #: process may use, at least 4 (decoding releases the GIL, and a GPU outruns 4 threads).
    decode_threads: int | None = None
    #: Times a failing batch is retried before its images are recorded as failed. Also how
    #: many times a batch may stop its worker (crash, kill) before it is given up.
    max_retries: int = 5
    #: Seconds a batch task sleeps before and after its work. Fault tests and demos only: it
    #: widens the window in which a kill or a restart hits a batch in flight.
    batch_delay_s: float = 0.0
    #: Inference kernels: "tflite" (XNNPACK, ~1.5x faster on CPUs), "tensorflow", or "auto"
    #: (tflite on hosts without a GPU, TensorFlow on GPUs).
    runtime: Literal["auto", "tensorflow", "tflite"] = "auto"
    #: Use float16 mixed precision on a GPU.
    mixed_precision: bool = False
    #: Cap the GPU memory of one worker process (MiB); None: grow as needed.
    gpu_memory_limit_mb: int | None = None
    #: Flower's HTTP basic auth, ``user:password`` (several users separated by commas).
    flower_basic_auth: SecretStr | None = None
    #: Flower's state file; set it to keep task history across Flower restarts.
    flower_db: Path | None = None

    @field_validator(
        "model", "predict_batch_size", "confidence_threshold", "gpu_memory_limit_mb", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `CATDOG_MODEL=` in a compose file or .env means "not set", not the current folder.
        return None if value == "" else value

    @field_validator("store_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        # Environment variables are strings: accept "a:b" (os.pathsep) as well as JSON lists.
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [p for p in value.split(":") if p]
        return value

    @model_validator(mode="after")
    def _read_secret_files(self) -> Settings:
        # Docker secrets style: the URL (with its password) lives in a file, not the env.
        if self.broker_url_file is not None:
            self.broker_url = SecretStr(_read_secret(self.broker_url_file))
        if self.database_url_file is not None:
            self.database_url = SecretStr(_read_secret(self.database_url_file))
        return self

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

    def redis_ssl(self) -> dict[str, object]:
        """TLS options for ``rediss://`` (Celery's ``broker_use_ssl`` and redis-py alike)."""
        options: dict[str, object] = {
            "ssl_cert_reqs": ssl.CERT_REQUIRED if self.redis_tls_verify else ssl.CERT_NONE
        }
        for key, path in (
            ("ssl_ca_certs", self.redis_ca_file),
            ("ssl_certfile", self.redis_cert_file),
            ("ssl_keyfile", self.redis_key_file),
        ):
            if path is not None:
                options[key] = str(path)
        return options


class SecretFileError(RuntimeError):
    """A secret file that cannot be used; raised as itself so pydantic does not echo inputs."""


def _read_secret(path: Path) -> str:
    """A secret file's content without the trailing newline editors add."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        # The path is not secret; the content is, and is never part of the message.
        raise SecretFileError(f"cannot read secret file {path}: {exc.strerror}") from None
    if not value:
        raise SecretFileError(f"secret file {path} is empty")
    return value


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
