"""Waiting on the cluster out loud: for the broker to answer, for a worker to take a queue.

A command that waits says what it waits for within seconds, on stderr; a broker that never
answers is an error after ``CATDOG_BROKER_TIMEOUT``; a queue nobody consumes is named, with
the command that would start a consumer, while the command keeps waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import click
from celery import Celery

from catdog.cli.errors import cause_of
from catdog.settings import Settings, redact_url

#: Seconds between two "still waiting for the broker" lines.
SAY_EVERY_S = 5.0
#: Seconds without progress before a waiting command asks whether anyone consumes its queue.
CONSUMER_CHECK_S = 10.0
#: Seconds between two repeats of "no worker is consuming" while that stays true.
CONSUMER_REPEAT_S = 60.0
#: How to start a consumer of each queue.
START_HINT = {
    "inference": "catdog worker",
    "training": "catdog worker --queues training",
}


def wait_for_broker(app: Celery, settings: Settings) -> None:
    """Return once the broker answers; say so while it does not; ClickException at the timeout.

    A wrong password is a connection error to kombu, retried like a refused connection: both
    are named in the waiting line and in the final error.
    """
    url = settings.broker() or ""
    where = redact_url(url)
    timeout = settings.broker_timeout
    last_said = -SAY_EVERY_S

    def say(exc: BaseException, _interval: float) -> None:
        nonlocal last_said
        if time.monotonic() - last_said >= SAY_EVERY_S:
            last_said = time.monotonic()
            click.echo(
                f"waiting for the broker at {where}: {cause_of(exc)} "
                f"(CATDOG_BROKER_TIMEOUT={timeout:g} s)",
                err=True,
            )

    # Without a connect timeout a host that drops packets holds the first attempt for the
    # kernel's TCP timeout (minutes), before anything could be said.
    conn = app.connection_for_write(transport_options={"socket_connect_timeout": SAY_EVERY_S})
    try:
        conn.ensure_connection(
            errback=say, interval_start=0.5, interval_step=0.5, interval_max=2, timeout=timeout
        )
    except Exception as exc:  # noqa: BLE001 - kombu re-raises any transport error as its own
        raise click.ClickException(
            f"broker {where} did not answer within {timeout:g} s: {cause_of(exc)}"
        ) from exc
    finally:
        conn.release()


class ConsumerWatch:
    """Says on stderr when nothing consumes ``queue`` while a command waits on it.

    ``check(progress)`` is cheap to call often: it asks the broker only when ``progress`` (any
    value that changes while work gets done) has stood still for ``CONSUMER_CHECK_S``. Workers
    announce themselves through their heartbeat (:mod:`catdog.workers.health`), which a busy
    worker still gives, unlike a ping its main loop would have to answer.
    """

    def __init__(self, settings: Settings, queue: str, check_s: float = CONSUMER_CHECK_S) -> None:
        from catdog.broker import redis_client

        self.queue = queue
        self.check_s = check_s
        self._client = redis_client(settings)
        self._progress: object = None
        self._moved = time.monotonic()
        self._said = -CONSUMER_REPEAT_S

    def check(self, progress: object) -> None:
        """Note ``progress``; if it has not moved for a while, say whether anyone consumes."""
        now = time.monotonic()
        if progress != self._progress:
            self._progress, self._moved = progress, now
            return
        if self._client is None or now - self._moved < self.check_s:
            return
        if now - self._said < CONSUMER_REPEAT_S:
            return
        from catdog.workers.health import consumers

        try:
            alive = consumers(self._client, self.queue)
        except Exception:  # noqa: BLE001 - the wait itself reports a broker that is gone
            return
        self._moved = now
        if not alive:
            self._said = now
            click.echo(
                f"no worker is consuming the {self.queue} queue; start one with "
                f"`{START_HINT.get(self.queue, 'catdog worker --queues ' + self.queue)}` "
                "(still waiting)",
                err=True,
            )

    def watch(self, progress: Callable[[], object], every: float = 1.0) -> Callable[[], None]:
        """Call ``check(progress())`` on a daemon thread every ``every`` s; return a stop."""
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(every):
                try:
                    self.check(progress())
                except Exception:  # noqa: BLE001 - a hint must never break the wait
                    continue

        thread = threading.Thread(target=run, name="catdog-consumer-watch", daemon=True)
        thread.start()

        def halt() -> None:
            stop.set()
            thread.join(5)

        return halt
