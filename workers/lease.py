"""Keep a batch in progress from being handed to another worker while this one is alive.

Redis has no real acknowledgements: kombu parks a delivered message in a sorted set scored by
delivery time, and any worker puts it back in the queue once it is older than the visibility
timeout. A lease refreshes that score while the batch runs, so the timeout only has to cover
a dead worker's silence, not the slowest batch: redelivery after a crash can be quick without
long batches being run twice.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

from redis import Redis, RedisError

from catdog.broker import UNACKED_INDEX_KEY

log = logging.getLogger(__name__)


class Lease:
    """Refreshes one delivery's timestamp every ``every`` seconds until the block ends."""

    def __init__(
        self, client: Redis, delivery_tag: str, every: float, key: str = UNACKED_INDEX_KEY
    ) -> None:
        self.client = client
        self.tag = delivery_tag
        self.every = every
        self.key = key
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def renew(self) -> None:
        """Mark the delivery as fresh; a delivery already acked or restored stays gone (XX)."""
        self.client.zadd(self.key, {self.tag: time.time()}, xx=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.renew()
            except RedisError as exc:
                # Redis away: the batch goes on; at worst it is redelivered and re-run, and
                # the idempotent upsert keeps the results single.
                log.debug("lease renewal failed: %s", exc)
