"""Shared fixtures: generated images, a tiny model, and Redis and PostgreSQL of the tests' own.

The tests never touch data they did not make: a session starts its own ``redis-server`` on a
free port and creates its own PostgreSQL database (``catdog_test_<pid>_<random>``, dropped at
the end), unless ``CATDOG_TEST_REDIS`` / ``CATDOG_TEST_POSTGRES`` name servers to use as given.
Plain helpers (``make_image``, ``build_tiny_model``, ...) live in ``helpers.py``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from helpers import WorkerProcess, build_tiny_model, make_cluster_env, make_image
from services import RedisServer

if TYPE_CHECKING:
    from sqlalchemy import Engine

#: A Redis to use as given (its database number, else ``CATDOG_TEST_REDIS_DB``, is flushed
#: around each test); unset, each session starts a private ``redis-server``.
GIVEN_REDIS = os.environ.get("CATDOG_TEST_REDIS")
#: Database number used on a given Redis whose URL names none (the suite's old default).
GIVEN_REDIS_DB = int(os.environ.get("CATDOG_TEST_REDIS_DB", "11"))
#: A PostgreSQL database to use as given (one schema per test inside it); unset, each session
#: creates a database of its own on ``POSTGRES_SERVER`` and drops it at the end.
GIVEN_POSTGRES = os.environ.get("CATDOG_TEST_POSTGRES")
#: The server (and maintenance database) on which a session creates its database.
POSTGRES_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
#: Prefix of the databases sessions create; the process id tells whose a leftover is.
SESSION_DATABASE_PREFIX = "catdog_test_"
#: Real photos, when the shared data set sits beside the repository.
SHARED_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "catsdogs-train"


def _service_missing(what: str, exc: Exception) -> None:
    # dramatiq's rule: a missing server is a skip on a laptop and a failure in CI.
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI but unavailable: {exc}")
    pytest.skip(f"{what} unavailable: {exc}")


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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model file shared by the session's tests, with its .tflite (the CPU runtime)."""
    from catdog.training.tflite import export_tflite

    model = build_tiny_model(tmp_path_factory.mktemp("models") / "tiny.keras")
    export_tflite(model)
    return model


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database file."""
    return f"sqlite:///{tmp_path / 'catdog.db'}"


def session_database_name() -> str:
    """A fresh name for this session's database, with this process's id in it."""
    return f"{SESSION_DATABASE_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def drop_stale_session_databases(admin: Engine) -> list[str]:
    """Drop the databases of sessions whose process is gone (killed before its teardown ran);
    return their names. Only names this suite makes are looked at."""
    from sqlalchemy import text

    with admin.connect() as conn:
        names = conn.scalars(
            text("SELECT datname FROM pg_database WHERE datname LIKE :prefix"),
            {"prefix": SESSION_DATABASE_PREFIX.replace("_", "\\_") + "%"},
        ).all()
        stale = [
            name
            for name in names
            if (pid := name.removeprefix(SESSION_DATABASE_PREFIX).split("_")[0]).isdigit()
            and not _alive(int(pid))
        ]
        for name in stale:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return stale


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """The session's PostgreSQL database: ``CATDOG_TEST_POSTGRES`` as given, else one created
    on the local server for this session and dropped (connections and all) at its end."""
    if GIVEN_POSTGRES:
        yield GIVEN_POSTGRES
        return
    from sqlalchemy import create_engine, make_url, text

    name = session_database_name()
    admin = create_engine(POSTGRES_SERVER, isolation_level="AUTOCOMMIT")
    try:
        drop_stale_session_databases(admin)
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any connection failure means "no server"
        admin.dispose()
        _service_missing("PostgreSQL", exc)
    try:
        yield make_url(POSTGRES_SERVER).set(database=name).render_as_string(hide_password=False)
    finally:
        from catdog.db.engine import engine_for

        engine_for.cache_clear()
        # FORCE: a worker a test left behind must not keep the database alive.
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url(postgres_database: str) -> Iterator[str]:
    """A private schema in the session's PostgreSQL database, dropped afterwards."""
    from sqlalchemy import create_engine, make_url, text

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_database)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001 - any connection failure means "no server"
        admin.dispose()
        _service_missing("PostgreSQL", exc)
    # libpq's options parameter sets the search_path for every connection of this URL.
    url = make_url(postgres_database).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    from catdog.db.engine import engine_for

    engine_for.cache_clear()
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's Redis, as a URL without a database: ``CATDOG_TEST_REDIS`` as given, else
    a private ``redis-server`` on a free port, stopped at the end of the session."""
    if GIVEN_REDIS:
        yield GIVEN_REDIS
        return
    try:
        server = RedisServer(tmp_path_factory.mktemp("redis"), durable=False)
        server.start()
    except Exception as exc:  # noqa: BLE001 - no redis-server binary or it cannot start
        _service_missing("redis-server", exc)
    try:
        yield server.url().rsplit("/", 1)[0]
    finally:
        server.kill()


def redis_database_url(server: str) -> str:
    """``server`` with a database number: the given one, else the suite's (0 on a private
    server, ``CATDOG_TEST_REDIS_DB`` on a given one)."""
    from urllib.parse import urlsplit

    if urlsplit(server).path.strip("/"):
        return server
    return f"{server.rstrip('/')}/{GIVEN_REDIS_DB if GIVEN_REDIS else 0}"


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """A database on the session's Redis, flushed before and after each test."""
    import redis

    url = redis_database_url(redis_server)
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
