"""``catdog flower`` against a real worker: what Flower's HTTP API shows of the cluster."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.services, pytest.mark.slow]

#: Flower's login in these tests.
LOGIN = "ops:flower-test-pass"
#: Seconds to wait for Flower to start, or for it to see a worker or a task.
PATIENCE_S = 60


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Flower:
    """A running ``catdog flower`` process and a client for its HTTP API."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.base = f"http://127.0.0.1:{free_port()}"
        self.log = log
        self._fh = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "catdog", "flower", "--port", self.base.rsplit(":", 1)[1]],
            env={**env, "CATDOG_FLOWER_BASIC_AUTH": LOGIN},
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str, auth: bool = True) -> Any:
        """GET ``path``; JSON is decoded, anything else returned as text."""
        request = urllib.request.Request(self.base + path)
        if auth:
            token = base64.b64encode(LOGIN.encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read().decode()
            is_json = response.headers.get("Content-Type", "").startswith("application/json")
        return json.loads(body) if is_json else body

    def wait_for(self, what: str, probe: Callable[[], Any]) -> Any:
        """Call ``probe`` until it returns something truthy; fail after PATIENCE_S."""
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"flower exited:\n{self.log.read_text()[-3000:]}")
            try:
                found = probe()
            except (urllib.error.URLError, ConnectionError):
                found = None
            if found:
                return found
            time.sleep(0.5)
        pytest.fail(f"flower never showed {what}:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """Terminate Flower and wait for it."""
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._fh.close()


@pytest.fixture
def flower(cluster_env: dict[str, str], tmp_path: Path) -> Iterator[Flower]:
    """Flower for the test cluster, started and answering."""
    running = Flower(cluster_env, tmp_path / "flower.log")
    running.wait_for("its health check", lambda: running.get("/healthcheck", auth=False) == "OK")
    yield running
    running.stop()


def test_flower_lists_a_live_worker_and_a_finished_batch_task(
    worker_factory: Callable[..., Any],
    cluster_env: dict[str, str],
    flower: Flower,
    photo_dir: Path,
) -> None:
    """Through its API Flower shows the running worker and the batches it labeled, readably."""
    worker = worker_factory()
    scan = subprocess.run(
        [sys.executable, "-m", "catdog", "scan", str(photo_dir), "--wait"],
        env=cluster_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert scan.returncode == 0, scan.stderr

    workers = flower.wait_for(
        "the worker",
        lambda: [n for n in flower.get("/api/workers?refresh=1") if n.startswith(worker.name)],
    )
    assert len(workers) == 1
    tasks = flower.wait_for(
        "a finished batch",
        lambda: flower.get("/api/tasks?taskname=catdog.classify_batch&state=SUCCESS"),
    )
    task = next(iter(tasks.values()))
    assert task["worker"] == workers[0]
    assert task["args"].startswith("run=")  # run id and batch size, not the image ids
    assert "flower_events_total" in flower.get("/metrics", auth=False)


def test_flower_refuses_requests_without_its_login(flower: Flower) -> None:
    """With CATDOG_FLOWER_BASIC_AUTH set, the API answers 401 to an anonymous request."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        flower.get("/api/workers", auth=False)
    assert refused.value.code == 401
