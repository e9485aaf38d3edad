"""Shared fixtures: generated images, a tiny model, and the real Redis and PostgreSQL."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services import RedisServer

#: The real services on this machine; CI starts them, a laptop may not have them.
REDIS_URL = os.environ.get("CATDOG_TEST_REDIS", "redis://127.0.0.1:6379")
POSTGRES_URL = os.environ.get(
    "CATDOG_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
#: Real photos, when the shared data set sits beside the repository.
SHARED_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "catsdogs-train"


def _service_missing(what: str, exc: Exception) -> None:
    # dramatiq's rule: a missing server is a skip on a laptop and a failure in CI.
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI but unavailable: {exc}")
    pytest.skip(f"{what} unavailable: {exc}")


def make_image(path: Path, kind: str, size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    """Write a synthetic 'cat' (red blob) or 'dog' (blue blob) image; format from the suffix."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    channel = 0 if kind == "cat" else 2
    arr[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4, channel] = 200 + rng.integers(0, 55)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def image_factory(tmp_path: Path) -> Callable[..., Path]:
    """Make synthetic images under a temporary folder."""

    def make(rel: str, kind: str = "cat", size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
        return make_image(tmp_path / rel, kind, size, seed)

    return make


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """A store with 6 good images and 2 broken files."""
    root = tmp_path / "photos"
    for i in range(3):
        make_image(root / f"cats/c{i}.jpg", "cat", seed=i)
        make_image(root / f"dogs/d{i}.png", "dog", seed=10 + i)
    (root / "broken.jpg").write_bytes(b"this is not a jpeg")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image extension: never registered")
    return root


def build_tiny_model(path: Path, seed: int = 0, bias: tuple[float, float] = (0.0, 0.0)) -> Path:
    """Save a small untrained-but-deterministic classifier (32x32 -> cat/dog) and its sidecar.

    Its dense layer reads mean red minus mean blue, so red blobs are 'cat', blue are 'dog'.
    """
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("head").set_weights(
        [np.array([[8.0, -8.0], [0.0, 0.0], [-8.0, 8.0]], dtype=np.float32), np.array(bias)]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    meta = {"arch": "tiny", "classes": ["cat", "dog"], "input_size": [32, 32], "metrics": {}}
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model file shared by the session's tests."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny.keras")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database file."""
    return f"sqlite:///{tmp_path / 'catdog.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A private schema in the real PostgreSQL test database, dropped afterwards."""
    from sqlalchemy import create_engine, text

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001 - any connection failure means "no server"
        _service_missing("PostgreSQL", exc)
    # libpq's options parameter sets the search_path for every connection of this URL.
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    from catdog.db.engine import engine_for

    engine_for.cache_clear()
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database number of its own, flushed before and after."""
    import redis

    db = int(os.environ.get("CATDOG_TEST_REDIS_DB", "11"))
    url = f"{REDIS_URL}/{db}"
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    except Exception as exc:  # noqa: BLE001
        _service_missing("Redis", exc)
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Set CATDOG_* variables for this test and forget cached settings."""
    from catdog.settings import get_settings

    def set_env(**values: str) -> None:
        for key, value in values.items():
            monkeypatch.setenv(f"CATDOG_{key.upper()}", value)
        get_settings.cache_clear()

    yield set_env
    get_settings.cache_clear()


class WorkerProcess:
    """A real ``catdog worker`` process, as a user would start it."""

    def __init__(self, env: dict[str, str], queues: str, log: Path, name: str) -> None:
        import subprocess
        import sys

        self.log = log
        self.name = name
        self._fh = log.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "catdog",
                "worker",
                "-Q",
                queues,
                "-n",
                f"{name}@%h",
                "--loglevel",
                "INFO",
            ],
            env=env,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until the worker logs that it is ready to consume."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.log.read_text():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int | None = None, timeout: float = 30) -> None:
        """Send ``sig`` (SIGTERM by default) and wait for the process to end."""
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()


def make_cluster_env(broker_url: str, postgres_url: str, model: Path) -> dict[str, str]:
    """Environment of a cluster on ``broker_url`` and a migrated ``postgres_url``."""
    from catdog.db.engine import make_engine
    from catdog.db.migrate import upgrade

    engine = make_engine(postgres_url)
    upgrade(engine)
    engine.dispose()
    return {
        **os.environ,
        "CATDOG_BROKER_URL": broker_url,
        "CATDOG_DATABASE_URL": postgres_url,
        "CATDOG_MODEL": str(model),
        "CATDOG_BATCH_SIZE": "4",
        "CATDOG_VISIBILITY_TIMEOUT": "5",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


@pytest.fixture
def cluster_env(redis_url: str, postgres_url: str, tiny_model: Path) -> dict[str, str]:
    """Environment of a cluster on the real Redis and PostgreSQL, with the tiny model."""
    return make_cluster_env(redis_url, postgres_url, tiny_model)


def _workers(
    base_env: dict[str, str], logs: Path, stop_signal: int | None = None
) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(queues: str = "inference", wait: bool = True, **env: str) -> WorkerProcess:
        name = f"w{len(started)}-{uuid.uuid4().hex[:6]}"
        w = WorkerProcess({**base_env, **env}, queues, logs / f"{name}.log", name)
        started.append(w)
        if wait:
            w.wait_ready()
        return w

    yield start
    for w in started:
        w.stop(stop_signal)


@pytest.fixture
def worker_factory(
    cluster_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker processes; every one still running is stopped at teardown."""
    yield from _workers(cluster_env, tmp_path)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis server, free to be crashed and restarted by the test."""
    try:
        server = RedisServer(tmp_path / "redis")
        server.start()
    except Exception as exc:  # noqa: BLE001 - no redis-server binary or it cannot start
        _service_missing("redis-server", exc)
    yield server
    server.kill()


@pytest.fixture
def fault_env(own_redis: RedisServer, postgres_url: str, tiny_model: Path) -> dict[str, str]:
    """Like ``cluster_env`` but on a private Redis, so faults never touch the shared one."""
    return {
        **make_cluster_env(own_redis.url(), postgres_url, tiny_model),
        "CATDOG_VISIBILITY_TIMEOUT": "4",
    }


@pytest.fixture
def fault_workers(
    fault_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real workers on the private Redis; all are killed at teardown (their Redis goes
    with them, so a warm shutdown would only cost time)."""
    import signal

    yield from _workers(fault_env, tmp_path, signal.SIGKILL)
