"""A worker's health signal that a busy worker still gives: a heartbeat thread.

Celery's ``inspect ping`` is answered by the worker's main loop, which a solo worker runs only
between tasks: the ping fails for the whole of a training job and whenever a batch outlasts
its timeout. This thread beats beside the main loop, and only while the broker and the
database answer. Each beat touches ``CATDOG_HEARTBEAT_FILE`` (read by ``catdog health``, the
containers' health check) and records the worker in a sorted set per queue on the broker's
Redis, scored by Redis' own clock (read by commands that wait on a queue, to say when no
worker consumes it).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text

from catdog.broker import redis_client
from catdog.db.engine import engine_for
from catdog.settings import Settings

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger(__name__)

#: Seconds between two beats.
HEARTBEAT_INTERVAL_S = 5.0
#: ``catdog health`` passes while the heartbeat file is at most this old: several missed
#: beats, so one slow database answer does not mark a worker unhealthy.
HEALTHY_AGE_S = 30.0
#: Seconds the broker and the database get to answer one beat's checks.
CHECK_TIMEOUT_S = 5.0
#: Sorted set of the workers consuming a queue (member: node name; score: Redis time).
CONSUMERS_KEY = "catdog:consumers:{queue}"
#: A worker whose last beat is older than this no longer counts as consuming its queues.
CONSUMER_TTL_S = 30


def _redis_now(client: Redis) -> float:
    seconds, micros = client.time()  # one clock for every host: the broker's
    return float(seconds) + micros / 1e6


def consumers(client: Redis, queue: str) -> list[str]:
    """Node names of the workers that beat for ``queue`` within ``CONSUMER_TTL_S``."""
    key = CONSUMERS_KEY.format(queue=queue)
    members = client.zrangebyscore(key, _redis_now(client) - CONSUMER_TTL_S, "+inf")
    return [m.decode() if isinstance(m, bytes) else str(m) for m in members]


def heartbeat_age(path: Path) -> float | None:
    """Seconds since the heartbeat file was touched, or None if there is none."""
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except FileNotFoundError:
        return None


def check_database(settings: Settings) -> None:
    """Raise SQLAlchemy's error unless the database answers a query."""
    with engine_for(settings.database()).connect() as conn:
        conn.execute(text("SELECT 1"))


class Heartbeat:
    """Beats every ``HEARTBEAT_INTERVAL_S`` on a daemon thread while broker and database answer.

    ``beat`` is one beat, callable directly (a worker beats once before it says ready).
    """

    def __init__(self, settings: Settings, node: str, queues: list[str]) -> None:
        self.settings = settings
        self.node = node
        self.queues = queues
        self.file = settings.heartbeat_file
        self._client = redis_client(settings, CHECK_TIMEOUT_S)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="catdog-heartbeat", daemon=True)
        self._healthy: bool | None = None

    def beat(self) -> bool:
        """Check the database and the broker; if both answer, record this worker alive."""
        try:
            check_database(self.settings)
            if self._client is not None:
                now = _redis_now(self._client)
                with self._client.pipeline() as pipe:
                    for queue in self.queues:
                        key = CONSUMERS_KEY.format(queue=queue)
                        pipe.zadd(key, {self.node: now})
                        pipe.zremrangebyscore(key, "-inf", now - CONSUMER_TTL_S)
                        pipe.expire(key, CONSUMER_TTL_S * 2)
                    pipe.execute()
            self.file.parent.mkdir(parents=True, exist_ok=True)
            self.file.touch()
        except Exception as exc:  # noqa: BLE001 - any failure means "not healthy now"
            if self._healthy is not False:
                log.warning("worker unhealthy, no heartbeat: %s: %s", type(exc).__name__, exc)
            self._healthy = False
            return False
        if self._healthy is False:
            log.warning("worker healthy again")
        self._healthy = True
        return True

    def start(self) -> None:
        """Beat now, then every ``HEARTBEAT_INTERVAL_S`` until ``stop``."""
        self.beat()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL_S):
            self.beat()

    def stop(self) -> None:
        """Stop beating; the file goes and the worker leaves its queues' consumer sets."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(1.0)  # a daemon: a beat stuck on a dead server may stay
        self.file.unlink(missing_ok=True)
        if self._client is not None:
            try:
                for queue in self.queues:
                    self._client.zrem(CONSUMERS_KEY.format(queue=queue), self.node)
            except Exception:  # noqa: BLE001 - at shutdown the broker may be gone already
                log.debug("could not leave the consumer sets", exc_info=True)
