"""Nothing waits forever without saying why: the broker, and a queue nobody consumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from catdog.cli.waits import CONSUMER_CHECK_S, ConsumerWatch
from catdog.settings import Settings
from catdog.workers.health import Heartbeat
from services import RedisServer, free_port

#: CATDOG_BROKER_TIMEOUT in these tests.
BROKER_TIMEOUT_S = 3
#: Seconds a catdog process may take to start (imports) on a loaded machine.
START_S = 20
#: Seconds to wait for a line that should come after CONSUMER_CHECK_S.
NOTICE_S = CONSUMER_CHECK_S + START_S + 10


def scan(env: dict[str, str], root: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """``catdog scan ROOT`` to the end, and how long it took."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "catdog", "scan", str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=BROKER_TIMEOUT_S + START_S + 30,
    )
    return done, time.monotonic() - started


def broker_env(tmp_path: Path, broker_url: str) -> dict[str, str]:
    """Embedded database, the given broker, a short broker timeout."""
    return {
        **os.environ,
        "CATDOG_DATABASE_URL": f"sqlite:///{tmp_path / 'catdog.db'}",
        "CATDOG_BROKER_URL": broker_url,
        "CATDOG_BROKER_TIMEOUT": str(BROKER_TIMEOUT_S),
    }


def test_scan_against_an_unreachable_broker_says_so_and_gives_up(
    tmp_path: Path, photo_dir: Path
) -> None:
    """Nothing listens on the broker's port: a waiting line at once, an error at the timeout."""
    port = free_port()
    done, seconds = scan(broker_env(tmp_path, f"redis://127.0.0.1:{port}/0"), photo_dir)
    assert done.returncode == 1
    first, *_, last = done.stderr.strip().splitlines()
    assert first.startswith(f"waiting for the broker at redis://127.0.0.1:{port}/0")
    assert last.startswith("Error: broker ") and "Connection refused" in last
    assert seconds < BROKER_TIMEOUT_S + START_S


def test_scan_with_a_wrong_redis_password_says_so_and_gives_up(
    tmp_path: Path, photo_dir: Path
) -> None:
    """Redis refuses the password: the lines name the broker and the refusal, not the password."""
    try:
        server = RedisServer(tmp_path / "redis", password="right-pass-1234", durable=False)
        server.start()
    except FileNotFoundError:
        pytest.skip("redis-server is not installed")
    try:
        wrong = server.url().replace("right-pass-1234", "wrong-pass-5678")
        done, _ = scan(broker_env(tmp_path, wrong), photo_dir)
    finally:
        server.kill()
    assert done.returncode == 1
    assert "wrong-pass-5678" not in done.stderr + done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert f"127.0.0.1:{server.port}/0" in last and "password" in last


def wait_for_line(log: Path, text: str, proc: subprocess.Popen[Any], within: float) -> None:
    """Block until ``text`` shows in ``log``; fail if ``proc`` ends first or time runs out."""
    deadline = time.monotonic() + within
    while text not in log.read_text():
        assert proc.poll() is None, f"exited early:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"never said {text!r}:\n{log.read_text()}"
        time.sleep(0.2)


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[Any]:
    """``catdog ARGS`` in the background, stderr to ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "catdog", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        start_new_session=True,
    )


@pytest.mark.services
@pytest.mark.slow
def test_scan_wait_without_an_inference_worker_says_so_and_keeps_waiting(
    fault_env: dict[str, str],
    fault_workers: Callable[..., Any],
    photo_dir: Path,
    tmp_path: Path,
) -> None:
    """With no worker the waiting scan names the missing consumer; a worker then finishes it."""
    log = tmp_path / "scan.err"
    proc = start(["scan", str(photo_dir), "--wait"], fault_env, log)
    try:
        wait_for_line(log, "no worker is consuming the inference queue", proc, NOTICE_S)
        assert "catdog worker" in log.read_text()
        fault_workers()
        assert proc.wait(120) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.services
@pytest.mark.slow
def test_retrain_wait_without_a_training_worker_says_so_and_keeps_waiting(
    fault_env: dict[str, str], tmp_path: Path
) -> None:
    """A queued training job nobody takes: retrain --wait names the missing training worker."""
    log = tmp_path / "retrain.err"
    proc = start(["retrain", "--data", str(tmp_path), "--wait"], fault_env, log)
    try:
        wait_for_line(log, "no worker is consuming the training queue", proc, NOTICE_S)
        assert "catdog worker --queues training" in log.read_text()
        assert proc.poll() is None  # still waiting
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_waiting_command_is_quiet_while_a_worker_beats_for_its_queue(
    own_redis: RedisServer,
    sqlite_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A busy worker still beats, so only the queue without one is reported."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        broker_url=SecretStr(own_redis.url()),
        database_url=SecretStr(sqlite_url),
        heartbeat_file=tmp_path / "heartbeat",
    )
    assert Heartbeat(settings, "w1@host", ["inference"]).beat()
    for queue in ("inference", "training"):
        watch = ConsumerWatch(settings, queue, check_s=0)
        watch.check(0)  # the first look only notes the progress
        watch.check(0)
    err = capsys.readouterr().err
    assert "inference queue" not in err
    assert "no worker is consuming the training queue" in err
