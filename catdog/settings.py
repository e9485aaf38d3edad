"""The one settings class: every tunable comes from ``CATDOG_*`` environment variables."""

from __future__ import annotations

import json
import re
import ssl
import tempfile
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

    # Each field's description is what `catdog settings` shows; comments say why.
    broker_url: SecretStr | None = Field(
        default=None, description="Redis URL of the broker; unset: embedded, everything in-process"
    )
    broker_url_file: Path | None = Field(
        default=None, description="file holding the broker URL (Docker secrets); wins over the URL"
    )
    database_url: SecretStr = Field(
        default=SecretStr("sqlite:///catdog.db"),
        description="SQLAlchemy URL of the results database",
    )
    database_url_file: Path | None = Field(
        default=None,
        description="file holding the database URL (Docker secrets); wins over the URL",
    )
    redis_ca_file: Path | None = Field(
        default=None, description="CA bundle that signs the Redis server certificate (rediss://)"
    )
    redis_cert_file: Path | None = Field(
        default=None, description="client certificate, when Redis asks for mutual TLS"
    )
    redis_key_file: Path | None = Field(
        default=None, description="client certificate's key, when Redis asks for mutual TLS"
    )
    redis_tls_verify: bool = Field(
        default=True,
        description="check the Redis certificate; off only for a self-signed test server",
    )
    model: Path | None = Field(
        default=None, description="a .keras file to use instead of the registry's production model"
    )
    models_dir: Path = Field(
        default=Path("models"), description="where the model registry keeps versioned model files"
    )
    # NoDecode: the env value reaches _split_roots as text instead of failing JSON parsing.
    store_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "roots workers may read from: folders or store URLs such as s3://bucket/prefix "
            "(:-separated or a JSON list); empty: any scanned root"
        ),
    )
    # Big enough to amortise task overhead, small enough to redeliver cheaply after a worker
    # dies.
    batch_size: int = Field(default=256, description="images per queued batch task")
    predict_batch_size: int | None = Field(
        default=None, description="images per model call; unset: picked for the device"
    )
    # Must be longer than the slowest batch (256 images on a slow CPU take well under a
    # minute).
    visibility_timeout: int = Field(
        default=600, description="seconds before an unacknowledged batch is redelivered"
    )
    queue_high_water: int = Field(
        default=64, description="the producer waits while more batches than this are queued"
    )
    # Applied when rows are printed (classify, export, report), never stored: the database
    # keeps the model's label, so the same data and threshold always give the same answer.
    confidence_threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="0 to 1: output shows labels below this top-class probability as "
        "'uncertain' (stored labels are the model's)",
    )
    max_image_pixels: int = Field(
        default=100_000_000, description="larger images are refused (decompression bombs)"
    )
    max_file_bytes: int = Field(
        default=200 * 1024 * 1024, description="files larger than this many bytes are refused"
    )
    # Default: the CPUs this process may use, at least 4 (decoding releases the GIL, and a
    # GPU outruns 4 threads).
    decode_threads: int | None = Field(
        default=None,
        description="threads decoding images per worker; unset: usable CPUs, at least 4",
    )
    # catdog.images.DEFAULT_PIXEL_BUDGET (that layer cannot read settings): 150 M pixels at
    # 8 bytes each is about 1.1 GiB, whatever the number of decode threads.
    decode_pixel_budget: int = Field(
        default=150_000_000,
        gt=0,
        description="pixels a worker's decode threads hold at once, all together; a larger "
        "image decodes alone",
    )
    # Also how many times a batch may stop its worker (crash, kill) before it is given up.
    max_retries: int = Field(
        default=5, description="retries of a failing batch before its images are recorded as failed"
    )
    # It widens the window in which a kill or a restart hits a batch in flight.
    batch_delay_s: float = Field(
        default=0.0,
        description="seconds a batch task sleeps before and after its work (tests, demos)",
    )
    runtime: Literal["auto", "tensorflow", "tflite"] = Field(
        default="auto",
        description="inference kernels: tflite (XNNPACK, CPUs), tensorflow, or auto "
        "(tflite without a GPU)",
    )
    mixed_precision: bool = Field(default=False, description="float16 mixed precision on a GPU")
    gpu_memory_limit_mb: int | None = Field(
        default=None, description="cap on one worker's GPU memory in MiB; unset: grow as needed"
    )
    flower_basic_auth: SecretStr | None = Field(
        default=None, description="Flower's login, user:password (several separated by commas)"
    )
    flower_db: Path | None = Field(
        default=None, description="Flower's state file, to keep task history across restarts"
    )
    # Long enough for a Redis restart (a few seconds), short enough that a typo in the URL
    # or the password is an error within a minute instead of a silent hang.
    broker_timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds a command or a starting worker waits for the broker before it "
        "gives up with an error",
    )
    # A file, not a port: a container health check reads it without asking the worker's
    # main loop, which a running batch or training job keeps busy.
    heartbeat_file: Path = Field(
        default=Path(tempfile.gettempdir()) / "catdog-worker.heartbeat",
        description="file a worker touches every few seconds while its broker and database "
        "answer; `catdog health` checks its age",
    )

    label_studio_url: str | None = Field(
        default=None,
        description="Label Studio server for `catdog review push/pull`, e.g. http://localhost:8080",
    )
    # A legacy token ("Token ...") or a personal access token (a JWT, exchanged for short-lived
    # access tokens); never logged, printed or stored in catdog's database.
    label_studio_token: SecretStr | None = Field(
        default=None, description="Label Studio API token (legacy or personal access token)"
    )
    label_studio_token_file: Path | None = Field(
        default=None,
        description="file holding the Label Studio token (Docker secrets); wins over the token",
    )
    label_studio_document_root: str | None = Field(
        default=None,
        description="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, for local image "
        "URLs; unset: /",
    )

    @field_validator(
        "model",
        "predict_batch_size",
        "confidence_threshold",
        "gpu_memory_limit_mb",
        "label_studio_url",
        "label_studio_token",
        "label_studio_document_root",
        mode="before",
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
            # ':' separates roots, except the one of a URL's scheme (s3://...).
            return [p for p in re.split(r":(?!//)", value) if p]
        if isinstance(value, list | tuple):
            return [str(p) for p in value]
        return value

    @model_validator(mode="after")
    def _read_secret_files(self) -> Settings:
        # Docker secrets style: the URL (with its password) lives in a file, not the env.
        if self.broker_url_file is not None:
            self.broker_url = SecretStr(_read_secret(self.broker_url_file))
        if self.database_url_file is not None:
            self.database_url = SecretStr(_read_secret(self.database_url_file))
        if self.label_studio_token_file is not None:
            self.label_studio_token = SecretStr(_read_secret(self.label_studio_token_file))
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


def redact_url(url: str) -> str:
    """``url`` fit for a message: scheme, user, host, port and path; no password, no query.

    Everything up to the last ``@`` is taken as the login, so a password holding ``/`` or
    ``@`` (unescaped) does not leak either; the query may carry credentials too.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    login, at, rest = rest.rpartition("@")
    user = login.split(":", 1)[0] if at else ""
    rest = rest.split("?", 1)[0]
    return f"{scheme}{sep}{user}{'@' if user else ''}{rest}"


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
