"""A worker's health: refused at start without its database, a heartbeat while it is busy."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from catdog.broker import make_celery
from catdog.cli import main
from catdog.settings import Settings
from catdog.workers.health import HEARTBEAT_INTERVAL_S, Heartbeat, consumers
from services import free_port

#: Seconds a batch task sleeps before and after its work in the busy-worker test: the batch
#: outlasts both a ping's timeout and ``BUSY_MAX_AGE_S`` several times.
BATCH_DELAY_S = 8
#: ``catdog health --max-age`` while the worker is busy: two heartbeats and a little.
BUSY_MAX_AGE_S = 2 * HEARTBEAT_INTERVAL_S + 2


def settings_for(tmp_path: Path, database_url: str, broker_url: str | None = None) -> Settings:
    """Settings with a heartbeat file under ``tmp_path``, nothing read from the environment."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=SecretStr(database_url),
        broker_url=None if broker_url is None else SecretStr(broker_url),
        heartbeat_file=tmp_path / "heartbeat",
    )


def health(env: Callable[..., None], heartbeat: Path, *args: str) -> int:
    """Exit code of ``catdog health ARGS`` for ``heartbeat``."""
    env(heartbeat_file=str(heartbeat))
    return CliRunner().invoke(main, ["health", *args]).exit_code


def test_a_worker_without_its_database_exits_with_one_line(
    postgres_url: str, tmp_path: Path
) -> None:
    """No such database: the worker never says ready; it exits 1 with one line naming it."""
    missing = make_url(postgres_url).set(database="catdog_no_such_db", query={})
    env = {
        **os.environ,
        "CATDOG_DATABASE_URL": missing.render_as_string(hide_password=False),
        "CATDOG_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
        "CATDOG_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
    }
    started = subprocess.run(
        [sys.executable, "-m", "catdog", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 1
    lines = (started.stdout + started.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "catdog_no_such_db" in lines[0] and "does not exist" in lines[0]
    assert not (tmp_path / "heartbeat").exists()


def test_a_beat_touches_the_file_only_while_the_database_answers(
    tmp_path: Path, sqlite_url: str
) -> None:
    """With a database there is a heartbeat; with its server gone there is none."""
    alive = Heartbeat(settings_for(tmp_path, sqlite_url), "w@host", ["inference"])
    assert alive.beat() and alive.file.exists()
    alive.file.unlink()
    gone = f"postgresql://ops@127.0.0.1:{free_port()}/labels"
    assert not Heartbeat(settings_for(tmp_path, gone), "w@host", ["inference"]).beat()
    assert not alive.file.exists()


def test_catdog_health_passes_on_a_fresh_heartbeat_and_fails_on_a_stale_or_missing_one(
    env: Callable[..., None], tmp_path: Path
) -> None:
    """The exit code follows the file's age against --max-age; no file is unhealthy."""
    heartbeat = tmp_path / "heartbeat"
    assert health(env, heartbeat) == 1
    heartbeat.touch()
    assert health(env, heartbeat) == 0
    old = time.time() - 120
    os.utime(heartbeat, (old, old))
    assert health(env, heartbeat) == 1
    assert health(env, heartbeat, "--max-age", "300") == 0


def test_a_beat_records_the_worker_as_a_consumer_of_its_queues(
    tmp_path: Path, sqlite_url: str, redis_url: str
) -> None:
    """Each beat puts the node in its queues' consumer sets; stopping takes it out."""
    settings = settings_for(tmp_path, sqlite_url, redis_url)
    heartbeat = Heartbeat(settings, "w1@host", ["inference", "training"])
    assert heartbeat.beat()
    from catdog.broker import redis_client

    client = redis_client(settings)
    assert client is not None
    assert consumers(client, "inference") == consumers(client, "training") == ["w1@host"]
    heartbeat.stop()
    assert consumers(client, "inference") == [] and not heartbeat.file.exists()


def _ping(cluster_env: dict[str, str], node: str) -> list[Any]:
    settings = Settings(_env_file=None, broker_url=SecretStr(cluster_env["CATDOG_BROKER_URL"]))  # type: ignore[call-arg]
    return list(make_celery(settings).control.ping(destination=[node], timeout=2) or [])


@pytest.mark.services
@pytest.mark.slow
def test_a_worker_busy_with_a_long_batch_stays_healthy(
    worker_factory: Callable[..., Any], cluster_env: dict[str, str], tmp_path: Path
) -> None:
    """While a batch outlasts ping's timeout, ``catdog health`` keeps passing on that worker."""
    heartbeat = tmp_path / "worker.heartbeat"
    worker = worker_factory(
        CATDOG_BATCH_DELAY_S=str(BATCH_DELAY_S), CATDOG_HEARTBEAT_FILE=str(heartbeat)
    )
    node = f"{worker.name}@{socket.gethostname()}"
    env = {**cluster_env, "CATDOG_HEARTBEAT_FILE": str(heartbeat)}
    check = [sys.executable, "-m", "catdog", "health", "--max-age", str(BUSY_MAX_AGE_S)]
    assert subprocess.run(check, env=env, capture_output=True, timeout=60).returncode == 0
    photos = tmp_path / "photos"
    from helpers import make_image

    make_image(photos / "cat.jpg", "cat")
    scan = subprocess.run(
        [sys.executable, "-m", "catdog", "scan", str(photos)],
        env=cluster_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert scan.returncode == 0, scan.stderr
    deadline = time.monotonic() + 30
    while "received" not in worker.log.read_text():
        assert time.monotonic() < deadline, worker.log.read_text()
        time.sleep(0.2)
    busy_until = time.monotonic() + 2 * BATCH_DELAY_S - 4
    assert _ping(cluster_env, node) == []  # the worker's main loop is busy: no pong
    codes = []
    while time.monotonic() < busy_until:
        codes.append(subprocess.run(check, env=env, capture_output=True, timeout=60).returncode)
        time.sleep(1)
    assert "succeeded" not in worker.log.read_text()  # the batch was still running
    assert codes and set(codes) == {0}
