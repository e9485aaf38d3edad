"""The tests own the servers and databases they touch: a shared Redis or database is left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from sqlalchemy import create_engine, make_url, text

from conftest import (
    GIVEN_POSTGRES,
    GIVEN_REDIS,
    POSTGRES_SERVER,
    SESSION_DATABASE_PREFIX,
    drop_stale_session_databases,
)

#: The Redis a developer's machine usually shares between projects.
SHARED_REDIS = "redis://127.0.0.1:6379"
#: The databases the suite used to flush on it (db 13 was test_metrics.py's).
SHARED_REDIS_DBS = (11, 13)
#: Service tests the sentinel run repeats: Redis (metrics) and PostgreSQL (queries).
SENTINEL_RUN = ("tests/test_metrics.py", "tests/test_queries.py")
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.services
def test_the_fixtures_point_at_a_redis_and_a_database_of_the_sessions_own(
    redis_url: str, postgres_url: str
) -> None:
    """Unless told otherwise, Redis is a private server (not port 6379) and PostgreSQL a
    database this session created (not ``test``)."""
    if GIVEN_REDIS or GIVEN_POSTGRES:
        pytest.skip("CATDOG_TEST_REDIS / CATDOG_TEST_POSTGRES name servers to use as given")
    assert urlsplit(redis_url).port not in (None, 6379)
    database = make_url(postgres_url).database or ""
    assert database.startswith(f"{SESSION_DATABASE_PREFIX}{os.getpid()}_")


@pytest.mark.services
@pytest.mark.slow
def test_a_test_run_leaves_the_shared_redis_and_postgres_untouched(tmp_path: Path) -> None:
    """Sentinel keys in the shared Redis' databases 11 and 13 survive a run of service tests,
    and the run drops the database it created."""
    shared = [redis.Redis.from_url(f"{SHARED_REDIS}/{db}") for db in SHARED_REDIS_DBS]
    try:
        shared[0].ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379: nothing shared to protect")
    sentinel = f"catdog-test-sentinel-{uuid.uuid4().hex}"
    for client in shared:
        client.set(sentinel, "keep me", ex=600)  # expires even if this test dies
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATDOG_TEST_")}
    try:
        run = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SENTINEL_RUN],
            cwd=REPO,
            env={**env, "CI": "1"},  # a missing server fails the run instead of skipping
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0, output[-3000:]
        assert [client.get(sentinel) for client in shared] == [b"keep me"] * len(shared)
    finally:
        for client in shared:
            client.delete(sentinel)
            client.close()
    admin = create_engine(POSTGRES_SERVER)
    with admin.connect() as conn:
        left = conn.scalars(
            text("SELECT datname FROM pg_database WHERE datname LIKE :name"),
            {"name": f"{SESSION_DATABASE_PREFIX}{run.pid}\\_%"},
        ).all()
    admin.dispose()
    assert left == []


@pytest.mark.services
def test_a_killed_sessions_database_is_dropped_by_the_next_session(
    postgres_database: str,
) -> None:
    """A database whose session process is gone is dropped; a live session's is kept."""
    if GIVEN_POSTGRES:
        pytest.skip("CATDOG_TEST_POSTGRES names a database to use as given")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = f"{SESSION_DATABASE_PREFIX}{gone.pid}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_SERVER, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{dead}"'))
        assert dead in drop_stale_session_databases(admin)
        with admin.connect() as conn:
            names = conn.scalars(text("SELECT datname FROM pg_database")).all()
        assert dead not in names
        assert make_url(postgres_database).database in names
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{dead}"'))
        admin.dispose()


@pytest.mark.services
@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux's")
def test_a_killed_session_takes_its_redis_server_with_it(tmp_path: Path) -> None:
    """The private Redis of a test process that is SIGKILLed stops answering."""
    code = (
        "import sys, time; sys.path.insert(0, 'tests'); from services import RedisServer; "
        f"s = RedisServer(__import__('pathlib').Path({str(tmp_path)!r})); s.start(); "
        "print(s.port, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    port = int(parent.stdout.readline())
    client = redis.Redis(port=port, socket_connect_timeout=1)
    assert client.ping()
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.ping()
        except redis.ConnectionError:
            return
        time.sleep(0.1)
    pytest.fail(f"redis-server on port {port} outlived its test process")
